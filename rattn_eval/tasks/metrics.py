"""RULER's per-sample scoring: post-processing and string_match_all / string_match_part, in 0..100.

Everything that aggregates scores (cells, lengths, error bars, effective length) is in
rattn_eval.aggregate."""

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


def metric_for(task: str) -> str:
    """'part' for the QA tasks, 'all' for the others."""
    return PART_MATCH if task.startswith("qa") else ALL_MATCH


def score_sample(task: str, prediction: str, answers: list[str]) -> float:
    """Score of one prediction, 0..100, with the task's metric."""
    return (_part if metric_for(task) == PART_MATCH else _all)(prediction, answers)
