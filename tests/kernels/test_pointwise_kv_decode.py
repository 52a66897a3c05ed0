"""Triton pointwise kernels (RMSNorm + residual, gated activation, RoPE) and the global-layer
flash-decoding kernel against their PyTorch references, under the CPU interpreter (GPU: bf16)."""

import pytest
import torch
import torch.nn.functional as F

from rattn_eval.kernels import Rope, apply_rope, kv_decode, kv_decode_naive, launches, rms_norm
from rattn_eval.kernels.decode import kv_split
from rattn_eval.kernels.pointwise import apply_rope_triton, gated_act_triton, rms_norm_triton


def _close(got, exp, tol, what):
    assert got.shape == exp.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(exp.shape)}"
    if exp.numel() == 0:
        return
    err = (got.float() - exp.float()).abs().max().item()
    scale = exp.float().abs().max().item()
    assert err <= tol * max(scale, 1e-6), f"{what}: max err {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("shape", [(3, 7, 640), (1, 5, 4, 256), (2, 1, 96), (0, 64)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_rms_norm(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    w = torch.randn(shape[-1], generator=gen)
    res = torch.randn(shape, generator=gen).to(dtype)
    exp = rms_norm(x, w, 1e-6).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    _close(rms_norm_triton(x, w, 1e-6), exp, tol, "norm")
    _close(rms_norm_triton(x, w, 1e-6, residual=res), res + exp, tol, "residual + norm")


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gated_act(act, dtype):
    gen = torch.Generator().manual_seed(1)
    g = (torch.randn(5, 3000, generator=gen) * 4).to(dtype)
    u = torch.randn(5, 3000, generator=gen).to(dtype)
    a = F.silu(g.float()) if act == "silu" else F.gelu(g.float(), approximate="tanh")
    exp = a.to(dtype).float() * u.float()
    _close(gated_act_triton(g, u, act), exp, 1e-5 if dtype == torch.float32 else 1e-3, act)
    with pytest.raises(ValueError, match="unknown activation"):
        gated_act_triton(g, u, "relu")


@pytest.mark.parametrize("per_row", [False, True], ids=["table", "per-row-table"])
def test_rope(per_row):
    gen = torch.Generator().manual_seed(2)
    B, T, H, D = 2, 9, 3, 64
    x = torch.randn(B, T, H, D, generator=gen)
    rope = Rope(D, theta=10000.0)
    if per_row:
        cos, sin = rope.cos_sin(torch.arange(T)[None] + torch.tensor([[0], [1000]]))  # (B, T, D)
    else:
        cos, sin = rope.tables(T)
    _close(apply_rope_triton(x, cos, sin), apply_rope(x, cos, sin), 1e-5, "rope")


