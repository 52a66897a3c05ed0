"""Residual linear attention (the RLA branch of RAttention) in Triton: the passes around the segment
kernel, and the standalone op.

o_t = phi(q_t) S_{t-w-1}, S_t = sum_{j<=t} phi(k_j)^T v_j. `rla_partials` runs the RLA branch in
five launches, shared by `residual_linear_attention_triton` and RAttention (rattention/fused.py, and the
training path, rattention/autograd.py):

1. `rla_phi_kernel` over the rows of k: phi(k) in k's dtype, fully parallel (and, for RAttention,
   k rotated by RoPE for the SWA pass, so no other pass reads the RoPE tables for k).
2. `rla_phi_kernel` over the rows of q: phi(q), so the segment kernel computes no feature map (and, for
   RAttention's training path, q rotated by RoPE).
   (The identity map skips both unless they rotate: phi(k) = k, phi(q) = q.)
3. `rla_segment_totals_kernel`: per segment of the sequence, the sum of phi(k)^T v over the keys its
   query chunks meet (one program per feature half, value slice, segment and KV head), fp32.
4. `rla_carry_kernel`: the exclusive prefix of the totals = the state each segment starts from.
5. `rla_segment_kernel` (segment.py): the raw output, one partial per feature half.

Steps 3 and 4 run only when a sequence spans several segments.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common import check_feature_map, check_qkv
from ..triton_common import (
    FEATURES, SequenceTable, cdiv, check_head_dim, dummy, feature_map_halves, precision_for, rope_launch_args,
    rope_rows, segment_program, sequence_table, tuning_row,
)
from ..swa.parallel import block_config
from .segment import launch_rla_segments, segment_config, segment_length

launch_counts: dict[str, int] = {"rla_phi_kernel": 0, "rla_segment_totals_kernel": 0, "rla_carry_kernel": 0}

# Launch settings of the passes before the segment kernel, edited by hand. 16-bit: tuned with the segment
# kernel on an H200 at T = 32k, w = 512 (rattention/README.md). phi_rows: rows per `rla_phi_kernel` program;
# scan_block: keys per step of the totals scan (the segment length is a multiple of it); scan_bv: value
# columns per totals program (None: the head dim); carry_block: state entries per `rla_carry_kernel`
# program (the interpreter's larger blocks mean fewer programs, which is what costs it time). The D 256
# rows (16-bit: passed the GPU tests, speed untuned) halve phi_rows, scan_block and the value slice, so the
# phi tile (rows x D), the key tile (scan_block x D) and the fp32 totals tile (D x scan_bv) hold as many
# elements as at D = 128.
PASS_TILES = MappingProxyType({
    "16-bit": MappingProxyType(dict(phi_rows=16, phi_warps=4, scan_block=128, scan_bv=64, scan_stages=2,
                                    carry_block=128)),
    "16-bit, D 256": MappingProxyType(dict(phi_rows=8, phi_warps=4, scan_block=64, scan_bv=32, scan_stages=2,
                                           carry_block=128)),
    "fp32": MappingProxyType(dict(phi_rows=32, phi_warps=4, scan_block=64, scan_bv=None, scan_stages=2,
                                  carry_block=128)),
    "fp32, D 256": MappingProxyType(dict(phi_rows=16, phi_warps=4, scan_block=32, scan_bv=64, scan_stages=2,
                                         carry_block=128)),
    "interpreter": MappingProxyType(dict(phi_rows=32, phi_warps=4, scan_block=16, scan_bv=None, scan_stages=2,
                                         carry_block=4096)),
})


@triton.jit
def rla_phi_kernel(x_ptr, phi_ptr, xr_ptr, cos_ptr, sin_ptr, T, HEADS, NROWS, stride_rope_b,
                   D: tl.constexpr, BR: tl.constexpr, FEATURE: tl.constexpr, ROPE: tl.constexpr,
                   STORE_PHI: tl.constexpr):
    """1-D grid (rows / BR * HEADS) over all B * T rows of x (B, T, HEADS, D): phi(x) (B, T, HEADS, F) in
    x's dtype (STORE_PHI) and, with ROPE, x rotated (xr) at table row t of batch row b. The heads of a
    row block launch together, so its table rows are read from HBM once."""
    NF: tl.constexpr = 1 if FEATURE == 2 else 2
    FD: tl.constexpr = NF * D
    hk = tl.program_id(0) % HEADS
    r = (tl.program_id(0) // HEADS).to(tl.int64) * BR + tl.arange(0, BR)
    ok = r < NROWS
    offs_d = tl.arange(0, D)
    rows = r.to(tl.int64) * (HEADS * D) + hk * D
    x = tl.load(x_ptr + rows[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    prow = r.to(tl.int64) * (HEADS * FD) + hk * FD
    if STORE_PHI:
        pdt = phi_ptr.dtype.element_ty
        pos, neg = feature_map_halves(x, FEATURE)
        tl.store(phi_ptr + prow[:, None] + offs_d[None, :], pos.to(pdt), mask=ok[:, None])
        if NF == 2:
            tl.store(phi_ptr + prow[:, None] + D + offs_d[None, :], neg.to(pdt), mask=ok[:, None])
    if ROPE:
        rp = stride_rope_b * (r // T).to(tl.int64) + (r % T).to(tl.int64) * D
        xr = rope_rows(x, x_ptr, rows, cos_ptr, sin_ptr, rp, ok, D)
        tl.store(xr_ptr + rows[:, None] + offs_d[None, :], xr.to(xr_ptr.dtype.element_ty), mask=ok[:, None])


@triton.jit
def rla_segment_totals_kernel(
    phi_ptr, v_ptr, totals_ptr, seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, Hkv, window, SEGLEN, NSEG,
    D: tl.constexpr, NF: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
):
    """1-D grid over (sequences * Hkv, segments, NF * D/BV), the last fastest (a 1-D grid has no 65535
    limit on any factor): the programs that share a key tile (its feature halves and value slices)
    launch next to each other, so the tile comes from HBM once. Segment s of a sequence holds the query
    rows [s * SEGLEN, (s + 1) * SEGLEN), whose chunks meet the keys shifted back by the window; one
    program sums phi_f(k_j)^T v_j (D x BV, fp32) over those keys for one feature half f and one value
    slice, BT keys per step, and stores it to totals (sequences, Hkv, NSEG, NF * D, D)."""
    NV: tl.constexpr = D // BV
    FD: tl.constexpr = NF * D
    iv, f, seg, n, hk, L, t_first, t_end, tok0 = segment_program(
        tl.program_id(0), Hkv, NSEG, SEGLEN, T, seq_len_ptr, seq_row_ptr, seq_start_ptr, NF, NV)
    if t_first >= L:
        return
    dt = phi_ptr.dtype.element_ty

    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, D)
    offs_v = iv * BV + tl.arange(0, BV)
    s = tl.zeros([D, BV], dtype=tl.float32)
    for t0 in range(t_first, t_end, BT):
        offs_j = t0 - window + offs_t
        ok = (offs_j >= 0) & (offs_j < L)
        rows = (tok0 + offs_j).to(tl.int64)
        v = tl.load(v_ptr + (rows * (Hkv * D) + hk * D)[:, None] + offs_v[None, :], mask=ok[:, None], other=0.0)
        pk = tl.load(phi_ptr + (rows * (Hkv * FD) + hk * FD + f * D)[:, None] + offs_d[None, :], mask=ok[:, None],
                     other=0.0)
        s += tl.dot(tl.trans(pk.to(dt)), v.to(dt), input_precision=PRECISION)
    out = totals_ptr + ((n * Hkv + hk).to(tl.int64) * NSEG + seg) * (FD * D)
    tl.store(out + (f * D + offs_d)[:, None] * D + offs_v[None, :], s)


@triton.jit
def rla_carry_kernel(totals_ptr, seq_len_ptr, Hkv, NSEG, SEGLEN, SIZE, SB: tl.constexpr, BLK: tl.constexpr):
    """Grid (sequences * Hkv, SIZE / BLK). Replace the segment totals (fp32, SIZE elements each) of each
    sequence's segments by their exclusive prefix sums, in place, SB segments per step."""
    n = tl.program_id(0) // Hkv
    nseg = tl.cdiv(tl.load(seq_len_ptr + n), SEGLEN)
    offs = tl.program_id(1) * BLK + tl.arange(0, BLK)
    ok = offs < SIZE
    base = totals_ptr + tl.program_id(0).to(tl.int64) * NSEG * SIZE
    run = tl.zeros([BLK], dtype=tl.float32)
    for s0 in range(0, nseg, SB):
        segs = s0 + tl.arange(0, SB)
        m = (segs < nseg)[:, None] & ok[None, :]
        ptr = base + segs.to(tl.int64)[:, None] * SIZE + offs[None, :]
        x = tl.load(ptr, mask=m, other=0.0)
        c = tl.cumsum(x, axis=0)
        tl.store(ptr, c - x + run[None, :], mask=m)
        run += tl.sum(x, axis=0)


