"""The PyTorch references agree with the definitions and with each other."""

import pytest
import torch
import torch.nn.functional as F

from rattn_eval.kernels import (
    Rope, apply_rope, build_local_cache, empty_local_cache, local_decode_step, local_prefill, rattention_naive,
    residual_linear_attention_naive, swa_attention_naive,
)
from rattn_eval.kernels.rattention.naive import rattention_chunked
from rattn_eval.kernels.rla.naive import residual_linear_attention_chunked, residual_linear_attention_recurrent
from rattn_eval.kernels.swa.naive import swa_attention_chunked


def rand_qkv(B, T, H, Hkv, D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g).to(dtype)
    k = torch.randn(B, T, Hkv, D, generator=g).to(dtype)
    v = torch.randn(B, T, Hkv, D, generator=g).to(dtype)
    return q, k, v


def close(a, b, tol=1e-5):
    err = (a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)
    rowmax = (a.float() - b.float()).abs().amax(dim=-1)
    scale = b.float().abs().amax(dim=-1).clamp(min=1e-6)
    return err.item() <= tol and bool((rowmax <= tol * 10 * scale).all())


@pytest.mark.parametrize("T,H,Hkv", [(1, 2, 1), (37, 4, 2), (100, 4, 4)])
def test_swa_full_window_equals_sdpa(T, H, Hkv):
    q, k, v = rand_qkv(2, T, H, Hkv, 16)
    g = H // Hkv
    ref = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(g, 2).transpose(1, 2), v.repeat_interleave(g, 2).transpose(1, 2), is_causal=True
    ).transpose(1, 2)
    for w in (T, T + 5, None):
        assert close(swa_attention_naive(q, k, v, window=w), ref)
        assert close(swa_attention_chunked(q, k, v, window=w, chunk=16), ref)


@pytest.mark.parametrize("w", [0, 3, 17, 64])
def test_rla_matches_recurrence_and_chunked(w):
    q, k, v = rand_qkv(2, 50, 4, 2, 8)
    for fm in ("softmax", "relu", "identity"):
        ref = residual_linear_attention_recurrent(q, k, v, window=w, feature_map=fm)
        assert close(residual_linear_attention_naive(q, k, v, window=w, feature_map=fm), ref)
        assert close(residual_linear_attention_chunked(q, k, v, window=w, feature_map=fm, chunk=7), ref)
        out = residual_linear_attention_naive(q, k, v, window=w, feature_map=fm)
        assert out[:, : w + 1].abs().max().item() == 0.0


