"""H200 exploration of the "segment" RAttention design (rla/segment.py) at T = 32k, B = 1, H = 16,
D = 128, w = 512, bf16, Hkv 16 and 4:

    python3 results/bench/segment_explore.py            # baselines: the committed design, the SWA passes
    python3 results/bench/segment_explore.py --cfg I    # config I of SEG_CFGS (one process per config:
                                                        # a failing launch cannot poison the others)

Per config: the end-to-end error at T = 4k (H 4, Hkv 2) against the fp32 chunked reference, then at
32k: phi pre-pass + segment totals + carry, the segment kernel (registers / spills), end to end.
"""

import argparse
import json
from importlib import import_module

import torch

rf = import_module("rattn_eval.kernels.rattention.fused")
rc = import_module("rattn_eval.kernels.rla.chunk")
rs = import_module("rattn_eval.kernels.rla.segment")
sp = import_module("rattn_eval.kernels.swa.parallel")
from prefill_tools import P, Spy, bench, write_tuning  # noqa: E402  (results/bench, the script's folder)
from rattn_eval.kernels import Rope  # noqa: E402
from rattn_eval.kernels.rattention.naive import rattention_chunked  # noqa: E402

T, H, D, W = 32768, 16, 128, 512


spy_seg = Spy(rs.rla_segment_kernel)
rs.rla_segment_kernel = spy_seg


def seg(BC, BV, nw, ns, pps=4, **extra):
    return dict(BC=BC, BV=BV, num_warps=nw, num_stages=ns, programs_per_sm=pps, **extra)


