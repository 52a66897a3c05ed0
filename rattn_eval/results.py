"""Run directories: resolved config, environment, one JSON Lines record per sample, summary.

This module is the one owner of a run directory: every file in it is written here (the runner and
`distributed` call these functions), and every reader (summary, compare, report) reads it here.

Layout of a run directory:

    config.json     the resolved RunConfig (what determines the results)
    env.json        versions, device, backend that ran, git revision, host, start time; every
                    session's environment and timing under "sessions"
    records.jsonl   one record per finished sample (`sample_record`), appended and flushed as it finishes
    records.rank{r}.jsonl  rank r's records under torchrun, until rank 0 folds them into records.jsonl
    summary.json    scores per task and length with error bars, averages, effective length

A killed run leaves at most one partially written last line in records.jsonl; `RunDir.load_records`
drops it (and truncates the file back to the last complete record), so a rerun resumes exactly
where the kill happened. Records are keyed by sample id: nothing is scored twice.

Scores are aggregated as RULER does (formulas in rattn_eval.tasks.metrics): task score = mean
over samples (x100 already in each record), length score = unweighted mean over tasks, Avg = mean
over lengths, weighted averages with linear weights increasing (or decreasing) with length,
effective length = the longest length whose score stays above a threshold (85.6 by default,
Llama-2-7B's 4k score).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rattn_eval.errors import ConfigError, DataError
from rattn_eval.tasks.metrics import postprocess

CONFIG_FILE = "config.json"
ENV_FILE = "env.json"
RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
RANK_FILE = "records.rank{rank}.jsonl"
_RANK_FILE_RE = re.compile(r"^records\.rank(\d+)\.jsonl$")

DEFAULT_THRESHOLD = 85.6

# Config keys that do not change any result, so a rerun may differ in them and still resume.
RESUME_NEUTRAL_KEYS = frozenset({"out", "overwrite", "batch_size", "limit", "device", "tasks", "threshold",
                                 "ruler_dir"})  # the text a RULER checkout gives is compared as prompt_source
ORDER_NEUTRAL_KEYS = frozenset({"resolved_tasks"})  # compared as sets
# Keys that run directories made before prompt profiles existed lack, with the value they had then.
ABSENT_MEANS = {"prompts": "native", "prompt_source": None}


def format_length(n: int) -> str:
    """4096 -> "4k", 1048576 -> "1m", 1000 -> "1000" (the inverse of the CLI's length parser)."""
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}m"
    if n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


def _writable_parent(path: Path) -> Path:
    """The closest existing ancestor of `path` (itself included)."""
    p = path.absolute()
    while not p.exists():
        p = p.parent
    return p


def check_writable(path: Path) -> None:
    """Raise ConfigError unless `path` is (or can be created as) a writable directory."""
    existing = _writable_parent(path)
    if not existing.is_dir():
        raise ConfigError(f"output directory {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {path} is not writable ({existing} denies writing)")


