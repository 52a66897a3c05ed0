#!/usr/bin/env bash
# One H200 call for the "segment" RAttention design: results/bench/segment_explore.py (baselines, then each
# config of SEG_CFGS in its own process), --apply (the segment design becomes the default if faster at 32k),
# then the kernel benchmark and the GPU tests on whatever is the default. Output in $OUT/segment.tgz.
#   CFGS: config indices (default: all)   EXPLORE_ONLY=1: stop after --apply   COMPARE=0: skip --compare
#   EXPLORE_UNTIL_S (120), TESTS_UNTIL_S (560): time marks within the call
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu_prelude.sh segment
N=$(python3 -c "import sys; sys.path.insert(0, 'results/bench'); import segment_explore as s; print(len(s.SEG_CFGS))")
timeout 100 python3 results/bench/segment_explore.py --log $W/log.jsonl 2>&1 | tee -a $W/explore.txt
for i in ${CFGS:-$(seq 0 $((N - 1)))}; do
  [ $SECONDS -gt ${EXPLORE_UNTIL_S:-120} ] && { echo "time up before cfg $i" | tee -a $W/explore.txt; break; }
  timeout 60 python3 results/bench/segment_explore.py --cfg $i --log $W/log.jsonl 2>&1 | grep -v "^ \|^Traceback\|^Search\|^CUDA kernel" | tee -a $W/explore.txt
done
python3 results/bench/segment_explore.py --apply $W/log.jsonl 2>&1 | tee -a $W/explore.txt
grep -n "^RLA_TUNING" rattn_eval/kernels/swa/parallel.py > $W/applied.txt; cp rattn_eval/kernels/swa/parallel.py $W/parallel_applied.py
[ "${EXPLORE_ONLY:-0}" = 1 ] && exit 0
echo "== bench at ${SECONDS}s"
timeout 140 python3 -m rattn_eval.bench.kernels --out $W > $W/bench_log.txt 2>&1
echo "bench rc=$? at ${SECONDS}s"; grep -E "ours_rattention|flex_swa|ours_swa " $W/kernels.txt | head -20
if [ "${COMPARE:-1}" = 1 ]; then
  echo "== designs compared at 4k / 16k"
  timeout 90 python3 results/bench/segment_explore.py --compare 2>&1 | tee $W/compare.txt
fi
echo "== gpu prefill tests"
timeout $((${TESTS_UNTIL_S:-560} - SECONDS)) python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/kernels/test_gpu_prefill.py > $W/gpu_prefill_tests.txt 2>&1
tail -3 $W/gpu_prefill_tests.txt
echo "== gpu decode tests"
timeout $((${TESTS_UNTIL_S:-560} + 30 - SECONDS)) python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_decode.py -rs > $W/gpu_decode_tests.txt 2>&1
tail -3 $W/gpu_decode_tests.txt
