"""Sliding-window attention forward in Triton; also the SWA pass of RAttention.

`swa_fwd_kernel`: each program owns BM query rows of one head of one sequence and walks only the key
tiles its window needs, of three kinds:

    window-edge tiles  [s0 - w, s0 + BM - 1 - w):    some (row, key) pairs out of the window: masked
    interior tiles     between the two, keys <= s0:  every (row, key) pair visible, no mask at all
    diagonal tiles     (.., s0 + BM):                causal mask

First the interior tiles (no mask, no bounds checks), then the edge and the diagonal tiles in one
masked loop (`swa_tile` with MASK), so a program runs two software pipelines; the online softmax does
not depend on the order of the tiles. RAttention (rattention/fused.py) runs the same kernel with q
rotated in the kernel (ROPE) and the raw RLA partials of rla/segment.py normalized and added in the
epilogue (RLA_PARTS).

Dense, right-padded (`lengths`) and packed (`cu_seqlens`) batches all become a table of sequences
(row, start, length), so a program never straddles two sequences and needs no segment mask.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common import cdiv, check_qkv, check_window, default_scale
from ..triton_common import (
    LOG2E, SequenceTable, TensorDescriptor, block_program, check_head_dim, kv_tile, precision_for, rope_launch_args,
    rope_rows, sequence_table, softmax_step, tma_ok, tuning_row,
)
from ..triton_common import dummy as _dummy

launch_counts: dict[str, int] = {"swa_fwd_kernel": 0, "swa_fwd_kernel_tma": 0, "swa_fwd_kernel_dense": 0,
                                 "swa_fwd_kernel_even": 0}

# Tiles of `swa_fwd_kernel` (plain SWA and RAttention's SWA pass), edited by hand. 16-bit, D <= 128:
# fastest on an H200 at T = 32k (swa/README.md), key / value tiles through TMA where `tma_ok`; fp32 and
# D = 256 tiles take twice the shared memory; the interpreter's are small so that short test shapes
# cross every phase boundary.
SWA_TILES = MappingProxyType({
    "16-bit": MappingProxyType(dict(BM=64, BN=64, num_warps=4, num_stages=3, heads_first=True, tma=True)),
    "16-bit, D 256": MappingProxyType(dict(BM=64, BN=32, num_warps=8, num_stages=2, heads_first=False, tma=False)),
    "fp32": MappingProxyType(dict(BM=64, BN=32, num_warps=4, num_stages=2, heads_first=False, tma=False)),
    "fp32, D 256": MappingProxyType(dict(BM=32, BN=32, num_warps=4, num_stages=1, heads_first=False, tma=False)),
    "interpreter": MappingProxyType(dict(BM=32, BN=16, num_warps=4, num_stages=1, heads_first=False, tma=False)),
})


@triton.jit
def load_rla_rows(rla_ptr, rla_desc, q_rows, row_ok, tok0, s0, h, part_stride, H, D: tl.constexpr,
                  PARTS: tl.constexpr, TMA: tl.constexpr):
    """The raw RLA rows [s0, s0 + BM) of head h that `swa_fwd_kernel` adds, in fp32: the sum of PARTS
    partials part_stride apart; through rla_desc with TMA, else masked pointer loads."""
    offs_d = tl.arange(0, D)
    if TMA:
        r = rla_desc.load([(tok0 + s0).to(tl.int32), h * D]).to(tl.float32)
        if PARTS == 2:
            r += rla_desc.load([(part_stride // (H * D) + tok0 + s0).to(tl.int32), h * D]).to(tl.float32)
    else:
        r = tl.load(rla_ptr + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
        if PARTS == 2:
            r += tl.load(rla_ptr + part_stride + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None],
                         other=0.0).to(tl.float32)
    return r


@triton.jit
def swa_tile(qs, k_ptr, v_ptr, k_desc, v_desc, tok0, j0, kv_head, offs_m, window, L, Hkv, m_i, l_i, acc, qk_scale,
             D: tl.constexpr, BN: tl.constexpr, MASK: tl.constexpr, TMA: tl.constexpr, PRECISION: tl.constexpr,
             IN_RANGE: tl.constexpr, SCALE_SCORES: tl.constexpr, P_RES: tl.constexpr = False):
    """One key / value tile [j0, j0 + BN) of the online softmax: returns the updated (m_i, l_i, acc).
    P_RES: P @ V with P unrounded (`softmax_step`).
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
        k, v = kv_tile(k_ptr, v_ptr, tok0, offs_j, L, Hkv, kv_head, qs, D, ends)
    sc = tl.dot(qs, tl.trans(k), input_precision=PRECISION)
    if MASK:
        diff = offs_m[:, None] - offs_j[None, :]
        ok = (diff >= 0) & (diff <= window)
        if ends:
            ok = ok & (offs_j < L)[None, :]
        sc = tl.where(ok, sc, float("-inf"))
    return softmax_step(sc, v, m_i, l_i, acc, qk_scale, MASK, PRECISION, SCALE_SCORES, P_RES)


