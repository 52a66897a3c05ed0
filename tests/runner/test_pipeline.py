"""The whole pipeline on CPU: oracle models score exactly 100 / 0 on every task; the debug model runs
end to end into compare and report; a resumed run equals an uninterrupted one."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rattn_eval.cli import cli
from rattn_eval.errors import ConfigError
from rattn_eval.runner import RunConfig, run
from rattn_eval.tasks import resolve
from rattn_eval.tasks.metrics import score_sample


def records(path):
    return [json.loads(x) for x in (Path(path) / "records.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("prompts,tokenizer", [("native", "bytes"), ("ruler", "gpt2")])
@pytest.mark.parametrize("mode,expected", [("correct", 100.0), ("wrong", 0.0)])
def test_oracle_scores_exactly(tmp_path, qa_dir, mode, expected, prompts, tokenizer):
    tasks = resolve(["ruler"])
    summary = run(RunConfig(tasks=("ruler",), lengths=(1024,), model=f"oracle:{mode}:{tokenizer}", n=2,
                            out=str(tmp_path / mode), qa_data=str(qa_dir), prompts=prompts), progress=False)
    assert summary["complete"] and summary["backend"] == "oracle"
    assert {t: summary["scores"][t]["1024"] for t in tasks} == {t: expected for t in tasks}
    assert summary["avg"] == expected
    recs = records(tmp_path / mode)
    assert len(recs) == 2 * len(tasks) and all(r["score"] == expected for r in recs)


def test_debug_run_compare_report(tmp_path):
    runs = []
    for window in (4, 64):
        out = tmp_path / f"w{window}"
        r = CliRunner().invoke(cli, ["run", "-q", "-t", "niah_single_1,vt", "-l", "1k", "-n", "2", "-m", "debug",
                                     "--window", str(window), "--batch-size", "2", "--out", str(out)],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert "niah_single_1" in r.output and "effective length" in r.output
        for f in ("config.json", "env.json", "records.jsonl", "summary.json"):
            assert (out / f).is_file()
        env = json.loads((out / "env.json").read_text())
        assert env["backend"] == "torch" and env["versions"]["torch"]
        recs = records(out)
        assert sorted((r["task"], r["index"]) for r in recs) == [("niah_single_1", 0), ("niah_single_1", 1),
                                                                   ("vt", 0), ("vt", 1)]
        for rec in recs:  # scores recomputable from the JSONL alone
            assert rec["score"] == score_sample(rec["task"], rec["prediction"], rec["answers"])
            assert rec["backend"] == "torch" and rec["output_tokens"] <= 128
            assert rec["num_tokens"] <= 1024 and set(rec["timings"]) >= {"prefill_s", "decode_s"}
        summary = json.loads((out / "summary.json").read_text())
        mean = sum(r["score"] for r in recs if r["task"] == "vt") / 2
        assert summary["scores"]["vt"]["1024"] == mean and summary["window"] == window
        runs.append(str(out))

    r = CliRunner().invoke(cli, ["compare", *runs, "--format", "markdown"], catch_exceptions=False)
    assert r.exit_code == 0 and "| debug w=4 |" in r.output and "| debug w=64 |" in r.output
    csv = CliRunner().invoke(cli, ["compare", *runs, "--format", "csv"]).output.splitlines()
    assert len(csv) == 1 + 2 * 3  # header + (average, niah_single_1, vt) per run
    table = CliRunner().invoke(cli, ["compare", *runs]).output
    assert "Average over 2 tasks" in table and "debug w=64" in table

    r = CliRunner().invoke(cli, ["report", *runs, "--out", str(tmp_path / "rep")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| debug w=4 |" in md and "score_vs_length.png" in md and "niah_heatmap.png" in md
    assert (tmp_path / "rep" / "niah_heatmap.png").stat().st_size > 1000


def test_resume_skips_done_and_matches_uninterrupted(tmp_path):
    cfg = dict(tasks=("niah_single_1",), lengths=(1024,), model="debug", n=3, batch_size=1)
    full = run(RunConfig(**cfg, out=str(tmp_path / "full")), progress=False)
    part = tmp_path / "part"
    smoke = run(RunConfig(**cfg, out=str(part), limit=1), progress=False)  # a smoke run, then the full one resumes it
    first = records(part)
    assert len(first) == 1
    # the smoke run is unfinished against n, not a complete run of 1 sample
    assert not smoke["complete"] and smoke["incomplete"] == [["niah_single_1", 1024]]
    assert smoke["counts"]["niah_single_1"]["1024"] == 1
    with open(part / "records.jsonl", "a") as f:  # a torn line, as a kill mid-write leaves
        f.write('{"id": "niah_single_1/1024/s0/1", "ind')
    resumed = run(RunConfig(**cfg, out=str(part)), progress=False)
    recs = records(part)
    assert recs[0] == first[0]  # kept, not re-run
    key = lambda r: (r["id"], r["prediction"], r["score"])  # noqa: E731
    assert sorted(map(key, recs)) == sorted(map(key, records(tmp_path / "full")))
    assert resumed["scores"] == full["scores"] and resumed["avg"] == full["avg"]
    # another --limit invocation on the finished directory keeps summarizing all n samples it holds
    again = run(RunConfig(**cfg, out=str(part), limit=1), progress=False)
    assert again["scores"] == full["scores"] and again["complete"] and again["counts"] == full["counts"]
    # env.json keeps each invocation's whole environment (device, versions, ...), not only the newest
    sessions = json.loads((part / "env.json").read_text())["sessions"]
    assert len(sessions) == 3 and all(s["versions"]["torch"] and s["device"] for s in sessions)
    with pytest.raises(ConfigError, match="different config"):
        run(RunConfig(**{**cfg, "n": 4}, out=str(part)), progress=False)


def test_oracle_is_a_model_that_memorized_its_run():
    """The oracle answers through the same generate() as every model, from the prompt alone; a prompt
    that is not one of its run's samples is refused."""
    from rattn_eval.runner.oracle import load_oracle

    cfg = RunConfig(tasks=("niah_single_1",), lengths=(1024,), model="oracle:correct", n=2, prompts="native")
    model, tok = load_oracle(cfg)
    assert not hasattr(model, "generate_for_samples")
    from rattn_eval.runner.pipeline import samples_for

    s = samples_for(cfg, "niah_single_1", 1024, tok, False)[1]
    out = model.generate([tok.encode_prompt(s.input)], max_new_tokens=[128], eos_ids=tok.eos_ids, tokenizer=tok)
    assert tok.decode(out[0]).startswith(" ".join(s.answers))
    with pytest.raises(ConfigError, match="not one of its run's samples"):
        model.generate([tok.encode_prompt(s.input + " ")], max_new_tokens=[8])


