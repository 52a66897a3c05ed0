"""Inputs for the gradient tests of the attention ops: q, k, v as separate leaves, as slices of one fused
projection or in a transposed (dense, non-contiguous) layout; dense / right-padded / packed batches with
NaN in every padded input row; and a way to run the same computation on fp32 / fp64 copies for the
references."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# How q, k, v are stored: "separate" contiguous tensors; "fused" head slices of one projection
# (B, T, H + 2 Hkv, D), strided; "transposed" (B, heads, T, D) tensors seen as (B, T, heads, D), dense
# but not contiguous (what a layer that keeps heads first hands over).
QKV_LAYOUTS = ("separate", "fused", "transposed")


def layout_kwargs(layout: str, T: int, *, bounds: list[int] | None = None, dense_rows: int = 2) -> tuple[int, dict]:
    """(batch rows, lengths / cu_seqlens kwargs): dense has dense_rows rows; padded has an empty, a full and a
    partial row; packed has an empty segment and trailing padding (except at T = 1). bounds: the lengths
    (padded, one row each) or cu_seqlens (packed) instead of those."""
    if layout == "dense":
        return dense_rows, {}
    if layout == "padded":
        lengths = bounds or [0, T, max(T - T // 3, 1)]
        return len(lengths), {"lengths": torch.tensor(lengths)}
    if layout == "packed":
        a, b = T // 3, max(T - T // 5, 1)
        return 1, {"cu_seqlens": torch.tensor(bounds or [0, a, a, b])}
    raise ValueError(layout)


def valid_rows(B: int, T: int, kw: dict) -> torch.Tensor:
    """(B, T) bool: the positions inside some sequence."""
    t = torch.arange(T)[None, :]
    if "lengths" in kw:
        return t < kw["lengths"].cpu()[:, None]
    if "cu_seqlens" in kw:
        return (t < kw["cu_seqlens"].cpu()[-1]).expand(B, T)
    return torch.ones(B, T, dtype=torch.bool)


def split_fused(p: torch.Tensor, H: int, Hkv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v: the head slices of one fused projection p (B, T, H + 2 Hkv, D)."""
    return p[:, :, :H], p[:, :, H:H + Hkv], p[:, :, H + Hkv:]


@dataclass
class Leaves:
    """The tensors gradients are taken of, stored as `layout` says (QKV_LAYOUTS): q, k, v themselves, or
    one fused projection (B, T, H + 2 Hkv, D) of which q, k, v are head slices."""

    tensors: list[torch.Tensor]
    H: int
    Hkv: int
    layout: str

    def qkv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.layout == "fused":
            return split_fused(self.tensors[0], self.H, self.Hkv)
        return tuple(self.tensors)

    def grads(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.layout == "fused":
            return split_fused(self.tensors[0].grad, self.H, self.Hkv)
        return tuple(x.grad for x in self.tensors)

    def copy(self, dtype=torch.float32, device=None) -> "Leaves":
        """New leaves holding the same values in `dtype` (on `device`, default theirs), in the same layout."""
        return Leaves([x.detach().to(device=device or x.device, dtype=dtype).requires_grad_() for x in self.tensors],
                      self.H, self.Hkv, self.layout)


def make_leaves(B: int, T: int, H: int, Hkv: int, D: int, dtype, *, layout: str = "separate", valid: torch.Tensor,
                seed: int = 0, device="cpu") -> Leaves:
    """Random leaves requiring grad, stored as `layout` says, NaN in the rows outside `valid` (B, T)."""
    g = torch.Generator().manual_seed(seed)
    heads = [H + 2 * Hkv] if layout == "fused" else [H, Hkv, Hkv]
    tensors = []
    for h in heads:
        if layout == "transposed":
            x = torch.randn(B, h, T, D, generator=g).transpose(1, 2)
        elif layout in ("separate", "fused"):
            x = torch.randn(B, T, h, D, generator=g)
        else:
            raise ValueError(layout)
        x[~valid] = float("nan")
        tensors.append(x.to(device=device, dtype=dtype).requires_grad_())
    return Leaves(tensors, H, Hkv, layout)


def output_grad(B: int, T: int, H: int, D: int, dtype, *, seed: int, valid: torch.Tensor | None = None,
                device="cpu") -> torch.Tensor:
    """A random output gradient (B, T, H, D); NaN at the rows outside `valid` when given (nothing of it may
    reach the input gradients)."""
    do = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(seed))
    if valid is not None:
        do[~valid] = float("nan")
    return do.to(device=device, dtype=dtype)


def make_case(T: int, H: int, Hkv: int, D: int, dtype, *, layout: str, qkv: str = "separate", seed: int = 0,
              bounds: list[int] | None = None, dense_rows: int = 2, nan_output_grad: bool = False,
              device="cpu") -> tuple[Leaves, torch.Tensor, torch.Tensor, dict]:
    """(leaves, output gradient do (B, T, H, D), valid (B, T), lengths / cu_seqlens kwargs) of one gradient
    case, on `device`: batch layout and bounds as `layout_kwargs`, q, k, v stored as `qkv` says, NaN in the
    padded input rows (and, with nan_output_grad, in the padded rows of do)."""
    B, kw = layout_kwargs(layout, T, bounds=bounds, dense_rows=dense_rows)
    valid = valid_rows(B, T, kw)
    leaves = make_leaves(B, T, H, Hkv, D, dtype, layout=qkv, valid=valid, seed=seed, device=device)
    do = output_grad(B, T, H, D, dtype, seed=seed + 1, valid=valid if nan_output_grad else None, device=device)
    return leaves, do, valid.to(device), {name: x.to(device) for name, x in kw.items()}
