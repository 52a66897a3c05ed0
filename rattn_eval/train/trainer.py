"""The training loop: AdamW, linear warmup + cosine decay, bf16 autocast on CUDA, gradient clipping,
a JSONL loss log, tokens/s, and a checkpoint in our format at the end.

    from rattn_eval.train import TrainConfig, train
    summary = train(TrainConfig(name="tiny-rattn", model=cfg, data_dir=".cache/train-data", out_dir="runs/x"))

The model trains on a kernel backend like any other run: "triton" (the default on CUDA) differentiates
the attention through the Triton forward and backward kernels of rattn_eval.kernels (SDPA for full
attention), "torch" through the kernels' chunked PyTorch references (the CPU path).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError, did_you_mean
from ..models.config import ModelConfig
from .data import Batches


TRAIN_BACKENDS = ("auto", "triton", "torch")  # kernel backends a model trains on (no "hf")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run.

    name: checkpoint name (written into the saved ModelConfig).
    model: the architecture; its tokenizer field must be "tokenizer.json" (the data's BPE) or "bytes".
    data_dir: output of build_dataset. out_dir: receives checkpoint/, loss.jsonl, summary.json.
    steps: optimizer steps; the schedule is warmup_steps of linear warmup then cosine to min_lr.
    synthetic: fraction of rows that are synthetic recall documents.
    time_limit_s: stop early (and still save) when the loop has run this long; the summary says so.
    save_dtype: dtype of the saved weights ("float16" keeps the shipped checkpoints small).
    init_from: a checkpoint directory to continue from (same architecture; optimizer state starts fresh).
    families: the synthetic family mix, "default" (synthetic.FAMILIES) or "recall" (RECALL_FAMILIES).
    answer_weight: loss weight of the answer tokens of synthetic documents (None: plain mean loss).
    pack: several synthetic documents per row; short_frac: the fraction of steps whose documents are
        at most short_max tokens (curriculum: short documents first, then up to full rows).
    backend: the model's kernel backend, "auto" (triton on CUDA, torch elsewhere), "triton" or "torch".
    """

    name: str
    model: ModelConfig
    data_dir: str
    out_dir: str
    seq_len: int = 1024
    batch_size: int = 64
    steps: int = 1000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    synthetic: float = 0.5
    seed: int = 0
    device: str | None = None
    amp: bool = True
    save_dtype: str = "float16"
    log_every: int = 10
    time_limit_s: float | None = None
    num_workers: int = 0
    init_from: str | None = None
    families: str = "default"
    answer_weight: float | None = None
    pack: bool = False
    short_frac: float = 0.0
    short_max: int = 384
    backend: str = "auto"

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 2:
            raise ConfigError("steps, batch_size must be >= 1 and seq_len >= 2.")
        if not 0.0 <= self.synthetic <= 1.0:
            raise ConfigError(f"synthetic must lie in [0, 1], got {self.synthetic}.")
        if self.families not in ("default", "recall"):
            raise ConfigError(f"families must be 'default' or 'recall', got {self.families!r}.")
        if self.backend not in TRAIN_BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(TRAIN_BACKENDS)}, got {self.backend!r}."
                              f"{did_you_mean(str(self.backend), TRAIN_BACKENDS)}")
        if self.save_dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"save_dtype must be float16, bfloat16 or float32, got {self.save_dtype!r}.")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine from lr to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


