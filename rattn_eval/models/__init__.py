"""Models: the native local-global decoder, checkpoints, importers, tokenizers, generation.

Heavy dependencies (transformers, gguf) are imported only by the importers and the hf backend.
"""

from .checkpoint import read_config, save_checkpoint
from .config import PRESETS, ModelConfig, preset
from .loading import build_model, load_model
from .model import KVCache, Model
from .tokenizer import Tokenizer, load_tokenizer


def convert(src, dst, **kwargs):
    """Convert a Hugging Face folder or a GGUF file into a checkpoint directory; see convert.convert."""
    from .convert import convert as _convert

    return _convert(src, dst, **kwargs)


__all__ = [
    "KVCache", "Model", "ModelConfig", "PRESETS", "Tokenizer", "build_model", "convert", "load_model",
    "load_tokenizer", "preset", "read_config", "save_checkpoint",
]
