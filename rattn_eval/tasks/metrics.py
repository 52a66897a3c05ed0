"""RULER's scoring: post-processing, string_match_all / string_match_part, and aggregation
over tasks and lengths (Avg, weighted averages, effective length). Scores are in 0..100."""

from __future__ import annotations

import math
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
