"""Residual linear attention in Triton, recurrent within segments: no chunk states in HBM.

o_t = phi(q_t) S_{t-w-1}. Shift the keys by w: a chunk of BC query rows starting at t0 meets the
key chunk starting at t0 - w, and inside that pair query row c sees key row c' when c > c'
(t - j = w + c - c' > w). One program walks the query chunks of one segment for one head and one
slice of value columns, holding the state S (F x BV, fp32) in registers:

    o   = phi(q) @ S + tril(phi(q) phi(k)^T, -1) @ v      (raw, unnormalized)
    S  += phi(k)^T @ v

The state a segment starts from (the keys before its first key chunk) is the exclusive prefix of
the segment totals: `rla_chunk_state_kernel` computes the totals (STORE_TOTAL, no states) and
`rla_carry_kernel` the prefixes, so segments run in parallel. Compared with the chunk-state design
(rla/chunk.py + the output pass of swa/parallel.py), no per-block state is written or read back,
and phi(q) @ S sits inside a pipelined loop instead of a one-off load per query block.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..common import cdiv
from ..swa.parallel import (
    INTERPRET, RLA_TUNING, SequenceTable, TensorDescriptor, _dummy, feature_map_halves, feature_map_one,
    precision_for, tma_ok,
)
from .chunk import _num_sms

launch_counts: dict[str, int] = {"rla_segment_kernel": 0, "rla_segment_kernel_tma": 0}


@triton.jit
def rla_segment_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, carry_ptr, phi_ptr, phiq_ptr, q_desc, k_desc, v_desc,
    seq_row_ptr, seq_start_ptr, seq_len_ptr,
    T, H, Hkv, window, NSEG, SEGLEN, part_stride,
    D: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr, PRECISION: tl.constexpr,
    HAS_CARRY: tl.constexpr, SPLIT_F: tl.constexpr, PHI_K: tl.constexpr, GH: tl.constexpr, TMA: tl.constexpr,
    PHI_Q: tl.constexpr,
):
    """1-D grid over (sequences * H / GH, segments, [2 feature halves with SPLIT_F,] D / BV), the last fastest. q (B, T, H, D), k/v
    (B, T, Hkv, D) contiguous; o (B, T, H, D) receives the raw RLA output (fp32 accumulation, stored
    in o's dtype). carry (sequences, Hkv, NSEG, F, D) fp32: sum phi(k_j)^T v_j over j < seg * SEGLEN - w
    (HAS_CARRY; otherwise every segment starts from zero, which is right only for NSEG == 1).
    SPLIT_F (softmax / relu maps): one program per feature half f, holding only S_f; it writes its
    partial output to o + f * part_stride (the two partials sum to o_rla). PHI_K: read phi(k)
    (B, T, Hkv, F) from the pre-pass instead of computing it. GH: query heads per program (a divisor
    of H / Hkv): they share the key tiles and the state update. TMA: q, phi(k) (or k) and v tiles come
    through tensor descriptors over 2-D views (B * T, heads * columns) (blocks (BC, D), (BC, D), (BC, BV));
    key rows outside the sequence are zeroed after the load (they may belong to a neighbouring one).
    PHI_Q: read phi(q) (B, T, H, F) from a pre-pass instead of computing it (no fp32 q tile, no exp)."""
    NV: tl.constexpr = D // BV
    NF: tl.constexpr = 1 if FEATURE == 2 else 2
    FD: tl.constexpr = NF * D
    NP: tl.constexpr = NV * NF if SPLIT_F else NV
    pid = tl.program_id(0)
    iv = pid % NV
    f = (pid // NV) % NF if SPLIT_F else 0
    seg = (pid // NP) % NSEG
    nh = pid // (NP * NSEG)
    n = nh // (H // GH)
    h0 = (nh % (H // GH)) * GH  # the first query head of this program
    hk = h0 // (H // Hkv)
    L = tl.load(seq_len_ptr + n)
    t_first = seg * SEGLEN
    if t_first >= L:
        return
    t_end = tl.minimum(t_first + SEGLEN, L)
    tok0 = tl.load(seq_row_ptr + n).to(tl.int64) * T + tl.load(seq_start_ptr + n)
    dt = k_ptr.dtype.element_ty

    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    offs_v = iv * BV + tl.arange(0, BV)
    below = offs_c[:, None] > offs_c[None, :]  # query row c sees key row c' of the shifted chunk
    s_off = offs_d[:, None] * D + offs_v[None, :]
    if SPLIT_F:
        o_ptr += f * part_stride
        s_off += f * (D * D)
    if HAS_CARRY:
        cr = carry_ptr + ((n * Hkv + hk).to(tl.int64) * NSEG + seg) * (FD * D)
        s_p = tl.load(cr + s_off)  # (with SPLIT_F, s_off already points at this program's half)
        if NF == 2 and not SPLIT_F:
            s_n = tl.load(cr + D * D + s_off)
        else:
            s_n = s_p  # unused
    else:
        s_p = tl.zeros([D, BV], dtype=tl.float32)
        s_n = tl.zeros([D, BV], dtype=tl.float32)
    for t0 in range(t_first, t_end, BC):
        offs_t = t0 + offs_c
        t_ok = offs_t < L
        offs_j = offs_t - window
        j_ok = (offs_j >= 0) & (offs_j < L)
        k_rows = (tok0 + offs_j).to(tl.int64) * (Hkv * D) + hk * D
        # rows of keys outside the sequence have v = 0, so their (finite) phi(k) adds nothing
        if TMA:
            jr = (tok0 + t0 - window).to(tl.int32)  # may be negative: TMA fills rows outside the tensor with 0
            v = tl.where(j_ok[:, None], v_desc.load([jr, hk * D + iv * BV]), 0.0).to(dt)
        else:
            v = tl.load(v_ptr + k_rows[:, None] + offs_v[None, :], mask=j_ok[:, None], other=0.0).to(dt)
        if PHI_K and TMA:
            # other sequences' (or unwritten padding) rows: zero, so nothing non-finite meets v = 0
            pk = tl.where(j_ok[:, None], k_desc.load([jr, hk * FD + f * D]), 0.0).to(dt)
            if NF == 2 and not SPLIT_F:
                nk = tl.where(j_ok[:, None], k_desc.load([jr, hk * FD + D]), 0.0).to(dt)
            else:
                nk = pk
        elif PHI_K:
            p_rows = (tok0 + offs_j).to(tl.int64) * (Hkv * FD) + hk * FD + f * D
            pk = tl.load(phi_ptr + p_rows[:, None] + offs_d[None, :], mask=j_ok[:, None], other=0.0).to(dt)
            if NF == 2 and not SPLIT_F:
                nk = tl.load(phi_ptr + p_rows[:, None] + D + offs_d[None, :], mask=j_ok[:, None], other=0.0).to(dt)
            else:
                nk = pk
        else:
            if TMA:
                kx = tl.where(j_ok[:, None], k_desc.load([jr, hk * D]).to(tl.float32), 0.0)
            else:
                kx = tl.load(k_ptr + k_rows[:, None] + offs_d[None, :], mask=j_ok[:, None], other=0.0).to(tl.float32)
            if SPLIT_F:
                pk = feature_map_one(kx * tl.where(f == 0, 1.0, -1.0), FEATURE).to(dt)
                nk = pk
            else:
                pk, nk = feature_map_halves(kx, FEATURE)
                pk = pk.to(dt)
                nk = nk.to(dt)
        sp_dt = s_p.to(dt)
        if NF == 2 and not SPLIT_F:
            sn_dt = s_n.to(dt)
        else:
            sn_dt = sp_dt  # unused
        for g in tl.static_range(GH):
            q_rows = (tok0 + offs_t).to(tl.int64) * (H * D) + (h0 + g) * D
            if PHI_Q:
                pq_rows = (tok0 + offs_t).to(tl.int64) * (H * FD) + (h0 + g) * FD + f * D
                pq = tl.load(phiq_ptr + pq_rows[:, None] + offs_d[None, :], mask=t_ok[:, None], other=0.0).to(dt)
                if NF == 2 and not SPLIT_F:
                    nq = tl.load(phiq_ptr + pq_rows[:, None] + D + offs_d[None, :], mask=t_ok[:, None], other=0.0)
                else:
                    nq = pq
            else:
                if TMA:  # rows past the sequence: finite or not, their outputs are not stored
                    q = q_desc.load([(tok0 + t0).to(tl.int32), (h0 + g) * D]).to(tl.float32)
                else:
                    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=t_ok[:, None], other=0.0).to(tl.float32)
                if SPLIT_F:
                    pq = feature_map_one(q * tl.where(f == 0, 1.0, -1.0), FEATURE)
                    nq = pq
                else:
                    pq, nq = feature_map_halves(q, FEATURE)
            pq = pq.to(dt)
            a = tl.dot(pq, tl.trans(pk), input_precision=PRECISION)
            o = tl.dot(pq, sp_dt, input_precision=PRECISION)
            if NF == 2 and not SPLIT_F:
                nq = nq.to(dt)
                a += tl.dot(nq, tl.trans(nk), input_precision=PRECISION)
                o += tl.dot(nq, sn_dt, input_precision=PRECISION)
            a = tl.where(below, a, 0.0)
            o += tl.dot(a.to(dt), v, input_precision=PRECISION)
            tl.store(o_ptr + q_rows[:, None] + offs_v[None, :], o.to(o_ptr.dtype.element_ty), mask=t_ok[:, None])
        s_p += tl.dot(tl.trans(pk), v, input_precision=PRECISION)
        if NF == 2 and not SPLIT_F:
            s_n += tl.dot(tl.trans(nk), v, input_precision=PRECISION)


def segment_config(D: int, dtype: torch.dtype) -> dict:
    """Chunk rows (BC), value slice (BV) and launch settings of `rla_segment_kernel`."""
    if INTERPRET:
        # CPU tests: one value slice and 32-row chunks cost the interpreter least (a 1000-token case:
        # 18.7 s against 26.8 s for 16-row chunks and two slices); tests that need value slices,
        # small chunks or the split halves pass their own config
        return dict(BC=32, BV=D, num_warps=4, num_stages=1, programs_per_sm=2)
    if dtype == torch.float32:  # fp32 tiles take twice the shared memory
        return dict(BC=32, BV=min(D, 64), num_warps=4, num_stages=2, programs_per_sm=4, split_f=True, phi_k=True)
    tuned = RLA_TUNING.get("segment") or {}
    # fastest on the H200 at 32k (rattention/README.md): feature halves split over programs and
    # phi(k) from the pre-pass; value slices of 64 with 4 warps
    cfg = dict(BC=64, BV=min(D, 64), num_warps=4, num_stages=2, programs_per_sm=4, split_f=True, phi_k=True)
    cfg.update(tuned)
    cfg["BV"] = min(cfg["BV"], D)
    return cfg


def segment_length(seqs: SequenceTable, heads: int, nv: int, BC: int, unit: int, programs_per_sm: int,
                   device) -> int:
    """Rows per segment: a multiple of BC and of `unit` (the totals scan's block), long enough that
    the grid is about programs_per_sm programs per SM."""
    step = math.lcm(BC, unit)
    if INTERPRET:
        return step * 2  # several segments even at test sizes, so the carry path runs
    want = max(1, cdiv(programs_per_sm * _num_sms(device), max(1, seqs.count * heads * nv)))
    return max(step, cdiv(cdiv(seqs.max_len, want), step) * step)



def launch_rla_segments(q, k, v, out, seqs: SequenceTable, *, window: int, feature: int, cfg: dict, seg_len: int,
                        carry: torch.Tensor | None, phi: torch.Tensor | None = None, phi_q: torch.Tensor | None = None):
    """Run `rla_segment_kernel`: out gets the raw RLA output at every valid row: (B, T, H, D), or
    with cfg["split_f"] (softmax / relu maps) (2, B, T, H, D), two partials that sum to it.
    phi: phi(k) from the pre-pass (read instead of computed); phi_q: phi(q) (B, T, H, F), likewise. cfg["group_heads"]: one program serves
    the H / Hkv query heads of a KV head (one state update for all of them)."""
    split = bool(cfg.get("split_f")) and feature != 2
    B, T, H, D = q.shape
    Hkv = k.shape[2]
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
    fd = D if feature == 2 else 2 * D
    if carry is not None and tuple(carry.shape) != (seqs.count, Hkv, nseg, fd, D):
        raise ValueError(f"carry of shape {tuple(carry.shape)} does not fit this launch: expected "
                         f"{(seqs.count, Hkv, nseg, fd, D)}")
    if split and (out.dim() != 5 or out.shape[0] != 2):
        raise ValueError("split_f needs an output of two partials, (2, B, T, H, D)")
    gh = H // Hkv if cfg.get("group_heads") else 1
    src = phi if phi is not None else k
    tma = bool(cfg.get("tma")) and tma_ok(q, src, v)
    if tma:
        cols = src.shape[2] * src.shape[3]
        q_desc = TensorDescriptor.from_tensor(q.view(B * T, H * D), [BC, D])
        k_desc = TensorDescriptor.from_tensor(src.view(B * T, cols), [BC, D])
        v_desc = TensorDescriptor.from_tensor(v.view(B * T, Hkv * D), [BC, BV])
    else:
        q_desc = k_desc = v_desc = _dummy(q.device)
    grid = (seqs.count * (H // gh) * nseg * (D // BV) * (2 if split else 1),)
    dummy = _dummy(q.device)
    rla_segment_kernel[grid](
        q, k, v, out, carry if carry is not None else dummy, phi if phi is not None else dummy,
        phi_q if phi_q is not None else dummy, q_desc, k_desc, v_desc,
        seqs.row, seqs.start, seqs.length, T, H, Hkv, window, nseg, seg_len, out[0].numel() if split else 0,
        D=D, BC=BC, BV=BV, FEATURE=feature, PRECISION=precision_for(q.dtype), HAS_CARRY=carry is not None,
        SPLIT_F=split, PHI_K=phi is not None, GH=gh, TMA=tma, PHI_Q=phi_q is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    launch_counts["rla_segment_kernel"] += 1
    launch_counts["rla_segment_kernel_tma"] += tma
    return out
