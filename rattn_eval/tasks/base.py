"""Sample record, prompt framing and exact length fitting shared by every task family.

A family describes one sample as a `Draft`: the text before and after the haystack (already
wrapped in the chat template, answer prefix included) and a function that renders the
haystack for `k` units. `fit` then finds a `k` whose full prompt, measured with the real
tokenizer, plus the generation budget lands in [0.95 L, L]. Estimates come from per-unit
token counts; every accepted prompt is measured exactly with `count_prompt`.
"""

from __future__ import annotations

import copy
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

from rattn_eval.errors import ConfigError

# Version of the sample generators, recorded in config.json and in the sample cache key: samples of
# another version differ under the same ids. The native profile's samples have not changed since 3.
GENERATOR_VERSION = 4
NATIVE_GENERATOR_VERSION = 3
MIN_FILL = 0.95
# Appended to a sizing error of the `ruler` profile, whose fixed layouts need more room at short lengths.
RULER_HINT = "; RULER's layout needs more room than that (--prompts native fits shorter lengths)"
CONTEXT_MARK = "\ue000CONTEXT\ue000"  # a private-use placeholder no template or corpus contains


@dataclass
class Sample:
    """One prompt with its references; serialises to one JSON object (`to_dict`).

    Fields: index (0..n-1), id (stable, unique per task/length/seed/index), task, length
    (target L in tokens), input (full prompt: chat template and answer prefix included),
    answers (reference strings), num_tokens (len(tokenizer.encode_prompt(input))),
    max_new_tokens (generation budget), answer_prefix (the tail of `input` the model
    continues from), depth (requested needle depth in [0, 1], a list for tasks whose
    answers are spread, None where not applicable), answer_position (token index of the
    first answer-bearing needle or document, None where not applicable), answer_positions
    (all of them), seed.
    """

    index: int
    id: str
    task: str
    length: int
    input: str
    answers: list[str]
    num_tokens: int
    max_new_tokens: int
    answer_prefix: str
    depth: float | list[float] | None
    answer_position: int | None
    answer_positions: list[int] = field(default_factory=list)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        return cls(**d)


def sample_id(task: str, length: int, seed: int, index: int) -> str:
    return f"{task}/{length}/s{seed}/{index}"


def sample_seed(task: str, length: int, seed: int, index: int) -> str:
    """Seed of one sample's private RNG: samples do not depend on n, so n=10 is a prefix of n=100."""
    return f"rattn-eval|{task}|{length}|{seed}|{index}"


def default_depth(index: int) -> float:
    """Van der Corput sequence 0, 1/2, 1/4, 3/4, ...: every prefix of samples spreads evenly over depth."""
    d, base = 0.0, 0.5
    while index:
        if index & 1:
            d += base
        index >>= 1
        base /= 2
    return d


def depths_for(n: int, depth: list[float] | None) -> list[float]:
    """Requested needle depth of each sample: cycle through `depth` if given, else spread evenly."""
    if depth is None:
        return [default_depth(i) for i in range(n)]
    return [float(depth[i % len(depth)]) for i in range(n)]


@dataclass(frozen=True)
class Frame:
    """The prompt around the haystack: `head + context + tail`, tail ending with the answer prefix."""

    head: str
    tail: str
    answer_prefix: str


def make_frame(tokenizer, chat_template: str | None, before: str, after: str, answer_prefix: str,
               delimiter: str = "\n") -> Frame:
    """Wrap instruction + context + question as the user turn of `chat_template` (or plain text
    followed by `delimiter`) and append the answer prefix, where the model's reply starts."""
    user = before + CONTEXT_MARK + after
    if chat_template is None:
        text = user + delimiter + answer_prefix
    else:
        from rattn_eval.tokenizer import render_chat_template

        text = render_chat_template(chat_template, user, bos_token=getattr(tokenizer, "bos_token", None),
                                    eos_token=getattr(tokenizer, "eos_token", None)) + answer_prefix
    if text.count(CONTEXT_MARK) != 1:
        raise ConfigError("the chat template does not keep the user message intact; it cannot be used for tasks.")
    head, tail = text.split(CONTEXT_MARK)
    return Frame(head, tail, answer_prefix)


