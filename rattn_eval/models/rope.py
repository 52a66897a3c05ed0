"""RoPE frequencies of every scaled rope type the importers accept, computed as transformers computes them.

A layer's RoPE is its base `theta` plus an optional scaling dict (ModelConfig.rope_scaling_global /
rope_scaling_local, plain JSON), one of

    {"type": "linear",   "factor": f}
    {"type": "llama3",   "factor": f, "low_freq_factor": l, "high_freq_factor": h, "original_max_position_embeddings": n}
    {"type": "yarn",     "factor": f, "original_max_position_embeddings": n, optional "attention_factor",
                         "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"}
    {"type": "dynamic",  "factor": f, "original_max_position_embeddings": n}   (transformers' max_position_embeddings)
    {"type": "longrope", "factor": f, "short_factor": [D/2], "long_factor": [D/2], "original_max_position_embeddings": n,
                         optional "attention_factor", "rebuild_cache" (bool, default true)}

`inv_freq` returns the (D/2,) inverse frequencies with the same float operations, in the same order, as
transformers' modeling_rope_utils (5.x), so the tables agree to the last bit. `attention_factor` is the
factor transformers multiplies cos and sin by (YaRN's mscale, LongRoPE's sqrt(1 + log s / log n)); since
it multiplies both q and k, the model folds it into the softmax scale as factor ** 2 instead, which leaves
the kernels (and their in-kernel RoPE) untouched.

"dynamic" and "longrope" depend on the length of the sequence so far: transformers recomputes them on each
forward call from max(position_ids) + 1. `LengthRope` does the same per row: a prefill of a row of length L
rotates with the frequencies of L, a decode step at position p with those of p + 1.
- dynamic (implemented, exact for one prompt per call): cached keys keep the rotation they were stored
  with, as in transformers' cache. Not copied: transformers' batched generate uses the longest row of the
  batch for every row, and its rotary module keeps the largest length seen across calls (a later, shorter
  call past the original length reuses it); here each row and each call stand alone.
- longrope (implemented, exact): the short factors up to original_max_position_embeddings, the long ones past
  it. When a generation first passes that length, transformers' Phi-3 drops its cache and recomputes it with
  the long factors; greedy_generate does the same (Model.cache_rebuild_at), so decoding equals a fresh
  forward pass over the sequence so far. transformers' other families (Llama, Qwen2, Gemma-3) keep the keys
  they cached with the short factors; a config imported from them says so ("rebuild_cache": false, default
  true), and greedy_generate then keeps its cache too.
Both are for full-attention layers only: a sliding-window layer re-rotates its cached keys on every step
(ModelConfig refuses them there).
"""

from __future__ import annotations

import math
import numbers

import torch

from ..errors import ConfigError

STATIC_TYPES = ("linear", "llama3", "yarn")
LENGTH_TYPES = ("dynamic", "longrope")
ROPE_TYPES = STATIC_TYPES + LENGTH_TYPES

# type -> (required keys, optional keys), besides "type"
_KEYS = {
    "linear": (("factor",), ()),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), ()),
    "yarn": (("factor", "original_max_position_embeddings"),
             ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")),
    "dynamic": (("factor", "original_max_position_embeddings"), ()),
    "longrope": (("factor", "short_factor", "long_factor", "original_max_position_embeddings"),
                 ("attention_factor", "rebuild_cache")),
}


