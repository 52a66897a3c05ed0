#!/usr/bin/env bash
# Data-parallel speed-up on a machine with 2 GPUs (issue 7): the same NIAH sweep at 32k once with one
# process and once with `torchrun --nproc-per-node 2`; reports samples/s with model load excluded
# (env.json "sessions"), the ratio (target >= 1.8), and whether the scores match, listing every
# prediction that differs (bf16 predictions may differ where batch composition differs).
#
#   bash scripts/gpu_2x.sh               # on the GPU machine; everything goes to $OUT (default ./gpu_out)
#   bash scripts/gpu_2x.sh --cpu-smoke   # the same steps on CPU: debug model, 1k, gloo (a check of this script)
#
# Overrides (environment): MODEL, TASKS, LEN, N (samples per task and length), BATCH, PY.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
"$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site

SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1
OUT=${OUT:-./gpu_out}
DIR="$OUT/gpu_2x"
rm -rf "$DIR"
mkdir -p "$DIR"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [[ $SMOKE == 1 ]]; then
  MODEL=${MODEL:-debug} TASKS=${TASKS:-niah_single_1,niah_single_2} LEN=${LEN:-1k} N=${N:-2} BATCH=${BATCH:-2}
  DEVICE=(--device cpu)
else
  LEN=${LEN:-32k} TASKS=${TASKS:-niah_single_1,niah_single_2,niah_single_3} N=${N:-64} BATCH=${BATCH:-8}
  DEVICE=()
  ngpu=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  if (( ngpu < 2 )); then echo "gpu_2x.sh: needs 2 GPUs, found $ngpu" >&2; exit 1; fi
  nvidia-smi > "$DIR/nvidia-smi.txt" 2>&1 || true
  # tiny-rattn when it is shipped and reaches the length (its tokenizer must load here), else debug
  if [[ -z "${MODEL:-}" ]]; then MODEL=$("$PY" - "$LEN" <<'EOF'
import sys
from rattn_eval.tasks import parse_length
try:
    from rattn_eval.models import load_model
    model, _ = load_model("tiny-rattn", device="cpu")
    print("tiny-rattn" if model.max_context >= parse_length(sys.argv[1]) else "debug")
except Exception as e:  # not shipped yet, or cannot load here: say so and use the debug model
    print(f"tiny-rattn unavailable ({type(e).__name__}: {e}); using debug", file=sys.stderr)
    print("debug")
EOF
  ); fi
fi
echo "model=$MODEL tasks=$TASKS len=$LEN n=$N batch=$BATCH" | tee "$DIR/settings.txt"

ARGS=(run -q -t "$TASKS" -l "$LEN" -n "$N" -m "$MODEL" -b "$BATCH" "${DEVICE[@]}")
port() { "$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

# Warm-up (not measured), one full batch per task: fills the sample cache and compiles the kernels for
# the timed runs' batch shapes (a 1-sample warm-up left that compilation inside the first timed batch), so neither timed run
# pays for compilation or sample generation that the other does not.
"$PY" -m rattn_eval.cli "${ARGS[@]}" --limit "$BATCH" --out "$DIR/warmup" > "$DIR/warmup.log" 2>&1

"$PY" -m rattn_eval.cli "${ARGS[@]}" --out "$DIR/single" 2>&1 | tee "$DIR/single.log"
"$PY" -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 --master-port "$(port)" \
  -m rattn_eval.cli "${ARGS[@]}" --out "$DIR/two" 2>&1 | tee "$DIR/two.log"

"$PY" - "$DIR" <<'EOF'
import json
import sys
from pathlib import Path

d = Path(sys.argv[1])


def load(name):
    run = d / name
    env = json.loads((run / "env.json").read_text())
    recs = {json.loads(x)["id"]: json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()}
    return env, env["sessions"][-1], json.loads((run / "summary.json").read_text()), recs


env1, s1, sum1, r1 = load("single")
env2, s2, sum2, r2 = load("two")
ratio = s2["samples_per_s"] / s1["samples_per_s"]
diff = [i for i in sorted(r1) if r1[i]["prediction"] != r2.get(i, {}).get("prediction")]
score_diff = [i for i in sorted(r1) if r1[i]["score"] != r2.get(i, {}).get("score")]
report = {
    "model": sum1["model"], "backend": sum1["backend"], "device": env1["device"],
    "tasks": sum1["tasks"], "lengths": sum1["lengths"], "n": sum1["n"], "batch_size": json.loads(
        (d / "single" / "config.json").read_text())["batch_size"],
    "single": s1, "two": s2, "ratio_samples_per_s": round(ratio, 3), "target_ratio": 1.8,
    "meets_target": ratio >= 1.8, "records": [len(r1), len(r2)], "same_ids": sorted(r1) == sorted(r2),
    "scores_single": sum1["scores"], "scores_two": sum2["scores"], "scores_match": sum1["scores"] == sum2["scores"],
    "avg": [sum1["avg"], sum2["avg"]], "predictions_differ": len(diff), "sample_scores_differ": len(score_diff),
    "differing": [{"id": i, "single": r1[i]["prediction"][:120], "two": r2.get(i, {}).get("prediction", "")[:120],
                   "score_single": r1[i]["score"], "score_two": r2.get(i, {}).get("score")} for i in diff],
}
(d / "report.json").write_text(json.dumps(report, indent=2) + "\n")
lines = [
    f"# 1 vs 2 processes: {report['model']} ({report['backend']}) on {report['device']}",
    f"tasks {', '.join(report['tasks'])}; lengths {report['lengths']}; n={report['n']}; batch {report['batch_size']}",
    "",
    "| processes | samples | generation wall (s) | samples/s | model load (s) |",
    "|---|---|---|---|---|",
    *(f"| {s['world_size']} | {s['samples']} | {s['generate_s']:.2f} | {s['samples_per_s']:.3f} | {s['model_load_s']:.2f} |"
      for s in (s1, s2)),
    "",
    f"ratio (2 / 1, model load excluded): **{ratio:.2f}x** (target >= 1.8: {'met' if ratio >= 1.8 else 'NOT met'})",
    f"same sample ids: {report['same_ids']}; scores match: {report['scores_match']} "
    f"(Avg {sum1['avg']} vs {sum2['avg']}); predictions that differ: {len(diff)}; per-sample scores that differ: {len(score_diff)}",
]
for x in report["differing"]:
    lines.append(f"- {x['id']}: score {x['score_single']} vs {x['score_two']}; {x['single']!r} vs {x['two']!r}")
(d / "report.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
