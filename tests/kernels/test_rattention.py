"""RAttention: the PyTorch references, the Triton prefill (rattention/fused.py) and the Triton training
path (rattention/autograd.py) against them on the CPU under TRITON_INTERPRET=1 (set by conftest; fp32 /
fp16), and on a GPU (marked gpu; bf16 / fp16 / fp32 against fp32 references, skipped without CUDA; run with
`TRITON_INTERPRET=0 python -m pytest -m gpu tests/kernels/test_rattention.py`)."""

from types import MappingProxyType

import pytest
import torch
from closeness import assert_close
from grad_inputs import DTYPES, QKV_LAYOUTS, make_case
from pairwise import all_cases, case_id, covers_every_pair, pairwise_cases, window_value
from prefill_cases import (exact_fp32, FULL_GRID, GPU_SHAPES, cases, check, check_case, check_padded_and_packed, gpu_inputs,
                           gpu_shape_id, gpu_shape_inputs, inputs, make_inputs, poison_padding, rattn_extra,
                           scores_far_below_zero, TOL)

import rattn_eval.kernels as K
from rattn_eval.kernels import Rope, rattention_naive, triton_common
from rattn_eval.kernels.rattention.fused import rattention_triton
from rattn_eval.kernels.rattention.naive import rattention_chunked
from rattn_eval.kernels.rla import chunk as rla_chunk
from rattn_eval.kernels.rla import segment as rla_segment
from rattn_eval.kernels.swa import parallel as swa_parallel

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")  # triton 3.6 interpreter + numpy


def run_case(c):
    check_case(c, rattention_triton, rattention_naive, **rattn_extra(c["T"], c["heads"][0], c["D"]))


# --- the combine step of the training path (rattention/combine.py) ---------------------------------------------

