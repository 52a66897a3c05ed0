"""Residual linear attention: the PyTorch references (against the token-by-token recurrence and each
other), the Triton forward passes (phi pre-pass, segment totals and carry, segment kernel) and the Triton
gradients (rla/backward.py) against them on the CPU under TRITON_INTERPRET=1 (set by conftest; fp32 /
fp16), and on a GPU (marked gpu; bf16 / fp16 / fp32 against fp32 references, skipped without CUDA; run with
`TRITON_INTERPRET=0 python -m pytest -m gpu tests/kernels/test_rla.py`)."""

import pytest
import torch
from closeness import assert_close
from grad_inputs import DTYPES, QKV_LAYOUTS, make_case
from pairwise import all_cases, case_id, covers_every_pair, pairwise_cases, window_value
from prefill_cases import (exact_fp32, FULL_GRID, GPU_SHAPES, cases, check, check_case, check_padded_and_packed, gpu_inputs,
                           gpu_shape_id, gpu_shape_inputs, inputs, make_inputs)

import rattn_eval.kernels as K
from rattn_eval.kernels import Rope, apply_feature_map, apply_rope
from rattn_eval.kernels import triton_common
from rattn_eval.kernels.rla import backward as rla_backward
from rattn_eval.kernels.rla import chunk as rla_chunk
from rattn_eval.kernels.rla import segment as rla_segment
from rattn_eval.kernels.rla.backward import residual_linear_attention_backward
from rattn_eval.kernels.rla.chunk import residual_linear_attention_triton
from rattn_eval.kernels.rla.naive import (residual_linear_attention_chunked, residual_linear_attention_naive,
                                          residual_linear_attention_recurrent)
from rattn_eval.kernels.swa import parallel as swa_parallel
from rattn_eval.kernels.triton_common import FEATURES, SequenceTable

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")  # triton 3.6 interpreter + numpy


FEATURE_MAPS = ["softmax", "relu", "identity"]


# --- the references -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("w", [0, 3, 17, 64])
def test_references_match_the_recurrence(w):
    q, k, v = inputs(50, 4, 2, 8, B=2)
    for fm in FEATURE_MAPS:
        ref = residual_linear_attention_recurrent(q, k, v, window=w, feature_map=fm)
        out = residual_linear_attention_naive(q, k, v, window=w, feature_map=fm)
        assert_close(out, ref, 1e-5, f"naive {fm}", row_tol=1e-4)
        assert_close(residual_linear_attention_chunked(q, k, v, window=w, feature_map=fm, chunk=7), ref, 1e-5,
                     f"chunked {fm}", row_tol=1e-4)
        assert out[:, : w + 1].abs().max().item() == 0.0


@pytest.mark.parametrize("junk", [(0.0, 7.0, -3.0), (float("nan"), float("inf"), float("nan"))], ids=["finite", "nan"])
@pytest.mark.parametrize("fn", [residual_linear_attention_naive, residual_linear_attention_chunked],
                         ids=["naive", "chunked"])
def test_references_padded_and_packed_equal_one_by_one(fn, junk):
    check_padded_and_packed(fn, D=8, junk=junk)


# --- Triton forward on the CPU interpreter --------------------------------------------------------------------

@pytest.mark.parametrize("c", cases("rla"), ids=case_id)
def test_matches_reference(c):
    check_case(c, residual_linear_attention_triton, residual_linear_attention_naive)


@pytest.mark.slow
@pytest.mark.parametrize("c", cases("rla", FULL_GRID), ids=case_id)
def test_matches_reference_full_grid(c):
    check_case(c, residual_linear_attention_triton, residual_linear_attention_naive)


