"""Sliding-window attention backward in Triton (FlashAttention-2 style), and the autograd op.

The forward (`swa_fwd_kernel` with STORE_LSE) keeps, per query row, L_t = log2 sum_j 2^(s_tj), the
base-2 log-sum-exp of the scaled scores s_tj = scale * log2(e) * q_t.k_j, so the backward rebuilds
P exactly as P_tj = 2^(s_tj - L_t) without another pass over the keys. With dO the output gradient:

    delta_t = sum_d O_td dO_td                        (swa_bwd_preprocess_kernel)
    dV_j = sum_t P_tj dO_t,   dS_tj = P_tj (dO_t.v_j - delta_t)
    dK_j = scale sum_t dS_tj q_t                      (swa_bwd_dkdv_kernel)
    dQ_t = scale sum_j dS_tj k_j                      (swa_bwd_dq_kernel)

Query t sees key j iff 0 <= t - j <= window, so key j is seen by the queries j..j+window: the dK/dV
program of a key block walks only the query tiles that start inside that band, and the dQ program of a
query block only the key tiles of its window (as the forward does). Inside each band, tiles where every
(query, key) pair is visible run without a mask; only the tiles on the diagonal and on the window edge
are masked. The dK/dV program loops over the H / Hkv query heads of its KV head, so each dK/dV row has
one writer and needs no atomics.

Padded and packed batches use the forward's SequenceTable (a program never straddles two sequences).
Loads of rows past a sequence end are masked: such query rows get L = +inf (P = 0) and zero q / dO,
such key rows are never stored, so padding may hold anything, NaN included; gradients there are 0.

Precision. Each row of dS sums to 0 in exact arithmetic; when delta_t disagrees with the P the backward
recomputes, the sum is some e_t != 0 and dQ_t picks up e_t (P @ K)_t, which dwarfs dQ_t on rows whose dS
nearly cancels (a query with a few keys of similar dO.v): rowsum(o * dO) with o rounded to bf16, and P
rounded to bf16 in the forward's P @ V, put 1e-1 relative errors on such rows. So the autograd forward
(16-bit inputs) also multiplies P's rounding residual by V and keeps o's rounding residual o_res, and
delta is computed from o + o_res; for fp32 inputs the dQ kernel subtracts the e_t term itself (SUM_FIX).
"""

from __future__ import annotations

from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common import cdiv, check_qkv, check_window, default_scale
from ..triton_common import (INTERPRET, LOG2E, SequenceTable, block_program, check_head_dim, kv_tile,
                             precision_for, sequence_table, tuning_row)
from .parallel import block_config, launch_swa_fwd

launch_counts: dict[str, int] = {"swa_bwd_preprocess_kernel": 0, "swa_bwd_dkdv_kernel": 0, "swa_bwd_dq_kernel": 0}


