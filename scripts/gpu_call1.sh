#!/usr/bin/env bash
# One H200 call for issues 3, 7 and 8: the GPU-marked decode tests, SmolLM2-135M bench e2e
# (2k / 8k, triton vs hf), then scripts/gpu_e2e.sh (gemma3-270m + tiny-rattn bench e2e, cache
# memory, RULER throughput). Everything is packed into $OUT/gpu_call1.tgz (the device returns
# at most 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_prelude.sh gpu_call1
nvidia-smi > $W/nvidia-smi.txt 2>&1
echo "== pytest -m gpu tests/kernels/test_decode.py" | tee $W/commands.txt
timeout 150 python3 -m pytest -p no:cacheprovider -m gpu tests/kernels/test_decode.py -q -rs > $W/gpu_decode_tests.txt 2>&1
tail -3 $W/gpu_decode_tests.txt
echo "== bench e2e smollm2-135m" | tee -a $W/commands.txt
timeout 120 python3 -m rattn_eval.bench.e2e --model smollm2-135m --random-weights --contexts 2048,8192 \
  --batch-sizes 1,32 --backends triton,hf --new-tokens 32 --out $W/e2e_smollm2-135m.json > $W/e2e_smollm2-135m.txt 2>&1
tail -12 $W/e2e_smollm2-135m.txt
OUT=$W timeout ${E2E_TIMEOUT:-330} bash scripts/gpu_e2e.sh > $W/gpu_e2e_stdout.txt 2>&1
tail -40 $W/gpu_e2e_stdout.txt
