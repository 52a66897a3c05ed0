"""Oracle models, pipeline checks with known answers: `oracle:correct` answers every sample with its
reference answers, `oracle:wrong` with a string that contains none of them. Scored through the whole
pipeline they must give exactly 100 and 0 for every task, which checks prompt building, budgets,
decoding, EOS cutting, scoring and aggregation without trusting any real model.

An oracle is a model that has memorized the benchmark: loaded for a run, it generates that run's
samples itself (task generation is deterministic) and keeps each prompt's answers, keyed by the
prompt's token ids. Its `generate` is the one every model has (`runner.interface.Model`): it looks
the prompt up. Names: `oracle:MODE` with the `bytes` tokenizer, or `oracle:MODE:TOKENIZER` with any
name `load_tokenizer` accepts.
"""

from __future__ import annotations

import hashlib
from typing import Any

from rattn_eval.errors import ConfigError

MODES = ("correct", "wrong")
# Symbols tried for the wrong answer; one absent from every reference is used.
_GARBAGE = "#~^|@%"


def _key(ids) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


class OracleModel:
    backend = "oracle"
    max_context = 1 << 24

    def __init__(self, mode: str, tokenizer: Any, answers: dict[str, list[str]]):
        self.mode = mode
        self.tokenizer = tokenizer
        self.answers = answers  # prompt key -> reference answers
        self.config = {"oracle": mode}
        self.last_stats: dict[str, Any] = {}

    def generate(self, prompts, *, max_new_tokens, eos_ids=None, stop=None, tokenizer=None) -> list[list[int]]:
        """New tokens per prompt (EOS-terminated), at most max_new_tokens[i] of them."""
        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        eos = sorted(eos_ids if eos_ids is not None else (self.tokenizer.eos_ids or []))
        out = []
        for ids, budget in zip(prompts, budgets):
            refs = self.answers.get(_key(ids))
            if refs is None:
                raise ConfigError("the oracle was given a prompt that is not one of its run's samples.")
            if self.mode == "correct":
                text = " ".join(refs)
            else:
                sym = next((c for c in _GARBAGE if not any(c in a for a in refs)), None)
                if sym is None:
                    raise ValueError("no garbage symbol is absent from a sample's answers")
                text = sym * 8
            new = list(self.tokenizer.encode(text))[:budget]
            out.append(new + eos[:1] if len(new) < budget else new)
        self.last_stats = {"prefill_tokens": sum(len(p) for p in prompts), "prefill_s": 0.0,
                           "decode_tokens": sum(len(o) for o in out), "decode_s": 0.0,
                           "peak_mem_bytes": 0, "cache_bytes": 0}
        return out


def load_oracle(config) -> tuple[OracleModel, Any]:
    """`oracle:correct[:TOKENIZER]` / `oracle:wrong[:TOKENIZER]` for the run `config` (a RunConfig)
    -> (model, tokenizer)."""
    from rattn_eval import tasks
    from rattn_eval.tokenizer import load_tokenizer
    from rattn_eval.runner.pipeline import samples_for, use_chat_template

    parts = config.model.split(":")
    if len(parts) not in (2, 3) or parts[1] not in MODES:
        raise ConfigError(f"unknown oracle {config.model!r}; use oracle:correct or oracle:wrong (optionally :TOKENIZER)")
    tok = load_tokenizer(parts[2] if len(parts) == 3 else "bytes")
    template = use_chat_template(config, tok)
    answers = {_key(tok.encode_prompt(s.input)): list(s.answers)
               for task in tasks.resolve(list(config.tasks)) for L in config.lengths
               for s in samples_for(config, task, L, tok, template)}
    return OracleModel(parts[1], tok, answers), tok
