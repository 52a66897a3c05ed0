"""Fixtures of the lm-eval tests; plain helpers live in lmeval_support.py."""

import pytest

from lmeval_support import REPO, TASKS_DIR


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    """The task YAMLs name their JSONL files relative to the repository root."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))
