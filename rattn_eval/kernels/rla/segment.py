"""Residual linear attention in Triton, recurrent within segments: no chunk states in HBM.

o_t = phi(q_t) S_{t-w-1}. Shift the keys by w: a chunk of BC query rows starting at t0 meets the
key chunk starting at t0 - w, and inside that pair query row c sees key row c' when c > c'
(t - j = w + c - c' > w). One program walks the query chunks of one segment for one head, one
feature half f of phi = [f(x), f(-x)] and one slice of value columns, holding its slice of the
state S_f (D x BV, fp32) in registers:

    o_f  = phi_f(q) @ S_f + tril(phi_f(q) phi_f(k)^T, -1) @ v      (raw, unnormalized)
    S_f += phi_f(k)^T @ v

and writes o_f, the partial of feature half f; the partials sum to o_rla. The state a segment
starts from is the exclusive prefix of the segment totals (`rla_segment_carry` in chunk.py), so the
segments run in parallel; phi(q) and phi(k) come from the pre-passes of chunk.py.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..triton_common import (INTERPRET, SequenceTable, cdiv, dummy, num_sms, precision_for, segment_carry,
                             segment_program, tuning_row)

launch_counts: dict[str, int] = {"rla_segment_kernel": 0}

# Launch settings of `rla_segment_kernel`, edited by hand. 16-bit: fastest on an H200 at T = 32k, w = 512,
# Hkv 16 and 4 (rattention/README.md); fp32 tiles take twice the shared memory; the interpreter: one value
# slice up to D = 128 (BV is capped at the head dim), two at 256, and 32-row chunks cost it least. BC: query
# rows per chunk; BV: value columns per program; programs_per_sm: the grid `segment_length` aims for. The
# D 256 rows (16-bit: passed the GPU tests, speed untuned) halve BV, so the fp32 state slice (D x BV) is
# as large as at D = 128, and BC, so the phi(q) / phi(k) chunks (BC x D) are too.
SEGMENT_TILES = MappingProxyType({
    "16-bit": MappingProxyType(dict(BC=64, BV=64, num_warps=4, num_stages=3, programs_per_sm=8)),
    "16-bit, D 256": MappingProxyType(dict(BC=32, BV=32, num_warps=4, num_stages=3, programs_per_sm=8)),
    "fp32": MappingProxyType(dict(BC=32, BV=64, num_warps=4, num_stages=2, programs_per_sm=4)),
    "fp32, D 256": MappingProxyType(dict(BC=16, BV=32, num_warps=4, num_stages=2, programs_per_sm=4)),
    "interpreter": MappingProxyType(dict(BC=32, BV=128, num_warps=4, num_stages=1, programs_per_sm=2)),
})


@triton.jit
def rla_segment_kernel(
    phiq_ptr, phik_ptr, v_ptr, o_ptr, carry_ptr, seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, H, Hkv, window, NSEG, SEGLEN, part_stride,
    D: tl.constexpr, NF: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
    HAS_CARRY: tl.constexpr,
):
    """1-D grid over (sequences * H, segments, NF feature halves, D / BV value slices), the last fastest.
    phi(q) (B, T, H, NF * D), phi(k) (B, T, Hkv, NF * D), v (B, T, Hkv, D), contiguous. The program of
    feature half f writes its raw partial (fp32 accumulation, stored in o's dtype) to o + f * part_stride,
    each partial (B, T, H, D). carry (sequences, Hkv, NSEG, NF * D, D) fp32: sum phi(k_j)^T v_j over
    j < seg * SEGLEN - w (HAS_CARRY; otherwise every segment starts from zero, right only for NSEG == 1)."""
    NV: tl.constexpr = D // BV
    FD: tl.constexpr = NF * D
    iv, f, seg, n, h, L, t_first, t_end, tok0 = segment_program(
        tl.program_id(0), H, NSEG, SEGLEN, T, seq_len_ptr, seq_row_ptr, seq_start_ptr, NF, NV)
    hk = h // (H // Hkv)
    if t_first >= L:
        return
    dt = phik_ptr.dtype.element_ty

    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    offs_v = iv * BV + tl.arange(0, BV)
    below = offs_c[:, None] > offs_c[None, :]  # query row c sees key row c' of the shifted chunk
    o_ptr += f * part_stride
    if HAS_CARRY:
        cr = segment_carry(carry_ptr, n, hk, seg, Hkv, NSEG, FD * D)
        s = tl.load(cr + (f * D + offs_d)[:, None] * D + offs_v[None, :])
    else:
        s = tl.zeros([D, BV], dtype=tl.float32)
    for t0 in range(t_first, t_end, BC):
        offs_t = t0 + offs_c
        t_ok = offs_t < L
        offs_j = offs_t - window
        j_ok = (offs_j >= 0) & (offs_j < L)
        # rows of keys outside the sequence have v = 0 and phi(k) = 0, so they add nothing
        k_rows = (tok0 + offs_j).to(tl.int64)
        v = tl.load(v_ptr + (k_rows * (Hkv * D) + hk * D)[:, None] + offs_v[None, :], mask=j_ok[:, None], other=0.0)
        v = v.to(dt)
        pk = tl.load(phik_ptr + (k_rows * (Hkv * FD) + hk * FD + f * D)[:, None] + offs_d[None, :],
                     mask=j_ok[:, None], other=0.0).to(dt)
        q_rows = (tok0 + offs_t).to(tl.int64)
        pq = tl.load(phiq_ptr + (q_rows * (H * FD) + h * FD + f * D)[:, None] + offs_d[None, :],
                     mask=t_ok[:, None], other=0.0).to(dt)
        a = tl.dot(pq, tl.trans(pk), input_precision=PRECISION)
        o = tl.dot(pq, s.to(dt), input_precision=PRECISION)
        a = tl.where(below, a, 0.0)
        o += tl.dot(a.to(dt), v, input_precision=PRECISION)
        tl.store(o_ptr + (q_rows * (H * D) + h * D)[:, None] + offs_v[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=t_ok[:, None])
        s += tl.dot(tl.trans(pk), v, input_precision=PRECISION)


def segment_config(D: int, dtype: torch.dtype) -> dict:
    """The SEGMENT_TILES row for these inputs, with BV capped at the head dim."""
    cfg = tuning_row(SEGMENT_TILES, dtype, D)
    cfg["BV"] = min(cfg["BV"], D)
    return cfg


def segment_length(seqs: SequenceTable, programs_per_segment: int, BC: int, unit: int, programs_per_sm: int,
                   device) -> int:
    """Rows per segment: a multiple of BC and of `unit` (the totals scan's block), long enough that the
    grid (programs_per_segment programs per sequence and segment) is about programs_per_sm programs per SM."""
    step = math.lcm(BC, unit)
    if INTERPRET:
        return step * 2  # several segments even at test sizes, so the carry path runs
    want = max(1, cdiv(programs_per_sm * num_sms(device), max(1, seqs.count * programs_per_segment)))
    return max(step, cdiv(cdiv(seqs.max_len, want), step) * step)


def launch_rla_segments(phi_q, phi_k, v, out, seqs: SequenceTable, *, window: int, cfg: dict, seg_len: int,
                        carry: torch.Tensor | None):
    """Run `rla_segment_kernel`: out (NF, B, T, H, D) receives the raw RLA output at every valid row as NF
    partials that sum to it (NF = phi width / D: 2 for softmax / relu, 1 for identity).
    phi_q (B, T, H, F), phi_k (B, T, Hkv, F), v (B, T, Hkv, D), contiguous; carry from `rla_segment_carry`."""
    B, T, Hkv, D = v.shape
    H, FD = phi_q.shape[2], phi_q.shape[3]
    nf = FD // D
    if seqs.count == 0:
        return out
    BV, BC = cfg["BV"], cfg["BC"]
    if BV > D or D % BV:
        raise ValueError(f"value slice BV = {BV} must divide the head dim {D}")
    if seg_len % BC:
        raise ValueError(f"segment length {seg_len} must be a multiple of the chunk rows BC = {BC}")
    nseg = cdiv(seqs.max_len, seg_len)
    if nseg > 1 and carry is None:
        raise ValueError(f"{nseg} segments need the carry of their segment totals")
    if carry is not None and tuple(carry.shape) != (seqs.count, Hkv, nseg, FD, D):
        raise ValueError(f"carry of shape {tuple(carry.shape)} does not fit this launch: expected "
                         f"{(seqs.count, Hkv, nseg, FD, D)}")
    if tuple(out.shape) != (nf, B, T, H, D):
        raise ValueError(f"out must hold {nf} partials (NF, B, T, H, D) = {(nf, B, T, H, D)}, got {tuple(out.shape)}")
    rla_segment_kernel[(seqs.count * H * nseg * nf * (D // BV),)](
        phi_q, phi_k, v, out, carry if carry is not None else dummy(v.device), seqs.row, seqs.start, seqs.length,
        T, H, Hkv, window, nseg, seg_len, out[0].numel(),
        D=D, NF=nf, BC=BC, BV=BV, PRECISION=precision_for(v.dtype), HAS_CARRY=carry is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    launch_counts["rla_segment_kernel"] += 1
    return out
