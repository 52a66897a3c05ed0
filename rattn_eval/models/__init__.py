"""Models: the native local-global decoder, checkpoints, importers, generation (tokenizers: rattn_eval.tokenizer).

The package's names load on first use (PEP 562), so `import rattn_eval.models.registry` does not
pull in torch; transformers and gguf load only in the importers and the hf backend.
"""

import importlib

_EXPORTS = {
    "read_config": ".checkpoint", "save_checkpoint": ".checkpoint",
    "ModelConfig": ".config", "preset": ".config",
    "build_model": ".loading", "load_model": ".loading",
    "KVCache": ".model", "Model": ".model",
    "BUILTIN_MODELS": ".names", "MODELS": ".registry", "ModelEntry": ".registry",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def convert(src, dst, **kwargs):
    """Convert a Hugging Face folder, a hub id ORG/NAME[@REVISION] (its cached snapshot, see hub.py) or a
    GGUF file into a checkpoint directory; see importers.convert."""
    from .hub import snapshot_for
    from .importers import convert as _convert

    snap = snapshot_for(src)
    if snap is not None:
        src = snap.path
        if kwargs.get("name") is None:  # the snapshot folder's own name is the commit hash
            kwargs["name"] = snap.repo_id
    return _convert(src, dst, **kwargs)


__all__ = [*_EXPORTS, "convert"]
