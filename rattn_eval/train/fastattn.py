"""Training-time attention: exact dense formulations that autograd differentiates fast on a GPU.

At the training length (1k) the chunked references of rattn_eval.kernels spend most of a step in
Python loops (the RLA branch loops over 64-token chunks), which made tiny-rattn train 3.7x slower
than tiny-swa. Here every op is a few large batched kernels instead:

    swa / full   SDPA with a band mask (is_causal for full attention), in the autocast dtype
    rla          o = (phi(Q) phi(K)^T masked to j <= t - window - 1) V, materialized, in fp32
    rattention   rms(swa(rope(q), rope(k), v)) * g_swa + rms(rla(q, k, v)) * g_rla

The RLA form is the definition of the references (`residual_linear_attention_naive`), so it is
exact (up to float rounding; tests/train/test_fastattn.py checks it against the chunked
reference), at O(T^2) memory: fine at 1k, not meant for evaluation lengths.

`training_attention()` routes the native model's attention through these ops for dense batches
(no `lengths`, no `cu_seqlens`); padded or packed calls, prefill and decode keep the kernels
package. It swaps the `kernels` name that rattn_eval.models.model resolves at call time, so the
model code stays the one that is evaluated, and restores it on exit.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .. import kernels
from ..kernels.common import apply_feature_map, apply_rope
from ..kernels.rattention.naive import combine


def _band(T: int, window: int, device) -> torch.Tensor:
    """(T, T) bool, True where query t sees key j: t - window <= j <= t."""
    t = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j <= t) & (j >= t - window)


def swa_attention_train(q, k, v, *, window, scale=None):
    """q (B, T, H, D) rotated, k/v (B, T, Hkv, D). window None = full causal. Returns (B, T, H, D)."""
    H, Hkv = q.shape[2], k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|Hkv, T, D)
    if window is None:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=H != Hkv)
    else:
        mask = _band(q.shape[1], window, q.device)
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=H != Hkv)
    return o.transpose(1, 2)  # (B, T, H, D)


def residual_linear_attention_train(q, k, v, *, window, feature_map="softmax"):
    """Materialized RLA in fp32 (autocast off): (phi(q) phi(k)^T with j <= t - window - 1) v.

    Args: q (B, T, H, D) raw; k, v (B, T, Hkv, D) raw. Returns (B, T, H, D) in q.dtype."""
    g = q.shape[2] // k.shape[2]
    with torch.autocast(device_type=q.device.type, enabled=False):
        pq = apply_feature_map(q, feature_map).transpose(1, 2)  # (B, H, T, F) fp32
        pk = apply_feature_map(k, feature_map).repeat_interleave(g, dim=2).transpose(1, 2)
        vf = v.float().repeat_interleave(g, dim=2).transpose(1, 2)  # (B, H, T, D)
        a = torch.tril(pq @ pk.transpose(-1, -2), diagonal=-(window + 1))  # (B, H, T, T)
        o = a @ vf  # (B, H, T, D)
    return o.transpose(1, 2).to(q.dtype)


def rattention_train(q, k, v, *, window, rope=None, scale=None, feature_map="softmax", swa_norm_weight=None,
                     rla_norm_weight=None, eps=1e-6):
    """RAttention with the two ops above; same contract as kernels.rattention on dense batches."""
    qr, kr = (q, k) if rope is None else (apply_rope(q, *rope), apply_rope(k, *rope))
    o_swa = swa_attention_train(qr, kr, v, window=window, scale=scale).float()
    o_rla = residual_linear_attention_train(q, k, v, window=window, feature_map=feature_map).float()
    return combine(o_swa, o_rla, swa_norm_weight, rla_norm_weight, eps).to(q.dtype)


class _TrainingKernels:
    """The kernels package with swa_attention and rattention replaced for dense batches."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def swa_attention(self, q, k, v, *, window, scale=None, lengths=None, cu_seqlens=None, backend="auto"):
        if lengths is not None or cu_seqlens is not None:
            return self._real.swa_attention(q, k, v, window=window, scale=scale, lengths=lengths,
                                            cu_seqlens=cu_seqlens, backend=backend)
        return swa_attention_train(q, k, v, window=window, scale=scale)

    def rattention(self, q, k, v, *, window, rope=None, scale=None, feature_map="softmax", swa_norm_weight=None,
                   rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None, backend="auto"):
        if lengths is not None or cu_seqlens is not None:
            return self._real.rattention(q, k, v, window=window, rope=rope, scale=scale, feature_map=feature_map,
                                         swa_norm_weight=swa_norm_weight, rla_norm_weight=rla_norm_weight, eps=eps,
                                         lengths=lengths, cu_seqlens=cu_seqlens, backend=backend)
        return rattention_train(q, k, v, window=window, rope=rope, scale=scale, feature_map=feature_map,
                                swa_norm_weight=swa_norm_weight, rla_norm_weight=rla_norm_weight, eps=eps)


@contextmanager
def training_attention(enabled: bool = True):
    """Within the block, native models run the training ops above on dense batches."""
    from ..models import model as model_module

    if not enabled:
        yield
        return
    real = model_module.kernels
    model_module.kernels = _TrainingKernels(kernels)
    try:
        yield
    finally:
        model_module.kernels = real
