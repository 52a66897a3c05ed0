"""Trained checkpoints shipped inside the package (package data, so a plain `pip install` carries them).

    tiny-full   8 global layers (RoPE)
    tiny-swa    [swa x3, global] x 2, window 64, NoPE global layers
    tiny-rattn  [rattn x3, global] x 2, window 64, NoPE global layers; + a recall fine-tune (stage 3);
                the default model of `rattn-eval run`

Each folder is a checkpoint directory (config.json, model.safetensors in float16, tokenizer.json).
How they were trained: scripts/train_tiny.sh and results/train/README.md.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ..models.registry import ShippedCheckpoint, names

SHIPPED = names(ShippedCheckpoint)


def checkpoint_dir(name: str) -> Path:
    """Folder of a shipped checkpoint (inside the installed package)."""
    if name not in SHIPPED:
        raise KeyError(name)
    return Path(str(files(__name__) / name))
