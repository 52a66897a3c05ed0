"""The evaluation pipeline: samples -> preflight -> batched greedy generation -> scores -> the run
directory (written through `rattn_eval.results`)."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from rattn_eval.errors import BudgetError, CheckpointError, ConfigError, DataError
from rattn_eval.aggregate import summarize
from rattn_eval.results import check_writable, format_length, sample_record
from rattn_eval.runner.config import RunConfig, default_out_dir, resolved_config, validate
from rattn_eval.runner.interface import Model, Tokenizer
from rattn_eval.runner.progress import Progress

# Models that live in the runner rather than in rattn_eval.models: pipeline checks, which run the whole
# pipeline with known answers (`runner.oracle`). Each is loaded for one run: its loader gets the RunConfig.
RUNNER_MODELS: dict[str, Callable[[RunConfig], tuple[Model, Tokenizer]]] = {}


def register_runner_model(prefix: str):
    def deco(fn):
        RUNNER_MODELS[prefix] = fn
        return fn

    return deco


@register_runner_model("oracle")
def _oracle(config: RunConfig):
    from rattn_eval.runner.oracle import load_oracle

    return load_oracle(config)


def load_model_for_run(config: RunConfig) -> tuple[Model, Tokenizer]:
    """(model, tokenizer) for `config.model`: a pipeline check (oracle) or `rattn_eval.models.load_model`."""
    prefix = config.model.split(":", 1)[0]
    if ":" in config.model and prefix in RUNNER_MODELS:
        return RUNNER_MODELS[prefix](config)
    from rattn_eval.models import load_model

    model, tok = load_model(config.model, backend=config.backend, device=config.device, dtype=config.dtype,
                            window=config.window)
    if tok is None:
        raise CheckpointError(f"model {config.model} has no tokenizer (no tokenizer.json in its folder), and a run "
                              "needs one to build its prompts; add tokenizer.json, or make a checkpoint with "
                              "`rattn-eval convert SRC DST --tokenizer-dir FOLDER` (or --tokenizer bytes|gpt2)")
    return model, tok


def _load_quietly(config: RunConfig) -> tuple[Model, Tokenizer]:
    """load_model_for_run without transformers' own bar while it loads weights (--quiet), restored after."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load_model_for_run(config)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


@dataclass
class _Cell:
    task: str
    length: int
    samples: list[Any]  # this invocation's samples: the first --limit of the planned ones
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

    validate(config)
    task_names = task_lib.resolve(list(config.tasks))
    unused = task_lib.unused_option(task_names, depth=config.depths, qa_data=config.qa_data, prompts=config.prompts,
                                    ruler_dir=config.ruler_dir)
    if unused:
        raise ConfigError(unused)
    lengths = sorted(set(config.lengths))
    out = Path(config.out) if config.out else default_out_dir(dataclasses.replace(config, lengths=tuple(lengths)))
    check_writable(out)
    # Under torchrun: join the process group; each rank runs on cuda:LOCAL_RANK (or the CPU).
    dist = distributed.init(config.device)
    config = dataclasses.replace(config, lengths=tuple(lengths), device=dist.device)

    # The run directory's lock comes first, so a second run on a busy --out is refused at once rather than
    # after its model has loaded; held until the run ends, failed or not.
    with distributed.lock(dist, out) as rundir:
        t_load = time.perf_counter()
        model, tok = _load_quietly(config) if not progress and config.backend == "hf" else load_model_for_run(config)
        model_load_s = time.perf_counter() - t_load
        too_long = [L for L in lengths if L > model.max_context]
        if too_long:
            raise BudgetError(
                f"--len {format_length(too_long[0])} ({too_long[0]} tokens) exceeds the context of model "
                f"{config.model} ({model.max_context} tokens); choose a length <= {format_length(model.max_context)}"
            )

        use_template = use_chat_template(config, tok)
        # Stored resolved, so a rerun that spells the default out (--chat-template) still resumes.
        config = dataclasses.replace(config, chat_template=use_template)

        cells = _build_cells(config, task_names, lengths, tok, model, use_template)

        weights = weights_fingerprint(model)
        distributed.open_run(dist, rundir, resolved_config(config, task_names, out), overwrite=config.overwrite,
                             repair=config.repair, model_revision=getattr(model, "revision", None), weights=weights)
        if dist.is_main:
            rundir.write_env({**environment(model, config), "weights_fingerprint": weights, **dist.env_info()})
        done = distributed.load_done(dist, rundir)
        skip, rank = distributed.shard(dist, [[s for s in c.samples if s.id not in done] for c in cells], done)
        t_gen = time.perf_counter()
        _generate_all(cells, skip, rundir, rank, model, tok, config, console=console,
                      progress=progress and dist.is_main)
        final = distributed.collect(dist, rundir)
        distributed.record_timing(dist, rundir, model_load_s=model_load_s, generate_s=time.perf_counter() - t_gen,
                                  samples=len(set(final) - set(done)))

        # every record of the n planned samples, so a --limit invocation neither hides the missing samples nor
        # drops samples an earlier, longer invocation already scored
        planned = [s for c in cells for s in c.planned]
        records = [final[s.id] for s in planned if s.id in final]
        summary = summarize(records, tasks=task_names, lengths=lengths,
                            expected={(c.task, c.length): len(c.planned) for c in cells},
                            threshold=config.threshold)
        summary = {"model": config.model, "backend": model.backend,
                   "n": config.n, "seed": config.seed, "window": config.window, **summary}
        if dist.is_main:
            rundir.write_summary(summary)
    dist.close()
    return summary