@triton.jit
def swa_bwd_preprocess_kernel(o_ptr, ores_ptr, do_ptr, delta_ptr, T, H, n_blocks, D: tl.constexpr,
                              BLOCK: tl.constexpr, HAS_RES: tl.constexpr):
    """delta (B, H, T) fp32 = rowsum(o * do) for o, do (B, T, H, D) contiguous; HAS_RES: o is the sum of the
    stored 16-bit output and its rounding residual at ores_ptr. 1-D grid over (batch row, head, token block),
    so no grid dimension limit applies."""
    pid = tl.program_id(0)
    bh = pid // n_blocks
    b = bh // H
    h = bh % H
    offs_t = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D)
    ok = offs_t < T
    rows = ((b.to(tl.int64) * T + offs_t) * H + h) * D
    o = tl.load(o_ptr + rows[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    if HAS_RES:
        o += tl.load(ores_ptr + rows[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptr + rows[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(delta_ptr + bh.to(tl.int64) * T + offs_t, tl.sum(o * do, axis=1), mask=ok)


@triton.jit
def dkdv_tile(k, v, dk, dv, q_ptr, do_ptr, lse_ptr, delta_ptr, q_tok0, stat_row, t0, h, offs_j, window, L, H,
              qk_scale, D: tl.constexpr, BM: tl.constexpr, MASK: tl.constexpr, PRECISION: tl.constexpr):
    """Add the contribution of query rows [t0, t0 + BM) of head h to the key block's dk, dv (BN, D) fp32.
    Transposed tiles (keys x queries), so P^T and dS^T multiply dO and q directly. MASK: causal and
    window masks; without it every pair is visible. Rows past the sequence load as zeros with L = +inf."""
    dt = k.dtype
    offs_m = t0 + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < L
    rows = (q_tok0 + offs_m).to(tl.int64) * (H * D) + h * D
    q = tl.load(q_ptr + rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptr + rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(lse_ptr + stat_row + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(delta_ptr + stat_row + offs_m, mask=row_ok, other=0.0)
    s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BN, BM), base 2
    if MASK:
        diff = offs_m[None, :] - offs_j[:, None]
        s_t = tl.where((diff >= 0) & (diff <= window), s_t, float("-inf"))
    p_t = tl.exp2(s_t - lse[None, :])
    dv = tl.dot(p_t.to(dt), do, dv, input_precision=PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(dt), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def swa_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, H, Hkv, window, qk_scale, scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr, HEADS_FIRST: tl.constexpr,
):
    """Grid (key blocks of BN rows, sequences * Hkv), or the two swapped with HEADS_FIRST. q, do (B, T, H, D);
    k, v, dk, dv (B, T, Hkv, D); lse, delta (B, H, T) fp32; all contiguous. window: an int (None resolved to
    the longest sequence by the launcher).

    The queries that see keys [j0, j0 + BN) are [j0, j0 + BN + window), cut at the sequence end, taken in
    tiles of BM rows starting at j0: tile i holds the pairs with t - j in [i BM - BN + 1, i BM + BM - 1], so
    tiles i < cdiv(BN - 1, BM) straddle the diagonal, tiles with (i + 1) BM > window + 1 straddle the window
    edge, and the rest are unmasked."""
    pid_j, n, hk, _ = block_program(Hkv, Hkv, HEADS_FIRST)
    G = H // Hkv
    j0 = pid_j * BN
    L = tl.load(seq_len_ptr + n)
    if j0 >= L:
        return
    start = tl.load(seq_start_ptr + n)
    row_b = tl.load(seq_row_ptr + n).to(tl.int64)
    tok0 = row_b * T + start  # token index of position 0 of the sequence
    dt = k_ptr.dtype.element_ty

    offs_j = j0 + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    col_ok = offs_j < L
    kv_rows = (tok0 + offs_j).to(tl.int64) * (Hkv * D) + hk * D
    kv_off = kv_rows[:, None] + offs_d[None, :]
    k = tl.load(k_ptr + kv_off, mask=col_ok[:, None], other=0.0).to(dt)
    v = tl.load(v_ptr + kv_off, mask=col_ok[:, None], other=0.0).to(dt)
    dk = tl.zeros([BN, D], dtype=tl.float32)
    dv = tl.zeros([BN, D], dtype=tl.float32)

    q_end = tl.minimum(j0 + BN + window, L)  # queries [j0, q_end) see some key of the block
    n_q = tl.cdiv(q_end - j0, BM)
    n_diag = tl.minimum(tl.cdiv(BN - 1, BM), n_q)
    n_int = tl.maximum(tl.minimum((window + 1) // BM, n_q), n_diag)  # unmasked tiles: [n_diag, n_int)
    n_masked = n_diag + n_q - n_int
    for g in range(0, G):
        h = hk * G + g
        stat_row = (row_b * H + h) * T + start  # (B, H, T) statistics of head h, position 0 of the sequence
        for i in range(n_diag, n_int):
            dk, dv = dkdv_tile(k, v, dk, dv, q_ptr, do_ptr, lse_ptr, delta_ptr, tok0, stat_row, j0 + i * BM, h,
                               offs_j, window, L, H, qk_scale, D, BM, False, PRECISION)
        for i in range(0, n_masked):  # diagonal tiles, then window-edge tiles: one loop, one pipeline
            t0 = j0 + tl.where(i < n_diag, i, n_int + i - n_diag) * BM
            dk, dv = dkdv_tile(k, v, dk, dv, q_ptr, do_ptr, lse_ptr, delta_ptr, tok0, stat_row, t0, h, offs_j,
                               window, L, H, qk_scale, D, BM, True, PRECISION)
    tl.store(dk_ptr + kv_off, (dk * scale).to(dk_ptr.dtype.element_ty), mask=col_ok[:, None])
    tl.store(dv_ptr + kv_off, dv.to(dv_ptr.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def dq_tile(q, do, lse, delta, dq, k_bar, ds_sum, p_sum, k_ptr, v_ptr, tok0, j0, kv_head, offs_m, window, L, Hkv,
            qk_scale, D: tl.constexpr, BN: tl.constexpr, MASK: tl.constexpr, PRECISION: tl.constexpr,
            SUM_FIX: tl.constexpr):
    """Add the contribution of keys [j0, j0 + BN) to dq (BM, D) fp32; with SUM_FIX also to k_bar = P @ K
    (BM, D) and to the row sums of dS and P (BM,). MASK: causal and window masks and the sequence end (keys
    past it load as zeros); without it every pair is visible and every key in range."""
    dt = q.dtype
    offs_j = j0 + tl.arange(0, BN)
    k, v = kv_tile(k_ptr, v_ptr, tok0, offs_j, L, Hkv, kv_head, q, D, MASK)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BM, BN), base 2
    if MASK:
        diff = offs_m[:, None] - offs_j[None, :]
        s = tl.where((diff >= 0) & (diff <= window), s, float("-inf"))
    p = tl.exp2(s - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(dt), k, dq, input_precision=PRECISION)
    if SUM_FIX:
        k_bar = tl.dot(p, k, k_bar, input_precision=PRECISION)
        ds_sum += tl.sum(ds, axis=1)
        p_sum += tl.sum(p, axis=1)
    return dq, k_bar, ds_sum, p_sum


@triton.jit
def swa_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, H, Hkv, window, qk_scale, scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr, HEADS_FIRST: tl.constexpr,
    SUM_FIX: tl.constexpr,
):
    """Grid (query blocks of BM rows, sequences * H), or swapped with HEADS_FIRST; layouts as in
    `swa_bwd_dkdv_kernel`. The key tiles start at s0 - window (or 0) and split as in the forward: the
    window-edge tiles (keys < s0 + BM - 1 - window), the interior tiles (keys in range of every row's
    window and <= s0), and the diagonal tiles; only the first and the last kind are masked.

    SUM_FIX (fp32): each row of dS sums to 0 in exact arithmetic, so dq_t = scale sum_j dS_tj (k_j - c) for
    any c; the recomputed P differs from the forward's (which formed delta through o) by ~1e-7 relative, and
    that leaves sum_j dS_tj = e_t != 0, an error e_t (P @ K)_t / sum_j P_tj that a row whose true dS nearly
    cancels (a query with a few keys of similar dO.v) amplifies well past 1e-4. The kernel takes that term
    off (one more product per tile), which makes delta consistent with the recomputed P."""
    pid_m, n, h, hk = block_program(H, Hkv, HEADS_FIRST)
    s0 = pid_m * BM
    L = tl.load(seq_len_ptr + n)
    if s0 >= L:
        return
    start = tl.load(seq_start_ptr + n)
    row_b = tl.load(seq_row_ptr + n).to(tl.int64)
    tok0 = row_b * T + start
    dt = k_ptr.dtype.element_ty

    offs_m = s0 + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < L
    rows = (tok0 + offs_m).to(tl.int64) * (H * D) + h * D
    q = tl.load(q_ptr + rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0).to(dt)
    do = tl.load(do_ptr + rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0).to(dt)
    stat_row = (row_b * H + h) * T + start
    lse = tl.load(lse_ptr + stat_row + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(delta_ptr + stat_row + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BM, D], dtype=tl.float32)
    if SUM_FIX:
        k_bar = tl.zeros([BM, D], dtype=tl.float32)
        ds_sum = tl.zeros([BM], dtype=tl.float32)
        p_sum = tl.zeros([BM], dtype=tl.float32)
    else:
        k_bar = 0.0
        ds_sum = 0.0
        p_sum = 0.0

    lo = tl.maximum(s0 - window, 0)
    hi = tl.minimum(s0 + BM, L)
    n_tot = tl.cdiv(hi - lo, BN)
    n_a = tl.minimum(tl.cdiv(tl.maximum(s0 + BM - 1 - window - lo, 0), BN), n_tot)  # window-edge tiles
    n_b = tl.minimum(tl.maximum((s0 - lo + 1) // BN, n_a), n_tot)  # interior tiles: [n_a, n_b)
    kv_head = hk * D
    for i in range(n_a, n_b):
        dq, k_bar, ds_sum, p_sum = dq_tile(q, do, lse, delta, dq, k_bar, ds_sum, p_sum, k_ptr, v_ptr, tok0,
                                           lo + i * BN, kv_head, offs_m, window, L, Hkv, qk_scale, D, BN, False,
                                           PRECISION, SUM_FIX)
    for i in range(0, n_a + n_tot - n_b):
        j0 = lo + tl.where(i < n_a, i, n_b + i - n_a) * BN
        dq, k_bar, ds_sum, p_sum = dq_tile(q, do, lse, delta, dq, k_bar, ds_sum, p_sum, k_ptr, v_ptr, tok0, j0,
                                           kv_head, offs_m, window, L, Hkv, qk_scale, D, BN, True, PRECISION,
                                           SUM_FIX)
    if SUM_FIX:  # rows past the sequence have no P (p_sum = 0) and are not stored
        dq -= (ds_sum / tl.where(p_sum > 0.0, p_sum, 1.0))[:, None] * k_bar
    tl.store(dq_ptr + rows[:, None] + offs_d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None])


def _row(dkdv: dict, dq: dict) -> MappingProxyType:
    return MappingProxyType({"dkdv": MappingProxyType(dkdv), "dq": MappingProxyType(dq)})


# Backward launch settings, edited by hand (row picked by `tuning_row`). dkdv: BN key rows per program, BM
# query rows per step; dq: BM query rows per program, BN keys per step; heads_first (optional): grid
# (sequences * heads, blocks). GPU rows are first guesses (FlashAttention-2-like tiles sized for an H100's
# shared memory), not measured; `rattn-eval bench tune --what swa-backward-dkdv,swa-backward-dq` times the
# candidates. The interpreter row: small, unequal tiles, so short test sequences cross
# every tile boundary.
SWA_BWD_TILES = MappingProxyType({
    "16-bit": _row(dict(BM=64, BN=64, num_warps=4, num_stages=2), dict(BM=64, BN=64, num_warps=4, num_stages=2)),
    "16-bit, D 256": _row(dict(BM=32, BN=64, num_warps=8, num_stages=1), dict(BM=64, BN=32, num_warps=8, num_stages=1)),
    "fp32": _row(dict(BM=32, BN=64, num_warps=4, num_stages=2), dict(BM=64, BN=32, num_warps=4, num_stages=2)),
    "fp32, D 256": _row(dict(BM=16, BN=32, num_warps=4, num_stages=1), dict(BM=32, BN=16, num_warps=4, num_stages=1)),
    "interpreter": _row(dict(BM=16, BN=32, num_warps=4, num_stages=1), dict(BM=32, BN=16, num_warps=4, num_stages=1)),
})


def bwd_config(D: int, dtype: torch.dtype) -> dict:
    """{"dkdv": settings, "dq": settings} for a head dim and input dtype: a copy of a SWA_BWD_TILES row."""
    return {kernel: dict(settings) for kernel, settings in tuning_row(SWA_BWD_TILES, dtype, D).items()}


def _grid(blocks: int, pairs: int, what: str, heads_first: bool = False):
    """(grid, heads_first) for `blocks` tiles per sequence and `pairs` (sequence, head) pairs, heads first if
    asked; only the first grid dimension may exceed 65535, so past that the larger count goes there."""
    if min(blocks, pairs) > 65535:
        raise ValueError(f"{pairs} (sequence, head) pairs and {blocks} {what} blocks per sequence are too many for "
                         "one launch; split the batch")
    if max(blocks, pairs) > 65535:
        heads_first = pairs > 65535
    return ((pairs, blocks) if heads_first else (blocks, pairs)), heads_first


def launch_swa_bwd(do, q, k, v, o, o_res, lse, seqs: SequenceTable, *, window: int, scale: float,
                   cfg: dict | None = None, need_dq: bool = True, need_dkdv: bool = True):
    """Gradients of SWA for output gradient do. All tensors contiguous: q, o, do (B, T, H, D); k, v (B, T, Hkv, D)
    of q's dtype; o_res (like o, or None) and lse (B, H, T) fp32 as `swa_forward_with_lse` returns them; window an
    int (None resolved to seqs.max_len); cfg as `bwd_config` returns (default: that).
    Returns dq, dk, dv in the input dtype, zero at positions outside every sequence (None for the ones that
    need_dq / need_dkdv leave out)."""
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    cfg = bwd_config(D, q.dtype) if cfg is None else cfg
    alloc = torch.zeros if seqs.zero_fill else torch.empty  # contiguous, the layout the kernels write
    dq = alloc(q.shape, dtype=q.dtype, device=q.device) if need_dq else None
    dk, dv = ((alloc(k.shape, dtype=k.dtype, device=k.device), alloc(v.shape, dtype=v.dtype, device=v.device))
              if need_dkdv else (None, None))
    if seqs.count == 0 or not (need_dq or need_dkdv):
        return dq, dk, dv
    delta = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    block = 32 if INTERPRET else 64
    n_blocks = cdiv(T, block)
    swa_bwd_preprocess_kernel[(B * H * n_blocks,)](o, o if o_res is None else o_res, do, delta, T, H, n_blocks, D=D,
                                                   BLOCK=block, HAS_RES=o_res is not None, num_warps=4)
    launch_counts["swa_bwd_preprocess_kernel"] += 1
    prec = precision_for(q.dtype)
    common = (seqs.row, seqs.start, seqs.length, T, H, Hkv, window, float(scale) * LOG2E, float(scale))

    if need_dkdv:
        c = cfg["dkdv"]
        grid, heads_first = _grid(cdiv(seqs.max_len, c["BN"]), seqs.count * Hkv, "key", c.get("heads_first", False))
        swa_bwd_dkdv_kernel[grid](q, k, v, do, lse, delta, dk, dv, *common, D=D, BM=c["BM"], BN=c["BN"],
                                  PRECISION=prec, HEADS_FIRST=heads_first, num_warps=c["num_warps"],
                                  num_stages=c["num_stages"])
        launch_counts["swa_bwd_dkdv_kernel"] += 1
    if need_dq:
        c = cfg["dq"]
        grid, heads_first = _grid(cdiv(seqs.max_len, c["BM"]), seqs.count * H, "query", c.get("heads_first", False))
        swa_bwd_dq_kernel[grid](q, k, v, do, lse, delta, dq, *common, D=D, BM=c["BM"], BN=c["BN"], PRECISION=prec,
                                HEADS_FIRST=heads_first, SUM_FIX=q.dtype == torch.float32, num_warps=c["num_warps"],
                                num_stages=c["num_stages"])
        launch_counts["swa_bwd_dq_kernel"] += 1
    return dq, dk, dv


def swa_forward_with_lse(q, k, v, *, window, scale=None, lengths=None, cu_seqlens=None, seqs=None):
    """The Triton forward that also keeps the softmax statistics.

    Returns (o, o_res, lse, seqs, w): o (B, T, H, D) in q.dtype (zero at padding; for 16-bit inputs P @ V takes
    P unrounded, so o can differ from `swa_attention_triton`'s in the last bit); o_res, for 16-bit inputs, the
    rounding residual of o (fp32 output - o, in q.dtype, 0 at padding; None for fp32); lse (B, H, T) fp32, the
    base-2 log-sum-exp of each row's scores times scale * log2(e) (entries at padded positions unwritten);
    seqs: the SequenceTable; w the window as an int (None -> the longest sequence). q, k, v contiguous. A caller
    that holds the SequenceTable of these lengths / cu_seqlens for this launch's blocks passes it as seqs: for
    padded and packed batches, building one syncs the host with the GPU."""
    B, T, H, Hkv, D = check_qkv(q, k, v)
    check_window(window)
    check_head_dim(D)
    cfg = block_config(D, dtype=q.dtype)
    if seqs is None:
        seqs = sequence_table(B, T, q.device, lengths, cu_seqlens, cfg["BM"])
    o = torch.zeros_like(q) if seqs.zero_fill else torch.empty_like(q)
    o_res = None if q.dtype == torch.float32 else torch.zeros_like(q) if seqs.zero_fill else torch.empty_like(q)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    w = seqs.max_len if window is None else min(window, seqs.max_len)
    launch_swa_fwd(q, k, v, o, seqs, window=w, scale=default_scale(D, scale), cfg=cfg, lse=lse, o_res=o_res)
    return o, o_res, lse, seqs, w


class SWAAttention(torch.autograd.Function):
    """SWA with a Triton forward and backward. forward(q, k, v, window, scale, lengths, cu_seqlens) -> o.
    First derivatives only."""

    @staticmethod
    def forward(ctx, q, k, v, window, scale, lengths, cu_seqlens):
        D = q.shape[-1]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, o_res, lse, seqs, w = swa_forward_with_lse(q, k, v, window=window, scale=scale, lengths=lengths,
                                                      cu_seqlens=cu_seqlens)
        ctx.save_for_backward(q, k, v, o, o_res, lse)
        ctx.seqs, ctx.window, ctx.scale = seqs, w, default_scale(D, scale)
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, o_res, lse = ctx.saved_tensors
        do = do.to(q.dtype).contiguous()
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        dq, dk, dv = launch_swa_bwd(do, q, k, v, o, o_res, lse, ctx.seqs, window=ctx.window, scale=ctx.scale,
                                    need_dq=need_q, need_dkdv=need_k or need_v)
        return dq, dk if need_k else None, dv if need_v else None, None, None, None, None


def swa_attention_triton_autograd(q, k, v, *, window, scale=None, lengths=None, cu_seqlens=None):
    """Sliding-window softmax attention with Triton forward and backward kernels (differentiable in q, k, v).

    Args:
        q: (B, T, H, D), already rotated; k, v: (B, T, Hkv, D); one dtype of fp16, bf16, fp32; D a power of
            two 16..256; any strides.
        window: previous tokens visible besides the token itself; None = full causal.
        scale: softmax scale, default D ** -0.5.
        lengths: (B,) valid tokens per row of a right-padded batch; cu_seqlens: (N+1,) packed offsets, B == 1.
    Returns:
        (B, T, H, D) in q.dtype, zero at padded positions; its gradients with respect to q, k, v come in
        their dtypes and are zero at padded positions.
    """
    check_qkv(q, k, v)
    check_window(window)
    check_head_dim(q.shape[-1])
    return SWAAttention.apply(q, k, v, window, scale, lengths, cu_seqlens)
