"""The long path end to end on CPU: 32k-token prompts through the debug model, nothing truncated."""

import json

from click.testing import CliRunner

from rattn_eval.cli import cli


def test_debug_model_at_32k(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "--task", "niah_single_1", "--len", "32k", "-n", "2", "--model", "debug",
                                 "-q", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    for rec in recs:
        # the whole prompt went in: the runner checks num_tokens == len(encode_prompt(input)) and
        # refuses rather than cut, so a record at full length proves the long path ran untruncated
        assert 0.95 * 32768 <= rec["num_tokens"] + 128 <= 32768
        assert rec["timings"]["prefill_s"] > 0
    assert json.loads((out / "summary.json").read_text())["complete"]
