"""RAttention prefill in Triton.

    o = rms(SWA(rope(q), rope(k), v)) * g_swa + rms(RLA(q, k, v)) * g_rla

The design is picked in RLA_TUNING (swa/parallel.py); the H200 default is "segment":
  1. `rla_segment_carry` (rla/chunk.py): a pre-pass writes phi(k) and RoPE-rotated k (with the
     default `phi_k`; otherwise the scan rotates k), a scan sums phi(k)^T v per segment of the
     sequence, and the carry pass turns the sums into the state each segment starts from.
  2. `rla_segment_kernel` (rla/segment.py): per (segment, head, feature half, value slice), walks the
     segment's query chunks with the state on chip and writes the raw o_rla (two partials).
  3. `swa_fwd_kernel` (swa/parallel.py), with the plain-SWA tiles: rotates q, runs the window, and
     adds rms(o_swa) * g_swa + rms(partial_0 + partial_1) * g_rla.
The chunk-state designs (slower on the H200; rattention/README.md):
  1. `rla_prefix_states` (rla/chunk.py) stores the RLA state at every state-block boundary
     (segment-relative, plus a per-segment carry), after the same phi(k) pre-pass.
  2. "fused": one `swa_fwd_kernel` pass per query block; the window-edge tiles feed the softmax
     branch (t - j <= w) and the linear branch (t - j > w) from a single load of v, and both norms
     and the sum happen in the epilogue. "two_kernel": an RLA pass writes rms(o_rla) * g_rla, then
     the SWA pass adds rms(o_swa) * g_swa.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ..common import cdiv, default_scale
from ..rla.chunk import launch_phi_pass, prepare_rla_launch, rla_prefix_states, rla_segment_carry
from ..rla.segment import launch_rla_segments, segment_config, segment_length
from ..swa.parallel import INTERPRET, RLA_TUNING, block_config, launch_swa_fwd, load_add_rows, sequence_table


def _rope_tables(rope, B, T, D, device, dtype=torch.float32):
    """(cos, sin) as contiguous (T, D) or (B, T, D) tables in `dtype` (None: their own; the kernels
    compute in fp32)."""
    cos, sin = rope
    shape_ok = cos.shape == sin.shape and (cos.shape == (T, D) or (cos.dim() == 3 and cos.shape in ((B, T, D), (1, T, D))))
    if not shape_ok:
        raise ValueError(f"rope tables must be (T, D) or (B, T, D) = ({B}, {T}, {D}); got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if cos.dim() == 3 and cos.shape[0] == 1:
        cos, sin = cos[0], sin[0]
    if dtype is None:  # the caller's dtype (the kernels read any float table in fp32)
        if not (cos.is_floating_point() and sin.is_floating_point()):
            raise ValueError(f"rope tables must be floating point, got {cos.dtype} and {sin.dtype}")
        dtype = cos.dtype
    return cos.to(device=device, dtype=dtype).contiguous(), sin.to(device=device, dtype=dtype).contiguous()


_ONES: dict = {}


def _norm_weight(w, H, D, device):
    if w is None:
        key = (H, D, str(device))
        if key not in _ONES:
            _ONES[key] = torch.ones(H, D, dtype=torch.float32, device=device)
        return _ONES[key]
    if tuple(w.shape) != (H, D):
        raise ValueError(f"norm weights must be (H, D) = ({H}, {D}), got {tuple(w.shape)}")
    return w.to(device=device, dtype=torch.float32).contiguous()


@triton.jit
def rla_combine_kernel(out_ptr, raw_ptr, gr_ptr, seq_row_ptr, seq_start_ptr, seq_len_ptr, T, H, part_stride, eps,
                       D: tl.constexpr, BR: tl.constexpr, PARTS: tl.constexpr):
    """Grid (sequences * H, row blocks of BR). out (B, T, H, D) holds rms(o_swa) * g_swa; add
    rms(o_rla) * g_rla, o_rla the raw RLA output at raw (PARTS = 2: two partials part_stride apart
    that sum to it). fp32 math; rows outside the sequences are not touched."""
    n = tl.program_id(0) // H
    h = tl.program_id(0) % H
    L = tl.load(seq_len_ptr + n)
    s0 = tl.program_id(1) * BR
    if s0 >= L:
        return
    tok0 = tl.load(seq_row_ptr + n).to(tl.int64) * T + tl.load(seq_start_ptr + n)
    offs = s0 + tl.arange(0, BR)
    ok = offs < L
    offs_d = tl.arange(0, D)
    rows = (tok0 + offs).to(tl.int64) * (H * D) + h * D
    ptr = rows[:, None] + offs_d[None, :]
    r = load_add_rows(raw_ptr, raw_ptr, rows, ok, tok0, s0, h, part_stride, H, D, PARTS, False)  # pointer loads
    g = tl.load(gr_ptr + h * D + offs_d)
    o = tl.load(out_ptr + ptr, mask=ok[:, None], other=0.0).to(tl.float32)
    o += r * tl.rsqrt(tl.sum(r * r, axis=1) / D + eps)[:, None] * g[None, :]
    tl.store(out_ptr + ptr, o.to(out_ptr.dtype.element_ty), mask=ok[:, None])


def launch_rla_combine(out, raw, seqs, rla_norm_weight, eps, rows=64):
    """`rla_combine_kernel`: out += rms(o_rla) * g_rla at every valid row; raw is (B, T, H, D) or two
    partials (2, B, T, H, D)."""
    B, T, H, D = out.shape
    if seqs.count == 0:
        return out
    blocks = cdiv(seqs.max_len, rows)
    if blocks > 65535:
        raise ValueError(f"sequences of {seqs.max_len} tokens are too long for one combine launch")
    parts = 2 if raw.dim() == 5 else 1
    rla_combine_kernel[(seqs.count * H, blocks)](out, raw, rla_norm_weight, seqs.row, seqs.start, seqs.length, T, H,
                                                 raw[0].numel() if parts == 2 else 0, float(eps), D=D, BR=rows,
                                                 PARTS=parts, num_warps=4)
    return out


_SIDE_STREAMS: dict = {}


def _side_stream(device, high_priority=False):
    """One extra CUDA stream per device (and priority) for the overlapped passes (created once)."""
    key = (str(device), high_priority)
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(device=device, priority=-1 if high_priority else 0)
    return _SIDE_STREAMS[key]


DESIGNS = ("fused", "fused_two_pass", "two_kernel", "segment")
# "fused": one pass over the window, edge tiles shared by both branches.
# "fused_two_pass": one kernel, but the RLA edge tiles get their own (cached) pass before the softmax loop.
# "two_kernel": an RLA output pass writes rms(o_rla) * g_rla, the SWA pass adds rms(o_swa) * g_swa to it.
# "segment": segment totals + carry, then rla/segment.py writes the raw o_rla with the state kept on
#   chip, and the SWA pass normalizes it and adds rms(o_swa) * g_swa.
# The H200 default is the design measured fastest at 32k (rattention/README.md lists the others' figures).
DEFAULT_DESIGN = RLA_TUNING["design"]


def rattention_triton(q, k, v, *, window, rope=None, scale=None, feature_map="softmax", swa_norm_weight=None,
                      rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None):
    """Fused RAttention prefill.

    Args:
        q: (B, T, H, D) raw; k, v: (B, T, Hkv, D) raw; fp16, bf16 or fp32; D a power of two 16..128.
        window: int >= 0 (previous tokens seen by the softmax branch).
        rope: (cos, sin), each (T, D) or (B, T, D), rotate-half convention, for the SWA branch only; or None.
        scale: softmax scale (default D ** -0.5); feature_map: "softmax" | "relu" | "identity".
        swa_norm_weight, rla_norm_weight: (H, D) or None (ones); eps: RMSNorm epsilon.
        lengths: (B,) for right-padded batches; cu_seqlens: (N+1,) packed offsets, B == 1.
    Returns:
        (B, T, H, D) in q.dtype; zero at padded positions.
    """
    return rattention_design(q, k, v, window=window, rope=rope, scale=scale, feature_map=feature_map,
                             swa_norm_weight=swa_norm_weight, rla_norm_weight=rla_norm_weight, eps=eps, lengths=lengths,
                             cu_seqlens=cu_seqlens, design=DEFAULT_DESIGN)


def rattention_design(q, k, v, *, window, rope, scale, feature_map, swa_norm_weight, rla_norm_weight, eps, lengths,
                      cu_seqlens, design, tuning=None):
    """`rattention_triton` with the kernel design chosen explicitly (one of DESIGNS); for benchmarks and tests.

    tuning (benchmarks): {"cfg": output-pass block config (also the state block), "swa_cfg": the SWA
    pass of "two_kernel" and "segment", "state": keyword arguments for `rla_prefix_states`,
    "segment": overrides of `segment_config` (rla/segment.py), "seg_len": rows per segment}."""
    if window is None:
        raise ValueError("rattention needs an int window; use swa_attention(window=None) for full attention")
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")
    tuning = tuning or {}
    q, k, v, out, seqs, cfg, w, feature = prepare_rla_launch(q, k, v, window, feature_map, lengths, cu_seqlens,
                                                             cfg=tuning.get("cfg"))
    B, T, H, D = q.shape
    # bf16 inputs: fp16 tables (2^-11 relative, four times finer than the inputs' own rounding) halve
    # the table bytes every query block and key tile reads; fp16 / fp32 inputs keep fp32 tables.
    tdt = torch.float16 if q.dtype == torch.bfloat16 else torch.float32
    if tuning.get("native_tables"):
        tdt = None  # no cast per call: the kernels read the caller's tables
    tables = None if rope is None else _rope_tables(rope, B, T, D, q.device, tdt)
    kr = torch.empty_like(k) if tables is not None else None
    kw = dict(window=w, scale=default_scale(D, scale), kr=kr, rope=tables,
              swa_norm_weight=_norm_weight(swa_norm_weight, H, D, q.device),
              rla_norm_weight=_norm_weight(rla_norm_weight, H, D, q.device), eps=eps, feature=feature)
    swa_cfg = tuning.get("swa_cfg") or (RLA_TUNING.get("swa_cfg") if q.dtype != torch.float32 and not INTERPRET else None)
    swa_cfg = swa_cfg or block_config(D, rla=False, dtype=q.dtype)  # the tuned tiles are for 16-bit inputs
    if design == "segment":
        seg_cfg = dict(segment_config(D, q.dtype), **tuning.get("segment", {}))
        seg_cfg["BV"] = min(seg_cfg["BV"], D)
        unit = seg_cfg.get("scan_block", 64) if not INTERPRET else 16
        split = 2 if seg_cfg.get("split_f") and feature != 2 else 1
        heads = k.shape[2] if seg_cfg.get("group_heads") else H  # programs per (sequence, segment) / slices
        seg_len = tuning.get("seg_len") or segment_length(seqs, heads, split * D // seg_cfg["BV"],
                                                          seg_cfg["BC"], unit, seg_cfg["programs_per_sm"], q.device)
        seqs_swa = sequence_table(B, T, q.device, lengths, cu_seqlens, swa_cfg["BM"])
        phi_rows, phi_warps = seg_cfg.get("phi_rows", 32), seg_cfg.get("phi_warps", 4)  # the phi(k) / phi(q) passes
        # "overlap": the SWA pass normalizes its branch alone, overlapped with the RLA kernels, and
        # rla_combine_kernel adds the RLA branch at the end. True: the SWA pass on a second stream;
        # "prio": the RLA kernels (the longer chain) on a high-priority stream, the SWA pass on the caller's
        overlap = seg_cfg.get("overlap") or False
        if overlap not in (False, True, "prio"):
            raise ValueError(f"segment option overlap must be False, True or 'prio', got {overlap!r}")
        prio = overlap == "prio"
        # "rot_q": the phi(q) pass also rotates q, so the SWA pass reads rotated q and k and no RoPE tables
        qr = torch.empty_like(q) if seg_cfg.get("rot_q") and tables is not None else None
        swa_q, swa_k, swa_kw = (qr, kr, dict(kw, kr=None, rope=None)) if qr is not None else (q, k, kw)
        # "phi_k" False with "rot_pass": the pre-pass only rotates k; the scan and the segment kernel compute phi(k)
        phi_k = bool(seg_cfg.get("phi_k"))
        main = torch.cuda.current_stream(q.device) if q.is_cuda else None
        side = _side_stream(q.device, high_priority=prio) if overlap and q.is_cuda else None

        def swa_alone():
            # the SWA pass writes rms(o_swa) * g_swa on its own, once what it reads (rotated k / q) is written
            if side is None:
                target = None
            elif prio:  # the RLA kernels run on `side`: wait for what they have written so far
                main.wait_stream(side)
                target = main
            else:
                side.wait_stream(main)
                target = side
            with torch.cuda.stream(target) if target is not None else contextlib.nullcontext():
                launch_swa_fwd(swa_q, swa_k, v, out, seqs_swa, cfg=swa_cfg, do_swa=True, do_rla=False, norm_out=True,
                               states=None, **swa_kw)

        def rla_chain():
            """The RLA kernels; returns the raw o_rla (or its two partials)."""
            carry, phi = rla_segment_carry(k, v, seqs, window=w, feature=feature, seg_len=seg_len, block=unit, kr=kr,
                                           rope=tables, num_warps=seg_cfg.get("scan_warps"),
                                           phi_pass=phi_k or bool(seg_cfg.get("rot_pass")), phi_store=phi_k,
                                           phi_rows=phi_rows, phi_warps=phi_warps, block_v=seg_cfg.get("scan_bv"),
                                           on_phi=swa_alone if overlap and qr is None else None)
            # bf16 keeps fp32's range, so the raw o_rla can wait in the output buffer; fp16 could overflow there
            rdt = torch.float32 if q.dtype == torch.float16 else q.dtype
            if split == 2:
                raw = torch.empty((2,) + tuple(q.shape), dtype=rdt, device=q.device)
            else:
                raw = out if rdt == q.dtype and not overlap else torch.empty(q.shape, dtype=rdt, device=q.device)
            phi_q = None
            if seg_cfg.get("phi_q") and feature != 2:  # phi(q) from a pre-pass too (identity: phi(q) = q)
                phi_q = torch.empty(tuple(q.shape[:3]) + (2 * D,), dtype=q.dtype, device=q.device)
            if phi_q is not None or qr is not None:
                launch_phi_pass(q, phi_q, qr, tables if qr is not None else None, feature, phi_rows, phi_warps)
            if overlap and qr is not None:
                swa_alone()  # rotated q exists only now
            launch_rla_segments(q, k, v, raw, seqs, window=w, feature=feature, cfg=seg_cfg, seg_len=seg_len, carry=carry,
                                phi=phi, phi_q=phi_q)
            return raw

        try:
            if prio and side is not None:
                side.wait_stream(main)  # the inputs, as the caller's stream sees them
                with torch.cuda.stream(side):
                    raw = rla_chain()
                raw.record_stream(main)  # allocated on `side`, read by the combine pass on the caller's stream
            else:
                raw = rla_chain()
            if overlap:
                if side is not None:
                    main.wait_stream(side)
                return launch_rla_combine(out, raw, seqs_swa, kw["rla_norm_weight"], eps)
            return launch_swa_fwd(swa_q, swa_k, v, out, seqs_swa, cfg=swa_cfg, do_swa=True, do_rla=False, add_out=True,
                                  add_src=raw, add_raw=True, states=None, **swa_kw)
        finally:
            if side is not None:
                # joined on every exit, errors included: nothing the side stream still uses may be freed or
                # reused by the main stream before it is done
                main.wait_stream(side)
    state_kw = dict(tuning.get("state", {}))
    if design != "two_kernel":
        state_kw["state_block"] = cfg["BM"]  # one pass over both branches: states at its query blocks
    kw["states"] = rla_prefix_states(k, v, seqs, window=w, feature=feature, cfg=cfg, kr=kr, rope=tables, **state_kw)
    if design == "two_kernel":
        launch_swa_fwd(q, k, v, out, seqs, cfg=cfg, do_swa=False, do_rla=True, norm_out=True, **kw)
        seqs_swa = seqs if swa_cfg["BM"] == cfg["BM"] else sequence_table(B, T, q.device, lengths, cu_seqlens, swa_cfg["BM"])
        return launch_swa_fwd(q, k, v, out, seqs_swa, cfg=swa_cfg, do_swa=True, do_rla=False, add_out=True, **kw)
    return launch_swa_fwd(q, k, v, out, seqs, cfg=cfg, do_swa=True, do_rla=True, rla_separate=design == "fused_two_pass",
                          **kw)
