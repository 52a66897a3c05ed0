"""Throughput of lm-eval `loglikelihood` requests: `rattn` (our native model, torch backend) vs lm-eval's
own `hf` model, on the same SmolLM2-135M weights and the same requests, in one process.

Requests are those lm-eval builds for the local multiple-choice task (tests/lm_eval/tasks/rattn_local_mc,
12 questions x 4 choices = 48 requests), repeated `--repeat` times (repeats are exact duplicates,
which both models score once). The two models run alternately,
`--rounds` times each, and the median wall time of `lm.loglikelihood(requests)` is reported (model
loading excluded). Run from the repository root:

    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 \\
        .venv/bin/python results/lm_eval/bench_loglikelihood.py --threads 1 --out results/lm_eval/cpu.json
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def build_requests(repeat: int):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(REPO / "tests" / "lm_eval" / "tasks"), include_defaults=False)
    task = tm.load(["rattn_local_mc"])["tasks"]["rattn_local_mc"]
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return [inst for inst in task.instances] * repeat


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    sys.path.insert(0, str(REPO / "tests" / "lm_eval"))
    from lmeval_support import export_hf_dir

    from rattn_eval.integrations.lm_eval import RattnLM

    requests = build_requests(args.repeat)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = export_hf_dir(args.model, Path(tmp))
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            lms = {
                "rattn (native, torch)": RattnLM(args.model, backend="torch", device="cpu", dtype="float32",
                                                 batch_size=bs),
                "hf (lm-eval HFLM)": HFLM(pretrained=str(hf_dir), device="cpu", dtype="float32", batch_size=bs),
            }
            times = {name: [] for name in lms}
            answers = {}
            for _ in range(args.rounds):
                for name, lm in lms.items():
                    t0 = time.perf_counter()
                    answers[name] = lm.loglikelihood(requests, disable_tqdm=True)
                    times[name].append(time.perf_counter() - t0)
            a, b = answers.values()
            max_diff = max(abs(x[0] - y[0]) for x, y in zip(a, b))
            for name, ts in times.items():
                med = statistics.median(ts)
                rows.append(dict(model=args.model, lm=name, batch_size=bs, requests=len(requests),
                                 median_s=round(med, 3), requests_per_s=round(len(requests) / med, 2),
                                 all_s=[round(t, 3) for t in ts], max_abs_ll_diff=max_diff))
                print(f"{name:24s} batch {bs:2d}: {len(requests)} requests, median {med:.3f} s, "
                      f"{len(requests) / med:.1f} req/s (runs {[round(t, 2) for t in ts]})", flush=True)
            del lms
    env = dict(python=platform.python_version(), torch=torch.__version__, lm_eval=lm_eval.__version__,
               cpu=platform.processor() or platform.machine(), threads=args.threads,
               command="OPENBLAS_NUM_THREADS=1 .venv/bin/python results/lm_eval/bench_loglikelihood.py "
                       + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(env=env, rows=rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
