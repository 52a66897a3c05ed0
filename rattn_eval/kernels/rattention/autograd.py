"""RAttention with its gradient in Triton: the training path of the Triton backend.

    o = rms(SWA(rope(q), rope(k), v)) * g_swa + rms(RLA(q, k, v)) * g_rla

One autograd Function over the kernels of both branches (forward: up to seven launches, backward: about a
dozen):

  forward   `rla_partials` (rla/chunk.py) rotates q and k in its phi passes and writes the raw RLA output as
            one partial per feature half; `swa_forward_with_lse` (swa/backward.py) runs the window on the
            rotated rows and keeps the softmax statistics; `combine_forward` (combine.py) adds the two
            normalized branches, reading the RLA partials directly and keeping their sum for the backward.
  backward  `combine_backward` splits the output gradient into the two branches (and the gains'
            gradients); `launch_swa_bwd` gives the SWA branch's gradients of the rotated q, k and of v; the
            RLA backward (rla/backward.py) adds them in the passes that write its own dq, dk, dv, taking
            the rotated ones back through RoPE there, so no pass sums the branches or undoes RoPE alone.

When a RoPE table itself requires grad, the op composes differentiable pieces instead, so the tables get
their gradient from autograd: `common.apply_rope`, the public `swa_attention`, the RLA autograd Function
and `combine_triton`. Inference keeps the fused prefill (fused.py): the kernels
package picks this file only when a gradient is needed.
"""

from __future__ import annotations

import torch

from ..common import apply_rope, default_scale
from ..rla.backward import residual_linear_attention_backward, residual_linear_attention_triton_autograd
from ..rla.chunk import prepare_rla_launch, rla_partials
from ..swa.backward import launch_swa_bwd, swa_forward_with_lse
from .combine import combine_backward, combine_forward, combine_triton
from .fused import _rope_tables


class RAttentionFunction(torch.autograd.Function):
    """forward(q, k, v, g_swa, g_rla, cos, sin, window, scale, feature_map, eps, lengths, cu_seqlens) -> o;
    the RoPE tables (cos, sin) get no gradient (None when there is no RoPE). First derivatives only."""

    @staticmethod
    def forward(ctx, q, k, v, g_swa, g_rla, cos, sin, window, scale, feature_map, eps, lengths, cu_seqlens):
        q, k, v, seqs, _, w, feature = prepare_rla_launch(q, k, v, window, feature_map, lengths, cu_seqlens)
        B, T, H, D = q.shape
        # fp32 tables: only the two phi passes and the backward's dq / dk kernels read them (once per row),
        # so 16-bit ones would save little, and the rotation and its transpose keep the reference's precision
        tables = None if cos is None else _rope_tables((cos, sin), B, T, D, q.device, torch.float32)
        qr, kr = (q, k) if tables is None else (torch.empty_like(q), torch.empty_like(k))
        # bf16 keeps fp32's range, so the raw partials can be bf16; fp16 ones could overflow
        rdt = torch.float32 if q.dtype == torch.float16 else q.dtype
        parts = rla_partials(q, k, v, seqs, window=w, feature=feature, raw_dtype=rdt,
                             kr=None if tables is None else kr, qr=None if tables is None else qr, rope=tables)
        # one sequence table for every launch, forward and backward (the RLA passes' is built for the SWA
        # forward's blocks)
        o, o_res, lse, _, _ = swa_forward_with_lse(qr, kr, v, window=w, scale=scale, lengths=lengths,
                                                   cu_seqlens=cu_seqlens, seqs=seqs)
        g_swa, g_rla = (None if g is None else g.contiguous() for g in (g_swa, g_rla))
        # the backward's combine reads the RLA output summed once (half the partials' memory)
        out, ra, rb, o_rla = combine_forward(o, parts, g_swa, g_rla, eps, q.dtype, keep_sum=parts.shape[0] > 1)
        o_rla = parts if o_rla is None else o_rla[None]
        del parts
        ctx.save_for_backward(q, k, v, qr, kr, o, o_res, lse, o_rla, g_swa, g_rla, ra, rb,
                              *(() if tables is None else tables))
        ctx.seqs, ctx.window, ctx.scale = seqs, w, default_scale(D, scale)
        ctx.args = dict(feature_map=feature_map, lengths=lengths, cu_seqlens=cu_seqlens)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        q, k, v, qr, kr, o, o_res, lse, o_rla, g_swa, g_rla, ra, rb, *tables = ctx.saved_tensors
        need_q, need_k, need_v, need_ws, need_wr = ctx.needs_input_grad[:5]
        # fp16: the RLA branch's gradient in fp32. Where o_rla is 0 (every row inside the window) the norm's
        # gradient is dy * g / sqrt(eps), 1000 dy at eps 1e-6, past 65504 under a loss scale (inf, then
        # inf * 0 = NaN in the RLA backward); large raw outputs give gradients below fp16's normal range
        d_rla_dtype = torch.float32 if q.dtype == torch.float16 else None
        d_swa, d_rla, dg_swa, dg_rla = combine_backward(dy, o, o_rla, g_swa, g_rla, ra, rb, need_ws, need_wr,
                                                        d_rla_dtype)
        dq = dk = dv = None
        if need_q or need_k or need_v:
            sq, sk, sv = launch_swa_bwd(d_swa, qr, kr, v, o, o_res, lse, ctx.seqs, window=ctx.window,
                                        scale=ctx.scale, need_dq=need_q, need_dkdv=need_k or need_v)
            del d_swa
            dq, dk, dv = residual_linear_attention_backward(
                q, k, v, d_rla, window=ctx.window, needs=(need_q, need_k, need_v), add=(sq, sk, sv),
                rope=tuple(tables) or None, seqs=ctx.seqs, **ctx.args)
        return dq, dk, dv, dg_swa, dg_rla, *([None] * 8)


def rattention_triton_autograd(q, k, v, *, window, rope=None, scale=None, feature_map="softmax",
                               swa_norm_weight=None, rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None):
    """RAttention with gradients for q, k, v, the norm weights and (through the composed path) the RoPE tables.

    Args/Returns as `rattention_triton`: q (B, T, H, D) raw; k, v (B, T, Hkv, D) raw; rope (cos, sin),
    each (T, D) or (B, T, D), or None; norm weights (H, D) or None (ones). Returns (B, T, H, D) in q.dtype.
    """
    from .. import swa_attention  # the package imports this module lazily

    if window is None:
        raise ValueError("rattention needs an int window; use swa_attention(window=None) for full attention")
    if rope is not None and (rope[0].requires_grad or rope[1].requires_grad):
        qr, kr = apply_rope(q, *rope), apply_rope(k, *rope)
        o_swa = swa_attention(qr, kr, v, window=window, scale=scale, lengths=lengths, cu_seqlens=cu_seqlens,
                              backend="triton")
        # fp16: the RLA output and its gradient in fp32 (as in RAttentionFunction.backward)
        o_rla = residual_linear_attention_triton_autograd(q, k, v, window=window, feature_map=feature_map,
                                                          lengths=lengths, cu_seqlens=cu_seqlens,
                                                          out_dtype=torch.float32 if q.dtype == torch.float16 else None)
        return combine_triton(o_swa, o_rla, swa_norm_weight, rla_norm_weight, eps, q.dtype)
    cos, sin = (None, None) if rope is None else rope
    return RAttentionFunction.apply(q, k, v, swa_norm_weight, rla_norm_weight, cos, sin, window, scale, feature_map,
                                    eps, lengths, cu_seqlens)
