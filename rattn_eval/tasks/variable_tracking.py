"""Variable tracking (RULER's vt): follow a chain of assignments hidden in noise and list every
variable that ends up holding the value. One worked example precedes the question."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from rattn_eval.tasks import corpora
from rattn_eval.tasks.base import run_samples, Draft, Fitter, Sample, make_frame, sample_id, sample_seed, token_positions
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
