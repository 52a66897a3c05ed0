"""The `hf` backend: an unmodified transformers model behind the native generate interface, as a baseline.

Prompts are left-padded (what transformers' generate expects) and decoded with its own greedy
loop and KV cache; per-row budgets, EOS and stop strings are applied per row, and a logits
processor raises NumericsError on NaN/inf. prefill_s is the time to the first token
(transformers runs the prefill inside generate).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..errors import ConfigError
from .config import ModelConfig
from .model import _check_finite, _sync, normalize_generate_args, stop_text


class HFModel:
    """Wraps a transformers causal LM. `model(input_ids [B, T], lengths=None) -> logits [B, T, V]`, `generate(...)`.

    Attributes: hf (the transformers model), config (a ModelConfig when it was built from one, else None),
    max_context, backend = "hf", tokenizer, last_stats.
    """

    backend = "hf"

    def __init__(self, hf_model, config: ModelConfig | None = None):
        self.hf = hf_model.eval().requires_grad_(False)
        self.config = config
        self.tokenizer = None
        self.last_stats: dict = {}

    @property
    def max_context(self) -> int:
        """The native config's (dynamic NTK stretches transformers' max_position_embeddings by its factor)."""
        return self.config.max_context if self.config is not None else int(self.hf.config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T), right-padded to `lengths` -> logits (B, T, V) (padded positions are garbage)."""
        mask = None
        if lengths is not None:
            mask = (torch.arange(input_ids.shape[1], device=input_ids.device)[None] < lengths[:, None]).long()
        return self.hf(input_ids=input_ids, attention_mask=mask).logits

    @torch.inference_mode()
    def generate(self, prompts, *, max_new_tokens, eos_ids=None, stop=None, tokenizer=None) -> list[list[int]]:
        """Same contract as Model.generate; runs transformers' greedy `generate` on the left-padded batch."""
        from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        prompts, budgets, eos, stop, tokenizer = normalize_generate_args(
            self, prompts, max_new_tokens, eos_ids, stop, tokenizer, self.hf.get_input_embeddings().num_embeddings)
        device = self.device
        B, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(B, T, dtype=torch.long, device=device)
        mask = torch.zeros(B, T, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            ids[b, T - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[b, T - len(p):] = 1
        budget_t = torch.tensor(budgets, device=device)
        first_token_at: list[float] = []

        class RowDone(StoppingCriteria):
            """Per-row end: budget reached, EOS produced, or a stop string in the decoded output.
            Its first call marks the end of the prefill (the first token is out)."""

            def __call__(self, input_ids, scores, **kwargs):
                if not first_token_at:
                    _sync(device)
                    first_token_at.append(time.perf_counter())
                new = input_ids[:, T:]
                done = budget_t <= new.shape[1]
                if eos:
                    done |= torch.isin(new, torch.tensor(sorted(eos), device=device)).any(dim=1)
                if stop:
                    for b in range(B):
                        if not done[b]:
                            done[b] = any(s in stop_text(tokenizer, new[b].tolist()) for s in stop)
                return done

        class FiniteCheck(LogitsProcessor):
            def __call__(self, input_ids, scores):
                _check_finite(scores, "decoding")
                return scores

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        n_new = max(budgets)
        if n_new > 0:
            # transformers fills unset generation options from the model's own generation config, whose
            # EOS ids it would stop at: clear them for the call; EOS is handled per row by RowDone
            gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=n_new, min_new_tokens=0, eos_token_id=None,
                                       pad_token_id=0, bos_token_id=None, return_dict_in_generate=True)
            saved_eos = self.hf.generation_config.eos_token_id
            self.hf.generation_config.eos_token_id = None
            try:
                seqs = self.hf.generate(
                    input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                    stopping_criteria=StoppingCriteriaList([RowDone()]),
                    logits_processor=LogitsProcessorList([FiniteCheck()]),
                )
            finally:
                self.hf.generation_config.eos_token_id = saved_eos
            # transformers 5 names the cache `cache` (`past_key_values` stays as a deprecated alias)
            cache_bytes = _cache_nbytes(getattr(seqs, "cache", None) if hasattr(seqs, "cache") else seqs.past_key_values)
            seqs = seqs.sequences
        else:
            _check_finite(self.hf(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits, "prefill")
            seqs, cache_bytes = ids, None
        _sync(device)
        t1 = time.perf_counter()
        prefill_s = (first_token_at[0] if first_token_at else t1) - t0
        decode_s = t1 - t0 - prefill_s
        outputs = []
        for b in range(B):
            row = []
            for tok in seqs[b, T:].tolist()[: budgets[b]]:
                if tok in eos:
                    break
                row.append(tok)
                if stop and any(s in stop_text(tokenizer, row) for s in stop):
                    break
            outputs.append(row)
        self.last_stats = dict(
            prefill_tokens=sum(len(p) for p in prompts), prefill_s=prefill_s,
            decode_tokens=sum(max(len(o) - 1, 0) for o in outputs), decode_s=decode_s,
            peak_mem_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            cache_bytes=cache_bytes,
        )
        return outputs


def _cache_nbytes(cache) -> int | None:
    """Bytes held by a transformers cache at the end of generate (None when its layout is unknown)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    total = 0
    for layer in layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def attn_implementation(model_type: str | None) -> str:
    """SDPA, except for Gemma-2, whose attention-logit softcapping SDPA cannot do (transformers refuses it)."""
    return "eager" if model_type == "gemma2" else "sdpa"


def load_hf_model(path: str | os.PathLike, *, device, dtype) -> HFModel:
    """An unmodified transformers model from a local folder (no hub access). A folder written by
    `rattn-eval export --format hf` runs its own modeling file (trust_remote_code, see export.hf_load_kwargs)."""
    from transformers import AutoModelForCausalLM

    from .export import hf_load_kwargs
    from .importers import hf_weight_files

    hf_weight_files(Path(path))  # transformers would follow shard names that lead out of the folder
    kwargs = hf_load_kwargs(path)
    if kwargs.get("attn_implementation") == "sdpa":
        try:
            kwargs["attn_implementation"] = attn_implementation(json.loads((Path(path) / "config.json").read_text())
                                                                .get("model_type"))
        except (OSError, ValueError, AttributeError):
            pass  # from_pretrained names the problem
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(Path(path)), dtype=dtype, local_files_only=True, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"transformers could not load {path} ({e}).") from None
    return HFModel(hf.to(device))


def hf_model_from_native(config: ModelConfig, state_dict: dict[str, torch.Tensor], *, device, dtype) -> HFModel:
    """The transformers model equivalent to a native config, with the same weights."""
    from transformers import AutoModelForCausalLM

    from .importers import hf_config_from_native, state_dict_to_hf

    hf_cfg = hf_config_from_native(config)
    hf_cfg._attn_implementation = attn_implementation(hf_cfg.model_type)
    # built for real (not on meta): transformers keeps derived buffers (RoPE frequencies, Gemma's
    # embedding scale) outside the state dict, and they must be initialized
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    sd = state_dict_to_hf(config, state_dict, fused=hf_cfg.model_type == "phi3")
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    hf.load_state_dict(sd, strict=True)
    return HFModel(hf, config)
