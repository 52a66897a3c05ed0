"""H200 sweep for the RAttention prefill (issue 8) at T = 32k, B = 1, H = 16, Hkv = 16, D = 128, w = 512, bf16.

    python3 results/bench/sweep_prefill.py [--apply] [--budget-s 240]

Times each pass of the "two_kernel" design on its own, per state-block size (64, 128, 256 rows):
  A  the SWA pass (SWA + RoPE + norm, adds the RLA pass's output) and plain SWA, per tile config;
  B  the chunk-state scan, per scan setting (carry "fold" / "rescan", scan step, value slice,
     warps, stages, programs per SM);
  C  the RLA output pass, per tile config, on the fastest states of its state-block size;
then runs the most promising whole combinations end to end (plus the one-pass "fused" design),
each first checked against the fp32 chunked reference (T = 4k, H = 4, Hkv = 2, relative RMS <= 1e-2):
only correct variants can win. Prints registers / spills / shared memory of each compiled kernel
and a torch.profiler breakdown of the winner. With --apply, the winner is written into the
RLA_TUNING line of rattn_eval/kernels/swa/parallel.py (the package default), so a benchmark run
after it in the same checkout measures the committed setting.
"""

import argparse
import time
from importlib import import_module

import torch
import triton.testing

rf = import_module("rattn_eval.kernels.rattention.fused")  # (rattn_eval.kernels.rattention is also a function)
rc = import_module("rattn_eval.kernels.rla.chunk")
sp = import_module("rattn_eval.kernels.swa.parallel")
from prefill_tools import P, Spy, write_tuning  # noqa: E402  (results/bench, the script's folder)
from rattn_eval.kernels import Rope  # noqa: E402
from rattn_eval.kernels.rattention.naive import rattention_chunked  # noqa: E402

T, H, D, W = 32768, 16, 128, 512
T0 = time.time()
CPU = not torch.cuda.is_available()  # dry run of the script under TRITON_INTERPRET=1 (tiny shapes)
if CPU:
    T, W = 512, 40


def bench(fn, rep=30):
    if CPU:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return triton.testing.do_bench(fn, warmup=5, rep=rep)


spy_out = Spy(sp.swa_fwd_kernel)
spy_state = Spy(rc.rla_chunk_state_kernel)
sp.swa_fwd_kernel = spy_out
rc.rla_chunk_state_kernel = spy_state


def run_design(q, k, v, tables, gs, gr, design, tuning):
    return rf.rattention_design(q, k, v, window=W, rope=tables, scale=None, feature_map="softmax", swa_norm_weight=gs,
                                rla_norm_weight=gr, eps=1e-6, lengths=None, cu_seqlens=None, design=design,
                                tuning=tuning)


def cfg(BM, BN, nw, ns, **extra):
    return dict(BM=BM, BN=BN, num_warps=nw, num_stages=ns, **extra)


# (results/bench/prefill_iterations/1_sweep.txt tried 128x64, 128x128, 64x128 and 64x32 tiles as well: slower)
SWA_CFGS = [cfg(64, 64, 4, 3), cfg(64, 64, 4, 3, heads_first=True)]


def state(block, carry="fold", block_t=None, block_v=None, num_warps=8, num_stages=2, programs_per_sm=4,
          phi_pass=False):
    return dict(state_block=block, carry=carry, block_t=block_t or block, block_v=block_v, num_warps=num_warps,
                num_stages=num_stages, programs_per_sm=programs_per_sm, phi_pass=phi_pass)


# 1_sweep.txt: value slices of 64, 4 warps and state blocks of 64 were slower; 256 x 256-key steps do not fit.
# 2_sweep.txt: the phi(k) pre-pass wins (0.484 vs 0.537 ms); 2 or 8 programs per SM and 4 stages do not help.
STATE_VARIANTS = [
    state(128, block_t=128, num_stages=3, phi_pass=True),  # the best of 2_sweep.txt
    state(128, block_t=64, num_stages=3, phi_pass=True),
    state(256, block_t=64, num_stages=3, phi_pass=True),
]

