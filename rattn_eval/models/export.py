"""Export a checkpoint for transformers: `rattn-eval export CKPT OUT --format hf`.

OUT is a folder `AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)` and
`AutoTokenizer.from_pretrained(OUT)` load without rattn-eval installed:

    config.json              RAttnConfig fields (FIELD_MAP) + auto_map naming the two files below
    configuration_rattn.py   copied from hf_remote/: the config class
    modeling_rattn.py        copied from hf_remote/: the model in plain PyTorch, with its own simple cache
    model.safetensors        the weights, "model." + the native name (lm_head.weight at the top)
    tokenizer.json, tokenizer_config.json (+ chat_template.jinja, special_tokens_map.json when the
    checkpoint has them), generation_config.json

transformers' tokenizer follows tokenizer.json, not tokenizer_config's add_bos_token, so when our
tokenizer prepends BOS the exported tokenizer.json gets a post-processor that does, and the export
checks that both tokenize a probe text alike. The built-in "bytes" tokenizer is written out as an
equivalent tokenizer.json.

rattn-eval's `hf` backend loads such a folder with trust_remote_code=True, but only when its code
files are byte-identical to this package's hf_remote/ (`hf_load_kwargs`); the native backends read
it back with `read_exported`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from . import checkpoint as ckpt
from .config import ModelConfig
from .destination import Destination
from .model import Model

FORMATS = ("hf",)
REMOTE_DIR = Path(__file__).resolve().parent / "hf_remote"
REMOTE_FILES = ("configuration_rattn.py", "modeling_rattn.py")
MODEL_TYPE = "rattn"
AUTO_MAP = {
    "AutoConfig": "configuration_rattn.RAttnConfig",
    "AutoModel": "modeling_rattn.RAttnModel",
    "AutoModelForCausalLM": "modeling_rattn.RAttnForCausalLM",
}
TOKENIZER_OUT = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                 "generation_config.json")
EXPORT_FILES = ("config.json", "model.safetensors", *REMOTE_FILES, *TOKENIZER_OUT)  # all an export may write

# ModelConfig field -> RAttnConfig key. None: not part of the exported model (the tokenizer ships as
# files, the name is kept as "rattn_name", init_seed only seeds random weights). A ModelConfig field
# missing here is a feature modeling_rattn.py does not implement: its non-default values are refused.
FIELD_MAP = {
    "name": None,
    "vocab_size": "vocab_size",
    "width": "hidden_size",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "kinds": "layer_kinds",
    "ffn": "ffn",
    "intermediate_size": "intermediate_size",
    "norm": "norm_style",
    "norm_eps": "rms_norm_eps",
    "window": "window",
    "global_window": "global_window",
    "feature_map": "feature_map",
    "qk_norm": "qk_norm",
    "rope_theta_local": "rope_theta_local",
    "rope_theta_global": "rope_theta_global",
    "rope_scale_global": "rope_scale_global",
    "nope_global": "nope_global",
    "attn_scale": "attn_scale",
    "embed_scale": "embed_scale",
    "tie_embeddings": "tie_word_embeddings",
    "final_softcap": "final_softcap",
    "max_context": "max_position_embeddings",
    "tokenizer": None,
    "init_seed": None,
}
# the values modeling_rattn.py implements, for fields with a closed set of choices (as in configuration_rattn.py)
SUPPORTED_VALUES = {
    "kinds": ("global", "swa", "rattn"),
    "ffn": ("swiglu", "geglu"),
    "norm": ("pre", "sandwich"),
    "feature_map": ("softmax", "relu", "identity"),
}
_PROBES = ("Hello world, 1234 is the magic number.", "  two  spaces\nand a new line: ok?")


def check_exportable(config: ModelConfig) -> None:
    """Raise ConfigError naming the first config value modeling_rattn.py does not implement."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in SUPPORTED_VALUES:
            bad = [v for v in (value if f.name == "kinds" else (value,)) if v not in SUPPORTED_VALUES[f.name]]
            if bad:
                raise ConfigError(f"cannot export {config.name!r} to hf: {f.name} = {bad[0]!r} is not implemented by "
                                  f"modeling_rattn.py (it implements {', '.join(SUPPORTED_VALUES[f.name])}).")
        elif f.name not in FIELD_MAP:
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                raise ConfigError(f"cannot export {config.name!r} to hf: config field {f.name} is not implemented by "
                                  "modeling_rattn.py.")
            if value != default:
                raise ConfigError(f"cannot export {config.name!r} to hf: {f.name} = {value!r} is not implemented by "
                                  f"modeling_rattn.py (only the default {default!r} is).")


