"""`rattn-eval bench tune`: time every launch setting of a grid for the decode kernels and the RLA and SWA
backward on this GPU, fastest first, so that their hand-edited tables can be set from measurements.

The tables: `GPU_LAUNCH` and `_BLOCKS["gpu"]` in `rattn_eval/kernels/decode/fused_recurrent.py`
(the local decode step), `GPU_LAUNCH` in `rattn_eval/kernels/decode/kv_split.py` (`kv_decode`),
`RLA_BWD_TILES` in `rattn_eval/kernels/rla/backward.py`, and the "dkdv" and "dq" entries of
`SWA_BWD_TILES` in `rattn_eval/kernels/swa/backward.py` (each swept on its own: `swa-backward-dkdv` times
the preprocess and dk / dv kernels, `swa-backward-dq` the preprocess and dq kernels). A decode setting is
swapped into its module's table for the duration of its timing and the table restored after; a backward
setting is passed as the backward's `cfg`. Nothing on disk changes. Decode steps are timed as CUDA-graph
replays (the way the model decodes, with no launch cost); the backward with `do_bench`. GB/s counts the bytes a
step must read and write, against the card's copy bandwidth. A setting the card cannot launch is
listed as failed; shapes the kernels do not take stop the command before any timing. A setting that
breaks the CUDA context (an illegal memory access, say) stops the command: nothing can run on the GPU in
that process afterwards. The sweeps finished by then are written with the reason (`stopped`), and the error
names the setting for `--skip` (repeatable: `--skip BC=64,BV=32,num_warps=8` leaves out every setting with
those values); the table's own setting is always timed, and one that breaks the context is a table to edit.

    rattn-eval bench tune --what local-decode,kv-decode,rla-backward --out DIR
    rattn-eval bench tune --what swa-backward-dkdv,swa-backward-dq --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
from pathlib import Path
from types import MappingProxyType

import torch

from ..errors import ConfigError
from . import int_list, single_length
from .kernels import bench_ms, copy_bandwidth, graph_ms, local_step_inputs

KINDS = ("local-decode", "kv-decode", "rla-backward", "swa-backward-dkdv", "swa-backward-dq")

# The grids: every combination is timed.
LOCAL_GRID = dict(programs_per_sm=(1, 2, 4), num_warps=(4, 8), block_s=(16, 32, 64), block_f=(16, 32, 64))
KV_GRID = dict(programs_per_sm=(1, 2, 4, 8), num_warps=(4, 8), num_stages=(2, 3, 4), block_s=(32, 64, 128))
RLA_BWD_GRID = dict(BC=(32, 64, 128), BV=(32, 64, 128), num_warps=(4, 8), scan_warps=(4,))
SWA_BWD_GRID = dict(BM=(32, 64, 128), BN=(32, 64, 128), num_warps=(4, 8), num_stages=(1, 2, 3))


# Messages of CUDA errors after which the process's CUDA context is unusable (also probed directly: see
# `_context_lost`).
_STICKY = ("illegal memory access", "illegal instruction", "misaligned address", "unspecified launch failure",
           "device-side assert", "hardware stack error", "invalid program counter", "launch timed out")


class ContextLost(ConfigError):
    """A timed setting broke the CUDA context; `detail` is the error's first line."""

    def __init__(self, kind: str, setting: dict, detail: str):
        self.detail = detail
        super().__init__(f"the {kind} setting {setting_text(setting)} broke the CUDA context ({detail}); nothing "
                         f"more can run on the GPU in this process: rerun with --skip {setting_text(setting)}")


def _context_lost(e: Exception) -> bool:
    """Whether the CUDA context is unusable after `e`: a sticky error's message, or a failing synchronize."""
    if any(m in str(e) for m in _STICKY):
        return True
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:
            torch.cuda.synchronize()
        except Exception:
            return True
    return False


def settings(grid: dict, skip=()) -> list[dict]:
    """Every combination of the grid's values, as dicts, less those matching an entry of `skip` (a dict
    of values: a setting matches when it has all of them)."""
    every = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return [s for s in every if not any(all(s.get(k) == v for k, v in pattern.items()) for pattern in skip)]


