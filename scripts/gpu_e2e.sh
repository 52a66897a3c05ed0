#!/usr/bin/env bash
# End-to-end performance on one H200 (issue 7), three parts, each writing under $OUT/gpu_e2e
# (default ./gpu_out/gpu_e2e) and none stopping the others when it fails:
#   1. `python -m rattn_eval.bench.e2e` (prefill / decode tokens/s, cache bytes, triton vs hf) for
#      gemma3-270m (random weights of the real config; also a window sweep) and tiny-rattn, contexts
#      4k/16k/32k/128k where the model allows, batch 1 and 32;
#   2. decode-cache memory per sequence at 4k / 32k / 128k, measured from the allocated cache tensors
#      after a prefill, for a RAttention model vs a full-attention model of the same shape;
#   3. RULER throughput: samples/s on NIAH at 32k (prefill + answer decoding, batched) with
#      `rattn-eval run --backend triton` vs `--backend hf`, gemma3-270m shape, the same random weights
#      (one checkpoint directory written here; the hf backend builds the transformers model from it).
#
#   bash scripts/gpu_e2e.sh               # on the GPU machine
#   bash scripts/gpu_e2e.sh --cpu-smoke   # the same steps on CPU at tiny sizes (a check of this script)
#
# Overrides (environment): PARTS (default "e2e cache ruler": which parts run, e.g. PARTS=ruler to split
# the work over two device calls), PY, RULER_N, RULER_BATCH, RULER_LEN, E2E_ARGS (extra args for bench e2e).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
"$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site

SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1
export SMOKE
OUT=${OUT:-./gpu_out}
DIR="$OUT/gpu_e2e"
rm -rf "$DIR"
mkdir -p "$DIR"
STATUS="$DIR/status.txt"
PARTS=${PARTS:-"e2e cache ruler"}
has() { [[ " $PARTS " == *" $1 "* ]]; }
: > "$STATUS"
step() {  # step NAME CMD...: run, log to $DIR/NAME.log, record ok/FAILED without stopping the script
  local name=$1; shift
  echo "== $name: $*" | tee -a "$DIR/commands.txt"
  if "$@" > "$DIR/$name.log" 2>&1; then echo "$name ok" >> "$STATUS"; else echo "$name FAILED (rc $?)" >> "$STATUS"; fi
  tail -n 30 "$DIR/$name.log"
}
[[ $SMOKE == 0 ]] && { nvidia-smi > "$DIR/nvidia-smi.txt" 2>&1 || true; }

# ---- 1. bench e2e ----------------------------------------------------------------------------------
if ! has e2e; then
  :
elif "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('rattn_eval.bench.e2e') is None)"; then
  "$PY" -m rattn_eval.bench.e2e --help > "$DIR/e2e_help.txt" 2>&1
  if [[ $SMOKE == 1 ]]; then
    step e2e_debug "$PY" -m rattn_eval.bench.e2e --model debug --random-weights --contexts 256,1024 \
      --batch-sizes 1,2 --backends torch --device cpu --dtype float32 --new-tokens 4 --out "$DIR/e2e_debug.json" ${E2E_ARGS:-}
  else
    # gemma3-270m's context is 32768 tokens: the longest prompt leaves room for the 32 new tokens
    step e2e_gemma3 "$PY" -m rattn_eval.bench.e2e --model gemma3-270m --random-weights \
      --contexts 4096,16384,32736 --batch-sizes 1,32 --backends triton,hf --new-tokens 32 \
      --out "$DIR/e2e_gemma3-270m.json" ${E2E_ARGS:-}
    step e2e_gemma3_windows "$PY" -m rattn_eval.bench.e2e --model gemma3-270m --random-weights \
      --windows 64,128,256,511 --contexts 32736 --batch-sizes 1,32 --backends triton --new-tokens 32 \
      --out "$DIR/e2e_gemma3-270m_windows.json" ${E2E_ARGS:-}
    # tiny-rattn (context 32768; the longest prompt leaves room for the new tokens). Triton only:
    # RAttention layers have no transformers counterpart, so the hf backend refuses this model.
    step e2e_tiny "$PY" -m rattn_eval.bench.e2e --model tiny-rattn \
      --contexts 4096,16384,32736 --batch-sizes 1,32 --backends triton --new-tokens 32 \
      --out "$DIR/e2e_tiny-rattn.json" ${E2E_ARGS:-}
  fi