def check_scaling(scaling, head_dim: int, key: str) -> None:
    """Raise ConfigError naming `key` unless `scaling` is None or a valid scaling dict for this head dim."""
    if scaling is None:
        return
    if not isinstance(scaling, dict) or scaling.get("type") not in ROPE_TYPES:
        got = scaling.get("type") if isinstance(scaling, dict) else scaling
        raise ConfigError(f"{key} must be null or a dict whose \"type\" is one of {', '.join(ROPE_TYPES)}, got {got!r}.")
    kind = scaling["type"]
    required, optional = _KEYS[kind]
    missing = [k for k in required if k not in scaling]
    unknown = sorted(set(scaling) - {"type", *required, *optional})
    if missing or unknown:
        raise ConfigError(f"{key} of type {kind!r}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])) + ".")

    def number(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    for k, v in scaling.items():
        if k == "type":
            continue
        if k in ("short_factor", "long_factor"):
            if not (isinstance(v, (list, tuple)) and len(v) == head_dim // 2 and all(number(x) and x > 0 for x in v)):
                raise ConfigError(f"{key}.{k} must be a list of {head_dim // 2} positive numbers (head_dim / 2).")
        elif k in ("truncate", "rebuild_cache"):
            if not isinstance(v, bool):
                raise ConfigError(f"{key}.{k} must be true or false, got {v!r}.")
        elif k == "original_max_position_embeddings":
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise ConfigError(f"{key}.{k} must be a positive integer, got {v!r}.")
        elif v is not None and not (number(v) and v > 0):
            raise ConfigError(f"{key}.{k} must be a positive number, got {v!r}.")
    if kind in ("llama3", "yarn", "dynamic") and scaling["factor"] is None:
        raise ConfigError(f"{key}.factor must be a positive number, got None.")
    if kind == "llama3" and scaling["high_freq_factor"] == scaling["low_freq_factor"]:
        raise ConfigError(f"{key}: llama3 needs high_freq_factor != low_freq_factor.")


def length_dependent(scaling: dict | None) -> bool:
    """Whether the frequencies change with the sequence length (dynamic NTK, LongRoPE)."""
    return scaling is not None and scaling["type"] in LENGTH_TYPES


def attention_factor(scaling: dict | None) -> float:
    """The factor transformers multiplies cos and sin by: 1 except for YaRN and LongRoPE."""
    if scaling is None or scaling["type"] not in ("yarn", "longrope"):
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor, n = scaling["factor"], scaling["original_max_position_embeddings"]
    if scaling["type"] == "longrope":
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(n))

    def get_mscale(scale, mscale=1):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
    return get_mscale(factor)


def _exponents(dim: int) -> torch.Tensor:
    return torch.arange(0, dim, 2, dtype=torch.int64).float() / dim  # (D/2,)


def _llama3(dim: int, base: float, s: dict) -> torch.Tensor:
    inv_freq = 1.0 / (base ** _exponents(dim))
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_context_len = s["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths are divided by the factor, short ones kept, the band between interpolated
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def _yarn(dim: int, base: float, s: dict) -> torch.Tensor:
    factor, n = s["factor"], s["original_max_position_embeddings"]
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(n / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: no zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1: the original frequency (high-frequency dims), 0: interpolated
    return interpolation * (1 - keep) + extrapolation * keep


def inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """(D/2,) fp32 inverse frequencies of a static rope type (None = plain RoPE)."""
    base = float(theta)
    if scaling is None:
        return 1.0 / (base ** _exponents(head_dim))
    kind = scaling["type"]
    if kind == "linear":
        return 1.0 / (base ** _exponents(head_dim)) / scaling["factor"]
    if kind == "llama3":
        return _llama3(head_dim, base, scaling)
    if kind == "yarn":
        return _yarn(head_dim, base, scaling)
    raise ValueError(f"rope type {kind!r} depends on the sequence length; use LengthRope")


class LengthRope:
    """RoPE of a length-dependent type (dynamic NTK, LongRoPE) for global layers; rotate-half convention.

    tables(T, device, lengths) rotates a prefill (every row with the frequencies of its own length);
    cos_sin(positions) rotates one decode token per row (the frequencies of position + 1 tokens). Both run
    on the positions' device with tensors copied there once, so a decode step stays capturable in a CUDA graph.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict):
        if scaling["type"] not in LENGTH_TYPES:
            raise ValueError(f"LengthRope takes {', '.join(LENGTH_TYPES)}, not {scaling['type']!r}")
        self.head_dim, self.theta, self.scaling = head_dim, float(theta), scaling
        dim, base, n = head_dim, self.theta, scaling["original_max_position_embeddings"]
        if scaling["type"] == "dynamic":
            # up to the original length transformers keeps the frequencies of its init (Python floats)
            factor = scaling["factor"]
            init_base = base * ((factor * n / n) - (factor - 1)) ** (dim / (dim - 2))
            self._cpu = dict(short=1.0 / (init_base ** _exponents(dim)), exponents=_exponents(dim))
        else:
            shape = _exponents(dim)
            self._cpu = {k: 1.0 / (torch.tensor(scaling[f"{k}_factor"], dtype=torch.float32) * base**shape)
                         for k in ("short", "long")}
        self._copies: dict = {}

    def _on(self, device) -> dict:
        device = torch.device(device)
        if device not in self._copies:
            self._copies[device] = {k: v.to(device) for k, v in self._cpu.items()}
        return self._copies[device]

    def inv_freq_for(self, seq_len: torch.Tensor) -> torch.Tensor:
        """seq_len (B,) int64 -> (B, D/2) fp32: the short set (dynamic: the init one) up to the original
        length, past it the long set (dynamic: recomputed from the length in float32, as transformers does
        from its tensor max(position_ids) + 1)."""
        t, s = self._on(seq_len.device), self.scaling
        n = s["original_max_position_embeddings"]
        longer = seq_len[:, None] > n  # (B, 1)
        if s["type"] == "longrope":
            return torch.where(longer, t["long"], t["short"])
        dim, factor = self.head_dim, s["factor"]
        grown_base = self.theta * ((factor * seq_len[:, None].long() / n) - (factor - 1)) ** (dim / (dim - 2))  # (B, 1)
        return torch.where(longer, 1.0 / (grown_base ** t["exponents"]), t["short"])

    def tables(self, T: int, device=None, lengths: torch.Tensor | None = None):
        """cos, sin for positions 0..T-1: (T, D) when lengths is None (the whole T is one sequence),
        else (B, T, D), each row with the frequencies of its own length."""
        seq_len = torch.full((1,), T, device=device) if lengths is None else lengths.to(device)
        freqs = torch.arange(T, device=device).float()[None, :, None] * self.inv_freq_for(seq_len)[:, None]  # (B, T, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        return (cos[0], sin[0]) if lengths is None else (cos, sin)

    def cos_sin(self, positions: torch.Tensor):
        """positions (B,) of one decode token per row -> cos, sin (B, D)."""
        freqs = positions.float()[:, None] * self.inv_freq_for(positions + 1)  # (B, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    def __repr__(self) -> str:
        return f"LengthRope(head_dim={self.head_dim}, theta={self.theta}, type={self.scaling['type']!r})"