def test_windows_differ():
    q, k, v = rand_qkv(1, 40, 2, 2, 8)
    outs = [rattention_naive(q, k, v, window=w) for w in (9, 10, 11)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


@pytest.mark.parametrize("junk", [(0.0, 7.0, -3.0), (float("nan"), float("inf"), float("nan"))], ids=["finite", "nan"])
def test_padded_and_packed_equal_one_by_one(junk):
    # junk in the padding (and past the last packed sequence) must not reach any real token: finite values, and
    # NaN / inf, which a masked score times a value (0 * NaN) would otherwise spread
    lens = [13, 30, 1]
    seqs = [rand_qkv(1, n, 4, 2, 8, seed=i) for i, n in enumerate(lens)]
    T = max(lens)
    q = torch.cat([torch.cat([s[0], s[0].new_full((1, T - s[0].shape[1], 4, 8), junk[0])], 1) for s in seqs])
    k = torch.cat([torch.cat([s[1], s[1].new_full((1, T - s[1].shape[1], 2, 8), junk[1])], 1) for s in seqs])
    v = torch.cat([torch.cat([s[2], s[2].new_full((1, T - s[2].shape[1], 2, 8), junk[2])], 1) for s in seqs])
    lengths = torch.tensor(lens)
    cu = torch.tensor([0, 13, 43, 44])
    packed = [torch.cat([torch.cat([s[i] for s in seqs], 1), torch.full_like(seqs[0][i][:, :3], junk[i])], 1)
              for i in range(3)]  # three junk rows after the last sequence
    for fn in (rattention_naive, rattention_chunked, swa_attention_naive, swa_attention_chunked,
               residual_linear_attention_naive, residual_linear_attention_chunked):
        out = fn(q, k, v, window=5, lengths=lengths)
        outp = fn(*packed, window=5, cu_seqlens=cu)
        for b, n in enumerate(lens):
            ref = fn(*seqs[b], window=5)
            assert close(out[b : b + 1, :n], ref)
            assert close(outp[:, cu[b] : cu[b + 1]], ref)
            if n < T:
                assert out[b, n:].abs().max().item() == 0
        assert outp[:, int(cu[-1]):].abs().max().item() == 0, fn.__name__


@pytest.mark.parametrize("L,w,kind", [(5, 8, "rattn"), (30, 8, "rattn"), (30, 8, "swa"), (12, 0, "rattn")])
def test_prefill_then_decode_equals_forward_with_rope(L, w, kind):
    n = 11
    H, Hkv, D = 4, 2, 16
    q, k, v = rand_qkv(2, L + n, H, Hkv, D)
    rope = Rope(D, theta=1000.0)
    gs, gr = torch.rand(H, D) + 0.5, torch.rand(H, D) + 0.5
    norms = dict(swa_norm_weight=gs, rla_norm_weight=gr) if kind == "rattn" else {}
    full, _ = local_prefill(q, k, v, window=w, kind=kind, rope=rope, backend="torch", **norms)
    out, cache = local_prefill(q[:, :L], k[:, :L], v[:, :L], window=w, kind=kind, rope=rope, backend="torch", **norms)
    steps = [local_decode_step(q[:, t], k[:, t], v[:, t], cache, rope=rope, backend="torch", **norms) for t in range(L, L + n)]
    got = torch.cat([out, torch.stack(steps, 1)], 1)
    assert close(got, full)


def test_decode_batch_at_different_positions():
    H, Hkv, D, w = 2, 1, 8, 4
    rope = Rope(D)
    lens = [3, 9]
    seqs = [rand_qkv(1, 14, H, Hkv, D, seed=s) for s in range(2)]
    T = max(lens)
    q = torch.cat([s[0][:, :T] for s in seqs])
    k = torch.cat([s[1][:, :T] for s in seqs])
    v = torch.cat([s[2][:, :T] for s in seqs])
    _, cache = local_prefill(q, k, v, window=w, rope=rope, lengths=torch.tensor(lens), backend="torch")
    outs = [[], []]
    for step in range(4):
        idx = [lens[b] + step for b in range(2)]
        qs = torch.cat([seqs[b][0][:, idx[b]] for b in range(2)])
        ks = torch.cat([seqs[b][1][:, idx[b]] for b in range(2)])
        vs = torch.cat([seqs[b][2][:, idx[b]] for b in range(2)])
        o = local_decode_step(qs, ks, vs, cache, rope=rope, backend="torch")
        for b in range(2):
            outs[b].append(o[b])
    for b in range(2):
        end = lens[b] + 4
        ref, _ = local_prefill(*(t[:, :end] for t in seqs[b]), window=w, rope=rope, backend="torch")
        assert close(torch.stack(outs[b]), ref[0, lens[b] :])


def test_cache_size_is_analytic_and_context_independent():
    H, Hkv, D, w = 4, 2, 16, 32
    sizes = []
    for T in (64, 1024):
        q, k, v = rand_qkv(2, T, H, Hkv, D)
        c = build_local_cache(k, v, window=w)
        sizes.append(c.nbytes())
        assert c.nbytes() == c.analytic_nbytes(2, w, Hkv, D, torch.float32)
    assert sizes[0] == sizes[1]
    e = empty_local_cache(2, w, Hkv, D, dtype=torch.float32, device="cpu", kind="swa")
    assert e.nbytes() == e.analytic_nbytes(2, w, Hkv, D, torch.float32, kind="swa")


def test_rope_rotate_half_matches_hf_convention():
    D = 8
    rope = Rope(D, theta=10000.0)
    cos, sin = rope.tables(5)
    x = torch.randn(1, 5, 1, D)
    # explicit pairwise rotation of (i, i + D/2) by angle pos * theta^(-2i/D)
    y = torch.empty_like(x)
    for p in range(5):
        for i in range(D // 2):
            a = p * 10000.0 ** (-2 * i / D)
            c, s = torch.cos(torch.tensor(a)), torch.sin(torch.tensor(a))
            y[0, p, 0, i] = x[0, p, 0, i] * c - x[0, p, 0, i + D // 2] * s
            y[0, p, 0, i + D // 2] = x[0, p, 0, i + D // 2] * c + x[0, p, 0, i] * s
    assert torch.allclose(apply_rope(x, cos, sin), y, atol=1e-5)


def test_auto_takes_torch_for_head_dims_the_triton_kernels_lack(monkeypatch):
    import rattn_eval.kernels as K

    # pretend we are on CUDA: auto would pick triton, but D = 256 has no Triton RLA kernel
    monkeypatch.setattr(K, "resolve_backend", lambda backend, device: "triton")
    q, k, v = rand_qkv(1, 9, 2, 1, 256)
    before = K.launches["torch.rla"]
    out = K.residual_linear_attention(q, k, v, window=2, backend="auto")
    assert K.launches["torch.rla"] == before + 1
    assert close(out, residual_linear_attention_naive(q, k, v, window=2))
    assert K.triton_head_dim_ok(256, rla=False) and not K.triton_head_dim_ok(256, rla=True)
    assert not K.triton_head_dim_ok(96, rla=False) and K.triton_head_dim_ok(64, rla=True)


def _bad_prefill_calls():
    """(id, call(backend), message) for inputs every public prefill op must refuse on either backend."""
    from rattn_eval.kernels import rattention, residual_linear_attention, swa_attention

    B, T, H, Hkv, D = 2, 12, 4, 2, 64
    q, k, v = rand_qkv(B, T, H, Hkv, D, seed=9)
    ones = torch.ones(T, D)
    return [
        ("mixed-dtype", lambda be: rattention(q, k.half(), v, window=3, backend=be), "share one floating dtype"),
        ("fp64", lambda be: swa_attention(q.double(), k.double(), v.double(), window=3, backend=be), "float16, bfloat16"),
        ("int", lambda be: swa_attention(q.int(), k.int(), v.int(), window=3, backend=be), "floating dtype"),
        ("bool-window", lambda be: swa_attention(q, k, v, window=True, backend=be), "non-negative int"),
        ("none-window-rla", lambda be: residual_linear_attention(q, k, v, window=None, backend=be), "int window"),
        ("float-lengths", lambda be: swa_attention(q, k, v, window=3, lengths=torch.tensor([3.5, 11.9]), backend=be),
         "hold integers"),
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
    a crash or a silently different answer (the Triton path used to cast mixed dtypes to q's, the torch
    path rounded rotated k to k's dtype; float lengths were truncated; eps <= 0 gave NaN rows)."""
    for name, call, match in _bad_prefill_calls():
        with pytest.raises(ValueError, match=match):
            call(backend)
            pytest.fail(f"{name}: no error")