def hf_config(config: ModelConfig, tok, dtype: torch.dtype) -> dict:
    """The config.json of an export."""
    out = {"architectures": ["RAttnForCausalLM"], "auto_map": dict(AUTO_MAP), "model_type": MODEL_TYPE}
    for field, key in FIELD_MAP.items():
        if key is not None:
            value = getattr(config, field)
            out[key] = list(value) if isinstance(value, tuple) else value
    main_eos = tok.encode(tok.eos_token) if tok.eos_token else []
    out.update(
        rattn_name=config.name,
        bos_token_id=tok.bos_id,
        eos_token_id=main_eos[0] if len(main_eos) == 1 else (min(tok.eos_ids) if tok.eos_ids else None),
        pad_token_id=tok.pad_id,
        dtype=str(dtype).removeprefix("torch."),
        use_cache=True,
    )
    return out


def export_hf(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: torch.dtype | None = None,
              force: bool = False) -> Path:
    """Export checkpoint `src` (a checkpoint folder or a shipped / real built-in name) as a transformers
    folder at `dst`.

    dtype: weight dtype to store (default: as stored). force: replace `dst` when it holds a previous
    export and nothing else; any other non-empty folder is refused. The folder is written beside `dst`
    and renamed into place when complete. Returns the folder.
    """
    from rattn_eval.tokenizer import load_tokenizer

    src_dir = _source_dir(src)
    dst = Path(dst).expanduser()
    config = ckpt.read_config(src_dir)
    check_exportable(config)
    DESTINATION.check(src_dir, dst, force)
    tok = load_tokenizer(src_dir)
    weights = ckpt.read_weights(src_dir)
    with torch.device("meta"):  # the names and shapes the config wants, checked before anything is written
        expected = {k: v.shape for k, v in Model(config).state_dict().items()}
    ckpt.check_state_dict(expected, weights, str(src_dir))
    stored = {(("" if k.startswith("lm_head.") else "model.") + k): (v if dtype is None else v.to(dtype)).contiguous()
              for k, v in weights.items()}
    weight_dtype = next(iter(stored.values())).dtype
    files = _tokenizer_files(config, tok)

    def write(folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir()
        save_file(stored, str(folder / "model.safetensors"), metadata={"format": "pt"})
        for name in REMOTE_FILES:
            shutil.copyfile(REMOTE_DIR / name, folder / name)
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
        (folder / "config.json").write_text(json.dumps(hf_config(config, tok, weight_dtype), indent=2) + "\n")

    DESTINATION.write(src_dir, dst, force, write)
    return dst


def _source_dir(src) -> Path:
    from .names import REAL_NAMES, SHIPPED_NAMES

    key = str(src)
    path = Path(key).expanduser()
    if not path.exists() and key in SHIPPED_NAMES:
        from ..checkpoints import checkpoint_dir

        path = checkpoint_dir(key)
    elif not path.exists() and key in REAL_NAMES:
        from .loading import real_checkpoint_dir

        path = real_checkpoint_dir(key)
    if not ckpt.is_checkpoint(path):
        raise CheckpointError(f"cannot export {key!r}: not a rattn-eval checkpoint folder nor a built-in checkpoint "
                              f"({', '.join((*SHIPPED_NAMES, *REAL_NAMES))}); convert it first with `rattn-eval convert`.")
    return path


def _tokenizer_files(config: ModelConfig, tok) -> dict[str, str]:
    """name -> text of the tokenizer files of the export; their encoding of probe texts equals `tok`'s."""
    from rattn_eval.tokenizer import ByteTokenizer

    folder = getattr(tok, "folder", None)
    if folder is not None:
        folder = Path(folder)
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        tok_cfg = _read_json(folder / "tokenizer_config.json")
        gen_cfg = _read_json(folder / "generation_config.json")
        extra = {n: (folder / n).read_text(encoding="utf-8") for n in ("chat_template.jinja", "special_tokens_map.json")
                 if (folder / n).is_file()}
    elif isinstance(tok, ByteTokenizer):
        spec, tok_cfg, gen_cfg, extra = _bytes_tokenizer_spec(tok), {}, {}, {}
        if tok.chat_template is not None:
            tok_cfg["chat_template"] = tok.chat_template
    else:
        raise ConfigError(f"cannot export {config.name!r} to hf: its tokenizer {tok.name!r} has no tokenizer.json "
                          "(only HF tokenizer folders and 'bytes' can be exported).")
    text = json.dumps(_with_bos_post_processor(spec, tok), ensure_ascii=False)
    pad = _check_same_encoding(text, tok)
    tok_cfg.update(tokenizer_class="PreTrainedTokenizerFast", bos_token=tok.bos_token, eos_token=tok.eos_token,
                   pad_token=pad, add_bos_token=tok.add_bos, model_max_length=config.max_context)
    eos = sorted(tok.eos_ids)
    gen_cfg.update(bos_token_id=tok.bos_id, eos_token_id=eos[0] if len(eos) == 1 else eos, pad_token_id=tok.pad_id)
    return {"tokenizer.json": text, "tokenizer_config.json": json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n",
            "generation_config.json": json.dumps(gen_cfg, indent=2) + "\n", **extra}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _with_bos_post_processor(spec: dict, tok) -> dict:
    """tokenizer.json whose post-processor prepends BOS when (and only when) `tok` does."""
    from rattn_eval.tokenizer import HFTokenizer

    post = spec.get("post_processor")
    if HFTokenizer._post_processor_adds(tok.bos_token, post) == tok.add_bos:
        return spec
    if not tok.add_bos:
        raise ConfigError("cannot export the tokenizer: its tokenizer.json prepends BOS but tokenizer_config.json "
                          "says add_bos_token: false; make the two agree first.")
    bos = {"SpecialToken": {"id": tok.bos_token, "type_id": 0}}
    template = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {tok.bos_token: {"id": tok.bos_token, "ids": [tok.bos_id], "tokens": [tok.bos_token]}},
    }
    if post is None:
        new = template
    elif post.get("type") == "Sequence":
        new = {**post, "processors": [*post["processors"], template]}
    else:
        new = {"type": "Sequence", "processors": [post, template]}
    return {**spec, "post_processor": new}


