"""RAttention prefill in Triton.

    o = rms(SWA(rope(q), rope(k), v)) * g_swa + rms(RLA(q, k, v)) * g_rla

Six launches (rattention/README.md):
  1-5. `rla_partials` (rla/chunk.py): phi(k) and k rotated by RoPE, phi(q), the segment totals and
       their carry, then `rla_segment_kernel` (rla/segment.py), which walks each segment's query
       chunks with the state on chip and writes the raw o_rla as one partial per feature half.
  6.   `swa_fwd_kernel` (swa/parallel.py), with the plain-SWA tiles: rotates q, runs the window, and
       adds rms(o_swa) * g_swa + rms(partial_0 + partial_1) * g_rla in its epilogue.
"""

from __future__ import annotations

import torch

from ..common import default_scale
from ..rla.chunk import prepare_rla_launch, rla_partials
from ..swa.parallel import launch_swa_fwd


def _rope_tables(rope, B, T, D, device, dtype):
    """(cos, sin) as contiguous (T, D) or (B, T, D) tables in `dtype` (the kernels compute in fp32)."""
    cos, sin = rope
    shape_ok = cos.shape == sin.shape and (cos.shape == (T, D) or (cos.dim() == 3 and cos.shape in ((B, T, D), (1, T, D))))
    if not shape_ok:
        raise ValueError(f"rope tables must be (T, D) or (B, T, D) = ({B}, {T}, {D}); got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if cos.dim() == 3 and cos.shape[0] == 1:
        cos, sin = cos[0], sin[0]
    return cos.to(device=device, dtype=dtype).contiguous(), sin.to(device=device, dtype=dtype).contiguous()


_ONES: dict = {}


def _norm_weight(w, H, D, device):
    if w is None:
        key = (H, D, str(device))
        if key not in _ONES:
            _ONES[key] = torch.ones(H, D, dtype=torch.float32, device=device)
        return _ONES[key]
    if tuple(w.shape) != (H, D):
        raise ValueError(f"norm weights must be (H, D) = ({H}, {D}), got {tuple(w.shape)}")
    return w.to(device=device, dtype=torch.float32).contiguous()


def rattention_triton(q, k, v, *, window, rope=None, scale=None, feature_map="softmax", swa_norm_weight=None,
                      rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None):
    """Fused RAttention prefill.

    Args:
        q: (B, T, H, D) raw; k, v: (B, T, Hkv, D) raw; fp16, bf16 or fp32; D a power of two 16..256.
        window: int >= 0 (previous tokens seen by the softmax branch).
        rope: (cos, sin), each (T, D) or (B, T, D), rotate-half convention, for the SWA branch only; or None.
        scale: softmax scale (default D ** -0.5); feature_map: "softmax" | "relu" | "identity".
        swa_norm_weight, rla_norm_weight: (H, D) or None (ones); eps: RMSNorm epsilon.
        lengths: (B,) for right-padded batches; cu_seqlens: (N+1,) packed offsets, B == 1.
    Returns:
        (B, T, H, D) in q.dtype; zero at padded positions.
    """
    if window is None:
        raise ValueError("rattention needs an int window; use swa_attention(window=None) for full attention")
    q, k, v, seqs, cfg, w, feature = prepare_rla_launch(q, k, v, window, feature_map, lengths, cu_seqlens)
    B, T, H, D = q.shape
    # bf16 inputs: fp16 tables (2^-11 relative, four times finer than the inputs' own rounding) halve
    # the table bytes every query block and key tile reads; fp16 / fp32 inputs keep fp32 tables.
    tdt = torch.float16 if q.dtype == torch.bfloat16 else torch.float32
    tables = None if rope is None else _rope_tables(rope, B, T, D, q.device, tdt)
    kr = torch.empty_like(k) if tables is not None else None
    # bf16 keeps fp32's range, so the raw partials can be bf16; fp16 ones could overflow
    rdt = torch.float32 if q.dtype == torch.float16 else q.dtype
    raw = rla_partials(q, k, v, seqs, window=w, feature=feature, raw_dtype=rdt, kr=kr, rope=tables)
    out = torch.zeros_like(q) if seqs.zero_fill else torch.empty_like(q)
    return launch_swa_fwd(q, kr if kr is not None else k, v, out, seqs, window=w, scale=default_scale(D, scale),
                          cfg=cfg, rope=tables, rla=raw, swa_norm_weight=_norm_weight(swa_norm_weight, H, D, q.device),
                          rla_norm_weight=_norm_weight(rla_norm_weight, H, D, q.device), eps=eps)
