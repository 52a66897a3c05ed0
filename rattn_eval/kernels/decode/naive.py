"""Decode for local layers: a ring buffer of the last window+1 tokens' raw k/v, plus (for
RAttention) the fp32 RLA state per KV head. Plain PyTorch reference of the step.

At absolute position t the slot t mod (window+1) holds token t-window-1, exactly the token
leaving the window: fold it into the state, overwrite the slot with token t, attend over the
buffer (rotating each slot's key with its own absolute position), read phi(q_t) S.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common import (Rope, apply_feature_map, check_feature_map, default_scale, feature_dim, rms_norm, rotate_half,
                      softcap_scores)


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


def _may_overlap(t: torch.Tensor) -> bool:
    """Whether two entries of the strided view `t` may share memory: with its dims of more than one entry
    sorted by stride, each stride must pass the span of the smaller ones (a false alarm only for exotic
    interleavings, which then need a copy)."""
    if t.numel() == 0:
        return False
    span = 0
    for stride, size in sorted((abs(st), n) for n, st in zip(t.shape, t.stride()) if n > 1):
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False


def check_decode_args(q, k, v, cache: LocalCache, rope, **norms) -> None:
    """Shapes, dtypes and devices of one decode step against its cache; raises ValueError before anything
    is written, so a refused call leaves the cache as it was. Positions are not read here (on a GPU that
    would cost a sync per layer and step): see `check_positions`."""
    if not all(isinstance(x, torch.Tensor) for x in (q, k, v)):
        raise TypeError("q, k and v must be torch tensors")
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"decode expects q (B, H, D) and k, v (B, Hkv, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[2] != D or k.shape[1] < 1 or H < 1 or H % k.shape[1]:
        raise ValueError(f"k and v must be (B, Hkv, D) with H % Hkv == 0 for q {tuple(q.shape)}; got {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k and v must share one dtype, float16, bfloat16 or float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    Hkv = k.shape[1]
    ring_shape = (B, cache.window + 1, Hkv, D)
    if tuple(cache.k.shape) != ring_shape or tuple(cache.v.shape) != ring_shape:
        raise ValueError(f"cache ring is {tuple(cache.k.shape)}, expected {ring_shape} for these inputs")
    if cache.v.dtype != cache.k.dtype or cache.k.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"the cache ring must hold one dtype, float32, float16 or bfloat16; got {cache.k.dtype} "
                         f"and {cache.v.dtype}")
    if cache.k.stride(-1) != 1 or cache.v.stride(-1) != 1:
        raise ValueError("the cache ring must be contiguous in the head dim (it is updated in place)")
    if cache.state is not None:
        F = cache.state.shape[2] if cache.state.dim() == 4 else -1
        if (tuple(cache.state.shape) != (B, Hkv, F, D) or F != feature_dim(D, cache.feature_map)
                or cache.state.dtype != torch.float32 or cache.state.stride(-1) != 1):
            raise ValueError(f"cache state must be fp32 (B, Hkv, F, D) = ({B}, {Hkv}, {feature_dim(D, cache.feature_map)}, {D}), "
                             f"contiguous in D; got {cache.state.dtype} {tuple(cache.state.shape)}")
    check_feature_map(cache.feature_map)
    if cache.pos.shape != (B,) or cache.pos.dtype != torch.int64:
        raise ValueError(f"cache.pos must be an int64 ({B},) tensor, got {cache.pos.dtype} {tuple(cache.pos.shape)}")
    for name, t in (("ring k", cache.k), ("ring v", cache.v), ("state", cache.state), ("pos", cache.pos)):
        if t is not None and any(n > 1 and st == 0 for n, st in zip(t.shape, t.stride())):
            raise ValueError(f"the cache's {name} is a broadcast (expanded) tensor; the step writes it in place, so "
                             "it must hold its own entry per row, slot and head")
        if t is not None and _may_overlap(t):
            raise ValueError(f"the cache's {name} is a view whose entries may share memory (strides "
                             f"{tuple(t.stride())} for shape {tuple(t.shape)}); the step writes it in place, so each "
                             "entry needs memory of its own")
    if cache.k.numel() and cache.k.data_ptr() == cache.v.data_ptr():
        raise ValueError("the cache's ring k and ring v are one tensor; the step writes both in place")
    if rope is not None and (not isinstance(rope, Rope) or rope.head_dim != D):
        raise ValueError(f"rope must be a Rope of head dim {D} or None, got {rope!r}")
    for name, w in norms.items():
        if w is not None and (not isinstance(w, torch.Tensor) or tuple(w.shape) != (H, D)):
            raise ValueError(f"{name} must be ({H}, {D}), got {tuple(w.shape) if isinstance(w, torch.Tensor) else w!r}")
    tensors = [k, v, cache.k, cache.v, cache.pos] + ([] if cache.state is None else [cache.state])
    tensors += [w for w in norms.values() if w is not None]
    if any(x.device != q.device for x in tensors):
        raise ValueError("q, k, v, the norm weights and the cache must be on one device")


def check_kv_decode_args(q, k, v, pos) -> None:
    """q (B, H, D), a full cache k, v (B, S, Hkv, D) of q's dtype, pos (B,) int32 / int64, one device."""
    if not all(isinstance(x, torch.Tensor) for x in (q, k, v, pos)):
        raise TypeError("q, k, v and pos must be torch tensors")
    if q.dim() != 3 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"kv decode needs q (B, H, D) and a cache k, v (B, S, Hkv, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, D = q.shape
    if k.shape[0] != B or k.shape[3] != D or k.shape[2] < 1 or H < 1 or H % k.shape[2]:
        raise ValueError(f"kv decode needs a cache (B, S, Hkv, D) with H % Hkv == 0 for q {tuple(q.shape)}; got {tuple(k.shape)}")
    if k.shape[1] < 1:
        raise ValueError("kv decode needs a cache of at least one position, got S = 0")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q and the cache must share one dtype, float16, bfloat16 or float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if pos.shape != (B,) or pos.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"pos must be an int32 / int64 ({B},) tensor, got {pos.dtype} {tuple(pos.shape)}")
    if not (q.device == k.device == v.device == pos.device):
        raise ValueError("q, the cache and pos must be on one device")


