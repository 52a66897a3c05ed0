"""Triton prefill kernels on a real GPU (marked gpu; skipped without CUDA). Run with
TRITON_INTERPRET=0 so conftest does not switch the interpreter on:

    TRITON_INTERPRET=0 python -m pytest -m gpu tests/kernels/test_gpu_prefill.py

bf16 inputs against the fp32 chunked references (computed on the same bf16 values) at T = 4k, 32k,
128k; fp32 inputs with TF32 off at 1e-4; fp16 inputs at 2e-3.
"""

import pytest
import torch

import rattn_eval.kernels as K
from rattn_eval.kernels import Rope
from rattn_eval.kernels.rattention.naive import rattention_chunked
from rattn_eval.kernels.rla.naive import residual_linear_attention_chunked
from rattn_eval.kernels.swa.naive import swa_attention_chunked

pytestmark = pytest.mark.gpu

# bf16 holds 8 significant bits: one output rounding is already ~4e-3 of a row's largest entry, and
# P, phi(q), phi(k) and the chunk states are rounded to bf16 for the tensor cores as well.
BF16_RMS, BF16_ROW = 1e-2, 3e-2
FP32_TOL = 1e-4


def _inputs(T, H, Hkv, D, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda h: torch.randn(1, T, h, D, device="cuda", generator=g).to(dtype)  # noqa: E731
    return mk(H), mk(Hkv), mk(Hkv)


def _check(out, ref, rms_tol, row_tol, what):
    o, r = out.float(), ref.float()
    assert torch.isfinite(o).all(), what
    rel = ((o - r).norm() / r.norm()).item()
    row_err = (o - r).abs().amax(-1)
    scale = r.abs().amax(-1)
    worst = (row_err / scale.clamp(min=1e-30)).masked_fill(scale == 0, 0).max().item()
    assert not ((scale == 0) & (row_err != 0)).any(), f"{what}: a row that must be zero is not"
    print(f"{what}: rel RMS {rel:.2e}, worst row {worst:.2e}")
    assert rel <= rms_tol, f"{what}: relative RMS {rel:.3g} > {rms_tol}"
    assert worst <= row_tol, f"{what}: per-row error {worst:.3g} > {row_tol}"


def _run_all(T, dtype, rms_tol, row_tol, H=4, Hkv=2, D=128, w=512):
    q, k, v = _inputs(T, H, Hkv, D, dtype)
    cos, sin = Rope(D).tables(T, "cuda")
    gs = torch.rand(H, D, device="cuda") + 0.5
    gr = torch.rand(H, D, device="cuda") + 0.5
    f = lambda x: x.float()  # noqa: E731
    with torch.no_grad():
        out = K.swa_attention(q, k, v, window=w, backend="triton")
        _check(out, swa_attention_chunked(f(q), f(k), f(v), window=w), rms_tol, row_tol, f"swa T={T} {dtype}")
        out = K.residual_linear_attention(q, k, v, window=w, backend="triton")
        ref = residual_linear_attention_chunked(f(q), f(k), f(v), window=w)
        _check(out, ref, rms_tol, row_tol, f"rla T={T} {dtype}")
        kw = dict(window=w, rope=(cos, sin), swa_norm_weight=gs, rla_norm_weight=gr)
        out = K.rattention(q, k, v, backend="triton", **kw)
        _check(out, rattention_chunked(f(q), f(k), f(v), **kw), rms_tol, row_tol, f"rattention T={T} {dtype}")


@pytest.mark.parametrize("T", [4096, 32768, 131072])
def test_bf16_against_fp32_reference(T):
    _run_all(T, torch.bfloat16, BF16_RMS, BF16_ROW)


@pytest.mark.parametrize("dtype,logit,w", [(torch.bfloat16, -300.0, 100), (torch.float16, -25.0, 100),
                                           (torch.bfloat16, -300.0, 512)])
def test_scores_far_below_zero(dtype, logit, w):
    # every score near `logit` (q = a u, k = -a u plus noise), windows whose first tiles are fully masked for some
    # rows (100) and aligned ones (512): the online softmax must follow each row's true maximum
    T, H, Hkv, D = 4096, 4, 2, 128
    g = torch.Generator(device="cuda").manual_seed(3)
    u = torch.randn(D, device="cuda", generator=g)
    u = u / u.norm()
    a = (-logit * D ** 0.5) ** 0.5
    q = (a * u + 0.3 * torch.randn(1, T, H, D, device="cuda", generator=g)).to(dtype)
    k = (-a * u + 0.3 * torch.randn(1, T, Hkv, D, device="cuda", generator=g)).to(dtype)
    v = torch.randn(1, T, Hkv, D, device="cuda", generator=g).to(dtype)
    rms_tol, row_tol = (BF16_RMS, BF16_ROW) if dtype == torch.bfloat16 else (2e-3, 2e-3)
    f = lambda x: x.float()  # noqa: E731
    with torch.no_grad():
        out = K.swa_attention(q, k, v, window=w, backend="triton")
        _check(out, swa_attention_chunked(f(q), f(k), f(v), window=w), rms_tol, row_tol, f"swa logit {logit} {dtype} w={w}")
        out = K.rattention(q, k, v, window=w, backend="triton")
        _check(out, rattention_chunked(f(q), f(k), f(v), window=w), rms_tol, row_tol,
               f"rattention logit {logit} {dtype} w={w}")


def test_large_scores_fp16_swa():
    # q, k of std 20 (scores q.k / sqrt(D) of std ~400): the scale multiplies the fp32 scores, so q is
    # rounded to fp16 only once (it is an fp16 input already); plain SWA must stay at the fp16 tolerance
    T, H, Hkv, D = 4096, 4, 2, 128
    g = torch.Generator(device="cuda").manual_seed(5)
    q, k = ((torch.randn(1, T, h, D, device="cuda", generator=g) * 20).half() for h in (H, Hkv))
    v = torch.randn(1, T, Hkv, D, device="cuda", generator=g).half()
    with torch.no_grad():
        for w in (100, 512):
            out = K.swa_attention(q, k, v, window=w, backend="triton")
            ref = swa_attention_chunked(q.float(), k.float(), v.float(), window=w)
            _check(out, ref, 2e-3, 2e-3, f"swa fp16 std-20 q / k w={w}")


@pytest.mark.parametrize("T", [4096, 32768])
def test_fp32_tf32_off(T):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        _run_all(T, torch.float32, FP32_TOL, FP32_TOL)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("T", [4096, 32768])
def test_fp16(T):
    # fp16 keeps 11 significant bits (rounding ~5e-4 relative): the CPU suite's fp16 tolerance, 2e-3
    _run_all(T, torch.float16, 2e-3, 2e-3)


def test_head_dim_256_swa_and_64_rattention_bf16():
    q, k, v = _inputs(4096, 4, 1, 256, torch.bfloat16)
    out = K.swa_attention(q, k, v, window=511, backend="triton")
    _check(out, swa_attention_chunked(q.float(), k.float(), v.float(), window=511), BF16_RMS, BF16_ROW, "swa D=256")
    q, k, v = _inputs(4096, 8, 2, 64, torch.bfloat16)
    kw = dict(window=100, rope=Rope(64).tables(4096, "cuda"))
    out = K.rattention(q, k, v, backend="triton", **kw)
    _check(out, rattention_chunked(q.float(), k.float(), v.float(), **kw), BF16_RMS, BF16_ROW, "rattention D=64")


def test_varlen_bf16_and_auto_backend_runs_triton():
    T = 5000
    q, k, v = _inputs(T, 4, 4, 128, torch.bfloat16)
    cu = torch.tensor([0, 1000, 3333, 4990], device="cuda")
    before = K.launches["triton.rattention"]
    out = K.rattention(q, k, v, window=300, cu_seqlens=cu)  # backend="auto" on CUDA -> triton
    assert K.launches["triton.rattention"] == before + 1
    ref = rattention_chunked(q.float(), k.float(), v.float(), window=300, cu_seqlens=cu)
    _check(out, ref, BF16_RMS, BF16_ROW, "rattention packed")
    assert out[:, 4990:].abs().max().item() == 0


def test_grids_beyond_65535_blocks():
    # CUDA grids allow at most 65535 blocks in dimensions 2 and 3: more (sequence, head) pairs than
    # that, and more phi(k) row blocks than that (B * T / 32 > 65535), must still run, in one launch.
    g = torch.Generator(device="cuda").manual_seed(1)
    B, T, H, D = 4100, 16, 16, 64
    q, k, v = (torch.randn(B, T, H, D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    f = lambda x: x.float()  # noqa: E731
    for op in (K.swa_attention, K.residual_linear_attention, K.rattention):
        out = op(q, k, v, window=5, backend="triton")
        ref = op(f(q), f(k), f(v), window=5, backend="torch")
        _check(out, ref, BF16_RMS, BF16_ROW, f"{op.__name__} B={B} H={H} T={T}")
    B, T = 70, 32768
    q, k, v = (torch.randn(B, T, 1, D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    out = K.rattention(q, k, v, window=64, backend="triton")
    for b in (0, B - 1):
        ref = rattention_chunked(f(q[b:b + 1]), f(k[b:b + 1]), f(v[b:b + 1]), window=64)
        _check(out[b:b + 1], ref, BF16_RMS, BF16_ROW, f"rattention B={B} T={T} row {b}")


def test_segment_design_options_bf16():
    # options of the "segment" design that only a GPU exercises fully: the two overlap modes (CUDA
    # streams, a race would show as garbage), rotated q from the phi(q) pass, and the SWA pass loading
    # the raw partials early; each against the fp32 reference at 32k, twice
    from rattn_eval.kernels.rattention.fused import rattention_design
    from rattn_eval.kernels.swa.parallel import RLA_TUNING

    T, H, Hkv, D, w = 32768, 4, 2, 128, 512
    q, k, v = _inputs(T, H, Hkv, D, torch.bfloat16, seed=3)
    kw = dict(window=w, rope=Rope(D).tables(T, "cuda"), swa_norm_weight=torch.rand(H, D, device="cuda") + 0.5,
              rla_norm_weight=torch.rand(H, D, device="cuda") + 0.5)
    ref = rattention_chunked(q.float(), k.float(), v.float(), **kw)
    seg, swa = dict(RLA_TUNING["segment"]), dict(RLA_TUNING["swa_cfg"])
    variants = {"overlap": (dict(seg, overlap=True), swa), "overlap prio": (dict(seg, overlap="prio", num_stages=2), swa),
                "rot_q": (dict(seg, rot_q=True), swa), "prefetch_add": (seg, dict(swa, prefetch_add=2))}
    for name, (seg_cfg, swa_cfg) in variants.items():
        for rep in range(2):
            out = rattention_design(q, k, v, scale=None, feature_map="softmax", eps=1e-6, lengths=None, cu_seqlens=None,
                                    design="segment", tuning=dict(segment=seg_cfg, swa_cfg=swa_cfg), **kw)
            _check(out, ref, BF16_RMS, BF16_ROW, f"segment option {name} (run {rep})")