@dataclass
class RunDir:
    """One run directory on disk. Create with `RunDir.prepare`, which enforces resume rules."""

    path: Path

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS_FILE

    @classmethod
    def prepare(cls, path: str | Path, config: dict[str, Any], *, overwrite: bool = False) -> "RunDir":
        """Create `path`, or reopen it to resume when its config.json matches `config`.

        A directory holding results of a different config is never mixed into: it is refused
        with a message naming the differing keys, or wiped first when `overwrite` is set.
        """
        path = Path(path)
        check_writable(path)
        rd = cls(path)
        rd.check_files()
        old = rd.read_config()
        if old is not None and not overwrite:
            diff = config_differences(old, config)
            if diff:
                hint = ("; a run made before prompt profiles existed resumes with --prompts native"
                        if "prompts" not in old and config.get("prompts") != "native" else "")
                raise ConfigError(
                    f"{path} holds a run with a different config ({diff}); "
                    f"rerun with --overwrite to replace it, or choose another --out{hint}"
                )
        if overwrite and path.exists():
            for name in (CONFIG_FILE, ENV_FILE, RECORDS_FILE, SUMMARY_FILE):
                (path / name).unlink(missing_ok=True)
            rd.remove_rank_files()
            shutil.rmtree(path / "report", ignore_errors=True)
        try:
            path.mkdir(parents=True, exist_ok=True)
            _write_json(path / CONFIG_FILE, config)
        except OSError as e:
            raise ConfigError(f"cannot write to output directory {path}: {e.strerror or e}") from None
        return rd

    def check_files(self) -> None:
        """Refuse a run directory whose files are links or not plain files: a run writes, truncates
        and replaces them, which must never reach a file elsewhere."""
        for f in [self.path / n for n in (CONFIG_FILE, ENV_FILE, RECORDS_FILE, SUMMARY_FILE)] + rank_files(self.path):
            if f.is_symlink():
                raise DataError(f"{f} is a symbolic link; a run directory must hold its own files (copy the file "
                                "in, or choose another --out)")
            if f.exists() and not f.is_file():
                raise DataError(f"{f} is not a regular file; move it away or choose another --out")

    def read_config(self) -> dict[str, Any] | None:
        f = self.path / CONFIG_FILE
        if not f.exists():
            return None
        try:
            config = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{f} is not valid JSON; rerun with --overwrite to start this run afresh") from None
        if not isinstance(config, dict):
            raise DataError(f"{f} is not a run config (a JSON object); rerun with --overwrite to start this run afresh")
        return config

    def write_env(self, env: dict[str, Any]) -> None:
        """Write env.json: the newest session's environment at the top level and every session's whole
        environment (versions, device, host, git revision, world size, ...) in "sessions", oldest first,
        so a resumed run keeps where and with what each part of it ran."""
        f = self.path / ENV_FILE
        sessions = []
        if f.exists():
            try:
                sessions = json.loads(f.read_text()).get("sessions", [])
            except json.JSONDecodeError:
                sessions = []
        _write_json(f, {**env, "sessions": sessions + [dict(env)]})

    def add_session_timing(self, timing: dict[str, Any]) -> None:
        """Merge `timing` (world size, model load and generation times, samples/s) into the newest
        session of env.json."""
        f = self.path / ENV_FILE
        env = json.loads(f.read_text()) if f.exists() else {}
        sessions = env.get("sessions") or [{}]
        sessions[-1] = {**sessions[-1], **timing}
        env["sessions"] = sessions
        _write_json(f, env)

    def load_records(self) -> dict[str, dict[str, Any]]:
        """Records already written, keyed by sample id (first occurrence wins).

        A last line cut short by a kill is dropped and the file truncated back to the last
        complete record; a corrupt line anywhere else is a DataError (the file was edited).
        """
        return load_records(self.records_path, repair=True)

    def append(self, rank: int | None = None) -> "RecordWriter":
        """A writer appending to records.jsonl, or to rank `rank`'s own file under torchrun."""
        return RecordWriter(self.records_path if rank is None else rank_file(self.path, rank))

    def merge_ranks(self) -> int:
        """Fold the rank files into records.jsonl (see `merge_rank_files`)."""
        return merge_rank_files(self.path)

    def remove_rank_files(self) -> None:
        for f in rank_files(self.path):
            f.unlink()

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json(self.path / SUMMARY_FILE, summary)


class RecordWriter:
    """Appends one JSON object per line and flushes it, so a kill loses at most the line in flight."""

    def __init__(self, path: Path):
        import jsonlines

        self._fp = open(path, "a", encoding="utf-8")
        self._writer = jsonlines.Writer(self._fp, flush=True, sort_keys=False)

    def write(self, record: dict[str, Any]) -> None:
        self._writer.write(record)

    def close(self) -> None:
        self._writer.close()
        self._fp.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_record(rec: Any) -> bool:
    """The fields aggregation reads: id, task, length (int) and score (a number in 0..100, not a bool:
    a NaN left by a hand edit would turn every average into nan)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not isinstance(rec.get("task"), str):
        return False
    length, score = rec.get("length"), rec.get("score")
    return (isinstance(length, int) and not isinstance(length, bool)
            and isinstance(score, (int, float)) and not isinstance(score, bool) and 0 <= score <= 100)


def load_records(path: Path, *, repair: bool = False) -> dict[str, dict[str, Any]]:
    """Read records.jsonl into {id: record}. See RunDir.load_records for the torn-line rule."""
    if not path.exists():
        return {}
    if repair and path.is_symlink():  # repairing truncates: never a file the link points to
        raise DataError(f"{path} is a symbolic link; a run directory must hold its own files")
    data = path.read_bytes()
    records: dict[str, dict[str, Any]] = {}
    pos = 0
    lineno = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        last = end == -1
        line = data[pos:] if last else data[pos:end]
        lineno += 1
        try:
            rec = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            rec = False
        if rec is False or (last and rec is not None):
            # A complete JSON object without its newline is also torn: the writer always ends lines.
            if not last and data[end + 1:].strip():
                raise DataError(f"{path} line {lineno} is corrupt; rerun with --overwrite to start afresh")
            if repair:
                with open(path, "r+b") as fp:
                    fp.truncate(pos)
            break
        if rec is not None:
            if not _is_record(rec):
                raise DataError(f"{path} line {lineno} is not a sample record (it needs an id, a task, an int length "
                                "and a score in 0..100); rerun with --overwrite to start afresh")
            records.setdefault(rec["id"], rec)
        pos = end + 1
    return records


def sample_record(sample: Any, prediction: str, new_tokens: int, *, backend: str, batch_size: int,
                  timings: dict[str, Any]) -> dict[str, Any]:
    """The record of one finished sample, as records.jsonl holds it (field names as the samples')."""
    from rattn_eval.tasks.metrics import score_sample

    return {
        "id": sample.id, "index": sample.index, "task": sample.task, "length": sample.length, "seed": sample.seed,
        "prediction": prediction, "answers": list(sample.answers),
        # identifies the prompt, so compare pairs two runs' records only where they scored the same text
        "input_sha": hashlib.sha256(sample.input.encode("utf-8")).hexdigest()[:16],
        "score": score_sample(sample.task, prediction, list(sample.answers)),
        "num_tokens": sample.num_tokens, "output_tokens": new_tokens,
        "depth": sample.depth, "answer_position": sample.answer_position,
        "backend": backend, "batch_size": batch_size, "timings": timings,
    }


def rank_file(path: str | Path, rank: int) -> Path:
    return Path(path) / RANK_FILE.format(rank=rank)


def rank_files(path: str | Path) -> list[Path]:
    """The per-rank record files of a run directory, in rank order."""
    found = []
    for f in Path(path).glob("records.rank*.jsonl"):
        m = _RANK_FILE_RE.match(f.name)
        if m:
            found.append((int(m.group(1)), f))
    return [f for _, f in sorted(found)]


def merge_rank_files(path: str | Path) -> int:
    """Fold every records.rank*.jsonl of run directory `path` into records.jsonl, then delete them.

    records.jsonl keeps its lines and order; the rank files' records whose id it lacks are
    appended (rank order, file order; the first occurrence of an id wins), byte for byte. A
    torn last line in any file (a kill mid-write) is dropped first. The new records.jsonl is
    written to a temporary file, synced and renamed over the old one, and only then are the
    rank files removed: a crash at any point loses no record (a second merge dedupes).
    Returns the number of records added.
    """
    path = Path(path)
    files = rank_files(path)
    main = path / RECORDS_FILE
    seen = set(load_records(main, repair=True))  # drops a torn last line in place
    if not files:
        return 0
    added: list[bytes] = []
    for f in files:
        load_records(f, repair=True)  # torn-line repair; a corrupt middle line is a DataError
        for line in f.read_bytes().splitlines():
            if not line.strip():
                continue
            rid = json.loads(line)["id"]
            if rid not in seen:
                seen.add(rid)
                added.append(line)
    if added:
        tmp = main.with_name(main.name + ".merge.tmp")
        with open(tmp, "wb") as fp:
            if main.exists():
                fp.write(main.read_bytes())
            fp.write(b"".join(line + b"\n" for line in added))
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, main)
    for f in files:
        f.unlink()
    return len(added)


