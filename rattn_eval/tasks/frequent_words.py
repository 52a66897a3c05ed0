"""Frequent words extraction (RULER's fwe): coded words drawn with Zipf-like frequencies
(alpha = 2); name the three most frequent, ignoring the '....' filler token."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from rattn_eval.tasks.base import (RULER_HINT, Draft, Fitter, Sample, make_frame, run_samples, sample_id, sample_seed,
                                   template_frame)

BUDGET = 50
NOISE_TOKEN = "...."


@dataclass(frozen=True, kw_only=True)
class FWEConfig:
    alpha: float = 2.0
    vocab_per_tokens: int = 50  # RULER: vocabulary size = L // 50
    word_len: int = 6
    top: int = 3
    max_new_tokens: int = BUDGET


INSTRUCTION = ("Read the coded text below and keep count of how often each coded word occurs. "
               "You will be asked for the three most frequent ones.\n\n")
QUESTION = (f"\n\nQuestion: Ignore the dots '{NOISE_TOKEN}' and give no explanation. "
            "Which three coded words occur most often in the coded text above?")
PREFIX = "Answer: The three most frequent coded words in the text above are:"


def _zeta(alpha: float, terms: int = 100_000) -> float:
    return sum(r ** -alpha for r in range(1, terms + 1))


def rank_powers(vocab_size: int, alpha: float) -> list[float]:
    """rank^-alpha for ranks 1..vocab_size, computed once per task and length."""
    return [(r + 1) ** -alpha for r in range(vocab_size)]


def counts_for(num_words: int, powers: list[float], zeta: float) -> list[int]:
    """Occurrences of each vocabulary rank: num_words * rank^-alpha / zeta(alpha), rounded down."""
    return [int(num_words * p / zeta) for p in powers]


def unique_top_min(cfg: FWEConfig, powers: list[float], zeta: float) -> int:
    """Smallest word count for which ranks 1..top+1 have strictly decreasing counts (a unique top 3)."""
    k_min = 1
    while True:
        c = counts_for(k_min, powers[: cfg.top + 2], zeta)
        if c[cfg.top] > c[cfg.top + 1] and all(c[j] > c[j + 1] for j in range(1, cfg.top)):
            return k_min
        k_min = int(k_min * 1.2) + 1


def coded_text_draft(frame, tokenizer, vocab: list[str], powers: list[float], zeta: float, k_min: int, length: int,
                     shuffle_seed) -> Draft:
    """The haystack of one sample: k word occurrences with Zipf counts over `vocab` (by rank), in the
    order `random.Random(shuffle_seed(k))` gives them, joined by spaces."""
    cost = [len(tokenizer.encode(" " + w)) for w in vocab]

    def render(k: int):
        words = [w for w, m in zip(vocab, counts_for(k, powers, zeta)) for _ in range(m)]
        random.Random(shuffle_seed(k)).shuffle(words)
        return " ".join(words), []

    def estimate(k: int):
        return sum(m * t for m, t in zip(counts_for(k, powers, zeta), cost))

    return Draft(frame, render, estimate, k_min, 64 * length)


def generate(cfg: FWEConfig, tokenizer, *, length: int, n: int, seed: int, task: str = "fwe",
             chat_template: str | None = None, depth: list[float] | None = None) -> list[Sample]:
    """Generate `n` frequent-words samples; the haystack unit is one coded word occurrence."""
    fitter = Fitter(tokenizer, length=length, budget=cfg.max_new_tokens, task=task)
    vocab_size = max(cfg.top + 2, length // cfg.vocab_per_tokens)
    zeta = _zeta(cfg.alpha)
    powers = rank_powers(vocab_size, cfg.alpha)
    frame = make_frame(tokenizer, chat_template, INSTRUCTION, QUESTION, PREFIX)
    k_min = unique_top_min(cfg, powers, zeta)

    def one(i: int) -> Sample:
        rng = random.Random(sample_seed(task, length, seed, i))
        vocab = {NOISE_TOKEN: None}
        while len(vocab) < vocab_size:
            vocab.setdefault("".join(rng.choices(string.ascii_lowercase, k=cfg.word_len)))
        vocab = list(vocab)  # rank 0 is the filler, ranks 1..3 are the answers
        order_seed = rng.getrandbits(64)
        draft = coded_text_draft(frame, tokenizer, vocab, powers, zeta, k_min, length, lambda k: order_seed + k)
        fitted = fitter.fit(lambda attempt: draft, redraws=0)
        return Sample(
            index=i, id=sample_id(task, length, seed, i), task=task, length=length, input=fitted.text,
            answers=vocab[1: 1 + cfg.top], num_tokens=len(fitted.ids), max_new_tokens=cfg.max_new_tokens,
            answer_prefix=PREFIX, depth=None, answer_position=None, answer_positions=[], seed=seed,
        )
    return run_samples(one, n)


def generate_ruler(cfg: FWEConfig, text, tokenizer, *, length: int, n: int, seed: int, task: str = "fwe",
                   chat_template: str | None = None, depth: list[float] | None = None) -> list[Sample]:
    """Frequent words in RULER's words and layout (`text`: a `ruler_text.RulerText`): a vocabulary of
    L // 50 coded words ((L - budget) // 50 for a RULER checkout) in RULER's fixed-seed order with rank
    0 replaced by the source's dots token, Zipf counts, the words shuffled by RULER's fixed seed and
    joined by spaces. Sizing is this project's: prompt + budget in [0.95 L, L]."""
    from rattn_eval.tasks.ruler_text import FIXED_SEED

    fitter = Fitter(tokenizer, length=length, budget=cfg.max_new_tokens, task=task, hint=RULER_HINT)
    room = length - cfg.max_new_tokens if text.fwe_vocab_of_room else length
    vocab_size = max(cfg.top + 2, room // cfg.vocab_per_tokens)
    zeta = _zeta(cfg.alpha)
    powers = rank_powers(vocab_size, cfg.alpha)
    prefix = text.fwe_prefix
    frame = template_frame(tokenizer, chat_template, text.fwe_template, prefix, text.fwe_delimiter, query="")
    k_min = unique_top_min(cfg, powers, zeta)

    def one(i: int) -> Sample:
        rng = random.Random(sample_seed(task, length, seed, i))
        vocab = {"".join(rng.choices(string.ascii_lowercase, k=cfg.word_len)) for _ in range(vocab_size)}
        while len(vocab) < vocab_size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=cfg.word_len)))
        vocab = sorted(vocab)
        random.Random(FIXED_SEED).shuffle(vocab)
        vocab[0] = text.fwe_noise  # rank 0 is noise; ranks 1..3 are the answers
        draft = coded_text_draft(frame, tokenizer, vocab, powers, zeta, k_min, length, lambda k: FIXED_SEED)
        fitted = fitter.fit(lambda attempt: draft, redraws=0)
        return Sample(
            index=i, id=sample_id(task, length, seed, i), task=task, length=length, input=fitted.text,
            answers=vocab[1: 1 + cfg.top], num_tokens=len(fitted.ids), max_new_tokens=cfg.max_new_tokens,
            answer_prefix=prefix, depth=None, answer_position=None, answer_positions=[], seed=seed,
        )
    return run_samples(one, n)
