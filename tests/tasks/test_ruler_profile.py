"""The `ruler` prompt profile: where its text comes from, RULER's own checkout layout, and RULER's
sampling (chains in order, the i-th question at every length, fixed-seed document order)."""

from __future__ import annotations

import dataclasses
import re
import subprocess

import pytest

from rattn_eval import tasks
from rattn_eval.errors import ConfigError, DataError
from rattn_eval.tasks import ruler_text


@pytest.fixture
def lm_text():
    return ruler_text.load()


def test_lm_eval_source(lm_text):
    assert lm_text.source.startswith("lm-eval ")
    assert "{context}" in lm_text.niah_template and "{query}" in lm_text.niah_template
    assert "{type_needle_v}" in lm_text.needle and not lm_text.niah_prefix.startswith(" ")
    assert lm_text.cwe_delimiter == "\n\n" and not lm_text.cwe_example  # lm-eval shows no cwe example


def test_missing_sources_name_every_way_out(monkeypatch, tmp_path):
    monkeypatch.setattr(ruler_text, "lm_eval_folder", lambda: None)
    ruler_text.load.cache_clear()
    try:
        with pytest.raises(DataError, match="--ruler-dir.*--prompts native"):
            ruler_text.load()
        with pytest.raises(DataError, match="not a RULER checkout"):
            ruler_text.load(str(tmp_path))
    finally:
        ruler_text.load.cache_clear()
    with pytest.raises(ConfigError, match="Did you mean 'ruler'"):
        tasks.generate("vt", None, length=4096, n=1, prompts="rular")


