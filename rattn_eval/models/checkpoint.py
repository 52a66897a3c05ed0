"""Checkpoint directory: config.json (format_version + ModelConfig fields), model.safetensors, tokenizer.

The tokenizer is either a built-in named by config.json's "tokenizer" field ("bytes", "gpt2") or
the HF tokenizer files (tokenizer.json, ...) next to the weights ("tokenizer": "tokenizer.json").
Loading memory-maps the safetensors file and is strict: every missing, unexpected or mis-shaped
key is named in one CheckpointError.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from .config import ModelConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json")
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, *TOKENIZER_FILES)  # all that save_checkpoint writes


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a directory whose config.json carries our format_version."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        raw = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "format_version" in raw


def save_checkpoint(path: str | os.PathLike, config: ModelConfig, state_dict: dict[str, torch.Tensor],
                    *, tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Write a checkpoint directory. tokenizer_dir: a folder whose HF tokenizer files are copied in
    (required when config.tokenizer == "tokenizer.json"). Tied weights are saved once."""
    from safetensors.torch import save_file

    path = Path(path)
    if config.tokenizer == "tokenizer.json":
        if tokenizer_dir is None or not (Path(tokenizer_dir) / "tokenizer.json").is_file():
            raise CheckpointError(f"config names tokenizer.json but no folder holding one was given (got {tokenizer_dir}).")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer_dir is not None and Path(tokenizer_dir).resolve() != path.resolve():
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copyfile(src, path / name)
    # config last: its presence marks a complete checkpoint
    (path / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **config.to_dict()}, indent=2) + "\n")
    return path


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a checkpoint directory; a bad config.json is one CheckpointError naming the file and key."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist.")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{str(path)!r} has no {CONFIG_FILE}; it is not a rattn-eval checkpoint.")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{cfg_path} cannot be read ({e.strerror}).") from None
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path} holds a JSON {type(raw).__name__}, expected an object of config fields.")
    version = raw.pop("format_version", None)
    if version is None:
        raise CheckpointError(f"{cfg_path} has no format_version: not a rattn-eval checkpoint "
                              "(for a Hugging Face folder, use `rattn-eval convert` or backend='hf').")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path} has format_version {version}; this rattn-eval reads version {FORMAT_VERSION}.")
    try:
        return ModelConfig.from_dict(raw)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None


def read_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Memory-mapped tensors of model.safetensors (no full copy in RAM on CPU)."""
    from safetensors.torch import load_file

    wpath = Path(path) / WEIGHTS_FILE
    if not wpath.is_file():
        raise CheckpointError(f"{str(Path(path))!r} has no {WEIGHTS_FILE}.")
    try:
        return load_file(str(wpath), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise CheckpointError(f"{wpath} is truncated or corrupt and cannot be read ({type(e).__name__}: {e}).") from None


def check_state_dict(expected: dict[str, torch.Size], found: dict[str, torch.Tensor], where: str) -> None:
    """Raise one CheckpointError naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        f"{k} {tuple(found[k].shape)} (config wants {tuple(expected[k])})"
        for k in set(expected) & set(found) if tuple(found[k].shape) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped keys: {', '.join(shapes)}")
    if problems:
        raise CheckpointError(f"weights in {where} do not match the config: " + "; ".join(problems) + ".")
