"""RAttention that autograd differentiates: the training path of the Triton backend.

    o = rms(SWA(rope(q), rope(k), v)) * g_swa + rms(RLA(q, k, v)) * g_rla

composed from differentiable pieces: RoPE as one Triton pass each way (`pointwise.apply_rope_autograd`),
the public `swa_attention` op (with gradients enabled its Triton backend runs the SWA autograd op of
swa/backward.py), the RLA autograd Function of rla/backward.py, and the two RMS norms and the sum as one
Triton pass each way (combine.py, fp32 math as the references). Inference keeps the fused prefill
(fused.py): the kernels package picks this path only when a gradient is needed.
"""

from __future__ import annotations

from ..pointwise import apply_rope_autograd
from ..rla.backward import residual_linear_attention_triton_autograd
from .combine import combine_triton


def rattention_triton_autograd(q, k, v, *, window, rope=None, scale=None, feature_map="softmax",
                               swa_norm_weight=None, rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None):
    """RAttention with gradients for q, k, v, the norm weights and the RoPE tables.

    Args/Returns as `rattention_triton`: q (B, T, H, D) raw; k, v (B, T, Hkv, D) raw; rope (cos, sin),
    each (T, D) or (B, T, D), or None; norm weights (H, D) or None (ones). Returns (B, T, H, D) in q.dtype.
    """
    from .. import swa_attention  # the package imports this module lazily

    if window is None:
        raise ValueError("rattention needs an int window; use swa_attention(window=None) for full attention")
    qr, kr = (q, k) if rope is None else (apply_rope_autograd(q, *rope), apply_rope_autograd(k, *rope))
    o_swa = swa_attention(qr, kr, v, window=window, scale=scale, lengths=lengths, cu_seqlens=cu_seqlens,
                          backend="triton")
    o_rla = residual_linear_attention_triton_autograd(q, k, v, window=window, feature_map=feature_map, lengths=lengths,
                                                      cu_seqlens=cu_seqlens)
    return combine_triton(o_swa, o_rla, swa_norm_weight, rla_norm_weight, eps, q.dtype)
