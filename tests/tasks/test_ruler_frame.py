"""The `ruler` profile's samples against lm-eval's own RULER generator, run offline here.

For each task, one sample from each side is cut into haystack units (noise lines, needle lines,
statements, numbered words, coded words); the text before the first unit, the text after the last,
the set of unit formats and the set of separators between units must be equal once keys, values,
numbers and names are replaced by placeholders. lm-eval's modules are imported here (they are the
reference); the package itself only reads their files.
"""

from __future__ import annotations

import importlib
import re
import sys

import pytest

from rattn_eval.tasks import TASKS, ruler_text

pytest.importorskip("lm_eval")
pytest.importorskip("nltk")

LENGTH = 4096
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def lm_ruler(tmp_path_factory):
    """lm-eval's RULER modules, imported with an nltk data folder that already 'has' punkt_tab, so the
    import downloads nothing (the tasks compared here never split sentences)."""
    data = tmp_path_factory.mktemp("nltk")
    (data / "tokenizers" / "punkt_tab").mkdir(parents=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("NLTK_DATA", str(data))
    import nltk

    mp.setattr(nltk.data, "path", [str(data)] + list(nltk.data.path))
    mods = {n: importlib.import_module(f"lm_eval.tasks.ruler.{n}")
            for n in ("prepare_niah", "niah_utils", "vt_utils", "cwe_utils", "fwe_utils")}
    yield mods
    mp.undo()


@pytest.fixture(scope="module")
def hf_tok():
    from transformers import AutoTokenizer

    from rattn_eval.tokenizer import smollm2_tokenizer_dir

    return AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))


def _lm_prompt(doc: dict, delimiter: str) -> str:
    """lm-eval's plain (no chat template) prompt: input, the yaml's target_delimiter, gen_prefix."""
    text, prefix = doc["input"], doc["gen_prefix"]
    if text and prefix and not (text[-1].isspace() or prefix[0].isspace()):
        return text + delimiter + prefix
    return text + prefix


def _lm_sample(mods, task: str, tok) -> tuple[str, list[str]]:
    import random

    import numpy as np

    random.seed(1)
    np.random.seed(1)
    if task in ("niah_single_1", "niah_multikey_3"):
        pn = mods["prepare_niah"]
        kind = "repeat" if task == "niah_single_1" else "needle"
        kw = dict(type_needle_k="words", type_needle_v="numbers") if kind == "repeat" else \
            dict(type_needle_k="uuids", type_needle_v="uuids")
        doc = pn.generate_samples(pn.get_haystack(type_haystack=kind), max_seq_length=LENGTH,
                                  template=mods["niah_utils"].TEMPLATE, type_haystack=kind, num_samples=1,
                                  TOKENIZER=tok, **kw)[0]
        return _lm_prompt(doc, " "), doc["outputs"]
    if task == "vt":
        vt = mods["vt_utils"]
        icl = vt.sys_vartrack_w_noise_random(tokenizer=tok, num_samples=1, max_seq_length=500, incremental=5)[0]
        doc = vt.sys_vartrack_w_noise_random(tokenizer=tok, num_samples=1, max_seq_length=LENGTH, icl_example=icl)[0]
        return _lm_prompt(doc, " "), doc["outputs"]
    if task == "cwe":
        doc = mods["cwe_utils"].sys_word_pair_random(num_samples=1, max_seq_length=LENGTH, tokenizer=tok)[0]
        return _lm_prompt(doc, "\n\n"), doc["outputs"]
    doc = mods["fwe_utils"].sys_kwext(tokenizer=tok, max_seq_length=LENGTH, num_samples=1)[0]
    return _lm_prompt(doc, " "), doc["outputs"]


def _needle_re(text_src, noun: str, key: str, value: str) -> str:
    """A regex for the source's needle sentence (read at run time, never spelled out here)."""
    pat = re.escape(text_src.needle)
    for field, rx in (("type_needle_v", re.escape(noun)), ("key", key), ("value", value)):
        pat = pat.replace(re.escape("{" + field + "}"), rx)
    return pat


