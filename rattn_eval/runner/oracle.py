"""Oracle models for testing the pipeline: `oracle:correct` answers every sample with its reference
answers, `oracle:wrong` with a string that contains none of them. Scored through the whole
pipeline they must give exactly 100 and 0 for every task, which checks prompt building, budgets,
decoding, EOS cutting, scoring and aggregation without trusting any real model.

The oracle answers from the sample itself (it cannot solve the tasks), so it implements
`generate_for_samples`, which the runner prefers when present. Names: `oracle:MODE` with the
`bytes` tokenizer, or `oracle:MODE:TOKENIZER` with any name `load_tokenizer` accepts.
"""

from __future__ import annotations

from typing import Any, Sequence

from rattn_eval.errors import ConfigError

MODES = ("correct", "wrong")
# Symbols tried for the wrong answer; one absent from every reference is used.
_GARBAGE = "#~^|@%"


class OracleModel:
    backend = "oracle"
    max_context = 1 << 24

    def __init__(self, mode: str, tokenizer: Any):
        self.mode = mode
        self.tokenizer = tokenizer
        self.config = {"oracle": mode}
        self.last_stats: dict[str, Any] = {}

    def generate(self, prompts, **kwargs):  # the runner never calls this for an oracle
        raise NotImplementedError("oracle models answer from samples: use generate_for_samples")

    def generate_for_samples(self, samples: Sequence[Any], *, max_new_tokens: Sequence[int]) -> list[list[int]]:
        """New tokens per sample (EOS-terminated), at most max_new_tokens[i] of them."""
        out = []
        for s, budget in zip(samples, max_new_tokens):
            if self.mode == "correct":
                text = " ".join(s.answers)
            else:
                sym = next((c for c in _GARBAGE if not any(c in a for a in s.answers)), None)
                if sym is None:
                    raise ValueError(f"no garbage symbol is absent from the answers of {s.id}")
                text = sym * 8
            ids = list(self.tokenizer.encode(text))[:budget]
            eos = list(getattr(self.tokenizer, "eos_ids", []) or [])
            out.append(ids + eos[:1] if len(ids) < budget else ids)
        self.last_stats = {"prefill_tokens": sum(s.num_tokens for s in samples), "prefill_s": 0.0,
                           "decode_tokens": sum(len(o) for o in out), "decode_s": 0.0,
                           "peak_mem_bytes": 0, "cache_bytes": 0}
        return out


def load_oracle(name: str) -> tuple[OracleModel, Any]:
    """`oracle:correct[:TOKENIZER]` / `oracle:wrong[:TOKENIZER]` -> (model, tokenizer)."""
    from rattn_eval.models import load_tokenizer

    parts = name.split(":")
    if len(parts) not in (2, 3) or parts[1] not in MODES:
        raise ConfigError(f"unknown oracle {name!r}; use oracle:correct or oracle:wrong (optionally :TOKENIZER)")
    tok = load_tokenizer(parts[2] if len(parts) == 3 else "bytes")
    return OracleModel(parts[1], tok), tok
