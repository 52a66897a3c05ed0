"""Importers: Hugging Face folders and GGUF files (Llama family, Mistral, Gemma-3) -> native checkpoints,
and the inverse map (native -> transformers config + state dict) used by the `hf` backend.

GGUF files are read through transformers' GGUF loader with dequantization, which undoes
llama.cpp's q/k row permutation (Llama) and its `1 + w` storage of Gemma norms, so what
comes out is the Hugging Face layout. Gemma's `1 + w` norms are then folded into plain weights
(DESIGN §3), and HF `sliding_window = W` becomes `window = W - 1`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from . import checkpoint as ckpt
from .config import ModelConfig

LLAMA_TYPES = ("llama", "mistral")
GEMMA3_TYPES = ("gemma3_text",)


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


def _linear_factor(params: dict, where: str) -> float:
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return 1.0
    if kind == "linear":
        return float(params["factor"])
    raise ConfigError(f"{where}: RoPE type {kind!r} is not supported (only default and linear).")


def config_from_hf(hf: dict, *, name: str = "custom", tokenizer: str = "tokenizer.json") -> ModelConfig:
    """A transformers config dict (config.json) -> ModelConfig. Supports llama, mistral, gemma3_text."""
    mtype = hf.get("model_type")
    if mtype == "gemma3" and "text_config" in hf:
        raise ConfigError("multimodal Gemma-3 folders are not supported; use a text-only (gemma3_text) checkpoint.")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    common = dict(
        name=name, vocab_size=hf["vocab_size"], width=hf["hidden_size"], n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
        intermediate_size=hf["intermediate_size"], norm_eps=float(hf["rms_norm_eps"]),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), max_context=int(hf["max_position_embeddings"]),
        tokenizer=tokenizer,
    )
    if mtype in LLAMA_TYPES:
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ConfigError(f"{mtype} checkpoints with attention/MLP biases are not supported.")
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{mtype} with hidden_act {hf.get('hidden_act')!r} is not supported (only silu).")
        rope = _rope_params(hf)
        W = hf.get("sliding_window") if mtype == "mistral" else None
        n = hf["num_hidden_layers"]
        return ModelConfig(
            **common, kinds=("global",) * n if W is None else ("swa",) * n, window=None if W is None else W - 1,
            ffn="swiglu", norm="pre", rope_theta_local=float(rope["rope_theta"]),
            rope_theta_global=float(rope["rope_theta"]), rope_scale_global=_linear_factor(rope, mtype),
        )
    if mtype in GEMMA3_TYPES:
        if hf.get("attn_logit_softcapping") is not None:
            raise ConfigError("Gemma checkpoints with attention logit softcapping are not supported.")
        if hf.get("use_bidirectional_attention"):
            raise ConfigError("bidirectional Gemma-3 variants are not causal LMs and are not supported.")
        if hf.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise ConfigError(f"Gemma-3 with hidden_activation {hf.get('hidden_activation')!r} is not supported.")
        types = hf["layer_types"]
        local, glob = _rope_params(hf, "sliding_attention"), _rope_params(hf, "full_attention")
        if _linear_factor(local, "gemma3 sliding layers") != 1.0:
            raise ConfigError("Gemma-3 with scaled RoPE on sliding layers is not supported.")
        return ModelConfig(
            **common, kinds=tuple("global" if t == "full_attention" else "swa" for t in types),
            window=int(hf["sliding_window"]) - 1, ffn="geglu", norm="sandwich", qk_norm=True,
            rope_theta_local=float(local["rope_theta"]), rope_theta_global=float(glob["rope_theta"]),
            rope_scale_global=_linear_factor(glob, "gemma3 global layers"),
            attn_scale=float(hf["query_pre_attn_scalar"]) ** -0.5, embed_scale=math.sqrt(hf["hidden_size"]),
            final_softcap=hf.get("final_logit_softcapping"),
        )
    raise ConfigError(f"model_type {mtype!r} is not supported; importers exist for "
                      f"{', '.join(LLAMA_TYPES + GEMMA3_TYPES)}.")


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
    return m


def state_dict_from_hf(cfg: ModelConfig, hf_sd: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Rename HF tensors to native keys (strict), folding Gemma's `1 + w` into plain norm weights."""
    hf_sd = dict(hf_sd)
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


