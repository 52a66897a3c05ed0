"""Shape grids for kernel tests: the full cartesian grid of named factors, a greedy all-pairs cover of it
(every pair of factor values that some feasible case holds appears in a chosen case), and the spelling
of a case: its readable test id and the window it names."""

from __future__ import annotations

import itertools
from typing import Callable


def all_cases(factors: dict, feasible: Callable[[dict], bool] = lambda c: True) -> list[dict]:
    keys = list(factors)
    return [c for values in itertools.product(*factors.values()) if feasible(c := dict(zip(keys, values)))]


def pairs(case: dict) -> set:
    items = sorted((k, str(v)) for k, v in case.items())
    return set(itertools.combinations(items, 2))


def pairwise_cases(factors: dict, feasible: Callable[[dict], bool] = lambda c: True,
                   cost: Callable[[dict], float] | None = None) -> list[dict]:
    """Greedy cover: repeatedly take the feasible case that covers most pairs not yet covered; with `cost`,
    the cheapest among equally good cases, else the first in grid order."""
    cands = [(c, pairs(c)) for c in all_cases(factors, feasible)]
    todo = set().union(*(p for _, p in cands))
    chosen = []
    while todo:
        if cost is None:
            best, covered = max(cands, key=lambda cp: len(cp[1] & todo))
        else:
            best, covered = max(cands, key=lambda cp: (len(cp[1] & todo), -cost(cp[0])))
        chosen.append(best)
        todo -= covered
    return chosen


def covers_every_pair(chosen: list[dict], factors: dict, feasible: Callable[[dict], bool] = lambda c: True) -> bool:
    every = set().union(*(pairs(c) for c in all_cases(factors, feasible)))
    return set().union(*(pairs(c) for c in chosen)) == every


def case_id(c: dict) -> str:
    """The test id of a case, its values in factor order: T, w, D and B with their names (T15-w7-D64-B3),
    heads as H4kv1, every other factor as its value (swa-T15-w7-D64-H4kv1-B3-ragged-fp16)."""
    parts = []
    for name, value in c.items():
        if name == "heads":
            parts.append(f"H{value[0]}kv{value[1]}")
        elif name in ("T", "w", "D", "B"):
            parts.append(f"{name}{value}")
        else:
            parts.append(str(value))
    return "-".join(parts)


def window_value(w: str, T: int) -> int | None:
    """The window a case's "w" factor names at length T: a number, "T-1", ">T" (T + 5) or "none" (full causal)."""
    if w == "none":
        return None
    if w == "T-1":
        return max(T - 1, 0)
    if w == ">T":
        return T + 5
    return int(w)
