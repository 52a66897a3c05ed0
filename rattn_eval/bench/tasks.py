"""Task generation speed: ours vs lm-eval 0.4.13's RULER generators, same tokenizer, same process.

    python -m rattn_eval.bench.tasks [--length 32k] [-n 100] [--lm-eval-n 50] [--out FILE]

Times all 11 synthetic tasks x n samples with the SmolLM2 tokenizer (disk cache off), then
lm-eval's generators for the tasks it can build offline (niah_single_1, niah_multikey_2,
niah_multikey_3, ruler_vt, ruler_cwe, ruler_fwe), driven directly with `num_samples` so a
smaller count can be timed and scaled. Reports samples/s and the mean fill of the length
budget, (prompt tokens + generation budget) / L.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from . import int_at_least, run_script, single_length


def bench_ours(tok, length: int, n: int, prompts: str = "ruler") -> list[tuple[str, float, int, float, float]]:
    """(task, wall s, samples, fill, process CPU s) per synthetic task."""
    from rattn_eval import tasks

    rows = []
    for name in tasks.GROUPS["synthetic"]:
        t0, c0 = time.perf_counter(), time.process_time()
        samples = tasks.generate(name, tok, length=length, n=n, seed=0, use_cache=False, prompts=prompts)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        fill = sum(s.num_tokens + s.max_new_tokens for s in samples) / (len(samples) * length)
        rows.append((name, dt, len(samples), fill, cpu))
    return rows


def bench_lm_eval(tok_dir: str, length: int, n: int) -> list[tuple[str, float, int, float, float]]:
    """lm-eval's own generators; `length` of each record is its prompt tokens + generation budget."""
    import logging

    logging.disable(logging.WARNING)
    from transformers import AutoTokenizer

    from lm_eval.tasks.ruler import cwe_utils, fwe_utils, niah_utils, vt_utils
    from lm_eval.tasks.ruler.prepare_niah import generate_samples, get_haystack

    hf = AutoTokenizer.from_pretrained(tok_dir)

    def niah(haystack, k, v):
        return lambda: generate_samples(get_haystack(type_haystack=haystack), max_seq_length=length,
                                        template=niah_utils.TEMPLATE, type_haystack=haystack, type_needle_k=k,
                                        type_needle_v=v, num_samples=n, TOKENIZER=hf)

    def vt():
        icl = vt_utils.sys_vartrack_w_noise_random(tokenizer=hf, num_samples=1, max_seq_length=500, incremental=5)[0]
        return vt_utils.sys_vartrack_w_noise_random(tokenizer=hf, num_samples=n, max_seq_length=length,
                                                    icl_example=icl)

    jobs = {
        "niah_single_1": niah("repeat", "words", "numbers"),
        "niah_multikey_2": niah("needle", "words", "numbers"),
        "niah_multikey_3": niah("needle", "uuids", "uuids"),
        "ruler_vt": vt,
        "ruler_cwe": lambda: cwe_utils.sys_word_pair_random(num_samples=n, max_seq_length=length, tokenizer=hf),
        "ruler_fwe": lambda: fwe_utils.sys_kwext(tokenizer=hf, max_seq_length=length, num_samples=n),
    }
    rows = []
    for name, job in jobs.items():
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            recs = list(job())
        except Exception as e:  # report what could not run offline instead of stopping the benchmark
            rows.append((name, float("nan"), 0, float("nan"), float("nan")))
            print(f"lm-eval {name}: failed: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        fill = sum(r["length"] for r in recs) / (len(recs) * length) if recs else float("nan")
        rows.append((name, dt, len(recs), fill, cpu))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="rattn-eval bench tasks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=single_length, default="32k", help="sample length, e.g. 4096 or 32k")
    ap.add_argument("-n", type=int_at_least(1), default=100, help="samples per task for ours")
    ap.add_argument("--lm-eval-n", type=int_at_least(0), default=50, help="samples per task for lm-eval (0: skip)")
    ap.add_argument("--prompts", choices=("ruler", "native"), default="ruler", help="prompt profile of our samples")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from rattn_eval.tokenizer import load_tokenizer
    from rattn_eval.tokenizer import smollm2_tokenizer_dir

    length = args.length
    tok_dir = smollm2_tokenizer_dir()
    tok = load_tokenizer(tok_dir)
    tok.encode("warm up")
    lines = [
        f"# command: python -m rattn_eval.bench.tasks {' '.join(argv if argv is not None else sys.argv[1:])}",
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
        f"python {platform.python_version()}; tokenizer SmolLM2-135M ({tok.name}); L = {length}",
        "# fill = mean (prompt tokens + generation budget) / L; samples/s = samples / wall seconds;",
        "# cpu s = process CPU seconds (all threads), which a busy shared machine inflates less than wall time",
        f"# load average at start: {os.getloadavg()[0]:.1f}",
        "",
        f"ours (n={args.n} per task, --prompts {args.prompts}, disk cache off, first call includes per-corpus "
        "token counts)",
        f"{'task':18s} {'seconds':>8s} {'cpu s':>7s} {'samples/s':>10s} {'fill':>7s}",
    ]
    t_all, c_all = time.perf_counter(), time.process_time()
    ours = bench_ours(tok, length, args.n, args.prompts)
    total, total_cpu = time.perf_counter() - t_all, time.process_time() - c_all
    for name, dt, cnt, fill, cpu in ours:
        lines.append(f"{name:18s} {dt:8.2f} {cpu:7.2f} {cnt / dt:10.1f} {fill:7.4f}")
    lines.append(f"{'all 11 tasks':18s} {total:8.2f} {total_cpu:7.2f} {sum(r[2] for r in ours) / total:10.1f}")
    print("\n".join(lines), flush=True)

    if args.lm_eval_n > 0:
        theirs = bench_lm_eval(str(tok_dir), length, args.lm_eval_n)
        more = ["", f"lm-eval 0.4.13 RULER generators (n={args.lm_eval_n} per task; samples/s scales to any n)",
                f"{'task':18s} {'seconds':>8s} {'cpu s':>7s} {'samples/s':>10s} {'fill':>7s} {'ours samples/s':>15s} "
                f"{'speedup':>8s} {'cpu/sample ratio':>17s}"]
        ours_by = {r[0]: r for r in ours}
        mapping = {"ruler_vt": "vt", "ruler_cwe": "cwe", "ruler_fwe": "fwe"}
        for name, dt, cnt, fill, cpu in theirs:
            o = ours_by[mapping.get(name, name)]
            ours_rate = o[2] / o[1]
            rate = cnt / dt if cnt else float("nan")
            cpu_ratio = (cpu / cnt) / (o[4] / o[2]) if cnt else float("nan")
            more.append(f"{name:18s} {dt:8.2f} {cpu:7.2f} {rate:10.2f} {fill:7.4f} {ours_rate:15.1f} "
                        f"{ours_rate / rate:7.1f}x {cpu_ratio:16.1f}x")
        print("\n".join(more[0:]), flush=True)
        lines += more
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main, "rattn-eval bench tasks"))