@pytest.mark.parametrize("dtype,rla_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                             (torch.float16, torch.float32)], ids=["fp32", "fp16", "fp16, fp32 rla"])
@pytest.mark.parametrize("gains", ["both", "none", "rla only", "transposed"])
@pytest.mark.parametrize("shape", [(2, 37, 3, 64), (1, 70, 2, 256), (1, 0, 2, 16)], ids=str)
def test_combine_matches_the_reference_under_autograd(dtype, rla_dtype, gains, shape):
    # rows and tokens not multiples of the rows per program, H = 3; zero rows (padding) keep finite gradients;
    # an fp32 o_rla beside an fp16 o_swa (the composed fp16 training path) gets its gradient in fp32
    from rattn_eval.kernels.rattention.combine import combine_triton
    from rattn_eval.kernels.rattention.naive import combine

    B, T, H, D = shape
    gen = torch.Generator().manual_seed(7)
    a, b, dy = ((torch.randn(B, T, H, D, generator=gen) * s).to(t) for s, t in ((3.0, dtype), (0.2, rla_dtype),
                                                                              (1.0, dtype)))
    if T:
        a[:, -1] = 0
    gs, gr = (torch.randn(H, D, generator=gen) for _ in range(2))
    gs, gr = {"both": (gs, gr), "none": (None, None), "rla only": (None, gr), "transposed": (gs, gr)}[gains]

    def leaf(g):  # "transposed": (H, D) views of (D, H) storage, which the kernels must not index as rows
        return None if g is None else (g.t().contiguous().t() if gains == "transposed" else g.clone()).requires_grad_()

    leaves = [x.clone().requires_grad_() for x in (a, b)] + [leaf(g) for g in (gs, gr)]
    ref = [x.detach().clone().requires_grad_() if x is not None else None for x in leaves]
    if gains == "transposed" and H > 1:
        assert not leaves[2].is_contiguous()
    out = combine_triton(*leaves, 1e-6, dtype)
    exp = combine(ref[0].float(), ref[1].float(), ref[2], ref[3], 1e-6).to(dtype)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert_close(out, exp, tol, "combine")
    out.backward(dy)
    exp.backward(dy)
    for name, got, want in zip(("d o_swa", "d o_rla", "d g_swa", "d g_rla"), leaves, ref):
        if got is not None:
            assert got.grad.dtype == got.dtype and torch.isfinite(got.grad).all()
            assert_close(got.grad, want.grad, tol, name)


def test_combine_refuses_mismatched_inputs():
    from rattn_eval.kernels.rattention.combine import combine_triton

    a = torch.randn(1, 4, 2, 16)
    with pytest.raises(ValueError, match="tensors of one shape"):
        combine_triton(a, torch.randn(1, 4, 3, 16), None, None, 1e-6, a.dtype)
    with pytest.raises(ValueError, match="tensors of one shape"):
        combine_triton(a, torch.ones(1, 4, 2, 16, dtype=torch.int32), None, None, 1e-6, a.dtype)
    with pytest.raises(ValueError, match="power-of-two head dim"):
        combine_triton(torch.randn(1, 4, 2, 24), torch.randn(1, 4, 2, 24), None, None, 1e-6, a.dtype)
    with pytest.raises(ValueError, match=r"rla norm weight must be \(H, D\)"):
        combine_triton(a, a, None, torch.ones(16), 1e-6, a.dtype)


# --- the references -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn,D", [(rattention_naive, 8), (rattention_triton, 64)], ids=["naive", "triton"])
def test_windows_differ(fn, D):
    q, k, v = inputs(40, 2, 2, D)
    outs = [fn(q, k, v, window=w) for w in (9, 10, 11)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


@pytest.mark.parametrize("junk", [(0.0, 7.0, -3.0), (float("nan"), float("inf"), float("nan"))], ids=["finite", "nan"])
@pytest.mark.parametrize("fn", [rattention_naive, rattention_chunked], ids=["naive", "chunked"])
def test_references_padded_and_packed_equal_one_by_one(fn, junk):
    check_padded_and_packed(fn, D=8, junk=junk)


# --- Triton forward on the CPU interpreter --------------------------------------------------------------------

@pytest.mark.parametrize("c", cases("rattn"), ids=case_id)
def test_matches_reference(c):
    run_case(c)


@pytest.mark.slow
@pytest.mark.parametrize("c", cases("rattn", FULL_GRID), ids=case_id)
def test_matches_reference_full_grid(c):
    run_case(c)


def test_launched_through_public_api():
    # T = 40 fits one segment: phi(k) and phi(q) passes, the segment kernel, the SWA pass (no totals, no carry)
    q, k, v = inputs(40, 2, 1, 64)
    before_api = K.launches["triton.rattention"]
    before = dict(rla_chunk.launch_counts, **rla_segment.launch_counts, **swa_parallel.launch_counts)
    out = K.rattention(q, k, v, window=7, backend="triton")
    after = dict(rla_chunk.launch_counts, **rla_segment.launch_counts, **swa_parallel.launch_counts)
    assert K.launches["triton.rattention"] == before_api + 1
    assert {n: after[n] - before[n] for n in after if after[n] != before[n]} == {
        "rla_phi_kernel": 2, "rla_segment_kernel": 1, "swa_fwd_kernel": 1, "swa_fwd_kernel_dense": 1}
    assert_close(out, rattention_naive(q, k, v, window=7), 1e-4, "rattention")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_contiguous_inputs(dtype):
    """q, k, v as slices of one fused projection (strided heads) and a transposed layout."""
    g = torch.Generator().manual_seed(12)
    B, T, H, Hkv, D, w = 2, 40, 4, 2, 64, 9
    fused = torch.randn(B, T, H + 2 * Hkv, D, generator=g).to(dtype)
    q, k, v = fused[:, :, :H], fused[:, :, H:H + Hkv], fused[:, :, H + Hkv:]
    qt = torch.randn(B, H, T, D, generator=g).to(dtype).transpose(1, 2)  # (B, T, H, D) view, T-major strides
    cos, sin = Rope(D).tables(T)
    f = lambda x: x.float().contiguous()  # noqa: E731
    for qq in (q, qt):
        assert not qq.is_contiguous()
        check(K.rattention(qq, k, v, window=w, rope=(cos, sin), backend="triton"),
              rattention_naive(f(qq), f(k), f(v), window=w, rope=(cos, sin)).to(dtype), dtype, "rattention")


def test_padded_and_packed_equal_one_by_one():
    check_padded_and_packed(rattention_triton, D=64, rms=1e-5, row=1e-5)


@pytest.mark.parametrize("T,heads,layout,B,w,fm,dtype", [
    (150, (4, 2), "ragged", 3, 9, "softmax", "fp32"),
    (111, (2, 1), "packed", 3, 40, "relu", "fp16"),
    (70, (2, 2), "dense", 1, 0, "identity", "fp32"),
    (63, (4, 1), "dense", 2, 70, "softmax", "fp32"),  # one segment (64 rows under the interpreter), w > T
    (100, (2, 2), "dense", 1, 17, "softmax", "fp16"),
])
def test_every_feature_map_over_segments_and_layouts(T, heads, layout, B, w, fm, dtype):
    # many segments (a carry per segment) and one, padded and packed batches, GQA, every feature map, windows 0,
    # inside a segment and past T; RoPE and random norm weights
    c = dict(T=T, D=64, heads=heads, B=B, layout=layout, dtype=dtype)
    q, k, v, lkw = make_inputs(c)
    kw = dict(window=w, feature_map=fm, **rattn_extra(T, heads[0], 64))
    ref = rattention_naive(q.float(), k.float(), v.float(), **kw, **lkw).to(q.dtype)
    check(rattention_triton(q, k, v, **kw, **lkw), ref, q.dtype, f"{c} w={w} {fm}")


@pytest.mark.parametrize("D", [16, 64])
def test_feature_maps_without_rope(D):
    # every feature map without RoPE; at D = 16 the value slices are capped at the head dim
    q, k, v = inputs(45, 2, 2, D)
    for fm in ("softmax", "relu", "identity"):
        assert_close(rattention_triton(q, k, v, window=9, feature_map=fm),
                     rattention_naive(q, k, v, window=9, feature_map=fm), 1e-4, fm)


def test_bad_arguments_raise():
    q, k, v = inputs(8, 1, 1, 64)
    with pytest.raises(ValueError, match="int window"):
        rattention_triton(q, k, v, window=None)
    x = torch.randn(1, 8, 1, 512)
    with pytest.raises(ValueError, match="head dims"):
        rattention_triton(x, x, x, window=2)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_head_dim_256(dtype, monkeypatch):
    # Gemma-3-shaped heads: "auto" on a GPU (pretended here) runs the fused prefill at D = 256: two value slices
    # of the segment kernel under the interpreter, rows of 67 and 100 tokens over two segments (a carry), the
    # SWA pass at D = 256; RoPE, random norm weights, GQA, a right-padded batch, softmax features.
    monkeypatch.setattr(K, "resolve_backend", lambda backend, device: "triton")
    c = dict(T=100, D=256, heads=(2, 1), B=2, layout="ragged", dtype=dtype)
    q, k, v, lkw = make_inputs(c)
    kw = dict(window=7, **rattn_extra(100, 2, 256), **lkw)
    before, before_api = dict(rla_chunk.launch_counts), K.launches["triton.rattention"]
    out = K.rattention(q, k, v, backend="auto", **kw)
    assert K.launches["triton.rattention"] == before_api + 1
    assert rla_chunk.launch_counts["rla_carry_kernel"] == before["rla_carry_kernel"] + 1
    check(out, rattention_naive(q.float(), k.float(), v.float(), **kw).to(q.dtype), q.dtype, f"D=256 {dtype}")


@pytest.mark.parametrize("dtype,logit", [(torch.float32, -300.0), (torch.float16, -25.0)])
def test_rows_whose_scores_all_lie_far_below_zero(dtype, logit):
    # the SWA pass (no RoPE, which would rotate the scores away from `logit`): see test_swa.py
    q, k, v = scores_far_below_zero(50, 2, 1, 64, logit, dtype)
    ref = rattention_naive(q.float(), k.float(), v.float(), window=7).to(dtype)
    if dtype == torch.float32:
        # Scores of -300 are sums of products up to ~2400 (q ~ -k ~ 49 u), so fp32 rounds them coarsely, and the
        # worst row lands at ~1e-4 of its max against the reference (also against one in fp64). Its last bits
        # follow the CPU's SIMD paths: 1.0017e-4 on an AMD EPYC host, under 1e-4 on the host of earlier runs.
        # The row bound here is twice the fp32 one.
        rms, row = TOL[dtype]
        assert_close(rattention_triton(q, k, v, window=7), ref, rms, row_tol=2 * row)
        return
    check(rattention_triton(q, k, v, window=7), ref, dtype)


def test_large_scores_and_sums_in_fp16():
    # q, k of std 20 (scores of std ~400), without RoPE: with it, q and k rotated in fp32 must be rounded to fp16
    # for the tensor cores, which at these scores alone costs ~6e-3 against an fp32 reference
    T, H, Hkv, D, w = 70, 4, 2, 32, 40
    g = torch.Generator().manual_seed(11)
    q, k, v = ((torch.randn(1, T, h, D, generator=g) * s).half() for h, s in ((H, 20.0), (Hkv, 20.0), (Hkv, 1.0)))
    kw = dict(window=w, swa_norm_weight=rattn_extra(T, H, D)["swa_norm_weight"])
    check(rattention_triton(q, k, v, **kw), rattention_naive(q.float(), k.float(), v.float(), **kw).half(),
          torch.float16, "large scores")
    # fp16 inputs keep the raw RLA partials in fp32: their sums (~1e6 here) pass 65504
    q, k = ((torch.rand(1, 64, h, 64, generator=g) * 8).half() for h in (2, 1))  # relu features ~4, 64 of them
    v = (torch.rand(1, 64, 1, 64, generator=g) * 8 + 20).half()
    kw = dict(window=3, feature_map="relu")
    check(rattention_triton(q, k, v, **kw), rattention_naive(q.float(), k.float(), v.float(), **kw).half(),
          torch.float16, "large fp16 sums")


def with_interpreter_tiles(monkeypatch, **change):
    """The SWA pass's tiles under the interpreter, changed (e.g. tma=True: the GPU's TMA loads)."""
    tiles = dict(swa_parallel.SWA_TILES)
    tiles["interpreter"] = MappingProxyType(dict(tiles["interpreter"], **change))
    monkeypatch.setattr(swa_parallel, "SWA_TILES", MappingProxyType(tiles))


def test_dense_batches_take_the_unmasked_path(monkeypatch):
    # the SWA pass takes DENSE / EVEN for dense batches (swa/README.md), here with TMA tiles and partials too
    T, w, H, Hkv, D = 64, 16, 2, 1, 64
    q, k, v = inputs(T, H, Hkv, D, torch.float16, B=2)
    kw = dict(window=w, **rattn_extra(T, H, D))
    ref = rattention_naive(q.float(), k.float(), v.float(), **kw).half()
    for tma in (False, True):
        with_interpreter_tiles(monkeypatch, tma=tma)
        before = dict(swa_parallel.launch_counts)
        out = rattention_triton(q, k, v, **kw)
        assert swa_parallel.launch_counts["swa_fwd_kernel_even"] == before["swa_fwd_kernel_even"] + 1
        assert swa_parallel.launch_counts["swa_fwd_kernel_tma"] == before["swa_fwd_kernel_tma"] + tma
        check(out, ref, torch.float16, f"dense and even, tma={tma}")


def test_tma_tiles_with_poisoned_padding(monkeypatch):
    # The SWA pass with its key / value tiles and the raw RLA partials through TMA descriptors (the GPU default
    # for 16-bit inputs): whole tiles arrive, rows of a neighbouring sequence or of padding (NaN here) included.
    with_interpreter_tiles(monkeypatch, tma=True)
    for T, (H, Hkv), layout, B, w in ((70, (4, 2), "ragged", 3, 9), (90, (2, 1), "packed", 3, 0),
                                      (50, (2, 2), "ragged", 2, 80)):
        c = dict(T=T, D=64, heads=(H, Hkv), B=B, layout=layout, dtype="fp16")
        q, k, v, lkw = make_inputs(c)
        kw = dict(window=w, **rattn_extra(T, H, 64))
        ref = rattention_naive(q.float(), k.float(), v.float(), **kw, **lkw).half()
        poison_padding(q, k, v, lkw)
        before = swa_parallel.launch_counts["swa_fwd_kernel_tma"]
        check(rattention_triton(q, k, v, **kw, **lkw), ref, torch.float16, f"TMA {c} w={w}")
        assert swa_parallel.launch_counts["swa_fwd_kernel_tma"] == before + 1


# --- Triton gradients (rattention/autograd.py) on the CPU interpreter -----------------------------------------
#
# Gradients of q, k, v and both norm weights on the Triton backend (one autograd Function over the kernels of
# both branches) against the materializing reference differentiated by autograd; RoPE tables (T, D). The grid
# is the one of the RLA gradient tests (test_rla.py): T in {1, 15, 63, 100, 257}, windows
# {0, 7, T-1, T+5}, D in {64, 128}, heads {(4, 4), (4, 1), (4, 2)}, dense / padded / packed, fp32 / fp16,
# feature maps softmax / relu / identity, q, k, v separate, fused or transposed; NaN in padded input rows. A
# pairwise-covering subset by default (T = 257 with D = 64 and fewer KV heads only), the full grid with
# `-m slow`. D = 256 (Gemma-3-shaped heads) has cases of its own: `test_gradients_head_dim_256` (fp32, fp16)
# and a bf16 one on a GPU.

GRAD_TOL = {torch.float32: 1e-4, torch.float16: 2e-3}
# Per-row bounds. fp32: rows with one contributing term cancel (see test_rla.py, GRAD_ROW_TOL). fp16: the
# kernels round o_swa, the SWA branch's output gradient and its dq, dk, dv to fp16 (2^-11 each; the RLA
# branch's output gradient stays fp32), which the reference does not, on top of each branch's own error
# (seen at commit 43e5b55, whose composition rounded o_rla and its gradient to fp16 too: 2.7e-3 on one dq
# row, T = 63, packed).
GRAD_ROW_TOL = {torch.float32: 1e-3, torch.float16: 4e-3}

GRAD_FACTORS = {
    "T": [1, 15, 63, 100, 257],
    "w": ["0", "7", "T-1", ">T"],
    "D": [64, 128],
    "heads": [(4, 4), (4, 1), (4, 2)],
    "layout": ["dense", "padded", "packed"],
    "dtype": ["fp32", "fp16"],
    "fm": ["softmax", "relu", "identity"],
    "qkv": list(QKV_LAYOUTS),
}


def grad_feasible(c: dict) -> bool:
    # keeps the default run inside the interpreter's budget: at T = 257 fewer KV heads and D = 64 only
    # (the RLA gradient tests cover T = 257 with D = 128 and H = Hkv for the RLA branch)
    return c["T"] != 257 or (c["D"] == 64 and c["heads"] != (4, 4))


GRAD_CASES = pairwise_cases(GRAD_FACTORS, grad_feasible)


def norm_weights(H, D, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(H, D, generator=g) + 0.5).to(device=device, dtype=dtype).requires_grad_() for _ in range(2)]


def run(fn, leaves, weights, do, **kw):
    """Output gradient do through fn; returns the gradients of q, k, v, g_swa, g_rla."""
    fn(*leaves.qkv(), swa_norm_weight=weights[0], rla_norm_weight=weights[1], **kw).backward(do)
    return (*leaves.grads(), weights[0].grad, weights[1].grad)


def check_grad_case(c, seed=0):
    T, D, (H, Hkv), dtype = c["T"], c["D"], c["heads"], DTYPES[c["dtype"]]
    leaves, do, valid, kw = make_case(T, H, Hkv, D, dtype, layout=c["layout"], qkv=c["qkv"], seed=seed)
    kw.update(window=window_value(c["w"], T), feature_map=c["fm"], rope=Rope(D).tables(T))
    weights = norm_weights(H, D, dtype, seed + 2)
    before = K.launches["triton.rattention_grad"]
    got = run(K.rattention, leaves, weights, do, backend="triton", **kw)
    assert K.launches["triton.rattention_grad"] == before + 1
    ref = run(rattention_naive, leaves.copy(), [w.detach().float().requires_grad_() for w in weights], do.float(), **kw)
    check_grads(got, ref, GRAD_TOL[dtype], GRAD_ROW_TOL[dtype], valid, case_id(c))


def check_grads(got, ref, tol, row_tol, valid, what):
    """Gradients of q, k, v, g_swa, g_rla against the reference's: relative RMS <= tol, and every row's
    max-abs error <= row_tol x the row's max-abs + tol x the tensor's max-abs; padded rows exactly zero.

    The absolute slack is for dq / dk rows that are small only by cancellation: a query that sees a
    single key has dS = P (dO.v - dO.o) = 0 in the SWA branch, but o = v only up to the output's rounding
    (2^-11 |v| in fp16), so such a row holds that rounding (~5e-4 in fp16 with D = 128) plus its RLA part,
    which may be far smaller. For the same reason dq / dk rows that are zero in the reference need not be
    exactly zero."""
    for name, g, r in zip(("q", "k", "v", "swa_norm_weight", "rla_norm_weight"), got, ref):
        assert g.dtype == got[0].dtype, name
        slack = tol * r.float().abs().max().item() if r.numel() else 0.0
        assert_close(g, r, tol, f"{what} d{name}", row_tol=row_tol, abs_tol=slack, zero_rows=name not in ("q", "k"))
        if name in ("q", "k", "v"):
            assert (g[~valid] == 0).all(), f"{what} d{name}: nonzero gradient at padding"


@pytest.mark.parametrize("c", GRAD_CASES, ids=case_id)
def test_gradients_match_reference(c):
    check_grad_case(c)


@pytest.mark.slow
@pytest.mark.parametrize("c", all_cases(GRAD_FACTORS), ids=case_id)
def test_gradients_match_reference_full_grid(c):
    check_grad_case(c)


def test_gradients_pairwise_subset_covers_every_pair():
    assert covers_every_pair(GRAD_CASES, GRAD_FACTORS, grad_feasible)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_gradients_head_dim_256(dtype):
    # the SWA and RLA autograd ops at D = 256 (two value / feature slices of 128 per RLA state under the
    # interpreter, 70 rows over two segments); RoPE, GQA, a padded batch (an empty, a full and a partial row)
    check_grad_case(dict(T=70, w="7", D=256, heads=(2, 1), layout="padded", dtype=dtype, fm="softmax", qkv="separate"))


@pytest.mark.parametrize("dtype,D,T", [(torch.float16, 64, 150), (torch.float32, 64, 150), (torch.float16, 256, 48)],
                         ids=["fp16", "fp32", "fp16-D256"])
def test_gpu_table_rows_under_the_interpreter(dtype, D, T, monkeypatch):
    """The GPU rows that these inputs pick in every tuning table (SWA_TILES, with heads_first and TMA for 16-bit
    inputs; PASS_TILES, SEGMENT_TILES, SWA_BWD_TILES; RLA_BWD_TILES's fp32 rows, which fp16 takes too: its
    16-bit rows run in test_rla.py's test_gpu_backward_rows_under_the_interpreter) and the GPU segment lengths,
    on a pretended GPU (interpreter flag off, 4 SMs): the fused prefill and the gradients through a padded batch,
    over several segments at D = 64."""
    monkeypatch.setattr(triton_common, "INTERPRET", False)
    monkeypatch.setattr(rla_segment, "INTERPRET", False)
    monkeypatch.setattr(swa_parallel, "tma_ok", lambda *ts: ts[0].dtype != torch.float32)  # CPU tensors
    H, Hkv, w = 2, 1, 40
    leaves, do, valid, kw = make_case(T, H, Hkv, D, dtype, layout="padded", bounds=[T, T // 2], seed=21)
    kw.update(window=w, rope=Rope(D).tables(T))
    weights = norm_weights(H, D, dtype, 22)
    q, k, v = (x.detach() for x in leaves.qkv())
    gs, gr = (x.detach() for x in weights)
    before = dict(rla_chunk.launch_counts, **swa_parallel.launch_counts)
    out = K.rattention(q, k, v, swa_norm_weight=gs, rla_norm_weight=gr, backend="triton", **kw)
    ran = {n: c - before[n] for n, c in dict(rla_chunk.launch_counts, **swa_parallel.launch_counts).items()}
    assert ran["swa_fwd_kernel_tma"] == (dtype != torch.float32 and D <= 128)  # the 16-bit row's TMA tiles
    assert ran["rla_carry_kernel"] == (D == 64)  # segments sized for 4 SMs: several at D = 64
    ref = rattention_naive(q.float(), k.float(), v.float(), swa_norm_weight=gs.float(), rla_norm_weight=gr.float(), **kw)
    check(out, ref.to(dtype), dtype, "fused prefill")
    got = run(K.rattention, leaves, weights, do, backend="triton", **kw)
    ref = run(rattention_naive, leaves.copy(), [x.detach().float().requires_grad_() for x in weights], do.float(), **kw)
    check_grads(got, ref, GRAD_TOL[dtype], GRAD_ROW_TOL[dtype], valid, "gradients")


def test_norm_weights_and_rope_tables_alone_take_the_grad_path():
    """A norm weight or a RoPE table that requires grad is enough; without any, the fused prefill runs."""
    B, T, H, Hkv, D, window = 1, 30, 2, 1, 32, 4
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(B, T, h, D, generator=g) for h in (H, Hkv, Hkv))
    cos, sin = Rope(D).tables(T)
    gs, gr = norm_weights(H, D, torch.float32, 12)
    before = K.launches["triton.rattention_grad"]
    out = K.rattention(q, k, v, window=window, rope=(cos, sin), backend="triton")
    assert K.launches["triton.rattention_grad"] == before and not out.requires_grad
    out = K.rattention(q, k, v, window=window, rope=(cos, sin), swa_norm_weight=gs, rla_norm_weight=gr,
                       backend="triton")
    assert K.launches["triton.rattention_grad"] == before + 1
    do = torch.randn(B, T, H, D, generator=g)
    out.backward(do)
    gs_ref, gr_ref = (w.detach().clone().requires_grad_() for w in (gs, gr))
    rattention_naive(q, k, v, window=window, rope=(cos, sin), swa_norm_weight=gs_ref,
                     rla_norm_weight=gr_ref).backward(do)
    assert_close(gs.grad, gs_ref.grad, 1e-4, "g_swa")
    assert_close(gr.grad, gr_ref.grad, 1e-4, "g_rla")
    # RoPE tables are differentiated through apply_rope like any other input of the composition
    cos_t, sin_t = cos.clone().requires_grad_(), sin.clone().requires_grad_()
    K.rattention(q, k, v, window=window, rope=(cos_t, sin_t), backend="triton").backward(do)
    assert K.launches["triton.rattention_grad"] == before + 2
    cos_r, sin_r = cos.clone().requires_grad_(), sin.clone().requires_grad_()
    rattention_naive(q, k, v, window=window, rope=(cos_r, sin_r)).backward(do)
    assert_close(cos_t.grad, cos_r.grad, 1e-4, "dcos", row_tol=1e-3)
    assert_close(sin_t.grad, sin_r.grad, 1e-4, "dsin", row_tol=1e-3)


@pytest.mark.parametrize("rope,D", [("none", 32), ("per row", 32), ("per row", 16)])
@pytest.mark.parametrize("fm", ["softmax", "identity"])
def test_gradients_without_rope_and_with_tables_per_row(rope, D, fm):
    # One autograd Function runs both branches (no public swa_attention call) and takes the SWA branch's
    # gradients back through RoPE itself: without RoPE, and with random (B, T, D) tables whose halves differ
    # (so the transposed rotation must pair each entry with the right one of the other half; RoPE's own
    # tables repeat their first half, under which such a mix-up would pass)
    B, T, H, Hkv, window = 2, 70, 4, 2, 9
    leaves, do, valid, kw = make_case(T, H, Hkv, D, torch.float32, layout="padded", bounds=[T, 45], seed=21)
    if rope == "per row":
        g = torch.Generator().manual_seed(23)
        kw["rope"] = (torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g))
    weights = norm_weights(H, D, torch.float32, 22)
    before = K.launches["triton.swa_grad"]
    got = run(K.rattention, leaves, weights, do, window=window, feature_map=fm, backend="triton", **kw)
    assert K.launches["triton.swa_grad"] == before
    ref = run(rattention_naive, leaves.copy(), [w.detach().clone().requires_grad_() for w in weights], do,
              window=window, feature_map=fm, **kw)
    check_grads(got, ref, GRAD_TOL[torch.float32], GRAD_ROW_TOL[torch.float32], valid, f"{rope} {fm}")


@pytest.mark.parametrize("backend", ["triton", "triton composed", "torch"])
@pytest.mark.parametrize("case", ["loss scale", "large sums"])
def test_fp16_gradients_of_the_rla_branch_stay_in_range(backend, case):
    """fp16 on both backends and on the Triton path composed for trainable RoPE tables: the RLA branch's output
    gradient is not rounded to fp16. Where o_rla is 0 (the rows inside the window) the norm's gradient is
    dy * g / sqrt(eps), 1000 dy, past 65504 under a loss scale of 100 (inf, then NaN from inf * 0 in the RLA
    backward); raw RLA sums of ~1e6 make it ~1e-6, among fp16's subnormals (relative RMS 1e-2 in dq if it is
    rounded to fp16)."""
    if case == "loss scale":
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 40, h, 32, generator=g).half() for h in (2, 1, 1))
        dy = (100 * torch.randn(1, 40, 2, 32, generator=g)).half()
        kw = dict(window=7)
    else:
        g = torch.Generator().manual_seed(11)
        q, k = ((torch.rand(1, 64, h, 64, generator=g) * 8).half() for h in (2, 1))
        v = (torch.rand(1, 64, 1, 64, generator=g) * 8 + 20).half()
        dy = torch.randn(1, 64, 2, 64, generator=g).half()
        kw = dict(window=3, feature_map="relu")
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    tables = Rope(q.shape[-1]).tables(q.shape[1])
    if backend == "triton composed":
        kw["rope"] = tables
    got_kw = dict(kw, rope=tuple(t.clone().requires_grad_() for t in tables)) if "rope" in kw else kw
    K.rattention(*leaves, backend=backend.split()[0], **got_kw).backward(dy)
    ref = [x.detach().float().requires_grad_() for x in (q, k, v)]
    rattention_naive(*ref, **kw).backward(dy.float())
    # with RoPE (the composed path's trainable tables) the rotated q and k are rounded to fp16 for the SWA
    # branch's products: at large sums 3.0e-3 relative RMS and 1.7e-2 in the worst dq row on every path, the
    # torch backend's included
    tol, row_tol = (5e-3, 3e-2) if "rope" in kw else (2e-3, 1e-2)
    for name, got, want in zip("qkv", leaves, ref):
        # rows of the reference below 1e-5 of its largest (2e-6 against 0.7 in dk) carry fp16's rounding of the
        # inputs themselves (~5e-7, also on the torch backend): an absolute slack there
        assert_close(got.grad, want.grad, tol, f"{case} d{name}", row_tol=row_tol,
                     abs_tol=1e-5 * want.grad.abs().max().item(), zero_rows=False)