def setting_text(s: dict) -> str:
    """A setting as `--skip` takes it: k=v,k=v."""
    return ",".join(f"{k}={v}" for k, v in s.items())


def parse_skip(text: str) -> dict:
    """`--skip` value `k=v,k=v` (integer values) -> dict."""
    try:
        pattern = {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=INT items like BC=64,num_warps=8, got {text!r}") from None
    known = set(LOCAL_GRID) | set(KV_GRID) | set(RLA_BWD_GRID) | set(SWA_BWD_GRID)
    unknown = sorted(set(pattern) - known)
    if not pattern or unknown:
        raise argparse.ArgumentTypeError(f"--skip {text!r}: setting names are {', '.join(sorted(known))}")
    return pattern


@contextlib.contextmanager
def swapped(owner, name: str, value):
    """owner.name = value inside the block, the old value restored after (also on error)."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _timed(fn, timer, kind: str, setting: dict) -> float | str:
    """The time of fn, or the error that stopped it (a setting the card cannot launch, say). Raises
    ContextLost for an error that leaves the CUDA context unusable."""
    try:
        return timer(fn)
    except Exception as e:  # a failed setting is reported and the grid goes on, unless the GPU is unusable
        first = str(e).splitlines()[0] if str(e) else ""
        detail = f"{type(e).__name__}: {first[:100]}"
        if _context_lost(e):
            raise ContextLost(kind, setting, detail) from e
        return detail


def sweep_local_decode(batch, H, Hkv, D, window, *, dtype, device, timer=graph_ms, grid=LOCAL_GRID,
                       skip=()) -> list[dict]:
    """The RAttention local decode step (ring + fp32 state) under each setting of `grid`."""
    from ..kernels import Rope
    from ..kernels.decode import fused_recurrent as fr

    cache, q, k, v, nbytes = local_step_inputs(batch, H, Hkv, D, window, dtype, device)
    rope = Rope(D)
    rows = []
    for s in settings(grid, skip):
        launch = MappingProxyType({"programs_per_sm": s["programs_per_sm"], "num_warps": s["num_warps"]})
        blocks = dict(fr._BLOCKS, gpu=MappingProxyType({"block_s": s["block_s"], "block_f": s["block_f"]}))
        with swapped(fr, "GPU_LAUNCH", launch), swapped(fr, "_BLOCKS", blocks):
            ms = _timed(lambda: fr.local_decode_step_triton(q, k, v, cache, rope=rope), timer, "local-decode", s)
        rows.append(dict(kind="local-decode", shape=dict(batch=batch, H=H, Hkv=Hkv, D=D, window=window), setting=s,
                         ms=ms, nbytes=nbytes))
    return rows


def sweep_kv_decode(batch, context, H, Hkv, D, *, dtype, device, timer=graph_ms, grid=KV_GRID,
                    skip=()) -> list[dict]:
    """`kv_decode` over a full cache of `context` keys under each setting of `grid`."""
    from ..kernels.decode import kv_split

    g = torch.Generator(device=device).manual_seed(0)
    kc, vc = (torch.randn(batch, context, Hkv, D, device=device, dtype=dtype, generator=g) for _ in range(2))
    q = torch.randn(batch, H, D, device=device, dtype=dtype, generator=g)
    pos = torch.full((batch,), context - 1, dtype=torch.long, device=device)
    nbytes = 2 * kc.numel() * kc.element_size()
    rows = []
    for s in settings(grid, skip):
        key = "block_s" if D <= 128 else "block_s_256"
        launch = MappingProxyType({**kv_split.GPU_LAUNCH, **{n: s[n] for n in ("programs_per_sm", "num_warps",
                                                                               "num_stages")}, key: s["block_s"]})
        with swapped(kv_split, "GPU_LAUNCH", launch):
            ms = _timed(lambda: kv_split.kv_decode_triton(q, kc, vc, pos), timer, "kv-decode", s)
        rows.append(dict(kind="kv-decode", shape=dict(batch=batch, context=context, H=H, Hkv=Hkv, D=D), setting=s,
                         ms=ms, nbytes=nbytes))
    return rows


def sweep_rla_backward(T, H, Hkv, D, window, *, dtype, device, timer=bench_ms, grid=RLA_BWD_GRID,
                       skip=()) -> list[dict]:
    """The RLA backward (dq, dk, dv for a random output gradient) under each setting of `grid` whose BV
    divides D."""
    from ..kernels.rla.backward import residual_linear_attention_backward

    g = torch.Generator(device=device).manual_seed(0)
    q, do = (torch.randn(1, T, H, D, device=device, dtype=dtype, generator=g) for _ in range(2))
    k, v = (torch.randn(1, T, Hkv, D, device=device, dtype=dtype, generator=g) for _ in range(2))
    rows = []
    for s in settings(grid, skip):
        if s["BV"] > D:
            continue
        ms = _timed(lambda: residual_linear_attention_backward(q, k, v, do, window=window, cfg=s), timer,
                    "rla-backward", s)
        rows.append(dict(kind="rla-backward", shape=dict(T=T, H=H, Hkv=Hkv, D=D, window=window), setting=s, ms=ms,
                         nbytes=None))
    return rows


def sweep_swa_backward(part, T, H, Hkv, D, window, *, dtype, device, timer=bench_ms, grid=SWA_BWD_GRID,
                       skip=()) -> list[dict]:
    """One kernel of the SWA backward, `part` "dkdv" or "dq" (with the preprocess kernel it needs), for a
    random output gradient under each setting of `grid`; the other kernel is not launched."""
    from ..kernels.common import default_scale
    from ..kernels.swa.backward import bwd_config, launch_swa_bwd, swa_forward_with_lse

    g = torch.Generator(device=device).manual_seed(0)
    q, do = (torch.randn(1, T, H, D, device=device, dtype=dtype, generator=g) for _ in range(2))
    k, v = (torch.randn(1, T, Hkv, D, device=device, dtype=dtype, generator=g) for _ in range(2))
    o, o_res, lse, seqs, w = swa_forward_with_lse(q, k, v, window=window)
    kind = f"swa-backward-{part}"
    rows = []
    for s in settings(grid, skip):
        cfg = dict(bwd_config(D, dtype), **{part: dict(s)})
        ms = _timed(lambda: launch_swa_bwd(do, q, k, v, o, o_res, lse, seqs, window=w, scale=default_scale(D, None),
                                           cfg=cfg, need_dq=part == "dq", need_dkdv=part == "dkdv"), timer, kind, s)
        rows.append(dict(kind=kind, shape=dict(T=T, H=H, Hkv=Hkv, D=D, window=window), setting=s, ms=ms,
                         nbytes=None))
    return rows


_TABLES = {"local-decode": "GPU_LAUNCH / _BLOCKS in rattn_eval/kernels/decode/fused_recurrent.py",
           "kv-decode": "GPU_LAUNCH in rattn_eval/kernels/decode/kv_split.py",
           "rla-backward": "RLA_BWD_TILES in rattn_eval/kernels/rla/backward.py",
           "swa-backward-dkdv": "SWA_BWD_TILES (its \"dkdv\" entries) in rattn_eval/kernels/swa/backward.py",
           "swa-backward-dq": "SWA_BWD_TILES (its \"dq\" entries) in rattn_eval/kernels/swa/backward.py"}


def table_ms(kind: str, shape: dict, *, dtype, device, timer) -> float | str:
    """The time of the setting the kernel's table holds now (the baseline each sweep is read against); it is
    timed even when --skip matches it. Should it break the CUDA context, the error says so: only editing
    the table helps then."""
    try:
        return _table_ms(kind, shape, dtype=dtype, device=device, timer=timer)
    except ContextLost as e:
        raise ConfigError(f"the {kind} table's own setting broke the CUDA context ({e.detail}); the table "
                          f"({_TABLES[kind]}) needs another setting") from e


def _table_ms(kind: str, shape: dict, *, dtype, device, timer) -> float | str:
    from ..kernels.decode import fused_recurrent as fr
    from ..kernels.decode import kv_split

    if kind == "local-decode":
        grid = {"programs_per_sm": (fr.GPU_LAUNCH["programs_per_sm"],), "num_warps": (fr.GPU_LAUNCH["num_warps"],),
                "block_s": (fr._BLOCKS["gpu"]["block_s"],), "block_f": (fr._BLOCKS["gpu"]["block_f"],)}
        return sweep_local_decode(**shape, dtype=dtype, device=device, timer=timer, grid=grid)[0]["ms"]
    if kind == "kv-decode":
        block = kv_split.GPU_LAUNCH["block_s" if shape["D"] <= 128 else "block_s_256"]
        grid = {n: (kv_split.GPU_LAUNCH[n],) for n in ("programs_per_sm", "num_warps", "num_stages")}
        grid["block_s"] = (block,)
        return sweep_kv_decode(**shape, dtype=dtype, device=device, timer=timer, grid=grid)[0]["ms"]
    if kind.startswith("swa-backward-"):
        from ..kernels.swa.backward import bwd_config

        part = kind.removeprefix("swa-backward-")
        grid = {n: (x,) for n, x in bwd_config(shape["D"], dtype)[part].items()}
        return sweep_swa_backward(part, **shape, dtype=dtype, device=device, timer=timer, grid=grid)[0]["ms"]
    from ..kernels.rla.backward import backward_tiles

    row = backward_tiles(dtype, shape["D"])
    row["BV"] = min(row["BV"], shape["D"])  # as the backward caps it
    grid = {n: (x,) for n, x in row.items()}
    return sweep_rla_backward(**shape, dtype=dtype, device=device, timer=timer, grid=grid)[0]["ms"]


def format_rows(kind: str, shape: dict, rows: list[dict], baseline: float | str, copy_gbps: float | None,
                top: int) -> list[str]:
    """The `top` fastest settings of one sweep (all failures after them), and the table's own time."""
    ok = sorted((r for r in rows if isinstance(r["ms"], float)), key=lambda r: r["ms"])
    failed = [r for r in rows if not isinstance(r["ms"], float)]
    lines = [f"{kind} {shape}: the table's setting "
             + (f"{baseline:.4f} ms" if isinstance(baseline, float) else f"failed ({baseline})")]
    if not rows:
        lines.append("  no setting of the grid is left (none fits this shape, or --skip left out the rest)")
    for r in ok[:top]:
        rate = ""
        if r["nbytes"] is not None:
            gbps = r["nbytes"] / r["ms"] * 1e-6
            rate = f" {gbps:7.0f} GB/s" + (f" ({gbps / copy_gbps:.0%} of copy)" if copy_gbps else "")
        lines.append(f"  {r['ms']:.4f} ms{rate}  {r['setting']}")
    lines += [f"  failed: {r['setting']}: {r['ms']}" for r in failed]
    return lines


def check_shapes(H, Hkv, D, window, batches, kv, lengths) -> None:
    """One ConfigError for a shape the kernels do not take, before anything is timed."""
    from ..kernels import triton_head_dim_ok

    if H < 1 or Hkv < 1 or H % Hkv:
        raise ConfigError(f"--heads {H} must be a positive multiple of --kv-heads {Hkv}")
    if not triton_head_dim_ok(D):
        raise ConfigError(f"--head-dim {D}: the Triton kernels take power-of-two head dims 16..256")
    if window < 0:
        raise ConfigError(f"--window must be >= 0, got {window}")
    if min([*batches, *(n for shape in kv for n in shape), *lengths], default=1) < 1:
        raise ConfigError("batch sizes, contexts and lengths must be >= 1")


def _kv_shapes(text: str) -> list[tuple[int, int]]:
    """argparse type: BATCHxCONTEXT items, the context as `run --len` reads it (1x32768 or 1x32k)."""
    try:
        return [(int(b), single_length(c)) for b, c in (item.lower().split("x") for item in text.split(",") if item)]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected BATCHxCONTEXT items like 1x32768 or 1x32k, got {text!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="rattn-eval bench tune", description=__doc__.split("\n")[0])
    ap.add_argument("--what", default=",".join(KINDS), help=f"comma-separated: {', '.join(KINDS)}")
    ap.add_argument("--batches", type=int_list, default="8,64", help="local decode step: batch sizes")
    ap.add_argument("--kv", type=_kv_shapes, default="1x32768,1x131072,8x32768",
                    help="kv decode: BATCHxCONTEXT, comma-separated")
    ap.add_argument("--lengths", type=int_list, default="32768", help="RLA and SWA backward: sequence lengths")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--top", type=int, default=8, help="settings listed per sweep")
    ap.add_argument("--skip", type=parse_skip, action="append", default=[], metavar="NAME=INT,...",
                    help="leave out the settings with all these values (repeatable), e.g. BC=64,BV=32,num_warps=8; "
                         "a pattern naming a setting a grid lacks leaves that grid alone; the table's own "
                         "setting is always timed")
    ap.add_argument("--out", default=None, help="folder for tune.json (every row) and tune.txt")
    a = ap.parse_args(argv)
    what = [w.strip() for w in a.what.split(",") if w.strip()]
    unknown = [w for w in what if w not in KINDS]
    if unknown:
        raise ConfigError(f"unknown sweep {unknown[0]!r}; choose from {', '.join(KINDS)}")
    check_shapes(a.heads, a.kv_heads, a.head_dim, a.window, a.batches, a.kv, a.lengths)
    if not torch.cuda.is_available():
        raise ConfigError("`rattn-eval bench tune` needs a CUDA GPU; none is visible")

    dtype, device = getattr(torch, a.dtype), torch.device("cuda")
    H, Hkv, D, w = a.heads, a.kv_heads, a.head_dim, a.window
    copy = copy_bandwidth()
    lines = [f"# rattn-eval bench tune {' '.join(sys.argv[1:] if argv is None else argv)}",
             f"# device: {torch.cuda.get_device_name()}; torch {torch.__version__}; copy bandwidth {copy:.0f} GB/s", ""]
    every, stopped = [], None

    def report(rows, kind, shape, timer):
        kept = [dict(r, table_ms=None) for r in rows]
        every.extend(kept)  # written even if timing the table's setting fails
        base = table_ms(kind, shape, dtype=dtype, device=device, timer=timer)
        for r in kept:
            r["table_ms"] = base
        block = format_rows(kind, shape, rows, base, copy, a.top)
        print("\n".join(block), flush=True)
        lines.extend(block + [""])

    try:
        if "local-decode" in what:
            for b in a.batches:
                shape = dict(batch=b, H=H, Hkv=Hkv, D=D, window=w)
                report(sweep_local_decode(**shape, dtype=dtype, device=device, skip=a.skip), "local-decode", shape,
                       graph_ms)
        if "kv-decode" in what:
            for b, ctx in a.kv:
                shape = dict(batch=b, context=ctx, H=H, Hkv=Hkv, D=D)
                report(sweep_kv_decode(**shape, dtype=dtype, device=device, skip=a.skip), "kv-decode", shape, graph_ms)
                torch.cuda.empty_cache()
        if "rla-backward" in what:
            for T in a.lengths:
                shape = dict(T=T, H=H, Hkv=Hkv, D=D, window=w)
                report(sweep_rla_backward(**shape, dtype=dtype, device=device, skip=a.skip), "rla-backward", shape,
                       bench_ms)
        for part in ("dkdv", "dq"):
            if f"swa-backward-{part}" in what:
                for T in a.lengths:
                    shape = dict(T=T, H=H, Hkv=Hkv, D=D, window=w)
                    report(sweep_swa_backward(part, **shape, dtype=dtype, device=device, skip=a.skip),
                           f"swa-backward-{part}", shape, bench_ms)
    except ConfigError as e:  # a lost CUDA context: the files say where the run stopped
        stopped = str(e)
        lines.append(f"# stopped: {stopped}")
        raise
    finally:  # the sweeps finished before an error are kept
        if a.out:
            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "tune.json").write_text(json.dumps(dict(copy_gbps=copy, rows=every, stopped=stopped), indent=1))
            (out / "tune.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
