"""Run directories, torn-line repair, aggregation, compare and report on hand-made records (no model)."""

import json

import pytest

from rattn_eval import compare as cmp
from rattn_eval.errors import ConfigError, DataError
from rattn_eval.report import depth_fraction, heatmap_grid, write_report
from rattn_eval.aggregate import aggregate_lengths, summarize
from rattn_eval.results import RunDir, format_length, load_records


def rec(task, length, index, score, depth=None, prediction="x", sha=None, seed=0):
    r = {"id": f"{task}/{length}/s{seed}/{index}", "index": index, "task": task, "length": length, "seed": seed,
         "prediction": prediction, "answers": ["a"], "score": score, "depth": depth}
    if sha is not None:
        r["input_sha"] = sha
    return r


def make_run(path, *, model, tasks, lengths, records, n=2, seed=0, window=None):
    config = {"model": model, "resolved_tasks": tasks, "tasks": tasks, "lengths": lengths, "n": n, "seed": seed,
              "window": window, "limit": None, "backend": "torch"}
    with RunDir.prepare(path, config) as rd, rd.append() as w:
        for r in records:
            w.write(r)
    return path


def prepare(path, config, **kw):
    """RunDir.prepare, releasing the directory's lock at once (as a finished run does)."""
    RunDir.prepare(path, config, **kw).close()


def test_format_length():
    assert [format_length(x) for x in (4096, 1 << 20, 1000, 131072)] == ["4k", "1m", "1000", "128k"]


def test_ruler_aggregates():
    # RULER's wAvg weights for 4k..128k are 1/21 .. 6/21 (0.048 .. 0.286).
    scores = {4096 << i: float(10 * i) for i in range(6)}
    agg = aggregate_lengths(scores)
    assert agg["avg"] == 25.0
    assert agg["wavg_inc"] == pytest.approx(sum(i * 10 * (i + 1) for i in range(6)) / 21)
    assert agg["wavg_dec"] == pytest.approx(sum(i * 10 * (6 - i) for i in range(6)) / 21)
    assert aggregate_lengths({4096: 95.0, 8192: 90.0, 16384: 80.0, 32768: 88.0})["effective_length"] == 8192
    assert aggregate_lengths({4096: 50.0})["effective_length"] is None
    # a gap before the first failing length leaves the effective length open (the missing length may
    # fail): unknown, not the last length before the gap; a failure before the gap settles it
    gap = aggregate_lengths({1: 90.0, 2: None, 3: 95.0})
    assert gap["avg"] is None and gap["wavg_inc"] is None
    assert gap["effective_length"] is None and not gap["effective_length_determined"]
    settled = aggregate_lengths({1: 90.0, 2: 40.0, 3: None})
    assert settled["effective_length"] == 1 and settled["effective_length_determined"]
    assert not aggregate_lengths({1: None, 2: 95.0})["effective_length_determined"]
    below = aggregate_lengths({1: 10.0, 2: None})
    assert below["effective_length"] is None and below["effective_length_determined"]  # below the shortest


def test_summarize_means_and_gaps():
    records = [rec("a", 1, 0, 100.0), rec("a", 1, 1, 50.0), rec("b", 1, 0, 0.0, prediction=" "), rec("a", 2, 0, 20.0)]
    s = summarize(records, tasks=["a", "b"], lengths=[1, 2], expected={("a", 1): 2, ("b", 1): 2, ("a", 2): 1, ("b", 2): 1})
    assert s["scores"]["a"] == {"1": 75.0, "2": 20.0}
    assert s["scores"]["b"] == {"1": 0.0, "2": None}
    assert s["length_scores"] == {"1": 37.5, "2": None}  # never averaged over the smaller task set
    assert s["avg"] is None and s["missing"] == [["b", 2]] and s["incomplete"] == [["b", 1]]
    assert s["nulls"]["b"]["1"] == 1 and not s["complete"]
    # RULER's "nulls": empty after post-processing, so control characters alone count as empty
    s = summarize([rec("a", 1, 0, 0.0, prediction="\x00\x01 \n"), rec("a", 1, 1, 0.0, prediction="x\x00")],
                  tasks=["a"], lengths=[1])
    assert s["nulls"]["a"]["1"] == 1


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    f = tmp_path / "records.jsonl"
    good = [json.dumps(rec("a", 1, i, 100.0)) for i in range(3)]
    f.write_text("\n".join(good) + "\n" + good[0][:17])
    assert sorted(load_records(f, repair=True)) == ["a/1/s0/0", "a/1/s0/1", "a/1/s0/2"]
    assert f.read_text() == "\n".join(good) + "\n"  # truncated back to the last complete record
    # a complete object without its newline is also a torn write: the writer always ends lines
    f.write_text(good[0] + "\n" + good[1])
    assert list(load_records(f, repair=True)) == ["a/1/s0/0"]
    f.write_text(good[0] + "\n{broken\n" + good[1] + "\n")
    with pytest.raises(DataError, match="line 2 is corrupt"):
        load_records(f)


