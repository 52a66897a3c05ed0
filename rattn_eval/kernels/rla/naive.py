"""Residual linear attention (the RLA branch of RAttention), plain PyTorch references.

S_t = S_{t-1} + phi(k_t)^T v_t,  o_t = phi(q_t) S_{t-window-1}  (S_{<0} = 0):
linear attention over exactly the keys with t - j >= window + 1, i.e. those the sliding
window no longer sees. Raw q/k (no RoPE, no scale), no normalizer, fp32 accumulation.
"""

from __future__ import annotations

import torch

from ..common import apply_feature_map, check_qkv, check_window, drop_padding, segment_layout, segments


def _check(window):
    check_window(window)
    if window is None:
        raise ValueError("residual linear attention needs an int window (window=None leaves no residual)")


def residual_linear_attention_naive(q, k, v, *, window, feature_map="softmax", lengths=None, cu_seqlens=None,
                                    out_dtype=None):
    """Materializing reference over the (T, T) mask t - j >= window + 1. For short T.

    Args: q (B, T, H, D); k, v (B, T, Hkv, D). Returns (B, T, H, D) in out_dtype (default q.dtype; the
    sums are fp32).
    """
    B, T, H, Hkv, D = check_qkv(q, k, v)
    _check(window)
    seg, valid = segment_layout(B, T, q.device, lengths, cu_seqlens)
    q, k, v = (drop_padding(x, valid) for x in (q, k, v))
    g = H // Hkv
    pq = apply_feature_map(q, feature_map)  # (B, T, H, F)
    pk = apply_feature_map(k, feature_map).repeat_interleave(g, dim=2)
    vf = v.float().repeat_interleave(g, dim=2)
    a = torch.einsum("bthf,bshf->bhts", pq, pk)  # (B, H, T, T)
    t = torch.arange(T, device=q.device)[:, None]
    j = torch.arange(T, device=q.device)[None, :]
    ok = (t - j >= window + 1)[None] & (seg[:, :, None] == seg[:, None, :]) & valid[:, None, :]
    a = a * ok[:, None]
    o = torch.einsum("bhts,bshd->bthd", a, vf)
    return (o * valid[:, :, None, None]).to(out_dtype or q.dtype)


def residual_linear_attention_recurrent(q, k, v, *, window, feature_map="softmax"):
    """Token-by-token recurrence, literally the definition. Dense batches only; for tests."""
    B, T, H, Hkv, D = check_qkv(q, k, v)
    _check(window)
    g = H // Hkv
    pq = apply_feature_map(q, feature_map)
    pk = apply_feature_map(k, feature_map)
    Fd = pk.shape[-1]
    states = [torch.zeros(B, Hkv, Fd, D, dtype=torch.float32, device=q.device)]  # states[i] = S_{i-1}
    out = torch.zeros(B, T, H, D, dtype=torch.float32, device=q.device)
    for t in range(T):
        states.append(states[-1] + pk[:, t, :, :, None] * v[:, t, :, None, :].float())
        src = t - window - 1
        if src >= 0:
            S = states[src + 1].repeat_interleave(g, dim=1)  # (B, H, F, D)
            out[:, t] = torch.einsum("bhf,bhfd->bhd", pq[:, t], S)
    return out.to(q.dtype)


def _chunked_dense(pq, pk, vf, window, chunk):
    """Causal linear attention (diagonal included) on k/v shifted right by window+1.

    pq (B, T, H, F), pk (B, T, Hkv, F), vf (B, T, Hkv, D), all fp32. Returns (B, T, H, D) fp32."""
    B, T, H, Fd = pq.shape
    Hkv, D = vf.shape[2], vf.shape[3]
    g = H // Hkv
    s = window + 1
    ks = torch.zeros_like(pk)
    vs = torch.zeros_like(vf)
    if s < T:
        ks[:, s:] = pk[:, : T - s]
        vs[:, s:] = vf[:, : T - s]
    state = torch.zeros(B, Hkv, Fd, D, dtype=torch.float32, device=pq.device)
    out = torch.empty(B, T, H, D, dtype=torch.float32, device=pq.device)
    for c0 in range(0, T, chunk):
        c1 = min(T, c0 + chunk)
        C = c1 - c0
        qc = pq[:, c0:c1].reshape(B, C, Hkv, g, Fd)  # (B, C, Hkv, g, F)
        kc, vc = ks[:, c0:c1], vs[:, c0:c1]  # (B, C, Hkv, F|D)
        inter = torch.einsum("bckgf,bkfd->bckgd", qc, state)
        a = torch.einsum("bckgf,bskf->bkgcs", qc, kc)  # (B, Hkv, g, C, C)
        a = a * torch.ones(C, C, device=pq.device).tril()
        intra = torch.einsum("bkgcs,bskd->bckgd", a, vc)
        out[:, c0:c1] = (inter + intra).reshape(B, C, H, D)
        state = state + torch.einsum("bskf,bskd->bkfd", kc, vc)
    return out


def residual_linear_attention_chunked(
    q, k, v, *, window, feature_map="softmax", lengths=None, cu_seqlens=None, chunk=64, out_dtype=None
):
    """Chunked reference (fp32 state per KV head): memory O(T + chunk^2), reaches 128k.

    Args/Returns as `residual_linear_attention_naive`.
    """
    B, T, H, Hkv, D = check_qkv(q, k, v)
    _check(window)
    _, valid = segment_layout(B, T, q.device, lengths, cu_seqlens)
    if lengths is not None or cu_seqlens is not None:
        # padding never reaches phi: with NaN there, the softmax backward would give NaN gradients
        q, k, v = (drop_padding(x, valid) for x in (q, k, v))
    pq = apply_feature_map(q, feature_map)
    pk = apply_feature_map(k, feature_map)
    vf = v.float()
    if lengths is None and cu_seqlens is None:
        return _chunked_dense(pq, pk, vf, window, chunk).to(out_dtype or q.dtype)
    out = torch.zeros(B, T, H, D, dtype=torch.float32, device=q.device)
    for b in range(B):
        for s0, s1 in segments(T, lengths, cu_seqlens, b):
            sl = slice(s0, s1)
            out[b : b + 1, sl] = _chunked_dense(pq[b : b + 1, sl], pk[b : b + 1, sl], vf[b : b + 1, sl], window, chunk)
    return out.to(out_dtype or q.dtype)
