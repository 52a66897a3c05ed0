"""load_model: a built-in name, a checkpoint directory, a Hugging Face folder or a hub id -> (model, tokenizer).

Built-in names and their weight sources are the table in models/registry.py: random weights ("debug"),
packaged GGUF files converted on first use into ~/.cache/rattn-eval/models/<name> ("smollm2-135m",
"gemma3-270m"), or checkpoints shipped in the package ("tiny-rattn", ...). A hub id ORG/NAME[@REVISION]
loads from huggingface_hub's cache (models/hub.py), memory-mapped from its safetensors shards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, did_you_mean
from . import checkpoint as ckpt
from .config import ModelConfig
from .model import Model
from .registry import BACKENDS, MODELS, ModelEntry, PackagedGGUF, RandomInit, ShippedCheckpoint, names, unknown_model
from rattn_eval.tokenizer import cache_root, load_tokenizer


def resolve_device(device) -> torch.device:
    """None -> CUDA when available, else the CPU; a named device must exist on this machine."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r} asked for, but this machine has no CUDA device; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {device!r} asked for, but this machine has {count} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"device {device!r} cannot run a model here; use cpu, cuda or cuda:N")
    return dev


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """None -> bf16 on CUDA, fp32 elsewhere; also accepts "float32" / "bfloat16" / "float16" strings."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16.")
        return getattr(torch, dtype)
    return dtype


def resolve_model_backend(backend: str, device: torch.device) -> str:
    """"auto" -> "triton" on CUDA, "torch" elsewhere; explicit choices are checked."""
    if backend not in BACKENDS:
        hint = did_you_mean(str(backend), BACKENDS)
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.{hint}")
    if backend in ("torch", "hf"):
        return backend
    from .. import kernels

    try:
        return kernels.resolve_backend(backend, device)
    except kernels.BackendUnavailable as e:
        raise ConfigError(str(e) + ".") from None


def build_model(config: ModelConfig, state_dict: dict[str, torch.Tensor] | None = None, *, backend: str = "torch",
                device=None, dtype=None, where: str = "the checkpoint", strict_backend: bool = False) -> Model:
    """A Model on `device`/`dtype`: random weights from config.init_seed when state_dict is None,
    else exactly `state_dict` (strict: every key and shape must match), assigned without a copy
    when device and dtype already agree (memory-mapped tensors stay memory-mapped).
    strict_backend: refuse (ConfigError) layers the triton backend would run on the PyTorch path,
    instead of recording them in model.fallbacks (see Model.set_backend)."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if state_dict is None:
        model = Model(config, backend=backend, strict=strict_backend).init_weights()
    else:
        with torch.device("meta"):
            model = Model(config, backend=backend, strict=strict_backend)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        ckpt.check_state_dict(expected, state_dict, where)
        model.load_state_dict(state_dict, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model


def apply_overrides(config: ModelConfig, *, window: int | None, local_globals: bool) -> ModelConfig:
    """Window study without retraining: `window` replaces the window of every local layer;
    with local_globals=True the global layers become sliding-window layers of that window too
    (they keep their own RoPE)."""
    if window is None:
        if local_globals:
            raise ConfigError("local_globals=True needs a window (e.g. window=128).")
        return config
    if not isinstance(window, int) or window < 0:
        raise ConfigError(f"window must be an int >= 0, got {window!r}.")
    if not config.has_local and not local_globals:
        raise ConfigError(f"{config.name!r} has no local layers to re-window; pass local_globals=True to make its "
                          "global layers sliding-window layers.")
    changes = {"window": window} if config.has_local else {}
    if local_globals:
        changes["global_window"] = window
    return config.replace(**changes)


def real_checkpoint_dir(name: str) -> Path:
    """Checkpoint directory of a real built-in model, converting it from its packaged GGUF on first use.

    The conversion is written to a temporary folder and renamed into place, so a concurrent
    process never sees a half-written checkpoint (the loser of a race discards its copy)."""
    target = cache_root() / "models" / name
    if ckpt.is_checkpoint(target):
        return target
    from .importers import convert

    source = MODELS[name].source if name in MODELS else None
    if not isinstance(source, PackagedGGUF):
        raise ConfigError(f"{name!r} is not a built-in model with GGUF weights "
                          f"({', '.join(names(PackagedGGUF))}).")
    src = source.gguf_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        convert(src, Path(tmp) / name, name=name)
        if target.exists() and not ckpt.is_checkpoint(target):  # left by an interrupted older conversion
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(Path(tmp) / name, target)
        except OSError:  # another process finished first (target exists and is not empty)
            if not ckpt.is_checkpoint(target):
                raise
    return target


@dataclass(frozen=True)
class Location:
    """Where a model's weights are: `path` (None: random weights of `entry`'s config), the registry entry
    of a built-in name, and for a hub id its repo id (`name`) and snapshot commit (`revision`)."""

    path: Path | None
    entry: ModelEntry | None = None
    name: str | None = None
    revision: str | None = None


def locate_model(name_or_path: str | os.PathLike) -> Location:
    """Resolve a model argument, in this order: an existing path; a built-in name (models/registry.py;
    GGUF weights are converted on first use); a hub id ORG/NAME[@REVISION] (models/hub.py: the cache, then
    the hub unless HF_HUB_OFFLINE). Anything else is a CheckpointError (a missing path) or a ConfigError
    with a "did you mean"."""
    from . import hub

    key = str(name_or_path)
    path = Path(key).expanduser()
    if path.exists():
        return Location(path)
    entry = MODELS.get(key)
    if entry is not None:
        if isinstance(entry.source, RandomInit):
            return Location(None, entry)
        if isinstance(entry.source, PackagedGGUF):
            return Location(real_checkpoint_dir(key), entry)
        if isinstance(entry.source, ShippedCheckpoint):
            from ..checkpoints import checkpoint_dir

            return Location(checkpoint_dir(key), entry)
        # a ConfigOnly preset
        raise ConfigError(f"{key!r} is a config without weights ({entry.description}); time it with random "
                          f"weights: rattn-eval bench e2e --model {key} --random-weights")
    snap = hub.snapshot_for(name_or_path)
    if snap is not None:
        return Location(snap.path, name=snap.repo_id, revision=snap.commit)
    if isinstance(name_or_path, os.PathLike) or os.sep in key or key.startswith((".", "~")):
        raise CheckpointError(f"checkpoint directory {key!r} does not exist.")
    raise unknown_model(key, also=", an existing path, nor a Hugging Face id ORG/NAME")


def load_model(name_or_path: str | os.PathLike, *, backend: str = "auto", device=None, dtype=None,
               window: int | None = None, local_globals: bool = False):
    """Load a model and its tokenizer.

    Args:
        name_or_path: a built-in name (models/registry.py: "debug", "smollm2-135m", "tiny-rattn", ...), a
            checkpoint directory, a Hugging Face folder (config.json + safetensors; converted in memory, or run
            unmodified with backend="hf"), or a hub id ORG/NAME[@REVISION] (see locate_model).
        backend: "auto" (triton on CUDA, torch otherwise), "triton", "torch" or "hf". On triton, layers the
            Triton kernels cannot run (attention softcapping, odd head dims) run on the PyTorch path and are
            listed in model.fallbacks; an explicit "triton" refuses them with ConfigError instead.
        device: default CUDA when available, else CPU. dtype: default bf16 on CUDA, fp32 on CPU.
        window: replace every local layer's window; local_globals=True also turns the global layers
            into sliding-window layers of that window (see apply_overrides).
    Returns:
        (model, tokenizer); model.backend is the backend that actually runs, model.tokenizer is set, and
        model.revision is the hub commit the weights came from (None when they did not come from the hub).
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    resolved = resolve_model_backend(backend, device)
    strict = backend == "triton"  # asked for by name: no silent PyTorch layers
    where = locate_model(name_or_path)
    path = where.path
    if path is None:  # random weights of a registry config
        config = apply_overrides(where.entry.config(), window=window, local_globals=local_globals)
        if resolved == "hf":
            from .hf import hf_model_from_native

            model = hf_model_from_native(config, build_model(config).state_dict(), device=device, dtype=dtype)
        else:
            model = build_model(config, backend=resolved, device=device, dtype=dtype, strict_backend=strict)
        model.tokenizer = load_tokenizer(config.tokenizer)
        model.revision = None
        return model, model.tokenizer

    if ckpt.is_checkpoint(path):
        config = apply_overrides(ckpt.read_config(path), window=window, local_globals=local_globals)
        tokenizer = load_tokenizer(path)
        if resolved == "hf":
            from .hf import hf_model_from_native

            model = hf_model_from_native(config, ckpt.read_weights(path), device=device, dtype=dtype)
        else:
            weights = ckpt.read_weights(path)
            model = build_model(config, weights, backend=resolved, device=device, dtype=dtype, where=str(path),
                                strict_backend=strict)
    elif path.is_dir() and (path / "config.json").is_file():
        from .importers import import_hf_dir

        if resolved == "hf":
            from .hf import load_hf_model

            if window is not None:
                raise ConfigError("window overrides need a native backend (torch/triton), not 'hf'.")
            model = load_hf_model(path, device=device, dtype=dtype)
            model.tokenizer = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
            model.revision = where.revision
            return model, model.tokenizer
        from .export import is_exported, read_exported

        config, weights = read_exported(path) if is_exported(path) else import_hf_dir(path, name=where.name)
        config = apply_overrides(config, window=window, local_globals=local_globals)
        tokenizer = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
        model = build_model(config, weights, backend=resolved, device=device, dtype=dtype, where=str(path),
                            strict_backend=strict)
    else:
        raise CheckpointError(f"{str(path)!r} is neither a rattn-eval checkpoint nor a Hugging Face folder "
                              "(no config.json); convert a GGUF file first with `rattn-eval convert`.")
    model.tokenizer = tokenizer
    model.revision = where.revision
    return model, tokenizer
