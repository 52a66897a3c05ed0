"""Sliding-window attention: the PyTorch references (against SDPA and each other), the Triton forward
(swa/parallel.py) and gradients (swa/backward.py) against them on the CPU under TRITON_INTERPRET=1 (set by
conftest; fp32 / fp16), and on a GPU (marked gpu; bf16 / fp16 / fp32 against fp32 references, skipped
without CUDA; run with `TRITON_INTERPRET=0 python -m pytest -m gpu tests/kernels/test_swa.py`)."""

import math
from types import MappingProxyType

import pytest
import torch
import torch.nn.functional as F
from closeness import assert_close
from grad_inputs import DTYPES, QKV_LAYOUTS, make_case, split_fused
from pairwise import all_cases, case_id, covers_every_pair, pairwise_cases, window_value
from prefill_cases import (exact_fp32, FULL_GRID, GPU_SHAPES, cases, check, check_case, check_padded_and_packed, gpu_inputs,
                           gpu_shape_id, gpu_shape_inputs, inputs, make_inputs, poison_padding, scores_far_below_zero)

import rattn_eval.kernels as K
from rattn_eval.kernels.common import segment_layout
from rattn_eval.kernels.swa import backward as swa_bwd
from rattn_eval.kernels.swa import parallel as swa_parallel
from rattn_eval.kernels.swa.naive import swa_attention_chunked, swa_attention_naive
from rattn_eval.kernels.swa.parallel import swa_attention_triton
from rattn_eval.kernels.triton_common import sequence_table

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")  # triton 3.6 interpreter + numpy


def sdpa_causal(q, k, v):
    g = q.shape[2] // k.shape[2]
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(g, 2).transpose(1, 2),
                                          v.repeat_interleave(g, 2).transpose(1, 2), is_causal=True).transpose(1, 2)


# --- the references -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T,H,Hkv", [(1, 2, 1), (37, 4, 2), (100, 4, 4)])
def test_references_with_full_window_equal_sdpa(T, H, Hkv):
    q, k, v = inputs(T, H, Hkv, 16, B=2)
    ref = sdpa_causal(q, k, v)
    for w in (T, T + 5, None):
        assert_close(swa_attention_naive(q, k, v, window=w), ref, 1e-5, f"naive w={w}", row_tol=1e-4)
        assert_close(swa_attention_chunked(q, k, v, window=w, chunk=16), ref, 1e-5, f"chunked w={w}", row_tol=1e-4)


@pytest.mark.parametrize("junk", [(0.0, 7.0, -3.0), (float("nan"), float("inf"), float("nan"))], ids=["finite", "nan"])
@pytest.mark.parametrize("fn", [swa_attention_naive, swa_attention_chunked], ids=["naive", "chunked"])
def test_references_padded_and_packed_equal_one_by_one(fn, junk):
    check_padded_and_packed(fn, D=8, junk=junk)


# --- Triton forward on the CPU interpreter --------------------------------------------------------------------

@pytest.mark.parametrize("c", cases("swa"), ids=case_id)
def test_matches_reference(c):
    check_case(c, swa_attention_triton, swa_attention_naive)


@pytest.mark.slow
@pytest.mark.parametrize("c", cases("swa", FULL_GRID), ids=case_id)
def test_matches_reference_full_grid(c):
    check_case(c, swa_attention_triton, swa_attention_naive)


def test_launched_through_public_api():
    q, k, v = inputs(40, 2, 1, 64)
    before_api, before_kernel = K.launches["triton.swa"], swa_parallel.launch_counts["swa_fwd_kernel"]
    out = K.swa_attention(q, k, v, window=7, backend="triton")
    assert K.launches["triton.swa"] == before_api + 1
    assert swa_parallel.launch_counts["swa_fwd_kernel"] == before_kernel + 1
    assert_close(out, swa_attention_naive(q, k, v, window=7), 1e-4, "swa")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_contiguous_inputs(dtype):
    """q, k, v as slices of one fused projection (strided heads) and a transposed layout: the Triton
    path must read them as the references do (it makes them contiguous where a kernel needs that)."""
    g = torch.Generator().manual_seed(12)
    B, T, H, Hkv, D, w = 2, 40, 4, 2, 64, 9
    fused = torch.randn(B, T, H + 2 * Hkv, D, generator=g).to(dtype)
    q, k, v = fused[:, :, :H], fused[:, :, H:H + Hkv], fused[:, :, H + Hkv:]
    qt = torch.randn(B, H, T, D, generator=g).to(dtype).transpose(1, 2)  # (B, T, H, D) view, T-major strides
    f = lambda x: x.float().contiguous()  # noqa: E731
    for qq in (q, qt):
        assert not qq.is_contiguous()
        check(K.swa_attention(qq, k, v, window=w, backend="triton"),
              swa_attention_naive(f(qq), f(k), f(v), window=w).to(dtype), dtype, "swa")