@triton.jit
def swa_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, ores_ptr,
    cos_ptr, sin_ptr, gs_ptr, gr_ptr, rla_ptr, k_desc, v_desc, rla_desc,
    seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, H, Hkv, window, stride_rope_b, qk_scale, eps, part_stride,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, ROPE: tl.constexpr, RLA_PARTS: tl.constexpr,
    PRECISION: tl.constexpr, HEADS_FIRST: tl.constexpr, TMA: tl.constexpr, RLA_TMA: tl.constexpr,
    DENSE: tl.constexpr, EVEN: tl.constexpr, SCALE_SCORES: tl.constexpr, STORE_LSE: tl.constexpr = False,
    STORE_RES: tl.constexpr = False,
):
    """Grid (query blocks, sequences * H); HEADS_FIRST: (sequences * H, query blocks), so the heads of a
    query block run together and share its RoPE-table rows in L2. q/o (B, T, H, D), k/v (B, T, Hkv, D),
    contiguous, k already rotated.
    ROPE (RAttention): rotate q with the table rows at cos_ptr / sin_ptr ((T, D), or (B, T, D) with batch
    rows stride_rope_b elements apart).
    RLA_PARTS > 0 (RAttention): the output is rms(o_swa) * g_swa + rms(o_rla) * g_rla, with o_rla the sum
    of RLA_PARTS raw partials (B, T, H, D) at rla_ptr, part_stride elements apart, and the (H, D) fp32
    weights g_swa at gs_ptr, g_rla at gr_ptr. RLA_TMA: those rows come through rla_desc, a
    (parts * B * T, H * D) view with blocks (BM, D) (rows past the sequence are loaded but never stored).
    TMA: the key / value tiles come through the tensor descriptors k_desc and v_desc, 2-D views
    (B * T, Hkv * D) with blocks (BN, D); rows past the sequence are zeroed (v) or masked (scores).
    DENSE: the sequences are the B rows of T tokens (no sequence-table loads). EVEN (DENSE, T a multiple of
    BM, BM and window multiples of BN): no query row and no key tile reaches past the sequence end (no
    bounds masks).
    SCALE_SCORES (scale > 0): qk_scale = scale * log2(e) multiplies the fp32 scores; otherwise it is folded
    into q, so the scores come out in base 2.
    STORE_LSE (plain SWA): write each query row's log2-sum-exp2 of its base-2 scaled scores (scale * log2(e)
    * q.k) to lse_ptr, fp32 (B, H, T), for the backward (swa/backward.py); rows past the sequence are not
    written. STORE_RES (plain SWA, 16-bit inputs): P @ V takes P unrounded (`softmax_step` P_RES, one more
    MMA per tile) and the output's rounding residual, o in fp32 - o as stored, goes to ores_ptr (B, T, H, D)
    in o's dtype, so the backward's rowsum(o * dO) sees an fp32-exact output: the gradient of a row whose
    softmax gradient nearly cancels (a query with a few keys of similar dO.v) amplifies any error there."""
    pid_m, n, h, hk = block_program(H, Hkv, HEADS_FIRST)
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
    row_ok = offs_m < L
    q_rows = (tok0 + offs_m).to(tl.int64) * (H * D) + h * D
    if EVEN:
        q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :]).to(tl.float32)
    else:
        q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    kv_head = hk * D
    lo = tl.maximum(s0 - window, 0)
    hi = tl.minimum(s0 + BM, L)
    edge_end = s0 + BM - 1 - window  # keys below this bound are outside some row's window
    n_tot = tl.cdiv(hi - lo, BN)
    n_a = tl.minimum(tl.cdiv(tl.maximum(edge_end - lo, 0), BN), n_tot)  # the window-edge tiles
    n_b = tl.minimum(tl.maximum((s0 - lo + 1) // BN, n_a), n_tot)  # the end of the interior tiles

    if ROPE:
        rp = stride_rope_b * (tok0 // T) + (start + offs_m).to(tl.int64) * D
        qs = rope_rows(q, q_ptr, q_rows, cos_ptr, sin_ptr, rp, row_ok, D)
    else:
        qs = q
    if SCALE_SCORES:
        qs = qs.to(dt)
    else:
        qs = (qs * qk_scale).to(dt)
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, D], dtype=tl.float32)

    # The interior tiles, where every (row, key) pair is visible and in bounds (keys <= s0 < L).
    for i in range(n_a, n_b):
        m_i, l_i, acc = swa_tile(qs, k_ptr, v_ptr, k_desc, v_desc, tok0, lo + i * BN, kv_head, offs_m, window, L,
                                 Hkv, m_i, l_i, acc, qk_scale, D, BN, False, TMA, PRECISION, EVEN, SCALE_SCORES,
                                 STORE_RES)
    # The masked tiles, the window edge and the diagonal, in one loop (one software pipeline).
    for i in range(0, n_a + n_tot - n_b):
        j0 = lo + tl.where(i < n_a, i, n_b + i - n_a) * BN
        m_i, l_i, acc = swa_tile(qs, k_ptr, v_ptr, k_desc, v_desc, tok0, j0, kv_head, offs_m, window, L, Hkv,
                                 m_i, l_i, acc, qk_scale, D, BN, True, TMA, PRECISION, EVEN, SCALE_SCORES,
                                 STORE_RES)

    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if STORE_LSE:  # every row of a sequence sees itself (l_i >= 1); +inf keeps a keyless row's P at 0
        lse = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("inf"))
        lse_rows = (tok0 - start) * H + h.to(tl.int64) * T + start + offs_m  # (B, H, T); tok0 - start = b * T
        tl.store(lse_ptr + lse_rows, lse, mask=row_ok)
    if STORE_RES:
        o_st = o.to(o_ptr.dtype.element_ty).to(tl.float32)
        tl.store(ores_ptr + q_rows[:, None] + offs_d[None, :], (o - o_st).to(ores_ptr.dtype.element_ty),
                 mask=row_ok[:, None])
    if RLA_PARTS > 0:
        gs = tl.load(gs_ptr + h * D + offs_d)
        o = o * tl.rsqrt(tl.sum(o * o, axis=1) / D + eps)[:, None] * gs[None, :]
        r = load_rla_rows(rla_ptr, rla_desc, q_rows, row_ok, tok0, s0, h, part_stride, H, D, RLA_PARTS, RLA_TMA)
        gr = tl.load(gr_ptr + h * D + offs_d)
        o += r * tl.rsqrt(tl.sum(r * r, axis=1) / D + eps)[:, None] * gr[None, :]
    if EVEN:
        tl.store(o_ptr + q_rows[:, None] + offs_d[None, :], o.to(o_ptr.dtype.element_ty))
    else:
        tl.store(o_ptr + q_rows[:, None] + offs_d[None, :], o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])