else
  echo "e2e SKIPPED: rattn_eval.bench.e2e is not in this checkout" | tee -a "$STATUS"
fi

# ---- 2. cache memory per sequence: RAttention vs full attention, same shape -------------------------
has cache && step cache_memory "$PY" - "$DIR/cache_memory.json" <<'EOF'
"""Prefill one sequence of L tokens, keep the caches decode would use (sized for one more token),
and count their bytes by layer kind: from the cache tensors themselves and, on CUDA, from the
allocator (memory_allocated with the caches held minus before the prefill)."""
import json
import os
import sys

import torch

from rattn_eval.models import ModelConfig, build_model

smoke = os.environ.get("SMOKE") == "1"
device = "cpu" if smoke else "cuda"
dtype = torch.float32 if smoke else torch.bfloat16
backend = "torch" if smoke else "triton"
lengths = (64, 256, 1024) if smoke else (4096, 32768, 131072)
# 3 RAttention layers per global layer (the paper's ratio), window 512, D = 128, GQA 4:1 -- a
# shape the Triton RLA kernels cover; the twin has the same weights' shapes with every layer global.
shape = dict(vocab_size=259, width=512 if smoke else 1024, n_heads=8, n_kv_heads=2, head_dim=64 if smoke else 128,
             ffn="swiglu", intermediate_size=1024 if smoke else 2816, window=16 if smoke else 512,
             max_context=1 << 20, tokenizer="bytes", qk_norm=True, nope_global=True)
models = {
    "rattn": ModelConfig(name="rattn-3:1", kinds=("rattn", "rattn", "rattn", "global") * 2, **shape),
    "full": ModelConfig(name="full", kinds=("global",) * 8, **shape),
}


def tensors(cache):
    if isinstance(cache, torch.Tensor):
        return [cache]
    if isinstance(cache, (list, tuple)):
        return [t for c in cache for t in tensors(c)]
    return [v for v in vars(cache).values() if isinstance(v, torch.Tensor)]


rows = []
for name, cfg in models.items():
    model = build_model(cfg, backend=backend, device=device, dtype=dtype)
    for L in lengths:
        ids = torch.randint(0, cfg.vocab_size, (1, L), device=device)
        lengths_t = torch.tensor([L], device=device)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
        with torch.inference_mode():
            logits, caches = model.prefill(ids, lengths_t, L + 1)
        del logits
        allocated = None
        if device == "cuda":
            torch.cuda.synchronize()
            allocated = torch.cuda.memory_allocated() - before
        by_kind = {}
        for kind, cache in zip(cfg.kinds, caches):
            by_kind[kind] = by_kind.get(kind, 0) + sum(t.numel() * t.element_size() for t in tensors(cache))
        total = sum(by_kind.values())
        rows.append({"model": name, "length": L, "bytes_by_kind": by_kind, "bytes": total,
                     "allocated_bytes": allocated})
        print(f"{name:6s} L={L:>7d} cache {total / 2**20:9.2f} MiB  by kind "
              + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in by_kind.items())
              + (f"  (allocator: {allocated / 2**20:.2f} MiB)" if allocated is not None else ""))
        del caches
    del model

table = []
for L in lengths:
    r = next(x for x in rows if x["model"] == "rattn" and x["length"] == L)
    f = next(x for x in rows if x["model"] == "full" and x["length"] == L)
    table.append({"length": L, "rattn_bytes": r["bytes"], "full_bytes": f["bytes"],
                  "rattn_local_bytes": r["bytes_by_kind"].get("rattn", 0),
                  "ratio_full_over_rattn": f["bytes"] / r["bytes"]})
local = {t["rattn_local_bytes"] for t in table}
print("\n| context | RAttention cache | of which local layers | full-attention cache | full / RAttention |")
print("|---|---|---|---|---|")
for t in table:
    print(f"| {t['length']} | {t['rattn_bytes'] / 2**20:.2f} MiB | {t['rattn_local_bytes'] / 2**20:.2f} MiB "
          f"| {t['full_bytes'] / 2**20:.2f} MiB | {t['ratio_full_over_rattn']:.2f}x |")
