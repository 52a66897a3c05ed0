"""SIGKILL a run mid-way, rerun it: the records equal an uninterrupted run's, nothing lost or scored twice."""

import json
import os
import signal
import subprocess
import sys
import time

from rattn_eval.runner import RunConfig, run

N = 6
ARGS = ["run", "-q", "-t", "niah_single_1", "-l", "1k", "-n", str(N), "-m", "debug", "--batch-size", "1"]


def complete_lines(path):
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_bytes().split(b"\n")[:-1]]


def test_kill_and_resume(tmp_path):
    out = tmp_path / "killed"
    rec_file = out / "records.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rattn_eval.cli", *ARGS, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(complete_lines(rec_file)) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = len(complete_lines(rec_file))
    assert 0 < at_kill < N, f"{at_kill} records at the kill; stderr: {proc.stderr.read().decode()[-2000:]}"
    assert not (out / "summary.json").exists()

    resumed = run(RunConfig(tasks=("niah_single_1",), lengths=(1024,), model="debug", n=N, batch_size=1,
                            out=str(out)), progress=False)
    fresh = run(RunConfig(tasks=("niah_single_1",), lengths=(1024,), model="debug", n=N, batch_size=1,
                          out=str(tmp_path / "fresh")), progress=False)
    got = complete_lines(rec_file)
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids)) == N  # no duplicates, nothing lost
    key = lambda r: (r["id"], r["index"], r["prediction"], r["score"])  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, complete_lines(tmp_path / "fresh" / "records.jsonl")))
    assert {k: v for k, v in resumed.items()} == {k: v for k, v in fresh.items()}
