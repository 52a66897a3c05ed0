"""What the runner needs of a model and a tokenizer. Native models (`models.Model`), the `hf`
backend (`models.hf.HFModel`) and the oracle pipeline checks (`runner.oracle`) implement `Model`; every
`rattn_eval.tokenizer.Tokenizer` implements `Tokenizer`."""

from __future__ import annotations

from typing import Any, Protocol, Sequence


class Tokenizer(Protocol):
    name: str
    eos_ids: set[int]
    chat_template: str | None  # jinja source, or None

    def encode(self, text: str) -> list[int]: ...

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids the model is given for a prompt (BOS included where the tokenizer adds one)."""

    def decode(self, ids: Sequence[int]) -> str: ...


class Model(Protocol):
    backend: str  # the backend that runs: "triton", "torch", "hf" (or "oracle")
    max_context: int  # tokens a prompt plus its generation budget may take
    last_stats: dict[str, Any]  # timings of the last generate call (prefill_s, decode_s, ...)

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int | list[int], eos_ids=None, stop=None,
                 tokenizer: Tokenizer | None = None) -> list[list[int]]:
        """Greedy continuation of each prompt: at most max_new_tokens[i] new ids, ending at EOS."""
