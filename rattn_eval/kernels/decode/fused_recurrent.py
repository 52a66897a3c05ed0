"""Triton decode step for local layers (plain SWA and RAttention): one new token per sequence.

`_launch_decode` runs one kernel, `decode_step_kernel`, over the B * Hkv (batch row, KV head) pairs and,
on its second grid axis, over splits of each pair's work (flash-decoding), so that a small batch still
fills the GPU:
- softmax splits (`_swa_split`, j < ns): an online softmax over a range of the w+1 ring slots, rotating
  each slot's raw key with that slot's absolute position (RoPE cos/sin computed in-kernel from
  `inv_freq`, so the cache holds no position table; `_cos_sin`) and taking scores and output as
  tensor-core products; the new token's slot is taken from the inputs k/v, not from the ring; the split
  writes its max, sum and unnormalized accumulator;
- RLA splits (`_rla_split`, RAttention only, nf * nv of them): a range of the F feature rows of the fp32
  state S and a slice of its value columns (`_STATE_BLOCK_V`; two slices at D = 256, one up to 128):
  folds the token leaving the window (slot t mod (w+1), still holding position t-w-1 when t >= w+1)
  into that part block by block and writes its share of phi(q) S for the group's query heads, read from
  the updated block while it is on chip (a tensor-core product, query heads padded to 16 rows).
Each split then counts itself on its pair's counter (an atomic with acquire-release order, after a block
barrier); the pair's last split (`_merge_pair`) merges the softmax splits, sums the RLA splits, applies
both RMS norms and gains (RAttention only), writes the output and only then overwrites the slot
t mod (w+1) with the new k/v (every split of the pair has read it by then). It counts the pair on its
row's counter, and the row's last pair advances `cache.pos[b]` in place, once every program of the row
has read it.
`_splits` picks the split counts ns (slots) and nf (feature rows): it aims for B * Hkv * splits to
reach the target (`GPU_LAUNCH["programs_per_sm"]` x the SM count on a GPU, `_SPLIT_TARGET` under the
interpreter), never more splits than there are BLOCK_S-slot / BLOCK_F-row blocks, and each split covers
a whole number of blocks (block sizes from `_BLOCKS`).
Semantics are exactly `local_decode_step_naive` (the decode cache of `rattn_eval/kernels/decode/README.md`).
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
from ..triton_common import counter_buffer
from ..triton_common import num_sms as _num_sms
from .naive import LocalCache, check_decode_args


# rope.inv_freq copied to the kernel's device once, not every step: id(rope), device -> (source, copy)
_inv_freq_copies: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

# Ring slots and state feature rows per loop iteration (each a tensor-core product, so at least 16). The
# CPU interpreter runs every iteration in Python, so it takes larger blocks (same code, fewer
# iterations); the tests also run the GPU blocks there to cover many-block loops.
_BLOCKS = {"gpu": MappingProxyType({"block_s": 16, "block_f": 32}),
           "interpreter": MappingProxyType({"block_s": 512, "block_f": 256})}
# Value columns per RLA split: at D = 256 the state is split into two column slices (each a split of its own),
# so a block of feature rows is as wide as at D = 128.
_STATE_BLOCK_V = 128
# fp32 elements of the (splits, heads, head dim) tile a merge reads per iteration: 32 registers a thread
# at 4 warps.
_MERGE_TILE = 4096
# Programs the window / state splits aim for under the interpreter (on a GPU: `programs_per_sm` times the
# SM count). Small, so the CPU tests stay fast, yet above 1 so they cover the split-and-merge path.
_SPLIT_TARGET = 4
# GPU launch settings, edited by hand: programs per SM that the softmax splits and, apart, the RLA splits aim
# for (one launch holds both), warps per program. With the GPU blocks above, batch 64 (H 16, Hkv 4, D 128,
# window 512, bf16) takes 0.0735 ms on an H100, 60% of its copy bandwidth (results/bench/h100_decode/kernels.txt). `rattn-eval bench tune --what local-decode` times the
# candidates: two programs per SM were faster at batch 8 (0.0220 against 0.0246 ms) and slower at batch 64
# (0.0785 against 0.0738 ms; results/bench/h100_decode/tune_local.txt).
GPU_LAUNCH = MappingProxyType({"programs_per_sm": 1, "num_warps": 4})


@triton.jit
def _cos_sin(angle, FAST_TRIG: tl.constexpr):
    """cos, sin of an fp32 angle (RoPE angles reach ~1e6 rad at a million positions). The angle is reduced to
    [-pi, pi] in fp64 (exact to fp32 rounding for any angle a position gives), where the GPU's approximate
    sin / cos (FAST_TRIG) are accurate to ~1e-6. The interpreter has no libdevice: numpy's cos / sin there."""
    a = angle.to(tl.float64)
    r = (a - tl.floor(a * 0.15915494309189535 + 0.5) * 6.283185307179586).to(tl.float32)
    if FAST_TRIG:
        c = libdevice.fast_cosf(r)
        s = libdevice.fast_sinf(r)
    else:
        c = tl.cos(r)
        s = tl.sin(r)
    return c, s