def block_config(D: int, dtype: torch.dtype) -> dict:
    """The tiles of `swa_fwd_kernel` (plain SWA and RAttention's SWA pass) for head dim D and inputs of this
    dtype: a copy of a SWA_TILES row."""
    return tuning_row(SWA_TILES, dtype, D)


def launch_swa_fwd(q, k, v, out, seqs: SequenceTable, *, window, scale, cfg, rope=None, rla=None,
                   swa_norm_weight=None, rla_norm_weight=None, eps=1e-6, lse=None,
                   o_res=None):
    """Launch `swa_fwd_kernel` over every (query block, sequence, head); returns out.

    q, k, v, out contiguous, k already rotated; window an int; cfg: tiles (`block_config`). RAttention's
    SWA pass: rope = (cos, sin) tables that rotate q in the kernel, and rla = the raw RLA output as
    partials (parts, B, T, H, D) that sum to it, added as rms(o_swa) * g_swa + rms(o_rla) * g_rla with
    the (H, D) fp32 norm weights. lse: an fp32 (B, H, T) tensor that receives
    each query row's base-2 log-sum-exp; o_res: a tensor like out that receives the rounding residual of the
    output (fp32 o - out); both for plain SWA only, entries at padded positions left alone."""
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    if seqs.count == 0:
        return out
    if seqs.block != cfg["BM"]:
        raise ValueError(f"sequence table built for blocks of {seqs.block}, launch uses BM = {cfg['BM']}")
    if (lse is not None or o_res is not None) and rla is not None:
        raise ValueError("lse and o_res are stored by the plain softmax pass only")
    if rla is not None and (rla.dim() != 5 or rla.shape[0] not in (1, 2) or rla.shape[1:] != q.shape
                            or swa_norm_weight is None or rla_norm_weight is None):
        raise ValueError(f"rla must be 1 or 2 partials (parts, B, T, H, D) with both norm weights; got rla "
                         f"{None if rla is None else tuple(rla.shape)} for q {tuple(q.shape)}")
    dummy = _dummy(q.device)
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
    tma = bool(cfg.get("tma")) and tma_ok(k, v)
    if tma:
        k_desc = TensorDescriptor.from_tensor(k.view(B * T, Hkv * D), [cfg["BN"], D])
        v_desc = TensorDescriptor.from_tensor(v.view(B * T, Hkv * D), [cfg["BN"], D])
    else:
        k_desc = v_desc = dummy
    rla_tma = (tma and rla is not None and rla.data_ptr() % 16 == 0
               and rla.numel() // (H * D) < 2**31)  # int32 row coordinates over both partials
    rla_desc = TensorDescriptor.from_tensor(rla.view(-1, H * D), [cfg["BM"], D]) if rla_tma else dummy
    # even: the query blocks and the key tiles (which start at s0 - window, or 0) end exactly at block ends <= T
    even = seqs.dense and T % cfg["BM"] == 0 and cfg["BM"] % cfg["BN"] == 0 and window % cfg["BN"] == 0
    swa_fwd_kernel[grid](
        q, k, v, out, lse if lse is not None else dummy,
        o_res if o_res is not None else dummy,
        cos, sin, swa_norm_weight if swa_norm_weight is not None else dummy,
        rla_norm_weight if rla_norm_weight is not None else dummy,
        rla if rla is not None else dummy, k_desc, v_desc, rla_desc,
        seqs.row, seqs.start, seqs.length,
        T, H, Hkv, window, stride_rope_b, float(scale) * LOG2E, float(eps), rla[0].numel() if rla is not None else 0,
        D=D, BM=cfg["BM"], BN=cfg["BN"], ROPE=rope is not None, RLA_PARTS=0 if rla is None else rla.shape[0],
        PRECISION=precision_for(q.dtype), HEADS_FIRST=heads_first, TMA=tma, RLA_TMA=rla_tma, DENSE=seqs.dense,
        EVEN=even, SCALE_SCORES=float(scale) > 0, STORE_LSE=lse is not None,
        STORE_RES=o_res is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    launch_counts["swa_fwd_kernel"] += 1
    launch_counts["swa_fwd_kernel_tma"] += tma
    launch_counts["swa_fwd_kernel_dense"] += seqs.dense
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
    check_head_dim(D)
    cfg = block_config(D, dtype=q.dtype)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # one dtype (check_qkv)
    seqs = sequence_table(B, T, q.device, lengths, cu_seqlens, cfg["BM"])
    out = torch.zeros_like(q) if seqs.zero_fill else torch.empty_like(q)
    w = seqs.max_len if window is None else min(window, seqs.max_len)
    return launch_swa_fwd(q, k, v, out, seqs, window=w, scale=default_scale(D, scale), cfg=cfg)


__all__ = ["SWA_TILES", "block_config", "launch_swa_fwd", "swa_attention_triton", "swa_fwd_kernel"]
