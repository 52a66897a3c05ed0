"""Triton decode step for local layers (plain SWA and RAttention): one new token per sequence.

One launch per step, `local_decode_kernel`, grid (B * Hkv, ns + nf * nv) over the (batch row, KV head)
pairs and their splits (flash-decoding, so a small batch still fills the GPU):
- splits j < ns (`_swa_split`) run an online softmax over a range of the w+1 ring slots, rotating each
  slot's raw key at that slot's absolute position (RoPE cos/sin computed in-kernel from `inv_freq`, so
  the cache holds no position table); the new token's slot is taken from the inputs k/v, not from the
  ring; each writes its max, sum and unnormalized accumulator;
- the other splits (`_rla_split`, RAttention only) each take a range of the F feature rows of the fp32
  state S and one slice of its value columns (`_STATE_BLOCK_V`; two slices at D = 256), fold the token
  leaving the window (slot t mod (w+1), still holding position t-w-1 when t >= w+1) into that part
  block by block, and write their share of phi(q) S for the group's query heads;
- each split then counts itself on its pair's counter; the last to arrive (`_combine`) merges the
  softmax splits, sums the RLA splits, applies both RMS norms and gains (RAttention only), writes the
  output, and only then overwrites slot t mod (w+1) with the new k/v; the last pair of a batch row
  to finish advances `cache.pos` for that row.
`_splits` picks the split counts: the pairs times the splits aim for a target (`GPU_LAUNCH`'s programs
per SM times the SM count; `_SPLIT_TARGET` under the interpreter), shared between window and state in
proportion to their bytes, never more splits than there are blocks, each split a whole number of blocks
(block sizes come from `_TILE_BUDGET`). Semantics are exactly `local_decode_step_naive` (the decode cache
of `rattn_eval/kernels/decode/README.md`).
"""

from __future__ import annotations

import os
from types import MappingProxyType

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..common import default_scale
from ..triton_common import FEATURES as _FEATURE_MAP_CODES
from ..triton_common import num_sms as _num_sms
from .naive import LocalCache, check_decode_args


# rope.inv_freq copied to the kernel's device once, not every step: id(rope), device -> (source, copy)
_inv_freq_copies: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

# fp32 elements of the tiles one program holds at a time; sets the slot and feature block sizes.
# The CPU interpreter runs every loop iteration in Python, so it takes larger blocks (same code,
# fewer iterations); the tests also run the GPU budget there to cover many-block loops.
_TILE_BUDGET = {"gpu": 4096, "interpreter": 131072}
# Value columns per `decode_rla_partial_kernel` program: at D = 256 the state is split into two column
# slices (a third grid axis), so a block of feature rows is as wide as at D = 128 and the budget above
# gives it as many rows (the D = 256 bf16 ring test passed on an H100 at 542aeab).
_STATE_BLOCK_V = 128
# Programs the window / state splits aim for under the interpreter (on a GPU: twice the SM count).
# Small, so the CPU tests stay fast, yet above 1 so they cover the split-and-combine path.
_SPLIT_TARGET = 4
# GPU launch settings, edited by hand: programs the splits aim for per SM, warps per program. With the
# GPU tile budget above: 0.233 ms per call at batch 64 (H 16, Hkv 4, D 128, window 512) on an H100,
# 2.2% above the fastest setting of a 60-setting sweep, against 0.419 ms for (2 per SM, 4 warps,
# budget 8192); at batch 8 the listed settings took 0.107-0.112 ms (results/bench/h100_decode_sweep.txt,
# each call timed with its launches; `rattn-eval bench tune --what local-decode` sweeps anew).
GPU_LAUNCH = MappingProxyType({"programs_per_sm": 4, "num_warps": 2})


