"""Gradients of residual linear attention in Triton, and the autograd Function that uses them.

Forward: o_t = a_t H_{t-w-1}, H_u = sum_{j<=u} b_j^T v_j (F x D), with a = phi(q), b = phi(k) (F features).
Cut time into chunks of BC rows; query chunk i = [t0, t0 + BC) (t0 = i BC) meets key chunk
[t0 - w, t0 - w + BC), where query row c sees key row c' when c > c'. With

    H_i  = sum of b_j^T v_j  over the keys before key chunk i           (F x D, a scan forward in time)
    dH_i = sum of a_t^T do_t over the queries after query chunk i       (F x D, a scan backward in time,
                                                                         summed over the query heads of a KV head)
the gradients of chunk i are independent of every other chunk:

    da = do H_i^T + tril(do v^T, -1) b          (query rows of chunk i)
    dv = b dH_i   + tril(a b^T, -1)^T do        (key rows of key chunk i, summed over the group's heads)
    db = v dH_i^T + tril(do v^T, -1)^T a

So the backward runs two scans that store the state at every chunk, then three fully parallel kernels:

    rla_bwd_phi_kernel     phi(q), phi(k) once (bf16 for bf16 inputs, else fp32: the products' operand type)
    rla_bwd_state_kernel   H_i (forward) or dH_i (backward) for every chunk, the state (D features of one
                           half x BV value columns, fp32) on chip; cut into segments that run in parallel:
                           with TOTAL it sums its segment only, and a cumulative sum over segments (PyTorch,
                           fp32) gives each segment's starting state (an exclusive prefix for H, suffix for dH)
    rla_bwd_dq_kernel      one program per (chunk, query head): da, then through phi to dq
    rla_bwd_dv_kernel      one program per (key chunk, KV head): dv, looping over the group's query heads
    rla_bwd_dk_kernel      one program per (key chunk, KV head): db for both feature halves, then through phi to dk

Through phi (fp32, phi recomputed from the raw rows): softmax halves y = softmax(+-x) give
dx = +-y (dy - <dy, y>), relu halves mask, identity passes through. Gradients from elsewhere (RAttention's
SWA branch) can be added by the kernels that write dq, dk, dv, taken back through RoPE for dq and dk.

Memory: phi(q), phi(k), one chunk-state tensor at a time (H, then dH: sequences x Hkv x chunks x F x D
in the products' operand type) and the fp32 segment totals of its scan; nothing of size T x T.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common import feature_dim
from ..triton_common import (FEATURES, block_program, cdiv, dummy, feature_map_half, feature_map_halves, num_sms,
                             precision_for, rope_launch_args, segment_carry, segment_program, sequence_table, tuning_row)
from .chunk import check_rla_args, residual_linear_attention_triton

launch_counts: dict[str, int] = {"rla_bwd_state_kernel": 0, "rla_bwd_dq_kernel": 0, "rla_bwd_dv_kernel": 0,
                                 "rla_bwd_dk_kernel": 0, "segment_totals": 0}


@triton.jit
def rla_bwd_phi_kernel(x_ptr, phi_ptr, lim_ptr, T, HEADS, NROWS, D: tl.constexpr, NF: tl.constexpr,
                       BR: tl.constexpr, FEATURE: tl.constexpr):
    """Grid (NROWS / BR,) over the rows of x (B, T, HEADS, D): phi into phi (B, T, HEADS, NF * D), in phi's
    dtype. Row (b, t) is read when t < lim[b]; other rows get phi(0) (never read by the consumers)."""
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    ok = r < NROWS
    valid = ok & ((r // HEADS) % T < tl.load(lim_ptr + r // (T * HEADS), mask=ok, other=0))
    offs_d = tl.arange(0, D)
    x = tl.load(x_ptr + r[:, None] * D + offs_d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
    pos, neg = feature_map_halves(x, FEATURE)
    dst = phi_ptr + r[:, None] * (NF * D) + offs_d[None, :]
    tl.store(dst, pos.to(phi_ptr.dtype.element_ty), mask=ok[:, None])
    if NF == 2:
        tl.store(dst + D, neg.to(phi_ptr.dtype.element_ty), mask=ok[:, None])


@triton.jit
def phi_grad_half(dy, x, HALF: tl.constexpr, FEATURE: tl.constexpr):
    """The part of dx (R, D) that feature half HALF contributes, from its gradient dy (R, D) and the fp32
    rows x: softmax +-y (dy - <dy, y>) with y = phi_HALF(x) recomputed here (so no feature tile stays live
    before it is needed), relu the masked dy, identity dy."""
    if FEATURE == 0:
        y = feature_map_half(x, HALF, FEATURE)
        g = y * (dy - tl.sum(dy * y, axis=1)[:, None])
        if HALF == 1:
            g = -g
    elif FEATURE == 1:
        if HALF == 0:
            g = tl.where(x > 0, dy, 0.0)
        else:
            g = -tl.where(x < 0, dy, 0.0)
    else:
        g = dy
    return g


@triton.jit
def chunk_state(states_ptr, n, hk, Hkv, NCH, chunk, FD: tl.constexpr, D: tl.constexpr):
    """Address of the (FD, D) state of `chunk` for sequence n and KV head hk in states (sequences, Hkv,
    NCH, FD, D)."""
    return states_ptr + ((n * Hkv + hk).to(tl.int64) * NCH + chunk) * (FD * D)


@triton.jit
def rla_bwd_state_kernel(
    x_ptr, y_ptr, states_ptr, carry_ptr, seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, HEADS, Hkv, shift, NSEG, SEGLEN, NCH,
    D: tl.constexpr, NF: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr, CT: tl.constexpr,
    PRECISION: tl.constexpr, REVERSE: tl.constexpr, HAS_CARRY: tl.constexpr, TOTAL: tl.constexpr,
):
    """1-D grid over (sequences, Hkv, segments, NF feature halves, D / BV value slices), the last fastest.
    The state s = sum of x_r^T y_r (D features of half f x BV columns of slice iv, fp32) over the rows r
    of the chunks before (REVERSE: after) each chunk of the segment:
    forward (H): x = phi(k), y = v (HEADS = Hkv), the key rows t - shift of query chunk [t0, t0 + BC);
    REVERSE (dH): x = phi(q), y = do (HEADS = H), the query rows of the chunk, summed over the query
    heads of KV head hk.
    Each chunk: stores s into states (sequences, Hkv, NCH, NF * D, D) at chunk t0 / BC, then adds the
    chunk. carry (sequences, Hkv, NSEG, NF * D, D) fp32: the state over the segments before (REVERSE:
    after) this one (HAS_CARRY). TOTAL: no states; store the segment's own sum into carry instead.
    x (B, T, HEADS, NF * D), y (B, T, HEADS, D), contiguous; products in CT."""
    NV: tl.constexpr = D // BV
    FD: tl.constexpr = NF * D
    iv, f, seg, n, hk, L, t_first, t_end, tok0 = segment_program(
        tl.program_id(0), Hkv, NSEG, SEGLEN, T, seq_len_ptr, seq_row_ptr, seq_start_ptr, NF, NV)
    G = HEADS // Hkv
    if t_first >= L:
        return
    nchunks = tl.cdiv(t_end - t_first, BC)

    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    offs_v = iv * BV + tl.arange(0, BV)
    s_off = (f * D + offs_d)[:, None] * D + offs_v[None, :]
    cr = segment_carry(carry_ptr, n, hk, seg, Hkv, NSEG, FD * D)
    if HAS_CARRY:
        s = tl.load(cr + s_off)
    else:
        s = tl.zeros([D, BV], dtype=tl.float32)
    for i in range(nchunks):
        if REVERSE:
            t0 = t_first + (nchunks - 1 - i) * BC
        else:
            t0 = t_first + i * BC
        rows = t0 + offs_c - shift
        ok = (rows >= 0) & (rows < L)
        tok = (tok0 + rows).to(tl.int64)
        if not TOTAL:
            st = chunk_state(states_ptr, n, hk, Hkv, NCH, t0 // BC, FD, D)
            tl.store(st + s_off, s.to(states_ptr.dtype.element_ty))
        for g in range(G):
            h = hk * G + g
            x = tl.load(x_ptr + (tok * (HEADS * FD) + h * FD + f * D)[:, None] + offs_d[None, :], mask=ok[:, None],
                        other=0.0).to(CT)
            y = tl.load(y_ptr + (tok * (HEADS * D) + h * D)[:, None] + offs_v[None, :], mask=ok[:, None],
                        other=0.0).to(CT)
            s += tl.dot(tl.trans(x), y, input_precision=PRECISION)
    if TOTAL:
        tl.store(cr + s_off, s)


@triton.jit
def store_rows(g, out_ptr, add_ptr, rows, tok, ok, cos_ptr, sin_ptr, T, stride_rope_b, D: tl.constexpr,
               HAS_ADD: tl.constexpr, ROPE: tl.constexpr):
    """Store g (R, D) fp32 at out_ptr + rows (loaded and stored where ok) in out's dtype, plus (HAS_ADD) the
    rows of add at add_ptr + rows, taken back through RoPE first with ROPE: the gradient of rotated rows,
    the transpose of `rope_rows`, by column halves: out1 = y1 c1 + y2 s2, out2 = y2 c2 - y1 s1, with the
    table rows of the token rows tok (int64, of the flattened B * T rows)."""
    m = ok[:, None]
    if HAS_ADD and ROPE:
        # g by column halves, each stored on its own: no (R, D) addend tile is assembled
        g1, g2 = tl.split(tl.permute(tl.reshape(g, (g.shape[0], 2, D // 2)), (0, 2, 1)))
        lo = rows[:, None] + tl.arange(0, D // 2)[None, :]
        rp = (stride_rope_b * (tok // T) + (tok % T) * D)[:, None] + tl.arange(0, D // 2)[None, :]
        y1 = tl.load(add_ptr + lo, mask=m, other=0.0).to(tl.float32)
        y2 = tl.load(add_ptr + lo + D // 2, mask=m, other=0.0).to(tl.float32)
        c = tl.load(cos_ptr + rp, mask=m, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + rp + D // 2, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + lo, (g1 + y1 * c + y2 * s).to(out_ptr.dtype.element_ty), mask=m)
        c = tl.load(cos_ptr + rp + D // 2, mask=m, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + rp, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + lo + D // 2, (g2 + y2 * c - y1 * s).to(out_ptr.dtype.element_ty), mask=m)
    else:
        dst = rows[:, None] + tl.arange(0, D)[None, :]
        if HAS_ADD:
            g += tl.load(add_ptr + dst, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + dst, g.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def chunk_pair(c, n, T, window, seq_len_ptr, seq_row_ptr, seq_start_ptr, BC: tl.constexpr):
    """Chunk c of sequence n as (live, q_tok, t_ok, k_tok, j_ok): whether its first query row lies inside
    the sequence (length L), the token rows (int64, of the flattened B * T rows) of its queries
    [t0, t0 + BC) and of their key chunk [t0 - w, t0 - w + BC), and which of each lie in [0, L)."""
    L = tl.load(seq_len_ptr + n)
    t0 = c * BC
    tok0 = tl.load(seq_row_ptr + n).to(tl.int64) * T + tl.load(seq_start_ptr + n)
    offs_t = t0 + tl.arange(0, BC)
    offs_j = offs_t - window
    return t0 < L, tok0 + offs_t, offs_t < L, tok0 + offs_j, (offs_j >= 0) & (offs_j < L)


@triton.jit
def rla_bwd_dq_kernel(
    q_ptr, do_ptr, v_ptr, pk_ptr, states_ptr, dq_ptr, add_ptr, cos_ptr, sin_ptr, seq_row_ptr, seq_start_ptr,
    seq_len_ptr, T, H, Hkv, window, NCH, stride_rope_b,
    D: tl.constexpr, NF: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr, CT: tl.constexpr,
    PRECISION: tl.constexpr, FEATURE: tl.constexpr, HAS_ADD: tl.constexpr, ROPE: tl.constexpr,
):
    """2-D grid (sequences * H, NCH chunks): the heads of a chunk launch side by side. Query chunk
    [t0, t0 + BC) of one head:
    da = do H_i^T + tril(do v^T, -1) b per feature half (the state product BV value columns at a time),
    taken through phi into dq (B, T, H, D), written at the chunk's rows < L.
    q, do (B, T, H, D); v (B, T, Hkv, D); phi(k) (B, T, Hkv, NF * D); states (sequences, Hkv, NCH,
    NF * D, D), H_i of every chunk (rla_bwd_state_kernel); contiguous; products in CT. HAS_ADD: dq gets
    the rows of add (B, T, H, D) added, through RoPE first with ROPE (`store_rows`)."""
    FD: tl.constexpr = NF * D
    c, n, head, hk = block_program(H, Hkv, True)
    live, q_tok, t_ok, k_tok, j_ok = chunk_pair(c, n, T, window, seq_len_ptr, seq_row_ptr, seq_start_ptr, BC)
    if not live:
        return

    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    offs_bv = tl.arange(0, BV)
    q_rows = q_tok * (H * D) + head * D
    do = tl.load(do_ptr + q_rows[:, None] + offs_d[None, :], mask=t_ok[:, None], other=0.0).to(CT)
    v = tl.load(v_ptr + (k_tok * (Hkv * D) + hk * D)[:, None] + offs_d[None, :], mask=j_ok[:, None],
                other=0.0).to(CT)
    p = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    p = tl.where(offs_c[:, None] > offs_c[None, :], p, 0.0).to(CT)  # query row c sees key row c' < c
    st = chunk_state(states_ptr, n, hk, Hkv, NCH, c, FD, D)
    dq = tl.zeros([BC, D], dtype=tl.float32)
    for half in tl.static_range(NF):
        b = tl.load(pk_ptr + (k_tok * (Hkv * FD) + hk * FD + half * D)[:, None] + offs_d[None, :],
                    mask=j_ok[:, None], other=0.0).to(CT)
        da = tl.dot(p, b, input_precision=PRECISION)
        for v0 in tl.static_range(0, D, BV):
            do_s = tl.load(do_ptr + q_rows[:, None] + (v0 + offs_bv)[None, :], mask=t_ok[:, None], other=0.0).to(CT)
            # H^T: (BV values, D features)
            ht = tl.load(st + (half * D + offs_d)[None, :] * D + (v0 + offs_bv)[:, None])
            da = tl.dot(do_s, ht.to(CT), da, input_precision=PRECISION)
        # q's rows again (an L2 hit) rather than a tile held live across the products
        x = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=t_ok[:, None], other=0.0).to(tl.float32)
        dq += phi_grad_half(da, x, half, FEATURE)
    store_rows(dq, dq_ptr, add_ptr, q_rows, q_tok, t_ok, cos_ptr, sin_ptr, T, stride_rope_b, D, HAS_ADD, ROPE)


@triton.jit
def rla_bwd_dv_kernel(
    do_ptr, pq_ptr, pk_ptr, states_ptr, dv_ptr, add_ptr, seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, H, Hkv, window, NCH,
    D: tl.constexpr, NF: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr, CT: tl.constexpr,
    PRECISION: tl.constexpr, HAS_ADD: tl.constexpr,
):
    """2-D grid (sequences * Hkv, key chunks up to the last key). Key chunk [t0 - w, t0 - w + BC) of one KV
    head: dv = sum over the group's query heads of tril(a b^T, -1)^T do, plus b dH_i (BV features at a time;
    none when t0 >= L, where no query is left and dH_i = 0), plus the rows of add (B, T, Hkv, D; HAS_ADD),
    written at the key rows in [0, L).
    do (B, T, H, D); phi(q) (B, T, H, NF * D); phi(k) (B, T, Hkv, NF * D); states (sequences, Hkv, NCH,
    NF * D, D), dH_i of every chunk; contiguous; products in CT."""
    FD: tl.constexpr = NF * D
    c, n, hk, _ = block_program(Hkv, Hkv, True)
    G = H // Hkv
    has_state, q_tok, t_ok, k_tok, j_ok = chunk_pair(c, n, T, window, seq_len_ptr, seq_row_ptr, seq_start_ptr, BC)
    if c * BC - window >= tl.load(seq_len_ptr + n):  # the key chunk starts past the sequence
        return

    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    offs_bv = tl.arange(0, BV)
    k_rows = k_tok * (Hkv * FD) + hk * FD
    after = offs_c[None, :] > offs_c[:, None]  # key row c' (rows) is seen by query row c (columns)
    b_p = tl.load(pk_ptr + k_rows[:, None] + offs_d[None, :], mask=j_ok[:, None], other=0.0).to(CT)
    if NF == 2:
        b_n = tl.load(pk_ptr + k_rows[:, None] + (D + offs_d)[None, :], mask=j_ok[:, None], other=0.0).to(CT)
    else:
        b_n = b_p  # unused
    dv = tl.zeros([BC, D], dtype=tl.float32)
    for g in range(G):
        h = hk * G + g
        a_rows = q_tok * (H * FD) + h * FD
        a_p = tl.load(pq_ptr + a_rows[:, None] + offs_d[None, :], mask=t_ok[:, None], other=0.0).to(CT)
        st = tl.dot(b_p, tl.trans(a_p), input_precision=PRECISION)
        if NF == 2:
            a_n = tl.load(pq_ptr + a_rows[:, None] + (D + offs_d)[None, :], mask=t_ok[:, None], other=0.0).to(CT)
            st = tl.dot(b_n, tl.trans(a_n), st, input_precision=PRECISION)
        st = tl.where(after, st, 0.0).to(CT)
        do = tl.load(do_ptr + (q_tok * (H * D) + h * D)[:, None] + offs_d[None, :], mask=t_ok[:, None],
                     other=0.0).to(CT)
        dv = tl.dot(st, do, dv, input_precision=PRECISION)
    sh = chunk_state(states_ptr, n, hk, Hkv, NCH, c, FD, D)
    for f0 in tl.static_range(0, FD, BV):
        b_s = tl.load(pk_ptr + k_rows[:, None] + (f0 + offs_bv)[None, :], mask=j_ok[:, None], other=0.0).to(CT)
        dh = tl.load(sh + (f0 + offs_bv)[:, None] * D + offs_d[None, :], mask=has_state, other=0.0)  # (BV, D)
        dv = tl.dot(b_s, dh.to(CT), dv, input_precision=PRECISION)
    v_rows = k_tok * (Hkv * D) + hk * D
    store_rows(dv, dv_ptr, add_ptr, v_rows, k_tok, j_ok, add_ptr, add_ptr, T, 0, D, HAS_ADD, False)


@triton.jit
def rla_bwd_dk_kernel(
    k_ptr, do_ptr, v_ptr, pq_ptr, states_ptr, dk_ptr, add_ptr, cos_ptr, sin_ptr, seq_row_ptr, seq_start_ptr,
    seq_len_ptr, T, H, Hkv, window, NCH, stride_rope_b,
    D: tl.constexpr, NF: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr, CT: tl.constexpr,
    PRECISION: tl.constexpr, FEATURE: tl.constexpr, HAS_ADD: tl.constexpr, ROPE: tl.constexpr,
):
    """2-D grid as rla_bwd_dv_kernel. Key chunk [t0 - w, t0 - w + BC) of one KV head, per feature half:
    db = sum over the group's query heads of tril(do v^T, -1)^T a, plus v dH_i^T (BV value columns at a
    time); taken through phi into dk (B, T, Hkv, D), plus the rows of add (HAS_ADD, through RoPE first with
    ROPE, as in rla_bwd_dq_kernel), written at the key rows in [0, L).
    k, v (B, T, Hkv, D); do (B, T, H, D); phi(q) (B, T, H, NF * D); states as in rla_bwd_dv_kernel;
    contiguous; products in CT."""
    FD: tl.constexpr = NF * D
    c, n, hk, _ = block_program(Hkv, Hkv, True)
    G = H // Hkv
    has_state, q_tok, t_ok, k_tok, j_ok = chunk_pair(c, n, T, window, seq_len_ptr, seq_row_ptr, seq_start_ptr, BC)
    if c * BC - window >= tl.load(seq_len_ptr + n):  # the key chunk starts past the sequence
        return

    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    offs_bv = tl.arange(0, BV)
    k_rows = k_tok * (Hkv * D) + hk * D
    after = offs_c[None, :] > offs_c[:, None]  # key row c' (rows) is seen by query row c (columns)
    v = tl.load(v_ptr + k_rows[:, None] + offs_d[None, :], mask=j_ok[:, None], other=0.0).to(CT)
    db_p = tl.zeros([BC, D], dtype=tl.float32)
    db_n = tl.zeros([BC, D], dtype=tl.float32)
    for g in range(G):
        h = hk * G + g
        do = tl.load(do_ptr + (q_tok * (H * D) + h * D)[:, None] + offs_d[None, :], mask=t_ok[:, None],
                     other=0.0).to(CT)
        pt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        pt = tl.where(after, pt, 0.0).to(CT)
        a_rows = q_tok * (H * FD) + h * FD
        a_p = tl.load(pq_ptr + a_rows[:, None] + offs_d[None, :], mask=t_ok[:, None], other=0.0).to(CT)
        db_p = tl.dot(pt, a_p, db_p, input_precision=PRECISION)
        if NF == 2:
            a_n = tl.load(pq_ptr + a_rows[:, None] + (D + offs_d)[None, :], mask=t_ok[:, None], other=0.0).to(CT)
            db_n = tl.dot(pt, a_n, db_n, input_precision=PRECISION)
    sh = chunk_state(states_ptr, n, hk, Hkv, NCH, c, FD, D)
    for v0 in tl.static_range(0, D, BV):
        v_s = tl.load(v_ptr + k_rows[:, None] + (v0 + offs_bv)[None, :], mask=j_ok[:, None], other=0.0).to(CT)
        dht = tl.load(sh + offs_d[None, :] * D + (v0 + offs_bv)[:, None], mask=has_state, other=0.0)  # dH^T, half 0
        db_p = tl.dot(v_s, dht.to(CT), db_p, input_precision=PRECISION)
        if NF == 2:
            dht = tl.load(sh + (D + offs_d)[None, :] * D + (v0 + offs_bv)[:, None], mask=has_state, other=0.0)
            db_n = tl.dot(v_s, dht.to(CT), db_n, input_precision=PRECISION)
    x = tl.load(k_ptr + k_rows[:, None] + offs_d[None, :], mask=j_ok[:, None], other=0.0).to(tl.float32)
    dk = phi_grad_half(db_p, x, 0, FEATURE)
    if NF == 2:
        dk += phi_grad_half(db_n, x, 1, FEATURE)
    store_rows(dk, dk_ptr, add_ptr, k_rows, k_tok, j_ok, cos_ptr, sin_ptr, T, stride_rope_b, D, HAS_ADD, ROPE)


# Launch settings, edited by hand (row picked by `backward_tiles`): chunk rows BC (the state is stored at every
# chunk), the slice BV of the state products (value columns per scan program, and the reduction slice of the
# state products in the parallel kernels), warps of the scans and of the parallel kernels, rows per program
# of the phi pass, and either chunks per scan segment (seg_chunks) or the scan programs per SM the segment
# count aims at. The 16-bit row's 4 warps come from `rattn-eval bench tune --what rla-backward` on an H100
# (results/bench/h100_rla_tune.txt: 2.21 ms against 2.43 ms with 8 warps at T 32k, Hkv 4), and it passed the
# GPU gradient tests (results/bench/h100_gpu_gradients_4warps.txt); the other GPU rows are first guesses.
# The D 256 rows halve BC, BV and phi_rows, so that tiles of rows x D and the fp32 scan state (D x BV) hold as
# many elements as at D = 128 (the stored chunk states then take 8x the memory of D 128: F x D per BC rows).
# The interpreter row: few, large tiles cost it least, and two-chunk segments make short test sequences
# run the carry path.
RLA_BWD_TILES = MappingProxyType({
    "interpreter": MappingProxyType(dict(BC=32, BV=128, num_warps=4, scan_warps=4, num_stages=1, seg_chunks=2,
                                         phi_rows=256)),
    "fp32": MappingProxyType(dict(BC=32, BV=32, num_warps=8, scan_warps=4, num_stages=2, programs_per_sm=4,
                                  phi_rows=16)),
    "fp32, D 256": MappingProxyType(dict(BC=16, BV=16, num_warps=8, scan_warps=4, num_stages=2, programs_per_sm=4,
                                         phi_rows=8)),
    "16-bit": MappingProxyType(dict(BC=64, BV=64, num_warps=4, scan_warps=4, num_stages=2, programs_per_sm=4,
                                    phi_rows=16)),
    "16-bit, D 256": MappingProxyType(dict(BC=32, BV=32, num_warps=8, scan_warps=4, num_stages=2,
                                           programs_per_sm=4, phi_rows=8)),
})


def operand_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type of the backward's product operands, phi and chunk states for inputs of `dtype`: bf16 for bf16,
    fp32 otherwise. fp16 takes fp32: do . v and the states are not bounded by 65504, and fp16's subnormals
    would lose the small softmax features, whose errors the softmax Jacobian amplifies where dy - <dy, y>
    cancels (bf16 has fp32's range)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def backward_tiles(dtype: torch.dtype, D: int) -> dict:
    """The `RLA_BWD_TILES` row for inputs of this dtype and head dim: the row of their operand type
    (`operand_dtype`), whose size sets the tiles' shared memory (rla/README.md, Backward)."""
    return tuning_row(RLA_BWD_TILES, operand_dtype(dtype), D)


