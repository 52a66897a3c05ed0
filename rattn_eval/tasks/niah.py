"""Needle in a haystack (RULER's niah_* tasks): find the special magic values hidden for a key.

Haystacks: `noise` (a repeated block of plain statements), `essay` (Paul Graham essays, sized
in words, needles at sentence ends) or `needle` (every line is a distractor needle).

Prompt + budget must land in [0.95 L, L]. Where whole units are too coarse for that window (short
lengths: a `needle` line of two UUIDs is ~40-50 tokens against a 50-token window at 1k), the lines are
redrawn up to 12 times, and failing that a few filler words follow the last unit to close the gap
(RULER has no lower bound and would leave such a prompt short instead).
"""

from __future__ import annotations

import bisect
import random
import uuid
from dataclasses import dataclass

from rattn_eval.tasks import corpora, ruler_text
from rattn_eval.tasks.base import (RULER_HINT, Draft, Fitter, Sample, depths_for, make_frame, prefix_sums, run_samples,
                                   sample_id, sample_seed, template_frame, token_positions)

BUDGET = 128


@dataclass(frozen=True, kw_only=True)
class NiahConfig:
    haystack: str  # "noise" | "essay" | "needle"
    key_type: str = "words"  # "words" | "uuids"
    value_type: str = "numbers"  # "numbers" | "words" | "uuids"
    num_keys: int = 1  # needles with distinct keys (distractors included)
    num_values: int = 1  # values per queried key
    num_queries: int = 1  # keys asked for at once
    max_new_tokens: int = BUDGET


_NOUN = {"numbers": "number", "words": "word", "uuids": "uuid"}


