"""The evaluation pipeline behind `rattn-eval run`: samples -> preflight -> batched greedy
generation -> scores -> a resumable run directory (DESIGN §6).

    from rattn_eval.runner import RunConfig, run
    summary = run(RunConfig(tasks=("niah_single_1",), lengths=(4096,), model="debug", n=4))

`run` is a plain function of a frozen config; the CLI only builds the config. Nothing runs before
every sample has been checked to fit the model's context (prompt + generation budget), so a
prompt is never truncated; records are appended and flushed one by one, so a killed run resumes
where it stopped with nothing lost or scored twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from rattn_eval.errors import BudgetError, ConfigError, DataError
from rattn_eval.results import DEFAULT_THRESHOLD, check_writable, format_length, summarize

# The model `rattn-eval run` uses without --model: the shipped RAttention checkpoint (package data,
# so it runs anywhere without a download; niah_single_1 at 1k: 100, results/train/README.md).
# Nothing else names a default model.
DEFAULT_MODEL = "tiny-rattn"
DEFAULT_RUNS_DIR = Path("results") / "runs"
BACKENDS = ("auto", "triton", "torch", "hf")


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
    threshold: float = DEFAULT_THRESHOLD
    prompts: str = "ruler"
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


# Models that live in the runner rather than in rattn_eval.models: test doubles only.
TEST_MODELS: dict[str, Callable[[str], tuple[Any, Any]]] = {}


def register_test_model(prefix: str):
    def deco(fn):
        TEST_MODELS[prefix] = fn
        return fn

    return deco


@register_test_model("oracle")
def _oracle(name: str):
    from rattn_eval.runner.oracle import load_oracle

    return load_oracle(name)


def load_model_for_run(config: RunConfig) -> tuple[Any, Any]:
    """(model, tokenizer) for `config.model`: a runner test double or `rattn_eval.models.load_model`."""
    prefix = config.model.split(":", 1)[0]
    if ":" in config.model and prefix in TEST_MODELS:
        return TEST_MODELS[prefix](config.model)
    from rattn_eval.models import load_model

    return load_model(config.model, backend=config.backend, device=config.device, dtype=config.dtype,
                      window=config.window)


def _validate(config: RunConfig) -> None:
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
    for d in config.depths or ():
        if not 0.0 <= d <= 1.0:
            raise ConfigError(f"needle depth {d:g} is outside [0, 1] (a fraction of the context)")
    if config.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
    from rattn_eval.compare import check_threshold

    check_threshold(config.threshold)
    from rattn_eval.tasks import check_prompts

    check_prompts(config.prompts)


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


@dataclass
class _Cell:
    task: str
    length: int
    samples: list[Any]  # this session's samples: the first --limit of the planned ones
    prompts: dict[str, list[int]]
    planned: list[Any]  # all n samples: what the summary counts against (a --limit run is unfinished)


def run(config: RunConfig, *, console: Any = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) an evaluation; returns the summary (also written to summary.json).

    Raises ConfigError / BudgetError / CheckpointError / DataError / NumericsError before anything
    is written when the input is bad, and NumericsError mid-run (records already written stay valid;
    the failing batch writes nothing).
    """
    from rattn_eval import distributed
    from rattn_eval import tasks as task_lib

    _validate(config)
    task_names = task_lib.resolve(list(config.tasks))
    lengths = sorted(set(config.lengths))
    out = Path(config.out) if config.out else default_out_dir(dataclasses.replace(config, lengths=tuple(lengths)))
    check_writable(out)
    # Under torchrun: join the process group; each rank runs on cuda:LOCAL_RANK (or the CPU).
    dist = distributed.init(config.device)
    config = dataclasses.replace(config, lengths=tuple(lengths), device=dist.device)

    t_load = time.perf_counter()
    model, tok = load_model_for_run(config)
    model_load_s = time.perf_counter() - t_load
    too_long = [L for L in lengths if L > model.max_context]
    if too_long:
        raise BudgetError(
            f"--len {format_length(too_long[0])} ({too_long[0]} tokens) exceeds the context of model "
            f"{config.model} ({model.max_context} tokens); choose a length <= {format_length(model.max_context)}"
        )

    use_template = config.chat_template
    if use_template is None:
        use_template = bool(getattr(tok, "chat_template", None))
    elif use_template and not getattr(tok, "chat_template", None):
        raise ConfigError(f"model {config.model} has no chat template; drop --chat-template")
    # Stored resolved, so a rerun that spells the default out (--chat-template) still resumes.
    config = dataclasses.replace(config, chat_template=use_template)

    cells = _build_cells(task_lib, config, task_names, lengths, tok, model, use_template)

    rundir = distributed.prepare(dist, out, resolved_config(config, task_names, out), overwrite=config.overwrite)
    if dist.is_main:
        rundir.write_env({**environment(model, config), **dist.env_info()})
    done = distributed.load_done(dist, rundir)
    skip, writer_dir = distributed.shard(dist, [[s for s in c.samples if s.id not in done] for c in cells],
                                         done, rundir)
    t_gen = time.perf_counter()
    _generate_all(cells, skip, writer_dir, model, tok, task_lib, config, console=console,
                  progress=progress and dist.is_main)
    final = distributed.collect(dist, rundir)
    distributed.record_timing(dist, rundir, model_load_s=model_load_s, generate_s=time.perf_counter() - t_gen,
                              samples=len(set(final) - set(done)))

    # every record of the n planned samples, so a --limit session neither hides the missing samples nor
    # drops samples an earlier, longer session already scored
    planned = [s for c in cells for s in c.planned]
    records = [final[s.id] for s in planned if s.id in final]
    summary = summarize(records, tasks=task_names, lengths=lengths,
                        expected={(c.task, c.length): len(c.planned) for c in cells},
                        threshold=config.threshold)
    summary = {"model": config.model, "backend": getattr(model, "backend", config.backend),
               "n": config.n, "seed": config.seed, "window": config.window, **summary}
    if dist.is_main:
        rundir.write_summary(summary)
    dist.close()
    return summary


