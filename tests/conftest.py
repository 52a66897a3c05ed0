"""Test setup: Triton runs under its CPU interpreter, threads pinned so the 2 cores do not thrash,
and `torch.empty` / `torch.empty_like` poisoned with NaN so a kernel that leaves part of its output
unwritten fails."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any triton import
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

def _nan_filled(alloc):
    def nan_alloc(*args, **kwargs):
        t = alloc(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    return nan_alloc


_nan_empty, _nan_empty_like = _nan_filled(torch.empty), _nan_filled(torch.empty_like)


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    monkeypatch.setattr(torch, "empty", _nan_empty)
    monkeypatch.setattr(torch, "empty_like", _nan_empty_like)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
