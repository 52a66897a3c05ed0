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
    .lock           held (flock) by the one run writing the directory: its pid, host and start time
    records.jsonl.bad  lines `--repair` set aside (unreadable, or not sample records), with their line numbers
    report/         what `rattn-eval report` writes by default

A killed run leaves at most one partially written last line in records.jsonl; `RunDir.load_records`
drops it (and truncates the file back to the last complete record), so a rerun resumes exactly
where the kill happened. Records are keyed by sample id: nothing is scored twice.

summary.json is computed by `rattn_eval.aggregate.summarize` from the records this module reads.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rattn_eval.errors import ConfigError, DataError

CONFIG_FILE = "config.json"
ENV_FILE = "env.json"
RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
RANK_FILE = "records.rank{rank}.jsonl"
_RANK_FILE_RE = re.compile(r"^records\.rank(\d+)\.jsonl$")
LOCK_FILE = ".lock"
# What `rattn_eval.report.write_report` writes into RUN/report (tests/runner keeps the two in step).
REPORT_FILES = frozenset({"report.md", "score_vs_length.png", "niah_heatmap.png"})
# flock's errors on a file system without locks (ENOTSUP is EOPNOTSUPP on Linux, not everywhere)
_FLOCK_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP})

log = logging.getLogger(__name__)

# Keys every config.json a run writes holds; a checkpoint's config.json (a model config) lacks them.
RUN_CONFIG_KEYS = ("model", "n", "lengths", "resolved_tasks")