def test_rundir_refuses_other_config(tmp_path):
    base = {"model": "debug", "resolved_tasks": ["a"], "lengths": [1], "n": 2, "seed": 0, "limit": None}
    prepare(tmp_path / "r", base)
    prepare(tmp_path / "r", {**base, "limit": 1, "batch_size": 3})  # resume-neutral keys
    prepare(tmp_path / "r", {**base, "resolved_tasks": ["a"]})
    two = {**base, "resolved_tasks": ["a", "b"]}
    prepare(tmp_path / "r2", two)
    prepare(tmp_path / "r2", {**two, "resolved_tasks": ["b", "a"]})  # the same task set in another order
    with pytest.raises(ConfigError, match="resolved_tasks"):
        RunDir.prepare(tmp_path / "r2", {**two, "resolved_tasks": ["a"]})
    with pytest.raises(ConfigError, match=r"different config \(seed: 0 there vs 1 now\).*--overwrite"):
        RunDir.prepare(tmp_path / "r", {**base, "seed": 1})
    rd = RunDir.prepare(tmp_path / "r", {**base, "seed": 1}, overwrite=True)
    assert rd.read_config()["seed"] == 1


def test_run_from_another_task_generator_does_not_resume(tmp_path):
    """Sample ids stay the same across generator versions while the prompts change, so config.json
    records the version and a directory written by another one refuses to resume."""
    from pathlib import Path

    from rattn_eval.runner import RunConfig, resolved_config
    from rattn_eval.tasks import GENERATOR_VERSION

    cfg = resolved_config(RunConfig(tasks=("vt",), lengths=(1024,), model="debug"), ["vt"], Path(tmp_path / "r"))
    assert cfg["generator_version"] == GENERATOR_VERSION
    prepare(tmp_path / "r", {**cfg, "generator_version": GENERATOR_VERSION - 1})
    with pytest.raises(ConfigError, match=rf"generator_version: {GENERATOR_VERSION - 1} there vs {GENERATOR_VERSION} now"):
        RunDir.prepare(tmp_path / "r", cfg)


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot be created"):
        RunDir.prepare(blocker / "run", {"model": "x"})


def test_compare_marks_gaps_and_notes(tmp_path):
    a = make_run(tmp_path / "a", model="m1", tasks=["t1", "t2"], lengths=[1024, 2048],
                 records=[rec(t, L, i, 100.0 * (L == 1024)) for t in ("t1", "t2") for L in (1024, 2048) for i in range(2)])
    b = make_run(tmp_path / "b", model="m2", tasks=["t1"], lengths=[1024, 4096], seed=1,
                 records=[rec("t1", 1024, 0, 50.0, seed=1), rec("t1", 1024, 1, 100.0, seed=1),
                          rec("t1", 4096, 0, 0.0, seed=1)])
    comp = cmp.compare([cmp.load_run(a), cmp.load_run(b)])
    assert comp.lengths == [1024, 2048, 4096] and comp.tasks == ["t1", "t2"]
    ra, rb = comp.rows
    assert ra["length_scores"] == {"1024": 100.0, "2048": 0.0, "4096": None}
    assert rb["scores"]["t1"] == {"1024": 75.0, "2048": None, "4096": 0.0}
    assert rb["length_scores"] == {"1024": None, "2048": None, "4096": None}  # t2 missing: no average
    md = cmp.to_markdown(comp)
    assert "| m2 | — | — | — | — | — | — | — |" in md
    # 4096 has 1 of 2 planned samples; 75 ±25 is within noise of m1's 100 (two samples each)
    assert "| m2 | 75.0 ±25.0 ≈ | — | 0.0* |" in md
    notes = " ".join(comp.notes)
    assert "m2 has no results for t1@2k" in notes and "t2@1k" in notes
    assert "differ in seeds (m1: 0, m2: 1)" in notes
    csv_lines = cmp.to_csv(comp).splitlines()
    assert csv_lines[0].startswith("checkpoint,path,task,1k,1k_stderr,1k_ci_low,1k_ci_high,1k_within_noise,2k,")
    assert csv_lines[0].endswith(",4k_within_noise,avg,wavg_inc,wavg_dec,effective_length")
    cols = csv_lines[1].split(",")
    assert (cols[3], cols[8], cols[13]) == ("100.00", "0.00", "")
    assert json.loads(cmp.to_json(comp))["runs"][1]["label"] == "m2"


