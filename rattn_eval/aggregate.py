"""Aggregation of per-sample scores: cells, lengths, RULER's averages, error bars, effective length.

The one place where scores are combined. `summarize` turns a run's records into summary.json's
table; compare, report and the runner all call it. Scores are in 0..100 (x100 already in each
record), aggregated as RULER does: cell score = mean over samples, length score = unweighted
mean over tasks, Avg = mean over lengths, wAvg = linear weights increasing (or decreasing) with
length, effective length = the longest length whose score, and every shorter length's, stays above
a threshold (85.6 by default, Llama-2-7B's 4k score in the RULER paper).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from rattn_eval.tasks.metrics import postprocess

DEFAULT_THRESHOLD = 85.6


def summarize(
    records: Iterable[dict[str, Any]],
    *,
    tasks: list[str],
    lengths: list[int],
    expected: dict[tuple[str, int], int] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Aggregate per-sample records into RULER's table.

    Args:
        records: sample records (task, length, index, score, prediction).
        tasks, lengths: the cells of the table (rows, columns).
        expected: samples planned per (task, length); cells with fewer records are incomplete.
    Returns:
        {"scores": {task: {len: score|None}}, "counts": {task: {len: k}}, "nulls": ...,
         "stats": {task: {len: {"n", "mean", "stderr", "ci95": [lo, hi], "ci_method"}}},
         "length_scores": {len: score|None}, "length_stderr": {len: stderr|None}, "avg", "wavg_inc",
         "wavg_dec", "effective_length", "threshold", "complete", "missing": [[task, len], ...]} with
        lengths as strings (JSON keys). An average is None when any cell it would cover has no records
        (never averaged over a smaller set). Error bars: `cell_stats`.
    """
    by_cell: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        by_cell.setdefault((r["task"], int(r["length"])), []).append(r)
    scores: dict[str, dict[str, float | None]] = {}
    stats: dict[str, dict[str, dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    nulls: dict[str, dict[str, int]] = {}
    missing: list[list[Any]] = []
    incomplete: list[list[Any]] = []
    for t in tasks:
        scores[t], counts[t], nulls[t], stats[t] = {}, {}, {}, {}
        for L in lengths:
            # Sum in index order so a resumed run (records in another order) gives identical floats.
            cell = sorted(by_cell.get((t, L), []), key=lambda r: r["index"])
            counts[t][str(L)] = len(cell)
            # empty after RULER's post-processing (control characters count as nothing)
            nulls[t][str(L)] = sum(1 for r in cell if not postprocess(str(r.get("prediction") or "")))
            scores[t][str(L)] = sum(r["score"] for r in cell) / len(cell) if cell else None
            stats[t][str(L)] = cell_stats([r["score"] for r in cell])
            if not cell:
                missing.append([t, L])
            elif expected is not None and len(cell) < expected.get((t, L), 0):
                incomplete.append([t, L])
    length_scores: dict[str, float | None] = {}
    length_stderr: dict[str, float | None] = {}
    for L in lengths:
        cells = [scores[t][str(L)] for t in tasks]
        length_scores[str(L)] = None if any(c is None for c in cells) else sum(cells) / len(cells)
        length_stderr[str(L)] = None if length_scores[str(L)] is None else mean_stderr(
            stats[t][str(L)]["stderr"] for t in tasks)
    agg = aggregate_lengths({L: length_scores[str(L)] for L in lengths}, threshold=threshold)
    return {
        "tasks": list(tasks),
        "lengths": list(lengths),
        "scores": scores,
        "counts": counts,
        "nulls": nulls,
        "stats": stats,
        "length_scores": length_scores,
        "length_stderr": length_stderr,
        **agg,
        "threshold": threshold,
        "complete": not missing and not incomplete,
        "missing": missing,
        "incomplete": incomplete,
    }


def aggregate_lengths(length_scores: dict[int, float | None], *, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Avg, wAvg (inc/dec) and effective length over lengths, with the task suite's RULER formulas.

    Avg and the weighted averages are None if any length lacks a score. Effective length needs the
    lengths up to the first that fails the threshold: a gap before that leaves it undetermined
    (None, with effective_length_determined False), as a missing shortest length does.
    """
    lengths = sorted(length_scores)
    if not lengths or any(length_scores[L] is None for L in lengths):
        avg = winc = wdec = None
    else:
        avg = average(length_scores)
        winc = weighted_average(length_scores, increasing=True)
        wdec = weighted_average(length_scores, increasing=False)
    prefix: dict[int, float] = {}
    for L in lengths:
        if length_scores[L] is None:
            break
        prefix[L] = length_scores[L]
    determined = bool(prefix) and (len(prefix) == len(lengths) or any(v <= threshold for v in prefix.values()))
    eff = effective_length(prefix, threshold) if determined else None
    return {"avg": avg, "wavg_inc": winc, "wavg_dec": wdec, "effective_length": eff,
            "effective_length_determined": determined}


def effective_length_text(summary: dict[str, Any]) -> str:
    """The effective length of a summary (or a compare row) as a table shows it: '8k', '<1k' when even
    the shortest length fails the threshold, '—' when a length it depends on has no result yet."""
    from rattn_eval.results import format_length

    if not summary.get("effective_length_determined", True):
        return "—"
    if summary["effective_length"] is not None:
        return format_length(summary["effective_length"])
    lens = summary["lengths"]
    if lens and summary["length_scores"].get(str(lens[0])) is not None:
        return f"<{format_length(lens[0])}"
    return "—"


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


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


def effective_length(scores_by_length: dict[int, float], threshold: float = DEFAULT_THRESHOLD) -> int | None:
    """Longest length L such that the score stays above `threshold` at L and at every shorter
    length measured; None when even the shortest is at or below it."""
    best = None
    for L in sorted(scores_by_length):
        if scores_by_length[L] > threshold:
            best = L
        else:
            break
    return best


Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_RESAMPLES = 2000


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (no scipy)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
             for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a binomial proportion, as fractions in [0, 1]."""
    alpha = 1.0 - level

    def solve(target: float, k: int) -> float:  # the p with P(X <= k) = target (the CDF falls with p)
        a, b = 0.0, 1.0
        for _ in range(60):
            mid = (a + b) / 2
            if _binom_cdf(k, n, mid) > target:
                a = mid
            else:
                b = mid
        return (a + b) / 2

    lo = 0.0 if successes == 0 else solve(1 - alpha / 2, successes - 1)
    hi = 1.0 if successes == n else solve(alpha / 2, successes)
    return lo, hi


def cell_stats(scores, *, seed: int = 0) -> dict:
    """Mean, standard error and 95% interval of one cell's per-sample scores (0..100).

    When every score is 0 or 100 the interval is exact (Clopper-Pearson) and the standard error is
    Agresti-Coull's, from (x + 2) / (n + 4), so a cell of identical scores does not claim an error of
    0; otherwise the standard error is the sample standard deviation over sqrt(n) and the interval a
    percentile bootstrap over samples (2000 resamples from a fixed seed, so the same scores give the
    same interval). stderr and ci95 are None for n < 2.
    """
    xs = [float(x) for x in scores]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "stderr": None, "ci95": None, "ci_method": None}
    m = sum(xs) / n
    if n < 2:
        return {"n": n, "mean": m, "stderr": None, "ci95": None, "ci_method": None}
    if _binary(xs):
        hits = sum(1 for x in xs if x == 100.0)
        lo, hi = clopper_pearson(hits, n)
        p = (hits + 2) / (n + 4)
        return {"n": n, "mean": m, "stderr": 100 * math.sqrt(p * (1 - p) / (n + 4)), "ci95": [100 * lo, 100 * hi],
                "ci_method": "exact"}
    import numpy as np

    rng = np.random.default_rng(seed)
    means = np.asarray(xs)[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
    ci = [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]
    return {"n": n, "mean": m, "stderr": _mean_se(xs)[1], "ci95": ci, "ci_method": "bootstrap"}


def _mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard error of at least two numbers."""
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def _binary(xs) -> bool:
    return all(x in (0.0, 100.0) for x in xs)


def same_within_noise(a: dict, b: dict) -> bool | None:
    """Whether two cells' scores (keyed by sample) differ by no more than their noise, at 95%.

    Paired over the keys both hold (at least two): McNemar's exact test when every score is 0 or 100,
    else the mean per-sample difference against 1.96 of its standard error. Unpaired: Fisher's exact
    test for 0/100 scores, else the difference of the means against 1.96 of the combined standard
    error. None when a cell has fewer than two samples."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        d = [a[k] - b[k] for k in shared]
        if _binary([a[k] for k in shared]) and _binary([b[k] for k in shared]):
            up, down = sum(1 for x in d if x > 0), sum(1 for x in d if x < 0)
            if up + down == 0:
                return True
            return min(1.0, 2 * _binom_cdf(min(up, down), up + down, 0.5)) >= 0.05
        return within_noise(*_mean_se(d))
    if len(a) < 2 or len(b) < 2:
        return None
    if _binary(a.values()) and _binary(b.values()):
        return fisher_exact(sum(1 for x in a.values() if x == 100.0), len(a),
                            sum(1 for x in b.values() if x == 100.0), len(b)) >= 0.05
    d = difference(a, b)
    if d is None:  # both cells hold one repeated partial score
        return sum(a.values()) / len(a) == sum(b.values()) / len(b)
    return within_noise(*d)


def fisher_exact(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test for x1 of n1 against x2 of n2 successes."""
    k, n = x1 + x2, n1 + n2

    def logp(x: int) -> float:  # hypergeometric: x of the k successes fall in the first group
        return (math.lgamma(n1 + 1) - math.lgamma(x + 1) - math.lgamma(n1 - x + 1)
                + math.lgamma(n2 + 1) - math.lgamma(k - x + 1) - math.lgamma(n2 - k + x + 1)
                - math.lgamma(n + 1) + math.lgamma(k + 1) + math.lgamma(n - k + 1))

    observed = logp(x1)
    logs = [logp(x) for x in range(max(0, k - n2), min(k, n1) + 1)]
    return min(1.0, sum(math.exp(v) for v in logs if v <= observed + 1e-9))


def difference(a: dict, b: dict) -> tuple[float, float] | None:
    """(mean of a - mean of b, standard error) of two cells keyed by sample: paired over shared keys
    (at least two) when their differences vary, else the two cells' standard errors combined (None
    when either has none, or a cell of identical partial scores leaves it at 0)."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        m, se = _mean_se([a[k] - b[k] for k in shared])
        if se > 0:
            return m, se
    sa, sb = cell_stats(list(a.values()))["stderr"], cell_stats(list(b.values()))["stderr"]
    if not sa or not sb:
        return None
    return sum(a.values()) / len(a) - sum(b.values()) / len(b), math.hypot(sa, sb)


def within_noise(diff: float, stderr: float) -> bool:
    """A difference is noise when it lies within 1.96 standard errors (a 95% two-sided test)."""
    return abs(diff) <= Z95 * stderr


def mean_difference(diffs) -> tuple[float, float] | None:
    """(difference, standard error) of an unweighted mean over independent cells' differences."""
    ds = list(diffs)
    if not ds or any(d is None for d in ds):
        return None
    return sum(d[0] for d in ds) / len(ds), math.sqrt(sum(d[1] ** 2 for d in ds)) / len(ds)


def mean_stderr(stderrs) -> float | None:
    """Standard error of an unweighted mean of independent estimates (a length's average over tasks)."""
    ses = list(stderrs)
    if not ses or any(s is None for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses)) / len(ses)
