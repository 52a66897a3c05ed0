"""Safety of the run directory: one writer at a time (a lock), --overwrite deletes only what a run
wrote, broken files (env.json, a corrupt record line) and a full disk are one sentence with a way
out, and bad options leave nothing on disk."""

import errno
import json
import os
import platform
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from rattn_eval import results as R
from rattn_eval.cli import cli
from rattn_eval.errors import ConfigError, DataError
from rattn_eval.results import LOCK_FILE, REPORT_FILES, RunDir

N = 4
ORACLE = ["run", "-q", "-t", "niah_single_1", "-l", "1k", "-n", str(N), "-m", "oracle:correct", "--prompts", "native"]
CONFIG = {"model": "m", "resolved_tasks": ["t"], "lengths": [1], "n": 1, "seed": 0}


def cli_run(out, *args):
    r = CliRunner().invoke(cli, [*ORACLE, "--out", str(out), *args])
    assert "Traceback" not in r.output
    return r


def lines(path):
    return [json.loads(x) for x in path.read_bytes().split(b"\n")[:-1]] if path.exists() else []


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# 1. One writer at a time.

def test_a_second_run_is_refused_naming_the_holder_and_deletes_nothing(tmp_path):
    out = tmp_path / "r"
    assert cli_run(out).exit_code == 0
    before = {p: p.read_bytes() for p in out.iterdir()}
    held = RunDir.prepare(out, json.loads((out / "config.json").read_text()))  # a run in progress
    try:
        for extra in ([], ["--overwrite"], ["--seed", "1", "--overwrite"]):
            r = cli_run(out, *extra)
            assert r.exit_code == 2, r.output
            assert "in use by another run" in r.output and f"pid {os.getpid()} on {platform.node()}, since" in r.output
            assert "--overwrite" not in r.output
        assert {p: p.read_bytes() for p in out.iterdir() if p.name != LOCK_FILE} == before
    finally:
        held.close()
    assert cli_run(out, "--seed", "1", "--overwrite").exit_code == 0
    assert not (out / LOCK_FILE).exists()  # released at the end of the run


def test_the_lock_is_released_when_the_run_fails(tmp_path, monkeypatch):
    from rattn_eval.runner import oracle

    def fail(self, *a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(oracle.OracleModel, "generate", fail)
    with pytest.raises(RuntimeError):
        CliRunner().invoke(cli, [*ORACLE, "--out", str(tmp_path / "r")], catch_exceptions=False)
    monkeypatch.undo()
    assert not (tmp_path / "r" / LOCK_FILE).exists()
    assert cli_run(tmp_path / "r").exit_code == 0


@pytest.mark.parametrize("fresh", [True, False], ids=["new-dir", "resume"])
def test_a_second_run_is_refused_before_its_model_loads(tmp_path, monkeypatch, fresh):
    """The lock is a run's first step: a busy --out is refused before the model loads or any sample is
    generated, not minutes later."""
    from rattn_eval.runner import pipeline

    out = tmp_path / "r"
    if not fresh:
        assert cli_run(out).exit_code == 0
    held = RunDir.lock(out)  # a run in progress, still loading its model
    try:
        def loader(config):
            raise AssertionError("the model loader was called on a locked run directory")

        monkeypatch.setattr(pipeline, "load_model_for_run", loader)
        r = cli_run(out)
        assert r.exit_code == 2 and "in use by another run" in r.output, r.output
    finally:
        held.close()


def test_the_lock_is_held_while_the_model_loads_and_released_when_loading_fails(tmp_path, monkeypatch):
    from rattn_eval.runner import pipeline

    out = tmp_path / "new" / "r"
    seen = []

    def loader(config):
        with pytest.raises(ConfigError, match="in use by another run"):
            RunDir.lock(out)
        seen.append(json.loads((out / LOCK_FILE).read_text())["pid"])
        raise ConfigError("no such model")

    monkeypatch.setattr(pipeline, "load_model_for_run", loader)
    r = cli_run(out)
    assert r.exit_code == 2 and "no such model" in r.output and seen == [os.getpid()]
    assert not (tmp_path / "new").exists()  # the folders the lock created go with it when nothing was written


@pytest.mark.parametrize("err", [errno.ENOLCK, errno.EOPNOTSUPP], ids=["ENOLCK", "EOPNOTSUPP"])
def test_a_file_system_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog, err):
    """Lustre and some NFS mounts have no flock: the run goes on (one warning) instead of every run being
    refused; other lock errors still refuse."""
    def no_flock(fd, op):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(R.fcntl, "flock", no_flock)
    out = tmp_path / "r"
    with caplog.at_level("WARNING", logger="rattn_eval.results"):
        assert cli_run(out).exit_code == 0
    [warning] = [rec for rec in caplog.records if rec.levelname == "WARNING"]
    assert "does not support locks" in warning.getMessage() and "\n" not in warning.getMessage()
    assert len(lines(out / "records.jsonl")) == N

    def broken_flock(fd, op):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(R.fcntl, "flock", broken_flock)
    with pytest.raises(ConfigError, match="cannot lock"):
        RunDir.lock(out)