print(f"local layers' cache constant over contexts: {len(local) == 1}")
json.dump({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
           "configs": {k: v.to_dict() for k, v in models.items()}, "rows": rows, "table": table,
           "local_constant": len(local) == 1}, open(sys.argv[1], "w"), indent=2)
sys.exit(0 if len(local) == 1 else 1)
EOF

# ---- 3. RULER throughput: triton vs hf, same random weights ---------------------------------------
# outside $OUT: the bf16 weights are ~0.5 GB, too big to copy back with the results
if has ruler; then
CKPT=${CKPT:-/tmp/gemma3-270m-random}
rm -rf "$CKPT"
step ruler_checkpoint "$PY" - "$CKPT" <<'EOF'
"""gemma3-270m's shape with random weights and the bytes tokenizer (the Gemma tokenizer ships in a
weights package the GPU machine does not have; throughput does not depend on the vocabulary's
contents, and the 262k-row embedding and output layer keep the real shape)."""
import os
import sys

import torch

from rattn_eval.models import build_model, preset, save_checkpoint

cfg = preset("gemma3-270m").replace(name="gemma3-270m-random", tokenizer="bytes")
if os.environ.get("SMOKE") == "1":  # same structure, tiny sizes
    cfg = cfg.replace(vocab_size=512, width=64, n_heads=2, n_kv_heads=1, head_dim=32, intermediate_size=128,
                      kinds=cfg.kinds[:6], window=63, attn_scale=32 ** -0.5, embed_scale=8.0)
model = build_model(cfg, device="cpu", dtype=torch.bfloat16 if os.environ.get("SMOKE") != "1" else torch.float32)
save_checkpoint(sys.argv[1], cfg, model.state_dict())
print(sys.argv[1], sum(p.numel() for p in model.parameters()), "parameters")
EOF

if [[ $SMOKE == 1 ]]; then
  RULER_LEN=${RULER_LEN:-1k} RULER_N=${RULER_N:-2} RULER_BATCH=${RULER_BATCH:-2} FAST=torch
else
  RULER_LEN=${RULER_LEN:-32k} RULER_N=${RULER_N:-16} RULER_BATCH=${RULER_BATCH:-8} FAST=triton
fi
RUN=(run -q -t niah_single_1 -l "$RULER_LEN" -n "$RULER_N" -b "$RULER_BATCH" -m "$CKPT")
for be in "$FAST" hf; do
  # warm-up (not measured), one full batch: sample cache, kernel compilation for the batch shape, transformers' first-call setup
  step "ruler_${be}_warmup" "$PY" -m rattn_eval.cli "${RUN[@]}" --backend "$be" --limit "$RULER_BATCH" --out "$DIR/ruler_${be}_warmup"
  step "ruler_${be}" "$PY" -m rattn_eval.cli "${RUN[@]}" --backend "$be" --out "$DIR/ruler_${be}"
done

step ruler_report "$PY" - "$DIR" "$FAST" <<'EOF'
import json
import sys
from pathlib import Path

d, fast = Path(sys.argv[1]), sys.argv[2]
res = {}
for be in (fast, "hf"):
    run = d / f"ruler_{be}"
    s = json.loads((run / "env.json").read_text())["sessions"][-1]
    recs = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    res[be] = {**s, "output_tokens": sum(r["output_tokens"] for r in recs),
               "prompt_tokens": sum(r["num_tokens"] for r in recs),
               "prefill_s_per_batch": sorted({r["timings"]["prefill_s"] for r in recs if r["timings"]["prefill_s"]})}
ratio = res[fast]["samples_per_s"] / res["hf"]["samples_per_s"]
res["ratio_samples_per_s"] = ratio
(d / "ruler_throughput.json").write_text(json.dumps(res, indent=2) + "\n")
print("| backend | samples | generation wall (s) | samples/s | output tokens |")
print("|---|---|---|---|---|")
for be in (fast, "hf"):
    r = res[be]
    print(f"| {be} | {r['samples']} | {r['generate_s']:.2f} | {r['samples_per_s']:.3f} | {r['output_tokens']} |")
print(f"RULER throughput {fast} / hf: {ratio:.2f}x (target >= 10x)")
EOF
fi

echo; echo "== status"; cat "$STATUS"
! grep -q FAILED "$STATUS"
