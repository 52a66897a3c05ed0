"""Importers: Hugging Face folders and GGUF files (Llama 1-3.x, Mistral, Qwen2/2.5, Qwen3, Gemma-2, Gemma-3
text, Phi-3/3.5) -> native checkpoints, and the inverse map (native -> transformers config + state dict)
used by the `hf` backend. Scaled RoPE (linear, llama3, yarn, dynamic, longrope) becomes the config's
rope_scaling dicts (models/rope.py); a variant the native model cannot run exactly raises ConfigError.

GGUF files are read through transformers' GGUF loader with dequantization, which undoes
llama.cpp's q/k row permutation (Llama) and its `1 + w` storage of Gemma norms, so what
comes out is the Hugging Face layout. Gemma's `1 + w` norms are then folded into plain weights
(one norm implementation, y = rms(x) * w), and HF `sliding_window = W` becomes `window = W - 1`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from . import checkpoint as ckpt
from . import rope
from .config import ModelConfig
from .destination import Destination
from .registry import HF_MODEL_TYPES as SUPPORTED_TYPES  # listed torch-free there, for `ls models`


def _rope_params(hf: dict, layer_type: str | None = None) -> dict:
    """The rope parameter dict of transformers 5 (`rope_parameters`, per layer type for Gemma-3),
    falling back to the 4.x keys `rope_theta` / `rope_scaling`."""
    params = hf.get("rope_parameters")
    if params and layer_type is not None and layer_type in params:
        params = params[layer_type]
    if not params:
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    return params


# transformers rope_type -> the keys copied into the native scaling dict (models/rope.py)
_ROPE_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "truncate"),
    "dynamic": ("factor",),
    "longrope": ("factor", "short_factor", "long_factor", "original_max_position_embeddings", "attention_factor"),
}


def _rope(hf: dict, params: dict, where: str) -> tuple[float, dict | None]:
    """(theta, native scaling dict or None) of one transformers rope parameter dict; an unsupported type or
    a partial rotary factor raises ConfigError naming the key."""
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: rope_parameters must be an object, got {params!r}.")
    kind = params.get("rope_type", params.get("type", "default"))
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise ConfigError(f"{where}: partial_rotary_factor {partial} is not supported (RoPE on the whole head only).")
    theta = params["rope_theta"]
    if not _positive_number(theta):
        raise ConfigError(f"{where}: rope_theta must be a positive number, got {theta!r}.")
    if kind == "default":
        return float(theta), None
    if kind not in _ROPE_KEYS:
        raise ConfigError(f"{where}: rope_type {kind!r} is not supported ({', '.join(['default', *_ROPE_KEYS])}).")
    s = {"type": kind, **{k: params[k] for k in _ROPE_KEYS[kind] if params.get(k) is not None}}
    original = s.get("original_max_position_embeddings")
    if kind in ("yarn", "longrope") and s.get("factor") is None and _positive_int(original):
        s["factor"] = hf["max_position_embeddings"] / original  # transformers: the ratio of the two lengths
    if kind == "dynamic":  # its "original" length is transformers' max_position_embeddings
        s["original_max_position_embeddings"] = int(hf["max_position_embeddings"])
    if kind == "longrope" and hf.get("model_type") != "phi3":
        s["rebuild_cache"] = False  # only transformers' Phi-3 generate recomputes its cache past the original length
    try:
        rope.check_scaling(s, hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"], "rope_parameters")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return float(theta), s


def _max_context(hf: dict, scaling: dict | None) -> int:
    """The context the model is made for. Dynamic NTK stretches max_position_embeddings by its factor;
    YaRN reaches factor x original_max_position_embeddings, which configs often leave out of
    max_position_embeddings (Qwen2.5's model cards add only the rope_scaling block: 4 x 32768 = 131072);
    the other types name the extended length there (Llama 3.1: 131072, with an original 8192)."""
    n = int(hf["max_position_embeddings"])
    if scaling is not None and scaling["type"] == "dynamic":
        return int(n * scaling["factor"])
    if scaling is not None and scaling["type"] == "yarn" and scaling.get("factor"):
        return max(n, int(scaling["factor"] * scaling["original_max_position_embeddings"]))
    return n


def _check_act(hf: dict, key: str, allowed: str, mtype: str) -> None:
    if hf.get(key, allowed) != allowed:
        raise ConfigError(f"{mtype} with {key} {hf.get(key)!r} is not supported (only {allowed}).")


def _sliding_kinds(hf: dict, mtype: str) -> tuple[tuple[str, ...], int | None]:
    """Layer kinds and window from transformers' layer_types / sliding_window (Qwen2/3, Gemma-2): a
    "sliding_attention" layer sees sliding_window tokens including itself, so window = W - 1."""
    W = hf.get("sliding_window")
    types = hf.get("layer_types") or ["full_attention"] * hf["num_hidden_layers"]
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise ConfigError(f"{mtype}: layer_types {unknown[0]!r} is not supported (full_attention, sliding_attention).")
    if "sliding_attention" in types and W is None:
        raise ConfigError(f"{mtype}: layer_types has sliding_attention layers but sliding_window is null "
                          "(use_sliding_window false), which transformers cannot run either.")
    kinds = tuple("swa" if t == "sliding_attention" else "global" for t in types)
    return kinds, (int(W) - 1 if "swa" in kinds else None)


def _check_local_rope(kinds, scaling: dict | None, mtype: str) -> None:
    if "swa" in kinds and scaling is not None and scaling["type"] in ("dynamic", "longrope"):
        raise ConfigError(f"{mtype}: rope_type {scaling['type']!r} with sliding_window layers is not supported "
                          "(its frequencies change with the length, which a sliding-window cache cannot follow).")


def _llama(hf: dict, mtype: str) -> dict:
    """Llama 1-3.x and Mistral: pre-norm SwiGLU, all layers global (Mistral: all sliding-window)."""
    _check_act(hf, "hidden_act", "silu", mtype)
    if mtype == "mistral" and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise ConfigError("mistral with attention_bias / mlp_bias is not supported (transformers' Mistral has none).")
    theta, scaling = _rope(hf, _rope_params(hf), mtype)
    W = hf.get("sliding_window") if mtype == "mistral" else None
    n = hf["num_hidden_layers"]
    kinds = ("global",) * n if W is None else ("swa",) * n
    _check_local_rope(kinds, scaling, mtype)
    bias = bool(hf.get("attention_bias"))
    linear = scaling is not None and scaling["type"] == "linear" and W is None  # the legacy field, as before
    return dict(kinds=kinds, window=None if W is None else W - 1, ffn="swiglu", norm="pre",
                rope_theta_local=theta, rope_theta_global=theta,
                rope_scale_global=float(scaling["factor"]) if linear else 1.0,
                rope_scaling_global=None if linear else scaling, rope_scaling_local=None if linear else scaling,
                qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias")), max_context=_max_context(hf, scaling))


def _qwen(hf: dict, mtype: str) -> dict:
    """Qwen2/2.5 (q/k/v biases, o without) and Qwen3 (per-head q/k RMSNorm before RoPE, attention_bias on
    all four projections). Sliding layers as transformers decides them: sliding_window only when
    use_sliding_window, and then the layers at index >= max_window_layers, unless layer_types names them."""
    _check_act(hf, "hidden_act", "silu", mtype)
    theta, scaling = _rope(hf, _rope_params(hf), mtype)
    kinds, window = _sliding_kinds(hf, mtype)
    _check_local_rope(kinds, scaling, mtype)
    qwen3 = mtype == "qwen3"
    bias = bool(hf.get("attention_bias")) if qwen3 else True
    return dict(kinds=kinds, window=window, ffn="swiglu", norm="pre", qk_norm=qwen3,
                rope_theta_local=theta, rope_theta_global=theta, rope_scaling_global=scaling,
                rope_scaling_local=scaling, qkv_bias=bias, o_bias=bias if qwen3 else False,
                max_context=_max_context(hf, scaling))


def _gemma2(hf: dict, mtype: str) -> dict:
    """Gemma-2: sandwich norms with (1 + w) weights (folded at import), GeGLU, sqrt(width) embedding scale,
    query_pre_attn_scalar, attention-logit and final-logit softcapping, sliding / global layers per
    layer_types (transformers' default alternates, sliding first)."""
    _check_act(hf, "hidden_activation", "gelu_pytorch_tanh", mtype)
    if hf.get("use_bidirectional_attention"):
        raise ConfigError("gemma2 with use_bidirectional_attention is not a causal LM and is not supported.")
    theta, scaling = _rope(hf, _rope_params(hf), mtype)
    kinds, window = _sliding_kinds(hf, mtype)
    _check_local_rope(kinds, scaling, mtype)
    bias = bool(hf.get("attention_bias"))
    return dict(kinds=kinds, window=window, ffn="geglu", norm="sandwich", rope_theta_local=theta,
                rope_theta_global=theta, rope_scaling_global=scaling, rope_scaling_local=scaling,
                qkv_bias=bias, o_bias=bias, attn_scale=float(hf["query_pre_attn_scalar"]) ** -0.5,
                attn_softcap=hf.get("attn_logit_softcapping"), final_softcap=hf.get("final_logit_softcapping"),
                embed_scale=math.sqrt(hf["hidden_size"]), max_context=_max_context(hf, scaling))


def _gemma3(hf: dict, mtype: str) -> dict:
    if hf.get("attn_logit_softcapping") is not None:
        raise ConfigError("gemma3_text with attn_logit_softcapping is not supported (Gemma-3 models have none).")
    if hf.get("use_bidirectional_attention"):
        raise ConfigError("bidirectional Gemma-3 variants are not causal LMs and are not supported.")
    _check_act(hf, "hidden_activation", "gelu_pytorch_tanh", "Gemma-3")
    if hf.get("attention_bias"):
        raise ConfigError("gemma3_text with attention_bias is not supported.")
    types = hf["layer_types"]
    local_theta, local = _rope(hf, _rope_params(hf, "sliding_attention"), "gemma3 sliding layers")
    theta, glob = _rope(hf, _rope_params(hf, "full_attention"), "gemma3 global layers")
    if local is not None:
        raise ConfigError("Gemma-3 with scaled RoPE on sliding layers (rope_parameters.sliding_attention) is not supported.")
    linear = glob is not None and glob["type"] == "linear"
    return dict(kinds=tuple("global" if t == "full_attention" else "swa" for t in types),
                window=int(hf["sliding_window"]) - 1, ffn="geglu", norm="sandwich", qk_norm=True,
                rope_theta_local=local_theta, rope_theta_global=theta,
                rope_scale_global=float(glob["factor"]) if linear else 1.0, rope_scaling_global=None if linear else glob,
                attn_scale=float(hf["query_pre_attn_scalar"]) ** -0.5, embed_scale=math.sqrt(hf["hidden_size"]),
                final_softcap=hf.get("final_logit_softcapping"), max_context=_max_context(hf, glob))


def _phi3(hf: dict, mtype: str) -> dict:
    """Phi-3 / Phi-3.5: a Llama with fused qkv_proj / gate_up_proj weights (split at import), LongRoPE,
    and one sliding_window for every layer when set. A window reaching max_position_embeddings (the 128k
    models set 262144) never cuts anything off, so those layers are plain global layers."""
    _check_act(hf, "hidden_act", "silu", mtype)
    theta, scaling = _rope(hf, _rope_params(hf), mtype)
    W, n = hf.get("sliding_window"), hf["num_hidden_layers"]
    if W is not None and W >= hf["max_position_embeddings"]:
        W = None
    kinds = ("global",) * n if W is None else ("swa",) * n
    _check_local_rope(kinds, scaling, mtype)
    return dict(kinds=kinds, window=None if W is None else W - 1, ffn="swiglu", norm="pre",
                rope_theta_local=theta, rope_theta_global=theta, rope_scaling_global=scaling,
                rope_scaling_local=scaling, max_context=_max_context(hf, scaling))


_FAMILIES = {"llama": _llama, "mistral": _llama, "qwen2": _qwen, "qwen3": _qwen, "gemma2": _gemma2,
             "gemma3_text": _gemma3, "phi3": _phi3}


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _positive_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0


# config.json keys config_from_hf reads -> (test, what the value must be), checked before transformers' own
# config class sees them and again on what it returns. null is "not set", which only the keys in _REQUIRED
# may not be; a required key absent from the file is reported by import_hf_dir.
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings", "rms_norm_eps")
_VALUE_RULES = {
    **{k: (_positive_int, "a positive integer") for k in ("vocab_size", "hidden_size", "intermediate_size",
       "num_hidden_layers", "num_attention_heads", "max_position_embeddings", "num_key_value_heads", "head_dim",
       "sliding_window")},
    **{k: (_positive_number, "a positive number") for k in ("rms_norm_eps", "query_pre_attn_scalar", "rope_theta",
       "attn_logit_softcapping", "final_logit_softcapping")},
    **{k: (lambda v: isinstance(v, bool), "true or false") for k in ("tie_word_embeddings", "attention_bias",
       "mlp_bias", "use_sliding_window", "use_bidirectional_attention")},
    **{k: (lambda v: isinstance(v, dict), "an object") for k in ("rope_parameters", "rope_scaling")},
}


def check_hf_values(hf: dict) -> None:
    """Raise ConfigError naming the first key config_from_hf reads whose value has the wrong type or range
    (a string for a number, a zero head count, layer_types of the wrong length); absent keys pass."""
    for key, (ok, what) in _VALUE_RULES.items():
        v = hf.get(key)
        if v is not None and not ok(v):
            raise ConfigError(f"{key} must be {what}, got {v!r}.")
    for key in _REQUIRED:
        if key in hf and hf[key] is None:
            raise ConfigError(f"{key} must be set, got null.")
    heads, kv = hf.get("num_attention_heads"), hf.get("num_key_value_heads")
    if heads is not None and kv is not None and heads % kv:
        raise ConfigError(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv}).")
    types, n = hf.get("layer_types"), hf.get("num_hidden_layers")
    if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)
                                  and (n is None or len(types) == n)):
        raise ConfigError(f"layer_types must be a list of {n if n is not None else 'num_hidden_layers'} layer type "
                          f"names (one per layer), got {types!r}.")