# Config keys that do not change any result, so a rerun may differ in them and still resume.
RESUME_NEUTRAL_KEYS = frozenset({"out", "overwrite", "repair", "batch_size", "limit", "device", "tasks", "threshold",
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
    """One run directory on disk. Lock it with `RunDir.lock` (a run's first step), then `open` it, which
    enforces the resume rules and writes config.json (`prepare` does both); use it as a context manager
    (or call `close`) so the lock goes when the run ends, failed or not."""

    path: Path
    _lock: "RunLock | None" = field(default=None, repr=False, compare=False)
    _created: list[Path] = field(default_factory=list, repr=False, compare=False)  # by `lock`, deepest first

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS_FILE

    @classmethod
    def prepare(cls, path: str | Path, config: dict[str, Any], *, overwrite: bool = False,
                repair: bool = False, model_revision: str | None = None, weights: str | None = None) -> "RunDir":
        """`lock` then `open`: create and lock `path`, or lock and reopen it to resume when its config.json
        matches `config`. The lock is released when `open` refuses."""
        rd = cls.lock(path)
        try:
            rd.open(config, overwrite=overwrite, repair=repair, model_revision=model_revision, weights=weights)
        except BaseException:
            rd.close()
            raise
        return rd

    @classmethod
    def lock(cls, path: str | Path) -> "RunDir":
        """Check that `path` may hold a run, create it and take its lock; the first step of a run, before
        the model loads, so a second run on a busy directory is refused at once.

        Only a run directory (or an empty folder) is locked: a folder of someone else's gets no lock file.
        The lock is taken before config.json is trusted and before anything is written or deleted, so a
        second run is refused rather than computing every sample twice or writing into files another run
        deletes. Release it with `close` (or use the RunDir as a context manager).
        """
        path = Path(path)
        check_writable(path)
        rd = cls(path)
        rd.check_files()
        rd.check_is_run_dir()
        absent = path.absolute()
        while not absent.exists():
            rd._created.append(absent)  # deepest first
            absent = absent.parent
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create output directory {path}: {e.strerror or e}") from None
        try:
            rd._lock = RunLock.acquire(path)
        except BaseException:
            rd.close()
            raise
        return rd

    def open(self, config: dict[str, Any], *, overwrite: bool = False, repair: bool = False,
             model_revision: str | None = None, weights: str | None = None) -> None:
        """Start or resume the run of `config` in this (locked) directory, writing config.json.

        One holding results of a different config is refused, naming the differing keys, or with
        `overwrite` cleared of the files a run writes (nothing else). A resume whose model is another hub
        commit (`model_revision`), or whose weights have another fingerprint (`weights`, see
        `runner.pipeline.weights_fingerprint`: a checkpoint folder changed in place), than the newest session of
        env.json recorded is refused too. `repair` sets unreadable record lines and a broken env.json aside.
        Nothing is written before a refusal.
        """
        self.check_files()
        old = self.check_is_run_dir()
        if old is not None and not overwrite:
            newest = self._newest_session()
            old = self._check_model_revision(old, config, model_revision, newest)
            diff = config_differences(without_unused_options(old), config)
            if diff:
                hint = ("; a run made before prompt profiles existed resumes with --prompts native"
                        if "prompts" not in old and config.get("prompts") != "native" else "")
                raise ConfigError(
                    f"{self.path} holds a run with a different config ({diff}); "
                    f"rerun with --overwrite to replace it, or choose another --out{hint}"
                )
            self._check_weights(config, weights, newest)  # the same model argument: did its weights change?
        if overwrite:
            self._remove_run_files()
        if repair:
            for f in [self.records_path, *rank_files(self.path)]:
                set_aside_bad_lines(f)
        self._read_env(set_aside=repair)
        _write_json(self.path / CONFIG_FILE, config)

    def _newest_session(self) -> dict[str, Any]:
        """The newest session of env.json ({} when there is none, or when env.json is broken: --repair sets
        it aside, and without it `open` refuses)."""
        try:
            env = self._read_env()
        except DataError:
            return {}
        return (env.get("sessions") or [env])[-1]

    def _check_model_revision(self, old: dict[str, Any], config: dict[str, Any], revision: str | None,
                              newest: dict[str, Any]) -> dict[str, Any]:
        """Refuse to resume with other weights than the newest session's hub commit (a hub id's main may
        have moved since). Returns `old` to compare `config` with: where both name the same commit of one
        hub repo, "ORG/NAME" and "ORG/NAME@COMMIT" are the same model, so pinning the commit resumes."""
        recorded = newest.get("model_revision")
        if not (isinstance(recorded, str) and recorded and revision):
            return old
        repo = str(old.get("model", "")).split("@", 1)[0]
        if recorded != revision:
            raise ConfigError(f"{self.path} holds results of {repo} at commit {recorded}, but {config.get('model')} "
                              f"is now commit {revision}; pin -m {repo}@{recorded} to resume with the same weights, "
                              "or choose another --out (or --overwrite to start afresh)")
        if repo == str(config.get("model", "")).split("@", 1)[0]:
            return {**old, "model": config.get("model")}
        return old

    def _check_weights(self, config: dict[str, Any], weights: str | None, newest: dict[str, Any]) -> None:
        """Refuse to resume when the newest session recorded another weights fingerprint than `weights`."""
        recorded = newest.get("weights_fingerprint")
        if isinstance(recorded, str) and recorded and weights and recorded != weights:
            raise ConfigError(f"{self.path} holds results of {config.get('model')} with other weights than it has "
                              f"now (weights fingerprint {recorded} then, {weights} now): the checkpoint changed "
                              "since; choose another --out, or --overwrite to start afresh")

    def close(self) -> None:
        """Release the lock (a no-op on ranks that do not hold it), and remove the folders `lock` created
        when the run wrote nothing into them (it failed before it started)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        for d in self._created:
            try:
                d.rmdir()
            except OSError:  # not empty: the run wrote into it
                break
        self._created = []

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_files(self) -> None:
        """Refuse a run directory whose files are links or not plain files: a run writes, truncates
        and replaces them, which must never reach a file elsewhere."""
        for f in [self.path / n for n in (CONFIG_FILE, ENV_FILE, RECORDS_FILE, SUMMARY_FILE)] + rank_files(self.path):
            if f.is_symlink():
                raise DataError(f"{f} is a symbolic link; a run directory must hold its own files (copy the file "
                                "in, or choose another --out)")
            if f.exists() and not f.is_file():
                raise DataError(f"{f} is not a regular file; move it away or choose another --out")

    def check_is_run_dir(self) -> dict[str, Any] | None:
        """The run config of this directory, or None when it is missing or empty of anything but files a run
        writes; DataError for any other folder (a checkpoint, a user's folder), which a run must not write
        into, let alone clear with --overwrite."""
        if not self.path.is_dir():
            return None
        config = self.read_config()
        if config is None:
            others = sorted(p.name for p in self.path.iterdir() if not _written_by_run(p))
            if others:
                raise DataError(f"{self.path} is not a run directory (it holds {others[0]!r} and no run config); "
                                "choose another --out")
        return config

    def read_config(self) -> dict[str, Any] | None:
        """config.json, or None when there is none; DataError when it is not a run's config."""
        f = self.path / CONFIG_FILE
        if not f.exists():
            return None
        try:
            config = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            config = None
        if not is_run_config(config):
            raise DataError(f"{self.path} is not a run directory: {f} is not a run config (a JSON object with "
                            f"{', '.join(RUN_CONFIG_KEYS)}, as rattn-eval run writes); choose another --out")
        return config

    def _remove_run_files(self) -> None:
        """--overwrite: delete what a run wrote here (its report/ only if that holds nothing else)."""
        for p in self.path.iterdir():
            if p.name != LOCK_FILE and p.is_file() and _written_by_run(p):
                p.unlink()
        report = self.path / "report"
        if _is_report_dir(report):
            shutil.rmtree(report)

    def _read_env(self, *, set_aside: bool = False) -> dict[str, Any]:
        """env.json ({} when absent). One that is not an environment history (not JSON, not an object,
        "sessions" not a list of objects) is a DataError naming --repair; with `set_aside` it is renamed
        env.json.bad-<UTC time> and a new history starts, so nothing is lost."""
        f = self.path / ENV_FILE
        if not f.exists():
            return {}
        try:
            env = json.loads(f.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError):
            env = None
        sessions = env.get("sessions", []) if isinstance(env, dict) else None
        if isinstance(sessions, list) and all(isinstance(s, dict) for s in sessions):
            return env
        if not set_aside:
            raise DataError(f"{f} is not a run's environment history (a JSON object with a list of sessions); rerun "
                            f"with --repair to set it aside as {ENV_FILE}.bad-<time> and start a new one")
        os.replace(f, f.with_name(f"{ENV_FILE}.bad-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"))
        return {}

    def write_env(self, env: dict[str, Any]) -> None:
        """Write env.json: the newest session's environment at the top level and every session's whole
        environment (versions, device, host, git revision, world size, ...) in "sessions", oldest first,
        so a resumed run keeps where and with what each part of it ran."""
        sessions = self._read_env().get("sessions", [])
        _write_json(self.path / ENV_FILE, {**env, "sessions": sessions + [dict(env)]})

    def add_session_timing(self, timing: dict[str, Any]) -> None:
        """Merge `timing` (world size, model load and generation times, samples/s) into the newest
        session of env.json."""
        env = self._read_env()
        sessions = env.get("sessions") or [{}]
        sessions[-1] = {**sessions[-1], **timing}
        env["sessions"] = sessions
        _write_json(self.path / ENV_FILE, env)

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

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json(self.path / SUMMARY_FILE, summary)


def is_run_config(config: Any) -> bool:
    """Whether `config` (parsed config.json) is what `rattn-eval run` writes, not e.g. a model config."""
    return (isinstance(config, dict) and all(k in config for k in RUN_CONFIG_KEYS)
            and isinstance(config["n"], int) and isinstance(config["lengths"], list))


def _written_by_run(p: Path) -> bool:
    """Whether `p` is a file `rattn-eval run` writes in a run directory (with its temporary and set-aside
    copies), or a report/ folder holding only what `rattn-eval report` writes."""
    if p.name == "report":
        return _is_report_dir(p)
    base = re.sub(r"\.(tmp|merge\.tmp|bad|bad-\d{8}T\d{6}Z)$", "", p.name)
    return base in (CONFIG_FILE, ENV_FILE, RECORDS_FILE, SUMMARY_FILE, LOCK_FILE) or bool(_RANK_FILE_RE.match(base))


def _is_report_dir(p: Path) -> bool:
    return (p.is_dir() and not p.is_symlink()
            and all(f.name in REPORT_FILES and f.is_file() and not f.is_symlink() for f in p.iterdir()))


class RunLock:
    """The exclusive lock of one run directory: `flock` on its .lock file, kept open while the run lasts.

    The kernel drops a flock when its process dies, so a killed run never leaves a lock behind that
    needs clearing by hand; the file's content (pid, host, start time) only names the holder when a
    second run is refused. Under torchrun, rank 0 holds it for the whole launch (the other ranks write
    only their own rank files, and only while rank 0 runs). Where the file system has no flock (some
    Lustre and NFS mounts), the run goes on without a lock after a one-line warning.
    """

    def __init__(self, fd: int | None, path: Path):
        self._fd = fd  # None: the file system has no flock and the run goes on unlocked
        self.path = path

    @classmethod
    def acquire(cls, directory: Path) -> "RunLock":
        """Lock `directory`, or raise ConfigError naming the run that holds it."""
        f = directory / LOCK_FILE
        while True:
            try:
                fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ConfigError(f"cannot create the lock file {f}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in _FLOCK_UNSUPPORTED:
                    log.warning("the file system of %s does not support locks (flock: %s), so this run goes on "
                                "without one: make sure no other run writes to %s at the same time",
                                directory, e.strerror or e, directory)
                    return cls(None, f)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise ConfigError(f"cannot lock {f}: {e.strerror or e}") from None
                raise ConfigError(f"{directory} is in use by another run ({_holder(f)}); wait for it to end "
                                  "or choose another --out") from None
            # The previous holder removes the file as it releases it: lock only the file still there.
            try:
                if os.stat(f).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        holder = {"pid": os.getpid(), "host": platform.node(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder).encode())
        except OSError as e:
            os.close(fd)
            raise _write_error(f, e) from None
        return cls(fd, f)

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked, so no one locks a file about to vanish
        os.close(self._fd)
        self._fd = None


def _holder(lock_file: Path) -> str:
    """'pid 123 on host, since <time>' from a lock file (written right after locking: may still be empty)."""
    try:
        h = json.loads(lock_file.read_text())
        return f"pid {h['pid']} on {h['host']}, since {h['since']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "it has just started"


class RecordWriter:
    """Appends one JSON object per line, each in whole unbuffered writes, so a kill or a full disk leaves
    at most a torn last line, which `load_records` repairs."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._fp = open(path, "ab", buffering=0)
        except OSError as e:
            raise _write_error(path, e) from None

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
        try:
            _write_all(self._fp, line)
        except OSError as e:
            raise _write_error(self.path, e) from None

    def close(self) -> None:
        self._fp.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_all(fp: Any, data: bytes) -> None:
    """Write all of `data` to an unbuffered binary file (a raw write may write only part of it)."""
    view = memoryview(data)
    while view:
        view = view[fp.write(view):]


def _write_error(path: Path, e: OSError) -> ConfigError:
    return ConfigError(f"cannot write {path}: {e.strerror or e} (every finished record is kept; rerun the same "
                       "command once it can be written, to resume)")


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
    way_out = (f"rerun with --repair to move such lines to {path.name}.bad and keep every valid record "
               "(or with --overwrite to start afresh)")
    while pos < len(data):
        end = data.find(b"\n", pos)
        last = end == -1
        line = data[pos:] if last else data[pos:end]
        lineno += 1
        rec = _parse_line(line)
        if rec is _UNREADABLE or (last and rec is not None):
            # A complete JSON object without its newline is also torn: the writer always ends lines.
            if not last and data[end + 1:].strip():
                raise DataError(f"{path} line {lineno} is corrupt; {way_out}")
            if repair:
                with open(path, "r+b") as fp:
                    fp.truncate(pos)
            break
        if rec is not None:
            if not _is_record(rec):
                raise DataError(f"{path} line {lineno} is not a sample record (it needs an id, a task, an int length "
                                f"and a score in 0..100); {way_out}")
            records.setdefault(rec["id"], rec)
        pos = end + 1
    return records


_UNREADABLE = object()


def _parse_line(line: bytes) -> Any:
    """The JSON value on one line of a records file: None when blank, _UNREADABLE when not JSON."""
    try:
        return json.loads(line) if line.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _UNREADABLE


def set_aside_bad_lines(path: Path) -> int:
    """`run --repair`: move the complete lines of a records file that are not sample records (unreadable
    JSON, or a value without the fields aggregation needs) to <file>.bad, appended as {"line", "text"}
    objects, and keep every other line byte for byte. A torn last line is left for `load_records`' repair.
    The .bad file is written and synced before the records file is replaced, so no line is ever lost.
    Returns the number of lines set aside.
    """
    if not path.is_file():
        return 0
    *lines, tail = path.read_bytes().split(b"\n")
    bad = [(i, line) for i, line in enumerate(lines, 1)
           if (rec := _parse_line(line)) is not None and not _is_record(rec)]
    if not bad:
        return 0
    bad_file = path.with_name(path.name + ".bad")
    text = "".join(json.dumps({"line": i, "text": line.decode("utf-8", "backslashreplace")}) + "\n"
                   for i, line in bad)
    try:
        with open(bad_file, "a", encoding="utf-8") as fp:
            fp.write(text)
            fp.flush()
            os.fsync(fp.fileno())
    except OSError as e:
        raise _write_error(bad_file, e) from None
    drop = {i for i, _ in bad}
    _replace_file(path, b"".join(line + b"\n" for i, line in enumerate(lines, 1) if i not in drop) + tail)
    return len(bad)


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
        _replace_file(main, (main.read_bytes() if main.exists() else b"") + b"".join(line + b"\n" for line in added))
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


def read_run_config(path: str | Path) -> dict[str, Any]:
    """config.json of run directory `path`, for the readers (compare, report, benchmarks); DataError
    when there is none or it is not what `rattn-eval run` writes."""
    path = Path(path)
    f = path / CONFIG_FILE
    if not f.is_file():
        raise DataError(f"{path} is not a run directory (no {CONFIG_FILE}); pass directories written by rattn-eval run")
    try:
        config = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{f} is not valid JSON") from None
    if not is_run_config(config):
        raise DataError(f"{f} is not a run config (a JSON object with {', '.join(RUN_CONFIG_KEYS)}, as rattn-eval "
                        "run writes)")
    return config


def read_run(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(config.json, every record keyed by id) of run directory `path` (see `read_run_records`)."""
    return read_run_config(path), read_run_records(path)


def read_env(path: str | Path) -> dict[str, Any]:
    """env.json of run directory `path` ({} when absent): the newest session at the top level, every
    session under "sessions"; DataError when it is not an environment history."""
    return RunDir(Path(path))._read_env()


def without_unused_options(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the options none of its tasks reads (`tasks.unused_option`) as unset: a run made
    before such options were refused resumes without them."""
    from rattn_eval.tasks import TASKS, unused_option

    tasks = [t for t in config.get("resolved_tasks") or [] if t in TASKS]
    prompts = config.get("prompts", ABSENT_MEANS.get("prompts"))
    out = dict(config)
    for key, arg in (("depths", "depth"), ("qa_data", "qa_data"), ("ruler_dir", "ruler_dir")):
        given = {**dict(depth=None, qa_data=None, ruler_dir=None), arg: out.get(key)}
        if tasks and out.get(key) and unused_option(tasks, prompts=prompts, **given):
            out[key] = None
    return out


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
    _replace_file(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def _replace_file(path: Path, data: bytes) -> None:
    """Replace `path` by `data` atomically (written to <path>.tmp, synced, renamed), so a crash or a full
    disk leaves the old file whole; an OSError becomes one sentence naming the file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb", buffering=0) as fp:
            _write_all(fp, data)
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, e) from None
