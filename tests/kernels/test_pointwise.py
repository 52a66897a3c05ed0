"""Pointwise kernels of the model's triton backend (RMSNorm + residual, gated activation, RoPE) against
their PyTorch references under the CPU interpreter; the RoPE reference against the HF convention."""

import pytest
import torch
import torch.nn.functional as F
from closeness import assert_close

from rattn_eval.kernels import Rope, apply_rope, rms_norm
from rattn_eval.kernels.pointwise import apply_rope_triton, gated_act_triton, rms_norm_triton


@pytest.mark.parametrize("shape", [(3, 7, 640), (1, 5, 4, 256), (2, 1, 96), (0, 64)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_rms_norm(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    w = torch.randn(shape[-1], generator=gen)
    res = torch.randn(shape, generator=gen).to(dtype)
    exp = rms_norm(x, w, 1e-6).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    assert_close(rms_norm_triton(x, w, 1e-6), exp, tol, "norm")
    assert_close(rms_norm_triton(x, w, 1e-6, residual=res), res + exp, tol, "residual + norm")


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gated_act(act, dtype):
    gen = torch.Generator().manual_seed(1)
    g = (torch.randn(5, 3000, generator=gen) * 4).to(dtype)
    u = torch.randn(5, 3000, generator=gen).to(dtype)
    a = F.silu(g.float()) if act == "silu" else F.gelu(g.float(), approximate="tanh")
    exp = a.to(dtype).float() * u.float()
    assert_close(gated_act_triton(g, u, act), exp, 1e-5 if dtype == torch.float32 else 1e-3, act)
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
    assert_close(apply_rope_triton(x, cos, sin), apply_rope(x, cos, sin), 1e-5, "rope")


def test_rope_reference_matches_the_hf_convention():
    D = 8
    cos, sin = Rope(D, theta=10000.0).tables(5)
    x = torch.randn(1, 5, 1, D)
    # explicit pairwise rotation of (i, i + D/2) by angle pos * theta^(-2i/D)
    y = torch.empty_like(x)
    for p in range(5):
        for i in range(D // 2):
            a = p * 10000.0 ** (-2 * i / D)
            c, s = torch.cos(torch.tensor(a)), torch.sin(torch.tensor(a))
            y[0, p, 0, i] = x[0, p, 0, i] * c - x[0, p, 0, i + D // 2] * s
            y[0, p, 0, i + D // 2] = x[0, p, 0, i + D // 2] * c + x[0, p, 0, i] * s
    assert_close(apply_rope(x, cos, sin), y, 1e-5, "rope reference")
