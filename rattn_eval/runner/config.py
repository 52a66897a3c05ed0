"""The run's configuration: `RunConfig` (one source of the CLI's defaults), its checks, the
default run directory, and the config.json a run directory is resumed against."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rattn_eval.errors import ConfigError, did_you_mean
from rattn_eval.models.registry import BACKENDS
from rattn_eval.aggregate import DEFAULT_THRESHOLD
from rattn_eval.results import format_length

# The model `rattn-eval run` uses without --model: the shipped RAttention checkpoint (package data,
# so it runs anywhere without a download; niah_single_1 at 1k: 100 in this project's wording, 42 in
# RULER's, results/train/README.md).
# Nothing else names a default model.
DEFAULT_MODEL = "tiny-rattn"
DEFAULT_RUNS_DIR = Path("results") / "runs"


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that defines a run. Field defaults are the CLI's defaults (one source).

    tasks: task names or groups as the user gave them (resolved by `rattn_eval.tasks.resolve`).
    lengths: target lengths in tokens (prompt + generation budget <= length).
    depths: needle depths for NIAH tasks (None: the task's default spread).
    chat_template: None = use the model's chat template when it has one.
    limit: run only the first `limit` samples of each (task, length), for smoke runs.
    out: run directory (None: results/runs/<name from model, tasks, lengths>).
    prompts: "ruler" (RULER's own text and sampling) or "native" (this project's wording).
    ruler_dir: a RULER checkout to read RULER's text from (default: the installed lm-eval's port).
    repair: set aside the unreadable lines of the run directory's records and a broken env.json.
    """

    tasks: tuple[str, ...]
    lengths: tuple[int, ...]
    model: str = DEFAULT_MODEL
    backend: str = "auto"
    n: int = 10
    seed: int = 0
    batch_size: int = 8
    out: str | None = None
    qa_data: str | None = None
    window: int | None = None
    depths: tuple[float, ...] | None = None
    chat_template: bool | None = None
    limit: int | None = None
    device: str | None = None
    dtype: str | None = None
    overwrite: bool = False
    repair: bool = False
    threshold: float = DEFAULT_THRESHOLD
    prompts: str = "ruler"  # tasks.PROMPTS[0]
    ruler_dir: str | None = None


def default_out_dir(config: RunConfig) -> Path:
    """results/runs/<model>_<tasks>_<lengths>[_wW][_nN][_sS]: one directory per distinct run."""
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(config.model.rstrip("/")).name or config.model)
    tasks = "+".join(config.tasks)
    if len(tasks) > 40:
        tasks = f"{len(config.tasks)}tasks-{hashlib.sha1(tasks.encode()).hexdigest()[:8]}"
    parts = [model, tasks, "-".join(format_length(L) for L in config.lengths)]
    if config.window is not None:
        parts.append(f"w{config.window}")
    parts.append(f"n{config.n}")
    if config.seed:
        parts.append(f"s{config.seed}")
    return DEFAULT_RUNS_DIR / "_".join(parts)


def validate(config: RunConfig) -> None:
    if not config.tasks:
        raise ConfigError("no task given; pass --task NAME or a group (niah, synthetic, ruler)")
    if not config.lengths:
        raise ConfigError("no length given; pass --len, e.g. --len 4k,8k")
    for L in config.lengths:
        if L <= 0:
            raise ConfigError(f"length {L} is not a positive number of tokens")
    for name, v, lo in (("-n", config.n, 1), ("--batch-size", config.batch_size, 1),
                        ("--limit", config.limit, 1), ("--window", config.window, 0)):
        if v is not None and v < lo:
            raise ConfigError(f"{name} must be at least {lo}, got {v}")
    longest = max(config.lengths)
    if config.window is not None and config.window > longest:
        # beyond the longest prompt a window changes nothing, and a huge one would only fail mid-run
        raise ConfigError(f"--window {config.window} is longer than the longest --len ({longest} tokens), where "
                          f"every local layer already sees the whole prompt; choose a window of at most {longest}")
    from rattn_eval.tasks import MAX_SAMPLES

    if config.n > MAX_SAMPLES:
        raise ConfigError(f"-n must be at most {MAX_SAMPLES} samples per (task, length), got {config.n}")
    for d in config.depths or ():
        if not 0.0 <= d <= 1.0:
            raise ConfigError(f"needle depth {d:g} is outside [0, 1] (a fraction of the context)")
    if config.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {config.backend!r}; choose one of {', '.join(BACKENDS)}."
                          f"{did_you_mean(config.backend, BACKENDS)}")
    from rattn_eval.compare import check_threshold

    check_threshold(config.threshold)
    if config.device is not None:
        from rattn_eval.models.loading import resolve_device

        resolve_device(config.device)  # one sentence for a device this machine lacks, before anything runs
    from rattn_eval.tasks import prompt_source

    prompt_source(config.prompts, config.ruler_dir)  # a missing RULER text stops the run before the model loads


def resolved_config(config: RunConfig, tasks: list[str], out: Path) -> dict[str, Any]:
    """The JSON written to config.json; resume compares it (minus resume-neutral keys)."""
    d = dataclasses.asdict(config)
    d["resolved_tasks"] = list(tasks)
    d["lengths"] = list(config.lengths)
    d["depths"] = list(config.depths) if config.depths is not None else None
    d["tasks"] = list(config.tasks)
    d["out"] = str(out)
    # samples of another generator version differ under the same ids: such a run directory does not resume
    from rattn_eval.tasks import generator_version, prompt_source

    d["generator_version"] = generator_version(config.prompts)
    d["prompt_source"] = prompt_source(config.prompts, config.ruler_dir)
    return d