def launch_phi_pass(x, phi, xr, rope, feature, rows, num_warps):
    """`rla_phi_kernel` over every row of x (B, T, heads, D), `rows` rows per program: phi(x) into phi
    (skipped when phi is None) and, with rope, x rotated into xr."""
    B, T, heads, D = x.shape
    cos, sin, stride_rope_b = rope_launch_args(rope, D, x.device)
    rla_phi_kernel[(cdiv(B * T, rows) * heads,)](
        x, phi if phi is not None else dummy(x.device), xr if rope is not None else x, cos, sin, T, heads, B * T,
        stride_rope_b, D=D, BR=rows, FEATURE=feature, ROPE=rope is not None, STORE_PHI=phi is not None,
        num_warps=num_warps)
    launch_counts["rla_phi_kernel"] += 1


def rla_segment_carry(phi_k, v, seqs: SequenceTable, *, window, seg_len, block, block_v=None, num_stages=2,
                      carry_block=128):
    """The state each segment of `seg_len` rows starts from (segment.py), for the keys
    j < segment * seg_len - window: (sequences, Hkv, segments, F, D) fp32, or None with one segment.

    phi_k: phi(k) (B, T, Hkv, F), F = 2D (two feature halves) or D (identity); `block` keys per step of
    the totals scan (seg_len must be a multiple), `block_v` value columns per program (default D),
    `carry_block` state entries per program of the prefix over segments (a power of two)."""
    B, T, Hkv, D = v.shape
    FD = phi_k.shape[-1]
    if seg_len % block:
        raise ValueError(f"segment length {seg_len} must be a multiple of the scan block {block}")
    BV = min(block_v or D, D)
    if D % BV or BV < 16:
        raise ValueError(f"scan value slice {BV} must divide the head dim {D} and be at least 16 (tensor-core tiles)")
    nseg = cdiv(seqs.max_len, seg_len)
    if seqs.count == 0 or nseg <= 1:
        return None
    totals = torch.empty(seqs.count, Hkv, nseg, FD, D, dtype=torch.float32, device=v.device)
    rla_segment_totals_kernel[(FD // D * (D // BV) * nseg * seqs.count * Hkv,)](
        phi_k, v, totals, seqs.row, seqs.start, seqs.length, T, Hkv, window, seg_len, nseg,
        D=D, NF=FD // D, BT=block, BV=BV, PRECISION=precision_for(v.dtype), num_warps=4 if D <= 64 else 8,
        num_stages=num_stages)
    launch_counts["rla_segment_totals_kernel"] += 1
    rla_carry_kernel[(seqs.count * Hkv, cdiv(FD * D, carry_block))](
        totals, seqs.length, Hkv, nseg, seg_len, FD * D, SB=16, BLK=carry_block, num_warps=4)
    launch_counts["rla_carry_kernel"] += 1
    return totals


def rla_partials(q, k, v, seqs: SequenceTable, *, window, feature, raw_dtype, kr=None, rope=None, qr=None):
    """The raw RLA output (no norm) as partials that sum to it: (NF, B, T, H, D) in raw_dtype, NF = 2 for
    the softmax / relu maps (one partial per feature half) and 1 for identity. Written at every row of
    every sequence; rows of no sequence are zero. With rope (tables for `launch_phi_pass`), also writes k
    rotated into kr (B, T, Hkv, D), for RAttention's SWA pass, and q rotated into qr when given.

    q, k, v contiguous, of one dtype; window an int <= the longest sequence; feature a FEATURES code."""
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    nf = 1 if feature == FEATURES["identity"] else 2
    alloc = torch.zeros if seqs.zero_fill else torch.empty
    raw = alloc((nf, B, T, H, D), dtype=raw_dtype, device=q.device)
    if seqs.count == 0:
        return raw
    tiles = tuning_row(PASS_TILES, q.dtype, D)
    seg_cfg = segment_config(D, q.dtype)
    seg_len = segment_length(seqs, H * nf * (D // seg_cfg["BV"]), seg_cfg["BC"], tiles["scan_block"],
                             seg_cfg["programs_per_sm"], q.device)
    phi_k, phi_q = k, q  # identity: phi(x) = x
    if nf == 2:
        phi_k = torch.empty(B, T, Hkv, 2 * D, dtype=k.dtype, device=k.device)
        phi_q = torch.empty(B, T, H, 2 * D, dtype=q.dtype, device=q.device)
    if nf == 2 or rope is not None:
        launch_phi_pass(k, phi_k if nf == 2 else None, kr, rope, feature, tiles["phi_rows"], tiles["phi_warps"])
    q_rope = rope if qr is not None else None
    if nf == 2 or q_rope is not None:
        launch_phi_pass(q, phi_q if nf == 2 else None, qr, q_rope, feature, tiles["phi_rows"], tiles["phi_warps"])
    carry = rla_segment_carry(phi_k, v, seqs, window=window, seg_len=seg_len, block=tiles["scan_block"],
                              block_v=tiles["scan_bv"], num_stages=tiles["scan_stages"],
                              carry_block=tiles["carry_block"])
    return launch_rla_segments(phi_q, phi_k, v, raw, seqs, window=window, cfg=seg_cfg, seg_len=seg_len, carry=carry)


def check_rla_args(q, k, v, window, feature_map):
    B, T, H, Hkv, D = check_qkv(q, k, v)
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(f"residual linear attention needs a non-negative int window, got {window!r}")
    check_feature_map(feature_map)
    check_head_dim(D)
    return B, T, H, Hkv, D


def prepare_rla_launch(q, k, v, window, feature_map, lengths, cu_seqlens):
    """Validated, contiguous inputs and the launch state shared by the RLA and RAttention launchers:
    (q, k, v, seqs, the SWA pass's tiles, window clipped to the longest sequence, feature-map code)."""
    B, T, H, Hkv, D = check_rla_args(q, k, v, window, feature_map)
    cfg = block_config(D, dtype=q.dtype)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # one dtype (check_qkv)
    seqs = sequence_table(B, T, q.device, lengths, cu_seqlens, cfg["BM"])
    return q, k, v, seqs, cfg, min(window, seqs.max_len), FEATURES[feature_map]


def residual_linear_attention_triton(q, k, v, *, window, feature_map="softmax", lengths=None, cu_seqlens=None,
                                     out_dtype=None):
    """o_t = phi(q_t) S_{t-window-1}, S_t = sum_{j<=t} phi(k_j)^T v_j, in Triton.

    Args:
        q: (B, T, H, D) raw; k, v: (B, T, Hkv, D) raw; fp16, bf16 or fp32; D a power of two 16..256.
        window: int >= 0; feature_map: "softmax" | "relu" | "identity".
        lengths: (B,) for right-padded batches; cu_seqlens: (N+1,) packed offsets, B == 1.
        out_dtype: the output's dtype (default q.dtype).
    Returns:
        (B, T, H, D) in out_dtype, accumulated in fp32; exactly zero for t <= window and at padding.
    """
    q, k, v, seqs, _, w, feature = prepare_rla_launch(q, k, v, window, feature_map, lengths, cu_seqlens)
    raw = rla_partials(q, k, v, seqs, window=w, feature=feature, raw_dtype=torch.float32)  # summed, then rounded once
    return (raw[0] + raw[1] if raw.shape[0] == 2 else raw[0]).to(out_dtype or q.dtype)
