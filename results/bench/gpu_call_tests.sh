#!/usr/bin/env bash
# One H200 call: the GPU prefill and decode tests on the committed defaults. Output in $OUT/tests.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu_prelude.sh tests
nvidia-smi -L > $W/env.txt 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> $W/env.txt 2>&1
timeout 420 python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/kernels/test_gpu_prefill.py > $W/gpu_prefill_tests.txt 2>&1
tail -3 $W/gpu_prefill_tests.txt
timeout $((500 - SECONDS)) python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_decode.py -rs > $W/gpu_decode_tests.txt 2>&1
tail -3 $W/gpu_decode_tests.txt
