"""Sharded runs under a real `torchrun` (2 processes, gloo, CPU) against a 1-process run of the same
sweep: identical records and scores; a rank SIGKILLed mid-run and the rerun with 1 process; a 1-process
run killed and resumed with 2 ranks. Shares are keyed by sample id, so any number of ranks completes
exactly the missing samples."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rattn_eval import distributed as D
from rattn_eval import results as R
from rattn_eval.runner import RunConfig, run

TORCHRUN = Path(sys.executable).with_name("torchrun")
TASKS, LENGTHS, N, BATCH = ("niah_single_1", "vt"), (1024, 2048), 3, 2
TOTAL = len(TASKS) * len(LENGTHS) * N
ARGS = ["run", "-q", "-t", ",".join(TASKS), "-l", ",".join(map(str, LENGTHS)), "-n", str(N), "-m", "debug",
        "--batch-size", str(BATCH)]
KEY_FIELDS = ("id", "index", "task", "length", "prediction", "answers", "score", "num_tokens", "output_tokens",
              "depth", "backend")

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # one thread per rank (2 ranks share 2 cores) and a sample cache shared by every process here
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "RATTN_EVAL_CACHE": str(tmp_path_factory.mktemp("samples"))}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, env, monkeypatch_module):
    """The 1-process run every sharded run must reproduce."""
    monkeypatch_module.setenv("RATTN_EVAL_CACHE", env["RATTN_EVAL_CACHE"])
    out = tmp_path_factory.mktemp("single") / "run"
    summary = run(RunConfig(tasks=TASKS, lengths=LENGTHS, model="debug", n=N, batch_size=BATCH, out=str(out)),
                  progress=False)
    recs = lines(out / "records.jsonl")
    assert len(recs) == TOTAL and summary["complete"]
    return SimpleNamespace(summary=summary, records=recs, out=out)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def lines(path: Path) -> list[dict]:
    """Complete lines only (a kill may leave a torn last line)."""
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_bytes().split(b"\n")[:-1]]


def torchrun(nproc: int, out: Path, env: dict, **popen) -> subprocess.Popen:
    cmd = [str(TORCHRUN), "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "rattn_eval.cli", *ARGS, "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def finish(proc: subprocess.Popen, timeout: float = 150) -> str:
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def keyed(records) -> list[tuple]:
    return sorted(tuple(json.dumps(r[k]) for k in KEY_FIELDS) for r in records)


def assert_same_as(baseline, out: Path) -> list[dict]:
    recs = lines(out / "records.jsonl")
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == TOTAL  # nothing lost, nothing twice
    assert keyed(recs) == keyed(baseline.records)  # fp32 CPU: identical predictions and scores
    summary = json.loads((out / "summary.json").read_text())
    for k in ("scores", "counts", "length_scores", "avg", "effective_length", "complete"):
        assert summary[k] == baseline.summary[k], k
    assert R.rank_files(out) == []  # folded into records.jsonl
    assert not (out / R.LOCK_FILE).exists()  # held by rank 0 (the other ranks were not refused), released at the end
    return recs


def shares(baseline, world: int, done=()) -> list[list[str]]:
    """What each rank of a `world`-rank run must take, from the baseline's records (same samples)."""
    by_cell = {}
    for r in baseline.records:
        if r["id"] not in done:
            by_cell.setdefault((TASKS.index(r["task"]), r["length"]), []).append(
                SimpleNamespace(id=r["id"], index=r["index"], num_tokens=r["num_tokens"]))
    return D.assign_shares([by_cell[k] for k in sorted(by_cell)], world)


def rank_pid(torchrun_pid: int, rank: int, deadline: float) -> int | None:
    """The worker process of `rank` among torchrun's children (found by its RANK variable)."""
    while time.time() < deadline:
        for task in Path(f"/proc/{torchrun_pid}/task").glob("*"):
            for child in (task / "children").read_text().split():
                try:
                    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"RANK={rank}".encode() in environ:
                    return int(child)
        time.sleep(0.05)
    return None