def test_summary_error_bars():
    records = [rec("a", 1, i, 100.0 * (i < 3)) for i in range(10)] + [rec("b", 1, i, 25.0 * (i % 5)) for i in range(10)]
    s = summarize(records, tasks=["a", "b"], lengths=[1])
    a, b = s["stats"]["a"]["1"], s["stats"]["b"]["1"]
    assert a["n"] == 10 and a["mean"] == 30.0 and a["ci_method"] == "exact"
    assert a["ci95"] == pytest.approx([6.67, 65.25], abs=0.01)  # Clopper-Pearson for 3 of 10
    assert a["stderr"] == pytest.approx(100 * ((5 / 14) * (9 / 14) / 14) ** 0.5)  # Agresti-Coull: (3 + 2) / (10 + 4)
    assert b["stderr"] == pytest.approx((sum((25.0 * (i % 5) - 50) ** 2 for i in range(10)) / 9) ** 0.5 / 10 ** 0.5)
    assert b["ci_method"] == "bootstrap" and b["ci95"][0] < b["mean"] == 50.0 < b["ci95"][1]
    assert s["length_stderr"]["1"] == pytest.approx((a["stderr"] ** 2 + b["stderr"] ** 2) ** 0.5 / 2)
    # the same scores give the same interval (a seeded bootstrap)
    assert summarize(records, tasks=["a", "b"], lengths=[1])["stats"]["b"]["1"]["ci95"] == b["ci95"]


def test_compare_marks_differences_within_noise(tmp_path):
    """≈ where a row is within noise of the first: paired on shared prompts (same id and prompt hash),
    unpaired otherwise; a clear gap over many samples is not marked."""
    n = 40
    base = make_run(tmp_path / "base", model="m0", tasks=["t"], lengths=[1], n=n,
                    records=[rec("t", 1, i, 100.0 * (i % 2), sha=f"p{i}") for i in range(n)])
    # one sample flipped on the same prompts: paired, within noise
    close = make_run(tmp_path / "close", model="m1", tasks=["t"], lengths=[1], n=n,
                     records=[rec("t", 1, i, 100.0 * ((i % 2) or i == 0), sha=f"p{i}") for i in range(n)])
    # everything right: far outside the noise
    far = make_run(tmp_path / "far", model="m2", tasks=["t"], lengths=[1], n=n,
                   records=[rec("t", 1, i, 100.0, sha=f"p{i}") for i in range(n)])
    # other prompts (another hash), 50% as well: unpaired, within noise
    other = make_run(tmp_path / "other", model="m3", tasks=["t"], lengths=[1], n=n,
                     records=[rec("t", 1, i, 100.0 * (i % 2 == 0), sha=f"q{i}") for i in range(n)])
    comp = cmp.compare([cmp.load_run(p) for p in (base, close, far, other)])
    same = [row.get("same", {}).get("t", {}).get("1") for row in comp.rows]
    assert same == [None, True, False, True]
    md = cmp.to_markdown(comp)
    assert "| m1 | 52.5 ±7.5 ≈ |" in md and "| m2 | 100.0 ±3.1 |" in md  # Agresti-Coull standard errors
    assert any("within noise of the first row (m0)" in note for note in comp.notes)
    averages = [row.get("same", {}).get(cmp.AVERAGE, {}).get("1") for row in comp.rows]
    assert averages == [None, True, False, True]