def _segment_length(cfg: dict, max_len: int, programs_per_segment: int, device) -> int:
    """Rows per scan segment, a multiple of BC: cfg["seg_chunks"] chunks, or enough segments that the
    scan grid has about programs_per_sm programs per SM."""
    BC = cfg["BC"]
    if cfg.get("seg_chunks"):
        return cfg["seg_chunks"] * BC
    want = max(1, cdiv(cfg["programs_per_sm"] * num_sms(device), max(1, programs_per_segment)))
    return max(2 * BC, cdiv(cdiv(max_len, want), BC) * BC)


def _phi(x: torch.Tensor, lim: torch.Tensor, feature: int, nf: int, br: int, dtype: torch.dtype) -> torch.Tensor:
    """phi(x) (B, T, heads, nf * D) in `dtype`, `br` rows per program, phi(0) at rows t >= lim[b];
    x contiguous."""
    B, T, heads, D = x.shape
    out = torch.empty(B, T, heads, nf * D, dtype=dtype, device=x.device)
    rows = x.numel() // D
    rla_bwd_phi_kernel[(cdiv(rows, br),)](x, out, lim, T, heads, rows, D=D, NF=nf, BR=br, FEATURE=feature,
                                          num_warps=4)
    return out


def _exclusive_cumsum(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """sum over the entries before (reverse: after) each index along dim, fp32."""
    if reverse:
        return _exclusive_cumsum(x.flip(dim), dim, False).flip(dim)
    c = x.cumsum(dim)
    return torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c.narrow(dim, 0, c.shape[dim] - 1)], dim=dim)