@triton.jit
def _cos_sin(angle, PRECISE_TRIG: tl.constexpr):
    # Angles reach ~1e5 rad at long contexts; the fast approximate sin/cos would be wrong there.
    # The interpreter has no libdevice, and numpy's cos/sin are already exact enough.
    if PRECISE_TRIG:
        c = libdevice.cos(angle)
        s = libdevice.sin(angle)
    else:
        c = tl.cos(angle)
        s = tl.sin(angle)
    return c, s


@triton.jit
def _swa_split(q_ptr, k_ptr, v_ptr, ring_k_ptr, ring_v_ptr, inv_freq_ptr, m_ptr, l_ptr, acc_ptr,
               pid, b, hk, t, j, NS, S_SPLIT, W1, scale,
               stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
               stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh,
               D: tl.constexpr, G: tl.constexpr, HAS_ROPE: tl.constexpr, PRECISE_TRIG: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr):
    """Online softmax of the group's query heads over ring slots [j * S_SPLIT, (j + 1) * S_SPLIT); writes
    the split's max, sum and unnormalized output. Keys are rotated in halves: columns [0, D1) and
    [D1, D) with D1 = ceil(D / 2) (rotate-half RoPE pairs column i with column D1 + i), so each key byte
    is read once and each angle's cos / sin computed once. Slot i holds position t - ((slot - i) mod W1)
    (negative: not filled yet, masked); the new token's slot comes from the inputs (the ring still
    holds the leaving token there)."""
    D1: tl.constexpr = (D + 1) // 2
    slot = tl.where(t >= 0, t % W1, 0)  # t < 0: every slot is masked below, so the row's output is NaN
    i = tl.arange(0, BLOCK_H)
    m1 = i < D1
    m2 = i < D - D1
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    gi = tl.arange(0, BLOCK_G)
    gm = gi < G
    qg_ptr = q_ptr + b * stride_qb + (hk * G + gi)[:, None] * stride_qh
    q1 = tl.load(qg_ptr + i[None, :], mask=gm[:, None] & m1[None, :], other=0.0).to(tl.float32)
    q2 = tl.load(qg_ptr + D1 + i[None, :], mask=gm[:, None] & m2[None, :], other=0.0).to(tl.float32)
    ring_dtype = ring_k_ptr.dtype.element_ty
    kn_ptr = k_ptr + b * stride_kb + hk * stride_kh
    # the new token as the ring will hold it (rounded to the ring dtype)
    k1_new = tl.load(kn_ptr + i, mask=m1, other=0.0).to(ring_dtype).to(tl.float32)
    k2_new = tl.load(kn_ptr + D1 + i, mask=m2, other=0.0).to(ring_dtype).to(tl.float32)
    v_new = tl.load(v_ptr + b * stride_vb + hk * stride_vh + d, mask=dm, other=0.0).to(ring_dtype).to(tl.float32)
    if HAS_ROPE:
        inv = tl.load(inv_freq_ptr + i, mask=m1, other=0.0)
        cq, sq = _cos_sin(t.to(tl.float32) * inv, PRECISE_TRIG)
        q1, q2 = q1 * cq[None, :] - q2 * sq[None, :], q2 * cq[None, :] + q1 * sq[None, :]
    q1 = q1 * scale
    q2 = q2 * scale

    rk_row = ring_k_ptr + b * stride_rkb + hk * stride_rkh
    rv_row = ring_v_ptr + b * stride_rvb + hk * stride_rvh
    m_i = tl.full((BLOCK_G,), -1.0e30, dtype=tl.float32)  # finite start: fully masked blocks give no NaN
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    for s0 in range(0, S_SPLIT, BLOCK_S):
        s = j * S_SPLIT + s0 + tl.arange(0, BLOCK_S)
        p = t - (slot - s + W1) % W1  # absolute position held by slot s
        valid = (s < W1) & (p >= 0)
        is_new = (s == slot)[:, None]
        k_rows = rk_row + s[:, None] * stride_rks
        k1 = tl.load(k_rows + i[None, :], mask=valid[:, None] & m1[None, :], other=0.0).to(tl.float32)
        k2 = tl.load(k_rows + D1 + i[None, :], mask=valid[:, None] & m2[None, :], other=0.0).to(tl.float32)
        vb = tl.load(rv_row + s[:, None] * stride_rvs + d[None, :], mask=valid[:, None] & dm[None, :], other=0.0)
        k1 = tl.where(is_new, k1_new[None, :], k1)
        k2 = tl.where(is_new, k2_new[None, :], k2)
        vb = tl.where(is_new, v_new[None, :], vb.to(tl.float32))
        if HAS_ROPE:
            ck, sk = _cos_sin(p.to(tl.float32)[:, None] * inv[None, :], PRECISE_TRIG)
            k1, k2 = k1 * ck - k2 * sk, k2 * ck + k1 * sk
        sc = tl.sum(q1[:, None, :] * k1[None, :, :], axis=2) + tl.sum(q2[:, None, :] * k2[None, :, :], axis=2)
        sc = tl.where(valid[None, :], sc, float("-inf"))  # (BLOCK_G, BLOCK_S)
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
        alpha = tl.exp(m_i - m_new)
        pr = tl.exp(sc - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, axis=1)
        acc = acc * alpha[:, None] + tl.sum(pr[:, :, None] * vb[None, :, :], axis=1)
        m_i = m_new
    store_softmax_split(m_ptr, l_ptr, acc_ptr, pid, NS, j, gi, d, m_i, l_i, acc, BLOCK_G, BLOCK_D)


