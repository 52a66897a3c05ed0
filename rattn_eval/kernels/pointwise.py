"""Fused row-wise and element-wise ops of the decoder in Triton: RMSNorm (optionally added to a
residual), the gated activation of the FFN, and rotate-half RoPE.

Each is one read and one write of its tensors, where the PyTorch composition (fp32 upcast, square,
mean, rsqrt, multiply, cast, add) makes five to eight passes. At 32k tokens these passes, not the
matrix products, were most of a Gemma-3-270M prefill on the H200. Math is fp32 throughout, as in the
PyTorch versions (`rattn_eval.kernels.common.rms_norm`, `apply_rope`, `torch.nn.functional.gelu`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}


@triton.jit
def rms_norm_kernel(x_ptr, w_ptr, res_ptr, out_ptr, n_rows, N, eps,
                    HAS_RES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < N)[None, :]
    offs = rows[:, None] * N + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, axis=1) / N + eps)[:, None] * w[None, :]
    if HAS_RES:
        # the PyTorch order: the norm's output is rounded to the activation dtype, then added
        y = y.to(out_ptr.dtype.element_ty).to(tl.float32)
        y += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """x (..., N) -> x / rms(x) * weight in x.dtype (fp32 math); with `residual` (same shape and dtype)
    returns residual + that."""
    N = x.shape[-1]
    x2 = x.contiguous().view(-1, N)
    out = torch.empty_like(x2)
    res = None if residual is None else residual.contiguous().view(-1, N)
    if res is not None and (res.shape != x2.shape or res.dtype != x.dtype):
        raise ValueError(f"residual must match x: {tuple(residual.shape)} {residual.dtype} vs {tuple(x.shape)} {x.dtype}")
    block_n = triton.next_power_of_2(N)
    block_r = max(1, min(16, 4096 // block_n))
    rows = x2.shape[0]
    if rows:
        rms_norm_kernel[(triton.cdiv(rows, block_r),)](
            x2, weight.contiguous(), x2 if res is None else res, out, rows, N, float(eps),
            HAS_RES=res is not None, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=4 if block_n <= 2048 else 8,
        )
    return out.view(x.shape)


@triton.jit
def gated_act_kernel(g_ptr, u_ptr, out_ptr, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ACT == 0:
        a = g / (1.0 + tl.exp(-g))
    else:  # tanh-approximated GELU; tanh(z) = 2 sigmoid(2z) - 1
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        a = g * (1.0 - 1.0 / (1.0 + tl.exp(2.0 * z)))
    # the PyTorch order: act(g) is rounded to the activation dtype before the product
    a = a.to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + offs, (a * u).to(out_ptr.dtype.element_ty), mask=mask)


def gated_act_triton(g: torch.Tensor, u: torch.Tensor, act: str) -> torch.Tensor:
    """act(g) * u, act "silu" or "gelu_tanh"; g, u of one shape and dtype."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")
    if g.shape != u.shape or g.dtype != u.dtype:
        raise ValueError(f"g and u must match: {tuple(g.shape)} {g.dtype} vs {tuple(u.shape)} {u.dtype}")
    g, u = g.contiguous(), u.contiguous()
    out = torch.empty_like(g)
    n = g.numel()
    if n:
        gated_act_kernel[(triton.cdiv(n, 1024),)](g, u, out, n, ACT=ACTIVATIONS[act], BLOCK=1024, num_warps=4)
    return out


@triton.jit
def rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, T, H, stride_cb, D: tl.constexpr, HALF: tl.constexpr,
                BLOCK_H: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # one (b, t) token: all its heads
    b = pid // T
    t = pid % T
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, HALF)
    hm = (h < H)[:, None]
    base = x_ptr + pid * H * D + h[:, None] * D
    x1 = tl.load(base + d[None, :], mask=hm, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF + d[None, :], mask=hm, other=0.0).to(tl.float32)
    crow = b * stride_cb + t * D
    c1 = tl.load(cos_ptr + crow + d)[None, :]
    c2 = tl.load(cos_ptr + crow + HALF + d)[None, :]
    s1 = tl.load(sin_ptr + crow + d)[None, :]
    s2 = tl.load(sin_ptr + crow + HALF + d)[None, :]
    ob = out_ptr + pid * H * D + h[:, None] * D
    # x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]
    y1 = x1 * c1 - x2 * s1
    y2 = x2 * c2 + x1 * s2
    tl.store(ob + d[None, :], y1.to(out_ptr.dtype.element_ty), mask=hm)
    tl.store(ob + HALF + d[None, :], y2.to(out_ptr.dtype.element_ty), mask=hm)


def apply_rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`common.apply_rope` in one pass: x (B, T, H, D), cos/sin (T, D) or (B, T, D) fp32."""
    B, T, H, D = x.shape
    if D % 2 or D & (D - 1):
        raise ValueError(f"the Triton RoPE needs a power-of-two head dim, got {D}")
    if cos.dim() == 2:
        cos, sin, stride_cb = cos[None], sin[None], 0
    else:
        stride_cb = T * D
    if cos.shape[-2:] != (T, D) or cos.shape != sin.shape or cos.shape[0] not in (1, B):
        raise ValueError(f"rope tables must be (T, D) or (B, T, D) for x {tuple(x.shape)}, got {tuple(cos.shape)}")
    if cos.shape[0] == 1:
        stride_cb = 0
    cos = cos.to(torch.float32).contiguous()
    sin = sin.to(torch.float32).contiguous()
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        rope_kernel[(B * T,)](x, cos, sin, out, T, H, stride_cb, D=D, HALF=D // 2,
                              BLOCK_H=triton.next_power_of_2(H), num_warps=4)
    return out
