#!/usr/bin/env bash
# One H200 call: results/bench/swa_tma_explore.py (baselines + per-kernel profile, then each config of CFGS in its
# own process). Output in $OUT/tma.tgz.   CFGS: config indices (default: all); UNTIL_S: stop starting configs (400); BASELINE=0: skip the baselines
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu_prelude.sh tma
N=$(python3 -c "import sys; sys.path.insert(0, 'results/bench'); import swa_tma_explore as s; print(len(s.CFGS))")
[ "${BASELINE:-1}" = 1 ] && timeout 150 python3 results/bench/swa_tma_explore.py --log $W/log.jsonl 2>&1 | tee -a $W/explore.txt
for i in ${CFGS:-$(seq 0 $((N - 1)))}; do
  [ $SECONDS -gt ${UNTIL_S:-400} ] && { echo "time up before cfg $i" | tee -a $W/explore.txt; break; }
  timeout 90 python3 results/bench/swa_tma_explore.py --cfg $i --log $W/log.jsonl 2>&1 | grep -v "^ \|^Search\|^CUDA kernel" | tail -8 | tee -a $W/explore.txt
done