def init_for_training(model: torch.nn.Module, seed: int) -> None:
    """GPT-2 style init: N(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2 L),
    norm weights 1. (Model.init_weights is a unit-variance init made for tests, too hot to train.)"""
    gen = torch.Generator().manual_seed(seed)
    n_layers = len(model.layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
                continue
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            p.copy_(torch.randn(p.shape, generator=gen) * std)


class _Stream(torch.utils.data.IterableDataset):
    """Batches in DataLoader workers, each worker with its own seed."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def __iter__(self):
        from .synthetic import FAMILIES, RECALL_FAMILIES

        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        c = self.cfg
        for batch in Batches(c.data_dir, seq_len=c.seq_len, batch_size=c.batch_size, synthetic=c.synthetic,
                             seed=c.seed, worker=worker, num_workers=max(1, c.num_workers),
                             families=RECALL_FAMILIES if c.families == "recall" else FAMILIES,
                             answer_weight=c.answer_weight, pack=c.pack,
                             short_batches=int(c.short_frac * c.steps), short_max=c.short_max):
            yield tuple(torch.from_numpy(x) for x in batch) if isinstance(batch, tuple) else torch.from_numpy(batch)


def _loader(cfg: TrainConfig):
    if cfg.num_workers == 0:
        return iter(_Stream(cfg))
    return iter(torch.utils.data.DataLoader(_Stream(cfg), batch_size=None, num_workers=cfg.num_workers,
                                            pin_memory=torch.cuda.is_available(), prefetch_factor=4,
                                            persistent_workers=False))


def build_for_training(cfg: TrainConfig, device: torch.device):
    from ..models.loading import resolve_model_backend
    from ..models.model import Model

    torch.manual_seed(cfg.seed)
    model = Model(cfg.model, backend=resolve_model_backend(cfg.backend, device))
    init_for_training(model, cfg.seed)
    if cfg.init_from is not None:
        from ..models.checkpoint import check_state_dict, read_weights

        weights = read_weights(cfg.init_from)
        check_state_dict({k: v.shape for k, v in model.state_dict().items()}, weights, cfg.init_from)
        model.load_state_dict({k: v.float() for k, v in weights.items()})
    return model.to(device).train()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "norm" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def train_step(model, opt, batch, cfg: TrainConfig, step: int, device: torch.device, weights=None):
    """One optimizer step on a (B, T + 1) batch; weights (B, T + 1): the loss weight of predicting
    each token (None: plain mean). Returns (loss, grad norm, answer-token loss or None) as tensors;
    the loss returned is the unweighted mean cross-entropy either way."""
    for g in opt.param_groups:
        g["lr"] = lr_at(step, cfg)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
        logits = model(inputs)  # (B, T, V)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    plain = ce.mean()
    ans_loss = None
    if weights is None:
        loss = plain
    else:
        w = weights[:, 1:].reshape(-1)
        loss = (ce * w).sum() / w.sum()
        is_ans = w > 1
        ans_loss = (ce * is_ans).sum() / is_ans.sum().clamp_min(1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return plain.detach(), gnorm, None if ans_loss is None else ans_loss.detach()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_trained(model, cfg: TrainConfig, path: Path) -> Path:
    """Checkpoint in our format with weights cast to cfg.save_dtype; the data's tokenizer copied in."""
    from ..models.checkpoint import save_checkpoint

    dtype = getattr(torch, cfg.save_dtype)
    state = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
    tok_dir = Path(cfg.data_dir) / "tokenizer" if cfg.model.tokenizer == "tokenizer.json" else None
    return save_checkpoint(path, cfg.model.replace(name=cfg.name), state, tokenizer_dir=tok_dir)


def train(cfg: TrainConfig, *, log=print) -> dict:
    """Train `cfg.model` on the data in cfg.data_dir and save it to cfg.out_dir/checkpoint.

    Writes out_dir/loss.jsonl (one record per log_every steps: step, loss, lr, grad norm, tokens/s)
    and out_dir/summary.json. Returns the summary: steps done, final loss (mean of the last 10% of
    steps), steady tokens/s (after the first 10 steps, data waits included), wall seconds, peak memory.
    """
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_float32_matmul_precision("high")
    model = build_for_training(cfg, device)
    opt = make_optimizer(model, cfg, device)
    batches = _loader(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[{cfg.name}] {n_params / 1e6:.2f}M parameters, kinds={''.join(k[0] for k in cfg.model.kinds)}, "
        f"window={cfg.model.window}, {cfg.steps} steps of {cfg.batch_size}x{cfg.seq_len} tokens on {device}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    losses: list[float] = []
    t_start = time.perf_counter()
    t_steady = None
    steady_steps = 0
    t_log, tokens_since = t_start, 0
    stopped_early = False
    with (out / "loss.jsonl").open("w") as f:
        for step in range(cfg.steps):
            item = next(batches)
            batch, weights = item if isinstance(item, (tuple, list)) else (item, None)
            batch = batch.to(device, non_blocking=True)
            weights = None if weights is None else weights.to(device, non_blocking=True)
            loss, gnorm, ans_loss = train_step(model, opt, batch, cfg, step, device, weights)
            tokens_since += cfg.batch_size * cfg.seq_len
            if step == 10:
                _sync(device)
                t_steady = time.perf_counter()
            elif step > 10:
                steady_steps += 1
            if (step + 1) % cfg.log_every == 0 or step == cfg.steps - 1:
                lv, gv = float(loss), float(gnorm)  # synchronizes
                now = time.perf_counter()
                rec = {"step": step + 1, "loss": round(lv, 4), "lr": lr_at(step, cfg), "grad_norm": round(gv, 4),
                       "tokens_per_s": round(tokens_since / (now - t_log)), "elapsed_s": round(now - t_start, 2)}
                if ans_loss is not None:
                    rec["answer_loss"] = round(float(ans_loss), 4)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                losses.append(lv)
                t_log, tokens_since = now, 0
                if not math.isfinite(lv):
                    raise FloatingPointError(f"[{cfg.name}] loss became {lv} at step {step + 1}.")
                if (step + 1) % (cfg.log_every * 10) == 0:
                    log(f"[{cfg.name}] step {step + 1}/{cfg.steps} loss {lv:.3f} "
                        f"answer {rec.get('answer_loss', float('nan')):.3f} lr {rec['lr']:.2e} "
                        f"{rec['tokens_per_s']:,} tok/s")
            if cfg.time_limit_s is not None and time.perf_counter() - t_start > cfg.time_limit_s:
                stopped_early = step + 1 < cfg.steps
                break
    _sync(device)
    t_end = time.perf_counter()
    steps_done = step + 1
    tail = losses[-max(1, len(losses) // 10):]
    summary = {
        "name": cfg.name, "params": n_params, "steps": steps_done, "steps_planned": cfg.steps,
        "stopped_early": stopped_early, "tokens": steps_done * cfg.batch_size * cfg.seq_len,
        "final_loss": round(sum(tail) / len(tail), 4),
        "tokens_per_s": round(steady_steps * cfg.batch_size * cfg.seq_len / (t_end - t_steady)) if steady_steps else None,
        "wall_s": round(t_end - t_start, 2), "device": str(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu",
        "peak_mem_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "backend": model.backend, "fallbacks": model.fallbacks,
        "config": cfg.to_dict(),
    }
    save_trained(model.eval(), cfg, out / "checkpoint")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"[{cfg.name}] done: {steps_done} steps, loss {summary['final_loss']}, {summary['tokens_per_s']} tok/s, "
        f"{summary['wall_s']} s")
    return summary
