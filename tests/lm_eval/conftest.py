"""Fixtures of the lm-eval tests; plain helpers live in lmeval_support.py."""

import pytest

from lmeval_support import REPO, TASKS_DIR, tiny_llama_hf_dir


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    """The task YAMLs name their JSONL files relative to the repository root."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)  # indexing 14k built-in tasks costs seconds


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """(HF folder of the tiny random Llama, our checkpoint converted from it)."""
    from rattn_eval.models import convert

    hf_dir = tiny_llama_hf_dir(tmp_path_factory.mktemp("tiny_llama_hf"))
    ours_dir = tmp_path_factory.mktemp("tiny_llama_ours") / "ckpt"
    convert(str(hf_dir), str(ours_dir))
    return hf_dir, ours_dir
