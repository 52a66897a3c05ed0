"""`rattn-eval compare`: several runs side by side, one row per checkpoint, one column per length.

Scores are recomputed from each run's records.jsonl (never read from summary.json), over the union
of the runs' tasks and lengths. A run that lacks a cell shows a gap ("—") there, and every average
that would cover a gap is left empty too: nothing is averaged over a different set of tasks or
lengths than its neighbours. Cells with fewer records than planned (an unfinished run) carry a "*",
and so does every average over them. Differences in seed or sample count are stated in the notes
under the table.

Error bars: every cell shows its score ± one standard error (95% intervals in the CSV and JSON
forms), and a cell of the second and later rows is marked "≈" when its difference from the first
row lies within noise (95%): paired over the samples both runs scored with the same prompt
(records carry the prompt's hash), unpaired otherwise.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rattn_eval.errors import ConfigError, DataError
from rattn_eval.aggregate import (DEFAULT_THRESHOLD, difference, effective_length_text, mean_difference,
                                  same_within_noise, summarize, within_noise)
from rattn_eval.results import ABSENT_MEANS, belongs, format_length, read_run

GAP = "—"
AVERAGE = "average"
SAME = "≈"  # within noise of the first row


@dataclass
class Run:
    """A run directory read back: its config and its records."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    label: str = ""
    foreign: int = 0  # records in the directory that are not samples of this run (not counted)

    @property
    def expected_per_cell(self) -> int:
        """n samples per (task, length); a run that stopped at --limit is unfinished, not smaller."""
        return self.config.get("n")


def load_run(path: str | Path) -> Run:
    """Read a run directory (config.json + records.jsonl, and the records.rank*.jsonl files a killed
    torchrun run leaves); DataError if it is not one."""
    path = Path(path)
    config, by_id = read_run(path)  # with the rank files a killed torchrun run leaves
    records = list(by_id.values())
    mine = [r for r in records if belongs(r, config)]
    return Run(path=path, config=config, records=mine, foreign=len(records) - len(mine))


def _labels(runs: list[Run]) -> None:
    """Row labels: the checkpoint name (+ window override); the directory name breaks ties."""
    base = []
    for r in runs:
        model = str(r.config.get("model", "?")).rstrip("/")
        name = Path(model).name if "/" in model else model
        if r.config.get("window") is not None:
            name += f" w={r.config['window']}"
        base.append(name)
    for r, b in zip(runs, base):
        r.label = b if base.count(b) == 1 else f"{b} ({r.path.name})"
    labels = [r.label for r in runs]
    for i, r in enumerate(runs):
        if labels.count(r.label) > 1:
            r.label = f"{r.label} #{i + 1}"


@dataclass
class Comparison:
    tasks: list[str]
    lengths: list[int]
    threshold: float
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "lengths": self.lengths, "threshold": self.threshold,
                "runs": self.rows, "notes": self.notes}


def check_threshold(threshold: float) -> None:
    """Effective-length thresholds are scores: a number in [0, 100]."""
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 100:
        raise ConfigError(f"--threshold must be a score in [0, 100], got {threshold!r}")


