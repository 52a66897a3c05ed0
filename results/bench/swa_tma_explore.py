"""H200 exploration: the softmax-window pass (swa_fwd_kernel) with its key / value tiles loaded through
TMA tensor descriptors (cfg "tma"), at T = 32k, B = 1, H = 16, D = 128, w = 512, bf16, Hkv 16 and 4:

    python3 results/bench/swa_tma_explore.py            # baselines + a per-kernel profile of the default RAttention
    python3 results/bench/swa_tma_explore.py --cfg I    # config I of CFGS (one process per config)

Per config: plain SWA (error against the pointer-load kernel and an fp32 reference at 4k), then the
RAttention "segment" design end to end with this config as its SWA pass.
"""

import argparse
import functools
import json
from importlib import import_module

import torch

rf = import_module("rattn_eval.kernels.rattention.fused")
sp = import_module("rattn_eval.kernels.swa.parallel")
rs = import_module("rattn_eval.kernels.rla.segment")
import prefill_tools  # noqa: E402  (results/bench, the script's folder)
from prefill_tools import P, Spy  # noqa: E402
from rattn_eval.kernels import Rope  # noqa: E402
from rattn_eval.kernels.rattention.naive import rattention_chunked  # noqa: E402
from rattn_eval.kernels.swa.naive import swa_attention_chunked  # noqa: E402

bench = functools.partial(prefill_tools.bench, rep=40)

T, H, D, W = 32768, 16, 128, 512


def c(BM, BN, nw, ns, **extra):
    return dict(BM=BM, BN=BN, num_warps=nw, num_stages=ns, **extra)


SWA_TMA = c(64, 64, 4, 3, tma=True)
SEG = dict(BC=64, BV=64, num_warps=4, num_stages=2, programs_per_sm=8, split_f=True, phi_k=True)


def seg(**kw):
    return dict(SEG, **kw)