def _build_cells(task_lib, config, task_names, lengths, tok, model, use_template) -> list[_Cell]:
    """Generate (or read cached) samples and check every one against the model's context."""
    cells = []
    for task in task_names:
        for L in lengths:
            samples = task_lib.generate(
                task, tok, length=L, n=config.n, seed=config.seed,
                chat_template=tok.chat_template if use_template else None, depth=list(config.depths) if config.depths else None,
                qa_data=config.qa_data, prompts=config.prompts, ruler_dir=config.ruler_dir,
            )
            planned = samples
            if config.limit is not None:
                samples = samples[: config.limit]
            prompts = {}
            for s in samples:
                ids = list(tok.encode_prompt(s.input))
                if len(ids) != s.num_tokens:
                    raise DataError(f"sample {s.id} has {len(ids)} prompt tokens but records {s.num_tokens}; "
                                    "its cached data was made with another tokenizer")
                if len(ids) + s.max_new_tokens > model.max_context:
                    raise BudgetError(
                        f"sample {s.id} needs {len(ids)} + {s.max_new_tokens} tokens, more than the "
                        f"{model.max_context}-token context of model {config.model}; choose a shorter --len"
                    )
                prompts[s.id] = ids
            cells.append(_Cell(task, L, samples, prompts, planned))
    return cells


def _generate_all(cells, done, rundir, model, tok, task_lib, config, *, console, progress) -> None:
    from rattn_eval.tasks.metrics import score_sample

    eos = set(getattr(tok, "eos_ids", None) or [])
    with rundir.append() as writer, _Progress(console, enabled=progress) as bar:
        for cell in cells:
            pending = [s for s in cell.samples if s.id not in done]
            handle = bar.add(f"{cell.task} {format_length(cell.length)}", total=len(cell.samples),
                             completed=len(cell.samples) - len(pending))
            # Longest first: similar lengths share a batch (little padding), and the slowest
            # batch runs first so the ETA is pessimistic rather than optimistic.
            pending.sort(key=lambda s: (-s.num_tokens, s.index))
            for i in range(0, len(pending), config.batch_size):
                batch = pending[i: i + config.batch_size]
                t0 = time.perf_counter()
                outs = _generate(model, tok, batch, [cell.prompts[s.id] for s in batch])
                wall = time.perf_counter() - t0
                stats = dict(getattr(model, "last_stats", None) or {})
                timings = {"prefill_s": stats.get("prefill_s"), "decode_s": stats.get("decode_s"),
                           "batch_s": wall}
                for s, new in zip(batch, outs):
                    new = _cut_at_eos(list(new), eos)
                    pred = tok.decode(new)
                    writer.write({
                        "id": s.id, "index": s.index, "task": s.task, "length": s.length, "seed": s.seed,
                        "prediction": pred, "answers": list(s.answers),
                        # identifies the prompt, so compare pairs two runs' records only where they scored the same text
                        "input_sha": hashlib.sha256(s.input.encode("utf-8")).hexdigest()[:16],
                        "score": score_sample(s.task, pred, list(s.answers)),
                        "num_tokens": s.num_tokens, "output_tokens": len(new),
                        "depth": s.depth, "answer_position": getattr(s, "answer_position", None),
                        "backend": getattr(model, "backend", config.backend),
                        "batch_size": len(batch), "timings": timings,
                    })
                tokens = sum(s.num_tokens for s in batch) + sum(len(o) for o in outs)
                bar.advance(handle, len(batch), tokens, wall)