def _draw(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    ww = corpora.wonderwords_lists()
    return f"{rng.choice(ww['adjective'])}-{rng.choice(ww['noun'])}"


def _distinct(rng: random.Random, kind: str, count: int, taken: set[str], draw=_draw) -> list[str]:
    out = []
    while len(out) < count:
        x = draw(rng, kind)
        if x not in taken:
            taken.add(x)
            out.append(x)
    return out


def _needle(cfg: NiahConfig, key: str, value: str) -> str:
    return f"One special magic {_NOUN[cfg.value_type]} for {key} is: {value}."


def _join_keys(keys: list[str]) -> str:
    if len(keys) == 1:
        return keys[0]
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def _templates(cfg: NiahConfig, query: str) -> tuple[str, str, str]:
    noun = _NOUN[cfg.value_type]
    if cfg.num_queries * cfg.num_values == 1:
        before = (f"A special magic {noun} is hidden in the text below. Memorize it; "
                  f"afterwards I will ask you about it.\n\n")
        after = f"\n\nWhat is the special magic {noun} for {query} mentioned in the text above?"
        prefix = f"The special magic {noun} for {query} mentioned in the text above is"
    else:
        before = (f"Some special magic {noun}s are hidden in the text below. Memorize them; "
                  f"afterwards I will ask you about them.\n\n")
        after = f"\n\nWhat are all the special magic {noun}s for {query} mentioned in the text above?"
        prefix = f"The special magic {noun}s for {query} mentioned in the text above are"
    return before, after, prefix


def _place(depth: float, k: int, boundaries: list[int] | None) -> int:
    """Unit index at which a needle at `depth` goes: round(depth * k), snapped to a sentence end when given."""
    target = depth * k
    if boundaries is None:
        return min(k, max(0, round(target)))

    i = bisect.bisect_right(boundaries, k)
    cands = [0, k] + boundaries[max(0, bisect.bisect_left(boundaries, target) - 1):i][:2]
    return min(cands, key=lambda b: (abs(b - target), b))


def generate(cfg: NiahConfig, tokenizer, *, length: int, n: int, seed: int, task: str = "niah",
             chat_template: str | None = None, depth: list[float] | None = None) -> list[Sample]:
    """Generate `n` needle-in-a-haystack samples of `length` tokens (prompt + budget in [0.95 L, L])."""
    fitter = Fitter(tokenizer, length=length, budget=cfg.max_new_tokens, task=task)
    depths = depths_for(n, depth)
    if cfg.haystack == "essay":
        units, ends = corpora.essay_units()
        counts = corpora.unit_token_counts(tokenizer, "essays", units)
        reps = 1 + (2 * length) // max(1, sum(counts))  # repeat the essays when L exceeds them
        all_units = list(units) * reps
        all_ends = [e + r * len(units) for r in range(reps) for e in ends]
        pre = prefix_sums(counts * reps)
    elif cfg.haystack == "noise":
        blocks, per_block = corpora.noise_blocks(tokenizer, length)
    def one(i: int) -> Sample:
        rng = random.Random(sample_seed(task, length, seed, i))
        num_keys = max(cfg.num_keys, cfg.num_queries)
        taken: set[str] = set()
        keys = _distinct(rng, cfg.key_type, num_keys, taken)
        values = [_distinct(rng, cfg.value_type, cfg.num_values if j < cfg.num_queries else 1, set()) for j in range(num_keys)]
        queried = keys[: cfg.num_queries]
        gold = [_needle(cfg, keys[j], v) for j in range(cfg.num_queries) for v in values[j]]
        distract = [_needle(cfg, keys[j], values[j][0]) for j in range(cfg.num_queries, num_keys)]
        answers = [v for j in range(cfg.num_queries) for v in values[j]]
        # The first gold needle goes at the requested depth, all others at random depths.
        needles = [(depths[i], 0, gold[0])] + [(rng.random(), 1 + j, t) for j, t in enumerate(gold[1:] + distract)]
        needles.sort()
        n_gold = len(gold)
        before, after, prefix = _templates(cfg, _join_keys(queried))
        frame = make_frame(tokenizer, chat_template, before, after, prefix)

        def make(attempt: int, rng_state=rng.getstate(), taken=taken, needles=needles, n_gold=n_gold, frame=frame):
            if cfg.haystack == "needle":
                # every haystack line is a needle for a fresh key, never one of the keys above
                r = random.Random()
                r.setstate(rng_state)
                if attempt:
                    r.seed(f"{sample_seed(task, length, seed, i)}|redraw{attempt}")
                used = set(taken)
                lines = ["\n" + _needle(cfg, k_, _draw(r, cfg.value_type)) for k_ in _distinct(r, cfg.key_type, 32, used)]
                per_line = sum(len(tokenizer.encode(t)) for t in lines) / len(lines)
                max_lines = int(1.5 * length / per_line) + 16
                lines += ["\n" + _needle(cfg, k_, _draw(r, cfg.value_type))
                          for k_ in _distinct(r, cfg.key_type, max_lines - len(lines), used)]
                return Draft(frame, _line_renderer(lines, needles, n_gold), lambda k: per_line * k, 0, len(lines),
                             pad=corpora.PAD_WORDS)
            if cfg.haystack == "noise":
                return Draft(frame, _line_renderer(blocks, needles, n_gold, sep=" "), lambda k: per_block * k,
                             0, len(blocks), pad=corpora.PAD_WORDS[1:])
            return Draft(frame, _essay_renderer(all_units, all_ends, needles, n_gold), lambda k: pre[k],
                         0, len(all_units))

        fitted = fitter.fit(make)
        positions = token_positions(tokenizer, fitted.text, fitted.marks, fitted.ids)
        return Sample(
            index=i, id=sample_id(task, length, seed, i), task=task, length=length, input=fitted.text,
            answers=answers, num_tokens=len(fitted.ids), max_new_tokens=cfg.max_new_tokens, answer_prefix=prefix,
            depth=depths[i], answer_position=positions[0], answer_positions=positions, seed=seed,
        )
    return run_samples(one, n)


def _line_renderer(units: list[str], needles, n_gold: int, sep: str = "\n"):
    """Haystack of the first k units with needles between units at round(depth * k).

    Returns render(k) -> (context, char offsets of the gold needles, primary first)."""

    def render(k: int):
        parts: list[str] = []
        marks = [0] * n_gold
        size = 0
        nxt = 0
        for d, tag, text in needles:
            at = min(k, max(0, round(d * k)))
            if at > nxt:
                chunk = "".join(units[nxt:at])
                parts.append(chunk)
                size += len(chunk)
                nxt = at
            piece = (sep if size else "") + text
            if tag < n_gold:
                marks[tag] = size + (len(sep) if size else 0)
            parts.append(piece)
            size += len(piece)
        parts.append("".join(units[nxt:k]))
        context = "".join(parts)
        if context[:1] in ("\n", " "):  # the first unit's separator would open the context with whitespace
            context = context[1:]
            marks = [max(0, m - 1) for m in marks]
        return context, marks

    return render


def _essay_renderer(units: list[str], ends: list[int], needles, n_gold: int):
    """First k essay words, needles inserted at the sentence end nearest to each depth."""

    def render(k: int):
        placed = sorted((_place(d, k, ends), tag, text) for d, tag, text in needles)
        parts: list[str] = []
        marks = [0] * n_gold
        size = 0
        nxt = 0
        for i, (at, tag, text) in enumerate(placed):
            if at > nxt:
                chunk = "".join(units[nxt:at])
                parts.append(chunk)
                size += len(chunk)
                nxt = at
            lead = " " if size else ""
            # the last needle before a word that brings no leading space of its own (the text's first)
            last_here = i + 1 == len(placed) or placed[i + 1][0] > at
            trail = " " if last_here and nxt < k and not units[nxt][:1].isspace() else ""
            if tag < n_gold:
                marks[tag] = size + len(lead)
            piece = lead + text + trail
            parts.append(piece)
            size += len(piece)
        parts.append("".join(units[nxt:k]))
        context = "".join(parts)
        stripped = context.lstrip()
        cut = len(context) - len(stripped)
        return stripped, [max(0, m - cut) for m in marks]

    return render


def _ruler_draw(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return corpora.ruler_key_word(rng)


def generate_ruler(cfg: NiahConfig, text, tokenizer, *, length: int, n: int, seed: int, task: str = "niah",
                   chat_template: str | None = None, depth: list[float] | None = None) -> list[Sample]:
    """NIAH samples in RULER's words (`text`: a `ruler_text.RulerText`) and with RULER's sampling:
    needles shuffled by RULER's fixed seed, essay needles at depths drawn from RULER's 40 and placed
    between sentences of a whitespace-collapsed essay, noise / needle haystacks as lines with needles
    at random lines, the queried keys drawn at random. `depth` (optional) pins the first answer's
    needle. Sizing is this project's: prompt + budget in [0.95 L, L]."""
    fitter = Fitter(tokenizer, length=length, budget=cfg.max_new_tokens, task=task, hint=RULER_HINT)
    num_keys = max(cfg.num_keys, cfg.num_queries)
    template, prefix_t, noun = text.niah_template, text.niah_prefix, cfg.value_type
    if cfg.num_queries * cfg.num_values == 1:
        template, prefix_t, noun = ruler_text.singular(template), ruler_text.singular(prefix_t), noun[:-1]
    if cfg.haystack == "essay":
        words, ends = corpora.essay_words()
        counts = corpora.unit_token_counts(tokenizer, "essay-words", [" " + w for w in words])
        reps = 1 + (2 * length) // max(1, sum(counts))  # repeat the essays when L exceeds them
        all_words = list(words) * reps
        all_ends = [e + r * len(words) for r in range(reps) for e in ends]
        pre = prefix_sums(counts * reps)
    elif cfg.haystack == "noise":
        per_line = len(tokenizer.encode("\n" + text.noise))
        noise_lines = [text.noise] * max(8, 2 * length // max(1, per_line))
    pad = corpora.pad_words(text.noise, "\n") if cfg.haystack != "essay" else ()

    def one(i: int) -> Sample:
        rng = random.Random(sample_seed(task, length, seed, i))
        taken: set[str] = set()
        keys = _distinct(rng, cfg.key_type, num_keys, taken, _ruler_draw)
        values = [[_ruler_draw(rng, cfg.value_type) for _ in range(cfg.num_values)] for _ in keys]
        needles = [(text.needle.format(type_needle_v=cfg.value_type, key=keys[j], value=v), j, m)
                   for j in range(num_keys) for m, v in enumerate(values[j])]
        random.Random(ruler_text.FIXED_SEED).shuffle(needles)
        queried = rng.sample(range(num_keys), cfg.num_queries)
        answers = [v for j in queried for v in values[j]]
        # gold tag of each needle: its answer's index in `answers` (the first answer is the primary one)
        gold_of = {(j, m): q * cfg.num_values + m for q, j in enumerate(queried) for m in range(cfg.num_values)}
        primary = next(x for x, nd in enumerate(needles) if gold_of.get((nd[1], nd[2])) == 0)
        if cfg.haystack == "essay":
            spots = sorted(float(d) for d in rng.sample(ruler_text.DEPTHS, len(needles)))
        else:  # RULER: distinct random lines, the largest index for the first needle
            spots = sorted((100 * rng.random() for _ in needles), reverse=True)
        if depth is not None:
            spots[primary] = 100 * float(depth[i % len(depth)])
        placed = [(spots[x], nd[0], gold_of.get((nd[1], nd[2]))) for x, nd in enumerate(needles)]
        query = _join_keys([keys[j] for j in queried])
        frame = template_frame(tokenizer, chat_template, template, prefix_t.format(type_needle_v=noun, query=query),
                               text.niah_delimiter, type_needle_v=noun, query=query)

        def make(attempt: int, rng_state=rng.getstate(), taken=taken, placed=placed, frame=frame):
            if cfg.haystack == "essay":
                return Draft(frame, _ruler_essay(all_words, all_ends, placed, len(answers)), lambda k: pre[k],
                             1, len(all_words))
            if cfg.haystack == "noise":
                lines = noise_lines
                est = per_line
            else:  # every line a needle for a fresh key and value; a redraw takes other ones
                r = random.Random()
                r.setstate(rng_state)
                if attempt:
                    r.seed(f"{sample_seed(task, length, seed, i)}|redraw{attempt}")
                used = set(taken)
                first = [text.needle.format(type_needle_v=cfg.value_type, key=k_, value=_ruler_draw(r, cfg.value_type))
                         for k_ in _distinct(r, cfg.key_type, 32, used, _ruler_draw)]
                est = sum(len(tokenizer.encode("\n" + t)) for t in first) / len(first)
                more = int(1.5 * length / est) + 16 - len(first)
                lines = first + [text.needle.format(type_needle_v=cfg.value_type, key=k_,
                                                    value=_ruler_draw(r, cfg.value_type))
                                 for k_ in _distinct(r, cfg.key_type, max(0, more), used, _ruler_draw)]
            return Draft(frame, _ruler_lines(lines, placed, len(answers)), lambda k, e=est: e * k, 0, len(lines),
                         pad=pad)

        fitted = fitter.fit(make)
        positions = token_positions(tokenizer, fitted.text, fitted.marks, fitted.ids)
        return Sample(
            index=i, id=sample_id(task, length, seed, i), task=task, length=length, input=fitted.text,
            answers=answers, num_tokens=len(fitted.ids), max_new_tokens=cfg.max_new_tokens,
            answer_prefix=frame.answer_prefix,
            depth=round(spots[primary] / 100, 6), answer_position=positions[0], answer_positions=positions, seed=seed,
        )
    return run_samples(one, n)


def _marks_of(pieces: list[tuple[str, int | None]], sep: str, n_gold: int) -> tuple[str, list[int]]:
    """Join (text, gold tag) pieces with `sep`; the character offset of each gold tag's piece."""
    marks = [0] * n_gold
    size = 0
    for j, (t, tag) in enumerate(pieces):
        if j:
            size += len(sep)
        if tag is not None:
            marks[tag] = size
        size += len(t)
    return sep.join(t for t, _ in pieces), marks


def _ruler_lines(lines: list[str], placed, n_gold: int):
    """RULER's line haystack: the first k lines, each needle inserted before line int(depth * k),
    insertions in descending order of line (as RULER does), joined by newlines."""

    def render(k: int):
        rows: list[tuple[str, int | None]] = [(t, None) for t in lines[:k]]
        for d, t, tag in sorted(placed, key=lambda p: -p[0]):
            rows.insert(min(k, int(d / 100 * k)), (t, tag))
        return _marks_of(rows, "\n", n_gold)

    return render


def _ruler_essay(words: list[str], ends: list[int], placed, n_gold: int):
    """RULER's essay haystack: the first k words; the needle at depth d goes after sentence
    int(S * d / 100) of the S sentences; sentence runs and needles joined by single spaces (an empty
    run between two needles at one spot leaves the double space RULER leaves)."""

    def render(k: int):
        cut = bisect.bisect_left(ends, k)
        bounds = [0] + list(ends[:cut]) + [k]  # word offsets of sentence starts, then the end
        sents = len(bounds) - 1
        order = sorted(placed, key=lambda p: p[0])
        at = [0] + [int(sents * (d / 100)) for d, _, _ in order] + [sents]
        pieces: list[tuple[str, int | None]] = []
        for j in range(1, len(at)):
            pieces.append((" ".join(words[bounds[at[j - 1]]:bounds[at[j]]]), None))
            if j - 1 < len(order):
                pieces.append((order[j - 1][1], order[j - 1][2]))
        return _marks_of(pieces, " ", n_gold)

    return render