@triton.jit
def _rla_split(q_ptr, ring_k_ptr, ring_v_ptr, state_ptr, part_ptr, pid, b, hk, t, j, c, NF, F_SPLIT, W1,
               stride_qb, stride_qh, stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh,
               stride_sb, stride_sh, stride_sf,
               D: tl.constexpr, F: tl.constexpr, G: tl.constexpr, FEATURE_MAP: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_V: tl.constexpr):
    """Feature rows [j * F_SPLIT, (j + 1) * F_SPLIT) and value columns [c * BLOCK_V, (c + 1) * BLOCK_V) of
    the state: folds the token leaving the window (still in its slot) into that part and writes this
    split's share of phi(q) S in those columns, (BLOCK_G, BLOCK_V) fp32, to part[pid, j]."""
    slot = tl.where(t >= 0, t % W1, 0)  # a negative position (a damaged cache) reads slot 0 and changes nothing
    leaving = t >= W1  # the slot holds token t - W1, which leaves the window now
    d = tl.arange(0, BLOCK_D)  # the whole head dim: the softmax normalizers
    dm = d < D
    col = c * BLOCK_V + tl.arange(0, BLOCK_V)  # this program's value columns
    cm = col < D
    gi = tl.arange(0, BLOCK_G)
    gm = gi < G
    qg_ptr = q_ptr + b * stride_qb + (hk * G + gi)[:, None] * stride_qh
    rk_row = ring_k_ptr + b * stride_rkb + hk * stride_rkh + slot * stride_rks
    v_old = tl.load(ring_v_ptr + b * stride_rvb + hk * stride_rvh + slot * stride_rvs + col, mask=cm, other=0.0)
    v_old = v_old.to(tl.float32)
    if FEATURE_MAP == 0:
        # softmax normalizers over the head dim for x and -x (phi = [softmax(x), softmax(-x)])
        k_old = tl.load(rk_row + d, mask=dm, other=0.0).to(tl.float32)
        q = tl.load(qg_ptr + d[None, :], mask=gm[:, None] & dm[None, :], other=0.0).to(tl.float32)
        mk_p = tl.max(tl.where(dm, k_old, float("-inf")), axis=0)
        mk_n = tl.max(tl.where(dm, -k_old, float("-inf")), axis=0)
        zk_p = tl.sum(tl.where(dm, tl.exp(k_old - mk_p), 0.0), axis=0)
        zk_n = tl.sum(tl.where(dm, tl.exp(-k_old - mk_n), 0.0), axis=0)
        mq_p = tl.max(tl.where(dm[None, :], q, float("-inf")), axis=1)  # (BLOCK_G,)
        mq_n = tl.max(tl.where(dm[None, :], -q, float("-inf")), axis=1)
        zq_p = tl.sum(tl.where(dm[None, :], tl.exp(q - mq_p[:, None]), 0.0), axis=1)
        zq_n = tl.sum(tl.where(dm[None, :], tl.exp(-q - mq_n[:, None]), 0.0), axis=1)
    o_rla = tl.zeros((BLOCK_G, BLOCK_V), dtype=tl.float32)
    s_base = state_ptr + b * stride_sb + hk * stride_sh
    for f0 in range(0, F_SPLIT, BLOCK_F):
        f = j * F_SPLIT + f0 + tl.arange(0, BLOCK_F)
        fm = f < F
        neg = f >= D  # second half of phi reads -x
        src = tl.where(neg, f - D, f)
        sign = tl.where(neg, -1.0, 1.0)
        xk = tl.load(rk_row + src, mask=fm, other=0.0).to(tl.float32) * sign
        xq = tl.load(qg_ptr + src[None, :], mask=gm[:, None] & fm[None, :], other=0.0).to(tl.float32)
        xq = xq * sign[None, :]
        if FEATURE_MAP == 0:
            phi_k = tl.exp(xk - tl.where(neg, mk_n, mk_p)) / tl.where(neg, zk_n, zk_p)
            phi_q = tl.exp(xq - tl.where(neg[None, :], mq_n[:, None], mq_p[:, None]))
            phi_q = phi_q / tl.where(neg[None, :], zq_n[:, None], zq_p[:, None])
        elif FEATURE_MAP == 1:
            phi_k = tl.maximum(xk, 0.0)
            phi_q = tl.maximum(xq, 0.0)
        else:
            phi_k = xk
            phi_q = xq
        phi_k = tl.where(fm, phi_k, 0.0)
        phi_q = tl.where(gm[:, None] & fm[None, :], phi_q, 0.0)
        s_ptrs = s_base + f[:, None] * stride_sf + col[None, :]
        s_mask = fm[:, None] & cm[None, :]
        s_blk = tl.load(s_ptrs, mask=s_mask, other=0.0)  # (BLOCK_F, BLOCK_V) fp32
        s_blk = tl.where(leaving, s_blk + phi_k[:, None] * v_old[None, :], s_blk)
        tl.store(s_ptrs, s_blk, mask=s_mask & leaving)
        o_rla += tl.sum(phi_q[:, :, None] * s_blk[None, :, :], axis=1)
    offs = (pid * NF + j) * BLOCK_G * BLOCK_D + gi[:, None] * BLOCK_D + col[None, :]
    tl.store(part_ptr + offs, o_rla)