def _generate(model, tok, batch: Sequence[Any], prompts: list[list[int]]) -> list[list[int]]:
    budgets = [s.max_new_tokens for s in batch]
    by_sample = getattr(model, "generate_for_samples", None)
    if by_sample is not None:  # test doubles (oracles) answer from the sample itself
        return by_sample(batch, max_new_tokens=budgets)
    return model.generate(prompts, max_new_tokens=budgets, eos_ids=getattr(tok, "eos_ids", None), tokenizer=tok)


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


def environment(model: Any, config: RunConfig) -> dict[str, Any]:
    """Versions, device, backend and git revision for env.json (no heavy imports of its own)."""
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "triton", "transformers", "rattn-eval"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "device": _device_name(model),
        "backend": getattr(model, "backend", config.backend),
        "model": config.model,
        "git_revision": _git_revision(),
        "hostname": platform.node(),
        "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


def _device_name(model: Any) -> str:
    torch = sys.modules.get("torch")
    dev = getattr(model, "device", None)
    if dev is None and torch is not None and isinstance(model, torch.nn.Module):  # native models: their weights' device
        first = next(model.parameters(), None)
        dev = None if first is None else first.device
    if torch is not None and dev is not None and str(dev).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(dev))
    return f"cpu ({platform.processor() or platform.machine()})"


def _git_revision() -> str | None:
    """HEAD of the repository holding this package (with '-dirty'), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


class _Progress:
    """One rich progress bar per (task, length): samples done, tokens/s, ETA. Silent when disabled."""

    def __init__(self, console: Any, *, enabled: bool):
        self.enabled = enabled
        self._p = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._p = Progress(
                TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[tok_s]:>9} tok/s"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=console, transient=False,
            )
        self._tokens: dict[int, tuple[int, float]] = {}

    def __enter__(self):
        if self._p is not None:
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)

    def add(self, name: str, *, total: int, completed: int) -> int:
        if self._p is None:
            return 0
        return self._p.add_task(name, total=total, completed=completed, tok_s="-")

    def advance(self, handle: int, samples: int, tokens: int, seconds: float) -> None:
        if self._p is None:
            return
        tok, sec = self._tokens.get(handle, (0, 0.0))
        tok, sec = tok + tokens, sec + seconds
        self._tokens[handle] = (tok, sec)
        self._p.update(handle, advance=samples, tok_s=f"{tok / sec:,.0f}" if sec > 0 else "-")


def builtin_models() -> list[str]:
    """Names `load_model` accepts without a path (for `rattn-eval ls models`); imports no torch."""
    from rattn_eval.models.names import BUILTIN_MODELS

    return list(BUILTIN_MODELS)


def write_samples(task: str, tokenizer: str, *, length: int, n: int, seed: int, chat_template: bool = False,
                  depth: list[float] | None = None, qa_data: str | None = None, out: str, prompts: str = "ruler",
                  ruler_dir: str | None = None) -> Path:
    """`rattn-eval generate`: samples of one task written as JSON Lines by the task suite's writer."""
    from rattn_eval import tasks as task_lib
    from rattn_eval.models import load_tokenizer

    names = task_lib.resolve([task])
    if len(names) != 1 or names[0] != task:
        raise ConfigError(f"generate takes one task, but {task!r} is a group of {len(names)}; pick one of "
                          f"{', '.join(names)}")
    tok = load_tokenizer(tokenizer)
    if chat_template and not tok.chat_template:
        raise ConfigError(f"tokenizer {tokenizer!r} has no chat template; drop --chat-template")
    path = Path(out)
    check_writable(path.parent)
    try:
        return task_lib.generate_to_file(task, tok, path, length=length, n=n, seed=seed,
                                         chat_template=tok.chat_template if chat_template else None,
                                         depth=depth, qa_data=qa_data, prompts=prompts, ruler_dir=ruler_dir)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
