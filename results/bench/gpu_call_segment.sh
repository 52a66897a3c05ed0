#!/usr/bin/env bash
# One H200 call: results/bench/segment_explore.py (the "segment" RAttention design), output in $OUT/segment.tgz.
#   EXPLORE_ARGS  extra arguments (e.g. --quick, --budget-s 300)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu_prelude.sh segment
nvidia-smi -L > $W/env.txt 2>&1
git log -1 --format='code %h %s' >> $W/env.txt 2>/dev/null
timeout 570 python3 results/bench/segment_explore.py ${EXPLORE_ARGS:-} 2>&1 | tee $W/explore.txt
