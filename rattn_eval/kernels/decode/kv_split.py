"""Decode attention of global layers over a full KV cache, in Triton (flash-decoding).

One new query token per row against keys 0..pos[b] of a cache (B, S, Hkv, D) whose keys are already
rotated. With few (row, KV head) pairs -- a batch of 8 sequences of a model with one KV head -- one
program per pair would leave almost all of the GPU idle while it streams a 32k-token cache, so the
keys are split over many programs, each writing a partial softmax (max, sum, unnormalized output);
each split then counts itself on its pair's counter and the last one to arrive merges the splits (one
launch per step). The query heads of a GQA group share each key tile (one
matrix product of (group, D) x (D, keys)), and splits past a row's length skip the key loop (they still
record an empty split and count themselves, so the pair's merge happens).
"""

from __future__ import annotations

import os
from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common import default_scale
from ..triton_common import counter_buffer, precision_for
from ..triton_common import num_sms as _num_sms
from .fused_recurrent import _last_dim_contiguous, _splits, merge_block, merge_softmax_splits, store_softmax_split
from .naive import check_kv_decode_args

# Programs the splits aim for under the CPU interpreter (on a GPU: `programs_per_sm` x the SM count); small, so
# the tests stay fast, yet above 1 so they cover the merge.
_SPLIT_TARGET = 4
# GPU launch settings, edited by hand: programs the splits aim for per SM, warps and pipeline stages of the
# kernel, keys per tile for head dims <= 128 / 256. One program per SM: fewer splits, a shorter merge; at
# batch 1 (H 16, Hkv 4, D 128) 0.0343 ms at 32k and 0.1006 ms at 128k on an H100, against 0.0433 / 0.1092 ms
# with two (results/bench/h100_decode/kernels.txt and variants.txt, tune_kv.txt for the sweep).
GPU_LAUNCH = MappingProxyType({"programs_per_sm": 1, "num_warps": 4, "num_stages": 3, "block_s": 64,
                               "block_s_256": 32})


@triton.jit
def kv_decode_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, o_ptr, count_ptr,
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_ob, stride_oh,
    S, Hkv, NS, S_SPLIT, scale,
    D: tl.constexpr, G: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_GM: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    b = pid // Hkv
    hk = pid % Hkv
    t = tl.load(pos_ptr + b)
    n = tl.where((t >= 0) & (t < S), t + 1, 0)  # keys 0..pos are visible; a position outside the cache: none (NaN row)
    lo = j.to(tl.int64) * S_SPLIT  # int64: a row's keys may span more than 2**31 elements
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    gi = tl.arange(0, BLOCK_G)
    gm = gi < G
    q = tl.load(q_ptr + b * stride_qb + (hk * G + gi)[:, None] * stride_qh + d[None, :],
                mask=gm[:, None] & dm[None, :], other=0.0)
    k_base = k_ptr + b * stride_kb + hk * stride_kh
    v_base = v_ptr + b * stride_vb + hk * stride_vh
    m_i = tl.full((BLOCK_G,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    hi = tl.minimum(S_SPLIT, n - lo)  # <= 0 for a split wholly past the row's length: no iteration
    for s0 in range(0, hi, BLOCK_S):
        s = lo + s0 + tl.arange(0, BLOCK_S)
        valid = s < n
        kv_mask = valid[:, None] & dm[None, :]
        kb = tl.load(k_base + s[:, None] * stride_ks + d[None, :], mask=kv_mask, other=0.0)
        vb = tl.load(v_base + s[:, None] * stride_vs + d[None, :], mask=kv_mask, other=0.0)
        sc = tl.dot(q, tl.trans(kb), input_precision=PRECISION)
        sc = tl.where(valid[None, :], sc * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(sc - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PRECISION)
        m_i = m_new
    # Every split, empty ones included, records itself and counts: no early return, or the pair's counter
    # never reaches NS and its output is never written.
    store_softmax_split(m_ptr, l_ptr, acc_ptr, pid, NS, j, gi, d, m_i, l_i, acc, G, BLOCK_G, BLOCK_D)
    tl.debug_barrier()  # every thread's stores before the release on the counter
    if tl.atomic_add(count_ptr + pid, 1, sem="acq_rel") == NS - 1:  # the last split of the pair merges
        # l = 0 (NaN) only for a bad pos
        o = merge_softmax_splits(m_ptr, l_ptr, acc_ptr, pid, NS, G, BLOCK_G, BLOCK_GM, BLOCK_D, BLOCK_J)
        go = tl.arange(0, BLOCK_GM)
        tl.store(o_ptr + b * stride_ob + (hk * G + go)[:, None] * stride_oh + d[None, :],
                 o.to(o_ptr.dtype.element_ty), mask=(go < G)[:, None] & dm[None, :])
        tl.store(count_ptr + pid, 0)


def kv_decode_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, *, scale=None):
    """Decode attention: q (B, H, D) rotated; k, v (B, S, Hkv, D) the cache (rotated keys); pos (B,)
    int64, the newest filled position per row (keys 0..pos[b] are attended). Returns (B, H, D); a row whose
    pos lies outside [0, S-1] gets NaN (the kernel never reads past the cache)."""
    check_kv_decode_args(q, k, v, pos)
    B, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    if D & (D - 1) or not 16 <= D <= 256:
        raise ValueError(f"kv decode supports power-of-two head dims 16..256, got {D}")
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("the cache must be contiguous in the head dim")
    q = _last_dim_contiguous(q)  # one token: a cheap copy
    if B == 0:
        return torch.empty(0, H, D, dtype=q.dtype, device=q.device)
    G = H // Hkv
    block_gm = triton.next_power_of_2(G)  # the query heads the merge reads back
    block_g = max(16, block_gm)  # query heads padded to the 16 rows of a tensor-core tile (the measured setting)
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    block_s = 64 if interpreting else GPU_LAUNCH["block_s" if D <= 128 else "block_s_256"]
    target = _SPLIT_TARGET if interpreting else GPU_LAUNCH["programs_per_sm"] * _num_sms(q.device)
    launch = dict(num_warps=4) if interpreting else dict(num_warps=GPU_LAUNCH["num_warps"], num_stages=GPU_LAUNCH["num_stages"])
    programs = B * Hkv
    s_split, ns = _splits(S, block_s, programs, target)
    f32 = dict(dtype=torch.float32, device=q.device)
    m = torch.empty(programs * ns * block_g, **f32)
    l_ = torch.empty_like(m)
    acc = torch.empty(programs * ns * block_g * D, **f32)
    o = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
    kv_decode_kernel[(programs, ns)](
        q, k, v, pos.contiguous(), m, l_, acc, o, counter_buffer(programs, q.device),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), S, Hkv, ns, s_split, default_scale(D, scale),
        D=D, G=G, PRECISION=precision_for(q.dtype), BLOCK_D=D, BLOCK_G=block_g, BLOCK_S=block_s,
        BLOCK_GM=block_gm, BLOCK_J=merge_block(ns, block_gm, D), **launch,
    )
    return o