def belongs(record: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a record is one of the samples a run with this config.json plans: one of its tasks and
    lengths, its seed, an index below its n, and the id those give. The runner's summary counts
    exactly these (it looks the planned ids up); compare and report drop any other record."""
    from rattn_eval.tasks.base import sample_id

    try:
        task, length, index = record["task"], int(record["length"]), int(record.get("index", -1))
        seed, n = int(config.get("seed", 0)), int(config.get("n", 0))
    except (TypeError, ValueError):
        return False
    return (task in (config.get("resolved_tasks") or []) and length in [int(L) for L in config.get("lengths") or []]
            and 0 <= index < n and record["id"] == sample_id(task, length, seed, index))


def read_run_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """Every record of a run directory, keyed by id: records.jsonl, then the rank files a killed
    torchrun run leaves until a resume merges them (the first occurrence of an id wins, as the merge)."""
    records = load_records(Path(path) / RECORDS_FILE)
    for f in rank_files(path):
        for rid, rec in load_records(f).items():
            records.setdefault(rid, rec)
    return records


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Human-readable list of result-relevant keys whose values differ, or "" when none do."""
    keys = sorted((set(old) | set(new)) - RESUME_NEUTRAL_KEYS)

    def get(d, k):
        return d.get(k, ABSENT_MEANS.get(k))

    def same(k):  # the task set, not its order, decides which samples a run holds
        a, b = get(old, k), get(new, k)
        if k in ORDER_NEUTRAL_KEYS and isinstance(a, list) and isinstance(b, list):
            return sorted(map(str, a)) == sorted(map(str, b))
        return a == b

    diffs = [f"{k}: {get(old, k)!r} there vs {get(new, k)!r} now" for k in keys if not same(k)]
    return "; ".join(diffs)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


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
        (never averaged over a smaller set). Error bars: `tasks.metrics.cell_stats`.
    """
    from rattn_eval.tasks.metrics import cell_stats, mean_stderr

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
    from rattn_eval.tasks import metrics

    lengths = sorted(length_scores)
    if not lengths or any(length_scores[L] is None for L in lengths):
        avg = winc = wdec = None
    else:
        avg = metrics.average(length_scores)
        winc = metrics.weighted_average(length_scores, increasing=True)
        wdec = metrics.weighted_average(length_scores, increasing=False)
    prefix: dict[int, float] = {}
    for L in lengths:
        if length_scores[L] is None:
            break
        prefix[L] = length_scores[L]
    determined = bool(prefix) and (len(prefix) == len(lengths) or any(v <= threshold for v in prefix.values()))
    eff = metrics.effective_length(prefix, threshold) if determined else None
    return {"avg": avg, "wavg_inc": winc, "wavg_dec": wdec, "effective_length": eff,
            "effective_length_determined": determined}