# Rounds 1-4 (segment_iterations/1_explore.txt .. 4_explore.txt) tried BV 32 / 64 / 128, BC 64 / 128, 4 and 8
# warps, halves in one program or split, phi(k) computed or read, 2 to 16 programs per SM: split + phi(k) read +
# BV 64 + 4 warps + 8 programs per SM won.
# (BC 64, BV 32, 4 warps, halves together, phi(k) computed failed to run there: illegal memory access.)
# Round 5 (5_explore.txt): group_heads, below, was no faster at Hkv 16 and slower at Hkv 4 (1.49-1.57 vs 1.24 ms).
SEG_CFGS = [  # round 5: the round-4 winner with one program per KV head (group_heads), programs per SM 4 / 8 / 16
    seg(64, 64, 4, 2, 8, split_f=True, phi_k=True, group_heads=True),
    seg(64, 64, 4, 2, 16, split_f=True, phi_k=True, group_heads=True),
    seg(64, 64, 4, 2, 4, split_f=True, phi_k=True, group_heads=True),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg", type=int, default=None, help="index into SEG_CFGS (default: only the baselines)")
    ap.add_argument("--log", default=None, help="append one JSON line per measurement")
    ap.add_argument("--apply", default=None, metavar="LOG",
                    help="read LOG; if the best segment config beats the committed design at 32k (Hkv 16 + Hkv 4, "
                         "correct at 4k), make it the default (RLA_TUNING design 'segment')")
    ap.add_argument("--compare", action="store_true",
                    help="end to end, the fused and segment designs at T 4k / 16k, Hkv 16 / 4, interleaved 3 times")
    a = ap.parse_args()
    if a.apply:
        return apply(a.apply)
    if a.compare:
        return compare()
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    bf = torch.bfloat16
    c = SEG_CFGS[a.cfg] if a.cfg is not None else None

    Tc, Hc, Hkvc = 4096, 4, 2
    qc, kc, vc = (torch.randn(1, Tc, h, D, device=dev, generator=g).to(bf) for h in (Hc, Hkvc, Hkvc))
    tc = tuple(x.contiguous() for x in Rope(D).tables(Tc, dev))
    gsc, grc = torch.rand(Hc, D, device=dev) + 0.5, torch.rand(Hc, D, device=dev) + 0.5
    refc = rattention_chunked(qc.float(), kc.float(), vc.float(), window=W, rope=tc, swa_norm_weight=gsc,
                              rla_norm_weight=grc).float()

    def run(q, k, v, tables, gs, gr, design, tuning):
        return rf.rattention_design(q, k, v, window=W, rope=tables, scale=None, feature_map="softmax",
                                    swa_norm_weight=gs, rla_norm_weight=gr, eps=1e-6, lengths=None, cu_seqlens=None,
                                    design=design, tuning=tuning)

    def rel_err(design, tuning):
        o = run(qc, kc, vc, tc, gsc, grc, design, tuning).float()
        return ((o - refc).norm() / refc.norm()).item()

    base = sp.RLA_TUNING
    committed = (base["design"], dict(cfg=base["cfg"], swa_cfg=base.get("swa_cfg"), state=base["state"]))
    if c is None:
        err = rel_err(*committed)
        P(f"committed 4k rel.err {err:.2e}")
    else:
        err = rel_err("segment", dict(segment=c))
        P(f"cfg {a.cfg} {c}: 4k rel.err {err:.2e}")
    rec = dict(cfg=c, err=err)

    for hkv in (16, 4):
        q = torch.randn(1, T, H, D, device=dev, generator=g).to(bf)
        k, v = (torch.randn(1, T, hkv, D, device=dev, generator=g).to(bf) for _ in range(2))
        tables = tuple(x.to(torch.float16).contiguous() for x in Rope(D).tables(T, dev))
        gs, gr = torch.rand(H, D, device=dev) + 0.5, torch.rand(H, D, device=dev) + 0.5
        seqs = sp.sequence_table(1, T, q.device, None, None, 64)
        kr = torch.empty_like(k)
        swa_cfg = base.get("swa_cfg")
        seqs_s = sp.sequence_table(1, T, q.device, None, None, swa_cfg["BM"])
        kw = dict(window=W, scale=D ** -0.5, kr=kr, rope=tables, swa_norm_weight=gs, rla_norm_weight=gr, eps=1e-6,
                  feature=0)
        if c is None:
            t_comm = bench(lambda: run(q, k, v, tables, gs, gr, *committed), rep=50)
            P(f"Hkv {hkv}: committed {committed[0]} end to end {t_comm:.3f} ms")
            rec[f"t{hkv}"] = t_comm
            out = torch.empty_like(q)
            parts = torch.zeros((2,) + tuple(q.shape), dtype=q.dtype, device=dev)
            for name, src in (("one raw o_rla", out), ("two partials", parts)):
                t_swa = bench(lambda: sp.launch_swa_fwd(q, k, v, out, seqs_s, cfg=swa_cfg, do_swa=True, do_rla=False,
                                                        add_out=True, add_src=src, add_raw=True, states=None, **kw))
                P(f"Hkv {hkv}: SWA pass (rope, norms, adds {name}) {t_swa:.3f} ms")
            t_plain = bench(lambda: sp.launch_swa_fwd(q, k, v, out, seqs_s, window=W, scale=D ** -0.5, cfg=swa_cfg))
            P(f"Hkv {hkv}: plain SWA {t_plain:.3f} ms")
            continue
        split = c.get("split_f", False)
        out = torch.empty(((2,) if split else ()) + tuple(q.shape), dtype=q.dtype, device=dev)
        nv = D // c["BV"]
        heads = hkv if c.get("group_heads") else H
        seg_len = rs.segment_length(seqs, heads, nv * (2 if split else 1), c["BC"], 64, c["programs_per_sm"], q.device)
        ck = dict(window=W, feature=0, seg_len=seg_len, block=64, kr=kr, rope=tables, phi_pass=bool(c.get("phi_k")))
        carry, phi = rc.rla_segment_carry(k, v, seqs, **ck)
        t_tot = bench(lambda: rc.rla_segment_carry(k, v, seqs, **ck))
        t_seg = bench(lambda: rs.launch_rla_segments(q, k, v, out, seqs, window=W, feature=0, cfg=c, seg_len=seg_len,
                                                      carry=carry, phi=phi))
        info = spy_seg.info()
        t_e2e = bench(lambda: run(q, k, v, tables, gs, gr, "segment", dict(segment=c)), rep=50)
        rec[f"t{hkv}"] = t_e2e
        nseg = (T + seg_len - 1) // seg_len
        P(f"Hkv {hkv} cfg {a.cfg} seg_len {seg_len} ({nseg} segs): phi/totals/carry {t_tot:.3f} ms, segment kernel "
          f"{t_seg:.3f} ms [{info}], end to end {t_e2e:.3f} ms")


    if a.log:
        with open(a.log, "a") as f:
            f.write(json.dumps(rec) + "\n")


def compare():
    g = torch.Generator(device="cuda").manual_seed(0)
    base = sp.RLA_TUNING
    designs = {"fused": dict(cfg=base["cfg"], swa_cfg=base.get("swa_cfg"), state=base["state"]),
               "segment": dict(segment=base.get("segment", {}))}
    for t in (4096, 16384):
        for hkv in (16, 4):
            q = torch.randn(1, t, H, D, device="cuda", generator=g).to(torch.bfloat16)
            k, v = (torch.randn(1, t, hkv, D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2))
            tables = Rope(D).tables(t, "cuda")
            times = {d: [] for d in designs}
            for _ in range(3):
                for d, tuning in designs.items():
                    times[d].append(bench(lambda: rf.rattention_design(
                        q, k, v, window=W, rope=tables, scale=None, feature_map="softmax", swa_norm_weight=None,
                        rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None, design=d, tuning=tuning),
                        rep=50))
            P(f"T {t} Hkv {hkv}: " + ", ".join(f"{d} " + " / ".join(f"{x:.3f}" for x in ts) + " ms"
                                               for d, ts in times.items()))


def apply(log):
    recs = [json.loads(x) for x in open(log) if x.strip()]
    base = [r for r in recs if r["cfg"] is None and "t4" in r]
    segs = [r for r in recs if r["cfg"] is not None and "t4" in r and r["err"] <= 1e-2]
    if not base or not segs:
        P("apply: nothing to compare")
        return
    b = base[0]["t16"] + base[0]["t4"]
    best = min(segs, key=lambda r: r["t16"] + r["t4"])
    P(f"apply: committed {base[0]['t16']:.3f} + {base[0]['t4']:.3f} ms; best segment {best['cfg']}: "
      f"{best['t16']:.3f} + {best['t4']:.3f} ms")
    if best["t16"] + best["t4"] >= b:
        P("apply: the committed design stays")
        return
    tuned = dict(sp.RLA_TUNING, design="segment", segment={k: v for k, v in best["cfg"].items()})
    line = write_tuning(sp, tuned)
    P(f"applied to {sp.__file__}: {line}")


if __name__ == "__main__":
    main()
