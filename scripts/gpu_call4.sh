#!/usr/bin/env bash
# One call on a 2-GPU H200 machine for issues 3, 7, 8: the GPU-marked decode / pointwise / model
# tests, SmolLM2-135M bench e2e (2k / 8k, triton vs hf), scripts/gpu_e2e.sh (gemma3-270m and
# tiny-rattn bench e2e, window sweep, cache memory, RULER throughput triton vs hf; GPU 0 only), then
# scripts/gpu_2x.sh (1 vs 2 GPUs). Everything is packed into $OUT/gpu_call4.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_prelude.sh gpu_call4
tar xzf .whl/head_kernels.tgz  # the committed prefill kernels, not edits in progress
nvidia-smi > $W/nvidia-smi.txt 2>&1
CUDA_VISIBLE_DEVICES=0 timeout 150 python3 -m pytest -p no:cacheprovider -m gpu tests/kernels/test_pointwise_kv_decode.py \
  tests/kernels/test_decode.py tests/models/test_debug_model.py -q -rs > $W/gpu_tests.txt 2>&1
tail -3 $W/gpu_tests.txt
CUDA_VISIBLE_DEVICES=0 timeout 120 python3 -m rattn_eval.bench.e2e --model smollm2-135m --random-weights \
  --contexts 2048,8160 --batch-sizes 1,32 --backends triton,hf --new-tokens 32 \
  --out $W/e2e_smollm2-135m.json > $W/e2e_smollm2-135m.txt 2>&1
grep -v Warn $W/e2e_smollm2-135m.txt | tail -9
CUDA_VISIBLE_DEVICES=0 OUT=$W timeout ${E2E_TIMEOUT:-300} bash scripts/gpu_e2e.sh > $W/gpu_e2e_stdout.txt 2>&1
grep -E "^ +gemma|^ +tiny|RULER|FAILED|ok$" $W/gpu_e2e_stdout.txt | tail -40
OUT=$W timeout ${TWO_TIMEOUT:-200} bash scripts/gpu_2x.sh > $W/gpu_2x_stdout.txt 2>&1
tail -25 $W/gpu_2x_stdout.txt
