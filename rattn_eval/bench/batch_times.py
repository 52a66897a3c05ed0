"""Per-batch times of rattn-eval runs, from their records (`timings` of each record's batch), read
through `rattn_eval.results`.

A run's first batch can include kernel compilation and CUDA-graph capture for its batch shape (when
its warm-up used a smaller batch). This prints every batch and the throughput with the first batch of
each run (each rank) left out, and from the median batch, beside the whole-run figure.

    python -m rattn_eval.bench.batch_times results/bench/h200_ruler/ruler_triton results/bench/h200_ruler/ruler_hf
    python -m rattn_eval.bench.batch_times results/bench/h200x2_scaling/two results/bench/h200x2_scaling/single
"""

import sys
from pathlib import Path

from rattn_eval.results import read_env, read_run_config, read_run_records


def ranks_of(run: Path, records: list[dict], world: int) -> dict[str, int]:
    """The rank that generated each sample: the deal of `rattn_eval.distributed.assign_shares`
    repeated over the run's cells (a fresh run: every sample was missing)."""
    if world == 1:
        return {r["id"]: 0 for r in records}
    from types import SimpleNamespace

    from rattn_eval.distributed import assign_shares

    config = read_run_config(run)
    cells = [[SimpleNamespace(**r) for r in records if r["task"] == t and r["length"] == n]
             for t in config["resolved_tasks"] for n in config["lengths"]]
    return {i: rank for rank, ids in enumerate(assign_shares(cells, world)) for i in ids}


def batches(run: Path, world: int) -> list[tuple[int, dict, int]]:
    """[(samples, timings, rank)] per batch, in record order."""
    records = list(read_run_records(run).values())
    rank = ranks_of(run, records, world)
    seen: dict[tuple, list] = {}
    for r in records:
        t = r["timings"]
        key = (rank[r["id"]], t["prefill_s"], t["decode_s"], t["batch_s"])
        seen.setdefault(key, [0, t, rank[r["id"]]])[0] += 1
    return [(n, t, rk) for n, t, rk in seen.values()]


def main(runs: list[str]) -> None:
    rates, medians = {}, {}
    for name in runs:
        run = Path(name)
        session = read_env(run)["sessions"][-1]
        world = session["world_size"]
        rows = batches(run, world)
        print(f"== {run} (world size {world}): {len(rows)} batches, {session['samples']} samples, "
              f"generate_s {session['generate_s']:.2f}, samples/s {session['samples_per_s']:.3f}")
        for n, t, rank in rows:
            print(f"   rank {rank}  {n} samples  prefill {t['prefill_s']:.3f} s  decode {t['decode_s']:.3f} s  "
                  f"batch {t['batch_s']:.3f} s")
        # steady state: drop the first batch of each rank; ranks run side by side, so their rates add up
        rate = 0.0
        for rk in range(world):
            mine = [(n, t) for n, t, r in rows if r == rk]
            rest = mine[1:] or mine
            rate += sum(n for n, _ in rest) / sum(t["batch_s"] for _, t in rest)
        rates[name] = rate
        times = sorted(t["batch_s"] for _, t, _ in rows)
        median = times[len(times) // 2]
        per_batch = sum(n for n, _, _ in rows) / len(rows)
        medians[name] = world * per_batch / median
        print(f"   steady state (first batch of each rank left out): {rate:.3f} samples/s")
        print(f"   from the median batch ({median:.3f} s, {world} rank(s) side by side): {medians[name]:.3f} samples/s")
    if len(runs) == 2:
        a, b = runs
        print(f"\nratio {Path(a).name} / {Path(b).name}: steady state {rates[a] / rates[b]:.2f}x, "
              f"median batch {medians[a] / medians[b]:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