@pytest.mark.parametrize("case", [
    # B, S, H, Hkv, D, positions
    (3, 200, 4, 1, 256, [0, 57, 199]),
    (2, 131, 8, 2, 64, [130, 3]),
    (1, 40, 2, 2, 128, [17]),
], ids=["gemma-like", "gqa-d64", "mha-d128"])
@pytest.mark.parametrize("target", [1, 4, 1000], ids=["one-split", "4-programs", "many-splits"])
def test_kv_decode_matches_reference(case, target, monkeypatch):
    """Keys past each row's position (here random, not zeros) must be ignored; every split count agrees."""
    monkeypatch.setattr(kv_split, "_SPLIT_TARGET", target)
    B, S, H, Hkv, D, positions = case
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(B, H, D, generator=gen)
    k = torch.randn(B, S, Hkv, D, generator=gen)
    v = torch.randn(B, S, Hkv, D, generator=gen)
    pos = torch.tensor(positions)
    exp = kv_decode_naive(q, k, v, pos, scale=0.07)
    before = launches["triton.kv_decode"]
    got = kv_decode(q, k, v, pos, scale=0.07, backend="triton")
    assert launches["triton.kv_decode"] == before + 1
    _close(got, exp, 1e-5, "kv decode")
    # unfilled slots may hold NaN (a cache from torch.empty): neither path may let them through
    kn, vn = k.clone(), v.clone()
    for b, p in enumerate(positions):
        kn[b, p + 1:] = float("nan")
        vn[b, p + 1:] = float("nan")
    _close(kv_decode_naive(q, kn, vn, pos, scale=0.07), exp, 1e-6, "reference with NaN slots")
    _close(kv_decode(q, kn, vn, pos, scale=0.07, backend="triton"), exp, 1e-5, "kv decode with NaN slots")
    # the reference itself: explicit softmax over the visible keys of each row
    for b, p in enumerate(positions):
        kk = k[b, : p + 1].repeat_interleave(H // Hkv, dim=1)  # (p+1, H, D)
        vv = v[b, : p + 1].repeat_interleave(H // Hkv, dim=1)
        att = torch.softmax(torch.einsum("hd,shd->hs", q[b], kk) * 0.07, dim=-1)
        _close(exp[b], torch.einsum("hs,shd->hd", att, vv), 1e-5, f"reference row {b}")


def test_kv_decode_errors():
    q, kv, pos = torch.randn(2, 4, 64), torch.randn(2, 10, 3, 64), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="H % Hkv"):
        kv_decode(q, kv, kv, pos, backend="triton")
    with pytest.raises(ValueError, match="dtype"):
        kv_decode(q, torch.randn(2, 10, 2, 64).half(), torch.randn(2, 10, 2, 64).half(), pos, backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_kv_decode_positions_outside_the_cache(backend):
    """pos < 0 or >= S: the public op raises on the CPU; the backends (what runs on a GPU, without a sync
    per step) give that row NaN, never read past the cache, and compute the other rows as usual."""
    gen = torch.Generator().manual_seed(5)
    B, S, H, Hkv, D = 3, 20, 4, 2, 64
    q = torch.randn(B, H, D, generator=gen)
    k = torch.randn(B, S, Hkv, D, generator=gen)
    v = torch.randn(B, S, Hkv, D, generator=gen)
    pos = torch.tensor([S, 7, -1])
    with pytest.raises(ValueError, match=r"in \[0, 19\]"):
        kv_decode(q, k, v, pos, backend=backend)
    impl = kv_decode_naive if backend == "torch" else kv_split.kv_decode_triton
    got = impl(q, k, v, pos)
    assert torch.isnan(got[0]).all() and torch.isnan(got[2]).all(), "rows at positions outside the cache must be NaN"
    _close(got[1:2], kv_decode_naive(q[1:2], k[1:2], v[1:2], pos[1:2]), 1e-5, "the row at a valid position")


@pytest.mark.gpu
def test_kv_decode_bf16_gpu():
    gen = torch.Generator().manual_seed(4)
    B, S, H, Hkv, D = 8, 32768 + 100, 4, 1, 256
    q = torch.randn(B, H, D, generator=gen).cuda()
    k = torch.randn(B, S, Hkv, D, generator=gen).cuda()
    v = torch.randn(B, S, Hkv, D, generator=gen).cuda()
    pos = torch.tensor([S - 1 - 13 * i for i in range(B)]).cuda()
    exp = kv_decode_naive(q, k, v, pos)
    got = kv_decode(q.bfloat16(), k.bfloat16(), v.bfloat16(), pos, backend="triton")
    rel = ((got.float() - exp).pow(2).mean().sqrt() / exp.pow(2).mean().sqrt()).item()
    assert rel <= 1e-2, rel


@pytest.mark.gpu
def test_kv_decode_positions_outside_the_cache_gpu():
    """On CUDA no sync checks pos: rows past the cache or below 0 come out NaN (nothing read past it)."""
    gen = torch.Generator().manual_seed(6)
    B, S, H, Hkv, D = 4, 300, 8, 2, 128
    q = torch.randn(B, H, D, generator=gen).cuda()
    k = torch.randn(B, S, Hkv, D, generator=gen).cuda()
    v = torch.randn(B, S, Hkv, D, generator=gen).cuda()
    pos = torch.tensor([S, 17, -1, S + 10_000]).cuda()
    got = kv_decode(q, k, v, pos, backend="auto")
    assert torch.isnan(got[[0, 2, 3]]).all()
    _close(got[1:2], kv_decode_naive(q[1:2], k[1:2], v[1:2], pos[1:2]), 1e-5, "the row at a valid position")
