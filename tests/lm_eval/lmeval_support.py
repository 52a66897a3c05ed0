"""Helpers of the lm-eval tests: the local tasks, a tiny random Llama in HF format, SmolLM2 saved in
HF format, and a runner that returns per-request results of one lm-eval model over the local tasks."""

import os
import shutil
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TASKS_DIR = REPO / "tests" / "lm_eval" / "tasks"
MC_TASK, PPL_TASK, GEN_TASK = "rattn_local_mc", "rattn_local_ppl", "rattn_local_gen"
TINY_MAX_LENGTH = 32  # every text of the rolling task spans several windows at this length


def run_tasks(lm, task_manager, tasks, **evaluate_kwargs):
    """simple_evaluate `lm` on `tasks`; returns {task: [resps of doc 0, doc 1, ...]} and the results dict.

    resps of a multiple-choice doc: [(loglikelihood, is_greedy) per choice]; of a rolling doc: [loglikelihood].
    """
    import lm_eval

    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=task_manager, log_samples=True,
                                  bootstrap_iters=0, **evaluate_kwargs)
    per_doc = {}
    for task in tasks:
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        per_doc[task] = [[tuple(r[0]) if isinstance(r[0], (list, tuple)) else r[0] for r in s["resps"]]
                         for s in samples]
    return per_doc, out


def tiny_llama_hf_dir(root: Path) -> Path:
    """A random 2-layer Llama (GQA, untied head, random norm weights) saved by transformers, with the
    SmolLM2 tokenizer files beside it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rattn_eval.tokenizer import smollm2_tokenizer_dir

    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, initializer_range=0.1, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # not all ones, so a norm-weight convention slip changes the numbers
                p.uniform_(0.5, 1.5)
    model.save_pretrained(root)
    for f in os.listdir(smollm2_tokenizer_dir()):
        shutil.copy(smollm2_tokenizer_dir() / f, root / f)
    return root


def export_hf_dir(name_or_path: str, root: Path) -> Path:
    """Our checkpoint's weights saved in HF format (by the hf backend's exporter) with its tokenizer files."""
    from rattn_eval.models import load_model

    model, tokenizer = load_model(name_or_path, backend="hf", device="cpu", dtype=torch.float32)
    model.hf.save_pretrained(root)
    for f in os.listdir(tokenizer.folder):
        if not (root / f).exists():
            shutil.copy(Path(tokenizer.folder) / f, root / f)
    return root


def smollm2_hf_dir_from_transformers() -> Path:
    """SmolLM2-135M-Instruct as transformers itself dequantizes the packaged GGUF, saved in HF format
    (float32 safetensors + tokenizer): independent of our importer. Built once (about a minute), cached."""
    from rattn_eval.models.registry import entry
    from rattn_eval.tokenizer import cache_root, smollm2_tokenizer_dir

    target = cache_root() / "test-artifacts" / "smollm2-135m-hf"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM

    gguf = entry("smollm2-135m").source.gguf_path("smollm2-135m")
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; copy its plain weights into a fresh model of its class.
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    plain = type(gguf_model)(type(gguf_model.config).from_dict(config))
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        plain.save_pretrained(tmp)
        for f in os.listdir(smollm2_tokenizer_dir()):
            shutil.copy(smollm2_tokenizer_dir() / f, Path(tmp) / f)
        target.mkdir(exist_ok=True)
        names = sorted(os.listdir(tmp), key=lambda n: n == "model.safetensors")  # weights last: marks completion
        for n in names:
            os.replace(os.path.join(tmp, n), target / n)
    return target