@triton.jit
def _rla_split(
    q_ptr, ring_k_ptr, ring_v_ptr, state_ptr, part_ptr, pid, b, hk, t, slot, jf, c,
    stride_qb, stride_qh, stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh,
    stride_sb, stride_sh, stride_sf, W1, NF, F_SPLIT,
    D: tl.constexpr, F: tl.constexpr, G: tl.constexpr, FEATURE_MAP: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Feature rows [jf * F_SPLIT, (jf + 1) * F_SPLIT) and value columns [c * BLOCK_V, (c + 1) * BLOCK_V) of
    the state of pair `pid`: folds the token leaving the window (still in its slot: the pair's merge
    overwrites it later) into that part of S and writes this split's share of phi(q) S in those columns,
    (BLOCK_G, BLOCK_V) fp32, to part[pid, jf] (BLOCK_G, BLOCK_D)."""
    leaving = t >= W1  # the slot holds token t - W1, which leaves the window now
    d = tl.arange(0, BLOCK_D)  # the whole head dim: the softmax normalizers
    dm = d < D
    col = c * BLOCK_V + tl.arange(0, BLOCK_V)  # this split's value columns
    cm = col < D
    gi = tl.arange(0, BLOCK_G)
    gm = gi < G
    h = hk * G + gi
    qg_ptr = q_ptr + b * stride_qb + h[:, None] * stride_qh
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
        f = jf * F_SPLIT + f0 + tl.arange(0, BLOCK_F)
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
        o_rla += tl.dot(phi_q, s_blk, input_precision=PRECISION)  # tf32 for a 16-bit ring: 10-bit mantissas
    offs = (pid * NF + jf) * BLOCK_G * BLOCK_D + gi[:, None] * BLOCK_D + col[None, :]
    tl.store(part_ptr + offs, o_rla, mask=gm[:, None])  # only the real heads: the merge reads no more


@triton.jit
def _swa_split(
    q_ptr, k_ptr, v_ptr, ring_k_ptr, ring_v_ptr, inv_freq_ptr, m_ptr, l_ptr, acc_ptr, pid, b, hk, t, slot, j,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
    stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh,
    W1, NS, S_SPLIT, scale,
    D: tl.constexpr, G: tl.constexpr, HAS_ROPE: tl.constexpr, FAST_TRIG: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Online softmax over ring slots [j * S_SPLIT, (j + 1) * S_SPLIT) for the query heads of pair `pid`;
    writes the split's running max m, sum l and unnormalized acc. Slot i holds position
    t - ((slot - i) mod W1) (negative: not filled yet); the new token's slot is read from the inputs (the
    ring still holds the leaving token there). Keys are read in halves, columns [0, D1) and [D1, D) with
    D1 = ceil(D / 2) (the pairs of rotate-half RoPE), rotated in fp32 and, for a 16-bit ring, rounded back
    to the ring's dtype for the tensor-core products."""
    D1: tl.constexpr = (D + 1) // 2
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
    v_new = tl.load(v_ptr + b * stride_vb + hk * stride_vh + d, mask=dm, other=0.0).to(ring_dtype)
    if HAS_ROPE:
        inv = tl.load(inv_freq_ptr + i, mask=m1, other=0.0)
        cq, sq = _cos_sin(t.to(tl.float32) * inv, FAST_TRIG)
        q1, q2 = q1 * cq[None, :] - q2 * sq[None, :], q2 * cq[None, :] + q1 * sq[None, :]
    q1 = q1 * scale
    q2 = q2 * scale
    if PRECISION != "ieee":  # 16-bit products: every operand in the ring's dtype (q1's dtype below)
        q1 = q1.to(ring_dtype)
        q2 = q2.to(ring_dtype)

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
        vb = tl.where(is_new, v_new[None, :], vb)
        if HAS_ROPE:
            ck, sk = _cos_sin(p.to(tl.float32)[:, None] * inv[None, :], FAST_TRIG)
            k1, k2 = k1 * ck - k2 * sk, k2 * ck + k1 * sk
        sc = (tl.dot(q1, tl.trans(k1.to(q1.dtype)), input_precision=PRECISION)
              + tl.dot(q2, tl.trans(k2.to(q1.dtype)), input_precision=PRECISION))
        sc = tl.where(valid[None, :], sc, float("-inf"))  # (BLOCK_G, BLOCK_S)
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
        alpha = tl.exp(m_i - m_new)
        pr = tl.exp(sc - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, axis=1)
        acc = acc * alpha[:, None] + tl.dot(pr.to(q1.dtype), vb.to(q1.dtype), input_precision=PRECISION)
        m_i = m_new
    store_softmax_split(m_ptr, l_ptr, acc_ptr, pid, NS, j, gi, d, m_i, l_i, acc, G, BLOCK_G, BLOCK_D)


@triton.jit
def _merge_pair(
    k_ptr, v_ptr, ring_k_ptr, ring_v_ptr, m_ptr, l_ptr, acc_ptr, rla_ptr, g_swa_ptr, g_rla_ptr, o_ptr,
    pid, b, hk, t, slot, stride_kb, stride_kh, stride_vb, stride_vh,
    stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh, stride_ob, stride_oh,
    NS, NF, eps,
    D: tl.constexpr, G: tl.constexpr, HAS_STATE: tl.constexpr, HAS_G_SWA: tl.constexpr, HAS_G_RLA: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_GM: tl.constexpr, BLOCK_JS: tl.constexpr,
    BLOCK_JF: tl.constexpr,
):
    """The pair's last split: merges the softmax splits, adds the RLA splits, applies both RMS norms,
    writes the output, then overwrites the leaving token's slot with the new k/v (every split of the pair
    has read it by then). The splits write rows of BLOCK_G heads; the first BLOCK_GM >= G of them are read
    here, BLOCK_JS softmax / BLOCK_JF RLA splits at a time, from L2 (`.cg`), where the other programs'
    stores land."""
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    gi = tl.arange(0, BLOCK_GM)
    gm = gi < G
    h = hk * G + gi
    q_mask = gm[:, None] & dm[None, :]
    # the new token is visible: l > 0 (l = 0, a NaN row, only for a negative position)
    o = merge_softmax_splits(m_ptr, l_ptr, acc_ptr, pid, NS, G, BLOCK_G, BLOCK_GM, BLOCK_D, BLOCK_JS)
    if HAS_STATE:
        o_rla = tl.zeros((BLOCK_GM, BLOCK_D), dtype=tl.float32)
        jj = tl.arange(0, BLOCK_JF)
        for j0 in range(0, NF, BLOCK_JF):
            offs = ((pid * NF + j0 + jj)[:, None, None] * BLOCK_G * BLOCK_D + gi[None, :, None] * BLOCK_D
                    + d[None, None, :])
            o_rla += tl.sum(tl.load(rla_ptr + offs, mask=((j0 + jj) < NF)[:, None, None] & gm[None, :, None],
                                    other=0.0, cache_modifier=".cg"), axis=0)
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
    ring_dtype = ring_k_ptr.dtype.element_ty
    k_new = tl.load(k_ptr + b * stride_kb + hk * stride_kh + d, mask=dm, other=0.0).to(ring_dtype)
    v_new = tl.load(v_ptr + b * stride_vb + hk * stride_vh + d, mask=dm, other=0.0).to(ring_dtype)
    tl.store(ring_k_ptr + b * stride_rkb + hk * stride_rkh + slot * stride_rks + d, k_new, mask=dm & ok)
    tl.store(ring_v_ptr + b * stride_rvb + hk * stride_rvh + slot * stride_rvs + d, v_new, mask=dm & ok)


@triton.jit
def decode_step_kernel(
    q_ptr, k_ptr, v_ptr, ring_k_ptr, ring_v_ptr, state_ptr, pos_ptr, inv_freq_ptr, m_ptr, l_ptr, acc_ptr, rla_ptr,
    g_swa_ptr, g_rla_ptr, o_ptr, count_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
    stride_rkb, stride_rks, stride_rkh, stride_rvb, stride_rvs, stride_rvh,
    stride_sb, stride_sh, stride_sf, stride_ob, stride_oh, stride_pb,
    W1, B, Hkv, NS, S_SPLIT, NF, F_SPLIT, scale, eps,
    D: tl.constexpr, F: tl.constexpr, G: tl.constexpr, NV: tl.constexpr, HAS_STATE: tl.constexpr,
    FEATURE_MAP: tl.constexpr, HAS_ROPE: tl.constexpr, FAST_TRIG: tl.constexpr, PRECISION: tl.constexpr,
    HAS_G_SWA: tl.constexpr, HAS_G_RLA: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_GM: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_JS: tl.constexpr,
    BLOCK_JF: tl.constexpr,
):
    """Program (b * Hkv + hk, j): softmax split j of the ring when j < NS, else RLA split j - NS (feature
    rows (j - NS) // NV, value columns (j - NS) % NV). Each split then counts itself on its pair's counter;
    the pair's last split merges (`_merge_pair`) and counts the pair on its row's counter, and the row's
    last pair advances pos[b]: by then every program of the row has read it. Counters: B * Hkv pair
    counters, then B row counters, zero on entry and left at zero."""
    pid = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    b = pid // Hkv
    hk = pid % Hkv
    t = tl.load(pos_ptr + b * stride_pb)
    slot = tl.where(t >= 0, t % W1, 0)  # t < 0 (a damaged cache): every slot masked, the state unchanged
    if j < NS:
        _swa_split(q_ptr=q_ptr, k_ptr=k_ptr, v_ptr=v_ptr, ring_k_ptr=ring_k_ptr, ring_v_ptr=ring_v_ptr,
                   inv_freq_ptr=inv_freq_ptr, m_ptr=m_ptr, l_ptr=l_ptr, acc_ptr=acc_ptr, pid=pid, b=b, hk=hk, t=t,
                   slot=slot, j=j, stride_qb=stride_qb, stride_qh=stride_qh, stride_kb=stride_kb, stride_kh=stride_kh,
                   stride_vb=stride_vb, stride_vh=stride_vh, stride_rkb=stride_rkb, stride_rks=stride_rks,
                   stride_rkh=stride_rkh, stride_rvb=stride_rvb, stride_rvs=stride_rvs, stride_rvh=stride_rvh,
                   W1=W1, NS=NS, S_SPLIT=S_SPLIT, scale=scale, D=D, G=G, HAS_ROPE=HAS_ROPE, FAST_TRIG=FAST_TRIG,
                   PRECISION=PRECISION, BLOCK_D=BLOCK_D, BLOCK_H=BLOCK_H, BLOCK_G=BLOCK_G, BLOCK_S=BLOCK_S)
    elif HAS_STATE:
        _rla_split(q_ptr=q_ptr, ring_k_ptr=ring_k_ptr, ring_v_ptr=ring_v_ptr, state_ptr=state_ptr, part_ptr=rla_ptr,
                   pid=pid, b=b, hk=hk, t=t, slot=slot, jf=(j - NS) // NV, c=(j - NS) % NV,
                   stride_qb=stride_qb, stride_qh=stride_qh, stride_rkb=stride_rkb, stride_rks=stride_rks,
                   stride_rkh=stride_rkh, stride_rvb=stride_rvb, stride_rvs=stride_rvs, stride_rvh=stride_rvh,
                   stride_sb=stride_sb, stride_sh=stride_sh, stride_sf=stride_sf, W1=W1, NF=NF, F_SPLIT=F_SPLIT,
                   D=D, F=F, G=G, FEATURE_MAP=FEATURE_MAP, PRECISION=PRECISION, BLOCK_D=BLOCK_D, BLOCK_G=BLOCK_G,
                   BLOCK_F=BLOCK_F, BLOCK_V=BLOCK_V)
    tl.debug_barrier()  # every thread's loads and stores before the release on the counter
    if tl.atomic_add(count_ptr + pid, 1, sem="acq_rel") == NS + NF * NV - 1:
        _merge_pair(k_ptr=k_ptr, v_ptr=v_ptr, ring_k_ptr=ring_k_ptr, ring_v_ptr=ring_v_ptr, m_ptr=m_ptr, l_ptr=l_ptr,
                    acc_ptr=acc_ptr, rla_ptr=rla_ptr, g_swa_ptr=g_swa_ptr, g_rla_ptr=g_rla_ptr, o_ptr=o_ptr,
                    pid=pid, b=b, hk=hk, t=t, slot=slot, stride_kb=stride_kb, stride_kh=stride_kh, stride_vb=stride_vb,
                    stride_vh=stride_vh, stride_rkb=stride_rkb, stride_rks=stride_rks, stride_rkh=stride_rkh,
                    stride_rvb=stride_rvb, stride_rvs=stride_rvs, stride_rvh=stride_rvh, stride_ob=stride_ob,
                    stride_oh=stride_oh, NS=NS, NF=NF, eps=eps, D=D, G=G, HAS_STATE=HAS_STATE,
                    HAS_G_SWA=HAS_G_SWA, HAS_G_RLA=HAS_G_RLA, BLOCK_D=BLOCK_D, BLOCK_G=BLOCK_G, BLOCK_GM=BLOCK_GM,
                    BLOCK_JS=BLOCK_JS, BLOCK_JF=BLOCK_JF)
        tl.store(count_ptr + pid, 0)
        row_count = count_ptr + B * Hkv + b
        if tl.atomic_add(row_count, 1, sem="acq_rel") == Hkv - 1:
            tl.store(pos_ptr + b * stride_pb, t + 1)
            tl.store(row_count, 0)


@triton.jit
def store_softmax_split(m_ptr, l_ptr, acc_ptr, pid, NS, j, gi, d, m_i, l_i, acc, G, BLOCK_G: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    """Write split j of `pid`'s partial softmax (max m, sum l, unnormalized acc) for `merge_softmax_splits`:
    rows of BLOCK_G heads (only the first G are written) by BLOCK_D columns."""
    row = (pid * NS + j) * BLOCK_G + gi
    gm = gi < G
    tl.store(m_ptr + row, m_i, mask=gm)
    tl.store(l_ptr + row, l_i, mask=gm)
    tl.store(acc_ptr + row[:, None] * BLOCK_D + d[None, :], acc, mask=gm[:, None])


@triton.jit
def merge_softmax_splits(m_ptr, l_ptr, acc_ptr, pid, NS, G, BLOCK_G: tl.constexpr, BLOCK_GM: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_J: tl.constexpr):
    """Flash-decoding merge: the NS partial softmaxes (max m, sum l, unnormalized acc) written by
    `store_softmax_split` for `pid` (rows of BLOCK_G heads) -> the normalized (BLOCK_GM, BLOCK_D) output
    of heads 0..BLOCK_GM-1 (BLOCK_GM >= G). Needs l > 0 overall.

    BLOCK_J splits are read per iteration as one (BLOCK_J, BLOCK_GM, BLOCK_D) tile and folded in with a
    running max, so the merge -- the serial tail of a decode step -- waits on ceil(NS / BLOCK_J) rounds of
    loads, not on 2 * NS."""
    # `.cg`: read from L2, where other programs' stores land (`kv_decode_kernel` merges in the kernel that
    # wrote the splits)
    gi = tl.arange(0, BLOCK_GM)
    d = tl.arange(0, BLOCK_D)
    jj = tl.arange(0, BLOCK_J)
    m = tl.full((BLOCK_GM,), -1.0e30, dtype=tl.float32)
    l_sum = tl.zeros((BLOCK_GM,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_GM, BLOCK_D), dtype=tl.float32)
    for j0 in range(0, NS, BLOCK_J):
        mask = ((j0 + jj) < NS)[:, None] & (gi < G)[None, :]  # (BLOCK_J, BLOCK_GM)
        row = (pid * NS + j0 + jj)[:, None] * BLOCK_G + gi[None, :]
        m_j = tl.load(m_ptr + row, mask=mask, other=-1.0e30, cache_modifier=".cg")
        l_j = tl.load(l_ptr + row, mask=mask, other=0.0, cache_modifier=".cg")
        a_j = tl.load(acc_ptr + row[:, :, None] * BLOCK_D + d[None, None, :], mask=mask[:, :, None], other=0.0,
                      cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(m_j, axis=0))
        alpha = tl.exp(m - m_new)
        w = tl.exp(m_j - m_new[None, :])  # (BLOCK_J, BLOCK_GM)
        l_sum = l_sum * alpha + tl.sum(l_j * w, axis=0)
        acc = acc * alpha[:, None] + tl.sum(a_j * w[:, :, None], axis=0)
        m = m_new
    return acc / l_sum[:, None]


def merge_block(ns: int, block_gm: int, block_d: int) -> int:
    """Splits `merge_softmax_splits` (and the RLA sum) reads per round: a power of two, no more than the
    splits need, with a (splits, heads, D) tile of at most `_MERGE_TILE` fp32 elements -- or one split when
    a single one (heads x D) is already larger."""
    fit = max(1, _MERGE_TILE // (block_gm * block_d))
    return min(triton.next_power_of_2(ns), 1 << (fit.bit_length() - 1))


def _splits(n: int, block: int, programs: int, target: int) -> tuple[int, int]:
    """Split n rows (slots or feature rows) over enough programs to reach `target` programs in all:
    returns (rows per split, a multiple of block; number of splits)."""
    want = max(1, min(-(-target // programs), -(-n // block)))
    per = -(-(-(-n // want)) // block) * block
    return per, -(-n // per)


def _launch_decode(q, k, v, cache: LocalCache, o, inv_freq, g_swa, g_rla, scale, eps):
    B, H, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    W1 = cache.window + 1
    state = cache.state
    F = D if state is None else state.shape[2]
    block_d = triton.next_power_of_2(D)
    block_h = max(16, triton.next_power_of_2((D + 1) // 2))
    block_gm = triton.next_power_of_2(G)  # the query heads the merge reads back
    block_g = max(16, block_gm)  # query heads padded to the 16 rows of a tensor-core tile (the measured setting)
    block_v = min(block_d, _STATE_BLOCK_V)
    nv = block_d // block_v
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    blocks = _BLOCKS["interpreter" if interpreting else "gpu"]
    block_s = max(16, min(triton.next_power_of_2(W1), blocks["block_s"]))
    block_f = max(16, min(triton.next_power_of_2(F), blocks["block_f"]))
    # exact fp32 products when the inputs or the ring are fp32 (as `precision_for`); else 16-bit products, and
    # tf32 ones for the fp32 state
    precision = "ieee" if torch.float32 in (q.dtype, cache.k.dtype) else "tf32"
    # Flash-decoding: with few (row, KV head) pairs, the window and the state are split over more
    # programs so the GPU fills up; the last split of each pair merges.
    programs = B * Hkv
    target = _SPLIT_TARGET if interpreting else GPU_LAUNCH["programs_per_sm"] * _num_sms(q.device)
    warps = 4 if interpreting else GPU_LAUNCH["num_warps"]
    s_split, ns = _splits(W1, block_s, programs, target)
    f_split, nf = _splits(F, block_f, programs * nv, target) if state is not None else (0, 0)
    f32 = dict(dtype=torch.float32, device=q.device)
    m = torch.empty(programs * ns * block_g, **f32)
    l_ = torch.empty_like(m)
    acc = torch.empty(programs * ns * block_g * block_d, **f32)
    rla = torch.empty(programs * nf * block_g * block_d, **f32) if state is not None else m
    dummy = o  # never read: the matching HAS_* flag is off
    state_strides = (0, 0, 0) if state is None else state.stride()[:3]
    decode_step_kernel[(programs, ns + nf * nv)](
        q_ptr=q, k_ptr=k, v_ptr=v, ring_k_ptr=cache.k, ring_v_ptr=cache.v,
        state_ptr=dummy if state is None else state, pos_ptr=cache.pos,
        inv_freq_ptr=dummy if inv_freq is None else inv_freq, m_ptr=m, l_ptr=l_, acc_ptr=acc, rla_ptr=rla,
        g_swa_ptr=dummy if g_swa is None else g_swa, g_rla_ptr=dummy if g_rla is None else g_rla, o_ptr=o,
        count_ptr=counter_buffer(programs + B, q.device),
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_kb=k.stride(0), stride_kh=k.stride(1),
        stride_vb=v.stride(0), stride_vh=v.stride(1),
        stride_rkb=cache.k.stride(0), stride_rks=cache.k.stride(1), stride_rkh=cache.k.stride(2),
        stride_rvb=cache.v.stride(0), stride_rvs=cache.v.stride(1), stride_rvh=cache.v.stride(2),
        stride_sb=state_strides[0], stride_sh=state_strides[1], stride_sf=state_strides[2],
        stride_ob=o.stride(0), stride_oh=o.stride(1),
        stride_pb=cache.pos.stride(0),
        W1=W1, B=B, Hkv=Hkv, NS=ns, S_SPLIT=s_split, NF=nf, F_SPLIT=f_split, scale=scale, eps=eps,
        D=D, F=F, G=G, NV=nv, HAS_STATE=state is not None,
        FEATURE_MAP=_FEATURE_MAP_CODES[cache.feature_map] if state is not None else 0, HAS_ROPE=inv_freq is not None,
        FAST_TRIG=q.is_cuda and torch.version.hip is None and not interpreting, PRECISION=precision,
        HAS_G_SWA=g_swa is not None, HAS_G_RLA=g_rla is not None,
        BLOCK_D=block_d, BLOCK_H=block_h, BLOCK_G=block_g, BLOCK_GM=block_gm, BLOCK_S=block_s, BLOCK_F=block_f,
        BLOCK_V=block_v, BLOCK_JS=merge_block(ns, block_gm, block_d),
        BLOCK_JF=merge_block(max(nf, 1), block_gm, block_d), num_warps=warps,
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
            Updated in place: the slot pos mod (window+1) of k/v, the state; `cache.pos` becomes pos + 1.
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
