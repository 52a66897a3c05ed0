"""ModelConfig: the one frozen description of a native local-global decoder (named configs: registry.py).

Every layer is "global" (full causal attention, full KV cache), "swa" (sliding-window softmax
attention, ring-buffer cache) or "rattn" (SWA + residual linear attention, ring buffer + fp32
state; docs/rattention.md). Norm weights are always stored plain (y = rms(x) * w): a checkpoint that
uses Gemma's `1 + w` convention is folded at import, so one norm implementation serves all.
"""

from __future__ import annotations

import dataclasses
import json
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
    rope_scaling_local / rope_scaling_global: None, or a scaled rope type of those layers as a JSON dict
        ({"type": "llama3" | "yarn" | "dynamic" | "longrope" | "linear", ...}; the keys are listed in
        models/rope.py). "dynamic" and "longrope" change with the sequence length, so only full-attention
        global layers take them (a windowed layer re-rotates its cached keys every step).
    qkv_bias / o_bias / mlp_bias: bias vectors on the q/k/v, o and gate/up/down projections (Qwen2: qkv only).
    attn_scale: softmax scale, None = head_dim ** -0.5 (Gemma-2/3: query_pre_attn_scalar ** -0.5).
    attn_softcap: scaled scores -> c * tanh(s / c) before the softmax when set (Gemma-2); the Triton
        kernels lack it, so such layers run the PyTorch path (Model.fallbacks records it).
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
    rope_scaling_local: dict | None = None
    rope_scaling_global: dict | None = None
    nope_global: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    attn_scale: float | None = None
    attn_softcap: float | None = None
    embed_scale: float = 1.0
    tie_embeddings: bool = True
    final_softcap: float | None = None
    max_context: int = 4096
    tokenizer: str = "bytes"
    init_seed: int = 0

    def __post_init__(self):
        _check_types(self)
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
        self._check_rope_scaling()
        if self.attn_softcap is not None and "rattn" in self.kinds:
            raise ConfigError("attn_softcap applies to softmax attention; rattn layers do not take it.")

    def _check_rope_scaling(self) -> None:
        from . import rope  # imports torch: kept out of module import, so reading a config stays light

        for key in ("rope_scaling_local", "rope_scaling_global"):
            rope.check_scaling(getattr(self, key), self.head_dim, key)
            if getattr(self, key) is not None:  # a private copy with lists: equal to its JSON round trip
                object.__setattr__(self, key, json.loads(json.dumps(getattr(self, key))))
        if self.rope_scaling_global is not None and self.rope_scale_global != 1.0:
            raise ConfigError("rope_scale_global and rope_scaling_global both scale the global layers' RoPE; "
                              "set one (rope_scaling_global {\"type\": \"linear\", ...} says the same).")
        if self.has_local and rope.length_dependent(self.rope_scaling_local):
            raise ConfigError(f"rope_scaling_local of type {self.rope_scaling_local['type']!r} changes with the "
                              "sequence length, which local layers (re-rotating their cached keys) cannot follow.")
        if self.global_window is not None and rope.length_dependent(self.rope_scaling_global):
            raise ConfigError(f"global_window needs static RoPE: rope_scaling_global of type "
                              f"{self.rope_scaling_global['type']!r} changes with the sequence length.")

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
        """A config from its JSON form; unknown and missing keys are named, with a "did you mean"."""
        fields = dataclasses.fields(cls)
        names = [f.name for f in fields]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))}: not model config fields."
                              f"{did_you_mean(unknown[0], names)}")
        missing = [f.name for f in fields if f.name not in d
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"missing required key(s) {', '.join(map(repr, missing))}.")
        return cls(**d)


_POS_INT = ("vocab_size", "width", "n_heads", "n_kv_heads", "head_dim", "intermediate_size", "max_context")
_POS_NUM = ("norm_eps", "rope_theta_local", "rope_theta_global", "rope_scale_global", "embed_scale")
_BOOL = ("qk_norm", "nope_global", "tie_embeddings", "qkv_bias", "o_bias", "mlp_bias")
_STR = ("name", "ffn", "norm", "feature_map", "tokenizer")


def _check_types(cfg: ModelConfig) -> None:
    """Reject values of the wrong JSON type or range before they reach arithmetic: a config.json written
    by hand or by another tool would otherwise fail deep inside the model (a ZeroDivisionError, a
    TypeError on "32k"), far from the key that is wrong. Floats accept ints, as JSON does not tell them apart."""

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_pos_num(v):
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v) and v > 0

    def fail(key, expected):
        raise ConfigError(f"{key} must be {expected}, got {getattr(cfg, key)!r}.")

    for key in _POS_INT:
        if not (is_int(getattr(cfg, key)) and getattr(cfg, key) > 0):
            fail(key, "a positive integer")
    for key in _POS_NUM:
        if not is_pos_num(getattr(cfg, key)):
            fail(key, "a positive number")
    for key in ("attn_scale", "final_softcap", "attn_softcap"):
        if getattr(cfg, key) is not None and not is_pos_num(getattr(cfg, key)):
            fail(key, "a positive number or null")
    for key in ("window", "global_window"):
        if getattr(cfg, key) is not None and not (is_int(getattr(cfg, key)) and getattr(cfg, key) >= 0):
            fail(key, "an integer >= 0 or null")
    for key in _BOOL:
        if not isinstance(getattr(cfg, key), bool):
            fail(key, "true or false")
    for key in _STR:
        if not isinstance(getattr(cfg, key), str):
            fail(key, "a string")
    if not is_int(cfg.init_seed):
        fail("init_seed", "an integer")
    if not isinstance(cfg.kinds, (list, tuple)) or not all(isinstance(k, str) for k in cfg.kinds):
        fail("kinds", f"a list of layer kinds ({', '.join(LAYER_KINDS)})")


def preset(name: str) -> ModelConfig:
    """The config of a named model (models/registry.py holds the names); an unknown name gets a "did you mean"."""
    from .registry import entry  # the registry imports this module

    return entry(name).config()
