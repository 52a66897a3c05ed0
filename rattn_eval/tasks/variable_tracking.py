"""Variable tracking (RULER's vt): follow a chain of assignments hidden in noise and list every
variable that ends up holding the value. One worked example precedes the question."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from rattn_eval.tasks import corpora
from rattn_eval.tasks.base import (RULER_HINT, Draft, Fitter, Sample, make_frame, run_samples, sample_id, sample_seed,
                                   template_frame, token_positions)
from rattn_eval.tasks.niah import _line_renderer

BUDGET = 30


@dataclass(frozen=True, kw_only=True)
class VTConfig:
    num_chains: int = 1
    num_hops: int = 4
    example_blocks: int = 6  # noise blocks around the worked example's chain (fewer below 8k, none below 2k)
    max_new_tokens: int = BUDGET


INSTRUCTION = "Keep track of the chains of variable assignments hidden in the text below.\n\n"


def _question(value: str) -> str:
    return f"\n\nQuestion: Which variables are assigned the value {value} in the text above? List all of them."


def _prefix(num: int, value: str) -> str:
    return f"Answer: Following the assignments in the text above, {num} variables are assigned the value {value}, namely:"


def _chains(rng: random.Random, cfg: VTConfig) -> tuple[list[list[str]], list[str], list[str]]:
    """Statements of each chain (in order), the variables of the first chain, and its value."""
    names: set[str] = set()
    chains, values = [], []
    for _ in range(cfg.num_chains):
        chain = []
        while len(chain) < cfg.num_hops + 1:
            v = "".join(rng.choices(string.ascii_uppercase, k=5))
            if v not in names:
                names.add(v)
                chain.append(v)
        value = str(rng.randint(10000, 99999))
        while value in values:
            value = str(rng.randint(10000, 99999))
        values.append(value)
        stmts = [f"VAR {chain[0]} = {value}."] + [f"VAR {chain[j + 1]} = VAR {chain[j]}." for j in range(cfg.num_hops)]
        chains.append((stmts, chain))
    return [c[0] for c in chains], chains[0][1], values


def _spots(rng: random.Random, stmts: list[list[str]]) -> list[float]:
    """A depth per statement, in the order of `stmts` flattened: each chain takes its own sorted draws
    (RULER inserts every chain at sorted random positions), so each assignment comes after the one it
    copies, while different chains interleave."""
    return [d for c in stmts for d in sorted(rng.random() for _ in c)]


def _example(rng: random.Random, cfg: VTConfig, length: int) -> str:
    """A short worked example, built like the question: noise with the chains in order, the question
    and its answer."""
    stmts, chain, values = _chains(rng, cfg)
    flat = [s for c in stmts for s in c]
    k = 0 if length < 2048 else min(cfg.example_blocks, 2) if length < 8192 else cfg.example_blocks
    spots = _spots(rng, stmts)
    needles = sorted((spots[j], j, flat[j]) for j in range(len(flat)))  # by depth; ties keep chain order
    context, _ = _line_renderer([" " + corpora.NOISE_BLOCK] * k, needles, 0, sep=" ")(k)
    return INSTRUCTION + context + _question(values[0]) + "\n" + _prefix(len(chain), values[0]) + " " + " ".join(chain) + ".\n\n"


def generate(cfg: VTConfig, tokenizer, *, length: int, n: int, seed: int, task: str = "vt",
             chat_template: str | None = None, depth: list[float] | None = None) -> list[Sample]:
    """Generate `n` variable-tracking samples; `depth` is not used (statements go at random depths)."""
    fitter = Fitter(tokenizer, length=length, budget=cfg.max_new_tokens, task=task)
    blocks, per_block = corpora.noise_blocks(tokenizer, length)
    def one(i: int) -> Sample:
        rng = random.Random(sample_seed(task, length, seed, i))
        example = _example(rng, cfg, length)
        stmts, chain, values = _chains(rng, cfg)
        spots = _spots(rng, stmts)  # chain statements keep their order: each assignment follows the one it copies
        flat = [s for c in stmts for s in c]
        needles = sorted((spots[j], j, flat[j]) for j in range(len(flat)))  # by depth; ties keep chain order
        n_gold = len(stmts[0])
        prefix = _prefix(len(chain), values[0])
        frame = make_frame(tokenizer, chat_template, example + INSTRUCTION, _question(values[0]), prefix)
        make = lambda attempt, needles=needles, frame=frame, n_gold=n_gold: Draft(  # noqa: E731
            frame, _line_renderer(blocks, needles, n_gold, sep=" "), lambda k: per_block * k, 0, len(blocks),
            pad=corpora.PAD_WORDS[1:])
        fitted = fitter.fit(make, redraws=0)
        positions = token_positions(tokenizer, fitted.text, fitted.marks, fitted.ids)
        return Sample(
            index=i, id=sample_id(task, length, seed, i), task=task, length=length, input=fitted.text,
            answers=list(chain), num_tokens=len(fitted.ids), max_new_tokens=cfg.max_new_tokens, answer_prefix=prefix,
            depth=[round(spots[j], 6) for j in range(n_gold)], answer_position=positions[0],
            answer_positions=positions, seed=seed,
        )
    return run_samples(one, n)


EXAMPLE_TOKENS = 500  # the `ruler` profile's worked example fits in 500 tokens (RulerText says how they count)


def _ruler_chain(rng: random.Random, text, hops: int, letters: int, taken: set[str]) -> tuple[list[str], list[str], str]:
    """(statements, variables, value) of one chain in RULER's statement formats."""
    names = []
    while len(names) < hops + 1:
        v = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if v not in taken:
            taken.add(v)
            names.append(v)
    value = str(rng.randint(10000, 99998))  # RULER: numpy's randint(10000, 99999), the top excluded
    stmts = [text.vt_value.format(name=names[0], value=value)]
    stmts += [text.vt_copy.format(name=names[j + 1], src=names[j]) for j in range(hops)]
    return stmts, names, value