def use_chat_template(config: RunConfig, tok: Tokenizer) -> bool:
    """Whether prompts are wrapped in the tokenizer's chat template: as asked, else when it has one."""
    if config.chat_template is None:
        return bool(tok.chat_template)
    if config.chat_template and not tok.chat_template:
        raise ConfigError(f"model {config.model} has no chat template; drop --chat-template")
    return config.chat_template


def samples_for(config: RunConfig, task: str, length: int, tok: Tokenizer, use_template: bool) -> list[Any]:
    """The n planned samples of one (task, length) of the run (generated, or read from the cache)."""
    from rattn_eval import tasks as task_lib

    return task_lib.generate(
        task, tok, length=length, n=config.n, seed=config.seed,
        chat_template=tok.chat_template if use_template else None,
        depth=list(config.depths) if config.depths else None, qa_data=config.qa_data, prompts=config.prompts,
        ruler_dir=config.ruler_dir)


def _build_cells(config, task_names, lengths, tok, model, use_template) -> list[_Cell]:
    """Generate (or read cached) samples and check every one against the model's context."""
    cells = []
    for task in task_names:
        for L in lengths:
            samples = samples_for(config, task, L, tok, use_template)
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


def _generate_all(cells, done, rundir, rank, model: Model, tok: Tokenizer, config, *, console, progress) -> None:
    """Generate and record every sample of `cells` not in `done`, to records.jsonl or rank `rank`'s file."""
    eos = set(tok.eos_ids or [])
    with rundir.append(rank) as writer, Progress(console, enabled=progress) as bar:
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
                stats = dict(model.last_stats or {})
                timings = {"prefill_s": stats.get("prefill_s"), "decode_s": stats.get("decode_s"),
                           "batch_s": wall}
                for s, new in zip(batch, outs):
                    new = _cut_at_eos(list(new), eos)
                    pred = tok.decode(new)
                    writer.write(sample_record(s, pred, len(new), backend=model.backend, batch_size=len(batch),
                                               timings=timings))
                tokens = sum(s.num_tokens for s in batch) + sum(len(o) for o in outs)
                bar.advance(handle, len(batch), tokens, wall)


def _generate(model: Model, tok: Tokenizer, batch: Sequence[Any], prompts: list[list[int]]) -> list[list[int]]:
    return model.generate(prompts, max_new_tokens=[s.max_new_tokens for s in batch], eos_ids=tok.eos_ids,
                          tokenizer=tok)


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


def weights_fingerprint(model: Any) -> str | None:
    """A short hash of a model's weights, recorded in env.json so that a resume notices a checkpoint whose
    weights changed in place: every tensor's name, shape and up to 1024 evenly spaced values, rounded to
    bf16 (so an fp32 run on the CPU and a bf16 run on a GPU of one checkpoint agree). A sample, not every
    value: a change to a few weights of a tensor can go unnoticed. None for a model without tensors (the
    oracles)."""
    module = getattr(model, "hf", model)  # the transformers model inside an HFModel
    state_dict = getattr(module, "state_dict", None)
    if state_dict is None:
        return None
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(state_dict().items()):
        flat = t.detach().reshape(-1)
        h.update(f"{name} {tuple(t.shape)} {t.is_floating_point()}".encode())
        if flat.numel():
            sample = flat[:: -(-flat.numel() // 1024)]  # at most 1024, spread over the whole tensor
            sample = sample.to(torch.bfloat16).float() if t.is_floating_point() else sample.long()
            h.update(sample.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


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
        "backend": model.backend,
        # layers that ran another backend than `backend` (e.g. softcapped attention on torch), with why
        "fallbacks": list(getattr(model, "fallbacks", None) or []),
        "model": config.model,
        "model_revision": getattr(model, "revision", None),  # the hub commit of an ORG/NAME model, else None
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


def builtin_models() -> list[str]:
    """Names `load_model` accepts without a path (for `rattn-eval ls models`); imports no torch."""
    from rattn_eval.models.names import BUILTIN_MODELS

    return list(BUILTIN_MODELS)


def write_samples(task: str, tokenizer: str, *, length: int, n: int, seed: int, chat_template: bool = False,
                  depth: list[float] | None = None, qa_data: str | None = None, out: str, prompts: str = "ruler",
                  ruler_dir: str | None = None) -> Path:
    """`rattn-eval generate`: samples of one task written as JSON Lines by the task suite's writer."""
    from rattn_eval import tasks as task_lib
    from rattn_eval.tokenizer import load_tokenizer

    names = task_lib.resolve([task])
    if len(names) != 1 or names[0] != task:
        raise ConfigError(f"generate takes one task, but {task!r} is a group of {len(names)}; pick one of "
                          f"{', '.join(names)}")
    unused = task_lib.unused_option(names, depth=depth, qa_data=qa_data, prompts=prompts, ruler_dir=ruler_dir)
    if unused:
        raise ConfigError(unused)
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