# 2_sweep.txt: a 16-bit carry is faster than fp32 in every output config; 4 warps at 128 x 128 or 2 stages spill
OUT_CFGS = {  # RLA output pass tiles per state block (BM divides it)
    128: [cfg(128, 128, 8, 2), cfg(128, 64, 4, 1), cfg(128, 128, 8, 2, phi_k=True), cfg(128, 64, 4, 1, phi_k=True),
          cfg(128, 128, 8, 2, heads_first=True), cfg(128, 128, 8, 2, phi_k=True, heads_first=True),
          cfg(128, 64, 8, 2, phi_k=True)],
    256: [cfg(128, 64, 8, 2, phi_k=True)],
}
CARRY_DTYPES = ("state",)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apply", action="store_true")
    ap.add_argument("--budget-s", type=float, default=240.0)
    ap.add_argument("--final", action="store_true",
                    help="skip the per-pass sweeps: end to end, the committed RLA_TUNING and the variants in FINAL")
    a = ap.parse_args()
    dev = "cpu" if CPU else "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    bf = torch.float16 if CPU else torch.bfloat16
    over = lambda: time.time() - T0 > a.budget_s  # noqa: E731

    # correctness set (as tests/kernels/test_gpu_prefill.py, T = 4k)
    Tc, Hc, Hkvc = (300, 2, 1) if CPU else (4096, 4, 2)
    qc, kc, vc = (torch.randn(1, Tc, h, D, device=dev, generator=g).to(bf) for h in (Hc, Hkvc, Hkvc))
    tc = tuple(x.contiguous() for x in Rope(D).tables(Tc, dev))
    gsc, grc = torch.rand(Hc, D, device=dev) + 0.5, torch.rand(Hc, D, device=dev) + 0.5
    refc = rattention_chunked(qc.float(), kc.float(), vc.float(), window=W, rope=tc, swa_norm_weight=gsc,
                              rla_norm_weight=grc).float()

    def rel_err(design, tuning):
        o = run_design(qc, kc, vc, tc, gsc, grc, design, tuning).float()
        return ((o - refc).norm() / refc.norm()).item()

    Hs = 1 if CPU else H
    q, k, v = (torch.randn(1, T, Hs, D, device=dev, generator=g).to(bf) for _ in range(3))
    tables = tuple(x.contiguous() for x in Rope(D).tables(T, dev))
    gs, gr = torch.rand(Hs, D, device=dev) + 0.5, torch.rand(Hs, D, device=dev) + 0.5
    out = torch.empty_like(q)
    kr = torch.empty_like(k)
    P("baseline before this change (results/bench/kernels_h200.txt): ours_rattention 2.296 ms at 32k/16, "
      "ours_swa 0.548 ms, flex_swa 0.698 ms")

    def timed(what, fn, spy):
        try:
            t = bench(fn)
        except Exception as e:  # noqa: BLE001
            P(f"{what}: failed {type(e).__name__}: {str(e)[:160]}")
            return None
        P(f"{what}: {t:.3f} ms  {spy.info()}")
        return t

    if a.final:
        return final(a, q, k, v, tables, gs, gr, rel_err)

    # A. the SWA pass of two_kernel, and plain SWA, per tile config
    # the state pass writes kr (rotated k), which the SWA pass reads; its states are not needed here
    rc.rla_prefix_states(k, v, sp.sequence_table(1, T, q.device, None, None, 64), window=W, feature=0,
                         cfg=cfg(64, 64, 4, 2), kr=kr, rope=tables, **state(64))
    kw = dict(window=W, scale=D ** -0.5, kr=kr, rope=tables, swa_norm_weight=gs, rla_norm_weight=gr, eps=1e-6,
              feature=0)
    swa_best, plain_best = (1e9, None), (1e9, None)
    for c in SWA_CFGS:
        seqs_c = sp.sequence_table(1, T, q.device, None, None, c["BM"])
        t = timed(f"A swa+add pass {c}", lambda: sp.launch_swa_fwd(q, k, v, out, seqs_c, cfg=c, do_swa=True, do_rla=False,
                                                                   add_out=True, states=None, **kw), spy_out)
        tp = timed(f"A plain swa     {c}", lambda: sp.launch_swa_fwd(q, k, v, out, seqs_c, window=W, scale=D ** -0.5,
                                                                    cfg=c), spy_out)
        if tp is not None and tp < plain_best[0]:
            plain_best = (tp, c)
        if t is not None and t < swa_best[0]:
            swa_best = (t, c)
    P(f"A best swa+add pass: {swa_best[1]} {swa_best[0]:.3f} ms")
    c = swa_best[1]
    seqs_c = sp.sequence_table(1, T, q.device, None, None, c["BM"])
    timed(f"A (diagnostic) swa+add pass without RoPE {c}",
          lambda: sp.launch_swa_fwd(q, k, v, out, seqs_c, cfg=c, do_swa=True, do_rla=False, add_out=True, states=None,
                                    **dict(kw, rope=None)), spy_out)

    # B. state scans, grouped by state block
    best_state = {}
    for sv in STATE_VARIANTS:
        if over():
            P(f"budget reached: skipping state {sv}")
            continue
        bs = sv["state_block"]
        c0 = OUT_CFGS[bs][0]
        seqs = sp.sequence_table(1, T, q.device, None, None, c0["BM"])
        t = timed(f"B state {sv}", lambda: rc.rla_prefix_states(k, v, seqs, window=W, feature=0, cfg=c0, kr=kr,
                                                                rope=tables, **sv), spy_state)
        if t is not None and t < best_state.get(bs, (1e9,))[0]:
            best_state[bs] = (t, sv)
    for bs, (t, sv) in sorted(best_state.items()):
        P(f"B best state for block {bs}: {sv} {t:.3f} ms")
    for bs, (t, sv) in sorted(best_state.items()):
        c0 = OUT_CFGS[bs][0]
        seqs = sp.sequence_table(1, T, q.device, None, None, c0["BM"])
        timed(f"B (diagnostic) state without RoPE {sv}", lambda: rc.rla_prefix_states(k, v, seqs, window=W, feature=0,
                                                                                      cfg=c0, **sv), spy_state)

    # C. RLA output pass per state block, on that block's best states
    combos = []
    for bs, (ts, sv0) in sorted(best_state.items()):
        for c, carry_dtype in [(c, d) for c in OUT_CFGS[bs] for d in CARRY_DTYPES]:
            if over():
                P(f"budget reached: skipping output pass {c} (block {bs})")
                continue
            sv = dict(sv0, carry_dtype=carry_dtype)
            c = dict(c, early_norm=True)
            seqs = sp.sequence_table(1, T, q.device, None, None, c["BM"])
            try:
                st = rc.rla_prefix_states(k, v, seqs, window=W, feature=0, cfg=c, kr=kr, rope=tables, **sv)
            except Exception as e:  # noqa: BLE001
                P(f"C states for {c}: failed {type(e).__name__}: {str(e)[:160]}")
                continue
            t = timed(f"C rla output pass {c} state block {bs} carry {carry_dtype}",
                      lambda: sp.launch_swa_fwd(q, k, v, out, seqs, cfg=c, do_swa=False, do_rla=True, norm_out=True,
                                                states=st, **kw), spy_out)
            if t is not None:
                combos.append((ts + t + swa_best[0], sv, c))
    combos.sort(key=lambda r: r[0])
    for est, sv, c in combos[:5]:
        P(f"C estimate {est:.3f} ms = state {sv} + output {c} + swa {swa_best[1]}")

    # D. end to end: the best few two_kernel combinations and the fused design
    candidates = [("two_kernel", dict(cfg=c, swa_cfg=swa_best[1], state=sv)) for _, sv, c in combos[:3]]
    if 128 in best_state:
        candidates.append(("fused", dict(cfg=cfg(128, 64, 8, 2, early_norm=True, phi_k=True), swa_cfg=swa_best[1],
                                         state=dict(best_state[128][1], carry_dtype="state"))))
    results = []
    for design, tuning in candidates:
        try:
            err = rel_err(design, tuning)
            t = bench(lambda: run_design(q, k, v, tables, gs, gr, design, tuning), rep=50)
        except Exception as e:  # noqa: BLE001
            P(f"D end-to-end {design} {tuning}: failed {type(e).__name__}: {str(e)[:200]}")
            continue
        ok = err <= 1e-2
        P(f"D end-to-end {design} {tuning}: {t:.3f} ms, 4k rel.err vs fp32 ref {err:.2e} {'ok' if ok else 'WRONG'}")
        if ok:
            results.append((t, design, tuning))
    pick(a, results, q, k, v, tables, gs, gr, plain_best[1])