def config_from_hf(hf: dict, *, name: str = "custom", tokenizer: str = "tokenizer.json") -> ModelConfig:
    """A transformers config dict (config.json, as normalize_hf_config returns it) -> ModelConfig.
    Supports llama (incl. 3.x RoPE), mistral, qwen2, qwen3, gemma2, gemma3_text, phi3; a variant it
    cannot run exactly raises ConfigError naming the key."""
    mtype = hf.get("model_type")
    if mtype == "gemma3" and "text_config" in hf:
        raise ConfigError("multimodal Gemma-3 folders are not supported; use a text-only (gemma3_text) checkpoint.")
    if not isinstance(mtype, str) or mtype not in _FAMILIES:
        raise ConfigError(f"model_type {mtype!r} is not supported; importers exist for {', '.join(SUPPORTED_TYPES)}.")
    check_hf_values(hf)
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    common = dict(
        name=name, vocab_size=hf["vocab_size"], width=hf["hidden_size"], n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
        intermediate_size=hf["intermediate_size"], norm_eps=float(hf["rms_norm_eps"]),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), max_context=int(hf["max_position_embeddings"]),
        tokenizer=tokenizer,
    )
    return ModelConfig(**{**common, **_FAMILIES[mtype](hf, mtype)})


def is_gemma_style(cfg: ModelConfig) -> bool:
    return cfg.norm == "sandwich"


