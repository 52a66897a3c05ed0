"""RULER's scoring: post-processing, string_match_all / string_match_part, and aggregation
over tasks and lengths (Avg, weighted averages, effective length). Scores are in 0..100."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f]")

ALL_MATCH = "all"
PART_MATCH = "part"


def postprocess(pred: str) -> str:
    """Strip the prediction, turn control characters into newlines and strip again, as RULER does."""
    return _CONTROL.sub("\n", (pred or "").strip()).strip()


def _all(pred: str, refs: list[str]) -> float:
    p = postprocess(pred).lower()
    return 100.0 * sum(r.lower() in p for r in refs) / len(refs) if refs else 0.0


def _part(pred: str, refs: list[str]) -> float:
    p = postprocess(pred).lower()
    return 100.0 if any(r.lower() in p for r in refs) else 0.0


def string_match_all(preds: list[str], refs: list[list[str]]) -> float:
    """Mean over samples of the percentage of references found (case-insensitive substring)."""
    if not preds:
        return 0.0
    return sum(_all(p, r) for p, r in zip(preds, refs, strict=True)) / len(preds)


def string_match_part(preds: list[str], refs: list[list[str]]) -> float:
    """Mean over samples of 100 if any reference is found (case-insensitive substring), else 0."""
    if not preds:
        return 0.0
    return sum(_part(p, r) for p, r in zip(preds, refs, strict=True)) / len(preds)


def metric_for(task: str) -> str:
    """'part' for the QA tasks, 'all' for the others."""
    return PART_MATCH if task.startswith("qa") else ALL_MATCH


def score_sample(task: str, prediction: str, answers: list[str]) -> float:
    """Score of one prediction, 0..100, with the task's metric."""
    return (_part if metric_for(task) == PART_MATCH else _all)(prediction, answers)


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def task_score(sample_scores) -> float:
    """Task score at one length: the mean over its samples."""
    return mean(sample_scores)


def length_score(task_scores: dict[str, float]) -> float:
    """Score at one length: the unweighted mean over tasks."""
    return mean(task_scores.values())


def average(scores_by_length: dict[int, float]) -> float:
    """RULER's "Avg.": the mean over lengths."""
    return mean(scores_by_length.values())


def weighted_average(scores_by_length: dict[int, float], *, increasing: bool = True) -> float:
    """RULER's wAvg: weights 1..m over the lengths sorted ascending (normalised), so longer
    lengths count more ('inc'); reversed for 'dec'. With RULER's six lengths 4k..128k the
    'inc' weights are 1/21 .. 6/21 (0.048 .. 0.286)."""
    lengths = sorted(scores_by_length)
    m = len(lengths)
    w = list(range(1, m + 1)) if increasing else list(range(m, 0, -1))
    return sum(wi * scores_by_length[L] for wi, L in zip(w, lengths)) / sum(w) if m else float("nan")


def effective_length(scores_by_length: dict[int, float], threshold: float = 85.6) -> int | None:
    """Longest length L such that the score stays above `threshold` at L and at every shorter
    length measured; None when even the shortest is at or below it."""
    best = None
    for L in sorted(scores_by_length):
        if scores_by_length[L] > threshold:
            best = L
        else:
            break
    return best
