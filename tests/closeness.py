"""The one closeness check of the kernel and model tests.

A whole-tensor relative RMS alone hides an off-by-one in a window (one wrong row among thousands),
so `assert_close` also bounds each row's max-abs error (rows = all but the last dim) by the row's
own max-abs, plus an optional absolute slack for rows that are small only by cancellation; rows
that are exactly zero in the reference (RLA rows t <= window, padding) must be exactly zero.
"""

from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max|out - ref| / max|ref| over the whole tensor (0 when both are empty or zero)."""
    o, r = out.float(), ref.float()
    if r.numel() == 0:
        return 0.0
    scale = r.abs().max().item()
    err = (o - r).abs().max().item()
    return err / scale if scale > 0 else err


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative RMS error, worst per-row max-abs error / row max-abs), rows that are zero in ref skipped."""
    o, r = out.float(), ref.float()
    if r.numel() == 0:
        return 0.0, 0.0
    diff = o - r
    norm = r.norm()
    rms = (diff.norm() / norm).item() if norm > 0 else diff.norm().item()
    row_err = diff.abs().amax(dim=-1)
    row_scale = r.abs().amax(dim=-1)
    worst = (row_err / row_scale.clamp(min=1e-30)).masked_fill(row_scale == 0, 0).max().item()
    return rms, worst


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "", *, row_tol: float | None = None,
                 abs_tol: float = 0.0, zero_rows: bool = True) -> None:
    """Relative RMS <= tol and every row's max-abs error <= row_tol (default tol) x the row's max-abs + abs_tol;
    with zero_rows, rows that are all zero in ref must be all zero in out (without abs_tol the per-row bound
    leaves those rows to that check). Shapes must match."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} vs {tuple(ref.shape)}"
    o, r = out.float(), ref.float()
    assert torch.isfinite(o).all(), f"{what}: non-finite values"
    if r.numel() == 0:
        return
    row_tol = tol if row_tol is None else row_tol
    row_err = (o - r).abs().amax(dim=-1)
    row_scale = r.abs().amax(dim=-1)
    if zero_rows:
        off = (row_scale == 0) & (row_err != 0)
        assert not off.any(), f"{what}: {int(off.sum())} rows that must be zero are not, first at {off.nonzero()[0].tolist()}"
    rms, _ = errors(o, r)
    assert rms <= tol, f"{what}: relative RMS error {rms:.3g} > {tol}"
    bound = row_tol * row_scale + abs_tol
    bad = (row_err > bound) & ((row_scale > 0) | (abs_tol > 0))
    if bad.any():
        first = bad.nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} rows off, first at {first}: err {row_err[bad][0]:.3g} > bound "
                             f"{bound[bad][0]:.3g} (row scale {row_scale[bad][0]:.3g}, row_tol {row_tol}, abs_tol "
                             f"{abs_tol:.3g})")