def _fake_checkout(root, text):
    """A folder laid out as RULER's scripts/data/synthetic, its strings taken from lm-eval's copy at
    run time (this file writes none of RULER's sentences), with RULER's own spelling of the prefixes
    (leading space) and statements."""
    syn = root / "scripts" / "data" / "synthetic"
    syn.mkdir(parents=True)

    def task(template, prefix):
        return {"tokens_to_generate": 1, "template": template, "answer_prefix": " " + prefix}

    tasks_dict = {
        "niah": task(text.niah_template, text.niah_prefix),
        "variable_tracking": task(text.vt_template, text.vt_prefix + " "),
        "common_words_extraction": task(text.cwe_template, text.cwe_prefix),
        "freq_words_extraction": task(text.fwe_template, text.fwe_prefix),
        "qa": task(text.qa_template, text.qa_prefix),
    }
    (syn / "constants.py").write_text(f'"""doc"""\nTASKS = {tasks_dict!r}\n')
    (syn / "niah.py").write_text(f"needle = {text.needle!r}\nif True:\n    haystack = {text.noise!r}\n")
    (syn / "variable_tracking.py").write_text(
        f"haystack = {text.noise!r}\n"
        "def generate_chains(this_vars, j):\n"
        "    a = f\"VAR {this_vars[0]} = {str(np.random.randint(10000, 99999))}\"\n"
        "    b = f\"VAR {this_vars[j+1]} = VAR {this_vars[j]} \"\n")
    (syn / "freq_words_extraction.py").write_text(f"vocab = [0]\nvocab[0] = {text.fwe_noise!r}\n")
    (syn / "qa.py").write_text(f"DOCUMENT_PROMPT = {text.qa_document!r}\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)


def test_checkout_source(tmp_path, lm_text, tokenizers):
    _fake_checkout(tmp_path, lm_text)
    t = ruler_text.load(str(tmp_path))
    assert t.source.startswith("RULER checkout")
    assert t.niah_prefix == " " + lm_text.niah_prefix and t.niah_delimiter == ""
    assert t.vt_value == "VAR {name} = {value}" and t.vt_copy == "VAR {name} = VAR {src} "
    assert t.vt_joiner == "\n" and t.cwe_example and t.fwe_noise == lm_text.fwe_noise
    tok = tokenizers["gpt2"]
    # RULER's own layouts: the prefix follows the question directly (its leading space), cwe shows a
    # worked example whose answer is numbered, vt statements stand on lines of their own
    s = tasks.generate("niah_single_1", tok, length=4096, n=1, ruler_dir=tmp_path)[0]
    assert s.input.endswith("? " + lm_text.niah_prefix.format(type_needle_v="number", query=s.input.split("for ")[-1]
                                                               .split(" mentioned")[0]).replace(" are", " is"))
    cwe = tasks.generate("cwe", tok, length=4096, n=1, ruler_dir=tmp_path)[0]
    assert re.search(r"are: 1\. \S+ 2\. \S+ .* 10\. \S+\n", cwe.input)
    assert cwe.input.count("Question:") == 2
    vt = tasks.generate("vt", tok, length=4096, n=1, ruler_dir=tmp_path)[0]
    assert re.search(r"\nVAR [A-Z]{5} = \d+\n", vt.input)
    # the source is part of what a cached sample depends on
    assert vt.input != tasks.generate("vt", tok, length=4096, n=1)[0].input


def test_vt_chains_in_order(tokenizers, lm_text):
    stmt = re.compile(r"VAR ([A-Z]{3,5}) = (?:VAR ([A-Z]{3,5})|\d+)")
    for length in (2048, 8192):
        for s in tasks.generate("vt", tokenizers["gpt2"], length=length, n=3, seed=0):
            head = lm_text.vt_template.split("{context}")[0]
            example, question = s.input.split(head)[1:3]
            for part in (example, question):
                found = stmt.findall(part)
                assert len(found) == 5
                seen = set()
                for var, src in found:
                    assert not src or src in seen
                    seen.add(var)
            assert sorted(s.answers) == sorted(v for v, _ in stmt.findall(question))


def test_qa_asks_the_ith_question_at_every_length(tokenizers, qa_dir, lm_text):
    tok = tokenizers["gpt2"]
    by_len = {L: tasks.generate("qa_1", tok, length=L, n=3, seed=0, qa_data=qa_dir) for L in (2048, 4096)}
    for L, ss in by_len.items():
        for i, s in enumerate(ss):
            assert f"Who founded Testville{i}?" in s.input  # the file's i-th answerable question
            docs = [int(d) for d in re.findall(r"Document (\d+):\n", s.input)]
            assert docs == list(range(1, len(docs) + 1))
    assert [s.answers for s in by_len[2048]] == [s.answers for s in by_len[4096]]


def test_qa_gold_document_goes_where_rulers_fixed_shuffle_puts_it(tokenizers, qa_dir):
    """With RULER's fixed-seed shuffle, the gold document's slot depends only on how many documents the
    sample holds: samples of equal document count have it at the same slot."""
    slots: dict[int, set[int]] = {}
    for s in tasks.generate("qa_1", tokenizers["gpt2"], length=4096, n=6, seed=0, qa_data=qa_dir):
        i = s.index
        docs = re.findall(r"Document (\d+):\n(.*?)(?=\n\nDocument |\n\nAnswer the question)", s.input, flags=re.S)
        gold = [int(num) for num, body in docs if f"Testville{i}." in body]
        assert len(gold) == 1
        slots.setdefault(len(docs), set()).add(gold[0])
    assert all(len(v) == 1 for v in slots.values()), slots


def test_native_profile_unchanged_by_the_ruler_text(tokenizers, lm_text):
    """`native` samples do not read RULER's text at all."""
    tok = tokenizers["gpt2"]
    a = tasks.generate("niah_single_2", tok, length=2048, n=2, seed=0, prompts="native")
    assert "One special magic number" in a[0].input and lm_text.needle.split("{")[0] not in a[0].input
    assert tasks.generator_version("native") == 3 and tasks.generator_version("ruler") == tasks.GENERATOR_VERSION


def test_singular_rule(tokenizers):
    assert ruler_text.singular("Some x are hidden. What are all the y? answers are") == \
        "A x is hidden. What is the y? answer is"
    bad = dataclasses.replace(ruler_text.load(), niah_template="no context field")
    with pytest.raises(ConfigError, match="context"):
        tasks.TASKS["niah_single_1"].generate_ruler(tasks.TASKS["niah_single_1"].config, bad, tokenizers["gpt2"],
                                                    length=1024, n=1, seed=0)