def _chunk_states(x, y, seqs, Hkv, shift, nseg, seg_len, nchunks, *, reverse, dtype, scan_warps, meta):
    """H (x = phi(k), y = v, shift = w) or, reverse, dH (x = phi(q), y = do, shift = 0) at every chunk:
    (sequences, Hkv, nchunks, NF * D, D) in `dtype`, from the two-level scan of `rla_bwd_state_kernel`."""
    D, NF, BV = meta["D"], meta["NF"], meta["BV"]
    T = x.shape[1]
    heads = x.shape[2]
    grid = (seqs.count * Hkv * nseg * NF * (D // BV),)
    table = (seqs.row, seqs.start, seqs.length)
    states = torch.empty(seqs.count, Hkv, nchunks, NF * D, D, dtype=dtype, device=x.device)
    none = dummy(x.device)
    carry = none
    if nseg > 1:
        # zeros: segments past a sequence's end add nothing
        totals = torch.zeros(seqs.count, Hkv, nseg, NF * D, D, dtype=torch.float32, device=x.device)
        rla_bwd_state_kernel[grid](x, y, none, totals, *table, T, heads, Hkv, shift, nseg, seg_len, nchunks,
                                   REVERSE=reverse, HAS_CARRY=False, TOTAL=True, num_warps=scan_warps, **meta)
        launch_counts["segment_totals"] += 1
        carry = _exclusive_cumsum(totals, 2, reverse=reverse).contiguous()
    rla_bwd_state_kernel[grid](x, y, states, carry, *table, T, heads, Hkv, shift, nseg, seg_len, nchunks,
                               REVERSE=reverse, HAS_CARRY=nseg > 1, TOTAL=False, num_warps=scan_warps, **meta)
    launch_counts["rla_bwd_state_kernel"] += 1
    return states


def residual_linear_attention_backward(q, k, v, do, *, window, feature_map="softmax", lengths=None, cu_seqlens=None,
                                       needs=(True, True, True), cfg: dict | None = None, add=(None, None, None),
                                       rope=None, seqs=None):
    """Gradients of `residual_linear_attention_triton` with respect to q, k, v.

    Args:
        q: (B, T, H, D); k, v: (B, T, Hkv, D); do: (B, T, H, D), the gradient of the output; one dtype
            among fp32 / fp16 / bf16 (do is cast to it, unless it has the products' operand type,
            `operand_dtype`: fp32 for fp16 inputs), D a power of two 16..256.
        window, feature_map, lengths, cu_seqlens: as in the forward.
        needs: which of (dq, dk, dv) to compute; the others come back as None.
        cfg: launch settings overriding the `RLA_BWD_TILES` row: BC, BV, num_warps, scan_warps, num_stages,
            seg_chunks (chunks per scan segment) or programs_per_sm, phi_rows (rows per program of the
            phi pass).
        add: gradients of q, k, v from elsewhere (None, or contiguous and shaped as q, k, v, zero at padded
            positions), added by the kernels that write dq, dk, dv: RAttention passes its SWA branch's.
        rope: (cos, sin) tables as `rope_launch_args` takes them; with them, the dq and dk addends are
            gradients of the rotated q and k, taken back through RoPE before they are added.
        seqs: the SequenceTable of these lengths / cu_seqlens (built for any block size), when the caller
            holds one: for padded and packed batches, building one syncs the host with the GPU.
    Returns:
        (dq, dk, dv) in the inputs' dtype, exactly zero at padded positions; dk, dv summed over the
        query heads of each KV head.
    """
    B, T, H, Hkv, D = check_rla_args(q, k, v, window, feature_map)
    need_q, need_k, need_v = needs
    add_q, add_k, add_v = add
    dt = q.dtype
    feature = FEATURES[feature_map]
    nf = feature_dim(D, feature_map) // D
    cfg = dict(backward_tiles(dt, D), **(cfg or {}))
    BC, BV = cfg["BC"], min(cfg["BV"], D)
    if D % BV or BV < 16 or BC < 16 or BC & (BC - 1):
        raise ValueError(f"backward tiles BC = {BC}, BV = {BV} must be powers of two >= 16 with BV dividing D = {D}")
    if seqs is None:
        seqs = sequence_table(B, T, q.device, lengths, cu_seqlens, BC)
    if seqs.count == 0:
        return tuple(torch.zeros_like(x) if need else None for x, need in zip((q, k, v), needs))
    q, k, v = (x.to(dt).contiguous() for x in (q, k, v))
    # an fp32 do stays fp32 (fp16's products take fp32 operands anyway): RAttention passes its RLA branch's
    # gradient so for fp16, where the norm's 1 / rms (up to eps^-1/2) would overflow 65504 or the small
    # gradients of large raw outputs would fall to fp16's subnormals
    do = do.contiguous() if do.dtype == operand_dtype(dt) else do.to(dt).contiguous()
    # gradients are allocated after the inputs are made contiguous: the kernels write them in that layout,
    # at every row of every sequence; rows of no sequence stay zero
    alloc = torch.zeros_like if seqs.zero_fill else torch.empty_like
    dq, dk, dv = (alloc(x) if need else None for x, need in ((q, need_q), (k, need_k), (v, need_v)))
    w = min(window, seqs.max_len)
    nchunks = cdiv(seqs.max_len, BC)
    key_chunks = cdiv(seqs.max_len + w, BC)  # the dk / dv programs: key chunk c starts at c * BC - w
    if key_chunks > 65535:  # the chunks run on the second grid axis
        raise ValueError(f"the RLA backward takes at most 65535 chunks of BC = {BC} rows per sequence; "
                         f"a sequence of {seqs.max_len} tokens and a window of {w} need {key_chunks}")
    seg_len = _segment_length(cfg, seqs.max_len, seqs.count * Hkv * nf * (D // BV), q.device)
    nseg = cdiv(seqs.max_len, seg_len)
    pdt = operand_dtype(dt)  # phi, the chunk states and the products' operands (fp16: fp32, TF32 on a GPU)
    ct = tl.bfloat16 if pdt == torch.bfloat16 else tl.float32
    meta = dict(D=D, NF=nf, BC=BC, BV=BV, CT=ct, PRECISION=precision_for(dt), num_stages=cfg["num_stages"])
    scan = dict(seqs=seqs, Hkv=Hkv, nseg=nseg, seg_len=seg_len, nchunks=nchunks, dtype=pdt,
                scan_warps=cfg["scan_warps"], meta=meta)
    table = (seqs.row, seqs.start, seqs.length)
    if lengths is not None:
        lim = lengths.to(device=q.device, dtype=torch.int32).contiguous()  # the kernel reads lim[b] at offset b
    elif cu_seqlens is not None:
        lim = cu_seqlens[-1:].to(device=q.device, dtype=torch.int32).contiguous()
    else:
        lim = torch.full((B,), T, dtype=torch.int32, device=q.device)

    pk = _phi(k, lim, feature, nf, cfg["phi_rows"], pdt) if (need_q or need_v) else None
    pq = _phi(q, lim, feature, nf, cfg["phi_rows"], pdt) if (need_k or need_v) else None
    par = dict(num_warps=cfg["num_warps"], **meta)
    cos, sin, stride_rope_b = rope_launch_args(rope, D, q.device)
    if need_q:
        hs = _chunk_states(pk, v, shift=w, reverse=False, **scan)
        rla_bwd_dq_kernel[(seqs.count * H, nchunks)](q, do, v, pk, hs, dq, q if add_q is None else add_q, cos, sin,
                                                     *table, T, H, Hkv, w, nchunks, stride_rope_b, FEATURE=feature,
                                                     HAS_ADD=add_q is not None, ROPE=rope is not None, **par)
        launch_counts["rla_bwd_dq_kernel"] += 1
        del hs
    if need_k or need_v:
        dhs = _chunk_states(pq, do, shift=0, reverse=True, **scan)
        if need_v:
            rla_bwd_dv_kernel[(seqs.count * Hkv, key_chunks)](do, pq, pk, dhs, dv, v if add_v is None else add_v,
                                                              *table, T, H, Hkv, w, nchunks,
                                                              HAS_ADD=add_v is not None, **par)
            launch_counts["rla_bwd_dv_kernel"] += 1
        if need_k:
            rla_bwd_dk_kernel[(seqs.count * Hkv, key_chunks)](k, do, v, pq, dhs, dk, k if add_k is None else add_k, cos,
                                                              sin, *table, T, H, Hkv, w, nchunks, stride_rope_b,
                                                              FEATURE=feature, HAS_ADD=add_k is not None,
                                                              ROPE=rope is not None, **par)
            launch_counts["rla_bwd_dk_kernel"] += 1
    return dq, dk, dv


class ResidualLinearAttention(torch.autograd.Function):
    """RLA with Triton forward (`residual_linear_attention_triton`) and backward
    (`residual_linear_attention_backward`). Saves q, k, v; phi is recomputed in the backward. First
    derivatives only."""

    @staticmethod
    def forward(ctx, q, k, v, window, feature_map, lengths, cu_seqlens, out_dtype):
        ctx.save_for_backward(q, k, v)
        ctx.args = dict(window=window, feature_map=feature_map, lengths=lengths, cu_seqlens=cu_seqlens)
        return residual_linear_attention_triton(q, k, v, out_dtype=out_dtype, **ctx.args)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = residual_linear_attention_backward(q, k, v, do, needs=tuple(ctx.needs_input_grad[:3]),
                                                        **ctx.args)
        return dq, dk, dv, None, None, None, None, None


def residual_linear_attention_triton_autograd(q, k, v, *, window, feature_map="softmax", lengths=None,
                                              cu_seqlens=None, out_dtype=None):
    """`residual_linear_attention_triton` that autograd differentiates (gradients in Triton).

    Args/Returns as `residual_linear_attention_triton`: q (B, T, H, D), k, v (B, T, Hkv, D) raw;
    (B, T, H, D) in out_dtype (default q.dtype). Gradients come back in the inputs' dtypes, zero at padded
    positions.
    """
    return ResidualLinearAttention.apply(q, k, v, window, feature_map, lengths, cu_seqlens, out_dtype)