def test_prompt_profile_is_recorded_and_decides_resume(tmp_path):
    out = tmp_path / "r"
    base = ["run", "-q", "-t", "niah_single_1", "-l", "1k", "-n", "1", "-m", "oracle:correct:gpt2", "--out", str(out)]
    r = CliRunner().invoke(cli, base, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["prompts"] == "ruler" and cfg["prompt_source"].startswith("lm-eval ") and cfg["generator_version"] == 4
    # the same directory with the other profile holds other samples: refused, naming the key
    r = CliRunner().invoke(cli, [*base, "--prompts", "native"])
    assert r.exit_code == 2 and "prompts" in r.output
    r = CliRunner().invoke(cli, [*base[:-1], str(tmp_path / "n"), "--prompts", "native"], catch_exceptions=False)
    assert r.exit_code == 0
    cfg = json.loads((tmp_path / "n" / "config.json").read_text())
    assert cfg["prompt_source"] is None and cfg["generator_version"] == 3
    # a run directory made before profiles existed (no prompts key) resumes as native
    del cfg["prompts"], cfg["prompt_source"]
    (tmp_path / "n" / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(cli, [*base[:-1], str(tmp_path / "n"), "--prompts", "native"], catch_exceptions=False)
    assert r.exit_code == 0, r.output


def test_run_refuses_a_huge_n_at_once(tmp_path):
    r = CliRunner().invoke(cli, ["run", "-q", "-t", "vt", "-l", "1k", "-n", "99999999999999999999", "-m", "debug",
                                 "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "-n must be at most 100000" in r.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("device,message", [("garbage", "unknown device"), ("meta", "cannot run a model"),
                                            ("cuda:7", "CUDA device")])
def test_a_device_this_machine_lacks_is_one_sentence(tmp_path, device, message):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    r = CliRunner().invoke(cli, ["run", "-q", "-t", "vt", "-l", "1k", "-n", "1", "-m", "debug", "--device", device,
                                 "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()


def test_an_unknown_backend_suggests_the_closest():
    from rattn_eval.runner.config import validate

    with pytest.raises(ConfigError, match=r"unknown backend 'tirton'; choose one of auto, triton, torch, hf\. "
                                          r"Did you mean 'triton'\?"):
        validate(RunConfig(tasks=("vt",), lengths=(1024,), backend="tirton"))