# Call 1 (9cd4766, plain SWA): TMA tiles 64x64 / 4 warps / 3 stages 0.474 ms against 0.520 ms for pointer loads;
# 128-row tiles, 4 stages and 32- or 128-key tiles slower (0.56-0.85 ms).
# Call 2 (7099b18): the SWA pass on TMA tiles (and TMA loads of the two raw partials) 0.632 against 0.662 ms; the
# segment kernel on TMA tiles slower (0.68-1.25 against 0.49 ms: more registers, 248-255 against 217).
# Call 3 (2fc9b90): phi(q) from a pre-pass: segment kernel 0.358-0.377 ms (174-182 registers) against 0.490 ms, the
# pre-pass 0.10 ms longer; end to end 1.454 / 1.213 ms (3 stages) against 1.518 / 1.265 ms at Hkv 16 / 4.
# Call 4 (c30315a): around phi_q + 3 stages all within 1.455-1.482 / 1.211-1.244 ms; cfg 3 (scan block 128) taken.
# Call 5: "overlap": the SWA pass alone on a second stream, started once k is rotated, while the RLA kernels run;
# rla_combine_kernel adds the RLA branch at the end.
P3 = seg(phi_q=True, num_stages=3)
DEFAULT = dict(P3, scan_block=128)
# Call 6 (0a43224, segment_iterations/11_prep.txt; its cfg rows lack heads_first, the baseline row has it):
# rla_prep_kernel (phi(k), phi(q), rotated k and q and the segment totals in one scan over each segment) 0.79-2.85 ms
# against 0.41 ms for the passes it replaces (too few programs for a memory-bound pass): removed. Rotated q for the
# SWA pass (rot_q) cut that pass from 0.630 to 0.563 ms. Warp specialization of the SWA loop did not compile on the
# H200 (NVGPUWarpSpecialization pass failure): removed. fp32 tables without the per-call cast: slower SWA pass.
# Call 7: rot_q from the fully parallel phi(q) pass; phi(k) computed in-kernel by the scan and the segment kernel
# (rot_pass: the k pass only rotates k).
# Call 7 (63335b9, segment_iterations/12_rotq.txt): rot_q: SWA pass 0.582 -> 0.542 ms but the phi(q) pass
# 0.268 -> 0.336 ms (1.424 against 1.404 ms); phi(k) in-kernel: segment kernel 0.56-0.74 ms, totals 0.29 ms;
# fp32 tables: slower. None taken.
# Call 8 (bfaf747, segment_iterations/13_prefetch.txt): the SWA pass loads the raw partials before its key loop:
# fp32 (prefetch_add 1) 0.615 / 0.601 ms, input dtype (2) 0.579 / 0.572 ms against 0.586 / 0.580 ms (Hkv 16 / 4).
# Call 9 (c7a45dd, segment_iterations/14_scan_bv.txt): totals scan over value slices of 64: 0.141 -> 0.136 ms; taken.
# Call 10 (4d4a343, segment_iterations/15_overlap_prio.txt): overlap again, now with a 2-stage segment kernel (smem
# small enough to share an SM with an SWA program) and "prio" (the RLA kernels on a high-priority stream, the SWA
# pass on the caller's): 1.404-1.435 / 1.169-1.195 ms against 1.398 / 1.156 ms. Under "prio" the SWA pass stretches
# to ~1.0 ms beside the RLA kernels instead of hiding behind them, and the combine pass adds 0.12 ms. Not taken.
DEFAULT = dict(DEFAULT, scan_bv=64)
SWA_HF = dict(SWA_TMA, heads_first=True)  # the committed SWA pass config
# Call 11 (swa_loop_explore.py, segment_iterations/16_loop.txt): a stand-alone copy of plain SWA ran in 0.418 ms against
# 0.475 ms for swa_fwd_kernel with the same tiles and loop; interior tiles first, then one masked loop, 0.408 ms (with
# heads_first). swa_fwd_kernel now runs its tiles in that order and, for dense batches, skips the sequence-table
# loads ("dense"; False restores them).
# Call 12 (17_dense.txt): plain SWA 0.443 ms (0.432 with heads_first, now its default), SWA pass 0.557 ms, end to end
# 1.372 / 1.129 ms (Hkv 16 / 4); the table loads cost 0.013 ms of the SWA pass ("dense" False), heads_first 0.044 ms.
# Call 13 (18_even.txt): EVEN (dense, T a multiple of BM, window and BM multiples of BN): no bounds masks. Plain SWA
# 0.405 ms (0.434 with the masks, "even" False), SWA pass 0.522 ms, end to end 1.333 / 1.091 ms (Hkv 16 / 4); taken.
# Call 14 (19_smem.txt): plain SWA and the SWA pass both take 114720 bytes of shared memory (two programs per SM; the
# partials' TMA tiles share it with the pipeline), 203 / 240 registers. The partials through pointer loads ("add_tma"
# False): SWA pass 0.543 against 0.521 ms; 2 stages: 0.580 ms; prefetch_add 2 with pointer loads 0.508 ms (end to end
# 1.322 against 1.332 ms) but the 4k error of prefetch_add 2 (3.05e-3 against 2.73e-3). None taken.
# Call 15 (20_phi_rows.txt): the phi(k) / phi(q) passes with programs of 16 rows: 0.245 / 0.138 ms against 0.268 /
# 0.146 ms, end to end 1.313 / 1.077 ms against 1.332 / 1.090 ms (Hkv 16 / 4); taken. 1 or 2 warps were slower.
DEFAULT = dict(DEFAULT, phi_rows=16)
# Call 16 (21_phi_rows8.txt): 8 rows: 1.323 against 1.312 ms; not taken.
# Session 8, calls 1-4 (22_late_carry.txt; code in commits 4a939c1 / a6d8993, reverted): "late_carry", no totals scan:
# each segment starts from zero and stores its total, the carry pass turns the totals into prefixes and the SWA pass
# adds phi(q) @ C (C the state of its segment). The scan (0.136 ms) and 0.012 ms of the segment kernel went, but the SWA
# pass grew from 0.52 to 0.67-0.79 ms in every placement of the correction: before the key loop (held in bf16, or
# added to the partials loaded early), in the epilogue from q loaded again, or parked in the output rows; carry tiles
# by pointer or TMA loads, one feature half at a time. It spilled (255 registers, 6-120 spills) and each 64-row block
# reads a 64 KiB carry tile. Best end to end 1.339 / 1.178 ms against 1.316 / 1.084 ms (Hkv 16 / 4).
# Session 9 (23_phi_enc.txt; code in commits ef7a425 / f75813d, reverted): "phi_enc", phi(k) and phi(q) stored as one
# tile of D columns per row (e = exp(x - mid) and two fp32 scalars: softmax(x) = e * sp, softmax(-x) = sn / e) instead
# of 2D columns. The phi passes went from 0.245 to 0.206 ms, but decoding the tile in the consumers (a reciprocal per
# element for the softmax(-x) half) took the totals scan from 0.137 to 0.25-0.42 ms and the segment kernel from 0.362
# to 1.10 ms (255 registers, one program per SM): 2.13-2.32 / 1.83-1.89 ms against 1.311 / 1.083 ms.
# Session 9, call 4: the softmax scale now multiplies the fp32 scores in the online softmax (one FMA with the max)
# instead of being folded into q before q is rounded to the input dtype (fp16 at scores of std ~400: 4.6e-3 -> 1.4e-5
# relative error). cfg 3 restores the fold ("scale_scores" False) for a same-call speed comparison.
CFGS = [  # (SWA pass config, segment kernel overrides[, other tuning keys])
    (SWA_HF, DEFAULT), (SWA_HF, dict(DEFAULT, phi_rows=8)), (SWA_HF, dict(DEFAULT, phi_rows=8, phi_warps=2)),
    (dict(SWA_HF, scale_scores=False), DEFAULT),
]
spy = Spy(rs.rla_segment_kernel)
rs.rla_segment_kernel = spy
swa_spy = Spy(sp.swa_fwd_kernel)  # the last launch: plain SWA after `swa`, the SWA pass after a RAttention call
sp.swa_fwd_kernel = swa_spy


