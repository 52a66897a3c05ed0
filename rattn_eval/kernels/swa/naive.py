"""Sliding-window softmax attention, plain PyTorch references (fp32 inside).

Query t sees keys j with 0 <= t - j <= window (window previous tokens plus itself);
window=None is full causal attention. Same signature as the Triton kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import check_qkv, check_window, default_scale, drop_padding, segment_layout, softcap_scores


def visible(T: int, window: int | None, device) -> torch.Tensor:
    """(T, T) bool: query t may see key j."""
    t = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    ok = j <= t
    if window is not None:
        ok = ok & (t - j <= window)
    return ok


def swa_attention_naive(q, k, v, *, window, scale=None, lengths=None, cu_seqlens=None, softcap=None):
    """Materializing reference: builds the full (T, T) score matrix. For short T.

    Args: q (B, T, H, D); k, v (B, T, Hkv, D); lengths (B,) for right-padded batches;
    cu_seqlens (N+1,) offsets of packed sequences (B == 1); softcap: scores -> c * tanh(s / c) (Gemma-2).
    Returns: (B, T, H, D) in q.dtype; zero at padded positions.
    """
    B, T, H, Hkv, D = check_qkv(q, k, v)
    check_window(window)
    scale = default_scale(D, scale)
    seg, valid = segment_layout(B, T, q.device, lengths, cu_seqlens)
    q, k, v = (drop_padding(x, valid) for x in (q, k, v))
    g = H // Hkv
    qf = q.float()
    kf = k.float().repeat_interleave(g, dim=2)
    vf = v.float().repeat_interleave(g, dim=2)
    s = softcap_scores(torch.einsum("bthd,bshd->bhts", qf, kf) * scale, softcap)  # (B, H, T, T)
    ok = visible(T, window, q.device)[None] & (seg[:, :, None] == seg[:, None, :]) & valid[:, None, :]  # (B, T, T)
    s = s.masked_fill(~ok[:, None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no key (padding) -> 0
    o = torch.einsum("bhts,bshd->bthd", p, vf)
    return (o * valid[:, :, None, None]).to(q.dtype)


def swa_attention_chunked(q, k, v, *, window, scale=None, lengths=None, cu_seqlens=None, chunk=256, softcap=None):
    """Chunked reference: memory O(chunk x (chunk + window)), reaches 128k. fp32 inside.

    Each query chunk goes through SDPA; with softcap (which SDPA lacks) its scores are formed explicitly.
    """
    B, T, H, Hkv, D = check_qkv(q, k, v)
    check_window(window)
    scale = default_scale(D, scale)
    seg, valid = segment_layout(B, T, q.device, lengths, cu_seqlens)
    if lengths is not None or cu_seqlens is not None:
        q, k, v = (drop_padding(x, valid) for x in (q, k, v))
    g = H // Hkv
    out = torch.zeros(B, T, H, D, dtype=torch.float32, device=q.device)
    for s0 in range(0, T, chunk):
        s1 = min(T, s0 + chunk)
        k0 = 0 if window is None else max(0, s0 - window)
        qc = q[:, s0:s1].float().transpose(1, 2)  # (B, H, C, D)
        kc = k[:, k0:s1].float().repeat_interleave(g, dim=2).transpose(1, 2)  # (B, H, K, D)
        vc = v[:, k0:s1].float().repeat_interleave(g, dim=2).transpose(1, 2)
        t = torch.arange(s0, s1, device=q.device)[:, None]
        j = torch.arange(k0, s1, device=q.device)[None, :]
        ok = j <= t
        if window is not None:
            ok = ok & (t - j <= window)
        ok = ok[None] & (seg[:, s0:s1, None] == seg[:, None, k0:s1]) & valid[:, None, k0:s1]  # (B, C, K)
        if softcap is None:
            o = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=ok[:, None], scale=scale)
        else:
            s = softcap_scores(qc @ kc.transpose(-1, -2) * scale, softcap)  # (B, H, C, K)
            o = torch.softmax(s.masked_fill(~ok[:, None], float("-inf")), dim=-1) @ vc
        out[:, s0:s1] = o.transpose(1, 2).nan_to_num(0.0)
    return (out * valid[:, :, None, None]).to(q.dtype)