def _units(task: str, text_src) -> str:
    """A regex matching one haystack unit of `task`."""
    noise = re.escape(text_src.noise)
    if task == "niah_single_1":
        return rf"{noise}|" + _needle_re(text_src, "numbers", r"[^\n]+?", r"\d+")
    if task == "niah_multikey_3":
        return _needle_re(text_src, "uuids", UUID, UUID)
    if task == "vt":
        return rf"{re.escape(text_src.vt_noise)}|VAR [A-Z]+ = (?:VAR [A-Z]+ |\d+)"
    if task == "cwe":
        return r"\d+\. [^\s]+(?= \d+\. |\n)"
    return r"(?<= )(?:[a-z]{6}|\.\.\.)(?= |\n)"


def _placeholders(s: str, answers: list[str]) -> str:
    s = re.sub(UUID, "U", s)
    for a in sorted(answers, key=len, reverse=True):
        s = s.replace(a, "A")
    s = re.sub(r"(for )([^\s]+?)( is:| mentioned)", r"\1K\3", s)  # the key in needles and question
    s = re.sub(r"\b[A-Z]{3,5}\b", "V", s)  # variable names (no template word is all capitals)
    return re.sub(r"\d+", "N", s)


def _anatomy(task: str, text: str, answers: list[str], text_src) -> dict:
    found = list(re.finditer(_units(task, text_src), text))
    assert len(found) >= 3, f"{task}: too few haystack units found"
    seps = {_placeholders(text[a.end():b.start()], answers) for a, b in zip(found, found[1:])}
    kinds = {_placeholders(m.group(0), answers) for m in found}
    if task in ("cwe", "fwe"):  # the listed words themselves are random
        kinds = {re.sub(r"[a-z]{6}$" if task == "fwe" else r"(?<=N\. ).+$", "W", k) for k in kinds}
    return {"head": _placeholders(text[:found[0].start()], answers),
            "tail": _placeholders(text[found[-1].end():], answers), "units": kinds, "separators": seps}


@pytest.mark.parametrize("task", ["niah_single_1", "niah_multikey_3", "vt", "cwe", "fwe"])
def test_ruler_profile_has_lm_evals_frame(task, lm_ruler, hf_tok, smollm2):
    text_src = ruler_text.load()
    ours = TASKS[task].generate_ruler(TASKS[task].config, text_src, smollm2, length=LENGTH, n=1, seed=0, task=task)[0]
    theirs, their_answers = _lm_sample(lm_ruler, task, hf_tok)
    a = _anatomy(task, ours.input, ours.answers, text_src)
    b = _anatomy(task, theirs, their_answers, text_src)
    assert a["head"] == b["head"]
    assert a["tail"] == b["tail"]
    assert a["units"] == b["units"]
    assert a["separators"] == b["separators"]
    # and the answers are what the question asks for, in the sample
    assert all(x in ours.input for x in ours.answers)
    if task == "vt":
        # the worked example holds as many noise lines as lm-eval's (sized by the same rule), and no two
        # statements stand next to each other (RULER inserts them before distinct lines)
        head = text_src.vt_template.split("{context}")[0]
        assert ours.input.split(head)[1].count(text_src.vt_noise) == theirs.split(head)[1].count(text_src.vt_noise)
        found = list(re.finditer(_units(task, text_src), ours.input))
        kinds = ["VAR" if m.group(0).startswith("VAR") else "noise" for m in found]
        assert all(not (x == y == "VAR") for x, y in zip(kinds, kinds[1:]))


def test_lm_eval_modules_were_not_imported_by_the_package():
    """Reading RULER's text must not import lm-eval's RULER modules (they download nltk data)."""
    before = {m for m in sys.modules if m.startswith("lm_eval.tasks.ruler")}
    ruler_text.load.cache_clear()
    ruler_text.load()
    after = {m for m in sys.modules if m.startswith("lm_eval.tasks.ruler")}
    assert after == before
