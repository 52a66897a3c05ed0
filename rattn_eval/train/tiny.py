"""The three shipped models: same size and recipe, different attention.

    tiny-full   8 global layers, RoPE in every layer (a plain Llama-style baseline)
    tiny-swa    [swa, swa, swa, global] x 2, window 64, RoPE in SWA layers, NoPE global layers
    tiny-rattn  [rattn, rattn, rattn, global] x 2, window 64, same positions as tiny-swa

tiny-full keeps RoPE in all layers: the model config has one NoPE switch for all global layers,
and a model with no positional signal at all is not the baseline anyone compares against.

`train_tiny` measures each model's step time first, then gives all three the same number of
steps (same tokens) so that the whole run fits a wall-clock budget, and trains them one after
the other on the same device, which also makes their tokens/s directly comparable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..models.config import ModelConfig
from ..models.registry import ShippedCheckpoint, names
from .trainer import TrainConfig, _sync, build_for_training, make_optimizer, train, train_step

TINY_WINDOW = 64
TINY_NAMES = names(ShippedCheckpoint)  # the shipped checkpoints are these models


def tiny_config(name: str, *, vocab_size: int = 4096) -> ModelConfig:
    """ModelConfig of one of TINY_NAMES (about 3.7M parameters, 7.5 MB in float16)."""
    local = {"tiny-full": "global", "tiny-swa": "swa", "tiny-rattn": "rattn"}[name]
    kinds = tuple("global" if (i + 1) % 4 == 0 else local for i in range(8))
    return ModelConfig(
        name=name, vocab_size=vocab_size, width=192, n_heads=3, n_kv_heads=3, head_dim=64, kinds=kinds,
        ffn="swiglu", intermediate_size=384, norm="pre", norm_eps=1e-6,
        window=None if local == "global" else TINY_WINDOW, feature_map="softmax",
        rope_theta_local=10000.0, rope_theta_global=10000.0, nope_global=local != "global",
        tie_embeddings=True, max_context=32768, tokenizer="tokenizer.json",
    )


def measure_step_time(cfg: TrainConfig, n: int = 6, warmup: int = 3) -> float:
    """Seconds per optimizer step of cfg (synthetic-free random batches, so data loading is excluded)."""
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_for_training(cfg, device)
    opt = make_optimizer(model, cfg, device)
    batch = torch.randint(0, cfg.model.vocab_size, (cfg.batch_size, cfg.seq_len + 1), device=device)
    for i in range(warmup):
        train_step(model, opt, batch, cfg, i, device)
    _sync(device)
    t = time.perf_counter()
    for i in range(n):
        train_step(model, opt, batch, cfg, i, device)
    _sync(device)
    return (time.perf_counter() - t) / n


def train_tiny(data_dir: str, out_dir: str, *, budget_s: float, batch_size: int = 64, seq_len: int = 1024,
               num_workers: int = 0, max_steps: int = 100_000, names=TINY_NAMES, init_from: str | None = None,
               log=print, **overrides) -> dict:
    """Train the tiny models with a common step count chosen so that all of them fit `budget_s`.

    Each run also gets a hard time limit of 1.3x its predicted time. Writes out_dir/<name>/
    (checkpoint, loss.jsonl, summary.json) and out_dir/throughput.json. init_from: a folder holding
    <name>/ checkpoint directories to continue from (a second stage with other overrides).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = {name: TrainConfig(name=name, model=tiny_config(name), data_dir=data_dir, out_dir=str(out / name),
                              batch_size=batch_size, seq_len=seq_len, num_workers=num_workers,
                              init_from=None if init_from is None else str(Path(init_from) / name), **overrides)
            for name in names}
    t0 = time.perf_counter()
    step_s = {name: measure_step_time(cfg) for name, cfg in base.items()}
    calib_s = time.perf_counter() - t0
    log("step time: " + ", ".join(f"{n} {s * 1e3:.1f} ms" for n, s in step_s.items()) + f" (calibration {calib_s:.0f} s)")
    per_model_overhead = 8.0  # loader start, final save
    usable = budget_s - calib_s - per_model_overhead * len(base)
    steps = int(min(max_steps, max(20, usable / sum(step_s.values()))))
    log(f"{steps} steps each ({steps * batch_size * seq_len / 1e6:.1f}M tokens)")
    summaries = {}
    for name, cfg in base.items():
        warm = min(cfg.warmup_steps, max(1, steps // 10))
        run = TrainConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, "steps": steps,
                             "warmup_steps": warm, "time_limit_s": 1.3 * steps * step_s[name] + 20})
        summaries[name] = train(run, log=log)
    report = {
        "device": summaries[next(iter(summaries))]["device"],
        "batch_size": batch_size, "seq_len": seq_len, "steps": steps,
        "calibrated_step_ms": {n: round(s * 1e3, 2) for n, s in step_s.items()},
        "tokens_per_s": {n: s["tokens_per_s"] for n, s in summaries.items()},
        "final_loss": {n: s["final_loss"] for n, s in summaries.items()},
        "stopped_early": {n: s["stopped_early"] for n, s in summaries.items()},
        "wall_s": {n: s["wall_s"] for n, s in summaries.items()},
    }
    (out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps(report, indent=2))
    return report