@pytest.mark.parametrize("layout", ["dense", "padded", "packed"])
def test_torch_backend_is_differentiable(layout):
    """The chunked reference (the torch backend) and the materializing one give the same gradients."""
    T, H, Hkv, D = 70, 4, 2, 16
    leaves, do, valid, kw = make_case(T, H, Hkv, D, torch.float32, layout=layout, qkv="fused", seed=13)
    kw.update(window=6, rope=Rope(D).tables(T))
    weights = norm_weights(H, D, torch.float32, 15)
    got = run(K.rattention, leaves, weights, do, backend="torch", **kw)
    ref = run(rattention_naive, leaves.copy(), [w.detach().clone().requires_grad_() for w in weights], do, **kw)
    check_grads(got, ref, 1e-5, GRAD_ROW_TOL[torch.float32], valid, "torch backend")


@pytest.mark.parametrize("fm", ["softmax", "relu", "identity"])
def test_reference_gradcheck(fm):
    """gradcheck of the reference in q, k, v and both norm weights; it computes in fp32 internally, so
    finite differences take eps = 1e-3 and a matching tolerance (see test_rla.py's test_reference_gradcheck)."""
    g = torch.Generator().manual_seed(16)
    T, H, Hkv, D = 8, 2, 1, 4
    q, k, v = (torch.randn(1, T, h, D, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv))
    if fm == "relu":  # keep finite differences away from the kink at 0
        q, k = (x + 0.2 * x.sign() for x in (q, k))
    gs, gr = (torch.rand(H, D, generator=g, dtype=torch.float64) + 0.5 for _ in range(2))
    args = [x.requires_grad_() for x in (q, k, v, gs, gr)]
    rope = Rope(D).tables(T)
    f = lambda q, k, v, gs, gr: rattention_naive(q, k, v, window=2, rope=rope, feature_map=fm,  # noqa: E731
                                                 swa_norm_weight=gs, rla_norm_weight=gr, eps=1e-2)
    assert torch.autograd.gradcheck(f, args, eps=1e-3, atol=2e-3, rtol=2e-3)