def test_launched_through_public_api():
    # T = 40 fits one segment: phi(k) and phi(q) passes, then the segment kernel (no totals, no carry)
    q, k, v = inputs(40, 2, 1, 64)
    before_api = K.launches["triton.rla"]
    before = dict(rla_chunk.launch_counts, **rla_segment.launch_counts, **swa_parallel.launch_counts)
    out = K.residual_linear_attention(q, k, v, window=7, backend="triton")
    after = dict(rla_chunk.launch_counts, **rla_segment.launch_counts, **swa_parallel.launch_counts)
    assert K.launches["triton.rla"] == before_api + 1
    assert {n: after[n] - before[n] for n in after if after[n] != before[n]} == {"rla_phi_kernel": 2,
                                                                               "rla_segment_kernel": 1}
    assert_close(out, residual_linear_attention_naive(q, k, v, window=7), 1e-4, "rla")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_contiguous_inputs(dtype):
    """q, k, v as slices of one fused projection (strided heads) and a transposed layout."""
    g = torch.Generator().manual_seed(12)
    B, T, H, Hkv, D, w = 2, 40, 4, 2, 64, 9
    fused = torch.randn(B, T, H + 2 * Hkv, D, generator=g).to(dtype)
    q, k, v = fused[:, :, :H], fused[:, :, H:H + Hkv], fused[:, :, H + Hkv:]
    qt = torch.randn(B, H, T, D, generator=g).to(dtype).transpose(1, 2)  # (B, T, H, D) view, T-major strides
    f = lambda x: x.float().contiguous()  # noqa: E731
    for qq in (q, qt):
        assert not qq.is_contiguous()
        check(K.residual_linear_attention(qq, k, v, window=w, backend="triton"),
              residual_linear_attention_naive(f(qq), f(k), f(v), window=w).to(dtype), dtype, "rla")


@pytest.mark.parametrize("fm", FEATURE_MAPS)
def test_matches_recurrence_and_is_zero_inside_window(fm):
    q, k, v = inputs(70, 4, 2, 64, B=2)
    for w in (0, 20):
        out = residual_linear_attention_triton(q, k, v, window=w, feature_map=fm)
        assert_close(out, residual_linear_attention_recurrent(q, k, v, window=w, feature_map=fm), 1e-4, f"{fm} w={w}")
        assert out[:, : w + 1].abs().max().item() == 0.0


def test_padded_and_packed_equal_one_by_one():
    check_padded_and_packed(residual_linear_attention_triton, D=64, rms=1e-5, row=1e-5)


def test_head_dims():
    # 16 (the value slices capped at the head dim) through the op; 512 and 96 refused
    q, k, v = inputs(40, 2, 1, 16)
    assert_close(residual_linear_attention_triton(q, k, v, window=5), residual_linear_attention_naive(q, k, v, window=5),
                 1e-4, "D=16")
    for D in (512, 96):
        x = torch.randn(1, 8, 1, D)
        with pytest.raises(ValueError, match="head dims"):
            residual_linear_attention_triton(x, x, x, window=2)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_head_dim_256(dtype, monkeypatch):
    # Gemma-3-shaped heads: "auto" on a GPU (pretended here) takes the Triton kernels at D = 256. Under the
    # interpreter the segment kernel runs two value slices of 128, and rows of 67 and 100 tokens span two
    # segments (the second starts from the carry); GQA, a right-padded batch, softmax features.
    monkeypatch.setattr(K, "resolve_backend", lambda backend, device: "triton")
    c = dict(T=100, D=256, heads=(2, 1), B=2, layout="ragged", dtype=dtype)
    q, k, v, kw = make_inputs(c)
    before, before_api = dict(rla_chunk.launch_counts), K.launches["triton.rla"]
    out = K.residual_linear_attention(q, k, v, window=7, backend="auto", **kw)
    assert K.launches["triton.rla"] == before_api + 1
    assert rla_chunk.launch_counts["rla_carry_kernel"] == before["rla_carry_kernel"] + 1
    check(out, residual_linear_attention_naive(q.float(), k.float(), v.float(), window=7, **kw).to(q.dtype), q.dtype,
          f"D=256 {dtype}")


