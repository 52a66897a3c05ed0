#!/usr/bin/env bash
# One H200 call for issue 8's prefill speed work: the sweep (picks and applies RLA_TUNING), then the
# kernel benchmark and the GPU tests on the applied setting. Output packed into $OUT/prefill.tgz.
#   SWEEP_BUDGET_S  seconds after which the sweep skips further state / output-pass variants (default 170)
#   SWEEP_ONLY=1    stop after the sweep (an exploratory call)
#   SKIP_SWEEP=1    no sweep: benchmark and test the committed RLA_TUNING
#   SWEEP_ARGS      extra sweep arguments (--final: end to end only, the committed setting and its variants)
# The GPU tests get whatever is left of a 590 s call.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu_prelude.sh prefill
echo "== sweep"
[ "${SKIP_SWEEP:-0}" = 1 ] && echo "skipped (SKIP_SWEEP=1)" > $W/sweep.txt || timeout 280 python3 results/bench/sweep_prefill.py --apply ${SWEEP_ARGS:-} --budget-s "${SWEEP_BUDGET_S:-170}" > $W/sweep.txt 2>&1
echo "sweep rc=$? at ${SECONDS}s"
grep -E "winner|applied|best state|failed" $W/sweep.txt
grep -n "^RLA_TUNING" rattn_eval/kernels/swa/parallel.py | tee $W/applied.txt; cp rattn_eval/kernels/swa/parallel.py $W/parallel_applied.py
[ "${SWEEP_ONLY:-0}" = 1 ] && exit 0
echo "== bench"
timeout 170 python3 -m rattn_eval.bench.kernels --out $W > $W/bench_log.txt 2>&1
echo "bench rc=$? at ${SECONDS}s"; grep -E "ours_rattention|flex_swa|ours_swa " $W/kernels.txt | head -20
echo "== gpu prefill tests"
timeout $((560 - SECONDS)) python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/kernels/test_gpu_prefill.py > $W/gpu_prefill_tests.txt 2>&1
tail -3 $W/gpu_prefill_tests.txt
echo "== gpu decode tests"
timeout $((590 - SECONDS)) python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_decode.py -rs > $W/gpu_decode_tests.txt 2>&1
tail -3 $W/gpu_decode_tests.txt
