"""Shapes, inputs and tolerances shared by the prefill kernel tests (tests/kernels/test_swa.py,
test_rla.py, test_rattention.py).

The CPU shape grid: op x T in {1, 15, 63, 111, 1000} x windows {0, 7, 64, T-1, >T, None (SWA only)}
x D in {64, 128} (+256 for SWA) x heads (H, Hkv) in {(1, 1), (4, 1), (4, 4)} x B (rows or packed
sequences) in {1, 3} x dense / right-padded / packed x fp32 / fp16 (the interpreter does not do
bf16). By default a pairwise-covering subset runs (every pair of factor values appears in some case,
`PAIRWISE`, split among the three op files by its `op` factor); `-m slow` runs the full grid. RLA and
RAttention at D = 256, slow under the interpreter, have small cases of their own (`test_head_dim_256`).

The GPU sample (`GPU_SHAPES`): 48 cases of T x window x D x heads x layout x dtype drawn once with a
seeded RNG, run on each op against the fp32 references on the same rounded values.
"""

from __future__ import annotations

import contextlib
import itertools
import random

import torch
from closeness import assert_close
from pairwise import all_cases, case_id, pairwise_cases, window_value

from rattn_eval.kernels import Rope

# (relative RMS, per-row max-abs / row max-abs). bf16 (GPU only) holds 8 significant bits: one output
# rounding is already ~4e-3 of a row's largest entry, and P, phi and the states are rounded to bf16
# for the tensor cores as well.
@contextlib.contextmanager
def exact_fp32():
    """fp32 matrix products without TF32 (cuBLAS and cuDNN) inside the block, restored after: the fp32
    references on the GPU must be exact for the fp32 kernel checks."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1e-2, 3e-2)}


def check(out, ref, dtype, what=""):
    """`assert_close` at the tolerance of inputs of `dtype`."""
    rms, row = TOL[dtype]
    assert_close(out, ref, rms, what, row_tol=row)


FACTORS = {
    "op": ["swa", "rla", "rattn"],
    "T": [1, 15, 63, 111, 1000],
    "w": ["0", "7", "64", "T-1", ">T", "none"],
    "D": [64, 128, 256],
    "heads": [(1, 1), (4, 1), (4, 4)],
    "B": [1, 3],
    "layout": ["dense", "ragged", "packed"],
    "dtype": ["fp32", "fp16"],
}


def feasible(c: dict) -> bool:
    if c["op"] != "swa" and (c["w"] == "none" or c["D"] == 256):
        return False  # RLA needs a window; at D=256 its interpreter runs are slow: test_head_dim_256 covers it
    if c["T"] == 1000:
        # keeps the interpreter inside the CPU budget: long windows at T = 1000 with one head only
        long_window = c["w"] in ("T-1", ">T", "none")
        if c["D"] == 256 or c["B"] * c["heads"][0] > (1 if long_window else 4):
            return False
    return True


PAIRWISE = pairwise_cases(FACTORS, feasible)
FULL_GRID = all_cases(FACTORS, feasible)


def cases(op: str, grid=None) -> list[dict]:
    return [c for c in (PAIRWISE if grid is None else grid) if c["op"] == op]


def make_inputs(c, seed=0):
    """q, k, v and the layout kwargs for a case. B means sequences: rows (dense/ragged) or packed segments."""
    T, D, (H, Hkv), B = c["T"], c["D"], c["heads"], c["B"]
    dtype = torch.float32 if c["dtype"] == "fp32" else torch.float16
    rows = 1 if c["layout"] == "packed" else B
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, T, H, D, generator=g).to(dtype)
    k = torch.randn(rows, T, Hkv, D, generator=g).to(dtype)
    v = torch.randn(rows, T, Hkv, D, generator=g).to(dtype)
    kw = {}
    if c["layout"] == "ragged":
        kw["lengths"] = torch.tensor([T - T // 3, T, T // 2][:B])
    elif c["layout"] == "packed":
        cuts = [round(T * (i + 1) / (B + 0.5)) for i in range(B)]  # last segment ends before T: padding
        kw["cu_seqlens"] = torch.tensor([0] + cuts)
    return q, k, v, kw


def inputs(T, H, Hkv, D, dtype=torch.float32, B=1, seed=0):
    """q, k, v of one dense case."""
    return make_inputs(dict(T=T, D=D, heads=(H, Hkv), B=B, layout="dense",
                            dtype="fp32" if dtype == torch.float32 else "fp16"), seed)[:3]


def rattn_extra(T, H, D, seed=1):
    """RoPE tables and random norm weights for RAttention."""
    g = torch.Generator().manual_seed(seed)
    return dict(rope=Rope(D, theta=10000.0).tables(T), swa_norm_weight=torch.rand(H, D, generator=g) + 0.5,
                rla_norm_weight=torch.rand(H, D, generator=g) + 0.5)


def check_case(c, fn, ref, **extra):
    """fn against the fp32 reference ref on the inputs of case c (at the case's tolerance)."""
    q, k, v, kw = make_inputs(c)
    window = window_value(c["w"], c["T"])
    out = fn(q, k, v, window=window, **kw, **extra)
    exp = ref(q.float(), k.float(), v.float(), window=window, **kw, **extra).to(q.dtype)
    assert out.dtype == q.dtype, case_id(c)
    check(out, exp, q.dtype, case_id(c))


def check_padded_and_packed(fn, *, D, junk=(float("nan"), float("inf"), float("nan")), rms=1e-5, row=1e-4):
    """fn on a right-padded batch and on the same sequences packed equals fn on each sequence alone,
    whatever the padding holds (junk for q, k, v: finite values, or NaN / inf, which a masked score times
    a value (0 * NaN) would spread); padding, and the rows after the last packed sequence, come out 0."""
    lens = [13, 30, 1]
    H, Hkv, T = 4, 2, max(lens)
    seqs = [inputs(n, H, Hkv, D, seed=i) for i, n in enumerate(lens)]

    def pad(x, fill, n):
        return torch.cat([x, x.new_full((1, n - x.shape[1], *x.shape[2:]), fill)], 1)

    q, k, v = (torch.cat([pad(s[i], junk[i], T) for s in seqs]) for i in range(3))
    cu = torch.tensor([0, 13, 43, 44])
    packed = [pad(torch.cat([s[i] for s in seqs], 1), junk[i], 47) for i in range(3)]  # three junk rows after the end
    out = fn(q, k, v, window=5, lengths=torch.tensor(lens))
    outp = fn(*packed, window=5, cu_seqlens=cu)
    for b, n in enumerate(lens):
        alone = fn(*seqs[b], window=5)
        assert_close(out[b : b + 1, :n], alone, rms, f"padded row {b}", row_tol=row)
        assert_close(outp[:, cu[b] : cu[b + 1]], alone, rms, f"packed sequence {b}", row_tol=row)
        if n < T:
            assert out[b, n:].abs().max().item() == 0, f"padding of row {b}"
    assert outp[:, int(cu[-1]):].abs().max().item() == 0, "rows after the last packed sequence"


def scores_far_below_zero(T, H, Hkv, D, logit, dtype, seed=7, device="cpu"):
    """q, k, v whose scores q.k * D^-0.5 all lie near `logit` (q = a u, k = -a u plus noise)."""
    g = torch.Generator(device=device).manual_seed(seed)
    u = torch.randn(D, generator=g, device=device)
    u = u / u.norm()
    a = (-logit * D ** 0.5) ** 0.5
    q = a * u + 0.3 * torch.randn(1, T, H, D, generator=g, device=device)
    k = -a * u + 0.3 * torch.randn(1, T, Hkv, D, generator=g, device=device)
    v = torch.randn(1, T, Hkv, D, generator=g, device=device)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def poison_padding(q, k, v, lkw):
    """NaN in q, k, v at every position outside the sequences of a padded or packed batch (in place)."""
    valid = torch.zeros(q.shape[0], q.shape[1], dtype=torch.bool)
    if "lengths" in lkw:
        for b, n in enumerate(lkw["lengths"].tolist()):
            valid[b, :n] = True
    else:
        valid[0, : int(lkw["cu_seqlens"][-1])] = True
    for x in (q, k, v):
        x[~valid] = float("nan")


GPU_SHAPES = random.Random(0).sample(list(itertools.product(
    [1, 15, 63, 111, 1000, 4097],  # T
    ["0", "7", "64", "T-1", "T+5", "511"],  # window
    [64, 128],  # D
    [(4, 4), (4, 1), (8, 2)],  # (H, Hkv)
    ["dense", "padded", "packed", "noncontig"],
    [torch.bfloat16, torch.float16, torch.float32])), 48)


def gpu_shape_id(c):
    T, w, D, (H, Hkv), layout, dt = c
    return f"T{T}-w{w}-D{D}-H{H}kv{Hkv}-{layout}-{str(dt).split('.')[-1]}"


def gpu_window(spec: str, T: int) -> int:
    if spec == "T-1":
        return max(T - 1, 0)
    return T + 5 if spec == "T+5" else int(spec)


def gpu_shape_inputs(case):
    """(q, k, v, layout kwargs, window) on CUDA for a GPU_SHAPES case; noncontig: q, k, v are slices of one
    fused projection (heads interleaved)."""
    T, wspec, D, (H, Hkv), layout, dtype = case
    g = torch.Generator(device="cuda").manual_seed(T * 7 + D)
    B = 3 if layout == "padded" else 1
    if layout == "noncontig":
        fused = torch.randn(B, T, H + 2 * Hkv, D, device="cuda", generator=g).to(dtype)
        q, k, v = fused[:, :, :H], fused[:, :, H:H + Hkv], fused[:, :, H + Hkv:]
    else:
        q = torch.randn(B, T, H, D, device="cuda", generator=g).to(dtype)
        k = torch.randn(B, T, Hkv, D, device="cuda", generator=g).to(dtype)
        v = torch.randn(B, T, Hkv, D, device="cuda", generator=g).to(dtype)
    var = {}
    if layout == "padded":
        var["lengths"] = torch.tensor([T, max(T // 2, 1), 0 if T > 1 else 1], device="cuda")
    elif layout == "packed":
        cuts = sorted({0, T, *(random.Random(T).randrange(0, T + 1) for _ in range(3))})
        var["cu_seqlens"] = torch.tensor(cuts, device="cuda", dtype=torch.int32)
    return q, k, v, var, gpu_window(wspec, T)


def gpu_inputs(T, H, Hkv, D, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return tuple(torch.randn(1, T, h, D, device="cuda", generator=g).to(dtype) for h in (H, Hkv, Hkv))
