#!/usr/bin/env bash
# One H200 call: results/bench/swa_loop_explore.py (key-loop variants of plain SWA). Output in $OUT/loop.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu_prelude.sh loop
(cd results/bench && timeout 500 python3 swa_loop_explore.py --until ${UNTIL_S:-420} 2>&1 | tee $W/loop.txt)
