#!/usr/bin/env bash
# The test command of the README and of CI: set up .venv, then run the CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Two workers (pytest-xdist), one per core of the CI machine: 12.5 instead of 20 minutes there.
# RATTN_TEST_WORKERS=0 runs in one process.
exec .venv/bin/python -m pytest -q -n "${RATTN_TEST_WORKERS:-2}" --dist worksteal "$@"
