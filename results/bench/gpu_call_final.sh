#!/usr/bin/env bash
# One H200 call on the committed defaults: the kernel benchmark, then the GPU prefill and decode tests.
# Output in $OUT/final.tgz (kernels.txt, bench_log.txt, gpu_prefill_tests.txt, gpu_decode_tests.txt, env.txt).
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu_prelude.sh final
timeout 150 python3 -m rattn_eval.bench.kernels --out $W > $W/bench_log.txt 2>&1
echo "bench rc=$? at ${SECONDS}s"; grep -E "ours_rattention|flex_swa|ours_swa |fla|sdpa" $W/kernels.txt | head -40
timeout $((480 - SECONDS)) python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/kernels/test_gpu_prefill.py > $W/gpu_prefill_tests.txt 2>&1
tail -3 $W/gpu_prefill_tests.txt
timeout $((540 - SECONDS)) python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_decode.py -rs > $W/gpu_decode_tests.txt 2>&1
tail -3 $W/gpu_decode_tests.txt
