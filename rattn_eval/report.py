"""`rattn-eval report`: a Markdown report with the comparison tables and PNG plots.

Files written to the output directory:

    report.md            the tables of `rattn-eval compare` plus the plots and run details
    score_vs_length.png  average score vs length, one line per checkpoint, its 95% band shaded
    niah_heatmap.png     NIAH score by needle depth (rows) and length (columns), one panel per
                         checkpoint, from the per-sample depth in the records (when any NIAH ran)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rattn_eval.compare import Comparison, Run, compare, load_run, to_markdown
from rattn_eval.errors import ConfigError
from rattn_eval.aggregate import DEFAULT_THRESHOLD, Z95
from rattn_eval.results import check_writable, format_length

DEPTH_BINS = 10


def write_report(run_paths: list[str | Path], out: str | Path | None = None, *,
                 threshold: float = DEFAULT_THRESHOLD) -> Path:
    """Write report.md and its plots for `run_paths`; returns the path of report.md.

    Default `out`: RUN/report for a single run, else results/runs/reports/<run names>.
    """
    runs = [load_run(p) for p in run_paths]
    if out is None:
        out = runs[0].path / "report" if len(runs) == 1 else (
            Path("results") / "runs" / "reports" / "+".join(r.path.name for r in runs)[:120])
    out = Path(out)
    check_writable(out)
    comp = compare(runs, threshold=threshold)  # runs without a scored sample stop here, before any folder is made
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create report directory {out}: {e.strerror or e}") from None

    plots = [plot_score_vs_length(comp, out / "score_vs_length.png")]
    heat = plot_niah_heatmap(runs, out / "niah_heatmap.png")
    if heat is not None:
        plots.append(heat)
    else:  # a heatmap an earlier report left in this folder does not belong to these runs
        (out / "niah_heatmap.png").unlink(missing_ok=True)

    lines = ["# rattn-eval report", ""]
    lines.append(f"Scores are x100 (RULER's string_match_all / string_match_part) ± one standard error; "
                 f"effective length is the longest length scoring above {threshold:g}. The plot shades each "
                 "average's 95% band.")
    lines.append("")
    lines.append(to_markdown(comp))
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    lines += ["## Runs", "", "| checkpoint | directory | backend | n | seed | window |", "|---|---|---|---:|---:|---:|"]
    for r, row in zip(runs, comp.rows):
        backends = sorted({str(rec.get("backend")) for rec in r.records}) or [str(r.config.get("backend"))]
        lines.append(f"| {row['label']} | `{r.path}` | {', '.join(backends)} | {r.config.get('n')} | "
                     f"{r.config.get('seed')} | {r.config.get('window') if r.config.get('window') is not None else '-'} |")
    lines.append("")
    md = out / "report.md"
    md.write_text("\n".join(lines))
    return md


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, works on headless machines
    import matplotlib.pyplot as plt

    return plt


def plot_score_vs_length(comp: Comparison, path: Path) -> Path:
    """Average score over tasks vs length (log2 x axis), one line per checkpoint with its 95% band
    (1.96 standard errors of the average) shaded; gaps stay gaps."""

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    nan = float("nan")
    for row in comp.rows:
        ys = [row["length_scores"][str(L)] for L in comp.lengths]
        ses = [row["length_stderr"][str(L)] for L in comp.lengths]
        line, = ax.plot(comp.lengths, [nan if y is None else y for y in ys], marker="o", label=row["label"])
        lo = [nan if y is None or se is None else max(0.0, y - Z95 * se) for y, se in zip(ys, ses)]
        hi = [nan if y is None or se is None else min(100.0, y + Z95 * se) for y, se in zip(ys, ses)]
        ax.fill_between(comp.lengths, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.axhline(comp.threshold, color="grey", linestyle=":", linewidth=1, label=f"threshold {comp.threshold:g}")
    ax.set_xscale("log", base=2)
    if comp.lengths:  # limits from the lengths, not from the points, which may all be gaps
        ax.set_xlim(min(comp.lengths) / 1.25, max(comp.lengths) * 1.25)
    ax.set_xticks(comp.lengths, [format_length(L) for L in comp.lengths])
    ax.minorticks_off()
    if all(row["length_scores"][str(L)] is None for row in comp.rows for L in comp.lengths):
        ax.text(0.5, 0.5, "no length has a score for every task", transform=ax.transAxes, ha="center",
                va="center", color="grey")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("length (tokens)")
    ax.set_ylabel(f"score (mean of {len(comp.tasks)} task{'s' if len(comp.tasks) != 1 else ''})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def depth_fraction(depth: Any) -> float | None:
    """A record's needle depth as a fraction of the context in [0, 1].

    Samples store the depth of the queried needle in percent (0-100) or as a fraction; for
    several needles (a list) the first one is the queried needle.
    """
    if isinstance(depth, (list, tuple)):
        depth = depth[0] if depth else None
    if depth is None:
        return None
    d = float(depth)
    return d / 100.0 if d > 1.0 else d


def heatmap_grid(records: list[dict[str, Any]], lengths: list[int], bins: int = DEPTH_BINS) -> list[list[float | None]]:
    """Mean score per (depth bin, length) over NIAH records: rows = bins from 0% to 100% depth."""
    sums = [[0.0] * len(lengths) for _ in range(bins)]
    counts = [[0] * len(lengths) for _ in range(bins)]
    col = {L: i for i, L in enumerate(lengths)}
    for r in records:
        d = depth_fraction(r.get("depth"))
        if d is None or not str(r["task"]).startswith("niah") or int(r["length"]) not in col:
            continue
        b = min(int(d * bins), bins - 1)
        sums[b][col[int(r["length"])]] += r["score"]
        counts[b][col[int(r["length"])]] += 1
    return [[s / c if c else None for s, c in zip(srow, crow)] for srow, crow in zip(sums, counts)]


def plot_niah_heatmap(runs: list[Run], path: Path) -> Path | None:
    """Depth x length heatmap per checkpoint (None when no run has NIAH records with depths)."""
    lengths = sorted({int(r["length"]) for run in runs for r in run.records if str(r["task"]).startswith("niah")})
    grids = [heatmap_grid(run.records, lengths) for run in runs]
    if not lengths or all(v is None for g in grids for row in g for v in row):
        return None
    plt = _pyplot()
    import numpy as np

    fig, axes = plt.subplots(1, len(runs), figsize=(1.2 + 0.9 * len(lengths) * len(runs) + 1.5, 4.2),
                             squeeze=False)
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#e8e8e8")  # depth bins with no sample: grey, not a score
    im = None
    for ax, run, grid in zip(axes[0], runs, grids):
        arr = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
        im = ax.imshow(arr, cmap=cmap, vmin=0, vmax=100, aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [format_length(L) for L in lengths])
        ax.set_yticks(range(DEPTH_BINS), [f"{100 * i // DEPTH_BINS}-{100 * (i + 1) // DEPTH_BINS}%"
                                          for i in range(DEPTH_BINS)], fontsize="x-small")
        if ax is not axes[0][0]:  # the panels share their rows: labels on the first only
            ax.tick_params(labelleft=False)
        ax.set_title(run.label, fontsize="small")
        ax.set_xlabel("length")
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                if not np.isnan(arr[i, j]):
                    ax.text(j, i, f"{arr[i, j]:.0f}", ha="center", va="center", fontsize="x-small")
    axes[0][0].set_ylabel("needle depth")
    fig.colorbar(im, ax=list(axes[0]), label="NIAH score")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
