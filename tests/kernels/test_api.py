"""The public prefill entry points across ops (kernels/__init__.py): the `auto` backend's head-dim rule,
identical refusals of bad inputs on both backends, and the test setup the op files rely on (NaN-poisoned
`torch.empty`, a shape grid whose pairwise subset covers every pair of factor values)."""

import pytest
import torch
from closeness import assert_close
from pairwise import covers_every_pair
from prefill_cases import FACTORS, PAIRWISE, feasible, inputs

import rattn_eval.kernels as K
from rattn_eval.kernels import rattention, residual_linear_attention, residual_linear_attention_naive, swa_attention


def test_empty_is_nan_poisoned():
    # conftest fills torch.empty with NaN: an output tile a kernel forgets to write fails the comparisons.
    assert torch.isnan(torch.empty(4)).all()


def test_pairwise_subset_covers_every_pair():
    # the default CPU cases of test_swa.py, test_rla.py and test_rattention.py together
    assert covers_every_pair(PAIRWISE, FACTORS, feasible)
    for k, values in FACTORS.items():
        assert {str(c[k]) for c in PAIRWISE} == {str(v) for v in values}, k


def test_auto_takes_torch_for_head_dims_the_triton_kernels_lack(monkeypatch):
    # pretend we are on CUDA: auto would pick triton, but D = 96 is no power of two
    monkeypatch.setattr(K, "resolve_backend", lambda backend, device: "triton")
    q, k, v = inputs(9, 2, 1, 96)
    before = K.launches["torch.rla"]
    out = K.residual_linear_attention(q, k, v, window=2, backend="auto")
    assert K.launches["torch.rla"] == before + 1
    assert_close(out, residual_linear_attention_naive(q, k, v, window=2), 1e-5, row_tol=1e-4)
    assert all(K.triton_head_dim_ok(D) for D in (16, 64, 128, 256))
    assert not any(K.triton_head_dim_ok(D) for D in (8, 96, 512))


def _bad_prefill_calls():
    """(id, call(backend), message) for inputs every public prefill op must refuse on either backend."""
    B, T, H, Hkv, D = 2, 12, 4, 2, 64
    q, k, v = inputs(T, H, Hkv, D, B=B, seed=9)
    ones = torch.ones(T, D)
    return [
        ("mixed-dtype", lambda be: rattention(q, k.half(), v, window=3, backend=be), "share one floating dtype"),
        ("fp64", lambda be: swa_attention(q.double(), k.double(), v.double(), window=3, backend=be), "float16, bfloat16"),
        ("int", lambda be: swa_attention(q.int(), k.int(), v.int(), window=3, backend=be), "floating dtype"),
        ("bool-window", lambda be: swa_attention(q, k, v, window=True, backend=be), "non-negative int"),
        ("none-window-rla", lambda be: residual_linear_attention(q, k, v, window=None, backend=be), "int window"),
        ("float-lengths", lambda be: swa_attention(q, k, v, window=3, lengths=torch.tensor([3.5, 11.9]), backend=be),
         "hold integers"),
        ("list-lengths", lambda be: swa_attention(q, k, v, window=3, lengths=[3, 11], backend=be), "torch tensor"),
        ("lengths-past-T", lambda be: rattention(q, k, v, window=3, lengths=torch.tensor([3, 13]), backend=be), "lengths"),
        ("2d-cu_seqlens", lambda be: swa_attention(q[:1], k[:1], v[:1], window=3, cu_seqlens=torch.tensor([[0, 5, 12]]),
                                                   backend=be), "1-d"),
        ("rope-T+1", lambda be: rattention(q, k, v, window=3, rope=(torch.ones(T + 1, D), torch.zeros(T + 1, D)),
                                           backend=be), "rope tables"),
        ("odd-D-rope", lambda be: rattention(torch.randn(1, T, 2, 7), torch.randn(1, T, 1, 7), torch.randn(1, T, 1, 7),
                                             window=3, rope=(ones[:, :7], ones[:, :7]), backend=be), "even head dim"),
        ("norm-(D,)", lambda be: rattention(q, k, v, window=3, swa_norm_weight=torch.ones(D), backend=be), "(H, D)"),
        ("norm-(Hkv,D)", lambda be: rattention(q, k, v, window=3, rla_norm_weight=torch.ones(Hkv, D), backend=be),
         "(H, D)"),
        ("eps<0", lambda be: rattention(q, k, v, window=3, eps=-1.0, backend=be), "eps"),
        ("eps=0", lambda be: rattention(q, k, v, window=3, eps=0.0, backend=be), "eps"),
        ("no-heads", lambda be: swa_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], window=3, backend=be), "one head"),
        ("meta-k", lambda be: swa_attention(q, k.to("meta"), v, window=3, backend=be), "one device"),
        ("feature-map", lambda be: residual_linear_attention(q, k, v, window=3, feature_map="elu", backend=be), "feature_map"),
    ]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_public_ops_refuse_bad_inputs_alike(backend):
    """Both backends raise the same clear ValueError (checked before dispatch) instead of a deep error,
    a crash or a silently different answer."""
    for name, call, match in _bad_prefill_calls():
        with pytest.raises(ValueError, match=match):
            call(backend)
            pytest.fail(f"{name}: no error")