def test_head_dim_256_tiles_keep_the_footprint_of_128(monkeypatch):
    # On a GPU (pretended: interpreter flag off) D = 256 takes the tables' "D 256" rows, whose fp32 state slices
    # (D x value slice) and tiles of rows x D are no larger than those of the D = 128 rows
    monkeypatch.setattr(triton_common, "INTERPRET", False)
    tables = ((rla_segment.SEGMENT_TILES, "BV", ("BC",)), (rla_chunk.PASS_TILES, "scan_bv", ("scan_block", "phi_rows")),
              (rla_backward.RLA_BWD_TILES, "BV", ("BC", "phi_rows")))
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for table, slice_key, row_keys in tables:
            at128, at256 = (triton_common.tuning_row(table, dtype, D) for D in (128, 256))
            assert at256 != at128
            assert 256 * (at256[slice_key] or 256) <= 128 * (at128[slice_key] or 128), (dtype, slice_key)
            for key in row_keys:
                assert 256 * at256[key] <= 128 * at128[key], (dtype, key)


def test_phi_pass_writes_phi_and_rotated_rows():
    # rla_phi_kernel: phi(x) in x's dtype and, with RoPE tables, x rotated; T not a multiple of the rows per program
    T, D = 150, 64
    q, k, _ = inputs(T, 3, 2, D)
    cos, sin = Rope(D).tables(T, "cpu")
    for fm in FEATURE_MAPS:
        phi = torch.full(k.shape[:3] + (apply_feature_map(k[:1, :1], fm).shape[-1],), float("nan"))
        kr = torch.full_like(k, float("nan"))
        rla_chunk.launch_phi_pass(k, phi, kr, (cos, sin), FEATURES[fm], rows=16, num_warps=4)
        assert_close(phi, apply_feature_map(k, fm), 1e-6, f"phi(k) {fm}")
        assert_close(kr, apply_rope(k, cos, sin), 1e-6, f"rotated k {fm}")
    phi = torch.full(q.shape[:3] + (2 * D,), float("nan"))
    rla_chunk.launch_phi_pass(q, phi, None, None, FEATURES["softmax"], rows=32, num_warps=4)
    assert_close(phi, apply_feature_map(q, "softmax"), 1e-6, "phi(q)")
    kr = torch.full_like(k, float("nan"))
    rla_chunk.launch_phi_pass(k, None, kr, (cos, sin), FEATURES["identity"], rows=32, num_warps=4)  # rotation only
    assert_close(kr, apply_rope(k, cos, sin), 1e-6, "rotated k alone")


def segment_inputs(T, H, Hkv, D, fm, seed=0):
    q, k, v = inputs(T, H, Hkv, D, seed=seed)
    return apply_feature_map(q, fm), apply_feature_map(k, fm), v, q, k


@pytest.mark.parametrize("fm,w", [("softmax", 3), ("softmax", 37), ("relu", 3), ("identity", 3)])
def test_segments_totals_and_carry(fm, w):
    # one segment or many (a carry each), scan steps and value slices of the totals, chunk rows and value
    # slices of the segment kernel: all equal the reference
    T, D = 200, 64
    phi_q, phi_k, v, q, k = segment_inputs(T, 2, 1, D, fm)
    ref = residual_linear_attention_naive(q, k, v, window=w, feature_map=fm)
    seqs = SequenceTable(1, T, q.device, None, None, 16)
    nf = phi_q.shape[-1] // D
    for seg_len, block, block_v, BC, BV in ((32, 16, 32, 16, 32), (64, 32, None, 32, 64), (256, 16, None, 16, 64),
                                            (48, 16, 16, 16, 16)):
        before = dict(rla_chunk.launch_counts)
        carry = rla_chunk.rla_segment_carry(phi_k, v, seqs, window=w, seg_len=seg_len, block=block, block_v=block_v)
        several = T > seg_len
        assert (carry is not None) == several
        assert rla_chunk.launch_counts["rla_segment_totals_kernel"] == before["rla_segment_totals_kernel"] + several
        assert rla_chunk.launch_counts["rla_carry_kernel"] == before["rla_carry_kernel"] + several
        parts = torch.full((nf,) + tuple(q.shape), float("nan"))
        rla_segment.launch_rla_segments(phi_q, phi_k, v, parts, seqs, window=w,
                                        cfg=dict(BC=BC, BV=BV, num_warps=4, num_stages=1), seg_len=seg_len, carry=carry)
        assert_close(parts.sum(0), ref, 1e-4, f"{fm} w={w} seg_len={seg_len} block={block} block_v={block_v} BC={BC} "
                                             f"BV={BV}")


