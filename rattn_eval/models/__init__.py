"""Models: the native local-global decoder, checkpoints, importers, tokenizers, generation.

The package's names load on first use (PEP 562), so `import rattn_eval.models.names` or the
tokenizer does not pull in torch; transformers and gguf load only in the importers and the hf backend.
"""

import importlib

_EXPORTS = {
    "read_config": ".checkpoint", "save_checkpoint": ".checkpoint",
    "PRESETS": ".config", "ModelConfig": ".config", "preset": ".config",
    "build_model": ".loading", "load_model": ".loading",
    "KVCache": ".model", "Model": ".model",
    "Tokenizer": "rattn_eval.tokenizer", "load_tokenizer": "rattn_eval.tokenizer",
    "BUILTIN_MODELS": ".names",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def convert(src, dst, **kwargs):
    """Convert a Hugging Face folder or a GGUF file into a checkpoint directory; see importers.convert."""
    from .importers import convert as _convert

    return _convert(src, dst, **kwargs)


__all__ = [*_EXPORTS, "convert"]