def test_full_window_equals_sdpa():
    q, k, v = inputs(50, 4, 2, 64, B=2)
    ref = sdpa_causal(q, k, v)
    for w in (49, 50, 1000, None):
        assert_close(swa_attention_triton(q, k, v, window=w), ref, 1e-4, f"w={w}")


def test_padded_and_packed_equal_one_by_one():
    check_padded_and_packed(swa_attention_triton, D=64, rms=1e-5, row=1e-5)


@pytest.mark.parametrize("dtype,logit", [(torch.float32, -300.0), (torch.float16, -25.0)])
def test_rows_whose_scores_all_lie_far_below_zero(dtype, logit):
    # the online softmax must track the row's true maximum even when the first tile it meets is fully masked
    # (window 7 < the key tile), or exp(s - max) underflows (fp32 below ~-87, fp16 probabilities below ~2^-24)
    # and the row comes out as 0 instead of its softmax
    T, H, Hkv, D, w = 50, 2, 1, 64, 7
    q, k, v = scores_far_below_zero(T, H, Hkv, D, logit, dtype)
    s_max = max(((q[0, t].float() @ k[0, max(0, t - w): t + 1, 0].float().T).amax().item() for t in range(T)))
    assert s_max * D ** -0.5 < logit / 2  # every row's best score is far below 0
    check(swa_attention_triton(q, k, v, window=w), swa_attention_naive(q.float(), k.float(), v.float(), window=w).to(dtype),
          dtype)


def test_large_scores_in_fp16_and_scales_of_any_sign():
    # q, k of std 20 (scores of std ~400): the softmax scale multiplies the fp32 scores, so q is not rounded to fp16
    # a second time after a multiply (that rounding alone gave 3e-3-5e-3 here); scales <= 0 take the folded path
    T, H, Hkv, D, w = 70, 4, 2, 32, 40
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, T, h, D, generator=g) * s for h, s in ((H, 20.0), (Hkv, 20.0), (Hkv, 1.0)))
    q, k, v = q.half(), k.half(), v.half()
    ref = swa_attention_naive(q.float(), k.float(), v.float(), window=w).half()
    check(swa_attention_triton(q, k, v, window=w), ref, torch.float16, "swa fp16, large scores")
    before = swa_parallel.launch_counts["swa_fwd_kernel"]
    for scale in (0.0, -0.05, 0.05):
        qs, ks, vs = (x.float() / 20 for x in (q, k, v))
        ref = swa_attention_naive(qs, ks, vs, window=w, scale=scale)
        check(swa_attention_triton(qs, ks, vs, window=w, scale=scale), ref, torch.float32, f"scale {scale}")
    assert swa_parallel.launch_counts["swa_fwd_kernel"] == before + 3


def test_bad_head_dim_raises():
    x = torch.randn(1, 8, 1, 48)
    with pytest.raises(ValueError, match="head dims"):
        swa_attention_triton(x, x, x, window=2)


def test_dense_batches_take_the_unmasked_path():
    # Dense batches skip the sequence-table loads (DENSE) and, when T is a multiple of BM and the window
    # and BM of BN (EVEN), every bounds mask: the key tiles then end exactly at a block end <= T. Against the
    # reference and against the general path (the same rows as a padded batch of full rows), with pointer and
    # TMA loads; outputs NaN-poisoned, so every row must be written
    H, Hkv, D = 2, 1, 64  # GQA; few heads: each shape runs 4 launches under the interpreter
    for T, w, even in ((64, 0, True), (64, 16, True), (96, 48, True), (96, 40, False), (64, 200, True),
                       (80, 16, False)):
        q, k, v = inputs(T, H, Hkv, D, torch.float16, B=2)
        ref = swa_attention_naive(q.float(), k.float(), v.float(), window=w).half()
        for tma in (False, True):
            cfg = dict(BM=32, BN=16, num_warps=4, num_stages=1, tma=tma)
            for lengths in (None, torch.tensor([T, T])):
                seqs = sequence_table(2, T, q.device, lengths, None, 32)
                before = dict(swa_parallel.launch_counts)
                out = swa_parallel.launch_swa_fwd(q, k, v, torch.full_like(q, float("nan")), seqs, window=min(w, T),
                                                  scale=D ** -0.5, cfg=cfg)
                dense = lengths is None
                assert swa_parallel.launch_counts["swa_fwd_kernel_dense"] == before["swa_fwd_kernel_dense"] + dense
                assert swa_parallel.launch_counts["swa_fwd_kernel_even"] == before["swa_fwd_kernel_even"] + (even and dense)
                assert swa_parallel.launch_counts["swa_fwd_kernel_tma"] == before["swa_fwd_kernel_tma"] + tma
                check(out, ref, torch.float16, f"SWA T={T} w={w} tma={tma} dense={dense}")