def test_segment_kernel_partials_and_refusals():
    # the segment kernel alone: two raw partials (one per feature half), exactly zero for t <= w, summing to o_rla
    T, D, w = 90, 64, 20
    phi_q, phi_k, v, q, k = segment_inputs(T, 2, 1, D, "softmax")
    seqs = SequenceTable(1, T, q.device, None, None, 16)
    cfg = dict(BC=16, BV=32, num_warps=4, num_stages=1)
    carry = rla_chunk.rla_segment_carry(phi_k, v, seqs, window=w, seg_len=32, block=16)
    assert carry.shape == (1, 1, 3, 2 * D, D)
    parts = torch.full((2,) + tuple(q.shape), float("nan"))
    rla_segment.launch_rla_segments(phi_q, phi_k, v, parts, seqs, window=w, cfg=cfg, seg_len=32, carry=carry)
    assert_close(parts[0] + parts[1], residual_linear_attention_naive(q, k, v, window=w), 1e-4, "partials")
    assert parts[:, :, : w + 1].abs().max().item() == 0
    out = torch.empty(2, *q.shape)
    with pytest.raises(ValueError, match="segments need the carry"):
        rla_segment.launch_rla_segments(phi_q, phi_k, v, out, seqs, window=w, cfg=cfg, seg_len=32, carry=None)
    with pytest.raises(ValueError, match="partials"):
        rla_segment.launch_rla_segments(phi_q, phi_k, v, out[0], seqs, window=w, cfg=cfg, seg_len=32, carry=carry)
    with pytest.raises(ValueError, match="must divide the head dim"):  # else no program would run
        rla_segment.launch_rla_segments(phi_q, phi_k, v, out, seqs, window=w, cfg=dict(cfg, BV=2 * D), seg_len=32,
                                        carry=carry)
    with pytest.raises(ValueError, match="multiple of the chunk rows"):
        rla_segment.launch_rla_segments(phi_q, phi_k, v, out, seqs, window=w, cfg=cfg, seg_len=24, carry=carry)
    with pytest.raises(ValueError, match="does not fit this launch"):  # a carry for another feature map
        rla_segment.launch_rla_segments(q, k, v, out[:1], seqs, window=w, cfg=cfg, seg_len=32, carry=carry)
    with pytest.raises(ValueError, match="multiple of the scan block"):
        rla_chunk.rla_segment_carry(phi_k, v, seqs, window=w, seg_len=40, block=16)


# --- Triton gradients (rla/backward.py) on the CPU interpreter ------------------------------------------------
#
# dq, dk, dv of the Triton autograd Function against the materializing reference differentiated by
# autograd on fp32 copies of the inputs. The grid: T in {1, 15, 63, 100, 257}, windows {0, 7, T-1, T+5}, D in
# {64, 128}, heads (H, Hkv) in {(4, 4), (4, 1), (4, 2)}, dense / padded (an empty and a full row) / packed
# (an empty segment), fp32 / fp16, feature maps softmax / relu / identity, q, k, v separate, as slices of
# one fused projection or transposed (grad_inputs.QKV_LAYOUTS). Padded input rows hold NaN. By default a
# pairwise-covering subset runs; `-m slow` the full grid. D = 256 (Gemma-3-shaped heads) has cases of its
# own: `test_gradients_head_dim_256` (fp32, fp16) and a bf16 one on a GPU.