def state_dict_to_hf(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Native tensors -> HF keys; the inverse of state_dict_from_hf (Gemma norms back to w - 1)."""
    fold = is_gemma_style(cfg)
    return {hk: (sd[n].float() - 1.0 if fold and "norm" in n else sd[n]) for n, hk in hf_key_map(cfg).items()}


def hf_config_from_native(cfg: ModelConfig):
    """A transformers config equivalent to `cfg` (LlamaConfig or Gemma3TextConfig), or ConfigError
    when transformers has no model with these layers (e.g. rattn layers, NoPE, QK-norm in a Llama)."""
    if any(k == "rattn" for k in cfg.kinds) or cfg.nope_global or cfg.global_window is not None:
        raise ConfigError(f"{cfg.name!r} has layers transformers cannot run (rattn, NoPE or windowed global layers); "
                          "the hf backend needs a Llama- or Gemma-3-shaped model.")
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_context, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    if is_gemma_style(cfg):
        from transformers import Gemma3TextConfig

        if cfg.ffn != "geglu" or not cfg.qk_norm or not math.isclose(cfg.embed_scale, math.sqrt(cfg.width)):
            raise ConfigError(f"{cfg.name!r} has sandwich norms but is not Gemma-3-shaped (GeGLU, QK-norm, sqrt(width) embedding scale).")
        glob = {"rope_type": "default", "rope_theta": cfg.rope_theta_global}
        if cfg.rope_scale_global != 1.0:
            glob = {"rope_type": "linear", "rope_theta": cfg.rope_theta_global, "factor": cfg.rope_scale_global}
        scale = cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim ** -0.5
        scalar = scale ** -2
        if not math.isclose(scalar, round(scalar), rel_tol=1e-6):  # transformers types it as an int
            raise ConfigError(f"{cfg.name!r}: attention scale {scale} is not 1/sqrt(integer), as Gemma-3 needs.")
        return Gemma3TextConfig(
            **common, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=round(scalar),
            sliding_window=(cfg.window if cfg.window is not None else 0) + 1,
            layer_types=["full_attention" if k == "global" else "sliding_attention" for k in cfg.kinds],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta_local},
                             "full_attention": glob},
            final_logit_softcapping=cfg.final_softcap, attn_logit_softcapping=None,
        )
    if cfg.has_local or cfg.qk_norm or cfg.ffn != "swiglu" or cfg.embed_scale != 1.0 or cfg.final_softcap is not None \
            or cfg.attn_scale not in (None, cfg.head_dim ** -0.5):
        raise ConfigError(f"{cfg.name!r} is not Llama-shaped (all global layers, SwiGLU, no QK-norm or scales).")
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta_global}
    if cfg.rope_scale_global != 1.0:
        rope = {"rope_type": "linear", "rope_theta": cfg.rope_theta_global, "factor": cfg.rope_scale_global}
    return LlamaConfig(**common, hidden_act="silu", rope_parameters=rope, attention_bias=False, mlp_bias=False)


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: model.safetensors or the shards listed in model.safetensors.index.json."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    out = {}
    for f in files:
        if not (path / f).is_file():
            raise CheckpointError(f"{path} has no {f} (only safetensors weights are read).")
        try:
            out.update(load_file(str(path / f)))
        except Exception as e:
            raise CheckpointError(f"{path / f} is truncated or corrupt ({type(e).__name__}: {e}).") from None
    return out


def normalize_hf_config(hf: dict) -> dict:
    """A config.json as transformers itself reads it: older files (Gemma-3's `rope_local_base_freq`,
    `sliding_window_pattern`, a global-only `rope_scaling`, tying left to the class default) come out
    with per-layer-type `rope_parameters`, `layer_types` and an explicit `tie_word_embeddings`."""
    from transformers import AutoConfig

    mtype = hf.get("model_type")
    try:
        return AutoConfig.for_model(mtype, **{k: v for k, v in hf.items() if k != "model_type"}).to_dict()
    except (ValueError, KeyError):
        return hf  # unknown to transformers: config_from_hf names the unsupported model_type


def import_hf_dir(path: str | os.PathLike, *, name: str | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, native state dict) of a local Hugging Face folder (config.json + safetensors)."""
    path = Path(path)
    try:
        hf = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / 'config.json'} ({e}).") from None
    # without tokenizer files the config names none: load_model then returns tokenizer None
    tokenizer = "tokenizer.json" if (path / "tokenizer.json").is_file() else ""
    cfg = config_from_hf(normalize_hf_config(hf), name=name or path.name, tokenizer=tokenizer)
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
    cfg = config_from_hf(hf_model.config.to_dict(), name=name or path.stem)
    return cfg, state_dict_from_hf(cfg, hf_model.state_dict(), str(path))


def _gguf_tokenizer_dir(path: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.save_pretrained(str(out))
    return out


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, name: str | None = None, dtype: torch.dtype | None = None,
            tokenizer_dir: str | os.PathLike | None = None, tokenizer: str | None = None) -> Path:
    """Convert a Hugging Face folder or a GGUF file into a checkpoint directory at `dst`.

    Args:
        src: a folder with config.json + safetensors (Llama / Mistral / Gemma-3 text), or a .gguf file.
        dst: the checkpoint directory to write.
        name: the config's name (default: the source's name).
        dtype: weight dtype to store (default: as read; GGUF dequantizes to float32).
        tokenizer_dir: folder with tokenizer.json to ship (default: the HF folder itself, or the
            tokenizer rebuilt from the GGUF file; the SmolLM2 GGUF uses the tokenizer module's cache).
        tokenizer: a built-in tokenizer name ("bytes", "gpt2") instead of tokenizer files.
    Returns:
        Path of the written checkpoint.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
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
        return ckpt.save_checkpoint(dst, cfg.replace(tokenizer=tokenizer), sd)
    if tokenizer_dir is None and src.is_dir():
        raise CheckpointError(f"{src} has no tokenizer.json; pass tokenizer_dir=<folder> or tokenizer='bytes'|'gpt2'.")
    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer_dir is None:
            tokenizer_dir = _gguf_tokenizer_dir(src, Path(tmp))
        return ckpt.save_checkpoint(dst, cfg.replace(tokenizer="tokenizer.json"), sd, tokenizer_dir=tokenizer_dir)