def template_frame(tokenizer, chat_template: str | None, template: str, answer_prefix: str, delimiter: str,
                   **fields) -> Frame:
    """`make_frame` for a `str.format` template holding one `{context}` field (RULER's templates). As
    lm-eval, the delimiter is left out where the question ends or the prefix starts with whitespace."""
    user = template.format(context=CONTEXT_MARK, **fields)
    if user.count(CONTEXT_MARK) != 1:
        raise ConfigError("a prompt template must hold exactly one {context} field.")
    if user[-1:].isspace() or answer_prefix[:1].isspace():
        delimiter = ""
    before, after = user.split(CONTEXT_MARK)
    return make_frame(tokenizer, chat_template, before, after, answer_prefix, delimiter)


def prompt_ids(tokenizer, text: str) -> list[int]:
    """encode_prompt when the tokenizer has it (BOS counted), else plain encode."""
    enc = getattr(tokenizer, "encode_prompt", None) or tokenizer.encode
    return enc(text)


def token_positions(tokenizer, text: str, char_positions: list[int], ids: list[int]) -> list[int]:
    """Token index of each character offset (the token that holds it) in the prompt `ids` of `text`."""
    many = getattr(tokenizer, "token_indices", None)
    if many is not None:
        return many(text, char_positions, ids)
    fn = getattr(tokenizer, "token_index", None)
    if fn is not None:
        return [fn(text, p, ids) for p in char_positions]
    return [len(prompt_ids(tokenizer, text[:p])) for p in char_positions]


@dataclass
class Draft:
    """One sample before sizing.

    render(k) -> (context, marks): the haystack with k units and the character offsets (in
    the context) of the answer-bearing needles. estimate(k): approximate token count of
    that context, non-decreasing in k. k_min..k_max: allowed unit counts.
    """

    frame: Frame
    render: Callable[[int], tuple[str, list[int]]]
    estimate: Callable[[int], float]
    k_min: int
    k_max: int
    # Fine filler appended after the haystack when its units are coarser than the 5 % window
    # (e.g. 50-token uuid lines at 1k) and no redraw of the sample fits.
    pad: tuple[str, ...] = ()


@dataclass
class Fitted:
    text: str
    ids: list[int]
    k: int
    marks: list[int]  # character offsets of answer-bearing needles in `text`


