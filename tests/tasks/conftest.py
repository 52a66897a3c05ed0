"""Fixtures for the task tests: tokenizers (bytes, GPT-2, SmolLM2 with its chat template) and
small SQuAD / HotpotQA files in the original formats."""

import json

import pytest

from rattn_eval.tokenizer import load_tokenizer
from rattn_eval.tokenizer import smollm2_tokenizer_dir


@pytest.fixture(autouse=True)
def no_sample_cache(monkeypatch):
    """Tests regenerate for real unless they opt into a cache folder."""
    monkeypatch.setenv("RATTN_EVAL_CACHE", "off")


@pytest.fixture(scope="session")
def smollm2():
    return load_tokenizer(smollm2_tokenizer_dir())


@pytest.fixture(scope="session")
def tokenizers(smollm2):
    return {"bytes": load_tokenizer("bytes"), "gpt2": load_tokenizer("gpt2"), "smollm2": smollm2}


def _squad():
    paragraphs = []
    for a in range(300):
        ctx = (f"Paragraph {a} of the test article tells about the city of Testville{a}. "
               f"It was founded in {1800 + a} by the explorer Ada Lin{a}. " * 3)
        qas = [{"id": f"q{a}", "question": f"Who founded Testville{a}?", "is_impossible": False,
                "answers": [{"text": f"Ada Lin{a}", "answer_start": 0}, {"text": f"the explorer Ada Lin{a}", "answer_start": 0}]},
               {"id": f"x{a}", "question": "Unanswerable?", "is_impossible": True, "answers": []}]
        paragraphs.append({"context": ctx, "qas": qas})
    return {"version": "v2.0", "data": [{"title": "Test", "paragraphs": paragraphs}]}


def _hotpot():
    out = []
    for a in range(300):
        ctx = [[f"Title{a}{b}", [f"Sentence one about {a}{b}. ", f"The river Quell{a}{b} flows north. "]] for b in range(4)]
        out.append({"_id": f"h{a}", "question": f"Which way does Quell{a}0 flow?", "answer": f"north{a}",
                    "supporting_facts": [[f"Title{a}0", 1]], "context": ctx})
        ctx[0][1].append(f"It is called north{a}. ")
    return out


@pytest.fixture(scope="session")
def qa_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    (d / "dev-v2.0.json").write_text(json.dumps(_squad()))
    (d / "hotpot_dev_distractor_v1.json").write_text(json.dumps(_hotpot()))
    return d
