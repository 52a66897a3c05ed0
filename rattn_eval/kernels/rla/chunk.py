"""Residual linear attention (the RLA branch of RAttention) in Triton, chunked.

o_t = phi(q_t) S_{t-w-1}. With query blocks of BM rows starting at s0, row t needs the keys
j <= t - w - 1. Split them at the boundary s0 - w:

    keys j <  s0 - w        -> phi(q_t) @ S(s0 - w), a chunk state (this file computes them)
    keys s0 - w <= j < t - w -> a masked phi(q) phi(k)^T v over at most BM keys, which are exactly
                               the window-edge key tiles of the SWA kernel (swa/parallel.py)

So the output pass is `swa_fwd_kernel` with DO_RLA (and, for RAttention, DO_SWA as well).

Chunk states are per KV head (the state depends on k and v only), accumulated in fp32 and
stored once per state block: fp32 for fp32/fp16 inputs, bf16 for bf16 inputs (the output pass
feeds them to bf16 tensor-core products anyway). Optionally a fully parallel pre-pass writes
phi(k) first, so the scan only loads and multiplies. The sequential scan over blocks is cut into
segments that run in parallel, one program per (feature half, value slice, segment, KV head);
each stores its states relative to the segment start plus the segment total, and a carry pass
turns the totals into exclusive prefixes, which the output pass adds to the state tile it reads
(or, carry mode "rescan", a second scan starts from the carry and stores absolute states).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..common import cdiv, check_feature_map, check_qkv
from ..swa.parallel import (
    INTERPRET, RLA_TUNING, SequenceTable, _dummy, block_config, check_head_dim, feature_map_halves, feature_map_one,
    launch_swa_fwd, precision_for, rope_launch_args, rope_rows, sequence_table,
)

FEATURES = {"softmax": 0, "relu": 1, "identity": 2}

launch_counts: dict[str, int] = {"rla_chunk_state_kernel": 0, "rla_segment_totals": 0, "rla_carry_kernel": 0,
                                 "rla_phi_kernel": 0, "rla_phi_kernel_phi": 0, "rla_segment_totals_slices": 0}


@triton.jit
def rla_chunk_state_kernel(
    k_ptr, v_ptr, kr_ptr, cos_ptr, sin_ptr, states_ptr, carry_ptr, phi_ptr,
    seq_row_ptr, seq_start_ptr, seq_len_ptr, state_base_ptr,
    T, Hkv, window, BPS, NSEG, stride_rope_b,
    D: tl.constexpr, BS: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr,
    ROPE: tl.constexpr, PRECISION: tl.constexpr, STORE_STATES: tl.constexpr, STORE_TOTAL: tl.constexpr,
    HAS_CARRY: tl.constexpr, FROM_PHI: tl.constexpr,
):
    """1-D grid over (sequences * Hkv, segments, halves * D/BV), the last fastest (a 1-D grid has no
    65535 limit on any factor): the programs that share a key tile (its two feature halves
    phi(x) = [f(x), f(-x)] and its value slices) launch next to each other, so the tile comes from HBM once. One program scans the state blocks of one segment for one feature half and
    one value slice, BT keys per step. State block m' holds the keys [m'*BS - window, (m'+1)*BS - window).

    STORE_STATES: store, before adding block m, the running state at every block m (states
    (blocks, Hkv, F, D)): relative to the segment start, or absolute when the scan starts from the
    segment's carry (HAS_CARRY, carry (sequences, Hkv, NSEG, F, D) fp32).
    ROPE: also write k rotated (kr) for the SWA branch: each of the programs sharing a key tile
    rotates a slice of its rows.
    STORE_TOTAL: store the segment total (fp32) into carry, for `rla_carry_kernel`.
    FROM_PHI: read phi(k) (B, T, Hkv, F) written by `rla_phi_kernel` instead of computing it."""
    NV: tl.constexpr = D // BV
    NF: tl.constexpr = 1 if FEATURE == 2 else 2
    FD: tl.constexpr = NF * D
    NSUB: tl.constexpr = BS // BT
    pid = tl.program_id(0)
    p = pid % (NF * NV)  # this program's place among the sharers of a key tile
    f = p // NV
    iv = p % NV
    seg = (pid // (NF * NV)) % NSEG
    nh = pid // (NF * NV * NSEG)
    n = nh // Hkv
    hk = nh % Hkv
    L = tl.load(seq_len_ptr + n)
    nb = tl.cdiv(L, BS)
    m0 = seg * BPS
    if m0 >= nb:
        return
    m1 = tl.minimum(m0 + BPS, nb)
    start = tl.load(seq_start_ptr + n)
    row = tl.load(seq_row_ptr + n).to(tl.int64)
    tok0 = row * T + start
    sbase = tl.load(state_base_ptr + n).to(tl.int64)
    dt = k_ptr.dtype.element_ty
    sign_f = tl.where(f == 0, 1.0, -1.0)

    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, D)
    offs_v = iv * BV + tl.arange(0, BV)
    s_off = (f * D + offs_d)[:, None] * D + offs_v[None, :]
    cr = carry_ptr + ((n * Hkv + hk).to(tl.int64) * NSEG + seg) * (FD * D)
    if HAS_CARRY:
        s = tl.load(cr + s_off)
    else:
        s = tl.zeros([D, BV], dtype=tl.float32)
    for i in range(m0 * NSUB, m1 * NSUB):
        if STORE_STATES:
            if i % NSUB == 0:
                st = states_ptr + ((sbase + i // NSUB) * Hkv + hk) * (FD * D)
                tl.store(st + s_off, s.to(states_ptr.dtype.element_ty))
        offs_j = i * BT - window + offs_t
        ok = (offs_j >= 0) & (offs_j < L)
        rows = (tok0 + offs_j).to(tl.int64) * (Hkv * D) + hk * D
        v = tl.load(v_ptr + rows[:, None] + offs_v[None, :], mask=ok[:, None], other=0.0).to(dt)
        if FROM_PHI:
            prow = (tok0 + offs_j).to(tl.int64) * (Hkv * FD) + hk * FD + f * D
            pk = tl.load(phi_ptr + prow[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(dt)
            s += tl.dot(tl.trans(pk), v, input_precision=PRECISION)
        else:
            kx = tl.load(k_ptr + rows[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32) * sign_f
            pk = feature_map_one(kx, FEATURE)
            pk = tl.where(ok[:, None], pk, 0.0)  # phi(0) is not 0 for softmax: drop the padding rows
            s += tl.dot(tl.trans(pk.to(dt)), v, input_precision=PRECISION)
        if ROPE:
            # the NF * NV programs of this tile each rotate a slice of its rows (balanced work)
            RB: tl.constexpr = BT // (NF * NV)
            offs_r = i * BT + p * RB + tl.arange(0, RB)
            rok = offs_r < L
            rrows = (tok0 + offs_r).to(tl.int64) * (Hkv * D) + hk * D
            x = tl.load(k_ptr + rrows[:, None] + offs_d[None, :], mask=rok[:, None], other=0.0).to(tl.float32)
            rp = stride_rope_b * row + (start + offs_r).to(tl.int64) * D
            xr = rope_rows(x, k_ptr, rrows, cos_ptr, sin_ptr, rp, rok, D)
            tl.store(kr_ptr + rrows[:, None] + offs_d[None, :], xr.to(kr_ptr.dtype.element_ty), mask=rok[:, None])
    if STORE_TOTAL:
        tl.store(cr + s_off, s)


@triton.jit
def rla_phi_kernel(k_ptr, phi_ptr, kr_ptr, cos_ptr, sin_ptr, T, Hkv, NROWS, stride_rope_b,
                   D: tl.constexpr, BR: tl.constexpr, FEATURE: tl.constexpr, ROPE: tl.constexpr,
                   STORE_PHI: tl.constexpr = True):
    """1-D grid (rows / BR * Hkv) over all B * T rows: phi(k) (B, T, Hkv, F) in k's dtype (STORE_PHI)
    and, with ROPE, k rotated (kr) at table row t of batch row b (as the scan would). The heads of a
    row block launch together, so its table rows are read from HBM once."""
    NF: tl.constexpr = 1 if FEATURE == 2 else 2
    FD: tl.constexpr = NF * D
    hk = tl.program_id(0) % Hkv
    r = (tl.program_id(0) // Hkv).to(tl.int64) * BR + tl.arange(0, BR)
    ok = r < NROWS
    offs_d = tl.arange(0, D)
    rows = r.to(tl.int64) * (Hkv * D) + hk * D
    x = tl.load(k_ptr + rows[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    prow = r.to(tl.int64) * (Hkv * FD) + hk * FD
    if STORE_PHI:
        pdt = phi_ptr.dtype.element_ty
        pos, neg = feature_map_halves(x, FEATURE)
        tl.store(phi_ptr + prow[:, None] + offs_d[None, :], pos.to(pdt), mask=ok[:, None])
        if NF == 2:
            tl.store(phi_ptr + prow[:, None] + D + offs_d[None, :], neg.to(pdt), mask=ok[:, None])
    if ROPE:
        rp = stride_rope_b * (r // T).to(tl.int64) + (r % T).to(tl.int64) * D
        xr = rope_rows(x, k_ptr, rows, cos_ptr, sin_ptr, rp, ok, D)
        tl.store(kr_ptr + rows[:, None] + offs_d[None, :], xr.to(kr_ptr.dtype.element_ty), mask=ok[:, None])


@triton.jit
def rla_carry_kernel(totals_ptr, out_ptr, seq_len_ptr, Hkv, NSEG, BPS, SIZE, BS: tl.constexpr, SB: tl.constexpr,
                     BLK: tl.constexpr):
    """Grid (sequences * Hkv, SIZE/BLK). Write the exclusive prefix sums of the segment totals
    (fp32) to out (same layout; fp32, possibly in place, or the states' dtype), SB segments per step."""
    n = tl.program_id(0) // Hkv
    nseg = tl.cdiv(tl.cdiv(tl.load(seq_len_ptr + n), BS), BPS)
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
        optr = out_ptr + tl.program_id(0).to(tl.int64) * NSEG * SIZE + segs.to(tl.int64)[:, None] * SIZE + offs[None, :]
        tl.store(optr, (c - x + run[None, :]).to(out_ptr.dtype.element_ty), mask=m)
        run += tl.sum(x, axis=0)


def launch_phi_pass(k, phi, kr, rope, feature, rows=32, num_warps=4):
    """`rla_phi_kernel` over every row of k (`rows` rows per program): phi(k) into phi (skipped when
    phi is None) and, with rope, k rotated into kr."""
    B, T, Hkv, D = k.shape
    cos, sin, stride_rope_b = rope_launch_args(rope, D, k.device)
    br = rows
    rla_phi_kernel[(cdiv(B * T, br) * Hkv,)](k, phi if phi is not None else _dummy(k.device),
                                           kr if rope is not None else k, cos, sin, T, Hkv, B * T, stride_rope_b,
                                           D=D, BR=br, FEATURE=feature, ROPE=rope is not None,
                                           STORE_PHI=phi is not None, num_warps=num_warps)
    launch_counts["rla_phi_kernel"] += 1
    launch_counts["rla_phi_kernel_phi"] += phi is not None


def launch_carry(totals, out, seqs: SequenceTable, nseg: int, blocks_per_segment: int, block: int):
    """`rla_carry_kernel`: out (may be totals itself) = exclusive prefix over segments of totals
    (sequences, Hkv, nseg, F, D)."""
    Hkv, size = totals.shape[1], totals.shape[3] * totals.shape[4]
    blk = 128
    rla_carry_kernel[(seqs.count * Hkv, cdiv(size, blk))](totals, out, seqs.length, Hkv, nseg, blocks_per_segment, size,
                                                         BS=block, SB=16, BLK=blk, num_warps=4)
    launch_counts["rla_carry_kernel"] += 1


def _num_sms(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


class ChunkStates(NamedTuple):
    """RLA chunk states for the output pass. State block m of a sequence (index base[seq] + m of
    `states`) holds sum phi(k_j)^T v_j over j < m*block - window; with `carry`, `states` holds that
    sum relative to the start of its segment (blocks m // per_segment) and carry[seq, hk, segment]
    (fp32) the rest."""
    states: torch.Tensor  # (blocks, Hkv, F, D): bf16 for bf16 inputs, fp32 otherwise
    carry: torch.Tensor | None  # (sequences, Hkv, segments, F, D) fp32 or the states' dtype; None: states absolute
    block: int
    per_segment: int
    base: torch.Tensor  # (sequences,) int32
    phi: torch.Tensor | None = None  # phi(k) (B, T, Hkv, F) when the pre-pass wrote it (the output pass may read it)


CARRY_MODES = ("fold", "rescan")


def rla_prefix_states(k, v, seqs: SequenceTable, *, window, feature, cfg, kr=None, rope=None, blocks_per_segment=None,
                      block_v=None, num_warps=None, programs_per_sm=None, state_block=None, block_t=None, carry=None,
                      num_stages=None, carry_dtype=None, phi_pass=None) -> ChunkStates:
    """Chunk states at every state-block boundary (m * state_block - window) of every sequence.

    The scan over blocks is cut into segments that run in parallel, one program per (feature half,
    value slice, segment, sequence, KV head), each holding a [D, BV] fp32 accumulator. With several
    segments, carry mode
      "fold" (one scan): the scan stores states relative to its segment and the segment total; the
        carry pass turns the totals into exclusive prefixes, which the output pass adds;
      "rescan": a totals scan, the carry pass, then a second scan from the carry that stores
        absolute states (the output pass reads one tile, but k and v are scanned twice).

    Args: k, v (B, T, Hkv, D) contiguous; kr: (B, T, Hkv, D) output for rotated k (with rope);
      state_block: rows per state block, a multiple of the output pass's BM (default BM);
      block_t: keys per scan step, dividing state_block (default state_block);
      carry_dtype ("fold"): "fp32" (default), "state" (the states' dtype: half the bytes the output
        pass reads) or a torch dtype; the prefix sums themselves are always accumulated in fp32;
      phi_pass: a first, fully parallel pass writes phi(k) (and rotated k), so the scan only
        loads and multiplies (default: the scan computes phi(k) itself).
    """
    B, T, Hkv, D = k.shape
    # the tuned settings are for bf16 inputs, whose states are stored in bf16: with fp16 / fp32 inputs the
    # states are fp32 and the tuned 3-stage scan needs 256 KiB of shared memory (H200 limit 227 KiB)
    tuned = RLA_TUNING["state"] if k.dtype == torch.bfloat16 and not INTERPRET else {}
    block_v = block_v or tuned.get("block_v")
    num_warps = num_warps or tuned.get("num_warps")
    num_stages = num_stages or tuned.get("num_stages") or 2
    programs_per_sm = programs_per_sm or tuned.get("programs_per_sm")
    BS = state_block or tuned.get("state_block") or cfg["BM"]
    if not state_block and BS % cfg["BM"]:
        BS = cfg["BM"]  # the tuned block does not fit these tiles (e.g. fp32 inputs)
    BT = min(block_t or tuned.get("block_t") or BS, BS)
    if not block_t and BS % BT:
        BT = BS
    carry = carry or tuned.get("carry") or "fold"
    carry_dtype = carry_dtype or tuned.get("carry_dtype") or "fp32"
    phi_pass = tuned.get("phi_pass", False) if phi_pass is None else phi_pass
    if BS % cfg["BM"] or BS % BT or carry not in CARRY_MODES:
        raise ValueError(f"state block {BS} must be a multiple of BM = {cfg['BM']} and of the scan step {BT}; "
                         f"carry one of {CARRY_MODES}, got {carry!r}")
    nf = 1 if feature == 2 else 2
    FD = nf * D
    BV = min(block_v or D, D)  # one value slice: phi(k) is computed once per key block and half
    nv = D // BV
    if BT < nf * nv:
        raise ValueError(f"scan step {BT} is smaller than the {nf * nv} programs that share a key tile (block_v {BV})")
    nb_max = cdiv(seqs.max_len, BS)
    if blocks_per_segment is None:
        if INTERPRET:
            blocks_per_segment = 2  # several segments even at test sizes, so the carry path runs
        else:
            want = max(1, cdiv((programs_per_sm or 2) * _num_sms(k.device), max(1, seqs.count * Hkv * nf * nv)))
            blocks_per_segment = max(2 if carry == "fold" else 4, cdiv(nb_max, want))
    nseg = max(1, cdiv(nb_max, blocks_per_segment))
    base, total = seqs.blocks_of(BS)
    sdt = torch.bfloat16 if k.dtype == torch.bfloat16 else torch.float32
    states = torch.empty(max(total, 1), Hkv, FD, D, dtype=sdt, device=k.device)
    several = nseg > 1 and seqs.count > 0
    carry_t = torch.empty(seqs.count, Hkv, nseg, FD, D, dtype=torch.float32, device=k.device) if several else None
    cdt = {"fp32": torch.float32, "state": sdt}.get(carry_dtype, carry_dtype)
    carry_out = carry_t
    if several and carry == "fold" and cdt != torch.float32:
        carry_out = torch.empty(carry_t.shape, dtype=cdt, device=k.device)
    result = ChunkStates(states, carry_out if carry == "fold" else None, BS, blocks_per_segment, base)
    if seqs.count == 0:
        return result
    cos, sin, stride_rope_b = rope_launch_args(rope, D, k.device)
    phi = None
    if phi_pass:
        phi = torch.empty(B, T, Hkv, FD, dtype=k.dtype, device=k.device)
        launch_phi_pass(k, phi, kr, rope, feature)
    grid = (nf * nv * nseg * seqs.count * Hkv,)
    args = (k, v, kr if kr is not None else k, cos, sin, states, carry_t if several else states,
            phi if phi is not None else k, seqs.row, seqs.start, seqs.length, base, T, Hkv, window,
            blocks_per_segment, nseg, stride_rope_b)
    meta = dict(D=D, BS=BS, BT=BT, BV=BV, FEATURE=feature, PRECISION=precision_for(k.dtype),
                num_warps=num_warps or (4 if D <= 64 else 8), num_stages=num_stages, FROM_PHI=phi is not None)
    scan_rope = rope is not None and phi is None
    result = result._replace(phi=phi)

    def carry_pass():
        launch_carry(carry_t, carry_out, seqs, nseg, blocks_per_segment, BS)

    if several and carry == "rescan":
        rla_chunk_state_kernel[grid](*args, ROPE=False, STORE_STATES=False, STORE_TOTAL=True, HAS_CARRY=False, **meta)
        launch_counts["rla_segment_totals"] += 1
        carry_pass()
        rla_chunk_state_kernel[grid](*args, ROPE=scan_rope, STORE_STATES=True, STORE_TOTAL=False, HAS_CARRY=True,
                                     **meta)
    else:
        rla_chunk_state_kernel[grid](*args, ROPE=scan_rope, STORE_STATES=True, STORE_TOTAL=several,
                                     HAS_CARRY=False, **meta)
        if several:
            carry_pass()
    launch_counts["rla_chunk_state_kernel"] += 1
    return result


def rla_segment_carry(k, v, seqs: SequenceTable, *, window, feature, seg_len, block, kr=None, rope=None,
                      num_warps=None, num_stages=2, phi_pass=False, phi_rows=32, phi_warps=4, on_phi=None,
                      phi_store=True, block_v=None):
    """The state each segment of `seg_len` rows starts from (rla/segment.py), for the keys
    j < segment * seg_len - window: (sequences, Hkv, segments, F, D) fp32, or None with one segment.
    A totals scan (`block` keys per step, one program per feature half and segment) and the carry
    pass. With rope, also writes k rotated into kr (in the scan, or in a rotation-only pass when
    there is a single segment). phi_pass: `rla_phi_kernel` first writes phi(k) (and kr), the scan
    reads it (phi_rows / phi_warps: its launch settings). on_phi: called once k is rotated (after the
    phi pass, or after the scan when the scan rotates k itself), e.g. to start the SWA pass on another
    stream. phi_store=False (with phi_pass): the pass only rotates k, and the scan computes phi(k)
    itself. block_v: value columns per scan program (default D; smaller: more, smaller programs).
    Returns (carry, phi) with phi None without phi_pass or phi_store."""
    B, T, Hkv, D = k.shape
    if seg_len % block:
        raise ValueError(f"segment length {seg_len} must be a multiple of the scan block {block}")
    nf = 1 if feature == 2 else 2
    FD = nf * D
    nseg = cdiv(seqs.max_len, seg_len)
    if seqs.count == 0:
        return None, None
    BV = min(block_v or D, D)
    if D % BV or BV < 16:
        raise ValueError(f"scan value slice {BV} must divide the head dim {D} and be at least 16 (tensor-core tiles)")
    nv = D // BV
    if nseg > 1 and rope is not None and not phi_pass and block < nf * nv:
        raise ValueError(f"scan block {block} is smaller than the {nf * nv} programs that rotate its rows")
    phi_pass = phi_pass and (phi_store or rope is not None)  # a pass that would write nothing is skipped
    phi = torch.empty(B, T, Hkv, FD, dtype=k.dtype, device=k.device) if phi_pass and phi_store else None
    if phi_pass or (nseg <= 1 and rope is not None):
        launch_phi_pass(k, phi, kr, rope, feature, phi_rows, phi_warps)
    rotated_by_scan = rope is not None and not phi_pass and nseg > 1
    if on_phi is not None and not rotated_by_scan:
        on_phi()
    if nseg <= 1:
        return None, phi
    cos, sin, stride_rope_b = rope_launch_args(rope, D, k.device)
    carry = torch.empty(seqs.count, Hkv, nseg, FD, D, dtype=torch.float32, device=k.device)
    rla_chunk_state_kernel[(nf * nv * nseg * seqs.count * Hkv,)](
        k, v, kr if kr is not None else k, cos, sin, _dummy(k.device), carry, phi if phi is not None else k, seqs.row, seqs.start,
        seqs.length, seqs.block_base, T, Hkv, window, seg_len // block, nseg, stride_rope_b,
        D=D, BS=block, BT=block, BV=BV, FEATURE=feature, ROPE=rope is not None and not phi_pass,
        PRECISION=precision_for(k.dtype), STORE_STATES=False, STORE_TOTAL=True, HAS_CARRY=False, FROM_PHI=phi is not None,
        num_warps=num_warps or (4 if D <= 64 else 8), num_stages=num_stages)
    launch_counts["rla_segment_totals"] += 1
    launch_counts["rla_segment_totals_slices"] += nv
    if on_phi is not None and rotated_by_scan:
        on_phi()
    launch_carry(carry, carry, seqs, nseg, seg_len // block, block)
    return carry, phi


def check_rla_args(q, k, v, window, feature_map):
    B, T, H, Hkv, D = check_qkv(q, k, v)
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(f"residual linear attention needs a non-negative int window, got {window!r}")
    check_feature_map(feature_map)
    check_head_dim(D, rla=True)
    return B, T, H, Hkv, D


def prepare_rla_launch(q, k, v, window, feature_map, lengths, cu_seqlens, cfg=None):
    """Validated, contiguous inputs and the launch state shared by the RLA and RAttention launchers:
    (q, k, v, out, seqs, cfg, window clipped to the longest sequence, feature-map code)."""
    B, T, H, Hkv, D = check_rla_args(q, k, v, window, feature_map)
    cfg = cfg or block_config(D, rla=True, dtype=q.dtype)
    q, k, v = q.contiguous(), k.to(q.dtype).contiguous(), v.to(q.dtype).contiguous()
    seqs = sequence_table(B, T, q.device, lengths, cu_seqlens, cfg["BM"])
    out = torch.zeros_like(q) if seqs.zero_fill else torch.empty_like(q)
    return q, k, v, out, seqs, cfg, min(window, seqs.max_len), FEATURES[feature_map]


def residual_linear_attention_triton(q, k, v, *, window, feature_map="softmax", lengths=None, cu_seqlens=None):
    """o_t = phi(q_t) S_{t-window-1}, S_t = sum_{j<=t} phi(k_j)^T v_j, in Triton.

    Args:
        q: (B, T, H, D) raw; k, v: (B, T, Hkv, D) raw; fp16, bf16 or fp32; D a power of two 16..128.
        window: int >= 0; feature_map: "softmax" | "relu" | "identity".
        lengths: (B,) for right-padded batches; cu_seqlens: (N+1,) packed offsets, B == 1.
    Returns:
        (B, T, H, D) in q.dtype, accumulated in fp32; exactly zero for t <= window and at padding.
    """
    q, k, v, out, seqs, cfg, w, feature = prepare_rla_launch(q, k, v, window, feature_map, lengths, cu_seqlens)
    states = rla_prefix_states(k, v, seqs, window=w, feature=feature, cfg=cfg)
    return launch_swa_fwd(q, k, v, out, seqs, window=w, scale=1.0, cfg=cfg, states=states, do_swa=False, do_rla=True,
                          feature=feature)