def test_a_resume_with_another_hub_commit_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    """env.json records the hub commit of each session: a resume whose ORG/NAME now resolves to another
    commit (the cache's main moved) is refused instead of mixing two sets of weights; pinning the
    recorded commit resumes."""
    import dataclasses

    from rattn_eval.runner import RunConfig, pipeline, run

    real = pipeline.load_model_for_run
    commit = {"now": "a" * 40}

    def hub_loader(config):  # an oracle standing in for a hub model: ORG/NAME[@COMMIT] at commit["now"]
        model, tok = real(dataclasses.replace(config, model=config.model.split("@")[0]))
        model.revision = commit["now"]
        return model, tok

    monkeypatch.setattr(pipeline, "load_model_for_run", hub_loader)
    out = tmp_path / "r"
    cfg = dict(tasks=("niah_single_1",), lengths=(1024,), n=2, prompts="native", out=str(out))
    run(RunConfig(model="oracle:correct", limit=1, **cfg), progress=False)
    assert json.loads((out / "env.json").read_text())["sessions"][-1]["model_revision"] == "a" * 40

    commit["now"] = "b" * 40
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match=(f"holds results of oracle:correct at commit {'a' * 40}, but oracle:correct "
                                           f"is now commit {'b' * 40}; pin -m oracle:correct@{'a' * 40} to resume")):
        run(RunConfig(model="oracle:correct", **cfg), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    commit["now"] = "a" * 40  # the pinned commit resumes the same run
    summary = run(RunConfig(model=f"oracle:correct@{'a' * 40}", **cfg), progress=False)
    assert summary["complete"] and len(lines(out / "records.jsonl")) == 2
    commit["now"] = "b" * 40  # and --overwrite starts afresh with the new weights
    assert run(RunConfig(model="oracle:correct", overwrite=True, **cfg), progress=False)["complete"]
    assert [s["model_revision"] for s in json.loads((out / "env.json").read_text())["sessions"]] == ["b" * 40]


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "r"
    code = ("import sys, time; from rattn_eval.results import RunDir\n"
            f"RunDir.prepare(sys.argv[1], {CONFIG!r}); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"locked"
    with pytest.raises(ConfigError, match=rf"in use by another run \(pid {proc.pid} on "):
        RunDir.prepare(out, CONFIG)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == proc.pid  # left behind, but no longer locked
    with RunDir.prepare(out, CONFIG):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


def test_overwrite_while_another_run_writes_is_refused_and_the_run_finishes(tmp_path):
    """Two processes on one --out: the second (with --overwrite) is refused; the first keeps writing to
    the files that are still there and ends with every sample exactly once."""
    n = 6
    args = ["run", "-q", "-t", "niah_single_1", "-l", "1k", "-n", str(n), "-m", "debug", "--batch-size", "1",
            "--out", str(tmp_path / "r")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "rattn_eval.cli", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and not lines(tmp_path / "r" / "records.jsonl"):
        time.sleep(0.02)
    second = subprocess.run([sys.executable, "-m", "rattn_eval.cli", *args, "--seed", "1", "--overwrite"], env=env,
                            capture_output=True, text=True, timeout=120)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()[-2000:]
    assert second.returncode == 2 and "in use by another run" in second.stderr, second.stderr[-2000:]
    ids = [r["id"] for r in lines(tmp_path / "r" / "records.jsonl")]
    assert len(ids) == len(set(ids)) == n
    assert len(json.loads((tmp_path / "r" / "env.json").read_text())["sessions"]) == 1


# 2. --overwrite deletes only what a run wrote.

def test_overwrite_keeps_what_the_run_did_not_write(tmp_path):
    out = tmp_path / "r"
    assert cli_run(out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "report").mkdir()
    (out / "report" / "report.md").write_text("# old report")
    (out / "report" / "thesis.tex").write_text("\\chapter{mine}")
    assert cli_run(out, "--seed", "1", "--overwrite").exit_code == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "report" / "thesis.tex").read_text() == "\\chapter{mine}"
    assert (out / "report" / "report.md").exists()  # a report/ holding anything else is left whole
    assert {r["seed"] for r in lines(out / "records.jsonl")} == {1}
    # a report/ of only what `rattn-eval report` writes goes with the run
    (out / "report" / "thesis.tex").unlink()
    assert cli_run(out, "--seed", "2", "--overwrite").exit_code == 0
    assert not (out / "report").exists() and (out / "notes.txt").exists()


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_folder_that_is_not_a_run_directory_is_refused_untouched(tmp_path, extra):
    ckpt = tmp_path / "ckpt"  # a checkpoint given as --out by mistake
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"name": "debug", "hidden_size": 64, "n_layers": 4}))
    (ckpt / "model.safetensors").write_bytes(b"weights")
    user = tmp_path / "thesis"  # a user's folder without any config.json
    user.mkdir()
    (user / "thesis.tex").write_text("\\chapter{mine}")
    for folder in (ckpt, user):
        before = {p: p.read_bytes() for p in folder.iterdir()}
        r = cli_run(folder, *extra)
        assert r.exit_code == 2 and "is not a run directory" in r.output and "choose another --out" in r.output
        assert "--overwrite" not in r.output
        assert {p: p.read_bytes() for p in folder.iterdir()} == before  # no lock file either


