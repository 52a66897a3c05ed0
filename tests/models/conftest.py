"""A Hugging Face cache in tmp_path, for the tests that load models by hub id (test_hub.py, test_families.py)."""

import functools
import hashlib
import os
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(hub: Path, repo_id: str, src: Path, commit: str = COMMIT, ref: str | None = "main") -> Path:
    """Put the files of `src` into the cache as huggingface_hub lays out a download (models--ORG--NAME/
    {refs/<ref>, blobs/, snapshots/<commit>/ with links into blobs/}); returns the snapshot folder."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty HF cache and HOME under tmp_path, offline; returns the hub cache folder. HOME moves too, so
    the on-disk caches of rattn-eval (~/.cache/rattn-eval) start empty and can be checked for weight copies."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    return tmp_path / "hf" / "hub"


@pytest.fixture
def cache_repo(hub):
    """cache_repo(repo_id, src, commit=COMMIT, ref="main") -> snapshot folder, in the `hub` cache."""
    return functools.partial(_cache_repo, hub)
