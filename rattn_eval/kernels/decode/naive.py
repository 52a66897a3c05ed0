"""Decode for local layers: a ring buffer of the last window+1 tokens' raw k/v, plus (for
RAttention) the fp32 RLA state per KV head. Plain PyTorch reference of the step.

At absolute position t the slot t mod (window+1) holds token t-window-1, exactly the token
leaving the window: fold it into the state, overwrite the slot with token t, attend over the
buffer (rotating each slot's key with its own absolute position), read phi(q_t) S.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common import Rope, apply_feature_map, default_scale, feature_dim, rms_norm, rotate_half


@dataclass
class LocalCache:
    """Decode cache of one local layer. Size fixed by window and shape, never by context.

    k, v:   (B, window+1, Hkv, D) raw (un-rotated) keys/values; slot p mod (window+1) holds position p.
    state:  (B, Hkv, F, D) fp32 RLA state covering positions <= pos-window-2, or None for plain SWA.
    pos:    (B,) int64, tokens consumed so far = absolute position of the next token.
    """

    k: torch.Tensor
    v: torch.Tensor
    state: torch.Tensor | None
    pos: torch.Tensor
    window: int
    feature_map: str = "softmax"

    @property
    def kind(self) -> str:
        return "swa" if self.state is None else "rattn"

    def nbytes(self) -> int:
        tensors = [self.k, self.v, self.pos] + ([] if self.state is None else [self.state])
        return sum(t.numel() * t.element_size() for t in tensors)

    @staticmethod
    def analytic_nbytes(B, window, Hkv, D, dtype, *, kind="rattn", feature_map="softmax") -> int:
        """Bytes the cache must take: ring k+v, fp32 state (rattn), int64 positions."""
        elt = torch.empty(0, dtype=dtype).element_size()
        n = 2 * B * (window + 1) * Hkv * D * elt + 8 * B
        if kind == "rattn":
            n += 4 * B * Hkv * feature_dim(D, feature_map) * D
        return n

    def select(self, index: torch.Tensor) -> "LocalCache":
        """Keep batch rows `index` (e.g. drop finished sequences)."""
        st = None if self.state is None else self.state[index]
        return LocalCache(self.k[index], self.v[index], st, self.pos[index], self.window, self.feature_map)


def build_local_cache(k, v, *, window, kind="rattn", feature_map="softmax", lengths=None) -> LocalCache:
    """Cache after a prefill of k, v (B, T, Hkv, D) raw, right-padded to per-row `lengths`.

    Ring: positions L-window-1 .. L-1 (those that exist). State: sum over j <= L-window-2 of phi(k_j)^T v_j.
    """
    B, T, Hkv, D = k.shape
    W1 = window + 1
    L = torch.full((B,), T, dtype=torch.long, device=k.device) if lengths is None else lengths.to(k.device, torch.long)
    ring_k = torch.zeros(B, W1, Hkv, D, dtype=k.dtype, device=k.device)
    ring_v = torch.zeros_like(ring_k)
    state = None
    if kind == "rattn":
        state = torch.zeros(B, Hkv, feature_dim(D, feature_map), D, dtype=torch.float32, device=k.device)
    for b in range(B):
        n = int(L[b])
        lo = max(0, n - W1)
        p = torch.arange(lo, n, device=k.device)
        ring_k[b, p % W1] = k[b, lo:n]
        ring_v[b, p % W1] = v[b, lo:n]
        if state is not None and lo > 0:
            pk = apply_feature_map(k[b, :lo], feature_map)  # (lo, Hkv, F)
            state[b] = torch.einsum("jkf,jkd->kfd", pk, v[b, :lo].float())
    return LocalCache(ring_k, ring_v, state, L.clone(), window, feature_map)


def empty_local_cache(B, window, Hkv, D, *, dtype, device, kind="rattn", feature_map="softmax") -> LocalCache:
    ring = torch.zeros(B, window + 1, Hkv, D, dtype=dtype, device=device)
    state = None
    if kind == "rattn":
        state = torch.zeros(B, Hkv, feature_dim(D, feature_map), D, dtype=torch.float32, device=device)
    return LocalCache(ring, ring.clone(), state, torch.zeros(B, dtype=torch.long, device=device), window, feature_map)


def local_decode_step_naive(q, k, v, cache: LocalCache, *, rope: Rope | None = None, scale=None,
                            swa_norm_weight=None, rla_norm_weight=None, eps=1e-6):
    """One token per sequence. q (B, H, D) raw; k, v (B, Hkv, D) raw. Updates `cache` in place.

    Returns (B, H, D) in q.dtype: the SWA output for a plain SWA cache, else
    rms(o_swa) * g_swa + rms(o_rla) * g_rla.
    """
    B, H, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    W1 = cache.window + 1
    t = cache.pos  # (B,)
    slot = t % W1
    rows = torch.arange(B, device=q.device)
    if cache.state is not None:
        leaving = t >= W1  # slot holds token t - W1, which now leaves the window
        pk = apply_feature_map(cache.k[rows, slot], cache.feature_map)  # (B, Hkv, F)
        upd = pk[..., :, None] * cache.v[rows, slot].float()[..., None, :]  # (B, Hkv, F, D)
        cache.state += upd * leaving[:, None, None, None]
    cache.k[rows, slot] = k.to(cache.k.dtype)
    cache.v[rows, slot] = v.to(cache.v.dtype)

    # absolute position held by each slot i: t - ((t - i) mod W1); filled if >= 0
    i = torch.arange(W1, device=q.device)
    p_slot = t[:, None] - ((t[:, None] - i[None]) % W1)  # (B, W1)
    filled = p_slot >= 0
    qf, kf = q.float(), cache.k.float()  # (B, H, D), (B, W1, Hkv, D)
    if rope is not None:
        cq, sq = rope.cos_sin(t)  # (B, D)
        qf = qf * cq[:, None] + rotate_half(qf) * sq[:, None]
        ck, sk = rope.cos_sin(p_slot.clamp(min=0))  # (B, W1, D)
        kf = kf * ck[:, :, None] + rotate_half(kf) * sk[:, :, None]
    kf = kf.repeat_interleave(g, dim=2)  # (B, W1, H, D)
    vf = cache.v.float().repeat_interleave(g, dim=2)
    s = torch.einsum("bhd,bshd->bhs", qf, kf) * default_scale(D, scale)
    s = s.masked_fill(~filled[:, None, :], float("-inf"))
    o_swa = torch.einsum("bhs,bshd->bhd", torch.softmax(s, dim=-1), vf)
    cache.pos.add_(1)  # in place (t aliases it; not read below): a captured CUDA graph keeps the same tensor
    if cache.state is None:
        return o_swa.to(q.dtype)
    pq = apply_feature_map(q, cache.feature_map).reshape(B, Hkv, g, -1)  # (B, Hkv, g, F)
    o_rla = torch.einsum("bkgf,bkfd->bkgd", pq, cache.state).reshape(B, H, D)
    return (rms_norm(o_swa, swa_norm_weight, eps) + rms_norm(o_rla, rla_norm_weight, eps)).to(q.dtype)
