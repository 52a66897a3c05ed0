"""The prefill kernels on a real GPU at awkward shapes (marked gpu; skipped without CUDA):

    TRITON_INTERPRET=0 python -m pytest -m gpu tests/kernels/test_gpu_shapes.py

The CPU tests run these shapes under the interpreter, which neither compiles the kernels nor takes the
TMA / EVEN / DENSE paths the H200 takes, and cannot run bf16. Here a fixed sample of the grid
T x window x D x heads x batch layout x dtype (48 cases, drawn once with a seeded RNG) runs all three
ops through the public API against the fp32 references on the same rounded values.
"""

import itertools
import random

import pytest
import torch

import rattn_eval.kernels as K
from rattn_eval.kernels import Rope
from rattn_eval.kernels.rattention.naive import rattention_chunked
from rattn_eval.kernels.rla.naive import residual_linear_attention_chunked
from rattn_eval.kernels.swa.naive import swa_attention_chunked

pytestmark = pytest.mark.gpu

# (relative RMS, per-row max-abs / row scale): bf16 as test_gpu_prefill.py (8 significant bits, with P,
# phi and the states rounded to bf16 for the tensor cores); fp16 and fp32 as the CPU tests.
TOL = {torch.bfloat16: (1e-2, 3e-2), torch.float16: (2e-3, 2e-3), torch.float32: (1e-4, 1e-4)}

T_S = [1, 15, 63, 111, 1000, 4097]
WINDOWS = ["0", "7", "64", "T-1", "T+5", "511"]
HEADS = [(4, 4), (4, 1), (8, 2)]
LAYOUTS = ["dense", "padded", "packed", "noncontig"]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
DIMS = [64, 128]
CASES = random.Random(0).sample(list(itertools.product(T_S, WINDOWS, DIMS, HEADS, LAYOUTS, DTYPES)), 48)


def case_id(c):
    T, w, D, (H, Hkv), layout, dt = c
    return f"T{T}-w{w}-D{D}-H{H}kv{Hkv}-{layout}-{str(dt).split('.')[-1]}"


def _window(spec: str, T: int) -> int:
    if spec == "T-1":
        return max(T - 1, 0)
    if spec == "T+5":
        return T + 5
    return int(spec)


def _inputs(T, H, Hkv, D, dtype, layout, g):
    B = 3 if layout == "padded" else 1
    if layout == "noncontig":  # q, k, v as slices of one fused projection, heads interleaved
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
    return q, k, v, var


def _check(out, ref, dtype, what):
    rms_tol, row_tol = TOL[dtype]
    o, r = out.float(), ref.float()
    assert torch.isfinite(o).all(), f"{what}: non-finite output"
    assert o.shape == r.shape
    scale = r.abs().amax(-1)
    row_err = (o - r).abs().amax(-1)
    assert not ((scale == 0) & (row_err != 0)).any(), f"{what}: a row that must be zero is not"
    rel = ((o - r).norm() / r.norm().clamp(min=1e-30)).item() if r.norm() > 0 else 0.0
    worst = (row_err / scale.clamp(min=1e-30)).masked_fill(scale == 0, 0).max().item() if o.numel() else 0.0
    assert rel <= rms_tol, f"{what}: relative RMS {rel:.3g} > {rms_tol}"
    assert worst <= row_tol, f"{what}: per-row error {worst:.3g} x row scale > {row_tol}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_awkward_shapes(case):
    T, wspec, D, (H, Hkv), layout, dtype = case
    w = _window(wspec, T)
    g = torch.Generator(device="cuda").manual_seed(T * 7 + D)
    q, k, v, var = _inputs(T, H, Hkv, D, dtype, layout, g)
    f = lambda x: x.float().contiguous()  # noqa: E731
    cos, sin = Rope(D, theta=10000.0).tables(T, "cuda")
    gs = torch.rand(H, D, device="cuda", generator=g) + 0.5
    gr = torch.rand(H, D, device="cuda", generator=g) + 0.5
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        before = dict(K.launches)
        out = K.swa_attention(q, k, v, window=w, backend="triton", **var)
        _check(out, swa_attention_chunked(f(q), f(k), f(v), window=w, **var), dtype, f"swa {case_id(case)}")
        out = K.residual_linear_attention(q, k, v, window=w, backend="triton", **var)
        ref = residual_linear_attention_chunked(f(q), f(k), f(v), window=w, **var)
        _check(out, ref, dtype, f"rla {case_id(case)}")
        kw = dict(window=w, rope=(cos, sin), swa_norm_weight=gs, rla_norm_weight=gr, **var)
        out = K.rattention(q, k, v, backend="triton", **kw)
        _check(out, rattention_chunked(f(q), f(k), f(v), **kw), dtype, f"rattention {case_id(case)}")
        for op in ("swa", "rla", "rattention"):
            assert K.launches[f"triton.{op}"] == before.get(f"triton.{op}", 0) + 1, f"{op} did not run in Triton"


def test_head_dim_256_swa_awkward():
    """Gemma-3's head dim: SWA only (the RLA state at 256 does not fit on chip)."""
    g = torch.Generator(device="cuda").manual_seed(11)
    for T, w, dtype in [(1000, 511, torch.bfloat16), (4097, 7, torch.float16), (63, 0, torch.float32)]:
        q, k, v, var = _inputs(T, 8, 1, 256, dtype, "padded", g)
        out = K.swa_attention(q, k, v, window=w, backend="triton", **var)
        f = lambda x: x.float()  # noqa: E731
        _check(out, swa_attention_chunked(f(q), f(k), f(v), window=w, **var), dtype, f"swa D256 T{T} w{w} {dtype}")