def session(out: Path) -> dict:
    return json.loads((out / "env.json").read_text())["sessions"][-1]


def test_two_ranks_equal_one_process(baseline, env, tmp_path):
    out = tmp_path / "two"
    finish(torchrun(2, out, env))
    assert_same_as(baseline, out)
    env_json = json.loads((out / "env.json").read_text())
    assert env_json["world_size"] == 2 and env_json["dist_backend"] == "gloo"
    s = session(out)
    assert s["world_size"] == 2 and s["samples"] == TOTAL and s["samples_per_s"] > 0 and s["model_load_s"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert {**cfg, "out": None} == {**json.loads((baseline.out / "config.json").read_text()), "out": None}


def test_kill_one_rank_then_resume_with_one_process(baseline, env, tmp_path):
    out = tmp_path / "killed2"
    share1 = set(shares(baseline, 2)[1])
    proc = torchrun(2, out, env)
    deadline = time.time() + 150
    pid = rank_pid(proc.pid, 1, deadline)
    assert pid is not None, "rank 1 never started"
    rank1 = R.rank_file(out, 1)
    while time.time() < deadline and proc.poll() is None and not lines(rank1):
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    text, _ = proc.communicate(timeout=60)
    written = {r["id"] for r in lines(rank1)}
    assert 0 < len(written) < len(share1), text.decode(errors="replace")[-3000:]
    assert written <= share1  # a rank writes only its own share
    assert proc.returncode != 0 and not (out / "summary.json").exists()
    before = {r["id"] for f in [out / "records.jsonl", *R.rank_files(out)] for r in lines(f)}
    assert len(before) < TOTAL

    resumed = run(RunConfig(tasks=TASKS, lengths=LENGTHS, model="debug", n=N, batch_size=BATCH, out=str(out)),
                  progress=False)
    assert resumed["complete"] and resumed["scores"] == baseline.summary["scores"]
    assert_same_as(baseline, out)
    assert session(out)["samples"] == TOTAL - len(before)  # exactly the missing ones were generated


def test_kill_one_process_then_resume_with_two_ranks(baseline, env, tmp_path):
    out = tmp_path / "killed1"
    proc = subprocess.Popen([sys.executable, "-m", "rattn_eval.cli", *ARGS, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 150
    while time.time() < deadline and proc.poll() is None and len(lines(out / "records.jsonl")) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = [r["id"] for r in lines(out / "records.jsonl")]
    before = set(kept)
    assert 0 < len(before) < TOTAL, proc.stderr.read().decode()[-2000:]

    finish(torchrun(2, out, env))
    recs = assert_same_as(baseline, out)
    assert [r["id"] for r in recs[:len(kept)]] == kept  # the merge appends; earlier records stay first
    s = session(out)
    assert s["world_size"] == 2 and s["samples"] == TOTAL - len(before)
    # each rank took its deal of what was missing, nothing else
    missing = shares(baseline, 2, done=before)
    assert sorted(missing[0] + missing[1]) == sorted({r["id"] for r in recs} - before)


def test_a_launch_on_a_directory_in_use_is_refused_on_every_rank(env, tmp_path):
    """Rank 0 takes the run directory's lock for the launch; when another run holds it, every rank stops
    with rank 0's one sentence (none waits at a barrier) and nothing in the directory changes."""
    out = tmp_path / "busy"
    with R.RunDir.prepare(out, {"model": "debug", "resolved_tasks": list(TASKS), "lengths": list(LENGTHS), "n": N}):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        proc = torchrun(2, out, env)
        text = proc.communicate(timeout=150)[0].decode(errors="replace")
        assert proc.returncode != 0, text[-3000:]
        errors = [line for line in text.splitlines() if line.startswith("rattn-eval: error:")]
        assert len(errors) == 2 and all("in use by another run" in e for e in errors), text[-3000:]  # one per rank
        assert "rattn_eval/" not in text  # no traceback of a rank (torchrun prints its own)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