def final(a, q, k, v, tables, gs, gr, rel_err):
    """End to end only: the committed RLA_TUNING against the variants of it in FINAL_VARIANTS."""
    base = sp.RLA_TUNING
    results = []
    for name, design, tuning in FINAL_VARIANTS(base):
        try:
            err = rel_err(design, tuning)
            t = bench(lambda: run_design(q, k, v, tables, gs, gr, design, tuning), rep=50)
        except Exception as e:  # noqa: BLE001
            P(f"D end-to-end {name}: failed {type(e).__name__}: {str(e)[:200]}")
            continue
        ok = err <= 1e-2
        P(f"D end-to-end {name} {design} {tuning}: {t:.3f} ms, 4k rel.err vs fp32 ref {err:.2e} {'ok' if ok else 'WRONG'}")
        if ok:
            results.append((t, design, tuning))
    pick(a, results, q, k, v, tables, gs, gr, base.get("plain_swa_cfg"))


def FINAL_VARIANTS(base):
    d, c, sw, st = base["design"], base["cfg"], base.get("swa_cfg"), base["state"]
    other = "two_kernel" if d == "fused" else "fused"
    return [
        ("committed", d, dict(cfg=c, swa_cfg=sw, state=st)),
        ("heads-first output pass", d, dict(cfg=dict(c, heads_first=True), swa_cfg=sw, state=st)),
        ("rescan states (no carry in the output pass)", d, dict(cfg=c, swa_cfg=sw, state=dict(st, carry="rescan"))),
        ("heads-first + rescan", d, dict(cfg=dict(c, heads_first=True), swa_cfg=sw, state=dict(st, carry="rescan"))),
        (f"design {other}", other, dict(cfg=c, swa_cfg=sw, state=st)),
    ]


def pick(a, results, q, k, v, tables, gs, gr, plain_swa_cfg):
    results.sort(key=lambda r: r[0])
    t, design, tuning = results[0]
    P(f"winner: {design} {tuning}: {t:.3f} ms")

    from torch.profiler import ProfilerActivity, profile
    for _ in range(3):
        run_design(q, k, v, tables, gs, gr, design, tuning)
    if not CPU:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([] if CPU else [ProfilerActivity.CUDA])) as prof:
        for _ in range(1 if CPU else 10):
            run_design(q, k, v, tables, gs, gr, design, tuning)
        if not CPU:
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total" if CPU else "cuda_time_total", row_limit=8), flush=True)

    if a.apply:
        tuned = dict(design=design, cfg=dict(tuning["cfg"], early_norm=True), swa_cfg=tuning["swa_cfg"],
                     state=tuning["state"], plain_swa_cfg=plain_swa_cfg)
        if "segment" in sp.RLA_TUNING:  # the segment design's own tuning (results/bench/segment_explore.py)
            tuned["segment"] = sp.RLA_TUNING["segment"]
        line = write_tuning(sp, tuned)
        P(f"applied to {sp.__file__}: {line}")


if __name__ == "__main__":
    main()