def check_positions(pos: torch.Tensor, limit: int | None = None) -> None:
    """Raise for positions outside [0, limit) where reading them is free (CPU tensors). On a GPU the
    kernels give such rows NaN output and leave the cache alone instead of spending a sync per step."""
    if pos.device.type != "cpu" or pos.numel() == 0:
        return
    lo, hi = int(pos.min()), int(pos.max())
    if lo < 0 or (limit is not None and hi >= limit):
        span = "non-negative" if limit is None else f"in [0, {limit - 1}]"
        raise ValueError(f"decode positions must be {span}; got values from {lo} to {hi}")


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
                            swa_norm_weight=None, rla_norm_weight=None, eps=1e-6, softcap=None):
    """One token per sequence. q (B, H, D) raw; k, v (B, Hkv, D) raw. Updates `cache` in place.
    softcap: scores -> c * tanh(s / c) before the softmax (Gemma-2).

    Returns (B, H, D) in q.dtype: the SWA output for a plain SWA cache, else
    rms(o_swa) * g_swa + rms(o_rla) * g_rla.
    """
    check_decode_args(q, k, v, cache, rope, swa_norm_weight=swa_norm_weight, rla_norm_weight=rla_norm_weight)
    B, H, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    W1 = cache.window + 1
    t = cache.pos  # (B,)
    ok = t >= 0  # a negative position (a damaged cache): NaN output, the cache left alone (as the Triton step)
    slot = t % W1
    rows = torch.arange(B, device=q.device)
    if cache.state is not None:
        leaving = ok & (t >= W1)  # slot holds token t - W1, which now leaves the window
        pk = apply_feature_map(cache.k[rows, slot], cache.feature_map)  # (B, Hkv, F)
        upd = pk[..., :, None] * cache.v[rows, slot].float()[..., None, :]  # (B, Hkv, F, D)
        cache.state += torch.where(leaving[:, None, None, None], upd, 0.0)  # where, not *: a slot may hold NaN
    keep = ~ok[:, None, None]
    cache.k[rows, slot] = torch.where(keep, cache.k[rows, slot], k.to(cache.k.dtype))
    cache.v[rows, slot] = torch.where(keep, cache.v[rows, slot], v.to(cache.v.dtype))

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
    vf = cache.v.float().masked_fill(~filled[:, :, None, None], 0.0)  # unfilled slots may hold anything
    vf = vf.repeat_interleave(g, dim=2)
    s = softcap_scores(torch.einsum("bhd,bshd->bhs", qf, kf) * default_scale(D, scale), softcap)
    s = s.masked_fill(~filled[:, None, :], float("-inf"))
    o_swa = torch.einsum("bhs,bshd->bhd", torch.softmax(s, dim=-1), vf)  # no filled slot (t < 0): NaN
    cache.pos.add_(1)  # in place (t aliases it; not read below): a captured CUDA graph keeps the same tensor
    if cache.state is None:
        return o_swa.to(q.dtype)
    pq = apply_feature_map(q, cache.feature_map)  # (B, H, F)
    o_rla = torch.einsum("bkgf,bkfd->bkgd", pq.reshape(B, Hkv, g, pq.shape[-1]), cache.state).reshape(B, H, D)
    return (rms_norm(o_swa, swa_norm_weight, eps) + rms_norm(o_rla, rla_norm_weight, eps)).to(q.dtype)
