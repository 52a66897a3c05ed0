"""The training-time attention ops equal the kernels package's references, values and gradients."""

import pytest
import torch

from rattn_eval import kernels
from rattn_eval.models.config import ModelConfig
from rattn_eval.models.model import Model
from rattn_eval.train.fastattn import (residual_linear_attention_train, rattention_train, swa_attention_train,
                                       training_attention)


def rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def qkv(B=2, T=111, H=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda h: torch.randn(B, T, h, D, generator=g, dtype=torch.float64).float().requires_grad_()  # noqa: E731
    return mk(H), mk(Hkv), mk(Hkv)


def grads(out, inputs, seed=1):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * w).sum(), inputs)


@pytest.mark.parametrize("window", [None, 1, 8, 64, 200], ids=lambda w: f"w{w}")
def test_swa_train_equals_reference(window):
    q, k, v = qkv()
    ref = kernels.swa_attention(q, k, v, window=window, backend="torch")
    out = swa_attention_train(q, k, v, window=window)
    assert rel(out, ref) < 1e-5
    for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        assert rel(a, b) < 1e-4


@pytest.mark.parametrize("window", [0, 7, 64, 120], ids=lambda w: f"w{w}")
@pytest.mark.parametrize("feature_map", ["softmax", "relu"])
def test_rla_train_equals_chunked_reference(window, feature_map):
    q, k, v = qkv()
    ref = kernels.residual_linear_attention(q, k, v, window=window, feature_map=feature_map, backend="torch")
    out = residual_linear_attention_train(q, k, v, window=window, feature_map=feature_map)
    assert rel(out, ref) < 1e-5 if ref.abs().max() > 0 else out.abs().max() == 0
    if window < 110:
        for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
            assert rel(a, b) < 1e-4


def test_rattention_train_equals_reference():
    q, k, v = qkv(T=130)
    rope = kernels.Rope(16).tables(130, q.device)
    nw = torch.rand(4, 16) + 0.5
    kw = dict(window=16, rope=rope, swa_norm_weight=nw, rla_norm_weight=nw.flip(0))
    ref = kernels.rattention(q, k, v, backend="torch", **kw)
    out = rattention_train(q, k, v, **kw)
    assert rel(out, ref) < 1e-5
    for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        assert rel(a, b) < 1e-4


@pytest.mark.parametrize("local", ["rattn", "swa", "global"])
def test_model_under_training_attention_matches_and_restores(local):
    from rattn_eval.models import model as model_module

    cfg = ModelConfig(name="t", vocab_size=97, width=32, n_heads=2, n_kv_heads=1, head_dim=16,
                      kinds=(local, local, "global"), intermediate_size=64, window=6, nope_global=True,
                      max_context=512, tokenizer="bytes")
    model = Model(cfg, backend="torch").init_weights(0)
    ids = torch.randint(0, 97, (2, 75), generator=torch.Generator().manual_seed(0))
    ref = model(ids)
    real = model_module.kernels
    with training_attention():
        assert model_module.kernels is not real
        out = model(ids)
        padded = model(ids, lengths=torch.tensor([75, 40]))  # padded batches keep the kernels package
    assert model_module.kernels is real
    assert rel(out, ref) < 1e-5
    assert rel(padded[1, :40], model(ids, lengths=torch.tensor([75, 40]))[1, :40]) < 1e-6


def test_a_wrong_mask_would_fail():
    """The comparison can fail: RLA with the window off by one differs from the reference."""
    q, k, v = qkv()
    ref = kernels.residual_linear_attention(q, k, v, window=8, backend="torch")
    assert rel(residual_linear_attention_train(q, k, v, window=7), ref) > 1e-2
