#!/usr/bin/env bash
# One H200 call: results/bench/segment_explore.py (the "segment" RAttention design), baselines then each
# config of SEG_CFGS in its own process. Output in $OUT/segment.tgz.   CFGS: indices (default 0..9)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu_prelude.sh segment
nvidia-smi -L > $W/env.txt 2>&1
timeout 100 python3 results/bench/segment_explore.py 2>&1 | tee -a $W/explore.txt
for i in ${CFGS:-0 1 2 3 4 5 6 7 8 9}; do
  [ $SECONDS -gt 540 ] && { echo "time up before cfg $i" | tee -a $W/explore.txt; break; }
  timeout $((580 - SECONDS)) python3 results/bench/segment_explore.py --cfg $i 2>&1 | grep -v "^ \|^Traceback\|^Search\|^CUDA kernel" | tee -a $W/explore.txt
done
