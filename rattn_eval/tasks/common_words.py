"""Common words extraction (RULER's cwe): a numbered word list where 10 words occur far more
often than the rest; name those 10. One worked example precedes the question."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from rattn_eval.tasks import corpora
from rattn_eval.tasks.base import (RULER_HINT, Draft, Fitter, Sample, make_frame, prefix_sums, run_samples, sample_id,
                                   sample_seed, template_frame)

BUDGET = 120


@dataclass(frozen=True, kw_only=True)
class CWEConfig:
    num_common: int = 10
    freq_common: int = 30
    freq_uncommon: int = 3
    short_length: int = 4096  # below this, RULER lowers the frequencies so the list fits
    short_freq_common: int = 6
    short_freq_uncommon: int = 1
    tiny_length: int = 2048  # below this (our addition): no worked example, 3 repeats
    tiny_freq_common: int = 3
    max_new_tokens: int = BUDGET


INSTRUCTION = ("Below is a numbered list of words. A few of them occur much more often than the others; "
               "keep track of which.\n\n")


def _question(num: int) -> str:
    return f"\n\nQuestion: Which {num} words occur most often in the list above?"


def _prefix(num: int) -> str:
    return f"Answer: The {num} words that occur most often in the list are:"


def _listing(words: list[str]) -> str:
    return "\n".join(f"{j + 1}. {w}" for j, w in enumerate(words))


def _example(rng: random.Random, pool, cfg: CWEConfig, short: bool) -> str:
    picks = rng.sample(pool, cfg.num_common + (10 if short else 30))  # RULER: get_example(40, 10, 3)
    common, rare = picks[: cfg.num_common], picks[cfg.num_common:]
    words = common * (3 if short else 10) + rare * (1 if short else 3)
    rng.shuffle(words)
    return (INSTRUCTION + _listing(words) + _question(cfg.num_common) + "\n" + _prefix(cfg.num_common) + " "
            + ", ".join(common) + ".\n\n")


def word_list_draft(rng: random.Random, pool, n_ww: int, num_common: int, f_common: int, f_rare: int,
                    word_cost: dict[str, int], item_cost: int, layout):
    """One sample's word draw, shared by both profiles: (its `num_common` common words, a function
    frame -> Draft). The haystack unit is one uncommon word (all its repeats); the list of k units
    is shuffled by (sample, k) and written by `layout`."""
    # wonderwords first (clean dictionary words); essay words only extend the pool for long lengths
    words = rng.sample(pool[:n_ww], n_ww) + rng.sample(pool[n_ww:], len(pool) - n_ww)
    common, rare = words[:num_common], words[num_common:]
    order_seed = rng.getrandbits(64)
    pre = prefix_sums(f_rare * (word_cost[w] + item_cost) for w in rare)
    base = f_common * sum(word_cost[w] + item_cost for w in common)

    def render(k: int):
        items = common * f_common + rare[:k] * f_rare
        random.Random(order_seed + k).shuffle(items)
        return layout(items), []

    return common, lambda frame: Draft(frame, render, lambda k: base + pre[k], 0, len(rare))


def generate(cfg: CWEConfig, tokenizer, *, length: int, n: int, seed: int, task: str = "cwe",
             chat_template: str | None = None, depth: list[float] | None = None) -> list[Sample]:
    """Generate `n` common-words samples; the haystack unit is one uncommon word (all its repeats)."""
    fitter = Fitter(tokenizer, length=length, budget=cfg.max_new_tokens, task=task)
    pool = list(corpora.common_word_pool())
    n_ww = corpora.wonderwords_count()
    # RULER's regime by length: 30/3 repeats from 4k, 6/1 below. From 4k we step down only when
    # even the shortest prompt cannot fit; below 4k we step down further (3/1, no worked example,
    # our addition) while the shortest prompt would take over half the room, as with bytes at 1k-2k.
    regimes = [(cfg.freq_common, cfg.freq_uncommon, "full"), (cfg.short_freq_common, cfg.short_freq_uncommon, "short"),
               (cfg.tiny_freq_common, cfg.short_freq_uncommon, None)]
    r = 0 if length >= cfg.short_length else 1 if length >= cfg.tiny_length else 2
    probe = random.Random(0)
    while r < 2:
        f_c, _, kind = regimes[r]
        ex = _example(probe, pool[:n_ww], cfg, kind == "short")
        words = probe.sample(pool[:n_ww], cfg.num_common)
        smallest = len(tokenizer.encode(ex + INSTRUCTION + _listing(words * f_c) + _question(cfg.num_common)))
        room = length - cfg.max_new_tokens
        if smallest <= (room if r == 0 else 0.5 * room):
            break
        r += 1
    f_common, f_rare, kind = regimes[r]
    # one numbered line costs about its word plus the number, separator and newline
    word_cost = dict(zip(pool, corpora.unit_token_counts(tokenizer, "cwe-pool", [" " + w for w in pool])))
    line_overhead = len(tokenizer.encode("\n1234. x")) - len(tokenizer.encode(" x"))
    def one(i: int) -> Sample:
        rng = random.Random(sample_seed(task, length, seed, i))
        example = "" if kind is None else _example(rng, pool[:n_ww], cfg, kind == "short")
        common, draft = word_list_draft(rng, pool, n_ww, cfg.num_common, f_common, f_rare, word_cost, line_overhead,
                                        _listing)
        prefix = _prefix(cfg.num_common)
        frame = make_frame(tokenizer, chat_template, example + INSTRUCTION, _question(cfg.num_common), prefix)
        fitted = fitter.fit(lambda attempt: draft(frame), redraws=0)
        return Sample(
            index=i, id=sample_id(task, length, seed, i), task=task, length=length, input=fitted.text,
            answers=list(common), num_tokens=len(fitted.ids), max_new_tokens=cfg.max_new_tokens,
            answer_prefix=prefix, depth=None, answer_position=None, answer_positions=[], seed=seed,
        )
    return run_samples(one, n)


def _numbered(words: list[str]) -> str:
    """RULER's list layout: "1. apple 2. pear 3. plum"."""
    return " ".join(f"{j + 1}. {w}" for j, w in enumerate(words))