def test_tma_tiles_with_poisoned_padding():
    # TMA tensor-descriptor loads fetch whole tiles: rows of a neighbouring sequence or of padding arrive too and
    # must be zeroed or masked. Padding here is NaN; windows 0, short, past the sequence.
    cfg = dict(BM=32, BN=16, num_warps=4, num_stages=1, tma=True)
    for T, (H, Hkv), layout, B, w in ((70, (4, 2), "ragged", 3, 9), (90, (2, 1), "packed", 3, 0),
                                      (50, (2, 2), "ragged", 2, 80)):
        c = dict(T=T, D=64, heads=(H, Hkv), B=B, layout=layout, dtype="fp16")
        q, k, v, lkw = make_inputs(c)
        ref = swa_attention_naive(q.float(), k.float(), v.float(), window=w, **lkw).half()
        poison_padding(q, k, v, lkw)
        before = swa_parallel.launch_counts["swa_fwd_kernel_tma"]
        seqs = sequence_table(q.shape[0], T, q.device, lkw.get("lengths"), lkw.get("cu_seqlens"), 32)
        out = swa_parallel.launch_swa_fwd(q, k, v, torch.zeros_like(q), seqs, window=w, scale=64 ** -0.5, cfg=cfg)
        assert swa_parallel.launch_counts["swa_fwd_kernel_tma"] == before + 1
        check(out, ref, torch.float16, f"TMA SWA {c} w={w}")


def test_tiles_are_a_frozen_table():
    assert isinstance(swa_parallel.SWA_TILES, MappingProxyType)
    assert all(isinstance(row, MappingProxyType) for row in swa_parallel.SWA_TILES.values())
    cfg = swa_parallel.block_config(64, dtype=torch.float16)
    cfg["BM"] = 1  # a copy
    assert swa_parallel.block_config(64, dtype=torch.float16)["BM"] != 1


# --- Triton gradients (swa/backward.py) on the CPU interpreter ------------------------------------------------
#
# dq, dk, dv of the Triton autograd op against autograd through swa_attention_naive on fp64 copies of the
# inputs (fp32 math inside). The grid: T in {1, 15, 63, 100, 257}, windows {0, 7, T-1, T+5, None}, D in
# {64, 128}, heads (H, Hkv) in {(4, 4), (4, 1), (4, 2)}, dense / right-padded (a 0-length row and a full
# row) / packed (an empty segment, trailing padding) batches, fp32 / fp16, q, k, v separate, as slices of
# one fused projection or transposed (grad_inputs.QKV_LAYOUTS). By default a pairwise-covering subset runs;
# `-m slow` runs the full grid. Padding holds NaN in q, k, v and in the output gradient: nothing of it may
# reach the gradients, which must be exactly zero there.

GRAD_TOL = {torch.float32: 1e-4, torch.float16: 2e-3}

GRAD_FACTORS = {
    "T": [1, 15, 63, 100, 257],
    "w": ["0", "7", "T-1", ">T", "none"],
    "D": [64, 128],
    "heads": [(4, 4), (4, 1), (4, 2)],
    "layout": ["dense", "padded", "packed"],
    "dtype": ["fp32", "fp16"],
    "qkv": list(QKV_LAYOUTS),
}
GRAD_CASES = pairwise_cases(GRAD_FACTORS, cost=lambda c: c["T"])  # of equally good cases, the shorter


def grad_case(T, D, H, Hkv, layout, dtype, qkv="fused", seed=0, bounds=None):
    """`grad_inputs.make_case` with NaN in the padded rows of the output gradient too; dense batches of one
    row past T = 128 (interpreter time)."""
    return make_case(T, H, Hkv, D, dtype, layout=layout, qkv=qkv, seed=seed, bounds=bounds,
                     dense_rows=2 if T <= 128 else 1, nan_output_grad=True)


def gradients(fn, leaves, do, **kw):
    """(o, (dq, dk, dv)) of sum(fn(q, k, v) * do)."""
    o = fn(*leaves.qkv(), **kw)
    o.backward(do)
    return o.detach(), leaves.grads()


