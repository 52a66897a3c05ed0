"""A small QA fixture in the original SQuAD v2 and HotpotQA formats (the real files are user-supplied)."""

import json

import pytest

PLACES = ["Arlen", "Brisk", "Caldor", "Dunmore", "Elswick", "Fennick", "Garrow", "Holt", "Ivel", "Jarrow",
          "Kessel", "Lorne", "Marden", "Norwick", "Oakham", "Pelton", "Quarry", "Rusk", "Selby", "Tarn"]


def _paragraph(i: int) -> str:
    return (f"The river number {i} flows through the valley of {PLACES[i % len(PLACES)]} and is "
            f"{17 + 31 * i} kilometres long. Fishermen there catch trout in spring.")


def write_qa_fixture(folder):
    squad = {"version": "v2.0", "data": [{"title": f"Rivers {a}", "paragraphs": [
        {"context": _paragraph(10 * a + j), "qas": [
            {"id": f"q{a}-{j}", "question": f"Which valley does river number {10 * a + j} flow through?",
             "answers": [{"text": PLACES[(10 * a + j) % len(PLACES)], "answer_start": 0}], "is_impossible": False},
            {"id": f"u{a}-{j}", "question": "What colour is the moon?", "answers": [], "is_impossible": True},
        ]} for j in range(10)]} for a in range(4)]}
    hotpot = [{"_id": f"h{i}", "question": f"How long is the river in the valley of {PLACES[i % len(PLACES)]}?",
               "answer": f"{17 + 31 * i} kilometres", "type": "bridge", "level": "easy",
               "supporting_facts": [[f"River {i}", 0]],
               "context": [[f"River {i + k}", [_paragraph(i + k)]] for k in range(4)]} for i in range(30)]
    (folder / "dev-v2.0.json").write_text(json.dumps(squad))
    (folder / "hotpot_dev_distractor_v1.json").write_text(json.dumps(hotpot))
    return folder


@pytest.fixture(scope="session")
def qa_dir(tmp_path_factory):
    return write_qa_fixture(tmp_path_factory.mktemp("qa"))