GRAD_TOL = {torch.float32: 1e-4, torch.float16: 2e-3}
# Per-row bound. A gradient row with one contributing term, e.g. dq_t = (do_t . v_j) J_phi b_j for t = j + w + 1,
# scales by one dot product of D signed terms, which can cancel: its fp32 rounding (~1e-7 x sum |do_d v_d|)
# reaches ~2e-4 of its value (seen: T = 257, relu, packed), in the reference as much as in the kernel.
GRAD_ROW_TOL = {torch.float32: 1e-3, torch.float16: 2e-3}

GRAD_FACTORS = {
    "T": [1, 15, 63, 100, 257],
    "w": ["0", "7", "T-1", ">T"],
    "D": [64, 128],
    "heads": [(4, 4), (4, 1), (4, 2)],
    "layout": ["dense", "padded", "packed"],
    "dtype": ["fp32", "fp16"],
    "fm": FEATURE_MAPS,
    "qkv": list(QKV_LAYOUTS),
}
GRAD_CASES = pairwise_cases(GRAD_FACTORS)


def reference_grads(leaves, do, window, fm, kw):
    """Gradients of the materializing reference on fp32 copies of the leaves."""
    ref = leaves.copy()
    residual_linear_attention_naive(*ref.qkv(), window=window, feature_map=fm, **kw).backward(do.float())
    return ref.grads()


def check_grad_case(c, seed=0):
    T, D, (H, Hkv), dtype = c["T"], c["D"], c["heads"], DTYPES[c["dtype"]]
    leaves, do, _, kw = make_case(T, H, Hkv, D, dtype, layout=c["layout"], qkv=c["qkv"], seed=seed)
    window = window_value(c["w"], T)
    before = K.launches["triton.rla_grad"]
    out = K.residual_linear_attention(*leaves.qkv(), window=window, feature_map=c["fm"], backend="triton", **kw)
    assert K.launches["triton.rla_grad"] == before + 1
    out.backward(do)
    for name, got, ref in zip("qkv", leaves.grads(), reference_grads(leaves, do, window, c["fm"], kw)):
        assert got.dtype == dtype
        assert_close(got, ref, GRAD_TOL[dtype], f"{case_id(c)} d{name}", row_tol=GRAD_ROW_TOL[dtype])


@pytest.mark.parametrize("c", GRAD_CASES, ids=case_id)
def test_gradients_match_reference(c):
    check_grad_case(c)


@pytest.mark.slow
@pytest.mark.parametrize("c", all_cases(GRAD_FACTORS), ids=case_id)
def test_gradients_match_reference_full_grid(c):
    check_grad_case(c)


def test_gradients_pairwise_subset_covers_every_pair():
    assert covers_every_pair(GRAD_CASES, GRAD_FACTORS)


@pytest.mark.parametrize("cfg", [
    dict(BC=16, BV=16, seg_chunks=1),  # value / feature slices; a segment per chunk, so every chunk starts from a carry
    dict(BC=32, BV=32, seg_chunks=100),  # one segment: no carry
    dict(BC=64, BV=16, seg_chunks=3),
], ids=["BC16-BV16-seg1", "BC32-BV32-seg100", "BC64-BV16-seg3"])
@pytest.mark.parametrize("fm", FEATURE_MAPS)
def test_tile_and_segment_settings(cfg, fm):
    T, H, Hkv, D, window = 90, 4, 2, 32, 5
    leaves, do, _, kw = make_case(T, H, Hkv, D, torch.float32, layout="padded", bounds=[90, 0, 41], seed=3)
    got = residual_linear_attention_backward(*leaves.qkv(), do, window=window, feature_map=fm, cfg=cfg, **kw)
    for name, g, ref in zip("qkv", got, reference_grads(leaves, do, window, fm, kw)):
        assert_close(g, ref, 1e-4, f"{cfg} {fm} d{name}", row_tol=GRAD_ROW_TOL[torch.float32])


@pytest.mark.parametrize("key", sorted(k for k in rla_backward.RLA_BWD_TILES if k != "interpreter"),
                         ids=lambda k: k.replace(", ", "-").replace(" ", ""))