def reference_gradients(leaves, do, **kw):
    """Autograd through swa_attention_naive on fp64 copies of the leaves (fp32 math inside); the output
    gradient is zeroed at padding (the reference multiplies padded outputs by 0, and 0 * NaN is NaN)."""
    return gradients(swa_attention_naive, leaves.copy(torch.float64), do.double().nan_to_num(0.0), **kw)


def check_gradients(out, grads, ref_out, ref_grads, valid, dtype, what, rms=None, row=None):
    """o and dq, dk, dv against the reference's: relative RMS rms and per-row row (default GRAD_TOL[dtype]);
    the gradients in dtype and exactly zero at padding."""
    rms = GRAD_TOL[dtype] if rms is None else rms
    assert_close(out, ref_out, rms, f"{what} o", row_tol=row)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.dtype == dtype, f"{what} {name}: dtype {g.dtype}"
        assert (g[~valid] == 0).all(), f"{what} {name}: nonzero at padding"
        # dq rows are exactly 0 in exact arithmetic where P = 1 (a query with one key: the first row of each
        # sequence, every row at window 0), and so are dk rows at window 0; the kernels and an fp32 reference
        # both give fp32-rounding-sized values there (dO.v and delta = o.dO are summed differently), so dq
        # and dk get an absolute slack of 1e-5 of the tensor's max-abs
        slack = 0.0 if name == "dv" else 1e-5 * r.float().abs().max().item()
        assert_close(g, r, rms, f"{what} {name}", row_tol=row, abs_tol=slack, zero_rows=name == "dv")


def check_grad_case(c):
    T, D, (H, Hkv), dtype = c["T"], c["D"], c["heads"], DTYPES[c["dtype"]]
    leaves, do, valid, kw = grad_case(T, D, H, Hkv, c["layout"], dtype, qkv=c["qkv"])
    window = window_value(c["w"], T)
    before = K.launches["triton.swa_grad"], swa_bwd.launch_counts["swa_bwd_dq_kernel"]
    out, grads = gradients(K.swa_attention, leaves, do, window=window, backend="triton", **kw)
    assert K.launches["triton.swa_grad"] == before[0] + 1
    assert swa_bwd.launch_counts["swa_bwd_dq_kernel"] == before[1] + (valid.any().item())
    ref_out, ref_grads = reference_gradients(leaves, do, window=window, **kw)
    check_gradients(out, grads, ref_out.to(dtype), ref_grads, valid, dtype, case_id(c))


@pytest.mark.parametrize("c", GRAD_CASES, ids=case_id)
def test_gradients_match_reference(c):
    check_grad_case(c)


@pytest.mark.slow
@pytest.mark.parametrize("c", all_cases(GRAD_FACTORS), ids=case_id)
def test_gradients_match_reference_full_grid(c):
    check_grad_case(c)


def test_gradients_pairwise_subset_covers_every_pair():
    assert covers_every_pair(GRAD_CASES, GRAD_FACTORS)


@pytest.mark.parametrize("layout,dtype", [("packed", torch.float16), ("padded", torch.float32)])
def test_gradients_head_dim_256(layout, dtype):
    T, D, H, Hkv, w = 40, 256, 4, 2, 9
    leaves, do, valid, kw = grad_case(T, D, H, Hkv, layout, dtype, seed=3)
    out, grads = gradients(swa_bwd.swa_attention_triton_autograd, leaves, do, window=w, **kw)
    ref_out, ref_grads = reference_gradients(leaves, do, window=w, **kw)
    check_gradients(out, grads, ref_out.to(dtype), ref_grads, valid, dtype, f"D256 {layout}")


@pytest.mark.parametrize("key", sorted(k for k in swa_bwd.SWA_BWD_TILES if k != "interpreter"),
                         ids=lambda k: k.replace(", ", "-").replace(" ", ""))
def test_gpu_backward_tiles_under_the_interpreter(key):
    # the GPU tile shapes (square and unequal query / key tiles), on a shape whose windows start and end
    # inside tiles, with one sequence shorter than a tile; heads-first grid order for the fp32 settings
    cfg = {kernel: dict(c, heads_first=key.startswith("fp32")) for kernel, c in swa_bwd.SWA_BWD_TILES[key].items()}
    dtype = torch.float16 if key.startswith("16-bit") else torch.float32
    T, H, Hkv, D = 150, 2, 1, 256 if key.endswith("D 256") else 64
    leaves, do, valid, kw = grad_case(T, D, H, Hkv, "packed", dtype, qkv="separate", seed=5, bounds=[0, 20, 20, 140])
    q, k, v = (x.detach() for x in leaves.qkv())
    for w in (0, 33, 70, None):
        o, o_res, lse, seqs, win = swa_bwd.swa_forward_with_lse(q, k, v, window=w, **kw)
        grads = swa_bwd.launch_swa_bwd(do, q, k, v, o, o_res, lse, seqs, window=win, scale=D ** -0.5, cfg=cfg)
        ref_out, ref_grads = reference_gradients(leaves, do, window=w, **kw)
        check_gradients(o, grads, ref_out.to(dtype), ref_grads, valid, dtype, f"{key} w={w}")