@triton.jit
def _combine(k_ptr, v_ptr, ring_k_ptr, ring_v_ptr, m_ptr, l_ptr, acc_ptr, rla_ptr, g_swa_ptr, g_rla_ptr, o_ptr,
             pid, b, hk, t, NS, NF, W1, eps,
             stride_kb, stride_kh, stride_vb, stride_vh,
             stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh, stride_ob, stride_oh,
             D: tl.constexpr, G: tl.constexpr, HAS_STATE: tl.constexpr, HAS_G_SWA: tl.constexpr,
             HAS_G_RLA: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr):
    """Merges the softmax splits, adds the RLA splits, applies both RMS norms, writes the output, then
    overwrites the leaving token's slot with the new k / v (every split of this pair has read it)."""
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    gi = tl.arange(0, BLOCK_G)
    gm = gi < G
    h = hk * G + gi
    q_mask = gm[:, None] & dm[None, :]
    o = merge_softmax_splits(m_ptr, l_ptr, acc_ptr, pid, NS, gi, d, BLOCK_G, BLOCK_D)  # the new token is visible: l > 0
    if HAS_STATE:
        o_rla = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
        for j in range(0, NF):
            offs = (pid * NF + j) * BLOCK_G * BLOCK_D + gi[:, None] * BLOCK_D + d[None, :]
            o_rla += tl.load(rla_ptr + offs, cache_modifier=".cg")
        gw_offs = h[:, None] * D + d[None, :]
        o = o * tl.rsqrt(tl.sum(o * o, axis=1) / D + eps)[:, None]
        if HAS_G_SWA:
            o = o * tl.load(g_swa_ptr + gw_offs, mask=q_mask, other=0.0).to(tl.float32)
        o_rla = o_rla * tl.rsqrt(tl.sum(o_rla * o_rla, axis=1) / D + eps)[:, None]
        if HAS_G_RLA:
            o_rla = o_rla * tl.load(g_rla_ptr + gw_offs, mask=q_mask, other=0.0).to(tl.float32)
        o = o + o_rla
    tl.store(o_ptr + b * stride_ob + h[:, None] * stride_oh + d[None, :], o.to(o_ptr.dtype.element_ty), mask=q_mask)
    ok = t >= 0  # a negative position (a damaged cache): NaN output (merged above), the ring is left alone
    slot = tl.where(ok, t % W1, 0)
    ring_dtype = ring_k_ptr.dtype.element_ty
    k_new = tl.load(k_ptr + b * stride_kb + hk * stride_kh + d, mask=dm, other=0.0).to(ring_dtype)
    v_new = tl.load(v_ptr + b * stride_vb + hk * stride_vh + d, mask=dm, other=0.0).to(ring_dtype)
    tl.store(ring_k_ptr + b * stride_rkb + hk * stride_rkh + slot * stride_rks + d, k_new, mask=dm & ok)
    tl.store(ring_v_ptr + b * stride_rvb + hk * stride_rvh + slot * stride_rvs + d, v_new, mask=dm & ok)