def compare(runs: list[Run], *, threshold: float = DEFAULT_THRESHOLD) -> Comparison:
    """Summaries of `runs` over the union of their tasks and lengths, with notes on mismatches."""
    check_threshold(threshold)
    if runs and not any(r.records for r in runs):
        raise DataError(f"no scored sample in {', '.join(str(r.path) for r in runs)} yet: nothing to compare; "
                        "run (or finish) `rattn-eval run` there first")
    _labels(runs)
    tasks: list[str] = []
    lengths: set[int] = set()
    for r in runs:
        for t in r.config.get("resolved_tasks", []):
            if t not in tasks:
                tasks.append(t)
        lengths.update(int(L) for L in r.config.get("lengths", []))
    lengths_sorted = sorted(lengths)
    rows, notes = [], []
    for r in runs:
        own_tasks = r.config.get("resolved_tasks", [])
        expected = {(t, int(L)): r.expected_per_cell for t in own_tasks for L in r.config.get("lengths", [])}
        s = summarize(r.records, tasks=tasks, lengths=lengths_sorted, expected=expected, threshold=threshold)
        rows.append({"label": r.label, "path": str(r.path), "model": r.config.get("model"),
                     "window": r.config.get("window"), "seed": r.config.get("seed"), "n": r.config.get("n"),
                     "backend": _backends_that_ran(r.records) or r.config.get("backend"), **s})
        if s["missing"]:
            cells = ", ".join(f"{t}@{format_length(L)}" for t, L in s["missing"])
            notes.append(f"{r.label} has no results for {cells}; averages covering them are left empty")
        if s["incomplete"]:
            cells = ", ".join(f"{t}@{format_length(L)}" for t, L in s["incomplete"])
            notes.append(f"{r.label} is unfinished (* = fewer samples than planned): {cells}")
        if r.foreign:
            notes.append(f"{r.label}: {r.foreign} record(s) in {r.path} are not samples of its run (another task, "
                         "length, seed or index) and are not counted")
    for key, what in (("seed", "seeds"), ("n", "sample counts")):
        vals = {row["label"]: row[key] for row in rows}
        if len(set(vals.values())) > 1:
            listing = ", ".join(f"{k}: {v}" for k, v in vals.items())
            notes.append(f"runs differ in {what} ({listing}), so they score different samples")
    for key, what in (("prompts", "prompt profiles"), ("prompt_source", "RULER text sources"),
                      ("generator_version", "sample generator versions")):
        vals = {r.label: r.config.get(key, ABSENT_MEANS.get(key)) for r in runs}
        if len(set(map(str, vals.values()))) > 1:
            listing = ", ".join(f"{k}: {v}" for k, v in vals.items())
            notes.append(f"runs differ in {what} ({listing}): their prompts differ, so their scores are not "
                         "directly comparable")
    _mark_noise(runs, rows, tasks, lengths_sorted)
    if len(rows) > 1:
        notes.append(f"{SAME}: within noise of the first row ({rows[0]['label']}) at 95%, paired by sample where "
                     "both runs scored the same prompts")
    return Comparison(tasks=tasks, lengths=lengths_sorted, threshold=threshold, rows=rows, notes=notes)


def _cells(run: Run) -> dict[tuple[str, int], dict[Any, float]]:
    """Each cell's scores keyed by (sample id, prompt hash): two runs share a key only for the same prompt."""
    out: dict[tuple[str, int], dict[Any, float]] = {}
    for rec in run.records:
        sha = rec.get("input_sha")
        key = (rec["id"], sha) if sha else (str(run.path), rec["id"])  # no hash: never paired
        out.setdefault((rec["task"], int(rec["length"])), {})[key] = float(rec["score"])
    return out


def _backends_that_ran(records) -> str | None:
    """The backends the records name (config.json holds the one asked for, e.g. "auto")."""
    ran = sorted({str(r["backend"]) for r in records if r.get("backend")})
    return ",".join(ran) or None


def _mark_noise(runs: list[Run], rows: list[dict[str, Any]], tasks: list[str], lengths: list[int]) -> None:
    """rows[i]["same"] = {task or "average": {len: True (within noise of row 0) / False / None}}."""
    first = _cells(runs[0])
    rows[0]["same"] = {}
    for run, row in zip(runs[1:], rows[1:]):
        mine = _cells(run)
        same: dict[str, dict[str, bool | None]] = {AVERAGE: {}}
        for L in lengths:
            diffs = []
            for t in tasks:
                a, b = mine.get((t, L)), first.get((t, L))
                same.setdefault(t, {})[str(L)] = same_within_noise(a, b) if a and b else None
                diffs.append(difference(a, b) if a and b else None)
            avg = mean_difference(diffs)
            same[AVERAGE][str(L)] = None if avg is None else within_noise(*avg)
        row["same"] = same


def _fmt(v: float | None, digits: int = 1) -> str:
    return GAP if v is None else f"{v:.{digits}f}"


def _cell(v: float | None, se: float | None, same: bool | None, digits: int = 1) -> str:
    """'45.0 ±9.1' (one standard error), '≈' appended when within noise of the first row."""
    if v is None:
        return GAP
    text = f"{v:.{digits}f}" + ("" if se is None else f" ±{se:.{digits}f}")
    return text + (f" {SAME}" if same else "")


