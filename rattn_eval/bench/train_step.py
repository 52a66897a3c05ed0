"""`rattn-eval bench train`: whole-model training step time and peak memory, RAttention vs SWA vs full
attention, on one GPU (random weights, random tokens, so nothing but this repository is needed).

The model is a 121M-parameter local-global decoder (12 layers of width 768, 12 query / 4 KV heads of
dim 64, SwiGLU 2816, vocab 32000, tied embeddings), layers [local, local, local, global] x 3 with
window 512 (the paper's 1:3 global:local), RoPE in every layer. "full" makes every layer global.
One step = forward, backward and a fused AdamW update under bf16 autocast, on the model's triton
backend (Triton attention kernels forward and backward; SDPA for the global layers).

    rattn-eval bench train --lengths 4096,16384 --tokens 16384 --out results/bench/train_step
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ..errors import ConfigError
from ..models.config import ModelConfig
from ..train.trainer import TRAIN_BACKENDS
from . import int_at_least, int_list, run_script, single_length

VARIANTS = ("rattn", "swa", "full")


def step_config(variant: str, *, window: int = 512, layers: int = 12) -> ModelConfig:
    """The benchmark model with `variant` local layers ("full": every layer global)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    local = "global" if variant == "full" else variant
    kinds = tuple("global" if (i + 1) % 4 == 0 else local for i in range(layers))
    return ModelConfig(
        name=f"step-{variant}", vocab_size=32000, width=768, n_heads=12, n_kv_heads=4, head_dim=64, kinds=kinds,
        ffn="swiglu", intermediate_size=2816, norm="pre", norm_eps=1e-6, window=None if variant == "full" else window,
        feature_map="softmax", rope_theta_local=10000.0, rope_theta_global=10000.0, tie_embeddings=True,
        max_context=1 << 17, tokenizer="bytes",
    )


def time_step(variant: str, seq_len: int, batch: int, *, window: int, steps: int, warmup: int, backend: str,
              device: torch.device) -> dict:
    """Mean seconds per optimizer step over `steps` steps after `warmup`, and the peak memory."""
    from ..train.trainer import TrainConfig, build_for_training, make_optimizer, train_step

    cfg = TrainConfig(name=f"step-{variant}", model=step_config(variant, window=window), data_dir="-", out_dir="-",
                      seq_len=seq_len, batch_size=batch, steps=warmup + steps, warmup_steps=1, backend=backend)
    model = build_for_training(cfg, device)
    opt = make_optimizer(model, cfg, device)
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq_len + 1), device=device,
                           generator=torch.Generator(device).manual_seed(0))
    for i in range(warmup):
        train_step(model, opt, tokens, cfg, i, device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for i in range(steps):
        loss, _, _ = train_step(model, opt, tokens, cfg, warmup + i, device)
    torch.cuda.synchronize(device)
    step_s = (time.perf_counter() - t) / steps
    params = sum(p.numel() for p in model.parameters())
    return dict(variant=variant, seq_len=seq_len, batch=batch, window=cfg.model.window, backend=model.backend,
                fallbacks=model.fallbacks, params=params,
                step_ms=step_s * 1e3, tokens_per_s=batch * seq_len / step_s, loss=float(loss),
                peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30)


def format_table(rows: list[dict]) -> str:
    lines = ["| length x batch | variant | step | tokens/s | peak memory | step / swa | step / full |", "|---|---|---:|---:|---:|---:|---:|"]
    by = {(r["seq_len"], r["variant"]): r for r in rows if "step_ms" in r}
    for r in rows:
        head = f"| {r['seq_len']} x {r['batch']} | {r['variant']} |"
        if "step_ms" not in r:
            lines.append(f"{head} {r['error']} | | | | |")
            continue
        ratio = lambda other: (f"{r['step_ms'] / by[(r['seq_len'], other)]['step_ms']:.2f}x"  # noqa: E731
                               if (r["seq_len"], other) in by else "n/a")
        lines.append(f"{head} {r['step_ms']:.1f} ms | {r['tokens_per_s']:,.0f} | {r['peak_mem_gib']:.1f} GiB | "
                     f"{ratio('swa')} | {ratio('full')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="rattn-eval bench train", description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int_list, default="4096,16384", help="comma-separated sequence lengths, e.g. 4k")
    ap.add_argument("--tokens", type=single_length, default=16384,
                    help="tokens per step (batch = tokens // length, at least 1)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    ap.add_argument("--window", type=int_at_least(0), default=512)
    ap.add_argument("--steps", type=int_at_least(1), default=10)
    ap.add_argument("--warmup", type=int_at_least(0), default=3)
    ap.add_argument("--backend", default="triton", choices=TRAIN_BACKENDS)
    ap.add_argument("--out", type=Path, help="folder for train_step.json and train_step.md")
    a = ap.parse_args(argv)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ConfigError(f"--variants: unknown variant {bad[0] if bad else a.variants!r}; choose from "
                          f"{', '.join(VARIANTS)}")
    if min(a.lengths) < 2:
        raise ConfigError(f"--lengths {min(a.lengths)}: a training step needs sequences of at least 2 tokens")
    if not torch.cuda.is_available():
        raise ConfigError("`rattn-eval bench train` needs a CUDA GPU; none is visible")
    device = torch.device("cuda")
    rows = []
    for T in a.lengths:
        for variant in variants:
            batch = max(1, a.tokens // T)
            try:
                row = time_step(variant, T, batch, window=a.window, steps=a.steps, warmup=a.warmup, backend=a.backend,
                                device=device)
            except torch.cuda.OutOfMemoryError:
                row = dict(variant=variant, seq_len=T, batch=batch, error="out of memory")
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = format_table(rows)
    print(table)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        import triton

        from ..runner.pipeline import _git_revision

        env = dict(device=torch.cuda.get_device_name(device), torch=torch.__version__, triton=triton.__version__,
                   python=platform.python_version(), commit=_git_revision(), date=time.strftime("%Y-%m-%d"),
                   argv=sys.argv[1:] if argv is None else argv)
        (a.out / "train_step.json").write_text(json.dumps(dict(env=env, rows=rows), indent=2) + "\n")
        (a.out / "train_step.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, "rattn-eval bench train"))