@triton.jit
def local_decode_kernel(
    q_ptr, k_ptr, v_ptr, ring_k_ptr, ring_v_ptr, state_ptr, pos_ptr, inv_freq_ptr, g_swa_ptr, g_rla_ptr, o_ptr,
    m_ptr, l_ptr, acc_ptr, rla_ptr, count_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
    stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh, stride_sb, stride_sh, stride_sf,
    stride_ob, stride_oh,
    W1, Hkv, NS, S_SPLIT, NF, F_SPLIT, scale, eps,
    D: tl.constexpr, F: tl.constexpr, G: tl.constexpr, NV: tl.constexpr, FEATURE_MAP: tl.constexpr,
    HAS_STATE: tl.constexpr, HAS_ROPE: tl.constexpr, PRECISE_TRIG: tl.constexpr,
    HAS_G_SWA: tl.constexpr, HAS_G_RLA: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_F: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Program (b * Hkv + hk, j): split j < NS of the window's softmax, or split (j - NS) // NV of the
    state's feature rows in value slice (j - NS) % NV. Each split then counts itself done on the pair's
    counter; the last one to arrive merges the pair (`_combine`), and the last pair of a batch row to
    finish advances that row's position. Counters are left at zero for the next step."""
    pid = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    b = pid // Hkv
    hk = pid % Hkv
    t = tl.load(pos_ptr + b)
    if j < NS:
        _swa_split(q_ptr, k_ptr, v_ptr, ring_k_ptr, ring_v_ptr, inv_freq_ptr, m_ptr, l_ptr, acc_ptr,
                   pid, b, hk, t, j, NS, S_SPLIT, W1, scale,
                   stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
                   stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh,
                   D, G, HAS_ROPE, PRECISE_TRIG, BLOCK_D, BLOCK_H, BLOCK_G, BLOCK_S)
    else:
        if HAS_STATE:
            jf = (j - NS) // NV
            _rla_split(q_ptr, ring_k_ptr, ring_v_ptr, state_ptr, rla_ptr, pid, b, hk, t, jf, (j - NS) - jf * NV,
                       NF, F_SPLIT, W1,
                       stride_qb, stride_qh, stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh,
                       stride_sb, stride_sh, stride_sf,
                       D, F, G, FEATURE_MAP, BLOCK_D, BLOCK_G, BLOCK_F, BLOCK_V)
    # Every thread's stores above happen before the release on the counter; the last program's acquire
    # makes them visible to its loads (read from L2: `.cg`).
    tl.debug_barrier()
    arrived = tl.atomic_add(count_ptr + pid, 1, sem="acq_rel")
    if arrived == NS + NF * NV - 1:
        _combine(k_ptr, v_ptr, ring_k_ptr, ring_v_ptr, m_ptr, l_ptr, acc_ptr, rla_ptr, g_swa_ptr, g_rla_ptr, o_ptr,
                 pid, b, hk, t, NS, NF, W1, eps,
                 stride_kb, stride_kh, stride_vb, stride_vh,
                 stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh, stride_ob, stride_oh,
                 D, G, HAS_STATE, HAS_G_SWA, HAS_G_RLA, BLOCK_D, BLOCK_G)
        tl.store(count_ptr + pid, 0)
        tl.debug_barrier()
        row_count = count_ptr + tl.num_programs(0) + b  # row counters follow the B * Hkv pair counters
        done = tl.atomic_add(row_count, 1, sem="acq_rel")
        if done == Hkv - 1:  # every pair of row b has read its position
            tl.store(pos_ptr + b, t + 1)
            tl.store(row_count, 0)


@triton.jit
def store_softmax_split(m_ptr, l_ptr, acc_ptr, pid, NS, j, gi, d, m_i, l_i, acc, BLOCK_G: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    """Write split j of `pid`'s partial softmax (max m, sum l, unnormalized acc) for `merge_softmax_splits`."""
    row = (pid * NS + j) * BLOCK_G + gi
    tl.store(m_ptr + row, m_i)
    tl.store(l_ptr + row, l_i)
    tl.store(acc_ptr + row[:, None] * BLOCK_D + d[None, :], acc)


@triton.jit
def merge_softmax_splits(m_ptr, l_ptr, acc_ptr, pid, NS, gi, d, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """Flash-decoding merge: the NS partial softmaxes (max m, sum l, unnormalized acc) written by the
    split programs of `pid` -> the normalized (BLOCK_G, BLOCK_D) output. Needs l > 0 overall."""
    # `.cg`: read from L2, where other programs' stores land (`local_decode_kernel` merges in the kernel
    # that wrote the splits)
    m = tl.full((BLOCK_G,), -1.0e30, dtype=tl.float32)
    for j in range(0, NS):
        m = tl.maximum(m, tl.load(m_ptr + (pid * NS + j) * BLOCK_G + gi, cache_modifier=".cg"))
    l_sum = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    for j in range(0, NS):
        row = (pid * NS + j) * BLOCK_G + gi
        w = tl.exp(tl.load(m_ptr + row, cache_modifier=".cg") - m)
        l_sum += tl.load(l_ptr + row, cache_modifier=".cg") * w
        acc += tl.load(acc_ptr + row[:, None] * BLOCK_D + d[None, :], cache_modifier=".cg") * w[:, None]
    return acc / l_sum[:, None]


def _splits(n: int, block: int, programs: int, target: int) -> tuple[int, int]:
    """Split n rows (slots or feature rows) over enough programs to reach `target` programs in all:
    returns (rows per split, a multiple of block; number of splits)."""
    want = max(1, min(-(-target // programs), -(-n // block)))
    per = -(-(-(-n // want)) // block) * block
    return per, -(-n // per)


# Zeroed int32 counters per device for `local_decode_kernel` (pairs, then rows) and `kv_decode_kernel`
# (pairs). The kernels leave them at zero, so one buffer serves every step and layer on the device,
# replayed CUDA graphs included. A larger buffer is added when needed; the smaller ones stay alive,
# because a captured graph may still address them. Two steps running at once on two streams of one
# device would share the counters: not supported.
_counters: dict[str, list[torch.Tensor]] = {}


def _counter_buffer(n: int, device: torch.device) -> torch.Tensor:
    kept = _counters.setdefault(str(device), [])
    if kept and kept[-1].numel() >= n:
        return kept[-1]
    fresh = torch.zeros(max(n, 2 * kept[-1].numel() if kept else 64), dtype=torch.int32, device=device)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return fresh  # from the graph's pool and zeroed at each replay; not kept past the graph
    kept.append(fresh)
    return fresh


def _launch_decode(q, k, v, cache: LocalCache, o, inv_freq, g_swa, g_rla, scale, eps):
    B, H, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    W1 = cache.window + 1
    state = cache.state
    F = D if state is None else state.shape[2]
    block_d = triton.next_power_of_2(D)
    block_h = triton.next_power_of_2((D + 1) // 2)
    block_g = triton.next_power_of_2(G)
    block_v = min(block_d, _STATE_BLOCK_V)
    nv = block_d // block_v
    # Live fp32 tiles per block row: the (heads x block x width) products plus ~4 (block x width) tiles
    # (the key halves and their cos / sin, or the state block); width = D for the ring's slots (the value
    # product), the value slice for the state's feature rows.
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    budget = _TILE_BUDGET["interpreter" if interpreting else "gpu"]

    def rows(width: int) -> int:  # power-of-2 floor of the rows the budget allows
        return 1 << max(0, (budget // (width * (block_g + 4))).bit_length() - 1)

    block_s = min(triton.next_power_of_2(W1), rows(block_d))
    block_f = min(triton.next_power_of_2(F), rows(block_v))
    # Flash-decoding: with few (row, KV head) pairs, the window and the state are split over more
    # programs so the GPU fills up; the target is shared by the two in proportion to their bytes
    # (the ring is read, the state read and written).
    programs = B * Hkv
    target = _SPLIT_TARGET if interpreting else GPU_LAUNCH["programs_per_sm"] * _num_sms(q.device)
    warps = 4 if interpreting else GPU_LAUNCH["num_warps"]
    if state is None:
        s_split, ns = _splits(W1, block_s, programs, target)
        f_split, nf = F, 0
    else:
        ring_bytes = 2 * W1 * cache.k.element_size()
        state_bytes = 2 * F * 4
        share = max(1, round(target * ring_bytes / (ring_bytes + state_bytes)))
        s_split, ns = _splits(W1, block_s, programs, share)
        f_split, nf = _splits(F, block_f, programs * nv, max(1, target - share))
    f32 = dict(dtype=torch.float32, device=q.device)
    m = torch.empty(programs * ns * block_g, **f32)
    l_ = torch.empty_like(m)
    acc = torch.empty(programs * ns * block_g * block_d, **f32)
    rla = torch.empty(programs * nf * block_g * block_d, **f32) if state is not None else m
    dummy = o  # never read: the matching HAS_* flag is off
    local_decode_kernel[(programs, ns + nf * nv)](
        q_ptr=q, k_ptr=k, v_ptr=v, ring_k_ptr=cache.k, ring_v_ptr=cache.v,
        state_ptr=dummy if state is None else state, pos_ptr=cache.pos,
        inv_freq_ptr=dummy if inv_freq is None else inv_freq,
        g_swa_ptr=dummy if g_swa is None else g_swa, g_rla_ptr=dummy if g_rla is None else g_rla, o_ptr=o,
        m_ptr=m, l_ptr=l_, acc_ptr=acc, rla_ptr=rla, count_ptr=_counter_buffer(programs + B, q.device),
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_kb=k.stride(0), stride_kh=k.stride(1),
        stride_vb=v.stride(0), stride_vh=v.stride(1),
        stride_rkb=cache.k.stride(0), stride_rks=cache.k.stride(1), stride_rkh=cache.k.stride(2),
        stride_rvb=cache.v.stride(0), stride_rvs=cache.v.stride(1), stride_rvh=cache.v.stride(2),
        stride_sb=0 if state is None else state.stride(0), stride_sh=0 if state is None else state.stride(1),
        stride_sf=0 if state is None else state.stride(2), stride_ob=o.stride(0), stride_oh=o.stride(1),
        W1=W1, Hkv=Hkv, NS=ns, S_SPLIT=s_split, NF=nf, F_SPLIT=f_split, scale=scale, eps=eps,
        D=D, F=F, G=G, NV=nv, FEATURE_MAP=_FEATURE_MAP_CODES[cache.feature_map],
        HAS_STATE=state is not None, HAS_ROPE=inv_freq is not None, PRECISE_TRIG=q.is_cuda and not interpreting,
        HAS_G_SWA=g_swa is not None, HAS_G_RLA=g_rla is not None,
        BLOCK_D=block_d, BLOCK_H=block_h, BLOCK_G=block_g, BLOCK_S=block_s, BLOCK_F=block_f, BLOCK_V=block_v,
        num_warps=warps,
    )


def _inv_freq_on(rope, device: torch.device) -> torch.Tensor:
    key = (id(rope), str(device))
    hit = _inv_freq_copies.get(key)
    if hit is not None and hit[0] is rope.inv_freq:
        return hit[1]
    if len(_inv_freq_copies) > 64:
        _inv_freq_copies.clear()
    copy = rope.inv_freq.to(device=device, dtype=torch.float32).contiguous()
    _inv_freq_copies[key] = (rope.inv_freq, copy)
    return copy


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def local_decode_step_triton(q, k, v, cache: LocalCache, *, rope=None, scale=None, swa_norm_weight=None,
                             rla_norm_weight=None, eps=1e-6):
    """One decode step of a local layer, in Triton; same semantics as `local_decode_step_naive`.

    Args:
        q: (B, H, D) raw query of the new token; k, v: (B, Hkv, D) raw, H % Hkv == 0.
        cache: LocalCache whose ring is (B, window+1, Hkv, D) (any float dtype) and whose state is
            (B, Hkv, F, D) fp32 or None (plain SWA); rows may sit at different positions `cache.pos`.
            Updated in place: the slot pos mod (window+1) of k/v, the state; `cache.pos` becomes pos + 1
            (written by the kernel, so a captured CUDA graph keeps addressing the same tensor).
        rope: a Rope for the SWA branch (positions are absolute, from `cache.pos`), or None.
        scale: softmax scale, default D ** -0.5.
        swa_norm_weight, rla_norm_weight: (H, D) or None (ones); used only when the cache has a state.
    Returns:
        (B, H, D) in q.dtype: o_swa for a plain SWA cache, else rms(o_swa) * g_swa + rms(o_rla) * g_rla.
    """
    check_decode_args(q, k, v, cache, rope, swa_norm_weight=swa_norm_weight, rla_norm_weight=rla_norm_weight)
    B, H, D = q.shape
    o = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
    if B > 0:
        inv_freq = None if rope is None else _inv_freq_on(rope, q.device)
        has_state = cache.state is not None
        g_swa = swa_norm_weight.contiguous() if has_state and swa_norm_weight is not None else None
        g_rla = rla_norm_weight.contiguous() if has_state and rla_norm_weight is not None else None
        _launch_decode(_last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v), cache, o,
                       inv_freq, g_swa, g_rla, default_scale(D, scale), float(eps))
    return o