def test_backward_tiles_are_a_frozen_table():
    assert isinstance(swa_bwd.SWA_BWD_TILES, MappingProxyType)
    for row in swa_bwd.SWA_BWD_TILES.values():
        assert isinstance(row, MappingProxyType) and all(isinstance(c, MappingProxyType) for c in row.values())
    cfg = swa_bwd.bwd_config(64, torch.float16)
    cfg["dq"]["BM"] = 1  # a copy
    assert swa_bwd.bwd_config(64, torch.float16)["dq"]["BM"] != 1


@pytest.mark.parametrize("layout", ["dense", "padded", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_forward_statistics(layout, dtype):
    """The forward with STORE_LSE alone gives the plain forward's output bit for bit and the base-2
    log-sum-exp of each row's scaled scores; the autograd forward (16-bit: P @ V with P unrounded) gives an
    output o whose residual o_res makes o + o_res the fp32 attention output."""
    T, D, H, Hkv, w, scale = 70, 64, 4, 2, 20, 0.3
    leaves, _, valid, kw = grad_case(T, D, H, Hkv, layout, dtype, qkv="separate", seed=7)
    q, k, v = (x.detach() for x in leaves.qkv())
    plain = swa_attention_triton(q, k, v, window=w, scale=scale, **kw)
    cfg = swa_parallel.block_config(D, dtype=dtype)
    seqs = sequence_table(q.shape[0], T, "cpu", kw.get("lengths"), kw.get("cu_seqlens"), cfg["BM"])
    o = torch.zeros_like(q)
    lse = torch.empty(q.shape[0], H, T)
    swa_parallel.launch_swa_fwd(q, k, v, o, seqs, window=w, scale=scale, cfg=cfg, lse=lse)
    assert torch.equal(o, plain)
    # reference: natural-log logsumexp of the visible scaled scores; the kernel stores it in base 2
    seg, _ = segment_layout(q.shape[0], T, "cpu", kw.get("lengths"), kw.get("cu_seqlens"))
    qf, kf = q.double().nan_to_num(0.0), k.double().nan_to_num(0.0).repeat_interleave(H // Hkv, dim=2)
    s = torch.einsum("bthd,bshd->bhts", qf, kf) * scale
    t, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    ok = (j <= t) & (t - j <= w) & (seg[:, :, None] == seg[:, None, :]) & valid[:, None, :]  # (B, T, T)
    ref = torch.logsumexp(s.masked_fill(~ok[:, None], float("-inf")), dim=-1)  # (B, H, T)
    rows = valid[:, None, :].expand_as(ref)
    assert torch.isfinite(lse[rows]).all()
    assert torch.isnan(lse[~rows]).all()  # padded entries are never written (torch.empty is NaN-poisoned)
    err = (lse[rows].double() * math.log(2) - ref[rows]).abs().max().item()
    assert err <= 1e-5 * max(1.0, ref[rows].abs().max().item()), f"lse off by {err:.3g}"

    o, o_res, lse2, _, _ = swa_bwd.swa_forward_with_lse(q, k, v, window=w, scale=scale, **kw)
    assert torch.equal(lse2[rows], lse[rows])
    ref_o = swa_attention_naive(q.float(), k.float(), v.float(), window=w, scale=scale, **kw)
    if dtype == torch.float32:
        assert o_res is None and torch.equal(o, plain)
    else:
        assert_close(o, ref_o.to(dtype), GRAD_TOL[dtype], "autograd forward")
        assert_close(o.float() + o_res.float(), ref_o, 1e-5, "o + o_res")  # o alone: ~2^-12
        assert (o_res[~valid] == 0).all()


@pytest.mark.parametrize("cu,w", [([0, 2, 2, 5], 2), ([0, 3, 6], None), (None, 0)])
def test_reference_passes_gradcheck(cu, w):
    # the naive reference computes in fp32 inside, so the finite differences carry ~1e-7 / eps of rounding:
    # eps 1e-3 and tolerances 1e-3 (a wrong mask or a missing softmax term is off by O(0.1))
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 6, h, 4, generator=g, dtype=torch.float64, requires_grad=True) for h in (2, 1, 1))
    kw = {} if cu is None else dict(cu_seqlens=torch.tensor(cu))
    assert torch.autograd.gradcheck(lambda a, b, c: swa_attention_naive(a, b, c, window=w, scale=0.7, **kw), (q, k, v),
                                    eps=1e-3, atol=1e-3, rtol=1e-3)


def test_triton_gradients_match_finite_differences():
    # independent of the reference: the Triton backward against central differences of the Triton forward,
    # along random directions (the interpreter's tl.dot refuses fp64, so no gradcheck on the Triton path)
    T, D, H, Hkv, w, eps = 45, 32, 4, 2, 11, 1e-2
    leaves, do, _, kw = grad_case(T, D, H, Hkv, "packed", torch.float32, seed=9)
    qkv, do = leaves.tensors[0].detach().nan_to_num(0.0), do.nan_to_num(0.0)
    f = lambda x: swa_bwd.swa_attention_triton_autograd(*split_fused(x, H, Hkv), window=w, scale=0.4, **kw)  # noqa: E731
    x = qkv.clone().requires_grad_()
    (f(x) * do).sum().backward()
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        u = torch.randn(qkv.shape, generator=g)
        with torch.no_grad():
            fd = ((f(qkv + eps * u) - f(qkv - eps * u)) * do).sum().item() / (2 * eps)
        an = (x.grad * u).sum().item()
        assert abs(fd - an) <= 2e-3 * max(1.0, abs(an)), f"directional derivative {an} vs finite differences {fd}"


def test_second_derivatives_are_refused():
    # the backward kernels are not differentiable: a double backward says so instead of giving wrong numbers
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 20, h, 16, generator=g, requires_grad=True) for h in (2, 1, 1))
    o = K.swa_attention(q, k, v, window=4, backend="triton")
    dq, = torch.autograd.grad(o, q, torch.randn(o.shape, generator=g).requires_grad_(), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dq.sum().backward()


def test_public_op_dispatch_and_differentiable_torch_backend():
    T, D, H, Hkv, w = 40, 64, 4, 2, 9
    leaves, do, valid, kw = grad_case(T, D, H, Hkv, "padded", torch.float32, seed=4)
    q, k, v = (x.detach().contiguous() for x in leaves.qkv())
    # no grad needed: the plain forward, no statistics
    before = K.launches["triton.swa_grad"], swa_bwd.launch_counts["swa_bwd_dkdv_kernel"]
    out = K.swa_attention(q, k, v, window=w, backend="triton", **kw)
    assert out.grad_fn is None and K.launches["triton.swa_grad"] == before[0]
    with torch.no_grad():
        K.swa_attention(q, k, v.requires_grad_(), window=w, backend="triton", **kw)
    assert K.launches["triton.swa_grad"] == before[0]
    # grads needed for v alone: the autograd op; the dk / dv kernel runs once per backward, the dq kernel not
    out = K.swa_attention(q, k, v, window=w, backend="triton", **kw)
    assert K.launches["triton.swa_grad"] == before[0] + 1 and out.grad_fn is not None
    assert swa_bwd.launch_counts["swa_bwd_dkdv_kernel"] == before[1]
    before_dq = swa_bwd.launch_counts["swa_bwd_dq_kernel"]
    out.backward(do)
    assert swa_bwd.launch_counts["swa_bwd_dkdv_kernel"] == before[1] + 1
    assert swa_bwd.launch_counts["swa_bwd_dq_kernel"] == before_dq and q.grad is None and k.grad is None
    ref_out, ref_grads = reference_gradients(leaves, do, window=w, **kw)
    assert_close(v.grad, ref_grads[2], 1e-4, "dv, v alone requiring grad")
    # the torch backend (swa_attention_chunked) is differentiable as well
    before_torch = K.launches["torch.swa"]
    out, grads = gradients(lambda *a, **k: K.swa_attention(*a, backend="torch", **k), leaves, do.nan_to_num(0.0),
                           window=w, **kw)
    assert K.launches["torch.swa"] == before_torch + 1
    # per row 1e-3: the chunked reference sums in fp32 too, so a dq row that is small by cancellation (a query
    # with two keys of similar dO.v) carries ~1e-7 of the larger terms, up to ~2e-4 of its own size
    check_gradients(out, grads, ref_out.float(), ref_grads, valid, torch.float32, "torch backend", row=1e-3)
    # softcapped scores with grads: "auto" takes the torch path, an explicit "triton" refuses
    before_torch = K.launches["torch.swa"]
    q.requires_grad_()
    K.swa_attention(q, k, v, window=w, softcap=30.0, backend="auto", **kw).sum().backward()
    assert K.launches["torch.swa"] == before_torch + 1 and torch.isfinite(q.grad).all()
    with pytest.raises(K.BackendUnavailable):
        K.swa_attention(q, k, v, window=w, softcap=30.0, backend="triton", **kw)


def test_all_sequences_empty():
    leaves, do, valid, kw = grad_case(9, 16, 2, 1, "padded", torch.float32, bounds=[0, 0, 0])
    out, grads = gradients(swa_bwd.swa_attention_triton_autograd, leaves, do, window=3, **kw)
    assert out.abs().max().item() == 0 and all(g.abs().max().item() == 0 for g in grads)


def test_grid_order_for_many_heads():
    # only the first grid dimension may exceed 65535 programs
    assert swa_bwd._grid(3, 70000, "key") == ((70000, 3), True)
    assert swa_bwd._grid(70000, 3, "key") == ((70000, 3), False)
    assert swa_bwd._grid(5, 7, "key") == ((5, 7), False)
    assert swa_bwd._grid(5, 7, "key", heads_first=True) == ((7, 5), True)
    with pytest.raises(ValueError, match="too many"):
        swa_bwd._grid(70000, 70000, "key")


# --- Triton forward on a GPU ----------------------------------------------------------------------------------

def run_gpu(T, dtype, H=4, Hkv=2, D=128, w=512):
    q, k, v = gpu_inputs(T, H, Hkv, D, dtype)
    with torch.no_grad():
        out = K.swa_attention(q, k, v, window=w, backend="triton")
        check(out, swa_attention_chunked(q.float(), k.float(), v.float(), window=w), dtype, f"swa T={T} {dtype}")


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
@pytest.mark.parametrize("dtype,logit,w", [(torch.bfloat16, -300.0, 100), (torch.float16, -25.0, 100),
                                           (torch.bfloat16, -300.0, 512)])
def test_gpu_scores_far_below_zero(dtype, logit, w):
    # windows whose first tiles are fully masked for some rows (100) and aligned ones (512): the online softmax
    # must follow each row's true maximum
    q, k, v = scores_far_below_zero(4096, 4, 2, 128, logit, dtype, seed=3, device="cuda")
    with torch.no_grad():
        out = K.swa_attention(q, k, v, window=w, backend="triton")
        check(out, swa_attention_chunked(q.float(), k.float(), v.float(), window=w), dtype, f"logit {logit} w={w}")


@pytest.mark.gpu
def test_gpu_large_scores_fp16():
    # q, k of std 20 (scores of std ~400): the scale multiplies the fp32 scores, so q is rounded to fp16 only once
    T, H, Hkv, D = 4096, 4, 2, 128
    g = torch.Generator(device="cuda").manual_seed(5)
    q, k = ((torch.randn(1, T, h, D, device="cuda", generator=g) * 20).half() for h in (H, Hkv))
    v = torch.randn(1, T, Hkv, D, device="cuda", generator=g).half()
    with torch.no_grad():
        for w in (100, 512):
            out = K.swa_attention(q, k, v, window=w, backend="triton")
            ref = swa_attention_chunked(q.float(), k.float(), v.float(), window=w)
            check(out, ref, torch.float16, f"std-20 q / k w={w}")


@pytest.mark.gpu
def test_gpu_head_dim_256_bf16():
    q, k, v = gpu_inputs(4096, 4, 1, 256, torch.bfloat16)
    out = K.swa_attention(q, k, v, window=511, backend="triton")
    check(out, swa_attention_chunked(q.float(), k.float(), v.float(), window=511), torch.bfloat16, "D=256")


@pytest.mark.gpu
def test_gpu_grids_beyond_65535_blocks():
    # CUDA grids allow at most 65535 blocks in dimensions 2 and 3: more (sequence, head) pairs than that must
    # still run, in one launch
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(4100, 16, 16, 64, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    out = K.swa_attention(q, k, v, window=5, backend="triton")
    ref = K.swa_attention(q.float(), k.float(), v.float(), window=5, backend="torch")
    check(out, ref, torch.bfloat16, "B=4100 H=16 T=16")


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_SHAPES, ids=[gpu_shape_id(c) for c in GPU_SHAPES])
def test_gpu_awkward_shapes(case):
    # the shapes of the CPU grid and more, compiled, on the TMA / EVEN / DENSE paths the GPU takes
    q, k, v, var, w = gpu_shape_inputs(case)
    dtype = case[-1]
    f = lambda x: x.float().contiguous()  # noqa: E731
    before = K.launches["triton.swa"]
    with torch.no_grad(), exact_fp32():
        out = K.swa_attention(q, k, v, window=w, backend="triton", **var)
        check(out, swa_attention_chunked(f(q), f(k), f(v), window=w, **var), dtype, gpu_shape_id(case))
    assert K.launches["triton.swa"] == before + 1


@pytest.mark.gpu
def test_gpu_head_dim_256_awkward():
    """Gemma-3's head dim at awkward shapes, padded."""
    for T, w, dtype in [(1000, 511, torch.bfloat16), (4097, 7, torch.float16), (63, 0, torch.float32)]:
        g = torch.Generator(device="cuda").manual_seed(11)
        q, k, v = (torch.randn(3, T, h, 256, device="cuda", generator=g).to(dtype) for h in (8, 1, 1))
        lengths = torch.tensor([T, max(T // 2, 1), 0 if T > 1 else 1], device="cuda")
        out = K.swa_attention(q, k, v, window=w, backend="triton", lengths=lengths)
        ref = swa_attention_chunked(q.float(), k.float(), v.float(), window=w, lengths=lengths)
        check(out, ref, dtype, f"D256 T{T} w{w} {dtype}")


# --- Triton gradients on a GPU --------------------------------------------------------------------------------
#
# bf16 holds 8 significant bits; P and dS are rounded to bf16 for the tensor cores and the stored output
# (whose rounding enters delta = rowsum(o * dO)) is bf16, as in the forward tests: relative RMS 1e-2 and
# 3e-2 per row against fp32 gradients of the same bf16 values.
BF16_RMS, BF16_ROW = 1e-2, 3e-2


def run_gpu_gradients(T, layout, dtype=torch.bfloat16, H=16, Hkv=4, D=128, w=512, rms=BF16_RMS, row=BF16_ROW):
    bounds = {"padded": [0, T, T - 777], "packed": [0, T // 4, T // 4, (3 * T) // 4 + 1, T - 50]}.get(layout)
    leaves, do, valid, kw = make_case(T, H, Hkv, D, dtype, layout=layout, qkv="fused", bounds=bounds, dense_rows=1,
                                      nan_output_grad=True, device="cuda")
    out, grads = gradients(K.swa_attention, leaves, do, window=w, backend="triton", **kw)
    # fp32 reference: swa_attention_chunked (fp32, chunks of 256 queries) differentiated by autograd
    ref_out, ref_grads = gradients(swa_attention_chunked, leaves.copy(), do.float().nan_to_num(0.0), window=w, **kw)
    check_gradients(out, grads, ref_out, ref_grads, valid, dtype, f"T={T} {layout} {dtype}", rms=rms, row=row)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [4096, 32768])
def test_gpu_gradients_bf16_long(T):
    run_gpu_gradients(T, "dense")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_gpu_gradients_bf16_padded_and_packed(layout):
    run_gpu_gradients(4096, layout)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,D", [(torch.float32, 128), (torch.float16, 128), (torch.bfloat16, 256),
                                     (torch.float32, 256)])
def test_gpu_gradients_other_dtypes_and_head_dims(dtype, D):
    # fp32 products are exact (no TF32): 1e-4; fp16 2e-3; bf16 as above
    rms, row = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (BF16_RMS, BF16_ROW)}[dtype]
    run_gpu_gradients(2048, "packed", dtype=dtype, H=4, Hkv=2, D=D, w=300, rms=rms, row=row)


@pytest.mark.gpu
@pytest.mark.parametrize("c", GRAD_CASES, ids=case_id)
def test_gpu_gradients_awkward_shapes(c):
    # the CPU grid with the GPU tile settings (fp32 and fp16 tolerances as on the CPU)
    T, D, (H, Hkv), dtype = c["T"], c["D"], c["heads"], DTYPES[c["dtype"]]
    leaves, do, valid, kw = grad_case(T, D, H, Hkv, c["layout"], dtype, qkv=c["qkv"])
    window = window_value(c["w"], T)
    out, grads = gradients(K.swa_attention, leaves.copy(dtype, "cuda"), do.cuda(), window=window, backend="triton",
                           **{name: x.cuda() for name, x in kw.items()})
    ref_out, ref_grads = reference_gradients(leaves, do, window=window, **kw)
    check_gradients(out.cpu(), tuple(g.cpu() for g in grads), ref_out.to(dtype), ref_grads, valid, dtype, case_id(c))