def hf_key_map(cfg: ModelConfig) -> dict[str, str]:
    """native key -> Hugging Face key (Llama or Gemma-3 text layout)."""
    gemma = is_gemma_style(cfg)
    m = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        n, h = f"layers.{i}.", f"model.layers.{i}."
        m[n + "attn_norm.weight"] = h + "input_layernorm.weight"
        for p in ("q", "k", "v", "o"):
            m[n + f"attn.{p}_proj.weight"] = h + f"self_attn.{p}_proj.weight"
        for p in ("gate", "up", "down"):
            m[n + f"ffn.{p}_proj.weight"] = h + f"mlp.{p}_proj.weight"
        if gemma:
            m[n + "post_attn_norm.weight"] = h + "post_attention_layernorm.weight"
            m[n + "ffn_norm.weight"] = h + "pre_feedforward_layernorm.weight"
            m[n + "post_ffn_norm.weight"] = h + "post_feedforward_layernorm.weight"
        else:
            m[n + "ffn_norm.weight"] = h + "post_attention_layernorm.weight"
        if cfg.qk_norm:
            m[n + "attn.q_norm.weight"] = h + "self_attn.q_norm.weight"
            m[n + "attn.k_norm.weight"] = h + "self_attn.k_norm.weight"
        biased = [f"attn.{p}_proj" for p in ("q", "k", "v") if cfg.qkv_bias] + (["attn.o_proj"] if cfg.o_bias else [])
        biased += [f"ffn.{p}_proj" for p in ("gate", "up", "down") if cfg.mlp_bias]
        for native in biased:
            m[n + native + ".bias"] = m[n + native + ".weight"][: -len("weight")] + "bias"
    return m