def _bytes_tokenizer_spec(tok) -> dict:
    """The built-in byte tokenizer as a tokenizer.json: ids 0..255 are the UTF-8 bytes (byte-level
    characters, no merges), then <bos>, <eos>, <pad> as special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from rattn_eval.tokenizer import _bytelevel_decoder

    hf = Tokenizer(models.BPE(vocab=dict(_bytelevel_decoder()), merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    specials = sorted(tok.SPECIALS, key=tok.SPECIALS.get)
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if [hf.token_to_id(s) for s in specials] != [tok.SPECIALS[s] for s in specials]:
        raise ConfigError("cannot write the byte tokenizer as a tokenizer.json: special token ids do not line up.")
    return json.loads(hf.to_str())


def _check_same_encoding(spec_text: str, tok) -> str | None:
    """transformers encodes with tokenizer.json's post-processor (add_special_tokens=True): it must give
    exactly `tok.encode_prompt`, or lm-eval's `hf` model would score other tokens than ours. Returns the pad
    token's string (its vocabulary entry, which decoding would not give for a byte-level token)."""
    from tokenizers import Tokenizer

    hf = Tokenizer.from_str(spec_text)
    for text in _PROBES:
        got, want = hf.encode(text, add_special_tokens=True).ids, tok.encode_prompt(text)
        if got != want:
            raise ConfigError(f"cannot export the tokenizer: tokenizer.json encodes {text!r} as {got[:8]}... but "
                              f"rattn-eval as {want[:8]}...")
    for what, token in (("bos", tok.bos_token), ("eos", tok.eos_token)):
        if token is not None and hf.token_to_id(token) is None:
            raise ConfigError(f"cannot export the tokenizer: its {what} token {token!r} is not in tokenizer.json.")
    return None if tok.pad_id is None else hf.id_to_token(tok.pad_id)


def _not_replaceable(folder: Path, entries: list[Path]) -> str | None:
    """Why --force may not replace `folder`: only a previous export holding nothing else is replaced."""
    foreign = [p.name for p in entries if p.name not in EXPORT_FILES or not p.is_file()]
    if not is_exported(folder) or foreign:
        return (f"is not a previous export (it holds {', '.join(foreign) or 'another model'}), so --force does not "
                "replace it; name a new folder")
    return None


DESTINATION = Destination(verb="export", thing="an export", refusal=_not_replaceable)


def _config_json(path: Path) -> dict:
    try:
        raw = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def is_exported(path: str | os.PathLike) -> bool:
    """True when `path` holds a config.json whose auto_map names this project's model (an export)."""
    raw = _config_json(Path(path))
    auto_map = raw.get("auto_map")
    return (raw.get("model_type") == MODEL_TYPE and isinstance(auto_map, dict)
            and auto_map.get("AutoModelForCausalLM") == AUTO_MAP["AutoModelForCausalLM"])


def hf_load_kwargs(path: str | os.PathLike) -> dict:
    """Extra from_pretrained arguments of the `hf` backend for folder `path`: trust_remote_code=True for an
    export whose code files are byte-identical to this package's (so no other code is ever trusted); for
    any other folder, transformers' own SDPA attention."""
    path = Path(path)
    if not is_exported(path):
        return {"attn_implementation": "sdpa"}
    for name in REMOTE_FILES:
        if not (path / name).is_file() or _digest(path / name) != _digest(REMOTE_DIR / name):
            raise ConfigError(f"{path} was exported by another rattn-eval version ({name} differs from this one's); "
                              "export it again with this version to run it on the hf backend.")
    return {"trust_remote_code": True}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_exported(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, native state dict) of an exported folder, for the native backends."""
    path = Path(path)
    raw = _config_json(path)
    fields = {field: raw[key] for field, key in FIELD_MAP.items() if key is not None and key in raw}
    try:
        config = ModelConfig(name=str(raw.get("rattn_name", path.name)), tokenizer="tokenizer.json", **fields)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    weights = {k.removeprefix("model."): v for k, v in ckpt.read_weights(path).items()}
    return config, weights