def test_gpu_backward_rows_under_the_interpreter(key):
    # The tile shapes of each GPU row (the row a GPU picks for these inputs or not: bf16, whose 16-bit rows
    # these are, cannot run here), with its segment count for the interpreter's 4 SMs: a padded batch whose
    # short row ends inside a chunk, the window starting inside one
    T, H, Hkv, D, window = 150, 2, 1, 256 if key.endswith("D 256") else 64, 37
    dtype = torch.float16 if key.startswith("16-bit") else torch.float32
    leaves, do, _, kw = make_case(T, H, Hkv, D, dtype, layout="padded", bounds=[T, 50], seed=4)
    cfg = dict(rla_backward.RLA_BWD_TILES[key], seg_chunks=None)  # segments from the row's programs_per_sm
    got = residual_linear_attention_backward(*leaves.qkv(), do, window=window, cfg=cfg, **kw)
    for name, g, ref in zip("qkv", got, reference_grads(leaves, do, window, "softmax", kw)):
        assert_close(g, ref, GRAD_TOL[dtype], f"{key} d{name}", row_tol=GRAD_ROW_TOL[dtype])


@pytest.mark.parametrize("op", ["rla", "rattention"])
def test_gradients_with_lengths_in_a_strided_int32_view(op):
    # lengths as every other entry of an int32 tensor: the backward reads each row's length at its own offset
    T, H, Hkv, D, window = 40, 2, 1, 32, 5
    leaves, do, _, kw = make_case(T, H, Hkv, D, torch.float32, layout="padded", bounds=[T, 17], seed=6)
    kw["lengths"] = torch.tensor([0, T, 0, 17], dtype=torch.int32)[1::2]
    fn = dict(rla=K.residual_linear_attention, rattention=K.rattention)[op]
    ref = leaves.copy()
    fn(*leaves.qkv(), window=window, backend="triton", **kw).backward(do)
    fn(*ref.qkv(), window=window, backend="torch", **kw).backward(do)
    for name, g, r in zip("qkv", leaves.grads(), ref.grads()):
        # absolute slack as test_rattention.check_grads: dq / dk rows of a query that sees one key are 0 only
        # up to rounding in the SWA branch
        assert_close(g, r, 1e-4, f"{op} d{name}", row_tol=GRAD_ROW_TOL[torch.float32],
                     abs_tol=1e-4 * r.abs().max().item(), zero_rows=name == "v")


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_gradients_head_dim_256(dtype):
    # Gemma-3-shaped heads: under the interpreter two value / feature slices of 128 per state, and 70 rows over
    # two segments (a carry); GQA, a padded batch (an empty, a full and a partial row), softmax features
    check_grad_case(dict(T=70, w="7", D=256, heads=(2, 1), layout="padded", dtype=dtype, fm="softmax", qkv="separate"))


def test_only_the_needed_gradients_run():
    B, T, H, Hkv, D, window = 1, 50, 2, 1, 32, 4
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(B, T, H, D, generator=g), torch.randn(B, T, Hkv, D, generator=g)
    v = torch.randn(B, T, Hkv, D, generator=g).requires_grad_()
    do = torch.randn(B, T, H, D, generator=g)
    counts = dict(rla_backward.launch_counts)
    K.residual_linear_attention(q, k, v, window=window, backend="triton").backward(do)
    ran = {name: rla_backward.launch_counts[name] - counts[name] for name in counts}
    assert ran["rla_bwd_dv_kernel"] == 1 and ran["rla_bwd_dq_kernel"] == 0 and ran["rla_bwd_dk_kernel"] == 0
    assert ran["rla_bwd_state_kernel"] == 1  # the dH scan only: dq alone needs the forward-state scan
    vr = v.detach().clone().requires_grad_()
    residual_linear_attention_naive(q, k, vr, window=window).backward(do)
    assert_close(v.grad, vr.grad, 1e-4, "dv", row_tol=GRAD_ROW_TOL[torch.float32])


