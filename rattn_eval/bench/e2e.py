"""Whole-model speed: prefill and decode tokens/s and cache bytes per sequence, native backends vs `hf`, one run.

With --random-weights the preset config of a real model (smollm2-135m, gemma3-270m) gets
deterministic random weights, so nothing but this repository has to be on the machine; the `hf`
side is the equivalent transformers model built from an equivalent config with the same weights.

    python -m rattn_eval.bench.e2e --model gemma3-270m --random-weights --contexts 4096,32768 \\
        --batch-sizes 1,32 --backends triton,hf --device cuda --dtype bfloat16
    python -m rattn_eval.bench.e2e --model gemma3-270m --random-weights --windows 64,128,256,511 --contexts 8192
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from ..errors import BudgetError, ConfigError
from ..models.config import ModelConfig, preset
from ..models.loading import build_model, load_model, resolve_device, resolve_dtype, resolve_model_backend
from . import comma_list, int_at_least, int_list, run_script


def native_weights(config: ModelConfig, device, dtype) -> dict[str, torch.Tensor]:
    """Deterministic random weights of `config` (Model.init_weights' rule), drawn on `device` in `dtype`
    (an 8B model's fp32 copy on the host would take 32 GB and a minute); shared by every backend."""
    from ..models.model import Model, initial_weight

    with torch.device("meta"):
        shapes = Model(config).state_dict()
    gen = torch.Generator(device).manual_seed(config.init_seed)
    return {name: initial_weight(name, t.shape, gen).to(dtype) for name, t in shapes.items()}


def build_backend(config: ModelConfig, weights, backend: str, device, dtype):
    """A model of `config` with `weights` on one backend ("hf": the equivalent transformers model)."""
    if backend == "hf":
        from ..models.hf import hf_model_from_native

        return hf_model_from_native(config, weights, device=device, dtype=dtype)
    return build_model(config, weights, backend=backend, device=device, dtype=dtype, where="random weights")


def random_prompts(vocab: int, context: int, batch: int, seed: int) -> list[list[int]]:
    """`batch` prompts of `context` random token ids, the same for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, context), generator=gen).tolist()


def _measure(model, prompts, new_tokens: int, repeats: int) -> dict:
    """Best of `repeats` generate calls (EOS off). Returns last_stats plus the derived rates."""
    best = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        model.generate(prompts, max_new_tokens=new_tokens, eos_ids=[])
        s = dict(model.last_stats)
        # share of one core this process got: on a shared CPU, tokens/s scale roughly with it
        s["cpu_share"] = (time.process_time() - cpu) / (time.perf_counter() - wall)
        if best is None or s["prefill_s"] + s["decode_s"] < best["prefill_s"] + best["decode_s"]:
            best = s
    best["prefill_tok_s"] = best["prefill_tokens"] / best["prefill_s"]
    best["decode_tok_s"] = best["decode_tokens"] / best["decode_s"] if best["decode_s"] > 0 else None
    return best


def bench_e2e(model_name_or_config: str | ModelConfig, contexts: list[int], batch_sizes: list[int], backends: list[str],
              *, device=None, dtype=None, random_weights: bool = False, new_tokens: int = 32,
              windows: list[int | None] | None = None, repeats: int | None = None, seed: int = 0,
              log=print) -> list[dict]:
    """One row per (window, backend, context, batch): prefill/decode tokens/s, cache bytes per sequence, peak memory.

    Args:
        model_name_or_config: a preset/built-in name or a ModelConfig (a ModelConfig implies random weights).
        contexts: prompt lengths in tokens; batch_sizes: prompts per generate call.
        backends: "triton" | "torch" | "hf" | "auto" (resolved per device and recorded as run).
        random_weights: use the preset config with random weights instead of loading the checkpoint.
        new_tokens: tokens generated per prompt (decode speed covers all but the first).
        windows: window sweep: each value replaces every local layer's window (None = as configured).
        repeats: generate calls per cell, best kept (default 2 on CUDA, 1 on CPU), after a small warm-up.
    """
    if not contexts or not batch_sizes or min([*contexts, *batch_sizes]) < 1:
        raise ConfigError("contexts and batch sizes must be >= 1")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    for backend in backends:
        resolve_model_backend(backend, device)
    if repeats is not None and repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    repeats = repeats or (2 if device.type == "cuda" else 1)
    if isinstance(model_name_or_config, ModelConfig):
        base, random_weights = model_name_or_config, True
    elif random_weights:
        base = preset(model_name_or_config)
    else:
        base = None
    rows = []
    for window in windows or [None]:
        config = base if base is None or window is None else base.replace(window=window)
        weights = native_weights(config, device, dtype) if base is not None else None
        for backend in backends:
            run_backend = resolve_model_backend(backend, device)
            if base is not None:
                model = build_backend(config, weights, run_backend, device, dtype)
            else:
                model, _ = load_model(model_name_or_config, backend=run_backend, device=device, dtype=dtype, window=window)
            vocab = model.config.vocab_size if model.config is not None else model.hf.config.vocab_size
            model.generate(random_prompts(vocab, 64, 1, seed), max_new_tokens=2, eos_ids=[])  # warm-up (Triton compiles)
            for context in contexts:
                for batch in batch_sizes:
                    row = dict(model=getattr(model.config, "name", str(model_name_or_config)), backend=run_backend,
                               window=None if model.config is None else model.config.window, context=context,
                               batch=batch, new_tokens=new_tokens)
                    try:
                        s = _measure(model, random_prompts(vocab, context, batch, seed + context + batch), new_tokens, repeats)
                    except torch.cuda.OutOfMemoryError:
                        row["error"] = "out of memory"
                        torch.cuda.empty_cache()
                    except BudgetError as e:  # prompt + new tokens past the model's context: this cell only
                        row["error"] = str(e)
                    else:
                        row.update(
                            prefill_s=s["prefill_s"], prefill_tok_s=s["prefill_tok_s"], decode_s=s["decode_s"],
                            decode_tok_s=s["decode_tok_s"], peak_mem_bytes=s["peak_mem_bytes"],
                            cache_bytes_per_seq=None if s["cache_bytes"] is None else s["cache_bytes"] // batch,
                            cpu_share=s["cpu_share"],
                        )
                    log(_fmt(row))
                    rows.append(row)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _fmt(row: dict) -> str:
    head = f"{row['model']:>14} {row['backend']:>6} w={row['window']!s:>5} ctx={row['context']:>6} B={row['batch']:>3}"
    if "error" in row:
        return f"{head}  {row['error']}"
    cache = row["cache_bytes_per_seq"]
    decode = row["decode_tok_s"]
    return (f"{head}  prefill {row['prefill_s']:8.3f} s {row['prefill_tok_s']:10.0f} tok/s  decode "
            f"{'n/a' if decode is None else f'{decode:8.1f}'} tok/s  cache/seq "
            f"{'n/a' if cache is None else f'{cache / 2**20:8.2f} MiB'}  cpu share {row['cpu_share']:.2f}")


def stated_config(model: str, random_weights: bool) -> ModelConfig | None:
    """The config of `model`, read without loading weights; None when only loading tells (a Hugging Face
    folder or hub id)."""
    from ..models import checkpoint as ckpt
    from ..models.registry import MODELS

    if random_weights:
        return preset(model)
    path = Path(model).expanduser()
    if path.exists():
        return ckpt.read_config(path) if ckpt.is_checkpoint(path) else None
    return MODELS[model].config() if model in MODELS else None


def check_model(config: ModelConfig, contexts: list[int], new_tokens: int, backends: list[str]) -> None:
    """One ConfigError, before anything is loaded, for a context the model cannot hold with the new tokens,
    or an hf backend for layers transformers cannot run."""
    longest = max(contexts)
    if longest + new_tokens > config.max_context:
        raise ConfigError(f"--contexts {longest} with --new-tokens {new_tokens} is more than {config.name}'s context "
                          f"of {config.max_context} tokens; the longest context that fits is "
                          f"{config.max_context - new_tokens}")
    if "hf" in backends:
        from ..models.importers import hf_config_from_native

        hf_config_from_native(config)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="rattn-eval bench e2e", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="preset or built-in name, or a checkpoint directory")
    ap.add_argument("--random-weights", action="store_true", help="random weights of the preset config")
    ap.add_argument("--contexts", type=int_list, default=[2048], help="prompt lengths, e.g. 4096,32k")
    ap.add_argument("--batch-sizes", type=int_list, default=[1])
    ap.add_argument("--backends", default="auto,hf", help="comma-separated: triton, torch, hf, auto")
    ap.add_argument("--windows", type=comma_list(int_at_least(0), "integers >= 0 like 64,128"), default=None,
                    help="window sweep: override every local layer's window")
    ap.add_argument("--new-tokens", type=int_at_least(0), default=32)
    ap.add_argument("--repeats", type=int_at_least(1), default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, help="write the rows and the environment as JSON")
    args = ap.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends:
        raise ConfigError("--backends names no backend; choose from triton, torch, hf, auto")
    config = stated_config(args.model, args.random_weights)
    if config is not None:
        check_model(config, args.contexts, args.new_tokens, backends)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench_e2e(args.model, args.contexts, args.batch_sizes, backends, device=args.device, dtype=args.dtype,
                     random_weights=args.random_weights, new_tokens=args.new_tokens, windows=args.windows,
                     repeats=args.repeats)
    if args.out:
        import transformers

        device = resolve_device(args.device)
        env = dict(torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                   device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                   threads=torch.get_num_threads(), load_avg_1m=os.getloadavg()[0], dtype=str(resolve_dtype(args.dtype, device)),
                   date=time.strftime("%Y-%m-%d"), argv=sys.argv[1:] if argv is None else argv)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(env=env, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main, "rattn-eval bench e2e"))
