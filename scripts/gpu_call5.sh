#!/usr/bin/env bash
# RULER throughput (NIAH 32k, gemma3-270m shape, random weights) triton vs hf with a full-batch
# warm-up and 3 timed batches per backend: scripts/gpu_e2e.sh part 3 only. Packed into $OUT/gpu_call5.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_prelude.sh gpu_call5
tar xzf .whl/head_kernels.tgz  # the committed prefill kernels, not edits in progress
PARTS=ruler RULER_N=24 OUT=$W bash scripts/gpu_e2e.sh > $W/gpu_e2e_stdout.txt 2>&1
tail -12 $W/gpu_e2e_stdout.txt
python3 -m rattn_eval.bench.batch_times $W/gpu_e2e/ruler_triton $W/gpu_e2e/ruler_hf > $W/ruler_batches.txt 2>&1
cat $W/ruler_batches.txt