def _split_fused(cfg: ModelConfig, hf_sd: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Phi-3 stores q/k/v as one qkv_proj (rows q, then k, then v) and gate/up as one gate_up_proj (gate
    rows first): split them into Llama's keys. Copies, not views, so the pieces save as separate tensors."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    out = {}
    for key, t in hf_sd.items():
        if key.endswith("self_attn.qkv_proj.weight"):
            if t.shape[0] != q + 2 * kv:
                raise CheckpointError(f"{where}: {key} has {t.shape[0]} rows, expected {q} + 2 x {kv} (q, k, v).")
            stem = key[: -len("qkv_proj.weight")]
            for part, piece in zip("qkv", t.split([q, kv, kv], dim=0)):
                out[f"{stem}{part}_proj.weight"] = piece.clone()
        elif key.endswith("mlp.gate_up_proj.weight"):
            if t.shape[0] != 2 * cfg.intermediate_size:
                raise CheckpointError(f"{where}: {key} has {t.shape[0]} rows, expected 2 x {cfg.intermediate_size}.")
            stem = key[: -len("gate_up_proj.weight")]
            gate, up = t.chunk(2, dim=0)
            out[stem + "gate_proj.weight"], out[stem + "up_proj.weight"] = gate.clone(), up.clone()
        else:
            out[key] = t
    return out


def state_dict_from_hf(cfg: ModelConfig, hf_sd: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Rename HF tensors to native keys (strict), folding Gemma's `1 + w` into plain norm weights and
    splitting Phi-3's fused projections."""
    hf_sd = _split_fused(cfg, hf_sd, where)
    if cfg.tie_embeddings:
        hf_sd.pop("lm_head.weight", None)  # a tied head is the embedding; some exports still list it
    keymap = hf_key_map(cfg)
    inverse = {v: k for k, v in keymap.items()}
    missing = sorted(k for k in inverse if k not in hf_sd)
    unexpected = sorted(k for k in hf_sd if k not in inverse and not k.endswith("rotary_emb.inv_freq"))
    if missing or unexpected:
        parts = ([f"missing keys: {', '.join(missing)}"] if missing else []) + (
            [f"unexpected keys: {', '.join(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"weights in {where} do not match their config: " + "; ".join(parts) + ".")
    fold = is_gemma_style(cfg)
    out = {}
    for native, hk in keymap.items():
        t = hf_sd[hk]
        out[native] = t.float() + 1.0 if fold and "norm" in native else t
    return out


def state_dict_to_hf(cfg: ModelConfig, sd: dict[str, torch.Tensor], *, fused: bool = False) -> dict[str, torch.Tensor]:
    """Native tensors -> HF keys; the inverse of state_dict_from_hf (Gemma norms back to w - 1; with
    fused=True, Phi-3's qkv_proj and gate_up_proj)."""
    fold = is_gemma_style(cfg)
    out = {hk: (sd[n].float() - 1.0 if fold and "norm" in n else sd[n]) for n, hk in hf_key_map(cfg).items()}
    if fused:
        for i in range(cfg.n_layers):
            h = f"model.layers.{i}."
            out[h + "self_attn.qkv_proj.weight"] = torch.cat([out.pop(h + f"self_attn.{p}_proj.weight") for p in "qkv"])
            out[h + "mlp.gate_up_proj.weight"] = torch.cat([out.pop(h + f"mlp.{p}_proj.weight") for p in ("gate", "up")])
    return out


def _hf_rope(theta: float, scaling: dict | None, linear: float = 1.0) -> dict:
    """A native RoPE (theta, scaling dict, legacy linear factor) as transformers' rope_parameters."""
    if scaling is None:
        return ({"rope_type": "default", "rope_theta": theta} if linear == 1.0
                else {"rope_type": "linear", "rope_theta": theta, "factor": linear})
    params = {k: v for k, v in scaling.items() if k not in ("type", "rebuild_cache")}  # the latter: native only
    if scaling["type"] == "dynamic":  # transformers reads it from max_position_embeddings
        params.pop("original_max_position_embeddings")
    return {"rope_type": scaling["type"], "rope_theta": theta, **params}


def hf_config_from_native(cfg: ModelConfig):
    """A transformers config equivalent to `cfg` (Llama, Mistral, Phi-3, Qwen2, Qwen3, Gemma-2 or Gemma-3 text), or ConfigError
    when transformers has no model with these layers (e.g. rattn layers, NoPE, QK-norm in a Llama)."""
    if any(k == "rattn" for k in cfg.kinds) or cfg.nope_global or cfg.global_window is not None:
        raise ConfigError(f"{cfg.name!r} has layers transformers cannot run (rattn, NoPE or windowed global layers); "
                          "the hf backend needs a Llama-, Qwen- or Gemma-shaped model.")
    glob = _hf_rope(cfg.rope_theta_global, cfg.rope_scaling_global, cfg.rope_scale_global)
    local = _hf_rope(cfg.rope_theta_local, cfg.rope_scaling_local)
    dynamic = cfg.rope_scaling_global is not None and cfg.rope_scaling_global["type"] == "dynamic"
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.rope_scaling_global["original_max_position_embeddings"] if dynamic else cfg.max_context,
    )
    layer_types = ["full_attention" if k == "global" else "sliding_attention" for k in cfg.kinds]
    sliding = dict(sliding_window=cfg.window + 1 if cfg.has_local else None, layer_types=layer_types)
    one_rope = not cfg.has_local or local == glob  # the families below have one RoPE for every layer
    scaling = cfg.rope_scaling_global
    rebuilds = scaling is not None and scaling["type"] == "longrope" and scaling.get("rebuild_cache", True)
    if rebuilds and (is_gemma_style(cfg) or cfg.qk_norm or (cfg.qkv_bias and not cfg.o_bias)):
        raise ConfigError(f"{cfg.name!r} has LongRoPE that recomputes its cache past the original length, which of "
                          "transformers' models only Phi-3 does, and it is not Phi-3-shaped.")
    if is_gemma_style(cfg):
        if cfg.ffn != "geglu" or not math.isclose(cfg.embed_scale, math.sqrt(cfg.width)) or cfg.mlp_bias:
            raise ConfigError(f"{cfg.name!r} has sandwich norms but is not Gemma-shaped (GeGLU, sqrt(width) "
                              "embedding scale, no MLP biases).")
        scale = cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim ** -0.5
        scalar = scale ** -2
        if not math.isclose(scalar, round(scalar), rel_tol=1e-6):  # transformers types it as an int
            raise ConfigError(f"{cfg.name!r}: attention scale {scale} is not 1/sqrt(integer), as Gemma needs.")
        gemma = dict(common, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=round(scalar),
                     final_logit_softcapping=cfg.final_softcap, attn_logit_softcapping=cfg.attn_softcap, **sliding)
        if cfg.qk_norm:
            from transformers import Gemma3TextConfig

            if cfg.qkv_bias or cfg.o_bias or cfg.attn_softcap is not None or cfg.rope_scaling_local is not None:
                raise ConfigError(f"{cfg.name!r} is not Gemma-3-shaped (no biases, softcapping or scaled local RoPE).")
            gemma["sliding_window"] = (cfg.window if cfg.window is not None else 0) + 1
            return Gemma3TextConfig(**gemma, rope_parameters={"sliding_attention": local, "full_attention": glob})
        from transformers import Gemma2Config

        if cfg.qkv_bias != cfg.o_bias or not one_rope:
            raise ConfigError(f"{cfg.name!r} is not Gemma-2-shaped (biases on all of q/k/v/o or none, one RoPE).")
        return Gemma2Config(**gemma, attention_bias=cfg.qkv_bias, rope_parameters=glob)
    if cfg.ffn != "swiglu" or cfg.embed_scale != 1.0 or cfg.final_softcap is not None or cfg.attn_softcap is not None \
            or cfg.attn_scale not in (None, cfg.head_dim ** -0.5) or not one_rope:
        raise ConfigError(f"{cfg.name!r} is not Llama- or Qwen-shaped (SwiGLU, no scales or softcaps, one RoPE).")
    if cfg.qk_norm or (cfg.qkv_bias and not cfg.o_bias):
        from transformers import Qwen2Config, Qwen3Config

        if cfg.mlp_bias or (cfg.qk_norm and cfg.qkv_bias != cfg.o_bias):
            raise ConfigError(f"{cfg.name!r} is not Qwen-shaped (no MLP biases; Qwen3: biases on all of q/k/v/o or none).")
        qwen = dict(common, hidden_act="silu", rope_parameters=glob, use_sliding_window=cfg.has_local,
                    max_window_layers=cfg.n_layers, **sliding)
        return Qwen3Config(**qwen, attention_bias=cfg.qkv_bias) if cfg.qk_norm else Qwen2Config(**qwen)
    if cfg.qkv_bias != cfg.o_bias or (cfg.has_local and (cfg.qkv_bias or cfg.mlp_bias or "global" in cfg.kinds)):
        raise ConfigError(f"{cfg.name!r} is not Llama- or Mistral-shaped (all global or all sliding-window layers, "
                          "biases on all of q/k/v/o or none, none with a window).")
    if cfg.has_local:
        from transformers import MistralConfig

        return MistralConfig(**common, hidden_act="silu", rope_parameters=glob, sliding_window=cfg.window + 1)
    if rebuilds:
        # Phi-3, whose generate rebuilds its cache past the original length (a Llama keeps it: below)
        from transformers import Phi3Config

        if cfg.qkv_bias or cfg.mlp_bias:
            raise ConfigError(f"{cfg.name!r} has LongRoPE and biases, which transformers' Phi-3 does not have.")
        return Phi3Config(**common, hidden_act="silu", rope_parameters=glob, sliding_window=None,
                          original_max_position_embeddings=glob["original_max_position_embeddings"],
                          pad_token_id=None, bos_token_id=None, eos_token_id=None)  # its defaults index a 32k vocab
    from transformers import LlamaConfig

    return LlamaConfig(**common, hidden_act="silu", rope_parameters=glob, attention_bias=cfg.qkv_bias,
                       mlp_bias=cfg.mlp_bias)


def hf_weight_files(path: Path) -> list[Path]:
    """The safetensors files of an HF folder: model.safetensors, or the shards its index names.

    An index is data from elsewhere, so each shard name must stay inside the folder. The check is on
    the name, not the resolved file: the Hugging Face cache links every shard to a blob outside its
    snapshot folder, and those folders must load."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return [path / "model.safetensors"]
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{index} is not valid JSON ({e}).") from None
    except (KeyError, TypeError):
        raise CheckpointError(f"{index} has no \"weight_map\" object naming the weight shards.") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise CheckpointError(f"{index}: \"weight_map\" must map tensor names to shard file names.")
    files = []
    for name in sorted(set(weight_map.values())):
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
            raise CheckpointError(f"{index} names the shard {name!r}, which is outside {path}; refusing to read it.")
        if not (path / name).is_file():
            raise CheckpointError(f"{index} names the shard {name!r}, which is missing from {path}.")
        files.append(path / name)
    return files


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder (see hf_weight_files)."""
    from safetensors.torch import load_file

    out = {}
    for f in hf_weight_files(path):
        if not f.is_file():
            raise CheckpointError(f"{path} has no {f.name} (only safetensors weights are read).")
        try:
            out.update(load_file(str(f)))
        except Exception as e:
            raise CheckpointError(f"{f} is truncated or corrupt ({type(e).__name__}: {e}).") from None
    return out


def normalize_hf_config(hf: dict) -> dict:
    """A config.json as transformers itself reads it: older files (Gemma-3's `rope_local_base_freq`,
    `sliding_window_pattern`, a global-only `rope_scaling`, tying left to the class default) come out
    with per-layer-type `rope_parameters`, `layer_types` and an explicit `tie_word_embeddings`. A value of
    the wrong type or range, or one transformers' config class refuses, raises ConfigError naming the key."""
    from transformers import AutoConfig

    mtype = hf.get("model_type")
    if not isinstance(mtype, str) or mtype not in _FAMILIES:
        return hf  # config_from_hf names the unsupported model_type
    check_hf_values(hf)  # in our words first: transformers' messages run over several lines
    try:
        return AutoConfig.for_model(mtype, **{k: v for k, v in hf.items() if k != "model_type"}).to_dict()
    except Exception as e:  # its config classes raise TypeError, ValueError, KeyError, StrictDataclassError
        why = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
        raise ConfigError(f"transformers' {mtype} config refuses it ({why}).") from None


def import_hf_dir(path: str | os.PathLike, *, name: str | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, native state dict) of a local Hugging Face folder (config.json + safetensors)."""
    path = Path(path)
    cfg_path = path / "config.json"
    try:
        hf = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {cfg_path} ({e}).") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{cfg_path} holds a JSON {type(hf).__name__}, expected an object of config fields.")
    # without tokenizer files the config names none: load_model then returns tokenizer None
    tokenizer = "tokenizer.json" if (path / "tokenizer.json").is_file() else ""
    try:
        cfg = config_from_hf(normalize_hf_config(hf), name=name or path.name, tokenizer=tokenizer)
    except KeyError as e:
        raise CheckpointError(f"{cfg_path} lacks the key {e}, which a {hf.get('model_type')} config needs.") from None
    except ConfigError as e:
        raise ConfigError(f"{cfg_path}: {e}") from None
    return cfg, state_dict_from_hf(cfg, _read_hf_weights(path), str(path))


def import_gguf(path: str | os.PathLike, *, name: str | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, native state dict) of a GGUF file, dequantized to fp32 through transformers' GGUF loader."""
    from transformers import AutoModelForCausalLM, GgufConfig

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {str(path)!r} does not exist.")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True), local_files_only=True,
        )
    except Exception as e:
        raise CheckpointError(f"transformers could not read the GGUF file {path} ({type(e).__name__}: {e}).") from None
    try:
        cfg = config_from_hf(hf_model.config.to_dict(), name=name or path.stem)
    except KeyError as e:
        raise CheckpointError(f"{path} lacks the metadata key {e}, which a {hf_model.config.model_type} model needs.") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg, state_dict_from_hf(cfg, hf_model.state_dict(), str(path))


def _gguf_tokenizer_dir(path: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.save_pretrained(str(out))
    return out


def _not_replaceable(folder: Path, entries: list[Path]) -> str | None:
    """Why --force may not replace `folder`: only a folder holding nothing but a checkpoint's own files is
    replaced, so a run directory or any other folder is never deleted."""
    if not ckpt.is_checkpoint(folder):
        return "is not a checkpoint, so --force does not replace it; name a new folder"
    foreign = [p.name for p in entries if p.name not in ckpt.CHECKPOINT_FILES or not p.is_file()]
    if foreign:
        return (f"holds {', '.join(foreign)} besides checkpoint files, so --force does not replace it; remove "
                "those or name a new folder")
    return None


DESTINATION = Destination(verb="convert", thing="a checkpoint", refusal=_not_replaceable)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, name: str | None = None, dtype: torch.dtype | None = None,
            tokenizer_dir: str | os.PathLike | None = None, tokenizer: str | None = None, force: bool = False) -> Path:
    """Convert a Hugging Face folder or a GGUF file into a checkpoint directory at `dst`.

    Args:
        src: a folder with config.json + safetensors (a model_type config_from_hf supports), or a .gguf file.
        dst: the checkpoint directory to write.
        name: the config's name (default: the source's name).
        dtype: weight dtype to store (default: as read; GGUF dequantizes to float32).
        tokenizer_dir: folder with tokenizer.json to ship (default: the HF folder itself, or the
            tokenizer rebuilt from the GGUF file; the SmolLM2 GGUF uses the tokenizer module's cache).
        tokenizer: a built-in tokenizer name ("bytes", "gpt2") instead of tokenizer files.
        force: replace `dst` when it is a checkpoint folder (holding only checkpoint files); any other
            non-empty folder, a file, or a folder overlapping `src` is always refused.
    Returns:
        Path of the written checkpoint, renamed into place only once complete.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    DESTINATION.check(src, dst, force)
    if src.is_dir():
        cfg, sd = import_hf_dir(src, name=name)
        if tokenizer_dir is None and tokenizer is None:
            tokenizer_dir = src if (src / "tokenizer.json").is_file() else None
    elif src.suffix == ".gguf":
        cfg, sd = import_gguf(src, name=name)
        if tokenizer_dir is None and tokenizer is None and src.name == "SmolLM2-135M-Instruct.Q4_1.gguf":
            from rattn_eval.tokenizer import smollm2_tokenizer_dir

            tokenizer_dir = smollm2_tokenizer_dir()
    else:
        raise CheckpointError(f"cannot convert {str(src)!r}: expected a Hugging Face folder or a .gguf file.")
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    if tokenizer is not None:
        DESTINATION.write(src, dst, force, lambda out: ckpt.save_checkpoint(out, cfg.replace(tokenizer=tokenizer), sd))
        return dst
    if tokenizer_dir is None and src.is_dir():
        raise CheckpointError(f"{src} has no tokenizer.json; give a folder that has one with --tokenizer-dir "
                              "(tokenizer_dir=), or a built-in tokenizer with --tokenizer bytes|gpt2 (tokenizer=).")
    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer_dir is None:
            tokenizer_dir = _gguf_tokenizer_dir(src, Path(tmp))
        DESTINATION.write(src, dst, force, lambda out: ckpt.save_checkpoint(
            out, cfg.replace(tokenizer="tokenizer.json"), sd, tokenizer_dir=tokenizer_dir))
    return dst