def test_report_files_and_heatmap(tmp_path):
    records = [rec("niah_single_1", L, i, 100.0 if d < 0.5 else 0.0, depth=d)
               for L in (1024, 2048) for i, d in enumerate([0.05, 0.25, 0.75, 0.95])]
    run = make_run(tmp_path / "r", model="debug", tasks=["niah_single_1"], lengths=[1024, 2048], n=4, records=records)
    grid = heatmap_grid(records, [1024, 2048])
    assert grid[0] == [100.0, 100.0] and grid[9] == [0.0, 0.0] and grid[5] == [None, None]
    assert depth_fraction([0.3, 0.6]) == 0.3 and depth_fraction(None) is None
    md = write_report([run], tmp_path / "rep")
    assert md.read_text().count("![") == 2
    for png in ("score_vs_length.png", "niah_heatmap.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same folder reused for a run without NIAH records: no heatmap of the earlier runs stays behind
    other = make_run(tmp_path / "o", model="debug", tasks=["vt"], lengths=[1024], n=1, records=[rec("vt", 1024, 0, 50.0)])
    md = write_report([other], tmp_path / "rep")
    assert "niah_heatmap.png" not in md.read_text() and not (tmp_path / "rep" / "niah_heatmap.png").exists()


def test_compare_reads_the_rank_files_of_a_killed_torchrun_run(tmp_path):
    """A multi-process run killed before its ranks' records were merged: compare counts them (the first
    occurrence of an id wins, as the merge does), instead of showing those cells as missing."""
    run = make_run(tmp_path / "r", model="m", tasks=["t"], lengths=[1], records=[rec("t", 1, 0, 100.0)])
    (run / "records.rank1.jsonl").write_text(json.dumps(rec("t", 1, 1, 0.0)) + "\n"
                                             + json.dumps(rec("t", 1, 0, 0.0)) + "\n")
    loaded = cmp.load_run(run)
    assert sorted((r["index"], r["score"]) for r in loaded.records) == [(0, 100.0), (1, 0.0)]
    assert cmp.compare([loaded]).rows[0]["scores"]["t"]["1"] == 50.0


@pytest.mark.parametrize("bad", ['{"id": "a/1/s0/0", "task": "a", "length": 1}',
                                 '{"id": "a/1/s0/0", "task": "a", "length": 1, "score": null}',
                                 '{"id": "a/1/s0/0", "task": "a", "length": "1k", "score": 1.0}',
                                 '[1, 2]'])
def test_records_without_the_aggregated_fields_are_refused(tmp_path, bad):
    """Valid JSON that is not a sample record (no score, a null score, a string length, not an object) is
    one clear DataError naming the line, not a KeyError / TypeError deep in the aggregation."""
    f = tmp_path / "records.jsonl"
    f.write_text(json.dumps(rec("a", 1, 1, 50.0)) + "\n" + bad + "\n" + json.dumps(rec("a", 1, 2, 0.0)) + "\n")
    with pytest.raises(DataError, match="line 2 is not a sample record"):
        load_records(f)


def test_compare_refuses_a_config_that_is_not_a_run_config(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="is not a run config"):
        cmp.load_run(tmp_path / "r")
    with pytest.raises(DataError, match="is not a run config"):
        RunDir.prepare(tmp_path / "r", {"model": "debug", "n": 1})


def test_sample_record_is_the_records_schema():
    from types import SimpleNamespace

    from rattn_eval.results import sample_record

    s = SimpleNamespace(id="vt/1024/s0/3", index=3, task="vt", length=1024, seed=0, answers=["AB", "CD"],
                        input="some prompt", num_tokens=11, depth=[0.1], answer_position=4)
    r = sample_record(s, "AB and CD", 5, backend="torch", batch_size=2, timings={"prefill_s": 0.1})
    assert r["score"] == 100.0 and r["output_tokens"] == 5 and r["answers"] == ["AB", "CD"]
    assert r["input_sha"] == sample_record(SimpleNamespace(**{**vars(s), "index": 9}), "", 0, backend="x",
                                           batch_size=1, timings={})["input_sha"]  # the prompt's hash, not the id's
    assert r["input_sha"] != sample_record(SimpleNamespace(**{**vars(s), "input": "other"}), "", 0, backend="x",
                                           batch_size=1, timings={})["input_sha"]
    assert set(r) == {"id", "index", "task", "length", "seed", "prediction", "answers", "input_sha", "score",
                      "num_tokens", "output_tokens", "depth", "answer_position", "backend", "batch_size", "timings"}


def test_compare_counts_only_the_runs_own_records(tmp_path):
    """A record of another task, length, seed or index in a run directory is not one of its samples:
    compare and report drop it (and say so), as the run's own summary does."""
    own = [rec("vt", 1024, i, 0.0) for i in range(2)]
    strays = [rec("vt", 1024, 5, 100.0), rec("vt", 2048, 0, 100.0), rec("cwe", 1024, 0, 100.0),
              rec("vt", 1024, 1, 100.0, seed=3)]
    run = make_run(tmp_path / "r", model="m", tasks=["vt"], lengths=[1024], records=own + strays)
    comp = cmp.compare([cmp.load_run(run)])
    assert comp.rows[0]["scores"]["vt"]["1024"] == 0.0 and comp.tasks == ["vt"]
    assert any("4 record(s)" in note and "not counted" in note for note in comp.notes)


def test_run_directory_files_must_be_its_own(tmp_path):
    """A records.jsonl that is a link (a resume would truncate the file it points to) or a directory is
    refused with one sentence, and the file outside is left alone."""
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text('{"id": "x", "task": "t", "length": 1, "score": 1.0}\n{"torn')
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").symlink_to(outside)
    with pytest.raises(DataError, match="symbolic link"):
        RunDir.prepare(run, {"n": 1})
    with pytest.raises(DataError, match="symbolic link"):
        load_records(run / "records.jsonl", repair=True)
    assert outside.read_text().endswith('{"torn')
    other = tmp_path / "other"
    (other / "records.jsonl").mkdir(parents=True)
    with pytest.raises(DataError, match="not a regular file"):
        RunDir.prepare(other, {"n": 1})


def test_a_nan_score_is_refused_not_averaged(tmp_path):
    """A score that is NaN (or outside 0..100) in records.jsonl is a clear error naming the line, not a
    silent nan in every average."""
    f = tmp_path / "records.jsonl"
    good = json.dumps(rec("t", 1, 0, 100.0))
    for bad in ("NaN", "Infinity", "150.0"):
        f.write_text(good + "\n" + json.dumps(rec("t", 1, 1, 0.0)).replace('"score": 0.0', f'"score": {bad}') + "\n")
        with pytest.raises(DataError, match="line 2 is not a sample record"):
            load_records(f)


def test_batch_times_reads_the_run_through_results(tmp_path, capsys):
    """bench/batch_times reads config, records and env.json through results' readers (rank files too)."""
    from rattn_eval.bench import batch_times
    from rattn_eval.results import read_env, read_run

    out = tmp_path / "r"
    config = {"model": "m", "resolved_tasks": ["a"], "tasks": ["a"], "lengths": [1], "n": 3, "seed": 0}
    timings = [{"prefill_s": 0.1, "decode_s": 0.2, "batch_s": 0.5}, {"prefill_s": 0.1, "decode_s": 0.1, "batch_s": 0.25}]
    with RunDir.prepare(out, config) as rd:
        rd.write_env({"world_size": 1})
        rd.add_session_timing({"world_size": 1, "samples": 3, "generate_s": 0.75, "samples_per_s": 4.0})
        with rd.append() as w:
            for i, t in enumerate([0, 0, 1]):
                w.write({**rec("a", 1, i, 100.0), "timings": timings[t]})
    assert read_env(out)["sessions"][-1]["samples"] == 3
    cfg, records = read_run(out)
    assert cfg == config and list(records) == [f"a/1/s0/{i}" for i in range(3)]
    batch_times.main([str(out)])
    text = capsys.readouterr().out
    assert "2 batches, 3 samples" in text and "steady state (first batch of each rank left out): 4.000" in text
    (out / "config.json").write_text('{"n": 1, "lengths": [1]}')  # not what run writes: one reader, one rule
    with pytest.raises(DataError, match="is not a run config"):
        cmp.load_run(out)


def test_compare_and_report_refuse_runs_without_a_scored_sample(tmp_path):
    empty = make_run(tmp_path / "empty", model="m1", tasks=["t1"], lengths=[1024], records=[])
    with pytest.raises(DataError, match="no scored sample"):
        cmp.compare([cmp.load_run(empty)])
    with pytest.raises(DataError, match="no scored sample"):
        write_report([empty], tmp_path / "rep")
    assert not (tmp_path / "rep").exists()
    # beside a run that has results, an empty one is a row of gaps with a note
    full = make_run(tmp_path / "full", model="m2", tasks=["t1"], lengths=[1024],
                    records=[rec("t1", 1024, i, 100.0) for i in range(2)])
    comp = cmp.compare([cmp.load_run(full), cmp.load_run(empty)])
    assert "m1 has no results for t1@1k" in " ".join(comp.notes)


def test_an_average_over_an_unfinished_cell_is_marked_unfinished(tmp_path):
    run = make_run(tmp_path / "a", model="m1", tasks=["t1", "t2"], lengths=[1024, 2048],
                   records=[rec(t, L, i, 100.0) for t in ("t1", "t2") for L in (1024, 2048) for i in range(2)
                            if not (t == "t2" and L == 2048 and i == 1)])
    md = cmp.to_markdown(cmp.compare([cmp.load_run(run)]))
    average = next(line for line in md.splitlines() if line.startswith("| m1 |"))
    cells = average.split(" | ")
    assert not cells[1].endswith("*") and cells[2].endswith("*")  # 2k averages t2@2k, which has 1 of 2 samples
    assert all(c.endswith("*") for c in cells[3:6])  # Avg, wAvg (inc), wAvg (dec) average over it too
