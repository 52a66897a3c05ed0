"""Gradients of residual linear attention in Triton, and the autograd Function that uses them.

Forward: o_t = a_t S_{t-w-1}, S_t = sum_{j<=t} b_j^T v_j, with a = phi(q), b = phi(k) (F features).
With s = w + 1 the gradients are

    da_t = do_t Sd_{t-s},    Sd_u = sum_{j<=u} v_j^T b_j          (a scan forward in time)
    dv_j = b_j  dS_{j+s},    dS_u = sum_{t>=u} a_t^T do_t         (a scan backward in time)
    db_j = v_j  dS_{j+s}^T

each split, as in the forward (segment.py), into a state term and a masked term inside a chunk
pair: query chunk [t0, t0 + BC) meets key chunk [t0 - w, t0 - w + BC), where query row c and key
row c' interact when c > c'. Every pass here is "state product + masked chunk product + state
update" over one scan direction, with the state (D x BV, fp32) on chip:

    rla_bwd_dq_kernel   forward scan of Sd:  da = do @ Sd + tril(do v^T, -1) @ b
    rla_bwd_dv_kernel   backward scan of dS: dv = b @ dS + tril(a b^T, -1)^T @ do
    rla_bwd_dk_kernel   backward scan of dS: db = v @ dS^T + tril(do v^T, -1)^T @ a

A product over F = 2D features splits into one per feature half, so each program holds one half
(or, for dv, both halves of one value slice). The scans are cut into segments that run in
parallel: `rla_bwd_dq_kernel` / `rla_bwd_dv_kernel` with TOTAL sum their state over each segment,
and a cumulative sum over segments (PyTorch, fp32) gives the state each segment starts from (an
exclusive prefix for Sd, an exclusive suffix for dS). dS and the key-side gradients are per KV
head: the dv / dk programs loop over the query heads of their group. `rla_bwd_phi_kernel` writes phi(q)
and phi(k) first (bf16 for bf16 inputs, else fp32: the products' operand type) and
`rla_bwd_phi_grad_kernel` takes da, db back through phi: softmax halves y = softmax(+-x) give
dx = +-y (dy - <dy, y>), relu halves mask, identity passes through.

Memory: phi(q), phi(k), da (fp32, B x T x H x F), db (fp32, B x T x Hkv x F) and the segment
totals (sequences x Hkv x segments x F x D, fp32); nothing of size T x T.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common import feature_dim
from ..triton_common import (FEATURES, cdiv, dummy, feature_map_halves, num_sms, precision_for, segment_carry,
                             segment_program, sequence_table, tuning_row)
from .chunk import check_rla_args, residual_linear_attention_triton

launch_counts: dict[str, int] = {"rla_bwd_dq_kernel": 0, "rla_bwd_dv_kernel": 0, "rla_bwd_dk_kernel": 0,
                                 "segment_totals": 0}


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
def rla_bwd_phi_grad_kernel(x_ptr, dphi_ptr, dx_ptr, lim_ptr, T, HEADS, NROWS, D: tl.constexpr, NF: tl.constexpr,
                            BR: tl.constexpr, FEATURE: tl.constexpr):
    """Grid (NROWS / BR,) over the rows of x (B, T, HEADS, D): dx = dphi through phi, in dx's dtype.
    dphi (B, T, HEADS, NF * D) fp32. Row (b, t) counts when t < lim[b]; every other row gets 0."""
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    ok = r < NROWS
    b = r // (T * HEADS)
    t = (r // HEADS) % T
    valid = ok & (t < tl.load(lim_ptr + b, mask=ok, other=0))
    offs_d = tl.arange(0, D)
    x = tl.load(x_ptr + r[:, None] * D + offs_d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
    src = dphi_ptr + r[:, None] * (NF * D) + offs_d[None, :]
    dp = tl.load(src, mask=valid[:, None], other=0.0)
    if FEATURE == 0:
        pos, neg = feature_map_halves(x, FEATURE)
        dn = tl.load(src + D, mask=valid[:, None], other=0.0)
        dx = pos * (dp - tl.sum(dp * pos, axis=1)[:, None]) - neg * (dn - tl.sum(dn * neg, axis=1)[:, None])
    elif FEATURE == 1:
        dn = tl.load(src + D, mask=valid[:, None], other=0.0)
        dx = tl.where(x > 0, dp, 0.0) - tl.where(x < 0, dn, 0.0)
    else:
        dx = dp
    tl.store(dx_ptr + r[:, None] * D + offs_d[None, :], dx.to(dx_ptr.dtype.element_ty), mask=ok[:, None])


@triton.jit
def rla_bwd_dq_kernel(
    do_ptr, v_ptr, pk_ptr, da_ptr, carry_ptr, seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, H, Hkv, HEADS, window, NSEG, SEGLEN,
    D: tl.constexpr, NF: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr, CT: tl.constexpr,
    PRECISION: tl.constexpr, HAS_CARRY: tl.constexpr, TOTAL: tl.constexpr,
):
    """1-D grid over (sequences, HEADS, segments, NF feature halves, D / BV feature slices), the last
    fastest. The forward scan of Sd = sum_j v_j^T b_j (a D x BV slice of one feature half, fp32):
    da (B, T, H, F) fp32 gets do @ Sd + tril(do v^T, -1) @ b at every row of the segment.
    carry (sequences, Hkv, NSEG, NF, D, D) fp32: Sd over the keys before the segment (HAS_CARRY).
    TOTAL (HEADS = Hkv): no output; store Sd summed over the segment's keys into carry instead.
    do (B, T, H, D), v (B, T, Hkv, D), phi(k) (B, T, Hkv, F), contiguous; products in CT."""
    NV: tl.constexpr = D // BV
    FD: tl.constexpr = NF * D
    iv, f, seg, n, head, L, t_first, t_end, tok0 = segment_program(
        tl.program_id(0), HEADS, NSEG, SEGLEN, T, seq_len_ptr, seq_row_ptr, seq_start_ptr, NF, NV)
    hk = head // (HEADS // Hkv)
    if t_first >= L:
        return

    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    offs_f = iv * BV + tl.arange(0, BV)
    below = offs_c[:, None] > offs_c[None, :]  # query row c meets key row c'
    s_off = (f * D + offs_d)[:, None] * D + offs_f[None, :]
    cr = segment_carry(carry_ptr, n, hk, seg, Hkv, NSEG, FD * D)
    if HAS_CARRY:
        s = tl.load(cr + s_off)
    else:
        s = tl.zeros([D, BV], dtype=tl.float32)
    for t0 in range(t_first, t_end, BC):
        offs_t = t0 + offs_c
        t_ok = offs_t < L
        offs_j = offs_t - window
        j_ok = (offs_j >= 0) & (offs_j < L)
        k_tok = (tok0 + offs_j).to(tl.int64)
        v = tl.load(v_ptr + (k_tok * (Hkv * D) + hk * D)[:, None] + offs_d[None, :], mask=j_ok[:, None],
                    other=0.0).to(CT)
        b = tl.load(pk_ptr + (k_tok * (Hkv * FD) + hk * FD + f * D)[:, None] + offs_f[None, :],
                    mask=j_ok[:, None], other=0.0).to(CT)
        if not TOTAL:
            q_tok = (tok0 + offs_t).to(tl.int64)
            do = tl.load(do_ptr + (q_tok * (H * D) + head * D)[:, None] + offs_d[None, :], mask=t_ok[:, None],
                         other=0.0).to(CT)
            da = tl.dot(do, s.to(CT), input_precision=PRECISION)
            p = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            p = tl.where(below, p, 0.0)
            da += tl.dot(p.to(CT), b, input_precision=PRECISION)
            dst = da_ptr + (q_tok * (H * FD) + head * FD + f * D)[:, None] + offs_f[None, :]
            tl.store(dst, da, mask=t_ok[:, None])
        s += tl.dot(tl.trans(v), b, input_precision=PRECISION)
    if TOTAL:
        tl.store(cr + s_off, s)


@triton.jit
def rla_bwd_dv_kernel(
    do_ptr, pq_ptr, pk_ptr, dv_ptr, carry_ptr, seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, H, Hkv, window, NSEG, SEGLEN,
    D: tl.constexpr, NF: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr, CT: tl.constexpr,
    PRECISION: tl.constexpr, HAS_CARRY: tl.constexpr, TOTAL: tl.constexpr,
):
    """1-D grid over (sequences, Hkv, segments, D / BV value slices), the last fastest. The backward
    scan of dS = sum_t a_t^T do_t over the query heads of KV head hk (both feature halves of one
    value slice, D x BV each, fp32): dv (B, T, Hkv, D) gets b @ dS + tril(a b^T, -1)^T @ do at the key
    rows of the segment's chunk pairs (keys no query sees are not written).
    carry (sequences, Hkv, NSEG, NF, D, D) fp32: dS over the queries after the segment (HAS_CARRY).
    TOTAL: no output; store dS summed over the segment's queries into carry instead.
    do (B, T, H, D), phi(q) (B, T, H, F), phi(k) (B, T, Hkv, F), contiguous; products in CT."""
    NV: tl.constexpr = D // BV
    FD: tl.constexpr = NF * D
    iv, _, seg, n, hk, L, t_first, t_end, tok0 = segment_program(
        tl.program_id(0), Hkv, NSEG, SEGLEN, T, seq_len_ptr, seq_row_ptr, seq_start_ptr, 1, NV)
    G = H // Hkv
    if t_first >= L:
        return
    nchunks = tl.cdiv(t_end - t_first, BC)

    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    offs_v = iv * BV + tl.arange(0, BV)
    after = offs_c[None, :] > offs_c[:, None]  # key row c' (rows) meets query row c (columns)
    s_off = offs_d[:, None] * D + offs_v[None, :]
    cr = segment_carry(carry_ptr, n, hk, seg, Hkv, NSEG, FD * D)
    if HAS_CARRY:
        s_p = tl.load(cr + s_off)
        if NF == 2:
            s_n = tl.load(cr + D * D + s_off)
        else:
            s_n = s_p  # unused
    else:
        s_p = tl.zeros([D, BV], dtype=tl.float32)
        s_n = tl.zeros([D, BV], dtype=tl.float32)
    for i in range(nchunks):
        t0 = t_first + (nchunks - 1 - i) * BC
        offs_t = t0 + offs_c
        t_ok = offs_t < L
        offs_j = offs_t - window
        j_ok = (offs_j >= 0) & (offs_j < L)
        k_tok = (tok0 + offs_j).to(tl.int64)
        q_tok = (tok0 + offs_t).to(tl.int64)
        if not TOTAL:
            kp = pk_ptr + (k_tok * (Hkv * FD) + hk * FD)[:, None] + offs_d[None, :]
            b_p = tl.load(kp, mask=j_ok[:, None], other=0.0).to(CT)
            dv = tl.dot(b_p, s_p.to(CT), input_precision=PRECISION)
            if NF == 2:
                b_n = tl.load(kp + D, mask=j_ok[:, None], other=0.0).to(CT)
                dv += tl.dot(b_n, s_n.to(CT), input_precision=PRECISION)
            else:
                b_n = b_p  # unused
        for g in range(G):
            h = hk * G + g
            qp = pq_ptr + (q_tok * (H * FD) + h * FD)[:, None] + offs_d[None, :]
            a_p = tl.load(qp, mask=t_ok[:, None], other=0.0).to(CT)
            do = tl.load(do_ptr + (q_tok * (H * D) + h * D)[:, None] + offs_v[None, :], mask=t_ok[:, None],
                         other=0.0).to(CT)
            if NF == 2:
                a_n = tl.load(qp + D, mask=t_ok[:, None], other=0.0).to(CT)
            else:
                a_n = a_p  # unused
            if not TOTAL:
                pt = tl.dot(b_p, tl.trans(a_p), input_precision=PRECISION)
                if NF == 2:
                    pt += tl.dot(b_n, tl.trans(a_n), input_precision=PRECISION)
                pt = tl.where(after, pt, 0.0)
                dv += tl.dot(pt.to(CT), do, input_precision=PRECISION)
            s_p += tl.dot(tl.trans(a_p), do, input_precision=PRECISION)
            if NF == 2:
                s_n += tl.dot(tl.trans(a_n), do, input_precision=PRECISION)
        if not TOTAL:
            dst = dv_ptr + (k_tok * (Hkv * D) + hk * D)[:, None] + offs_v[None, :]
            tl.store(dst, dv.to(dv_ptr.dtype.element_ty), mask=j_ok[:, None])
    if TOTAL:
        tl.store(cr + s_off, s_p)
        if NF == 2:
            tl.store(cr + D * D + s_off, s_n)


@triton.jit
def rla_bwd_dk_kernel(
    do_ptr, v_ptr, pq_ptr, db_ptr, carry_ptr, seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, H, Hkv, window, NSEG, SEGLEN,
    D: tl.constexpr, NF: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr, CT: tl.constexpr,
    PRECISION: tl.constexpr, HAS_CARRY: tl.constexpr,
):
    """1-D grid over (sequences, Hkv, segments, NF feature halves, D / BV feature slices), the last
    fastest. The backward scan of dS (a BV x D slice of one feature half, fp32, summed over the
    query heads of KV head hk): db (B, T, Hkv, F) fp32 gets v @ dS^T + tril(do v^T, -1)^T @ a at the
    key rows of the segment's chunk pairs. carry as in `rla_bwd_dv_kernel` (its TOTAL output).
    do (B, T, H, D), v (B, T, Hkv, D), phi(q) (B, T, H, F), contiguous; products in CT."""
    NV: tl.constexpr = D // BV
    FD: tl.constexpr = NF * D
    iv, f, seg, n, hk, L, t_first, t_end, tok0 = segment_program(
        tl.program_id(0), Hkv, NSEG, SEGLEN, T, seq_len_ptr, seq_row_ptr, seq_start_ptr, NF, NV)
    G = H // Hkv
    if t_first >= L:
        return
    nchunks = tl.cdiv(t_end - t_first, BC)

    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    offs_f = iv * BV + tl.arange(0, BV)
    after = offs_c[None, :] > offs_c[:, None]  # key row c' (rows) meets query row c (columns)
    if HAS_CARRY:
        cr = segment_carry(carry_ptr, n, hk, seg, Hkv, NSEG, FD * D)
        s = tl.load(cr + (f * D + offs_f)[:, None] * D + offs_d[None, :])
    else:
        s = tl.zeros([BV, D], dtype=tl.float32)
    for i in range(nchunks):
        t0 = t_first + (nchunks - 1 - i) * BC
        offs_t = t0 + offs_c
        t_ok = offs_t < L
        offs_j = offs_t - window
        j_ok = (offs_j >= 0) & (offs_j < L)
        k_tok = (tok0 + offs_j).to(tl.int64)
        q_tok = (tok0 + offs_t).to(tl.int64)
        v = tl.load(v_ptr + (k_tok * (Hkv * D) + hk * D)[:, None] + offs_d[None, :], mask=j_ok[:, None],
                    other=0.0).to(CT)
        db = tl.dot(v, tl.trans(s.to(CT)), input_precision=PRECISION)
        for g in range(G):
            h = hk * G + g
            do = tl.load(do_ptr + (q_tok * (H * D) + h * D)[:, None] + offs_d[None, :], mask=t_ok[:, None],
                         other=0.0).to(CT)
            a = tl.load(pq_ptr + (q_tok * (H * FD) + h * FD + f * D)[:, None] + offs_f[None, :],
                        mask=t_ok[:, None], other=0.0).to(CT)
            pt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            pt = tl.where(after, pt, 0.0)
            db += tl.dot(pt.to(CT), a, input_precision=PRECISION)
            s += tl.dot(tl.trans(a), do, input_precision=PRECISION)
        dst = db_ptr + (k_tok * (Hkv * FD) + hk * FD + f * D)[:, None] + offs_f[None, :]
        tl.store(dst, db, mask=j_ok[:, None])


# Launch settings, edited by hand (row picked by `tuning_row`): chunk rows BC, state slice BV (capped at D),
# rows per program of the phi passes, and either chunks per scan segment (seg_chunks) or the programs per
# SM the segment count aims at. The 16-bit and fp32 rows are the forward segment kernel's settings, not
# yet tuned for the backward. The D 256 rows (the 16-bit one passed the GPU tests, speed untuned) halve BV,
# BC and phi_rows, so that the fp32 state slices (D x BV) and the chunk tiles (BC x D, rows x D) hold as many
# elements as at D = 128.
# The interpreter row: few, large tiles cost it least, and two-chunk segments make short test sequences
# run the carry path.
RLA_BWD_TILES = MappingProxyType({
    "interpreter": MappingProxyType(dict(BC=32, BV=128, num_warps=4, num_stages=1, seg_chunks=2, phi_rows=256)),
    "fp32": MappingProxyType(dict(BC=32, BV=64, num_warps=4, num_stages=2, programs_per_sm=4, phi_rows=16)),
    "fp32, D 256": MappingProxyType(dict(BC=16, BV=32, num_warps=4, num_stages=2, programs_per_sm=4, phi_rows=8)),
    "16-bit": MappingProxyType(dict(BC=64, BV=64, num_warps=4, num_stages=2, programs_per_sm=4, phi_rows=16)),
    "16-bit, D 256": MappingProxyType(dict(BC=32, BV=32, num_warps=4, num_stages=2, programs_per_sm=4, phi_rows=8)),
})


def _segment_length(cfg: dict, max_len: int, programs_per_segment: int, device) -> int:
    """Rows per scan segment, a multiple of BC: cfg["seg_chunks"] chunks, or enough segments that the
    smallest grid (the dv kernel's) has about programs_per_sm programs per SM."""
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


def _phi_grad(x: torch.Tensor, dphi: torch.Tensor, lim: torch.Tensor, feature: int, nf: int, br: int) -> torch.Tensor:
    """dx (B, T, heads, D) in x's dtype from dphi (B, T, heads, nf * D) fp32, `br` rows per program;
    0 at rows t >= lim[b]."""
    B, T, heads, D = x.shape
    dx = torch.empty_like(x)
    rows = x.numel() // D
    rla_bwd_phi_grad_kernel[(cdiv(rows, br),)](x, dphi, dx, lim, T, heads, rows, D=D, NF=nf, BR=br,
                                               FEATURE=feature, num_warps=4)
    return dx


def _exclusive_cumsum(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """sum over the entries before (reverse: after) each index along dim, fp32."""
    if reverse:
        return _exclusive_cumsum(x.flip(dim), dim, False).flip(dim)
    c = x.cumsum(dim)
    return torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c.narrow(dim, 0, c.shape[dim] - 1)], dim=dim)


