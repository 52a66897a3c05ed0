"""The training stream is clean: no evaluation-template sentence and no essay text occurs in it.

The training text is re-derived from the installed source packages by the same deterministic
function the data build used; its hash must equal the committed manifest of the build that
trained the shipped checkpoints, so the check below is about exactly that text.
"""

import json
import random
from pathlib import Path

import pytest

from rattn_eval.train import corpora
from rattn_eval.train.data import evaluation_phrases, select_documents, split_sentences, word_lists
from rattn_eval.train import synthetic
from rattn_eval.train.synthetic import FAMILIES, RECALL_FAMILIES, Pools, RecallGenerator

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "results" / "train" / "data_manifest.json"


@pytest.fixture(scope="module")
def phrases():
    return evaluation_phrases()


@pytest.fixture(scope="module")
def essays():
    return corpora.essay_texts()


def all_phrases() -> list[str]:
    """Every fixed phrase the synthetic generator writes (placeholders removed)."""
    s = synthetic
    out = list(s.ATTRS) + [q.strip() for q in s.QUALIFIERS if q.strip()] + list(s.FACTS) + list(s.HEADERS)
    for group in (s.QUESTIONS, s.MULTI_QUESTIONS, s.CHAIN_QUESTIONS, s.COUNT_QUESTIONS, s.CHAIN_FORMS):
        for pair in group:
            out += list(pair)
    out += list(s.RELS) + [t.strip() for t in s.TAILS if t.strip()]
    return out + list(s.Q_FORMS) + list(s.A_FORMS) + list(s.MULTI_Q_FORMS) + list(s.MULTI_A_FORMS)



def test_detector_finds_planted_template_and_essay_text(phrases, essays):
    essay_run = " ".join(corpora.words(essays[3])[200:215])
    docs = ["An ordinary sentence about rivers and hills.",
            f"Filler. {phrases[0].upper()}, and more filler.",  # case and punctuation are ignored
            f"Someone wrote: {essay_run} -- and stopped."]
    hits = corpora.find_contamination(docs, phrases, essay_docs=essays, essay_n=10)
    assert sorted(hits) == [1, 2]
    assert hits[1] == [phrases[0]]
    assert hits[2][0].startswith("essay text")


def test_phrases_cover_a_real_evaluation_prompt(phrases):
    """The extracted ban list catches the fixed text of an actual generated prompt."""
    from rattn_eval.tokenizer import load_tokenizer
    from rattn_eval.tasks import generate

    for prompts in ("native", "ruler"):
        for task in ("niah_single_1", "niah_multivalue", "vt", "cwe", "fwe"):
            sample = generate(task, load_tokenizer("gpt2"), length=2048, n=1, seed=0, prompts=prompts)[0]
            hits = corpora.find_contamination([sample.input], phrases)
            assert hits, f"no evaluation phrase found in a {task} prompt ({prompts}): the extractor misses its templates"


def test_training_text_is_the_manifest_text_and_clean(phrases, essays):
    manifest = json.loads(MANIFEST.read_text())
    docs, _ = select_documents(phrases=phrases, check=False)
    for name, info in manifest["sources"].items():
        assert corpora.sha256_text(docs[name]) == info["sha256"], f"{name} differs from the trained text"
    flat = [d for name in docs for d in docs[name]]
    hits = corpora.find_contamination(flat, phrases, essay_docs=essays, essay_n=10)
    assert not hits, {flat[i][:60]: r for i, r in list(hits.items())[:5]}


def five_word_windows(phrases):
    """Every 5-word run of every evaluation phrase: stricter than whole phrases."""
    out = set()
    for p in phrases:
        w = corpora.words(p)
        out.update(" ".join(w[i : i + 5]) for i in range(len(w) - 4))
    return sorted(out)


@pytest.mark.parametrize("families", [FAMILIES, RECALL_FAMILIES], ids=["default-mix", "recall-mix"])
def test_synthetic_documents_are_clean(phrases, essays, families):
    windows = five_word_windows(phrases)
    assert not corpora.find_contamination(all_phrases(), windows), "a generator phrase overlaps an evaluation phrase"
    sents = [s for d in corpora.news_documents() + corpora.fortunes_documents()[:3000] for s in split_sentences(d)]
    gen = RecallGenerator(Pools(sentences=sents, **word_lists()), families)
    rng = random.Random(0)
    docs = [gen.document(rng, rng.randint(200, 4000)) for _ in range(600)]
    hits = corpora.find_contamination(docs, windows, essay_docs=essays, essay_n=10)
    assert not hits, {docs[i][-120:]: r for i, r in list(hits.items())[:3]}


def test_five_word_check_can_fail(phrases):
    """A recall document that reuses five words of a template's question is caught."""
    doc = "Note: code for ab-cd = 1234567. What is the special magic code for ab-cd?\nIt is 1234567"
    assert corpora.find_contamination([doc], five_word_windows(phrases)) == {0: ["what is the special magic"]}
