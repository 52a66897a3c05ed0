"""ModelConfig: the one frozen description of a native local-global decoder, and named presets.

Every layer is "global" (full causal attention, full KV cache), "swa" (sliding-window softmax
attention, ring-buffer cache) or "rattn" (SWA + residual linear attention, ring buffer + fp32
state); DESIGN §3-4. Norm weights are always stored plain (y = rms(x) * w): a checkpoint that
uses Gemma's `1 + w` convention is folded at import, so one norm implementation serves all.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import ConfigError, did_you_mean

LAYER_KINDS = ("global", "swa", "rattn")
FFN_KINDS = ("swiglu", "geglu")
NORM_STYLES = ("pre", "sandwich")
FEATURE_MAPS = ("softmax", "relu", "identity")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and semantics of a native decoder.

    kinds: one entry per layer, "global" | "swa" | "rattn".
    window: w for local layers: a query sees w previous tokens plus itself (HF sliding_window W -> W - 1).
    global_window: None = global layers attend to the whole prefix; an int makes them sliding-window
        layers of that window while keeping their own RoPE (load_model(local_globals=True) sets it).
    ffn: "swiglu" (silu(gate) * up, Llama) or "geglu" (tanh-GELU(gate) * up, Gemma).
    norm: "pre" (x + f(norm(x))) or "sandwich" (x + post_norm(f(pre_norm(x))), Gemma-2/3).
    rope_theta_local / rope_theta_global: RoPE base of local / global layers; rope_scale_global is
        linear position scaling of the global layers (Gemma-3 4B+ use 8); nope_global drops RoPE
        from global layers (the paper's setting).
    attn_scale: softmax scale, None = head_dim ** -0.5 (Gemma-3: query_pre_attn_scalar ** -0.5).
    embed_scale: embeddings are multiplied by it (Gemma: sqrt(width)).
    final_softcap: logits -> c * tanh(logits / c) when set.
    tokenizer: a built-in tokenizer name ("bytes", "gpt2", "smollm2-135m") or "tokenizer.json",
        meaning the file next to the weights in a checkpoint directory.
    """

    name: str = "custom"
    vocab_size: int
    width: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    kinds: tuple[str, ...]
    ffn: str = "swiglu"
    intermediate_size: int
    norm: str = "pre"
    norm_eps: float = 1e-6
    window: int | None = None
    global_window: int | None = None
    feature_map: str = "softmax"
    qk_norm: bool = False
    rope_theta_local: float = 10000.0
    rope_theta_global: float = 10000.0
    rope_scale_global: float = 1.0
    nope_global: bool = False
    attn_scale: float | None = None
    embed_scale: float = 1.0
    tie_embeddings: bool = True
    final_softcap: float | None = None
    max_context: int = 4096
    tokenizer: str = "bytes"
    init_seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "kinds", tuple(self.kinds))
        bad = [k for k in self.kinds if k not in LAYER_KINDS]
        if bad:
            raise ConfigError(f"unknown layer kind(s) {bad}; each layer is one of {', '.join(LAYER_KINDS)}.")
        if not self.kinds:
            raise ConfigError("a model needs at least one layer (kinds is empty).")
        if self.ffn not in FFN_KINDS:
            raise ConfigError(f"unknown ffn {self.ffn!r}; choose one of {', '.join(FFN_KINDS)}.")
        if self.norm not in NORM_STYLES:
            raise ConfigError(f"unknown norm style {self.norm!r}; choose one of {', '.join(NORM_STYLES)}.")
        if self.feature_map not in FEATURE_MAPS:
            raise ConfigError(f"unknown feature_map {self.feature_map!r}; choose one of {', '.join(FEATURE_MAPS)}.")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}).")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}.")
        if self.has_local and (self.window is None or self.window < 0):
            raise ConfigError(f"layers of kind swa/rattn need a window >= 0, got {self.window!r}.")
        if self.global_window is not None and self.global_window < 0:
            raise ConfigError(f"global_window must be >= 0 or None, got {self.global_window}.")

    @property
    def n_layers(self) -> int:
        return len(self.kinds)

    @property
    def has_local(self) -> bool:
        return any(k != "global" for k in self.kinds)

    def layer_window(self, i: int) -> int | None:
        """Attention window of layer i (None = full causal)."""
        return self.global_window if self.kinds[i] == "global" else self.window

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["kinds"] = list(self.kinds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}.")
        try:
            return cls(**d)
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"incomplete model config: {e}.") from None


def _debug() -> ModelConfig:
    return ModelConfig(
        name="debug", vocab_size=259, width=64, n_heads=4, n_kv_heads=2, head_dim=16,
        kinds=("rattn", "swa", "global", "rattn"), ffn="swiglu", intermediate_size=128, window=16,
        rope_theta_local=10000.0, rope_theta_global=10000.0, max_context=1 << 20, tokenizer="bytes", init_seed=0,
    )


def _paper(width, layers, heads, kv_heads, ffn_dim, name) -> ModelConfig:
    # The paper's models (RAttention §3.3, Fig. 3): every 4th layer global with NoPE, the rest
    # RAttention with RoPE theta 5e5, QK-norm, GeGLU. Tokenizer/vocab are unpublished: GPT-2's here.
    return ModelConfig(
        name=name, vocab_size=50257, width=width, n_heads=heads, n_kv_heads=kv_heads, head_dim=128,
        kinds=tuple("global" if (i + 1) % 4 == 0 else "rattn" for i in range(layers)), ffn="geglu",
        intermediate_size=ffn_dim, window=512, qk_norm=True, rope_theta_local=5e5, nope_global=True,
        tie_embeddings=False, max_context=4096, tokenizer="gpt2",
    )


def _smollm2_135m() -> ModelConfig:
    # HuggingFaceTB/SmolLM2-135M-Instruct: Llama architecture, all layers global.
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


PRESETS = {
    "debug": _debug,
    "rattn-3b": lambda: _paper(2048, 56, 16, 4, 6656, "rattn-3b"),
    "rattn-12b": lambda: _paper(5120, 40, 40, 8, 16384, "rattn-12b"),
    "smollm2-135m": _smollm2_135m,
    "gemma3-270m": _gemma3_270m,
}


def preset(name: str) -> ModelConfig:
    """The named config; an unknown name gets a "did you mean" error."""
    if name not in PRESETS:
        hint = did_you_mean(name, PRESETS)
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}.{hint}")
    return PRESETS[name]()