def test_inference_keeps_the_forward_kernels():
    q, k, v = (torch.randn(1, 20, 2, 32, requires_grad=True) for _ in range(3))
    before = K.launches["triton.rla_grad"]
    with torch.no_grad():
        out = K.residual_linear_attention(q, k, v, window=3, backend="triton")
    assert K.launches["triton.rla_grad"] == before and not out.requires_grad
    out = K.residual_linear_attention(q.detach(), k.detach(), v.detach(), window=3, backend="triton")
    assert K.launches["triton.rla_grad"] == before and not out.requires_grad


def test_second_derivatives_are_refused():
    # the backward kernels are not differentiable: a double backward says so instead of giving wrong numbers
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 20, h, 16, generator=g, requires_grad=True) for h in (2, 1, 1))
    o = K.residual_linear_attention(q, k, v, window=4, backend="triton")
    dq, = torch.autograd.grad(o, q, torch.randn(o.shape, generator=g).requires_grad_(), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dq.sum().backward()


@pytest.mark.parametrize("fm", FEATURE_MAPS)
def test_torch_backend_is_differentiable(fm):
    """The chunked reference (the torch backend) and the materializing one give the same gradients."""
    T, H, Hkv, D, window = 70, 4, 2, 16, 6
    leaves, do, _, kw = make_case(T, H, Hkv, D, torch.float32, layout="padded", qkv="fused", bounds=[70, 0, 33],
                                  seed=6)
    K.residual_linear_attention(*leaves.qkv(), window=window, feature_map=fm, backend="torch", **kw).backward(do)
    for name, got, ref in zip("qkv", leaves.grads(), reference_grads(leaves, do, window, fm, kw)):
        assert_close(got, ref, 1e-5, f"torch backend d{name}", row_tol=GRAD_ROW_TOL[torch.float32])


@pytest.mark.parametrize("fm", FEATURE_MAPS)
@pytest.mark.parametrize("layout", ["dense", "packed"])
def test_reference_gradcheck(fm, layout):
    """The reference's autograd gradients are the derivatives of its output. The references compute in
    fp32 internally, so the finite differences take eps = 1e-3 (fp32 rounding / eps ~ 1e-4) and a
    matching tolerance; a wrong gradient term is O(1) off."""
    g = torch.Generator().manual_seed(8)
    T, H, Hkv, D = 9, 2, 1, 4
    kw = {"cu_seqlens": torch.tensor([0, 4, 4, 8])} if layout == "packed" else {}
    q, k, v = (torch.randn(1, T, h, D, generator=g, dtype=torch.float64, requires_grad=True) for h in (H, Hkv, Hkv))
    if fm == "relu":  # keep finite differences away from the kink at 0
        q, k = ((x.detach() + 0.2 * x.detach().sign()).requires_grad_() for x in (q, k))
    for fn in (residual_linear_attention_naive, residual_linear_attention_chunked):
        f = lambda q, k, v: fn(q, k, v, window=1, feature_map=fm, **kw)  # noqa: E731
        assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-3, atol=1e-3, rtol=1e-3)


# --- Triton forward on a GPU ----------------------------------------------------------------------------------

def run_gpu(T, dtype, H=4, Hkv=2, D=128, w=512):
    q, k, v = gpu_inputs(T, H, Hkv, D, dtype)
    with torch.no_grad():
        out = K.residual_linear_attention(q, k, v, window=w, backend="triton")
        ref = residual_linear_attention_chunked(q.float(), k.float(), v.float(), window=w)
        check(out, ref, dtype, f"rla T={T} {dtype}")


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
def test_gpu_head_dim_256_bf16():
    run_gpu(4096, torch.bfloat16, H=8, Hkv=4, D=256, w=512)