class Fitter:
    """Sizes drafts of one (task, length).

    The first sample calibrates the estimate (tokens outside the haystack, measured/estimated
    ratio); later samples each start from that calibration and refine a private copy, so a
    sample's text never depends on which other samples ran before it or in parallel.
    """

    def __init__(self, tokenizer, *, length: int, budget: int, task: str, hint: str = ""):
        self.tok, self.length, self.budget, self.task, self.hint = tokenizer, length, budget, task, hint
        self.hi = length - budget  # largest allowed prompt
        self.lo = math.ceil(MIN_FILL * length) - budget  # smallest allowed prompt
        if self.hi <= 0:
            raise ConfigError(f"length {length} is too small for {task}: its generation budget alone is {budget} "
                              f"tokens{hint}.")
        # aim slightly under the ceiling so that a small estimation error rarely costs a second encode
        self.margin = max(2, min(int(0.004 * length), (self.hi - self.lo) // 3))
        self.ratio = 1.0  # measured context tokens / estimated context tokens
        self.overhead: float | None = None  # measured tokens outside the estimated context
        self.encodes = 0

    def _build(self, d: Draft, k: int) -> tuple[str, list[int]]:
        context, marks = d.render(k)
        off = len(d.frame.head)
        return d.frame.head + context + d.frame.tail, [off + m for m in marks]

    def _measure(self, d: Draft, k: int):
        text, marks = self._build(d, k)
        self.encodes += 1
        return text, marks, prompt_ids(self.tok, text)

    def _pick(self, d: Draft, goal: float, lo_k: int, hi_k: int) -> int:
        """Largest k in [lo_k, hi_k] whose predicted prompt tokens stay <= goal (bisection on the estimate)."""
        assert self.overhead is not None
        a, b = lo_k, hi_k
        while a < b:
            mid = (a + b + 1) // 2
            if self.overhead + self.ratio * d.estimate(mid) <= goal:
                a = mid
            else:
                b = mid - 1
        return a

    def fit(self, make: Callable[[int], Draft], redraws: int = 12) -> Fitted:
        """Size the draft `make(0)`; if its units cannot hit the window, try the redraws
        `make(1)`, `make(2)`, ... (other random content), then pad the first draft."""
        if self.overhead is None:
            return self._fit(make, redraws)  # calibration: keeps what it learns
        return copy.copy(self)._fit(make, redraws)

    def _fit(self, make: Callable[[int], Draft], redraws: int) -> Fitted:
        first = None
        for attempt in range(redraws + 1):
            d = make(attempt)
            got = self._fit_units(d)
            if len(got.ids) >= self.lo:
                return got
            if first is None:
                first = (d, got)
        d, got = first
        if d.pad:
            padded = self._fit_pad(d, got)
            if padded is not None:
                return padded
        raise ConfigError(
            f"could not size {self.task} to length {self.length}: best prompt+budget was "
            f"{len(got.ids) + self.budget} tokens, outside [{self.lo + self.budget}, {self.length}] "
            f"(haystack units too coarse or corpus too small){self.hint}."
        )

    def _fit_pad(self, d: Draft, got: Fitted) -> Fitted | None:
        """Bisect the number of pad units appended after the haystack of `got.k` units."""
        context, marks = d.render(got.k)
        best = None
        a, b = 1, len(d.pad)
        while a <= b:
            j = (a + b) // 2
            text = d.frame.head + context + "".join(d.pad[:j]) + d.frame.tail
            ids = prompt_ids(self.tok, text)
            self.encodes += 1
            if len(ids) <= self.hi:
                best = Fitted(text, ids, got.k, [len(d.frame.head) + m for m in marks])
                if len(ids) >= self.lo:
                    return best
                a = j + 1
            else:
                b = j - 1
        return None

    def _fit_units(self, d: Draft) -> Fitted:
        if self.overhead is None:
            text, marks, ids = self._measure(d, d.k_min)
            c = len(ids)
            if c > self.hi:
                raise ConfigError(
                    f"length {self.length} is too small for {self.task}: the shortest prompt has {c} tokens "
                    f"plus {self.budget} to generate{self.hint}."
                )
            self.overhead = c - d.estimate(d.k_min)
        good: tuple[int, str, list[int], list[int]] | None = None  # largest measured k that fits
        hi_k = d.k_max  # no k above hi_k fits
        while True:
            lo_k = good[0] if good else d.k_min
            k = self._pick(d, self.hi - self.margin, lo_k, hi_k)
            if good is not None and k <= good[0]:  # the estimate says stop, but the prompt is still short
                if hi_k <= good[0]:
                    break
                k = (good[0] + hi_k + 1) // 2
            text, marks, ids = self._measure(d, k)
            c = len(ids)
            est = d.estimate(k)
            if est > 0:
                self.ratio = max(0.05, (c - self.overhead) / est)
            if c <= self.hi:
                good = (k, text, marks, ids)
                if c >= self.lo or k >= hi_k:
                    break
            else:
                hi_k = k - 1
                if hi_k < d.k_min:
                    raise ConfigError(
                        f"length {self.length} is too small for {self.task}: the shortest prompt has "
                        f"{c} tokens plus {self.budget} to generate{self.hint}."
                    )
        assert good is not None
        k, text, marks, ids = good
        return Fitted(text, ids, k, marks)


def run_samples(one: Callable[[int], Sample], n: int) -> list[Sample]:
    """[one(0), ..., one(n-1)]: sample 0 first (it calibrates the Fitter), the rest on a few
    threads; exact token counting runs in the tokenizer's native code, which releases the GIL."""
    if n <= 0:
        return []
    first = one(0)
    workers = min(n - 1, int(os.environ.get("RATTN_EVAL_GEN_THREADS", os.cpu_count() or 1)))
    if workers <= 1:
        return [first] + [one(i) for i in range(1, n)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [first] + list(pool.map(one, range(1, n)))


def prefix_sums(counts) -> list[int]:
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return out