def _ruler_context(text, noise_lines: int, chains: list[list[str]], seeds: list[int], n_gold: int):
    """RULER's layout: noise lines, each chain's statements inserted before distinct random lines in
    order (each after the one it copies; `seeds` fixes the draw per chain and size), all joined by the
    source's joiner. Returns (context, offsets of the first chain's statements)."""
    rows: list[tuple[str, int | None]] = [(text.vt_noise, None)] * noise_lines
    for c, (stmts, s) in enumerate(zip(chains, seeds)):
        size = len(rows)
        r = random.Random(f"{s}|{size}")
        at = sorted(r.sample(range(size), len(stmts)) if size >= len(stmts) else r.choices(range(max(1, size)),
                                                                                           k=len(stmts)))
        for j, (p, s) in enumerate(zip(at, stmts)):
            rows.insert(p + j, (s, j if c == 0 and j < n_gold else None))
    context, marks = "", [0] * n_gold
    for j, (t, tag) in enumerate(rows):
        if j:
            context += text.vt_joiner
        if tag is not None:
            marks[tag] = len(context)
        context += t
    # RULER's clean-up of a statement that ends a noise line; offsets before each change shift back
    fixed, shift, pos = [], [], 0
    while True:
        q = context.find(". \n", pos)
        if q < 0:
            break
        fixed.append(context[pos:q] + ".\n")
        shift.append(q + 1)
        pos = q + 3
    fixed.append(context[pos:])
    marks = [m - sum(1 for s in shift if s < m) for m in marks]
    return "".join(fixed), marks


def _ruler_example(rng: random.Random, text, cfg: VTConfig, noise_lines: int) -> tuple[str, str]:
    """The worked example as RULER builds it: a short chain of 3-letter variables in noise, the
    question and the answer prefix as the source spells it; and its answer."""
    taken: set[str] = set()
    chains = [_ruler_chain(rng, text, cfg.num_hops, 3, taken) for _ in range(cfg.num_chains)]
    seeds = [rng.getrandbits(64) for _ in chains]
    context, _ = _ruler_context(text, noise_lines, [c[0] for c in chains], seeds, 0)
    value = chains[0][2]
    full = (text.vt_template + text.vt_example_prefix).format(context=context, query=value, num_v=cfg.num_hops + 1)
    return full, " ".join(chains[0][1])


def _example_lines(tokenizer, text, cfg: VTConfig) -> int:
    """Noise lines of the worked example, by the source's rule: the most lines (in its steps) whose
    example (with its answer where the source counts it) plus the source's budget stays within 500
    tokens."""
    lines = 0
    while lines < 10_000:
        full, answer = _ruler_example(random.Random(0), text, cfg, lines + text.vt_example_step)
        shown = full + (" " + answer if text.vt_example_counts_answer else "")
        if len(tokenizer.encode(shown)) + text.vt_example_budget > EXAMPLE_TOKENS:
            break
        lines += text.vt_example_step
    return lines


def generate_ruler(cfg: VTConfig, text, tokenizer, *, length: int, n: int, seed: int, task: str = "vt",
                   chat_template: str | None = None, depth: list[float] | None = None) -> list[Sample]:
    """Variable tracking in RULER's words and layout (`text`: a `ruler_text.RulerText`): noise lines
    and statements joined as the source joins them, one worked example of at most 500 tokens before
    the question. Sizing is this project's: prompt + budget in [0.95 L, L]."""
    fitter = Fitter(tokenizer, length=length, budget=cfg.max_new_tokens, task=task, hint=RULER_HINT)
    per_line = len(tokenizer.encode(" " + text.vt_noise))
    ex_lines = _example_lines(tokenizer, text, cfg)
    max_lines = max(8, 2 * length // max(1, per_line))
    pad = corpora.pad_words(text.noise, " ")

    def one(i: int) -> Sample:
        rng = random.Random(sample_seed(task, length, seed, i))
        full, answer = _ruler_example(rng, text, cfg, ex_lines)
        example = full + " " + answer
        taken: set[str] = set()
        chains = [_ruler_chain(rng, text, cfg.num_hops, 5, taken) for _ in range(cfg.num_chains)]
        seeds = [rng.getrandbits(64) for _ in chains]
        value, names = chains[0][2], chains[0][1]
        prefix = text.vt_prefix.format(num_v=cfg.num_hops + 1, query=value)
        escaped = example.replace("{", "{{").replace("}", "}}")
        frame = template_frame(tokenizer, chat_template, escaped + text.vt_example_tail + text.vt_template, prefix,
                               text.vt_delimiter, query=value, num_v=cfg.num_hops + 1)
        n_gold = len(chains[0][0])

        def render(k: int, chains=chains, seeds=seeds):
            return _ruler_context(text, k, [c[0] for c in chains], seeds, n_gold)

        make = lambda attempt, frame=frame, render=render: Draft(  # noqa: E731
            frame, render, lambda k: per_line * k, 1, max_lines, pad=pad)
        fitted = fitter.fit(make, redraws=0)
        positions = token_positions(tokenizer, fitted.text, fitted.marks, fitted.ids)
        return Sample(
            index=i, id=sample_id(task, length, seed, i), task=task, length=length, input=fitted.text,
            answers=list(names), num_tokens=len(fitted.ids), max_new_tokens=cfg.max_new_tokens, answer_prefix=prefix,
            depth=[round(p / len(fitted.ids), 6) for p in positions], answer_position=positions[0],
            answer_positions=positions,
            seed=seed,
        )
    return run_samples(one, n)
