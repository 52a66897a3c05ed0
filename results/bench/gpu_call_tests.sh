#!/usr/bin/env bash
# One H200 call: the GPU prefill, decode and kv-decode tests on the committed defaults. Output in $OUT/tests.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu_prelude.sh tests
timeout 420 python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/kernels/test_gpu_prefill.py > $W/gpu_prefill_tests.txt 2>&1
tail -3 $W/gpu_prefill_tests.txt
timeout $((500 - SECONDS)) python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_decode.py -rs > $W/gpu_decode_tests.txt 2>&1
tail -3 $W/gpu_decode_tests.txt
timeout $((560 - SECONDS)) python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_pointwise_kv_decode.py -rs > $W/gpu_kv_decode_tests.txt 2>&1
tail -3 $W/gpu_kv_decode_tests.txt