def residual_linear_attention_backward(q, k, v, do, *, window, feature_map="softmax", lengths=None, cu_seqlens=None,
                                       needs=(True, True, True), cfg: dict | None = None):
    """Gradients of `residual_linear_attention_triton` with respect to q, k, v.

    Args:
        q: (B, T, H, D); k, v: (B, T, Hkv, D); do: (B, T, H, D), the gradient of the output; one dtype
            among fp32 / fp16 / bf16 (do is cast to it), D a power of two 16..256.
        window, feature_map, lengths, cu_seqlens: as in the forward.
        needs: which of (dq, dk, dv) to compute; the others come back as None.
        cfg: launch settings overriding the `RLA_BWD_TILES` row: BC, BV, num_warps, num_stages,
            seg_chunks (chunks per scan segment) or programs_per_sm, phi_rows (rows per program of
            the phi passes).
    Returns:
        (dq, dk, dv) in the inputs' dtype, exactly zero at padded positions; dk, dv summed over the
        query heads of each KV head.
    """
    B, T, H, Hkv, D = check_rla_args(q, k, v, window, feature_map)
    need_q, need_k, need_v = needs
    dt = q.dtype
    feature = FEATURES[feature_map]
    nf = feature_dim(D, feature_map) // D
    cfg = dict(tuning_row(RLA_BWD_TILES, dt, D), **(cfg or {}))
    BC, BV = cfg["BC"], min(cfg["BV"], D)
    if D % BV or BV < 16 or BC < 16 or BC & (BC - 1):
        raise ValueError(f"backward tiles BC = {BC}, BV = {BV} must be powers of two >= 16 with BV dividing D = {D}")
    seqs = sequence_table(B, T, q.device, lengths, cu_seqlens, BC)
    if seqs.count == 0:
        return tuple(torch.zeros_like(x) if need else None for x, need in zip((q, k, v), needs))
    q, k, v, do = (x.to(dt).contiguous() for x in (q, k, v, do))
    # gradients are allocated after the inputs are made contiguous: the kernels write them in that layout
    dq = dk = None
    dv = torch.zeros_like(v) if need_v else None  # keys that no query sees are not written
    w = min(window, seqs.max_len)
    seg_len = _segment_length(cfg, seqs.max_len, seqs.count * Hkv * (D // BV), q.device)
    nseg = cdiv(seqs.max_len, seg_len)
    # fp16 products run on fp32 operands (TF32 on a GPU): do . v and the states are not bounded by
    # 65504; bf16 has fp32's range
    ct = tl.bfloat16 if dt == torch.bfloat16 else tl.float32
    meta = dict(D=D, NF=nf, BC=BC, BV=BV, CT=ct, PRECISION=precision_for(dt), num_warps=cfg["num_warps"],
                num_stages=cfg["num_stages"])
    table = (seqs.row, seqs.start, seqs.length)
    if lengths is not None:
        lim = torch.as_tensor(lengths).to(device=q.device, dtype=torch.int32)
    elif cu_seqlens is not None:
        lim = torch.as_tensor(cu_seqlens)[-1:].to(device=q.device, dtype=torch.int32)
    else:
        lim = torch.full((B,), T, dtype=torch.int32, device=q.device)

    # phi in the products' type: fp16's subnormals would lose the small softmax features, whose errors
    # the softmax Jacobian then amplifies where dy - <dy, y> cancels
    pdt = torch.bfloat16 if dt == torch.bfloat16 else torch.float32
    pk = _phi(k, lim, feature, nf, cfg["phi_rows"], pdt) if (need_q or need_v) else None
    pq = _phi(q, lim, feature, nf, cfg["phi_rows"], pdt) if (need_k or need_v) else None
    carry_shape = (seqs.count, Hkv, nseg, nf, D, D)
    several = nseg > 1
    none = dummy(q.device)

    if need_k or need_v:
        carry = none
        if several:
            totals = torch.zeros(carry_shape, dtype=torch.float32, device=q.device)
            rla_bwd_dv_kernel[(seqs.count * Hkv * nseg * (D // BV),)](
                do, pq, pq, none, totals, *table, T, H, Hkv, w, nseg, seg_len, HAS_CARRY=False, TOTAL=True, **meta)
            launch_counts["segment_totals"] += 1
            carry = _exclusive_cumsum(totals, 2, reverse=True).contiguous()
        if need_v:
            rla_bwd_dv_kernel[(seqs.count * Hkv * nseg * (D // BV),)](
                do, pq, pk, dv, carry, *table, T, H, Hkv, w, nseg, seg_len, HAS_CARRY=several, TOTAL=False, **meta)
            launch_counts["rla_bwd_dv_kernel"] += 1
        if need_k:
            db = torch.zeros(B, T, Hkv, nf * D, dtype=torch.float32, device=q.device)
            rla_bwd_dk_kernel[(seqs.count * Hkv * nseg * nf * (D // BV),)](
                do, v, pq, db, carry, *table, T, H, Hkv, w, nseg, seg_len, HAS_CARRY=several, **meta)
            launch_counts["rla_bwd_dk_kernel"] += 1
            dk = _phi_grad(k, db, lim, feature, nf, cfg["phi_rows"])
    if need_q:
        carry = none
        grid = (seqs.count * H * nseg * nf * (D // BV),)
        if several:
            totals = torch.zeros(carry_shape, dtype=torch.float32, device=q.device)
            rla_bwd_dq_kernel[(seqs.count * Hkv * nseg * nf * (D // BV),)](
                do, v, pk, none, totals, *table, T, H, Hkv, Hkv, w, nseg, seg_len, HAS_CARRY=False, TOTAL=True,
                **meta)
            launch_counts["segment_totals"] += 1
            carry = _exclusive_cumsum(totals, 2, reverse=False).contiguous()
        da = torch.empty(B, T, H, nf * D, dtype=torch.float32, device=q.device)
        rla_bwd_dq_kernel[grid](do, v, pk, da, carry, *table, T, H, Hkv, H, w, nseg, seg_len, HAS_CARRY=several,
                                TOTAL=False, **meta)
        launch_counts["rla_bwd_dq_kernel"] += 1
        dq = _phi_grad(q, da, lim, feature, nf, cfg["phi_rows"])
    return dq, dk, dv


class ResidualLinearAttention(torch.autograd.Function):
    """RLA with Triton forward (`residual_linear_attention_triton`) and backward
    (`residual_linear_attention_backward`). Saves q, k, v; phi is recomputed in the backward. First
    derivatives only."""

    @staticmethod
    def forward(ctx, q, k, v, window, feature_map, lengths, cu_seqlens):
        ctx.save_for_backward(q, k, v)
        ctx.args = dict(window=window, feature_map=feature_map, lengths=lengths, cu_seqlens=cu_seqlens)
        return residual_linear_attention_triton(q, k, v, **ctx.args)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = residual_linear_attention_backward(q, k, v, do, needs=tuple(ctx.needs_input_grad[:3]),
                                                        **ctx.args)
        return dq, dk, dv, None, None, None, None


def residual_linear_attention_triton_autograd(q, k, v, *, window, feature_map="softmax", lengths=None,
                                              cu_seqlens=None):
    """`residual_linear_attention_triton` that autograd differentiates (gradients in Triton).

    Args/Returns as `residual_linear_attention_triton`: q (B, T, H, D), k, v (B, T, Hkv, D) raw;
    (B, T, H, D) in q.dtype. Gradients come back in the inputs' dtypes, zero at padded positions.
    """
    return ResidualLinearAttention.apply(q, k, v, window, feature_map, lengths, cu_seqlens)