# --- Triton forward on a GPU ----------------------------------------------------------------------------------

def run_gpu(T, dtype, H=4, Hkv=2, D=128, w=512):
    q, k, v = gpu_inputs(T, H, Hkv, D, dtype)
    kw = dict(window=w, rope=Rope(D).tables(T, "cuda"), swa_norm_weight=torch.rand(H, D, device="cuda") + 0.5,
              rla_norm_weight=torch.rand(H, D, device="cuda") + 0.5)
    with torch.no_grad():
        out = K.rattention(q, k, v, backend="triton", **kw)
        check(out, rattention_chunked(q.float(), k.float(), v.float(), **kw), dtype, f"rattention T={T} {dtype}")


@pytest.mark.gpu
@pytest.mark.parametrize("T", [4096, 32768, 131072])
def test_gpu_bf16_against_fp32_reference(T):
    run_gpu(T, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [4096, 32768])
def test_gpu_fp32_tf32_off(T):
    with exact_fp32():
        run_gpu(T, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [4096, 32768])
def test_gpu_fp16(T):
    run_gpu(T, torch.float16)


@pytest.mark.gpu
def test_gpu_head_dim_64_bf16():
    run_gpu(4096, torch.bfloat16, H=8, Hkv=2, D=64, w=100)


@pytest.mark.gpu
def test_gpu_head_dim_256_bf16():
    run_gpu(4096, torch.bfloat16, H=8, Hkv=4, D=256, w=512)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,logit,w", [(torch.bfloat16, -300.0, 100), (torch.float16, -25.0, 100),
                                           (torch.bfloat16, -300.0, 512)])