@lru_cache(maxsize=1)
def ruler_pool() -> tuple[tuple[str, ...], int]:
    """RULER's word set (wonderwords' nouns, adjectives and verbs as shipped, sorted), then other
    essay words for lengths that need more distinct words than that (RULER reads a larger English
    word list there, which no package ships); and how many come from wonderwords."""
    ww = corpora.wonderwords_raw()
    first = sorted(set(ww["noun"]) | set(ww["adjective"]) | set(ww["verb"]))
    extra = [w for w in corpora.common_word_pool() if w not in set(first)]
    return tuple(first + extra), len(first)


def generate_ruler(cfg: CWEConfig, text, tokenizer, *, length: int, n: int, seed: int, task: str = "cwe",
                   chat_template: str | None = None, depth: list[float] | None = None) -> list[Sample]:
    """Common words in RULER's words and layout (`text`: a `ruler_text.RulerText`): one line of
    numbered words; 30 / 3 repeats from 4k, 6 / 1 below (RULER's regimes); the worked example (40 words
    at 10 / 3, or 20 at 3 / 1 below 4k) precedes the question when the source has one. Sizing is this
    project's: prompt + budget in [0.95 L, L]."""
    fitter = Fitter(tokenizer, length=length, budget=cfg.max_new_tokens, task=task, hint=RULER_HINT)
    pool, n_ww = ruler_pool()
    short = length < cfg.short_length
    f_common, f_rare = ((cfg.short_freq_common, cfg.short_freq_uncommon) if short
                        else (cfg.freq_common, cfg.freq_uncommon))
    ex_words, ex_common, ex_rare = (20, 3, 1) if short else (40, 10, 3)
    word_cost = dict(zip(pool, corpora.unit_token_counts(tokenizer, "cwe-ruler-pool", [" " + w for w in pool])))
    item_overhead = len(tokenizer.encode(" 1234. x")) - len(tokenizer.encode(" x"))
    prefix = text.cwe_prefix

    def one(i: int) -> Sample:
        rng = random.Random(sample_seed(task, length, seed, i))
        example = ""
        if text.cwe_example:
            picks = rng.sample(pool[:n_ww], ex_words)
            items = picks[: cfg.num_common] * ex_common + picks[cfg.num_common:] * ex_rare
            rng.shuffle(items)
            shown = (text.cwe_template + text.cwe_example_prefix).format(context=_numbered(items), query="")
            example = shown + " " + _numbered(picks[: cfg.num_common]) + "\n"
        common, draft = word_list_draft(rng, pool, n_ww, cfg.num_common, f_common, f_rare, word_cost, item_overhead,
                                        _numbered)
        escaped = example.replace("{", "{{").replace("}", "}}")
        frame = template_frame(tokenizer, chat_template, escaped + text.cwe_template, prefix, text.cwe_delimiter,
                               query="")
        fitted = fitter.fit(lambda attempt: draft(frame), redraws=0)
        return Sample(
            index=i, id=sample_id(task, length, seed, i), task=task, length=length, input=fitted.text,
            answers=list(common), num_tokens=len(fitted.ids), max_new_tokens=cfg.max_new_tokens,
            answer_prefix=prefix, depth=None, answer_position=None, answer_positions=[], seed=seed,
        )
    return run_samples(one, n)
