"""RAttention = SWA on RoPE-rotated q/k + residual linear attention on raw q/k, each
RMS-normed per head and summed: o = rms(o_swa) * g_swa + rms(o_rla) * g_rla."""

from __future__ import annotations

import torch

from ..common import apply_rope, rms_norm
from ..rla.naive import residual_linear_attention_chunked, residual_linear_attention_naive
from ..swa.naive import swa_attention_chunked, swa_attention_naive


def combine(o_swa, o_rla, swa_norm_weight, rla_norm_weight, eps):
    """(B, T, H, D) each -> fp32 (B, T, H, D)."""
    return rms_norm(o_swa, swa_norm_weight, eps) + rms_norm(o_rla, rla_norm_weight, eps)


def _rattention(swa_fn, rla_fn, q, k, v, *, window, rope, scale, feature_map, swa_norm_weight, rla_norm_weight, eps, lengths, cu_seqlens):
    if window is None:
        raise ValueError("rattention needs an int window; use swa_attention(window=None) for full attention")
    qr, kr = (q, k) if rope is None else (apply_rope(q, *rope), apply_rope(k, *rope))
    o_swa = swa_fn(qr, kr, v, window=window, scale=scale, lengths=lengths, cu_seqlens=cu_seqlens).float()
    # fp32 out of the RLA branch, not rounded to q's dtype: raw sums may pass fp16's 65504, and the norm's
    # gradient where o_rla is 0 (rows inside the window) is dy * g / sqrt(eps), which would overflow it too
    o_rla = rla_fn(q, k, v, window=window, feature_map=feature_map, lengths=lengths, cu_seqlens=cu_seqlens,
                   out_dtype=torch.float32)
    return combine(o_swa, o_rla, swa_norm_weight, rla_norm_weight, eps).to(q.dtype)


def rattention_naive(q, k, v, *, window, rope=None, scale=None, feature_map="softmax", swa_norm_weight=None,
                     rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None):
    """Materializing reference. rope = (cos, sin), each (T, D) or (B, T, D), or None.

    Args: q (B, T, H, D) raw; k, v (B, T, Hkv, D) raw; norm weights (H, D) or None (ones).
    Returns: (B, T, H, D) in q.dtype.
    """
    return _rattention(swa_attention_naive, residual_linear_attention_naive, q, k, v, window=window, rope=rope,
                       scale=scale, feature_map=feature_map, swa_norm_weight=swa_norm_weight,
                       rla_norm_weight=rla_norm_weight, eps=eps, lengths=lengths, cu_seqlens=cu_seqlens)


def rattention_chunked(q, k, v, *, window, rope=None, scale=None, feature_map="softmax", swa_norm_weight=None,
                       rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None):
    """Chunked reference (no T^2 memory); same contract as `rattention_naive`."""
    return _rattention(swa_attention_chunked, residual_linear_attention_chunked, q, k, v, window=window, rope=rope,
                       scale=scale, feature_map=feature_map, swa_norm_weight=swa_norm_weight,
                       rla_norm_weight=rla_norm_weight, eps=eps, lengths=lengths, cu_seqlens=cu_seqlens)