def test_gpu_scores_far_below_zero(dtype, logit, w):
    q, k, v = scores_far_below_zero(4096, 4, 2, 128, logit, dtype, seed=3, device="cuda")
    with torch.no_grad():
        out = K.rattention(q, k, v, window=w, backend="triton")
        check(out, rattention_chunked(q.float(), k.float(), v.float(), window=w), dtype, f"logit {logit} w={w}")


@pytest.mark.gpu
def test_gpu_varlen_bf16_and_auto_backend_runs_triton():
    T = 5000
    q, k, v = gpu_inputs(T, 4, 4, 128, torch.bfloat16)
    cu = torch.tensor([0, 1000, 3333, 4990], device="cuda")
    before = K.launches["triton.rattention"]
    out = K.rattention(q, k, v, window=300, cu_seqlens=cu)  # backend="auto" on CUDA -> triton
    assert K.launches["triton.rattention"] == before + 1
    ref = rattention_chunked(q.float(), k.float(), v.float(), window=300, cu_seqlens=cu)
    check(out, ref, torch.bfloat16, "packed")
    assert out[:, 4990:].abs().max().item() == 0


@pytest.mark.gpu
def test_gpu_grids_beyond_65535_blocks():
    # more than 65535 (sequence, head) pairs and phi row blocks in one launch; 70 sequences of 32k
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(4100, 16, 16, 64, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    out = K.rattention(q, k, v, window=5, backend="triton")
    ref = K.rattention(q.float(), k.float(), v.float(), window=5, backend="torch")
    check(out, ref, torch.bfloat16, "B=4100 H=16 T=16")
    B, T = 70, 32768
    q, k, v = (torch.randn(B, T, 1, 64, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    out = K.rattention(q, k, v, window=64, backend="triton")
    for b in (0, B - 1):
        ref = rattention_chunked(q[b:b + 1].float(), k[b:b + 1].float(), v[b:b + 1].float(), window=64)
        check(out[b:b + 1], ref, torch.bfloat16, f"B={B} T={T} row {b}")


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_SHAPES, ids=[gpu_shape_id(c) for c in GPU_SHAPES])
def test_gpu_awkward_shapes(case):
    q, k, v, var, w = gpu_shape_inputs(case)
    T, _, D, (H, _), _, dtype = case
    g = torch.Generator(device="cuda").manual_seed(T)
    kw = dict(window=w, rope=Rope(D, theta=10000.0).tables(T, "cuda"), **var,
              swa_norm_weight=torch.rand(H, D, device="cuda", generator=g) + 0.5,
              rla_norm_weight=torch.rand(H, D, device="cuda", generator=g) + 0.5)
    f = lambda x: x.float().contiguous()  # noqa: E731
    before = K.launches["triton.rattention"]
    with torch.no_grad(), exact_fp32():
        out = K.rattention(q, k, v, backend="triton", **kw)
        check(out, rattention_chunked(f(q), f(k), f(v), **kw), dtype, gpu_shape_id(case))
    assert K.launches["triton.rattention"] == before + 1


# --- Triton gradients on a GPU --------------------------------------------------------------------------------
#
# bf16 against the fp32 chunked reference (computed on the same bf16 values) under autograd; bounds as for
# the forward's bf16 checks (phi, the chunk products and states rounded to bf16).
BF16_RMS, BF16_ROW = 1e-2, 3e-2


def run_gpu_gradients(T, layout, *, H, Hkv, D):
    bounds = {"padded": [T - 1000, T], "packed": [0, 1500, 1500, 3001, T - 7]}.get(layout)
    leaves, do, valid, kw = make_case(T, H, Hkv, D, torch.bfloat16, layout=layout, bounds=bounds, dense_rows=1,
                                      seed=17, device="cuda")
    kw.update(window=512, rope=Rope(D).tables(T, "cuda"))
    weights = norm_weights(H, D, torch.bfloat16, 19, device="cuda")
    got = run(K.rattention, leaves, weights, do, backend="triton", **kw)
    ref = run(rattention_chunked, leaves.copy(), [w.detach().float().requires_grad_() for w in weights], do.float(),
              **kw)
    check_grads(got, ref, BF16_RMS, BF16_ROW, valid, f"T={T} D={D} {layout}")


@pytest.mark.gpu
@pytest.mark.parametrize("T,layout", [(4096, "dense"), (32768, "dense"), (4096, "padded"), (4096, "packed")])
def test_gpu_bf16_gradients(T, layout):
    run_gpu_gradients(T, layout, H=16, Hkv=4, D=128)


@pytest.mark.gpu
def test_gpu_bf16_gradients_head_dim_256():
    # Gemma-3-shaped heads (B = 1, H = 8, Hkv = 4, D = 256, w = 512)
    run_gpu_gradients(4096, "dense", H=8, Hkv=4, D=256)
