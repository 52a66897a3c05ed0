"""RULER metrics and aggregation on hand-made predictions."""

import math

import pytest

from rattn_eval import aggregate as agg
from rattn_eval.tasks import metrics as m


def test_postprocess():
    assert m.postprocess("  a\tb\x00c \n") == "a\nb\nc"
    assert m.postprocess("") == "" and m.postprocess(None) == ""
    assert m.postprocess("\x00\x00\x01") == "", "RULER strips again after mapping control characters"


def test_string_match_all():
    refs = ["1234567", "7654321"]
    assert m.score_sample("niah_multikey_1", "The numbers are 1234567 and 7654321.", refs) == 100.0
    assert m.score_sample("vt", "abc", ["ABC"]) == 100.0  # case-insensitive
    assert m.score_sample("vt", "", ["X"]) == 0.0
    assert m.score_sample("niah_multivalue", "only 1234567", refs) == 50.0  # partial credit
    assert m.score_sample("vt", "1234\x0067", ["1234567"]) == 0.0  # a control char breaks the match


def test_string_match_part():
    refs = ["Denver Broncos", "the Broncos"]
    assert m.score_sample("qa_1", "denver broncos", refs) == 100.0  # any reference, case-insensitive
    assert m.score_sample("qa_2", "South", ["north"]) == 0.0
    assert m.score_sample("qa_2", "", ["north"]) == 0.0 and m.score_sample("qa_2", "North.", ["north"]) == 100.0


def test_score_sample_picks_metric():
    assert m.score_sample("qa_1", "Denver Broncos", ["Denver Broncos", "the Broncos"]) == 100.0
    assert m.score_sample("niah_multivalue", "1 and 2", ["1", "2", "3", "4"]) == 50.0
    assert m.score_sample("cwe", "", ["a"]) == 0.0


def test_aggregation():
    scores = {4096: 90.0, 8192: 80.0, 16384: 70.0, 32768: 60.0, 65536: 50.0, 131072: 40.0}
    assert agg.average(scores) == 65.0
    inc = [0.048, 0.095, 0.143, 0.190, 0.238, 0.286]  # RULER README's weights
    want = sum(w * s for w, s in zip(inc, [90, 80, 70, 60, 50, 40]))
    assert agg.weighted_average(scores, increasing=True) == pytest.approx(want, abs=0.05)
    assert agg.weighted_average(scores, increasing=False) == pytest.approx(
        sum(w * s for w, s in zip(inc[::-1], [90, 80, 70, 60, 50, 40])), abs=0.05)
    assert math.isnan(agg.average({}))


def test_effective_length():
    assert agg.effective_length({4096: 95, 8192: 90, 16384: 85.6, 32768: 90}) == 8192  # 85.6 is not above
    assert agg.effective_length({4096: 80}) is None
    assert agg.effective_length({8192: 99, 4096: 99}) == 8192
    assert agg.effective_length({4096: 95, 8192: 60}, threshold=50) == 8192


def test_effective_length_text():
    row = {"lengths": [1024, 2048], "length_scores": {"1024": 90.0, "2048": 50.0}}
    assert agg.effective_length_text({**row, **agg.aggregate_lengths({1024: 90.0, 2048: 50.0})}) == "1k"
    failed = {"lengths": [1024, 2048], "length_scores": {"1024": 10.0, "2048": 50.0}}
    assert agg.effective_length_text({**failed, **agg.aggregate_lengths({1024: 10.0, 2048: 50.0})}) == "<1k"
    gap = {"lengths": [1024, 2048], "length_scores": {"1024": None, "2048": 95.0}}
    assert agg.effective_length_text({**gap, **agg.aggregate_lengths({1024: None, 2048: 95.0})}) == "—"