def test_report_files_are_what_report_writes(tmp_path):
    from rattn_eval.report import write_report

    out = tmp_path / "r"
    assert cli_run(out).exit_code == 0
    write_report([out])
    assert set(os.listdir(out / "report")) == REPORT_FILES


# 3. env.json that is not an environment history.

@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"sessions": {"a": 1}}'],
                         ids=["list", "invalid", "sessions"])
def test_a_broken_env_json_is_one_sentence_and_repair_sets_it_aside(tmp_path, content):
    out = tmp_path / "r"
    assert cli_run(out).exit_code == 0
    (out / "env.json").write_text(content)
    r = cli_run(out)
    assert r.exit_code == 2 and "env.json is not a run's environment history" in r.output and "--repair" in r.output
    assert (out / "env.json").read_text() == content
    r = cli_run(out, "--repair")
    assert r.exit_code == 0, r.output
    [bad] = out.glob("env.json.bad-*")
    assert bad.read_text() == content
    assert len(json.loads((out / "env.json").read_text())["sessions"]) == 1


# 4. A full disk.

REAL_WRITE_ALL = R._write_all

def _disk_full_on(name, after=0):
    """R._write_all that fails with ENOSPC, after `after` good writes, on the files named `name`*."""
    calls = []

    def write_all(fp, data):
        if os.path.basename(fp.name).startswith(name):
            calls.append(1)
            if len(calls) > after:
                fp.write(data[: len(data) // 2])  # a torn write, as a full disk leaves
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        REAL_WRITE_ALL(fp, data)

    return write_all


def test_a_full_disk_is_one_sentence_and_the_run_resumes(tmp_path, monkeypatch):
    out = tmp_path / "r"
    monkeypatch.setattr(R, "_write_all", _disk_full_on("records.jsonl", after=2))
    r = cli_run(out, "--batch-size", "1")
    assert r.exit_code == 2 and f"cannot write {out / 'records.jsonl'}: No space left on device" in r.output
    assert len(lines(out / "records.jsonl")) == 2 and not (out / "records.jsonl").read_bytes().endswith(b"\n")
    assert not (out / LOCK_FILE).exists()
    monkeypatch.setattr(R, "_write_all", _disk_full_on("summary.json"))
    r = cli_run(out)
    assert r.exit_code == 2 and "summary.json: No space left on device" in r.output
    assert not (out / "summary.json").exists() and not (out / "summary.json.tmp").exists()
    monkeypatch.undo()
    assert cli_run(out).exit_code == 0
    ids = [x["id"] for x in lines(out / "records.jsonl")]
    assert len(ids) == len(set(ids)) == N


# 5. Bad options leave nothing on disk.

@pytest.mark.parametrize("window", [2 ** 62, 1025])
def test_a_window_beyond_the_longest_length_is_refused_before_anything_is_written(tmp_path, window):
    r = cli_run(tmp_path / "r", "--window", str(window))
    assert r.exit_code == 2 and f"--window {window} is longer than the longest --len (1024 tokens)" in r.output
    assert not (tmp_path / "r").exists()


# 6. A corrupt line in the middle of records.jsonl.

def test_repair_sets_a_corrupt_line_aside_and_keeps_every_valid_record(tmp_path):
    out = tmp_path / "r"
    assert cli_run(out, "--limit", "3").exit_code == 0
    good = (out / "records.jsonl").read_bytes().splitlines(keepends=True)
    (out / "records.jsonl").write_bytes(good[0] + b'{"id": "half a rec\n' + b"".join(good[1:]))
    r = cli_run(out)
    assert r.exit_code == 2 and "line 2 is corrupt" in r.output and "--repair" in r.output
    assert cli_run(out, "--repair").exit_code == 0
    assert json.loads((out / "records.jsonl.bad").read_text()) == {"line": 2, "text": '{"id": "half a rec'}
    recs = (out / "records.jsonl").read_bytes().splitlines(keepends=True)
    assert recs[:3] == good and len(recs) == N  # the valid records kept as they were, the missing one added


def test_set_aside_bad_lines_appends_and_leaves_a_torn_tail(tmp_path):
    f = tmp_path / "records.jsonl"
    ok = json.dumps({"id": "a", "task": "t", "length": 1, "score": 1.0}).encode()
    f.write_bytes(ok + b"\n[1, 2]\n\xff\n" + ok[:5])
    assert R.set_aside_bad_lines(f) == 2
    assert f.read_bytes() == ok + b"\n" + ok[:5]
    assert [json.loads(x) for x in (tmp_path / "records.jsonl.bad").read_text().splitlines()] == [
        {"line": 2, "text": "[1, 2]"}, {"line": 3, "text": "\\xff"}]
    assert list(R.load_records(f, repair=True)) == ["a"]
    f.write_bytes(ok + b"\n[3]\n" + ok + b"\n")
    with pytest.raises(DataError, match="records.jsonl line 2 is not a sample record.*--repair"):
        R.load_records(f)


def test_a_resume_on_a_checkpoint_whose_weights_changed_is_refused(tmp_path):
    """env.json records a fingerprint of the weights: a checkpoint folder changed in place since the records
    were written is refused rather than mixed into the same run; the unchanged folder resumes."""
    import shutil

    import safetensors.torch

    from rattn_eval.checkpoints import checkpoint_dir
    from rattn_eval.runner import RunConfig, run

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir("tiny-full"), ckpt)
    out = tmp_path / "r"
    cfg = dict(model=str(ckpt), tasks=("niah_single_1",), lengths=(1024,), n=2, prompts="native", out=str(out))
    run(RunConfig(limit=1, **cfg), progress=False)
    recorded = json.loads((out / "env.json").read_text())["sessions"][-1]["weights_fingerprint"]
    assert isinstance(recorded, str) and len(recorded) == 16

    [weights] = ckpt.glob("*.safetensors")
    original = weights.read_bytes()
    tensors = safetensors.torch.load_file(weights)
    safetensors.torch.save_file({k: v * 1.5 if v.is_floating_point() else v for k, v in tensors.items()}, weights)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match=f"weights fingerprint {recorded} then, [0-9a-f]{{16}} now"):
        run(RunConfig(**cfg), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    weights.write_bytes(original)
    assert run(RunConfig(**cfg), progress=False)["complete"] and len(lines(out / "records.jsonl")) == 2


def test_the_weights_fingerprint_is_the_same_in_every_dtype_and_differs_between_checkpoints():
    from rattn_eval.models import load_model
    from rattn_eval.runner.pipeline import weights_fingerprint

    prints = {dtype: weights_fingerprint(load_model("tiny-rattn", backend="torch", device="cpu", dtype=dtype)[0])
              for dtype in ("float32", "bfloat16", "float16")}
    assert len(set(prints.values())) == 1, prints
    assert weights_fingerprint(load_model("tiny-swa", backend="torch", device="cpu")[0]) != prints["float32"]


def test_another_model_in_the_same_out_names_the_model_not_the_weights(tmp_path):
    from rattn_eval.runner import RunConfig, run

    out = tmp_path / "r"
    cfg = dict(tasks=("niah_single_1",), lengths=(1024,), n=1, prompts="native", out=str(out))
    run(RunConfig(model="tiny-full", **cfg), progress=False)
    with pytest.raises(ConfigError, match="different config \\(model: 'tiny-full' there vs 'tiny-swa' now\\)"):
        run(RunConfig(model="tiny-swa", **cfg), progress=False)


def test_a_run_kept_with_an_option_no_task_reads_resumes_without_it(tmp_path):
    """Runs made before such options were refused stored them (e.g. --depth on vt); they resume without."""
    from rattn_eval.runner import RunConfig, run

    out = tmp_path / "r"
    cfg = dict(model="oracle:correct", tasks=("vt",), lengths=(1024,), n=2, prompts="native", out=str(out))
    run(RunConfig(limit=1, **cfg), progress=False)
    stored = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**stored, "depths": [0.5], "qa_data": "/nowhere"}))
    assert run(RunConfig(**cfg), progress=False)["complete"] and len(lines(out / "records.jsonl")) == 2
    (out / "config.json").write_text(json.dumps({**stored, "window": 7}))  # an option it does read still counts
    with pytest.raises(ConfigError, match="window: 7 there vs None now"):
        run(RunConfig(**cfg), progress=False)