@pytest.mark.gpu
def test_gpu_grids_beyond_65535_blocks():
    # more than 65535 (sequence, head) pairs and phi row blocks (B * T / rows > 65535), each in one launch
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(4100, 16, 16, 64, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    out = K.residual_linear_attention(q, k, v, window=5, backend="triton")
    ref = K.residual_linear_attention(q.float(), k.float(), v.float(), window=5, backend="torch")
    check(out, ref, torch.bfloat16, "B=4100 H=16 T=16")


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_SHAPES, ids=[gpu_shape_id(c) for c in GPU_SHAPES])
def test_gpu_awkward_shapes(case):
    q, k, v, var, w = gpu_shape_inputs(case)
    dtype = case[-1]
    f = lambda x: x.float().contiguous()  # noqa: E731
    before = K.launches["triton.rla"]
    with torch.no_grad(), exact_fp32():
        out = K.residual_linear_attention(q, k, v, window=w, backend="triton", **var)
        ref = residual_linear_attention_chunked(f(q), f(k), f(v), window=w, **var)
        check(out, ref, dtype, gpu_shape_id(case))
    assert K.launches["triton.rla"] == before + 1


# --- Triton gradients on a GPU --------------------------------------------------------------------------------
#
# bf16 against the fp32 chunked reference (computed on the same bf16 values) under autograd. bf16 holds 8
# significant bits: phi(q), phi(k), the chunk products and the states are rounded to bf16 for the tensor
# cores, as in the forward (whose bf16 checks use the same bounds).
BF16_RMS, BF16_ROW = 1e-2, 3e-2
# dq, dk pass through the softmax feature map's Jacobian, phi * (g - phi.g), which cancels in rows where g is
# nearly flat: the bf16 rounding of the state products (2^-8 relative) then reached 3.1% of such a row's max
# (T = 4096 padded; 3.0% at 32k; on an H100); the bound per row is 5% there.
BF16_ROW_QK = 5e-2


# fp16: a quarter of the bf16 bounds, for operands rounded to 11 significant bits (fp16 inputs, TF32 products,
# fp32 phi and states) instead of bf16's 8, 8x finer (test_gpu_fp16_gradients passed with it on an H100).
GPU_BOUNDS = {torch.bfloat16: (BF16_RMS, BF16_ROW_QK, BF16_ROW),
              torch.float16: (BF16_RMS / 4, BF16_ROW_QK / 4, BF16_ROW / 4)}


def run_gpu_gradients(T, layout, fm, *, H, Hkv, D, dtype=torch.bfloat16):
    window = 512
    bounds = {"padded": [T - 1000, T], "packed": [0, 1500, 1500, 3001, T - 7]}.get(layout)
    leaves, do, _, kw = make_case(T, H, Hkv, D, dtype, layout=layout, bounds=bounds, dense_rows=1, seed=9,
                                  device="cuda")
    K.residual_linear_attention(*leaves.qkv(), window=window, feature_map=fm, backend="triton", **kw).backward(do)
    ref = leaves.copy()
    residual_linear_attention_chunked(*ref.qkv(), window=window, feature_map=fm, **kw).backward(do.float())
    rms, row_qk, row_v = GPU_BOUNDS[dtype]
    for name, got, r in zip("qkv", leaves.grads(), ref.grads()):
        assert_close(got, r, rms, f"T={T} D={D} {layout} d{name}", row_tol=row_qk if name in "qk" else row_v)


@pytest.mark.gpu
@pytest.mark.parametrize("T,layout", [(4096, "dense"), (32768, "dense"), (4096, "padded"), (4096, "packed")])
@pytest.mark.parametrize("fm", ["softmax"])
def test_gpu_bf16_gradients(T, layout, fm):
    run_gpu_gradients(T, layout, fm, H=16, Hkv=4, D=128)


@pytest.mark.gpu
def test_gpu_bf16_gradients_head_dim_256():
    # Gemma-3-shaped heads (B = 1, H = 8, Hkv = 4, D = 256, w = 512): the "D 256" rows of RLA_BWD_TILES
    run_gpu_gradients(4096, "dense", "softmax", H=8, Hkv=4, D=256)


@pytest.mark.gpu
@pytest.mark.parametrize("H,D", [(16, 128), (8, 256)])
def test_gpu_fp16_gradients(H, D):
    # fp16 inputs run the products on fp32 operands (TF32) with the fp32 rows of RLA_BWD_TILES
    run_gpu_gradients(4096, "dense", "softmax", H=H, Hkv=4, D=D, dtype=torch.float16)
