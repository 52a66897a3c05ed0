"""The three shipped checkpoints load by name from package data and run a forward pass."""


import pytest
import torch

from rattn_eval.checkpoints import SHIPPED, checkpoint_dir
from rattn_eval.models import load_model

KINDS = {"tiny-full": "global", "tiny-swa": "swa", "tiny-rattn": "rattn"}


def test_shipped_checkpoints_fit_the_size_budget():
    total = sum(p.stat().st_size for name in SHIPPED for p in checkpoint_dir(name).iterdir())
    assert total <= 24 * 2**20, f"shipped checkpoints take {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads_by_name_and_runs(name):
    folder = checkpoint_dir(name)
    assert folder.is_dir() and "rattn_eval" in folder.parts
    model, tok = load_model(name, device="cpu", backend="torch")
    cfg = model.config
    assert cfg.name == name
    assert cfg.kinds == tuple("global" if (i + 1) % 4 == 0 else KINDS[name] for i in range(8))
    assert cfg.window == (None if name == "tiny-full" else 64)
    ids = torch.tensor([tok.encode_prompt("The river Thames flows through London. The river")])
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], cfg.vocab_size) and torch.isfinite(logits).all()
    # a trained model, not random weights: it predicts the obvious continuation better than chance
    logp = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).mean()
    assert logp > -5.0, f"mean log-prob {float(logp):.2f} looks untrained (uniform is {-torch.log(torch.tensor(cfg.vocab_size)):.2f})"


def test_default_model_is_the_shipped_rattention_checkpoint():
    from rattn_eval.runner import DEFAULT_MODEL, RunConfig

    assert DEFAULT_MODEL == "tiny-rattn" and DEFAULT_MODEL in SHIPPED
    assert RunConfig(tasks=("niah_single_1",), lengths=(1024,)).model == "tiny-rattn"