def swa(q, k, v, cfg, window=W):
    seqs = sp.sequence_table(q.shape[0], q.shape[1], q.device, None, None, cfg["BM"])
    out = torch.empty_like(q)
    return sp.launch_swa_fwd(q, k, v, out, seqs, window=window, scale=D ** -0.5, cfg=cfg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg", type=int, default=None)
    ap.add_argument("--log", default=None)
    a = ap.parse_args()
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    bf = torch.bfloat16
    base_cfg = sp.block_config(D, rla=False)
    cfg, seg_cfg, extra = (tuple(CFGS[a.cfg]) + ({},))[:3] if a.cfg is not None else (base_cfg, {}, {})
    tag = f"cfg {a.cfg} swa {cfg} seg {seg_cfg} {extra or ''}" if a.cfg is not None else f"baseline {cfg}"
    rec = dict(cfg=a.cfg, conf=cfg, seg=seg_cfg, extra=extra)

    # correctness at 4k against the fp32 reference
    qc, kc, vc = (torch.randn(1, 4096, h, D, device=dev, generator=g).to(bf) for h in (4, 2, 2))
    ref = swa_attention_chunked(qc.float(), kc.float(), vc.float(), window=W)
    o = swa(qc, kc, vc, cfg).float()
    err = ((o - ref).pow(2).mean() / ref.pow(2).mean()).sqrt().item()
    rec["err4k"] = err
    tc = tuple(x.contiguous() for x in Rope(D).tables(4096, dev))
    kw4 = dict(window=W, rope=tc, scale=None, feature_map="softmax", swa_norm_weight=None, rla_norm_weight=None,
               eps=1e-6, lengths=None, cu_seqlens=None)
    ref_r = rattention_chunked(qc.float(), kc.float(), vc.float(), window=W, rope=tc)
    o_r = rf.rattention_design(qc, kc, vc, design="segment", tuning=None if a.cfg is None else {
        "swa_cfg": cfg, "segment": seg_cfg, **extra}, **kw4).float()
    rec["err4k_rattn"] = ((o_r - ref_r).pow(2).mean() / ref_r.pow(2).mean()).sqrt().item()
    P(tag, f"4k rel.err SWA {err:.2e}, RAttention {rec['err4k_rattn']:.2e}")
    for Hkv in (16, 4):
        q = torch.randn(1, T, H, D, device=dev, generator=g).to(bf)
        k = torch.randn(1, T, Hkv, D, device=dev, generator=g).to(bf)
        v = torch.randn(1, T, Hkv, D, device=dev, generator=g).to(bf)
        o = swa(q, k, v, cfg)
        diff = (o.float() - swa(q, k, v, base_cfg).float()).abs().max().item()
        t_swa = bench(lambda: swa(q, k, v, cfg))
        swa_info = swa_spy.info()
        tables = Rope(D).tables(T, dev)
        kw = dict(window=W, rope=tables, scale=None, feature_map="softmax", swa_norm_weight=None,
                  rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None, design="segment")
        tuning = None if a.cfg is None else {"swa_cfg": cfg, "segment": seg_cfg, **extra}
        o_r = rf.rattention_design(q, k, v, tuning=tuning, **kw)
        o_b = rf.rattention_design(q, k, v, tuning=None, **kw)
        rdiff = (o_r.float() - o_b.float()).abs().max().item()
        t_e2e = bench(lambda: rf.rattention_design(q, k, v, tuning=tuning, **kw))
        rec[f"swa_{Hkv}"], rec[f"e2e_{Hkv}"] = t_swa, t_e2e
        P(tag, f"Hkv {Hkv}: plain SWA {t_swa:.3f} ms (max |diff| vs pointer loads {diff:.2e}); RAttention end to end "
               f"{t_e2e:.3f} ms (max |diff| vs default {rdiff:.2e})")
        from torch.profiler import ProfilerActivity, profile
        for _ in range(3):
            rf.rattention_design(q, k, v, tuning=tuning, **kw)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                rf.rattention_design(q, k, v, tuning=tuning, **kw)
            torch.cuda.synchronize()
        per = {e.key[:28]: round(e.device_time_total / 10 / 1000, 4) for e in prof.key_averages() if e.device_time_total > 0}
        rec[f"kernels_{Hkv}"] = per
        P(tag, f"Hkv {Hkv}: per-kernel ms {per}; segment kernel {spy.info()}; plain SWA {swa_info}; SWA pass "
               f"{swa_spy.info()}")
    if a.log:
        with open(a.log, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
