"""Pieces shared by every attention op: feature maps, RoPE, RMS norm, variable-length masks."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

FEATURE_MAPS = ("softmax", "relu", "identity")


def feature_dim(head_dim: int, feature_map: str) -> int:
    """Width F of phi(x) for a head dim D: 2D for softmax/relu, D for identity."""
    check_feature_map(feature_map)
    return head_dim if feature_map == "identity" else 2 * head_dim


def check_feature_map(feature_map: str) -> None:
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"unknown feature_map {feature_map!r}; choose one of {', '.join(FEATURE_MAPS)}")


def apply_feature_map(x: torch.Tensor, feature_map: str) -> torch.Tensor:
    """phi over the last dim, in fp32. (..., D) -> (..., F)."""
    check_feature_map(feature_map)
    x = x.float()
    if feature_map == "softmax":
        return torch.cat([torch.softmax(x, dim=-1), torch.softmax(-x, dim=-1)], dim=-1)
    if feature_map == "relu":
        return torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return x


class Rope:
    """Rotary embedding, rotate-half convention of the Hugging Face Llama/Gemma code.

    Dimension i pairs with i + D/2. `factor` is linear position scaling (Gemma-3's global layers);
    `inv_freq` (D/2,) replaces the computed frequencies (scaled rope types: rattn_eval.models.rope).
    Tables are computed for whatever positions are asked, so no max-context table is kept.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, factor: float = 1.0, *,
                 inv_freq: torch.Tensor | None = None):
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        self.head_dim, self.theta, self.factor = head_dim, float(theta), float(factor)
        if inv_freq is not None:
            if tuple(inv_freq.shape) != (head_dim // 2,):
                raise ValueError(f"inv_freq must have shape ({head_dim // 2},), got {tuple(inv_freq.shape)}")
            self.inv_freq = inv_freq.float()
            return
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        self.inv_freq = 1.0 / (self.theta**exponent) / self.factor  # (D/2,)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (...) int -> cos, sin (..., D) fp32."""
        inv = self._inv_freq_on(positions.device)
        freqs = positions.float()[..., None] * inv  # (..., D/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    def _inv_freq_on(self, device: torch.device) -> torch.Tensor:
        """inv_freq on `device`, copied once (no host-to-device copy per call, so a decode step
        that computes RoPE for its positions can be captured in a CUDA graph)."""
        if self.inv_freq.device == device:
            return self.inv_freq
        copies = self.__dict__.setdefault("_inv_freq_copies", {})
        hit = copies.get(device)
        if hit is None or hit[0] is not self.inv_freq:
            hit = copies[device] = (self.inv_freq, self.inv_freq.to(device))
        return hit[1]

    def tables(self, T: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions 0..T-1: (T, D) fp32."""
        return self.cos_sin(torch.arange(T, device=device))

    def __repr__(self) -> str:
        return f"Rope(head_dim={self.head_dim}, theta={self.theta}, factor={self.factor})"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, D) with cos/sin (T, D) or (B, T, D). Math in fp32, result in x.dtype."""
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :].float(), sin[:, :, None, :].float()  # (B|1, T, 1, D)
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in fp32; weight (H, D) or None (= ones). Returns fp32."""
    x = x.float()
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y


def default_scale(head_dim: int, scale: float | None) -> float:
    return head_dim**-0.5 if scale is None else float(scale)


def softcap_scores(s: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma-2's attention-logit softcapping of scaled scores, c * tanh(s / c), before the mask and softmax."""
    return s if softcap is None else torch.tanh(s / softcap) * softcap


INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Validate [B, T, H, D] / [B, T, Hkv, D] shapes, one device and one floating dtype. Returns B, T, H, Hkv, D."""
    if not all(isinstance(x, torch.Tensor) for x in (q, k, v)):
        raise TypeError("q, k and v must be torch tensors")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"expected 4-d q, k, v in [B, T, H, D] layout, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[1] != T or k.shape[3] != D:
        raise ValueError(f"k and v must be [B, T, Hkv, D] matching q {tuple(q.shape)}; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    Hkv = k.shape[2]
    if H < 1 or Hkv < 1 or D < 1:
        raise ValueError(f"q and k need at least one head and a head dim >= 1; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if H % Hkv:
        raise ValueError(f"query heads ({H}) must be a multiple of kv heads ({Hkv})")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device; got {q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"q, k and v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    return B, T, H, Hkv, D


def check_input_dtype(x: torch.Tensor) -> None:
    """The public ops take fp16, bf16 and fp32 (the references compute in fp32)."""
    if x.dtype not in INPUT_DTYPES:
        raise ValueError(f"attention inputs must be float16, bfloat16 or float32, got {x.dtype}")


def check_window(window: int | None) -> None:
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 0):
        raise ValueError(f"window must be a non-negative int or None, got {window!r}")


def check_varlen(B: int, T: int, lengths, cu_seqlens) -> None:
    """Per-sequence lengths of a right-padded batch ((B,) integer tensor, values in [0, T]) or the offsets of a
    packed one ((N+1,) integer tensor from 0, non-decreasing, ending <= T, with B == 1); never both."""
    if lengths is not None and cu_seqlens is not None:
        raise ValueError("pass either lengths (padded batch) or cu_seqlens (packed batch), not both")
    for name, x in (("lengths", lengths), ("cu_seqlens", cu_seqlens)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a 1-d integer torch tensor, got a {type(x).__name__}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
        if x.dim() != 1:
            raise ValueError(f"{name} must be a 1-d tensor, got shape {tuple(x.shape)}")
    if lengths is not None:
        ls = lengths.tolist()
        if len(ls) != B or any(x < 0 or x > T for x in ls):
            raise ValueError(f"lengths must be a [B] = [{B}] tensor with values in [0, T = {T}]; got {ls}")
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"packed sequences (cu_seqlens) need B == 1, got B = {B}")
        cu = cu_seqlens.tolist()
        if not cu or cu[0] != 0 or cu[-1] > T or any(b < a for a, b in zip(cu, cu[1:])):
            raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end <= T = {T}; got {cu}")


def check_rope_tables(rope, B: int, T: int, D: int, device) -> None:
    """rope = (cos, sin), each (T, D), (1, T, D) or (B, T, D), floating, on the inputs' device; D even."""
    if not (isinstance(rope, (tuple, list)) and len(rope) == 2 and all(isinstance(x, torch.Tensor) for x in rope)):
        raise ValueError("rope must be a (cos, sin) pair of tensors or None")
    cos, sin = rope
    if D % 2:
        raise ValueError(f"RoPE (rotate-half) needs an even head dim, got {D}")
    ok = cos.shape == sin.shape and (tuple(cos.shape) == (T, D) or (cos.dim() == 3 and tuple(cos.shape) in ((B, T, D), (1, T, D))))
    if not ok:
        raise ValueError(f"rope tables must be (T, D) or (B, T, D) = ({B}, {T}, {D}); got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if not (cos.is_floating_point() and sin.is_floating_point()):
        raise ValueError(f"rope tables must be floating point, got {cos.dtype} and {sin.dtype}")
    if cos.device != device or sin.device != device:
        raise ValueError(f"rope tables must be on the inputs' device {device}; got {cos.device}, {sin.device}")


def check_norm_weights(H: int, D: int, device, **weights) -> None:
    """Each weight None or an (H, D) floating tensor on `device`."""
    for name, w in weights.items():
        if w is None:
            continue
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (H, D) or not w.is_floating_point():
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{name} must be a floating (H, D) = ({H}, {D}) tensor or None, got {shape}")
        if w.device != device:
            raise ValueError(f"{name} must be on the inputs' device {device}, got {w.device}")


def check_eps(eps) -> None:
    """RMSNorm epsilon: a positive finite number (with 0, the all-zero RLA rows t <= window give 0/0)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0 < eps < float("inf")):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")


def segment_layout(
    B: int, T: int, device, lengths: torch.Tensor | None, cu_seqlens: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token segment id and validity for padded (`lengths`, right padding) or packed
    (`cu_seqlens`, B == 1) batches. Returns seg (B, T) int64 and valid (B, T) bool."""
    check_varlen(B, T, lengths, cu_seqlens)
    idx = torch.arange(T, device=device)
    if cu_seqlens is not None:
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        seg = torch.bucketize(idx, cu[1:], right=True)[None]  # (1, T)
        valid = (idx < cu[-1])[None]
        return seg, valid
    seg = torch.zeros(B, T, dtype=torch.long, device=device)
    if lengths is None:
        return seg, torch.ones(B, T, dtype=torch.bool, device=device)
    lengths = lengths.to(device=device, dtype=torch.long)
    return seg, idx[None, :] < lengths[:, None]


def drop_padding(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, D) with the positions outside every sequence (valid (B, T) False) set to 0, so that
    whatever padding holds (NaN or inf included) cannot leak through a masked score times a value."""
    return x.masked_fill(~valid[:, :, None, None], 0)


def segments(T: int, lengths, cu_seqlens, b: int) -> list[tuple[int, int]]:
    """(start, end) spans of real tokens for batch row b."""
    if cu_seqlens is not None:
        cu = [int(x) for x in cu_seqlens.tolist()]
        return [(cu[i], cu[i + 1]) for i in range(len(cu) - 1) if cu[i + 1] > cu[i]]
    end = T if lengths is None else int(lengths[b])
    return [(0, end)] if end > 0 else []


def flops_swa(B: int, T: int, H: int, D: int, window: int | None) -> float:
    """Useful matmul FLOPs of SWA forward: 2 matmuls x 2 flop x visible keys."""
    w = T if window is None else min(window, T - 1)
    keys = T * (w + 1) - w * (w + 1) / 2  # sum over t of min(t, w) + 1
    return 4.0 * B * H * D * keys


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


__all__ = [
    "FEATURE_MAPS",
    "Rope",
    "apply_feature_map",
    "apply_rope",
    "feature_dim",
    "rms_norm",
    "rotate_half",
    "segment_layout",
]