def sections(comp: Comparison, digits: int = 1) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per table: the task average first, then one per task."""
    lens = [format_length(L) for L in comp.lengths]
    out = []
    header = ["checkpoint", *lens, "Avg", "wAvg (inc)", "wAvg (dec)", f"Eff. length (>{comp.threshold:g})"]
    body = []
    for row in comp.rows:
        same = row.get("same", {}).get(AVERAGE, {})
        unfinished = {L for _, L in row["incomplete"]}  # an average over an unfinished cell is unfinished too
        cells = [_cell(row["length_scores"][str(L)], row["length_stderr"][str(L)], same.get(str(L)), digits)
                 for L in comp.lengths]
        cells = [c + "*" if L in unfinished and c != GAP else c for c, L in zip(cells, comp.lengths)]
        over = [_fmt(row["avg"], digits), _fmt(row["wavg_inc"], digits), _fmt(row["wavg_dec"], digits),
                effective_length_text(row)]  # over every length: unfinished when any cell is
        over = [c + "*" if unfinished and c != GAP else c for c in over]
        body.append([row["label"], *cells, *over])
    title = f"Average over {len(comp.tasks)} task{'s' if len(comp.tasks) != 1 else ''}"
    out.append((title, header, body))
    for t in comp.tasks:
        body = []
        for row in comp.rows:
            inc = {(a, b) for a, b in row["incomplete"]}
            same = row.get("same", {}).get(t, {})
            cells = []
            for L in comp.lengths:
                c = _cell(row["scores"][t][str(L)], row["stats"][t][str(L)]["stderr"], same.get(str(L)), digits)
                cells.append(c + "*" if (t, L) in inc else c)
            body.append([row["label"], *cells])
        out.append((t, ["checkpoint", *lens], body))
    return out


def to_markdown(comp: Comparison) -> str:
    parts = []
    for title, header, body in sections(comp):
        parts.append(f"### {title}\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for r in body:
            parts.append("| " + " | ".join(r) + " |")
        parts.append("")
    if comp.notes:
        parts.append("Notes:\n")
        parts.extend(f"- {n}" for n in comp.notes)
        parts.append("")
    return "\n".join(parts)


def to_csv(comp: Comparison) -> str:
    """Long-and-wide CSV: one line per (checkpoint, task or "average"); per length the score, its
    standard error, its 95% interval (task cells) and whether it is within noise of the first row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    per_len = []
    for L in comp.lengths:
        f = format_length(L)
        per_len += [f, f"{f}_stderr", f"{f}_ci_low", f"{f}_ci_high", f"{f}_within_noise"]
    w.writerow(["checkpoint", "path", "task", *per_len, "avg", "wavg_inc", "wavg_dec", "effective_length"])
    num = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    flag = lambda v: "" if v is None else ("yes" if v else "no")  # noqa: E731
    for row in comp.rows:
        same = row.get("same", {})
        cells = []
        for L in comp.lengths:
            cells += [num(row["length_scores"][str(L)]), num(row["length_stderr"][str(L)]), "", "",
                      flag(same.get(AVERAGE, {}).get(str(L)))]
        w.writerow([row["label"], row["path"], AVERAGE, *cells, num(row["avg"]), num(row["wavg_inc"]),
                    num(row["wavg_dec"]), row["effective_length"] or ""])
        for t in comp.tasks:
            cells = []
            for L in comp.lengths:
                st = row["stats"][t][str(L)]
                lo, hi = st["ci95"] or (None, None)
                cells += [num(row["scores"][t][str(L)]), num(st["stderr"]), num(lo), num(hi),
                          flag(same.get(t, {}).get(str(L)))]
            w.writerow([row["label"], row["path"], t, *cells, "", "", "", ""])
    return buf.getvalue()


def to_json(comp: Comparison) -> str:
    return json.dumps(comp.to_dict(), indent=2) + "\n"


def rich_tables(comp: Comparison) -> list[Any]:
    from rich.table import Table

    tables = []
    for title, header, body in sections(comp):
        tab = Table(title=title, title_justify="left")
        for i, h in enumerate(header):
            tab.add_column(h, justify="left" if i == 0 else "right")
        for r in body:
            tab.add_row(*r)
        tables.append(tab)
    return tables
