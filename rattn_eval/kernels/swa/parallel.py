"""Sliding-window attention forward in Triton, with the RLA branch of RAttention fusable in.

One kernel, `swa_fwd_kernel`, serves all three prefill ops: plain SWA (DO_SWA), residual linear
attention (DO_RLA) and RAttention (both, plus RoPE and the two RMS norms). Each program owns BM
query rows of one head of one sequence and walks only the key tiles it needs, of three kinds:

    window-edge tiles  [s0 - w, s0 + BM - 1 - w):      masked; RLA keys (t - j > w) live here too
    interior tiles     between the two, keys <= s0:    every (row, key) pair visible, no mask at all
    diagonal tiles     (.., s0 + BM):                  causal mask

The order depends on the op:
- plain SWA (DO_SWA alone; also the softmax pass of the two-kernel RAttention designs): the
  interior tiles first (phase B, unmasked), then the edge and the diagonal tiles in one masked
  loop (phase C, `swa_tile` with MASK), so a program runs two software pipelines; the online
  softmax does not depend on the order of the tiles.
- RAttention (DO_SWA and DO_RLA): phi(q) @ S, then the edge tiles feeding both branches from one
  load of v (phase A), then the interior tiles (phase B), then the diagonal tiles alone in the
  masked loop (phase C). With RLA_SEPARATE (the `fused_two_pass` design) the linear branch takes
  its own pass over the edge tiles first, and the softmax branch then walks them as plain SWA does.
- RLA alone (DO_RLA): phi(q) @ S, then only the edge tiles, starting at the state boundary; no
  softmax branch, so no phase B or C.

Phase A is where the two RAttention branches meet: a key j of such a tile belongs to the window of
row t when t - j <= w and to its linear-attention residual when t - j > w, so the same k/v tile
feeds both (the RLA chunk states are stored at boundaries s0 - w exactly for this). Keys further
back enter through phi(q) @ S, the state at that boundary, computed by `rla.chunk`.

Sequences: dense batches, right-padded batches (`lengths`) and packed batches (`cu_seqlens`) are
all turned into a table of sequences (row, start, length) so that a program never straddles two
sequences and needs no segment mask.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:  # host-side TMA descriptors (triton >= 3.4); older releases take the pointer loads
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - depends on the installed triton
    TensorDescriptor = None

from ..common import cdiv, check_qkv, check_varlen, check_window, default_scale

LOG2E = 1.4426950408889634
# The interpreter runs programs one after another; small tiles there mean more phase boundaries
# exercised per test shape, at about the same cost.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

launch_counts: dict[str, int] = {"swa_fwd_kernel": 0, "swa_fwd_kernel_tma": 0, "swa_fwd_kernel_rope": 0,
                                 "swa_fwd_kernel_prefetch": 0, "swa_fwd_kernel_dense": 0, "swa_fwd_kernel_even": 0}


@triton.jit
def feature_map_halves(x, FEATURE: tl.constexpr):
    """phi(x) for fp32 rows x (R, D) as its two halves: softmax -> (softmax(x), softmax(-x)),
    relu -> (relu(x), relu(-x)), identity -> (x, x) (the second half is then unused)."""
    if FEATURE == 0:
        e_pos = tl.exp2((x - tl.max(x, axis=1)[:, None]) * 1.4426950408889634)
        e_neg = tl.exp2((tl.min(x, axis=1)[:, None] - x) * 1.4426950408889634)
        pos = e_pos * (1.0 / tl.sum(e_pos, axis=1))[:, None]  # one division per row, not per element
        neg = e_neg * (1.0 / tl.sum(e_neg, axis=1))[:, None]
    elif FEATURE == 1:
        pos = tl.maximum(x, 0.0)
        neg = tl.maximum(-x, 0.0)
    else:
        pos = x
        neg = x
    return pos, neg


@triton.jit
def feature_map_one(x, FEATURE: tl.constexpr):
    """The first half of phi(x) (softmax(x), relu(x) or x); f(-x), the second half, is feature_map_one(-x)."""
    if FEATURE == 0:
        e = tl.exp2((x - tl.max(x, axis=1)[:, None]) * 1.4426950408889634)
        y = e * (1.0 / tl.sum(e, axis=1))[:, None]
    elif FEATURE == 1:
        y = tl.maximum(x, 0.0)
    else:
        y = x
    return y


@triton.jit
def rope_rows(x, x_ptr, rows, cos_ptr, sin_ptr, rp, ok, D: tl.constexpr):
    """x (R, D) fp32, the rows at x_ptr + rows, rotated rotate-half style with the table rows at
    cos_ptr / sin_ptr + rp: x * cos + roll(x, D/2) * (-sin | +sin). Tables of any float dtype; fp32 math."""
    offs_d = tl.arange(0, D)
    half = (offs_d + D // 2) % D
    xs = tl.load(x_ptr + rows[:, None] + half[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + rp[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + rp[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    sign = tl.where(offs_d < D // 2, -1.0, 1.0)
    return x * c + xs * s * sign[None, :]


@triton.jit
def load_add_rows(add_ptr, add_desc, q_rows, row_ok, tok0, s0, h, part_stride, H, D: tl.constexpr,
                  ADD_PARTS: tl.constexpr, ADD_TMA: tl.constexpr):
    """The rows [s0, s0 + BM) of head h that `swa_fwd_kernel` adds (ADD_OUT), in fp32: one tensor or the
    sum of two partials part_stride apart; through add_desc with ADD_TMA, else masked pointer loads."""
    offs_d = tl.arange(0, D)
    if ADD_TMA:
        r = add_desc.load([(tok0 + s0).to(tl.int32), h * D]).to(tl.float32)
        if ADD_PARTS == 2:
            r += add_desc.load([(part_stride // (H * D) + tok0 + s0).to(tl.int32), h * D]).to(tl.float32)
    else:
        r = tl.load(add_ptr + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
        if ADD_PARTS == 2:
            r += tl.load(add_ptr + part_stride + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None],
                         other=0.0).to(tl.float32)
    return r


@triton.jit
def swa_tile(qs, ks_ptr, v_ptr, k_desc, v_desc, tok0, j0, kv_head, offs_m, window, L, Hkv, m_i, l_i, acc, qk_scale,
             D: tl.constexpr, BN: tl.constexpr, MASK: tl.constexpr, TMA: tl.constexpr, PRECISION: tl.constexpr,
             IN_RANGE: tl.constexpr, SCALE_SCORES: tl.constexpr):
    """One key / value tile [j0, j0 + BN) of the online softmax: returns the updated (m_i, l_i, acc).
    MASK: window and causal masks, plus the sequence end unless IN_RANGE says no key of the tile is
    past it (edge and diagonal tiles); without MASK every (row, key) pair is visible and in bounds.
    Scores in base 2: qk_scale (softmax scale * log2(e)) multiplies them in fp32 (SCALE_SCORES), or qs
    already carries it."""
    dt = qs.dtype
    offs_j = j0 + tl.arange(0, BN)
    ends: tl.constexpr = MASK and not IN_RANGE  # the tile may run past the sequence
    if TMA:  # rows past the sequence (the next one, padding, or zeros past B * T): v there must be 0
        row = (tok0 + j0).to(tl.int32)
        k = k_desc.load([row, kv_head]).to(dt)
        v = v_desc.load([row, kv_head])
        if ends:
            v = tl.where((offs_j < L)[:, None], v, 0.0)
        v = v.to(dt)
    else:
        kv_off = ((tok0 + offs_j).to(tl.int64) * (Hkv * D) + kv_head)[:, None] + tl.arange(0, D)[None, :]
        if ends:
            col_ok = (offs_j < L)[:, None]
            k = tl.load(ks_ptr + kv_off, mask=col_ok, other=0.0).to(dt)
            v = tl.load(v_ptr + kv_off, mask=col_ok, other=0.0).to(dt)
        else:
            k = tl.load(ks_ptr + kv_off).to(dt)
            v = tl.load(v_ptr + kv_off).to(dt)
    sc = tl.dot(qs, tl.trans(k), input_precision=PRECISION)
    if MASK:
        diff = offs_m[:, None] - offs_j[None, :]
        ok = (diff >= 0) & (diff <= window)
        if ends:
            ok = ok & (offs_j < L)[None, :]
        sc = tl.where(ok, sc, float("-inf"))
    return softmax_step(sc, v, m_i, l_i, acc, qk_scale, MASK, PRECISION, SCALE_SCORES)


@triton.jit
def softmax_step(sc, v, m_i, l_i, acc, qk_scale, MASKED: tl.constexpr, PRECISION: tl.constexpr,
                 SCALE_SCORES: tl.constexpr):
    """Online-softmax update with one tile of base-2 scores sc (BM, BN) and its values v (BN, D, in the
    operand dtype): returns (m_i, l_i, acc). MASKED: sc may hold -inf. A row with no key yet keeps its
    running maximum at -inf and takes its exponentials against 0 (no NaN from -inf - -inf); the maximum
    itself must not be clamped, or a later tile whose scores all lie far below 0 would underflow to
    p = 0 (the row's output then 0 instead of its softmax).
    SCALE_SCORES (qk_scale > 0): sc are raw q.k products, scaled here in fp32 (one FMA with the max), so q
    is not rounded to the operand dtype a second time after a multiply by the scale; otherwise sc are
    already in base 2."""
    if SCALE_SCORES:
        m_new = tl.maximum(m_i, tl.max(sc, axis=1) * qk_scale)
    else:
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
    if MASKED:
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    alpha = tl.exp2(m_i - m_use)
    if SCALE_SCORES:
        p = tl.exp2(sc * qk_scale - m_use[:, None])
    else:
        p = tl.exp2(sc - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def swa_fwd_kernel(
    q_ptr, k_ptr, kr_ptr, v_ptr, o_ptr,
    cos_ptr, sin_ptr, states_ptr, carry_ptr, phi_ptr, gs_ptr, gr_ptr, add_ptr, k_desc, v_desc, add_desc,
    seq_row_ptr, seq_start_ptr, seq_len_ptr, state_base_ptr,
    T, H, Hkv, window, stride_rope_b, qk_scale, eps, BPS, NSEG, part_stride,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr,
    DO_SWA: tl.constexpr, DO_RLA: tl.constexpr, ROPE: tl.constexpr, FEATURE: tl.constexpr,
    PRECISION: tl.constexpr, RLA_SEPARATE: tl.constexpr, NORM_OUT: tl.constexpr,
    ADD_OUT: tl.constexpr, EARLY_NORM: tl.constexpr, HAS_CARRY: tl.constexpr, PHI_K: tl.constexpr,
    HEADS_FIRST: tl.constexpr, ADD_RAW: tl.constexpr, ADD_PARTS: tl.constexpr, TMA: tl.constexpr,
    ADD_TMA: tl.constexpr, PREFETCH_ADD: tl.constexpr = 0, DENSE: tl.constexpr = False,
    EVEN: tl.constexpr = False, SCALE_SCORES: tl.constexpr = False,
):
    """Grid (query blocks, sequences * H). q/o (B, T, H, D), k/kr/v (B, T, Hkv, D), contiguous.
    kr is k after RoPE (only read when ROPE). RLA chunk states (rla.chunk.ChunkStates): state block
    m (BS rows) of a sequence, at states[state_base[seq] + m] (+ carry[seq, hk, m // BPS] with
    HAS_CARRY), is the sum of phi(k_j)^T v_j over j < m*BS - window. BS is a multiple of BM, and
    equals it when both branches run in one pass. PHI_K: the linear branch reads phi(k) (B, T, Hkv, F)
    from the chunk-state pre-pass instead of computing it. HEADS_FIRST: grid (sequences * H, query
    blocks), so the heads of a query block run together and share its RoPE-table rows in L2.
    ADD_OUT: add the rows of add_ptr (B, T, H, D) to the output; ADD_RAW: they are a raw RLA output,
    normalized here (rms * g_rla) before the sum; ADD_PARTS = 2: the raw output is the sum of two
    partials, at add_ptr and add_ptr + part_stride. TMA (softmax branch alone): the key / value tiles
    come through the tensor descriptors k_desc (of kr with ROPE, else k) and v_desc, 2-D views
    (B * T, Hkv * D) with blocks (BN, D); rows past the sequence are zeroed (v) or masked (scores).
    ADD_TMA: the raw RLA rows come through add_desc, a (parts * B * T, H * D) view with blocks (BM, D)
    (rows past the sequence are loaded but never stored). PREFETCH_ADD (with ADD_OUT): load those rows
    before the key loop instead of in the epilogue, so their HBM latency overlaps the loop; 1 holds
    them in fp32, 2 in the dtype of the added rows (fewer registers when they are 16-bit). DENSE: the
    sequences are the B rows of T tokens (no sequence-table loads). EVEN (DENSE, T a multiple of BM, BM and
    window multiples of BN): no query row and no key tile reaches past the sequence end (no bounds masks)."""
    if HEADS_FIRST:
        pid_m = tl.program_id(1)
        pid_nh = tl.program_id(0)
    else:
        pid_m = tl.program_id(0)
        pid_nh = tl.program_id(1)
    n = pid_nh // H
    h = pid_nh % H
    hk = h // (H // Hkv)
    s0 = pid_m * BM
    if DENSE:  # sequence n is batch row n, all T tokens: no table loads ahead of the first q load
        L = T
        start = 0
        tok0 = n.to(tl.int64) * T
    else:
        L = tl.load(seq_len_ptr + n)
        if s0 >= L:
            return
        start = tl.load(seq_start_ptr + n)
        tok0 = tl.load(seq_row_ptr + n).to(tl.int64) * T + start  # token index of position 0 of the sequence
    dt = k_ptr.dtype.element_ty  # dtype of the tensor-core operands

    offs_m = s0 + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BN)
    row_ok = offs_m < L
    q_rows = (tok0 + offs_m).to(tl.int64) * (H * D) + h * D
    if EVEN:
        q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :]).to(tl.float32)
    else:
        q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    kv_head = hk * D
    if ADD_OUT and PREFETCH_ADD > 0:
        r_pre = load_add_rows(add_ptr, add_desc, q_rows, row_ok, tok0, s0, h, part_stride, H, D, ADD_PARTS, ADD_TMA)
        if PREFETCH_ADD == 2:
            r_pre = r_pre.to(add_ptr.dtype.element_ty)  # the rows' own dtype (fp32 rows stay fp32: no overflow)
    lo = tl.maximum(s0 - window, 0)
    hi = tl.minimum(s0 + BM, L)
    edge_end = s0 + BM - 1 - window  # keys below this bound are outside some row's window
    ms = s0 // BS  # the state block of this query block
    if DO_RLA and not DO_SWA:
        lo = tl.maximum(ms * BS - window, 0)  # RLA alone: linear keys from the state boundary on
    n_tot = tl.cdiv(hi - lo, BN)
    n_a = tl.minimum(tl.cdiv(tl.maximum(edge_end - lo, 0), BN), n_tot)
    n_b = tl.minimum(tl.maximum((s0 - lo + 1) // BN, n_a), n_tot)

    if DO_RLA:
        pq, nq = feature_map_halves(q, FEATURE)
        pq = pq.to(dt)
        nq = nq.to(dt)
        acc_r = tl.zeros([BM, D], dtype=tl.float32)
        FD: tl.constexpr = D if FEATURE == 2 else 2 * D
        if ms * BS - window > 0:
            sidx = (tl.load(state_base_ptr + n) + ms).to(tl.int64) * Hkv + hk
            s_off = offs_d[:, None] * D + offs_d[None, :]
            st = states_ptr + sidx * (FD * D)
            if HAS_CARRY:
                # segment-relative state + the segment's carry (fp32), summed before the product
                cr = carry_ptr + ((n * Hkv + hk).to(tl.int64) * NSEG + ms // BPS) * (FD * D)
                acc_r += tl.dot(pq, (tl.load(st + s_off).to(tl.float32) + tl.load(cr + s_off).to(tl.float32)).to(dt),
                                input_precision=PRECISION)
                if FEATURE != 2:
                    s_n = tl.load(st + D * D + s_off).to(tl.float32) + tl.load(cr + D * D + s_off).to(tl.float32)
                    acc_r += tl.dot(nq, s_n.to(dt), input_precision=PRECISION)
            else:
                # bf16 inputs: the state is stored in bf16 and goes straight into the tensor-core product.
                acc_r += tl.dot(pq, tl.load(st + s_off).to(dt), input_precision=PRECISION)
                if FEATURE != 2:
                    acc_r += tl.dot(nq, tl.load(st + D * D + s_off).to(dt), input_precision=PRECISION)
        if RLA_SEPARATE:
            # Variant: the linear branch takes its own pass over the edge tiles (a second, cached
            # load), so its operands are dead before the softmax loop starts.
            for i in range(0, n_a):
                offs_j = lo + i * BN + offs_n
                col_ok = offs_j < L
                kv_off = ((tok0 + offs_j).to(tl.int64) * (Hkv * D) + kv_head)[:, None] + offs_d[None, :]
                v = tl.load(v_ptr + kv_off, mask=col_ok[:, None], other=0.0).to(dt)
                kraw = tl.load(k_ptr + kv_off, mask=col_ok[:, None], other=0.0).to(tl.float32)
                pk, nk = feature_map_halves(kraw, FEATURE)
                a = tl.dot(pq, tl.trans(pk.to(dt)), input_precision=PRECISION)
                if FEATURE != 2:
                    a += tl.dot(nq, tl.trans(nk.to(dt)), input_precision=PRECISION)
                a = tl.where(offs_m[:, None] - offs_j[None, :] > window, a, 0.0)
                acc_r += tl.dot(a.to(dt), v, input_precision=PRECISION)
        if DO_SWA and RLA_SEPARATE:
            gr = tl.load(gr_ptr + h * D + offs_d)
            inv_r = tl.rsqrt(tl.sum(acc_r * acc_r, axis=1) / D + eps)
            o_r = (acc_r * inv_r[:, None] * gr[None, :]).to(dt)

    if DO_SWA:
        if ROPE:
            rp = stride_rope_b * (tok0 // T) + (start + offs_m).to(tl.int64) * D
            qs = rope_rows(q, q_ptr, q_rows, cos_ptr, sin_ptr, rp, row_ok, D)
        else:
            qs = q
        if SCALE_SCORES:  # qk_scale = softmax scale * log2(e) multiplies the fp32 scores
            qs = qs.to(dt)
        else:  # a scale <= 0: folded into q, so the scores come out in base 2
            qs = (qs * qk_scale).to(dt)
        m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BM], dtype=tl.float32)
        acc = tl.zeros([BM, D], dtype=tl.float32)
        ks_ptr = kr_ptr if ROPE else k_ptr

    # Phase A, fused designs: the window-edge tiles feed both branches from one load of v (pointer loads:
    # the launcher takes TMA tiles only for the softmax branch alone). Otherwise these tiles join the
    # diagonal ones in the masked loop after the interior.
    if DO_RLA and not RLA_SEPARATE:
        for i in range(0, n_a):
            offs_j = lo + i * BN + offs_n
            col_ok = offs_j < L
            kv_off = ((tok0 + offs_j).to(tl.int64) * (Hkv * D) + kv_head)[:, None] + offs_d[None, :]
            v = tl.load(v_ptr + kv_off, mask=col_ok[:, None], other=0.0).to(dt)
            diff = offs_m[:, None] - offs_j[None, :]
            if PHI_K:
                ph_off = ((tok0 + offs_j).to(tl.int64) * (Hkv * FD) + hk * FD)[:, None] + offs_d[None, :]
                pk = tl.load(phi_ptr + ph_off, mask=col_ok[:, None], other=0.0)
                nk = tl.load(phi_ptr + ph_off + D, mask=col_ok[:, None], other=0.0) if FEATURE != 2 else pk
            else:
                kraw = tl.load(k_ptr + kv_off, mask=col_ok[:, None], other=0.0).to(tl.float32)
                pk, nk = feature_map_halves(kraw, FEATURE)
            a = tl.dot(pq, tl.trans(pk.to(dt)), input_precision=PRECISION)
            if FEATURE != 2:
                a += tl.dot(nq, tl.trans(nk.to(dt)), input_precision=PRECISION)
            a = tl.where(diff > window, a, 0.0)
            acc_r += tl.dot(a.to(dt), v, input_precision=PRECISION)
            if DO_SWA:
                k = tl.load(ks_ptr + kv_off, mask=col_ok[:, None], other=0.0).to(dt)
                sc = tl.dot(qs, tl.trans(k), input_precision=PRECISION)
                sc = tl.where((diff >= 0) & (diff <= window) & col_ok[None, :], sc, float("-inf"))
                m_i, l_i, acc = softmax_step(sc, v, m_i, l_i, acc, qk_scale, True, PRECISION, SCALE_SCORES)

    if DO_SWA and DO_RLA and EARLY_NORM and not RLA_SEPARATE:
        # The linear branch is complete after phase A: normalize it now and keep it in the input
        # dtype, so its fp32 accumulator is not live through phases B and C.
        gr = tl.load(gr_ptr + h * D + offs_d)
        inv_r = tl.rsqrt(tl.sum(acc_r * acc_r, axis=1) / D + eps)
        o_r = (acc_r * inv_r[:, None] * gr[None, :]).to(dt)

    if DO_SWA:
        # Phase B: the interior tiles, where every (row, key) pair is visible and in bounds (keys <= s0 < L).
        for i in range(n_a, n_b):
            m_i, l_i, acc = swa_tile(qs, ks_ptr, v_ptr, k_desc, v_desc, tok0, lo + i * BN, kv_head, offs_m, window, L,
                                     Hkv, m_i, l_i, acc, qk_scale, D, BN, False, TMA, PRECISION, EVEN, SCALE_SCORES)
        # Phase C: the masked tiles, the window edge (unless the fused phase A took it) and the diagonal, in one
        # loop (one software pipeline); the online softmax does not depend on the order of the tiles.
        if DO_RLA and not RLA_SEPARATE:
            n_edge = 0
        else:
            n_edge = n_a
        for i in range(0, n_edge + n_tot - n_b):
            j0 = lo + tl.where(i < n_edge, i, n_b + i - n_edge) * BN
            m_i, l_i, acc = swa_tile(qs, ks_ptr, v_ptr, k_desc, v_desc, tok0, j0, kv_head, offs_m, window, L, Hkv,
                                     m_i, l_i, acc, qk_scale, D, BN, True, TMA, PRECISION, EVEN, SCALE_SCORES)

        o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        if DO_RLA or ADD_OUT or NORM_OUT:  # NORM_OUT with the softmax branch alone: rms(o_swa) * g_swa
            gs = tl.load(gs_ptr + h * D + offs_d)
            inv_s = tl.rsqrt(tl.sum(o * o, axis=1) / D + eps)
            o = o * inv_s[:, None] * gs[None, :]
        if DO_RLA:
            if RLA_SEPARATE or EARLY_NORM:
                o += o_r.to(tl.float32)
            else:
                gr = tl.load(gr_ptr + h * D + offs_d)
                inv_r = tl.rsqrt(tl.sum(acc_r * acc_r, axis=1) / D + eps)
                o += acc_r * inv_r[:, None] * gr[None, :]
        if ADD_OUT:
            # two-kernel variants: the RLA pass left rms(o_rla) * g_rla (or, ADD_RAW, o_rla) in add_ptr
            if PREFETCH_ADD > 0:
                r = r_pre.to(tl.float32)
            else:
                r = load_add_rows(add_ptr, add_desc, q_rows, row_ok, tok0, s0, h, part_stride, H, D, ADD_PARTS,
                                  ADD_TMA)
            if ADD_RAW:
                gr = tl.load(gr_ptr + h * D + offs_d)
                r = r * tl.rsqrt(tl.sum(r * r, axis=1) / D + eps)[:, None] * gr[None, :]
            o += r
    elif NORM_OUT:
        gr = tl.load(gr_ptr + h * D + offs_d)
        o = acc_r * tl.rsqrt(tl.sum(acc_r * acc_r, axis=1) / D + eps)[:, None] * gr[None, :]
    else:
        o = acc_r
    if EVEN:
        tl.store(o_ptr + q_rows[:, None] + offs_d[None, :], o.to(o_ptr.dtype.element_ty))
    else:
        tl.store(o_ptr + q_rows[:, None] + offs_d[None, :], o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])


class SequenceTable:
    """The sequences of a dense, right-padded or packed batch, as int32 device tensors.

    row/start/length per sequence; block_base = index of the sequence's first BM-block in a
    flat per-block array. `max_len` and `num_blocks` are Python ints; `zero_fill` says whether
    some output rows belong to no sequence (padding) and must be zeroed.
    """

    def __init__(self, B, T, device, lengths, cu_seqlens, block):
        check_varlen(B, T, lengths, cu_seqlens)
        if cu_seqlens is not None:
            cu = [int(x) for x in cu_seqlens.tolist()]
            spans = [(0, a, b - a) for a, b in zip(cu, cu[1:]) if b > a]
            self.zero_fill = cu[-1] < T or len(spans) == 0
        elif lengths is not None:
            ls = [int(x) for x in lengths.tolist()]
            spans = [(b, 0, x) for b, x in enumerate(ls) if x > 0]
            self.zero_fill = any(x < T for x in ls)
        else:
            spans = [(b, 0, T) for b in range(B)] if T > 0 else []
            self.zero_fill = False
        # dense: sequence n is batch row n with all T tokens (kernels may skip the table loads)
        self.dense = lengths is None and cu_seqlens is None
        blocks = [cdiv(n, block) for _, _, n in spans]
        base = [sum(blocks[:i]) for i in range(len(blocks))]
        cols = [list(c) for c in zip(*spans)] if spans else [[], [], []]
        table = torch.tensor(cols + [base], dtype=torch.int32).reshape(4, len(spans)).to(device)  # one copy
        self.row, self.start, self.length, self.block_base = table[0], table[1], table[2], table[3]
        self.count = len(spans)
        self.max_len = max((n for _, _, n in spans), default=0)
        self.num_blocks = sum(blocks)
        self.block = block
        self._lengths = [n for _, _, n in spans]
        self._bases = {block: (self.block_base, self.num_blocks)}

    def blocks_of(self, block: int):
        """(base, total) for another block size: base (count,) int32 = index of each sequence's first
        block in a flat per-block array, total = number of blocks of all sequences (cached)."""
        if block not in self._bases:
            sizes = [cdiv(n, block) for n in self._lengths]
            base = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], dtype=torch.int32)
            self._bases[block] = (base.to(self.length.device), sum(sizes))
        return self._bases[block]


_DENSE_TABLES: dict = {}


def sequence_table(B, T, device, lengths, cu_seqlens, block) -> SequenceTable:
    """SequenceTable, cached for dense batches: building one copies to the device, which syncs the
    host with the GPU (and would expose every later launch's Python overhead)."""
    if lengths is not None or cu_seqlens is not None:
        return SequenceTable(B, T, device, lengths, cu_seqlens, block)
    key = (B, T, str(device), block)
    if key not in _DENSE_TABLES:
        if len(_DENSE_TABLES) >= 256:
            _DENSE_TABLES.clear()
        _DENSE_TABLES[key] = SequenceTable(B, T, device, None, None, block)
    return _DENSE_TABLES[key]


# RAttention / RLA launch settings for 16-bit inputs and D <= 128, edited by hand (tuned on an H200 at
# T = 32k, w = 512, Hkv 16 and 4; the alternatives measured are in rattention/README.md and swa/README.md):
# design (rattention/fused.py DESIGNS), cfg = RLA output-pass tiles (+ phi_k: read phi(k) from the pre-pass,
# heads_first: grid order), swa_cfg = the SWA pass of "two_kernel" and "segment", state = rla_prefix_states
# settings, plain_swa_cfg = swa_attention's tiles, segment = rla/segment.py's kernel (segment_config).
RLA_TUNING = {"design": "segment", "cfg": {"BM": 128, "BN": 64, "num_warps": 8, "num_stages": 2, "early_norm": True, "phi_k": True, "heads_first": True}, "swa_cfg": {"BM": 64, "BN": 64, "num_warps": 4, "num_stages": 3, "heads_first": True, "tma": True}, "state": {"state_block": 128, "carry": "fold", "block_t": 128, "block_v": None, "num_warps": 8, "num_stages": 3, "programs_per_sm": 4, "phi_pass": True, "carry_dtype": "state"}, "plain_swa_cfg": {"BM": 64, "BN": 64, "num_warps": 4, "num_stages": 3, "tma": True, "heads_first": True}, "segment": {"BC": 64, "BV": 64, "num_warps": 4, "num_stages": 3, "programs_per_sm": 8, "split_f": True, "phi_k": True, "phi_q": True, "scan_block": 128, "scan_bv": 64, "phi_rows": 16}}  # noqa: E501


def block_config(D: int, rla: bool, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Tile sizes and launch settings per head dim (tuned on an H200 for bf16)."""
    if INTERPRET:
        return dict(BM=32, BN=16, num_warps=4, num_stages=1, early_norm=RLA_TUNING["cfg"].get("early_norm", False))
    if dtype == torch.float32:  # fp32 tiles take twice the shared memory
        return dict(BM=64, BN=32, num_warps=4, num_stages=2) if D <= 128 else dict(BM=32, BN=32, num_warps=4, num_stages=1)
    if D <= 128:
        # plain SWA: 64x64 tiles, 3 stages, heads-first grid order (fastest on the H200, swa/README.md)
        return dict(RLA_TUNING["cfg"]) if rla else dict(RLA_TUNING.get("plain_swa_cfg") or dict(BM=64, BN=64, num_warps=4,
                                                                                                num_stages=3))
    return dict(BM=64, BN=32, num_warps=8, num_stages=2)


def check_head_dim(D: int, rla: bool) -> None:
    top = 128 if rla else 256
    if D < 16 or D > top or D & (D - 1):
        what = "RLA / RAttention" if rla else "SWA"
        raise ValueError(f"the Triton {what} kernel supports power-of-two head dims 16..{top}, got {D}")


def precision_for(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (no TF32), so they match the references to ~1e-6.
    return "ieee" if dtype == torch.float32 else "tf32"


_DUMMIES: dict = {}


def _dummy(device):
    """A 1-element fp32 tensor for pointer arguments a launch does not read (cached: no fill per call)."""
    key = str(device)
    if key not in _DUMMIES:
        _DUMMIES[key] = torch.zeros(1, dtype=torch.float32, device=device)
    return _DUMMIES[key]


def rope_launch_args(rope, D, device):
    """(cos, sin, stride_rope_b) for a kernel launch: the tables (or dummies without rope) and the
    element stride between the batch rows of (B, T, D) tables (0 for shared (T, D) tables)."""
    if rope is None:
        return _dummy(device), _dummy(device), 0
    cos, sin = rope
    return cos, sin, cos.shape[1] * D if cos.dim() == 3 else 0


def tma_ok(*ts) -> bool:
    """Whether k / v tiles can come through TMA tensor descriptors: 16-byte aligned 16-bit tensors whose
    token rows fit int32 coordinates, on a GPU with TMA (sm_90+) or under the interpreter."""
    if TensorDescriptor is None:
        return False
    for t in ts:
        if t.dtype not in (torch.float16, torch.bfloat16) or t.data_ptr() % 16 or t.shape[0] * t.shape[1] >= 2**31:
            return False
    if INTERPRET:
        return True
    return ts[0].is_cuda and _has_tma(ts[0].device.index if ts[0].device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _has_tma(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def launch_swa_fwd(q, k, v, out, seqs: SequenceTable, *, window, scale, cfg, kr=None, rope=None, states=None,
                   swa_norm_weight=None, rla_norm_weight=None, eps=1e-6, do_swa=True, do_rla=False, feature=0,
                   rla_separate=False, norm_out=False, add_out=False, add_src=None, add_raw=False):
    """Launch `swa_fwd_kernel` over every (query block, sequence, head). Tensors contiguous;
    states: rla.chunk.ChunkStates (needed with do_rla). add_out: add add_src (default: out itself)
    to the SWA branch; add_raw: add_src holds the raw RLA output, normalized in the kernel, either
    (B, T, H, D) or two partials (2, B, T, H, D) that sum to it."""
    parts = 2 if add_src is not None and add_src.dim() == 5 else 1
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    if seqs.count == 0:
        return out
    if seqs.block != cfg["BM"]:
        raise ValueError(f"sequence table built for blocks of {seqs.block}, launch uses BM = {cfg['BM']}")
    dummy = _dummy(q.device)
    BS = states.block if states is not None else cfg["BM"]
    if do_rla and (BS % cfg["BM"] or (do_swa and BS != cfg["BM"])):
        raise ValueError(f"state block {BS} must be a multiple of BM = {cfg['BM']} (equal when fused with SWA)")
    carry = states.carry if states is not None else None
    prefetch = int(cfg.get("prefetch_add", 0)) if add_out else 0
    if prefetch not in (0, 1, 2):
        raise ValueError(f"prefetch_add must be 0, 1 or 2, got {cfg.get('prefetch_add')!r}")
    cos, sin, stride_rope_b = rope_launch_args(rope, D, q.device)
    heads_first = cfg.get("heads_first", False)
    grid = (cdiv(seqs.max_len, cfg["BM"]), seqs.count * H)
    if max(grid) > 65535:  # only the first grid dimension may exceed 65535: put the large one there
        if min(grid) > 65535:
            raise ValueError(f"{seqs.count} sequences x {H} heads and {grid[0]} query blocks per sequence are too many "
                             f"for one launch; split the batch")
        heads_first = grid[1] > 65535
    if heads_first:
        grid = grid[::-1]
    phi = states.phi if states is not None and do_rla and cfg.get("phi_k", False) else None
    ks = kr if kr is not None and rope is not None else k
    tma = bool(cfg.get("tma")) and not do_rla and tma_ok(ks, v)
    if tma:
        k_desc = TensorDescriptor.from_tensor(ks.view(B * T, Hkv * D), [cfg["BN"], D])
        v_desc = TensorDescriptor.from_tensor(v.view(B * T, Hkv * D), [cfg["BN"], D])
    else:
        k_desc = v_desc = dummy
    add_tma = (tma and add_raw and add_src is not None and add_src.data_ptr() % 16 == 0 and cfg.get("add_tma", True)
               and add_src.numel() // (H * D) < 2**31)  # int32 row coordinates over both partials
    add_desc = (TensorDescriptor.from_tensor(add_src.view(-1, H * D), [cfg["BM"], D]) if add_tma else dummy)
    dense = seqs.dense and cfg.get("dense", True)  # ("dense" / "even" False: the general path, for benchmarks)
    # even: the query blocks and the key tiles (which start at s0 - window, or 0) end exactly at block ends <= T
    even = (dense and T % cfg["BM"] == 0 and cfg["BM"] % cfg["BN"] == 0 and window % cfg["BN"] == 0
            and cfg.get("even", True))
    # the scale multiplies the fp32 scores (as FlashAttention does) unless it is <= 0, where the max of the
    # raw products is not the max of the scaled ones; "scale_scores" False folds it into q (benchmarks)
    scale_scores = float(scale) > 0 and cfg.get("scale_scores", True)
    swa_fwd_kernel[grid](
        q, k, kr if kr is not None else k, v, out,
        cos, sin, states.states if states is not None else dummy, carry if carry is not None else dummy,
        phi if phi is not None else dummy,
        swa_norm_weight if swa_norm_weight is not None else dummy,
        rla_norm_weight if rla_norm_weight is not None else dummy,
        add_src if add_src is not None else out, k_desc, v_desc, add_desc,
        seqs.row, seqs.start, seqs.length, states.base if states is not None else seqs.block_base,
        T, H, Hkv, window, stride_rope_b, float(scale) * LOG2E, float(eps),
        states.per_segment if states is not None else 1, carry.shape[2] if carry is not None else 1,
        add_src[0].numel() if parts == 2 else 0,
        D=D, BM=cfg["BM"], BN=cfg["BN"], BS=BS, DO_SWA=do_swa, DO_RLA=do_rla, ROPE=rope is not None,
        FEATURE=feature, PRECISION=precision_for(q.dtype), RLA_SEPARATE=rla_separate, NORM_OUT=norm_out,
        ADD_OUT=add_out, EARLY_NORM=cfg.get("early_norm", False), HAS_CARRY=carry is not None,
        PHI_K=phi is not None, HEADS_FIRST=heads_first, ADD_RAW=add_raw, ADD_PARTS=parts, TMA=tma, ADD_TMA=add_tma,
        PREFETCH_ADD=prefetch, DENSE=dense, EVEN=even, SCALE_SCORES=scale_scores,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    launch_counts["swa_fwd_kernel"] += 1
    launch_counts["swa_fwd_kernel_tma"] += tma
    launch_counts["swa_fwd_kernel_rope"] += rope is not None
    launch_counts["swa_fwd_kernel_prefetch"] += prefetch > 0
    launch_counts["swa_fwd_kernel_dense"] += dense
    launch_counts["swa_fwd_kernel_even"] += even
    return out


def swa_attention_triton(q, k, v, *, window, scale=None, lengths=None, cu_seqlens=None):
    """Sliding-window softmax attention, Triton: query t sees keys t-window..t of its sequence.

    Args:
        q: (B, T, H, D), already rotated; k, v: (B, T, Hkv, D); fp16, bf16 or fp32; D a power of two 16..256.
        window: previous tokens visible besides the token itself; None = full causal.
        scale: softmax scale, default D ** -0.5.
        lengths: (B,) valid tokens per row of a right-padded batch; cu_seqlens: (N+1,) packed offsets, B == 1.
    Returns:
        (B, T, H, D) in q.dtype; zero at padded positions.
    """
    B, T, H, Hkv, D = check_qkv(q, k, v)
    check_window(window)
    check_head_dim(D, rla=False)
    cfg = block_config(D, rla=False, dtype=q.dtype)
    q, k, v = q.contiguous(), k.contiguous(), v.to(q.dtype).contiguous()
    k = k.to(q.dtype)
    seqs = sequence_table(B, T, q.device, lengths, cu_seqlens, cfg["BM"])
    out = torch.zeros_like(q) if seqs.zero_fill else torch.empty_like(q)
    w = seqs.max_len if window is None else min(window, seqs.max_len)
    return launch_swa_fwd(q, k, v, out, seqs, window=w, scale=default_scale(D, scale), cfg=cfg)
