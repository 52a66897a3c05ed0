"""Triton prefill kernels (SWA, RLA, fused RAttention) against the PyTorch references, on CPU
under TRITON_INTERPRET=1 (set by conftest). fp32 and fp16 only: the interpreter does not do bf16.

The shape grid: T in {1, 15, 63, 111, 1000}, windows {0, 7, 64, T-1, >T, None (SWA)}, D in {64, 128}
(+256 for SWA), heads (H, Hkv) in {(1, 1), (4, 1), (4, 4)}, B (or packed sequences) in {1, 3},
dense / right-padded / packed layouts, fp32 / fp16. By default a pairwise-covering subset runs
(every pair of factor values appears in some case); `-m slow` runs the full cartesian grid.
"""

import itertools
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

import rattn_eval.kernels as K
from rattn_eval.kernels import Rope, rattention_naive, residual_linear_attention_naive, swa_attention_naive
from rattn_eval.kernels.rattention.fused import rattention_design, rattention_triton
from rattn_eval.kernels.rla import chunk as rla_chunk
from rattn_eval.kernels.rla import segment as rla_segment
from rattn_eval.kernels.rla.chunk import residual_linear_attention_triton
from rattn_eval.kernels.rla.naive import residual_linear_attention_recurrent
from rattn_eval.kernels.swa import parallel as swa_parallel
from rattn_eval.kernels.swa.parallel import swa_attention_triton

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")  # triton 3.6 interpreter + numpy

TOL = {torch.float32: 1e-4, torch.float16: 2e-3}

FACTORS = {
    "op": ["swa", "rla", "rattn"],
    "T": [1, 15, 63, 111, 1000],
    "w": ["0", "7", "64", "T-1", ">T", "none"],
    "D": [64, 128, 256],
    "heads": [(1, 1), (4, 1), (4, 4)],
    "B": [1, 3],
    "layout": ["dense", "ragged", "packed"],
    "dtype": ["fp32", "fp16"],
}


def feasible(c: dict) -> bool:
    if c["op"] != "swa" and (c["w"] == "none" or c["D"] == 256):
        return False  # RLA needs a window; its state at D=256 does not fit on chip (kernels/rla/README.md)
    if c["T"] == 1000:
        # keeps the interpreter inside the CPU budget: long windows at T = 1000 with one head only
        long_window = c["w"] in ("T-1", ">T", "none")
        if c["D"] == 256 or c["B"] * c["heads"][0] > (1 if long_window else 4):
            return False
    return True


def all_cases():
    keys = list(FACTORS)
    for values in itertools.product(*FACTORS.values()):
        c = dict(zip(keys, values))
        if feasible(c):
            yield c


def _pairs(c):
    items = sorted((k, str(v)) for k, v in c.items())
    return set(itertools.combinations(items, 2))


@lru_cache(maxsize=None)
def pairwise_cases():
    """Greedy all-pairs cover: repeatedly take the case covering most uncovered feasible pairs."""
    cands = [(c, _pairs(c)) for c in all_cases()]
    todo = set().union(*(p for _, p in cands))
    chosen = []
    while todo:
        best, bp = max(cands, key=lambda cp: len(cp[1] & todo))
        chosen.append(best)
        todo -= bp
    return chosen


def case_id(c):
    H, Hkv = c["heads"]
    return f"{c['op']}-T{c['T']}-w{c['w']}-D{c['D']}-H{H}kv{Hkv}-B{c['B']}-{c['layout']}-{c['dtype']}"


def window_value(w: str, T: int):
    if w == "none":
        return None
    return {"T-1": max(T - 1, 0), ">T": T + 5}.get(w) if not w.isdigit() else int(w)


def make_inputs(c, seed=0):
    """q, k, v and the layout kwargs for a case. B means sequences: rows (dense/ragged) or packed segments."""
    T, D, (H, Hkv), B = c["T"], c["D"], c["heads"], c["B"]
    dtype = torch.float32 if c["dtype"] == "fp32" else torch.float16
    rows = 1 if c["layout"] == "packed" else B
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, T, H, D, generator=g).to(dtype)
    k = torch.randn(rows, T, Hkv, D, generator=g).to(dtype)
    v = torch.randn(rows, T, Hkv, D, generator=g).to(dtype)
    kw = {}
    if c["layout"] == "ragged":
        kw["lengths"] = torch.tensor([T - T // 3, T, T // 2][:B])
    elif c["layout"] == "packed":
        cuts = [round(T * (i + 1) / (B + 0.5)) for i in range(B)]  # last segment ends before T: padding
        kw["cu_seqlens"] = torch.tensor([0] + cuts)
    return q, k, v, kw


def run_op(op, impl, q, k, v, window, kw, extra):
    if op == "swa":
        fn = swa_attention_triton if impl == "triton" else swa_attention_naive
        return fn(q, k, v, window=window, **kw)
    if op == "rla":
        fn = residual_linear_attention_triton if impl == "triton" else residual_linear_attention_naive
        return fn(q, k, v, window=window, **kw, **extra)
    fn = rattention_triton if impl == "triton" else rattention_naive
    return fn(q, k, v, window=window, **kw, **extra)


def rattn_extra(T, H, D, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(rope=Rope(D, theta=10000.0).tables(T), swa_norm_weight=torch.rand(H, D, generator=g) + 0.5,
                rla_norm_weight=torch.rand(H, D, generator=g) + 0.5)


def assert_close(out, ref, tol, what=""):
    """Relative RMS error over the tensor AND per-row (over D) max-abs error relative to the row's
    max-abs: a whole-tensor RMS alone hides an off-by-one in the window. Rows that are exactly zero
    in the reference (RLA for t <= w, padding) must be exactly zero."""
    assert out.shape == ref.shape and out.dtype == ref.dtype, what
    o, r = out.float(), ref.float()
    assert torch.isfinite(o).all(), f"{what}: non-finite output"
    rel = ((o - r).norm() / r.norm().clamp(min=1e-30)).item()
    assert rel <= tol, f"{what}: relative RMS error {rel:.3g} > {tol}"
    row_err = (o - r).abs().amax(dim=-1)
    row_scale = r.abs().amax(dim=-1)
    bad = row_err > tol * row_scale
    assert not bad.any(), (f"{what}: {int(bad.sum())} rows off, first at {bad.nonzero()[0].tolist()}: "
                           f"err {row_err[bad][0]:.3g} vs scale {row_scale[bad][0]:.3g}")


def check_case(c):
    q, k, v, kw = make_inputs(c)
    window = window_value(c["w"], c["T"])
    extra = rattn_extra(c["T"], c["heads"][0], c["D"]) if c["op"] == "rattn" else {}
    out = run_op(c["op"], "triton", q, k, v, window, kw, extra)
    ref = run_op(c["op"], "naive", q.float(), k.float(), v.float(), window, kw, extra).to(q.dtype)
    assert_close(out, ref, TOL[q.dtype], case_id(c))


@pytest.mark.parametrize("c", pairwise_cases(), ids=case_id)
def test_matches_reference(c):
    check_case(c)


@pytest.mark.slow
@pytest.mark.parametrize("c", list(all_cases()), ids=case_id)
def test_matches_reference_full_grid(c):
    check_case(c)


def test_pairwise_subset_covers_every_pair():
    chosen = pairwise_cases()
    covered = set().union(*(_pairs(c) for c in chosen))
    feasible_pairs = set().union(*(_pairs(c) for c in all_cases()))
    assert covered == feasible_pairs
    for k, values in FACTORS.items():
        assert {str(c[k]) for c in chosen} == {str(v) for v in values}, k


def test_empty_is_nan_poisoned():
    # conftest fills torch.empty with NaN: an output tile the kernel forgets to write fails the comparisons.
    assert torch.isnan(torch.empty(4)).all()


@pytest.mark.parametrize("op", ["swa", "rla", "rattention"])
def test_triton_kernel_launched_through_public_api(op):
    q, k, v, _ = make_inputs(dict(T=40, D=64, heads=(2, 1), B=1, layout="dense", dtype="fp32"))
    before_api = K.launches[f"triton.{op}"]
    before_kernel = swa_parallel.launch_counts["swa_fwd_kernel"]
    before_state = rla_chunk.launch_counts["rla_chunk_state_kernel"]
    before_segment = rla_segment.launch_counts["rla_segment_kernel"]
    fn = {"swa": K.swa_attention, "rla": K.residual_linear_attention, "rattention": K.rattention}[op]
    out = fn(q, k, v, window=7, backend="triton")
    assert K.launches[f"triton.{op}"] == before_api + 1
    from rattn_eval.kernels.rattention.fused import DEFAULT_DESIGN

    passes = 2 if op == "rattention" and DEFAULT_DESIGN == "two_kernel" else 1  # two_kernel: RLA pass + SWA pass
    assert swa_parallel.launch_counts["swa_fwd_kernel"] == before_kernel + passes
    if op == "rattention" and DEFAULT_DESIGN == "segment":  # segment totals + the segment kernel, no chunk states
        assert rla_segment.launch_counts["rla_segment_kernel"] == before_segment + 1
        assert rla_chunk.launch_counts["rla_chunk_state_kernel"] == before_state
    else:
        assert rla_chunk.launch_counts["rla_chunk_state_kernel"] == before_state + (op != "swa")
    ref = {"swa": swa_attention_naive, "rla": residual_linear_attention_naive, "rattention": rattention_naive}[op]
    assert_close(out, ref(q, k, v, window=7), 1e-4, op)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_contiguous_inputs(dtype):
    """q, k, v as slices of one fused projection (strided heads) and a transposed layout: the Triton
    path must read them as the references do (it makes them contiguous where a kernel needs that)."""
    g = torch.Generator().manual_seed(12)
    B, T, H, Hkv, D, w = 2, 40, 4, 2, 64, 9
    fused = torch.randn(B, T, H + 2 * Hkv, D, generator=g).to(dtype)
    q, k, v = fused[:, :, :H], fused[:, :, H:H + Hkv], fused[:, :, H + Hkv:]
    qt = torch.randn(B, H, T, D, generator=g).to(dtype).transpose(1, 2)  # (B, T, H, D) view, T-major strides
    cos, sin = Rope(D).tables(T)
    f = lambda x: x.float().contiguous()  # noqa: E731
    for qq in (q, qt):
        assert not qq.is_contiguous()
        assert_close(K.swa_attention(qq, k, v, window=w, backend="triton"),
                     swa_attention_naive(f(qq), f(k), f(v), window=w).to(dtype), TOL[dtype], "swa")
        assert_close(K.residual_linear_attention(qq, k, v, window=w, backend="triton"),
                     residual_linear_attention_naive(f(qq), f(k), f(v), window=w).to(dtype), TOL[dtype], "rla")
        assert_close(K.rattention(qq, k, v, window=w, rope=(cos, sin), backend="triton"),
                     rattention_naive(f(qq), f(k), f(v), window=w, rope=(cos, sin)).to(dtype), TOL[dtype], "rattention")


def test_swa_full_window_equals_sdpa():
    q, k, v, _ = make_inputs(dict(T=50, D=64, heads=(4, 2), B=2, layout="dense", dtype="fp32"))
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2),
                                         v.repeat_interleave(2, 2).transpose(1, 2), is_causal=True).transpose(1, 2)
    for w in (49, 50, 1000, None):
        assert_close(swa_attention_triton(q, k, v, window=w), ref, 1e-4, f"w={w}")


@pytest.mark.parametrize("dtype,logit", [("fp32", -300.0), ("fp16", -25.0)])
def test_swa_rows_whose_scores_all_lie_far_below_zero(dtype, logit):
    # every score of a row near `logit` (q = a u, k = -a u plus noise): the online softmax must track the row's true
    # maximum even when the first tile it meets is fully masked (window 7 < the key tile), or exp(s - max) underflows
    # (fp32 below ~-87, fp16 probabilities below ~2^-24) and the row comes out as 0 instead of its softmax
    T, H, Hkv, D, w = 50, 2, 1, 64, 7
    g = torch.Generator().manual_seed(7)
    u = torch.randn(D, generator=g)
    u = u / u.norm()
    a = (-logit * D ** 0.5) ** 0.5  # q . k * D^-0.5 = -a^2 D^-0.5 = logit
    q = a * u + 0.3 * torch.randn(1, T, H, D, generator=g)
    k = -a * u + 0.3 * torch.randn(1, T, Hkv, D, generator=g)
    v = torch.randn(1, T, Hkv, D, generator=g)
    dt = torch.float32 if dtype == "fp32" else torch.float16
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    ref = swa_attention_naive(q.float(), k.float(), v.float(), window=w)
    s_max = max(((q[0, t].float() @ k[0, max(0, t - w): t + 1, 0].float().T).amax().item() for t in range(T)))
    assert s_max * D ** -0.5 < logit / 2  # every row's best score is far below 0
    assert_close(swa_attention_triton(q, k, v, window=w), ref.to(dt), TOL[dt], f"swa {dtype}")
    # the SWA pass of RAttention (no RoPE, which would rotate the scores away from `logit`)
    assert_close(rattention_triton(q, k, v, window=w), rattention_naive(q.float(), k.float(), v.float(), window=w).to(dt),
                 TOL[dt], f"rattention {dtype}")


def test_large_scores_in_fp16_and_scales_of_any_sign():
    # q, k of std 20 (scores of std ~400): the softmax scale multiplies the fp32 scores, so q is not rounded to fp16
    # a second time after a multiply (that rounding alone gave 3e-3-5e-3 here); scales <= 0 take the folded path
    T, H, Hkv, D, w = 70, 4, 2, 32, 40
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, T, h, D, generator=g) * s for h, s in ((H, 20.0), (Hkv, 20.0), (Hkv, 1.0)))
    q, k, v = q.half(), k.half(), v.half()
    f = lambda x: x.float()  # noqa: E731
    ref = swa_attention_naive(f(q), f(k), f(v), window=w).half()
    assert_close(swa_attention_triton(q, k, v, window=w), ref, TOL[torch.float16], "swa fp16, large scores")
    # RAttention without RoPE: with it, q and k rotated in fp32 must be rounded to fp16 for the tensor cores,
    # which at scores of std ~400 alone costs ~6e-3 against an fp32 reference (any fp16 kernel pays that)
    kw = dict(window=w, swa_norm_weight=rattn_extra(T, H, D)["swa_norm_weight"])
    assert_close(rattention_triton(q, k, v, **kw), rattention_naive(f(q), f(k), f(v), **kw).half(), TOL[torch.float16],
                 "rattention fp16, large scores")
    before = swa_parallel.launch_counts["swa_fwd_kernel"]
    for scale in (0.0, -0.05, 0.05):
        qs, ks, vs = (x.float() / 20 for x in (q, k, v))
        ref = swa_attention_naive(qs, ks, vs, window=w, scale=scale)
        assert_close(swa_attention_triton(qs, ks, vs, window=w, scale=scale), ref, TOL[torch.float32], f"scale {scale}")
    assert swa_parallel.launch_counts["swa_fwd_kernel"] == before + 3


@pytest.mark.parametrize("fm", ["softmax", "relu", "identity"])
def test_rla_matches_recurrence_and_is_zero_inside_window(fm):
    q, k, v, _ = make_inputs(dict(T=70, D=64, heads=(4, 2), B=2, layout="dense", dtype="fp32"))
    for w in (0, 20):
        out = residual_linear_attention_triton(q, k, v, window=w, feature_map=fm)
        ref = residual_linear_attention_recurrent(q, k, v, window=w, feature_map=fm)
        assert_close(out, ref, 1e-4, f"{fm} w={w}")
        assert out[:, : w + 1].abs().max().item() == 0.0


def test_rattention_feature_maps_and_no_rope():
    q, k, v, _ = make_inputs(dict(T=45, D=64, heads=(2, 2), B=1, layout="dense", dtype="fp32"))
    for fm in ("relu", "identity"):
        out = rattention_triton(q, k, v, window=9, feature_map=fm)
        assert_close(out, rattention_naive(q, k, v, window=9, feature_map=fm), 1e-4, fm)


def test_windows_differ():
    q, k, v, _ = make_inputs(dict(T=40, D=64, heads=(2, 2), B=1, layout="dense", dtype="fp32"))
    outs = [rattention_triton(q, k, v, window=w) for w in (9, 10, 11)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


def test_padded_and_packed_equal_one_by_one():
    lens = [13, 30, 1]
    T = max(lens)
    seqs = [make_inputs(dict(T=n, D=64, heads=(4, 2), B=1, layout="dense", dtype="fp32"), seed=i)[:3]
            for i, n in enumerate(lens)]
    pad = lambda x, fill: torch.cat([x, x.new_full((1, T - x.shape[1], *x.shape[2:]), fill)], 1)  # noqa: E731
    q = torch.cat([pad(s[0], float("nan")) for s in seqs])
    k = torch.cat([pad(s[1], float("inf")) for s in seqs])  # junk in the padding must not leak (any leak is non-finite)
    v = torch.cat([pad(s[2], float("nan")) for s in seqs])
    packed = [torch.cat([s[i] for s in seqs], 1) for i in range(3)]
    cu = torch.tensor([0, 13, 43, 44])
    def rattention_phi(q, k, v, *, window, lengths=None, cu_seqlens=None):
        # the H200 default's path: phi(k) pre-pass read back by the output pass, heads-first grids, 16-bit carry
        cfg = dict(swa_parallel.block_config(64, True), phi_k=True, heads_first=True)
        tuning = dict(cfg=cfg, state=dict(phi_pass=True, blocks_per_segment=1, carry_dtype=torch.float16))
        return rattention_design(q, k, v, window=window, rope=None, scale=None, feature_map="softmax",
                                 swa_norm_weight=None, rla_norm_weight=None, eps=1e-6, lengths=lengths,
                                 cu_seqlens=cu_seqlens, design="fused", tuning=tuning)

    for fn in (swa_attention_triton, residual_linear_attention_triton, rattention_triton, rattention_phi):
        out = fn(q, k, v, window=5, lengths=torch.tensor(lens))
        outp = fn(*packed, window=5, cu_seqlens=cu)
        for b, n in enumerate(lens):
            alone = fn(*seqs[b], window=5)
            assert_close(out[b : b + 1, :n], alone, 1e-5, f"{fn.__name__} padded row {b}")
            assert_close(outp[:, cu[b] : cu[b + 1]], alone, 1e-5, f"{fn.__name__} packed seq {b}")
            assert out[b, n:].abs().max().item() == 0 if n < T else True


@pytest.mark.parametrize("carry", ["fold", "rescan"])
def test_many_scan_segments(carry):
    # Chunk states scanned in many segments (carry folded into the output pass, or a second scan from
    # it), value slices, scan steps smaller than a state block, state blocks larger than the output
    # pass's query blocks, or one segment: all equal.
    q, k, v, _ = make_inputs(dict(T=200, D=64, heads=(2, 1), B=1, layout="dense", dtype="fp32"))
    cfg = swa_parallel.block_config(64, True)
    bm = cfg["BM"]
    seqs = swa_parallel.SequenceTable(1, 200, q.device, None, None, bm)
    for fm, feature, w in (("softmax", 0, 3), ("softmax", 0, 37), ("relu", 1, 3), ("identity", 2, 3)):
        ref = residual_linear_attention_naive(q, k, v, window=w, feature_map=fm)
        for bps, bv, bs, bt in ((1, 32, bm, bm), (3, None, bm, bm // 2), (100, None, bm, bm), (2, None, 2 * bm, bm // 2),
                                (1, 32, 4 * bm, 2 * bm)):
            before = dict(rla_chunk.launch_counts)
            st = rla_chunk.rla_prefix_states(k, v, seqs, window=w, feature=feature, cfg=cfg, blocks_per_segment=bps,
                                             block_v=bv, state_block=bs, block_t=bt, carry=carry, phi_pass=bps == 3)
            several = rla_chunk.cdiv(200, bs) > bps
            assert rla_chunk.launch_counts["rla_segment_totals"] == before["rla_segment_totals"] + (
                several and carry == "rescan")
            assert rla_chunk.launch_counts["rla_carry_kernel"] == before["rla_carry_kernel"] + several
            assert rla_chunk.launch_counts["rla_chunk_state_kernel"] == before["rla_chunk_state_kernel"] + 1
            assert (st.carry is not None) == (several and carry == "fold")
            # with the phi(k) pre-pass, the output pass reads phi(k) too, on a heads-first grid
            c = dict(cfg, phi_k=True, heads_first=True) if bps == 3 else cfg
            out = swa_parallel.launch_swa_fwd(q, k, v, torch.empty_like(q), seqs, window=w, scale=1.0, cfg=c,
                                              states=st, do_swa=False, do_rla=True, feature=feature)
            assert_close(out, ref, 1e-4, f"{fm} w={w} carry={carry} blocks_per_segment={bps} block_v={bv} state_block={bs} "
                                         f"block_t={bt}")


def test_scan_carry_in_half_precision_and_rotated_k():
    # The carry may be handed to the output pass in 16 bits (rounding only: fp16 tolerance); and the
    # programs sharing a key tile each rotate a slice of its rows: together every row of kr, exactly.
    T, D = 150, 64
    q, k, v, _ = make_inputs(dict(T=T, D=D, heads=(2, 1), B=1, layout="dense", dtype="fp32"))
    cfg = swa_parallel.block_config(D, True)
    seqs = swa_parallel.SequenceTable(1, T, q.device, None, None, cfg["BM"])
    cos, sin = Rope(D).tables(T, "cpu")
    ref_kr = k * cos[None, :, None] + torch.cat([-k[..., D // 2:], k[..., : D // 2]], -1) * sin[None, :, None]
    ref = residual_linear_attention_naive(q, k, v, window=11)
    for bv, phi_pass in ((None, False), (16, False), (None, True)):
        kr = torch.full_like(k, float("nan"))
        before = rla_chunk.launch_counts["rla_phi_kernel"]
        st = rla_chunk.rla_prefix_states(k, v, seqs, window=11, feature=0, cfg=cfg, blocks_per_segment=1, block_v=bv,
                                         carry="fold", carry_dtype=torch.float16, kr=kr, rope=(cos, sin),
                                         phi_pass=phi_pass)
        assert rla_chunk.launch_counts["rla_phi_kernel"] == before + phi_pass
        assert st.carry is not None and st.carry.dtype == torch.float16
        assert_close(kr, ref_kr, 1e-6, f"rotated k, block_v={bv} phi_pass={phi_pass}")
        out = swa_parallel.launch_swa_fwd(q, k, v, torch.empty_like(q), seqs, window=11, scale=1.0, cfg=cfg, states=st,
                                          do_swa=False, do_rla=True)
        assert_close(out, ref, TOL[torch.float16], f"fp16 carry, block_v={bv} phi_pass={phi_pass}")


def test_state_block_must_fit_the_output_blocks():
    q, k, v, _ = make_inputs(dict(T=40, D=64, heads=(1, 1), B=1, layout="dense", dtype="fp32"))
    cfg = swa_parallel.block_config(64, True)
    seqs = swa_parallel.SequenceTable(1, 40, q.device, None, None, cfg["BM"])
    with pytest.raises(ValueError, match="multiple of BM"):
        rla_chunk.rla_prefix_states(k, v, seqs, window=3, feature=0, cfg=cfg, state_block=cfg["BM"] + 8)
    st = rla_chunk.rla_prefix_states(k, v, seqs, window=3, feature=0, cfg=cfg, state_block=2 * cfg["BM"])
    with pytest.raises(ValueError, match="equal when fused"):
        swa_parallel.launch_swa_fwd(q, k, v, torch.empty_like(q), seqs, window=3, scale=1.0, cfg=cfg, states=st,
                                    do_swa=True, do_rla=True)


SEGMENT_CFGS = {  # rla/segment.py variants: feature halves in one program or split; phi(k) computed or read
    "both-halves": dict(BC=16, BV=32, num_warps=4, num_stages=1, programs_per_sm=2),
    "split-phi_k": dict(BC=16, BV=32, num_warps=4, num_stages=1, programs_per_sm=2, split_f=True, phi_k=True),
    "split-full-value": dict(BC=32, BV=64, num_warps=4, num_stages=1, programs_per_sm=2, split_f=True),
    "phi_k": dict(BC=16, BV=64, num_warps=4, num_stages=1, programs_per_sm=2, phi_k=True),
    # one program per KV head serving its H / Hkv query heads
    "grouped-split-phi_k": dict(BC=16, BV=32, num_warps=4, num_stages=1, programs_per_sm=2, split_f=True, phi_k=True,
                                group_heads=True),
    "grouped-both-halves": dict(BC=16, BV=64, num_warps=4, num_stages=1, programs_per_sm=2, group_heads=True),
    # tiles through TMA tensor descriptors (16-bit inputs; the fp32 cases take the pointer loads)
    "split-phi_k-tma": dict(BC=16, BV=32, num_warps=4, num_stages=1, programs_per_sm=2, split_f=True, phi_k=True,
                            tma=True),
    "both-halves-tma": dict(BC=16, BV=32, num_warps=4, num_stages=1, programs_per_sm=2, tma=True),
    # phi(q) from a pre-pass as well (phi-pass programs of 16 rows, as the H200 default; the others take 32)
    "split-phi_q": dict(BC=16, BV=32, num_warps=4, num_stages=1, programs_per_sm=2, split_f=True, phi_k=True,
                        phi_q=True, phi_rows=16),
    "both-halves-phi_q": dict(BC=16, BV=64, num_warps=4, num_stages=1, programs_per_sm=2, phi_q=True),
    # the SWA pass normalizes its branch alone (a second stream on a GPU), rla_combine_kernel adds the RLA branch
    "split-phi_q-overlap": dict(BC=16, BV=32, num_warps=4, num_stages=1, programs_per_sm=2, split_f=True, phi_k=True,
                                phi_q=True, overlap=True),
    "both-halves-overlap": dict(BC=16, BV=64, num_warps=4, num_stages=1, programs_per_sm=2, overlap=True),
    # rot_q: the phi(q) pass also rotates q (without phi_q: a rotation-only pass), so the SWA pass reads no tables
    # (with the totals scan over value slices of 32)
    "split-phi_q-rot_q-scan_bv": dict(BC=16, BV=32, num_warps=4, num_stages=1, programs_per_sm=2, split_f=True,
                                      phi_k=True, phi_q=True, rot_q=True, scan_bv=32),
    # overlap "prio": the RLA kernels on a high-priority stream, the SWA pass alone on the caller's (on a GPU; the
    # CPU runs the same launches in order)
    "both-halves-rot_q-overlap-prio": dict(BC=16, BV=64, num_warps=4, num_stages=1, programs_per_sm=2, rot_q=True,
                                           overlap="prio"),
    # the totals scan over value slices of 16, computing phi(k) and rotating k itself
    "both-halves-scan_bv": dict(BC=16, BV=64, num_warps=4, num_stages=1, programs_per_sm=2, scan_bv=16),
    # rot_pass: the k pre-pass only rotates k; the totals scan and the segment kernel compute phi(k) themselves
    "split-rot_pass-phi_q-rot_q": dict(BC=16, BV=32, num_warps=4, num_stages=1, programs_per_sm=2, split_f=True,
                                       rot_pass=True, phi_q=True, rot_q=True),
}


@pytest.mark.parametrize("variant", list(SEGMENT_CFGS))
def test_segment_design_matches_reference(variant):
    # "segment" design: segment totals + carry, state kept on chip, raw o_rla (or two partials) normalized
    # by the SWA pass. Many segments (seg_len 32: a carry per segment) and one segment (no carry),
    # padded and packed batches, GQA, every feature map, windows 0, inside a segment and past T.
    c = SEGMENT_CFGS[variant]
    for T, (H, Hkv), layout, B, w, fm, seg_len, dtype in (
            (150, (4, 2), "ragged", 3, 9, "softmax", 32, "fp32"),
            (111, (2, 1), "packed", 3, 40, "relu", 32, "fp16"),
            (70, (2, 2), "dense", 1, 0, "identity", 32, "fp32"),
            (63, (4, 1), "dense", 2, 70, "softmax", 32, "fp32"),
            (100, (2, 2), "dense", 1, 17, "softmax", 128, "fp16")):
        c0 = dict(T=T, D=64, heads=(H, Hkv), B=B, layout=layout, dtype=dtype)
        q, k, v, lkw = make_inputs(c0)
        kw = dict(window=w, feature_map=fm, **rattn_extra(T, H, 64))
        before = dict(rla_segment.launch_counts)
        before_x = dict(rla_chunk.launch_counts, **swa_parallel.launch_counts)
        out = rattention_design(q, k, v, scale=None, eps=1e-6, lengths=lkw.get("lengths"),
                                cu_seqlens=lkw.get("cu_seqlens"), design="segment",
                                tuning=dict(segment=c, seg_len=seg_len), **kw)
        assert rla_segment.launch_counts["rla_segment_kernel"] == before["rla_segment_kernel"] + 1
        # rla_phi_kernel launches: the k pass (phi(k), rotation only, or k rotated for a single segment) and the
        # q pass (phi(q) and / or q rotated). rattn_extra always supplies RoPE tables: without them a rotation-only
        # pass would not launch.
        max_len = swa_parallel.SequenceTable(q.shape[0], T, q.device, lkw.get("lengths"), lkw.get("cu_seqlens"),
                                             16).max_len
        k_pass = c.get("phi_k", False) or c.get("rot_pass", False) or max_len <= seg_len
        q_pass = (c.get("phi_q", False) and fm != "identity") or c.get("rot_q", False)
        assert rla_chunk.launch_counts["rla_phi_kernel"] == before_x["rla_phi_kernel"] + k_pass + q_pass, variant
        # which of those passes stored phi, whether the SWA pass rotated q itself, how the totals scan was sliced
        phi_stores = c.get("phi_k", False) + (c.get("phi_q", False) and fm != "identity")
        assert rla_chunk.launch_counts["rla_phi_kernel_phi"] == before_x["rla_phi_kernel_phi"] + phi_stores, variant
        assert swa_parallel.launch_counts["swa_fwd_kernel_rope"] == before_x["swa_fwd_kernel_rope"] + (
            not c.get("rot_q", False)), variant
        slices = 64 // min(c.get("scan_bv") or 64, 64) if max_len > seg_len else 0
        assert (rla_chunk.launch_counts["rla_segment_totals_slices"]
                == before_x["rla_segment_totals_slices"] + slices), variant
        tma = c.get("tma", False) and dtype == "fp16"
        assert rla_segment.launch_counts["rla_segment_kernel_tma"] == before["rla_segment_kernel_tma"] + tma
        ref = rattention_naive(q.float(), k.float(), v.float(), **kw, **lkw).to(q.dtype)
        assert_close(out, ref, TOL[q.dtype], f"{variant} {c0} w={w} {fm} seg_len={seg_len}")


def test_segment_kernel_raw_output_and_partials():
    # the segment kernel alone: raw o_rla, exactly zero for t <= w, and the two partials of split_f sum to it
    T, D, w = 90, 64, 20
    q, k, v, _ = make_inputs(dict(T=T, D=D, heads=(2, 1), B=1, layout="dense", dtype="fp32"))
    seqs = swa_parallel.SequenceTable(1, T, q.device, None, None, 16)
    ref = residual_linear_attention_naive(q, k, v, window=w)
    carry, phi = rla_chunk.rla_segment_carry(k, v, seqs, window=w, feature=0, seg_len=32, block=16, phi_pass=True)
    assert carry.shape == (1, 1, 3, 2 * D, D) and phi.shape == (1, T, 1, 2 * D)
    out = torch.full_like(q, float("nan"))
    rla_segment.launch_rla_segments(q, k, v, out, seqs, window=w, feature=0, cfg=SEGMENT_CFGS["both-halves"],
                                    seg_len=32, carry=carry)
    assert_close(out, ref, 1e-4, "raw segment output")
    assert out[:, : w + 1].abs().max().item() == 0
    parts = torch.full((2,) + tuple(q.shape), float("nan"))
    rla_segment.launch_rla_segments(q, k, v, parts, seqs, window=w, feature=0, cfg=SEGMENT_CFGS["split-phi_k"],
                                    seg_len=32, carry=carry, phi=phi)
    assert_close(parts[0] + parts[1], ref, 1e-4, "split partials")
    with pytest.raises(ValueError, match="segments need the carry"):
        rla_segment.launch_rla_segments(q, k, v, out, seqs, window=w, feature=0, cfg=SEGMENT_CFGS["both-halves"],
                                        seg_len=32, carry=None)
    with pytest.raises(ValueError, match="two partials"):
        rla_segment.launch_rla_segments(q, k, v, out, seqs, window=w, feature=0, cfg=SEGMENT_CFGS["split-phi_k"],
                                        seg_len=32, carry=carry)
    with pytest.raises(ValueError, match="must divide the head dim"):  # else no program would run
        rla_segment.launch_rla_segments(q, k, v, out, seqs, window=w, feature=0,
                                        cfg=dict(SEGMENT_CFGS["both-halves"], BV=2 * D), seg_len=32, carry=carry)
    with pytest.raises(ValueError, match="multiple of the chunk rows"):
        rla_segment.launch_rla_segments(q, k, v, out, seqs, window=w, feature=0, cfg=SEGMENT_CFGS["both-halves"],
                                        seg_len=24, carry=carry)
    with pytest.raises(ValueError, match="does not fit this launch"):  # a carry for another feature map
        rla_segment.launch_rla_segments(q, k, v, out, seqs, window=w, feature=2, cfg=SEGMENT_CFGS["both-halves"],
                                        seg_len=32, carry=carry)
    # a value slice larger than the head dim through the design is capped, not an empty launch
    small = dict(T=40, D=16, heads=(2, 1), B=1, layout="dense", dtype="fp32")
    qs, ks, vs, _ = make_inputs(small)
    out = rattention_design(qs, ks, vs, window=5, rope=None, scale=None, feature_map="softmax", swa_norm_weight=None,
                            rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None, design="segment",
                            tuning=dict(segment=SEGMENT_CFGS["split-full-value"], seg_len=32))
    assert_close(out, rattention_naive(qs, ks, vs, window=5), 1e-4, "BV > D capped")
    with pytest.raises(ValueError, match="overlap must be"):
        rattention_design(qs, ks, vs, window=5, rope=None, scale=None, feature_map="softmax", swa_norm_weight=None,
                          rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None, design="segment",
                          tuning=dict(segment=dict(SEGMENT_CFGS["split-full-value"], overlap="yes"), seg_len=32))


@pytest.mark.parametrize("design", ["fused", "fused_two_pass", "two_kernel", "segment"])
@pytest.mark.parametrize("early_norm,phi", [(False, False), (True, False), (True, True)])
def test_rattention_designs_agree(design, early_norm, phi):
    # every design the H200 sweep may pick as the default (swa/parallel.py RLA_TUNING), with RoPE and norms
    T, H, D = 70, 4, 64
    q, k, v, _ = make_inputs(dict(T=T, D=D, heads=(H, 2), B=1, layout="dense", dtype="fp16"))
    kw = dict(window=9, rope=Rope(D).tables(T, "cpu"), scale=None, feature_map="softmax",
              swa_norm_weight=torch.rand(H, D) + 0.5, rla_norm_weight=torch.rand(H, D) + 0.5, eps=1e-6)
    cfg = dict(swa_parallel.block_config(D, True), early_norm=early_norm)
    swa_cfg = dict(BM=16, BN=16, num_warps=4, num_stages=1)
    state = {}
    if phi:  # phi(k) pre-pass (it also rotates k), read back by the output pass; heads-first grids
        cfg, swa_cfg, state = dict(cfg, phi_k=True, heads_first=True), dict(swa_cfg, heads_first=True), dict(phi_pass=True)
    segment = dict(SEGMENT_CFGS["split-phi_k" if phi else "both-halves"], split_f=early_norm)
    before = rla_chunk.launch_counts["rla_phi_kernel"]
    out = rattention_design(q, k, v, lengths=None, cu_seqlens=None, design=design,
                            tuning=dict(cfg=cfg, swa_cfg=swa_cfg, state=state, segment=segment), **kw)
    assert rla_chunk.launch_counts["rla_phi_kernel"] == before + phi
    ref = rattention_naive(q.float(), k.float(), v.float(), **{a: b for a, b in kw.items() if a != "scale"})
    assert_close(out.float(), ref, TOL[torch.float16], f"{design} early_norm={early_norm} phi={phi}")


def test_bad_arguments_raise():
    q, k, v, _ = make_inputs(dict(T=8, D=64, heads=(1, 1), B=1, layout="dense", dtype="fp32"))
    with pytest.raises(ValueError, match="int window"):
        rattention_triton(q, k, v, window=None)
    q2 = torch.randn(1, 8, 1, 256)
    with pytest.raises(ValueError, match="head dims"):
        residual_linear_attention_triton(q2, q2, q2, window=2)
    with pytest.raises(ValueError, match="head dims"):
        swa_attention_triton(torch.randn(1, 8, 1, 48), torch.randn(1, 8, 1, 48), torch.randn(1, 8, 1, 48), window=2)


def test_dense_batches_take_the_unmasked_path():
    # Dense batches skip the sequence-table loads (DENSE) and, when T is a multiple of BM and the window
    # and BM of BN (EVEN), every bounds mask: the key tiles then end exactly at a block end <= T. Both
    # paths against the reference and against the general path, with pointer and TMA loads; outputs
    # NaN-poisoned, so every row must be written
    H, Hkv, D = 2, 1, 64  # GQA; few heads: each shape runs 4 launches under the interpreter
    for T, w, even in ((64, 0, True), (64, 16, True), (96, 48, True), (96, 40, False), (64, 200, True),
                       (80, 16, False)):
        q, k, v, _ = make_inputs(dict(T=T, D=D, heads=(H, Hkv), B=2, layout="dense", dtype="fp16"))
        ref = swa_attention_naive(q.float(), k.float(), v.float(), window=w).half()
        seqs = swa_parallel.sequence_table(2, T, q.device, None, None, 32)
        for tma in (False, True):
            for general in (False, True):
                cfg = dict(BM=32, BN=16, num_warps=4, num_stages=1, tma=tma, dense=not general)
                before = dict(swa_parallel.launch_counts)
                out = swa_parallel.launch_swa_fwd(q, k, v, torch.full_like(q, float("nan")), seqs, window=min(w, T),
                                                  scale=D ** -0.5, cfg=cfg)
                assert swa_parallel.launch_counts["swa_fwd_kernel_dense"] == before["swa_fwd_kernel_dense"] + (not general)
                assert swa_parallel.launch_counts["swa_fwd_kernel_even"] == before["swa_fwd_kernel_even"] + (
                    even and not general)
                assert_close(out, ref, TOL[torch.float16], f"SWA T={T} w={w} tma={tma} general path={general}")
    # RAttention's SWA pass and the RLA output pass take the same path
    T, w = 64, 16
    q, k, v, _ = make_inputs(dict(T=T, D=D, heads=(H, Hkv), B=2, layout="dense", dtype="fp16"))
    kw = dict(window=w, **rattn_extra(T, H, D))
    before = dict(swa_parallel.launch_counts)
    out = rattention_triton(q, k, v, **kw)
    assert swa_parallel.launch_counts["swa_fwd_kernel_even"] == before["swa_fwd_kernel_even"] + 1
    assert_close(out, rattention_naive(q.float(), k.float(), v.float(), **kw).half(), TOL[torch.float16],
                 "RAttention, dense and even")
    before = dict(swa_parallel.launch_counts)
    out = residual_linear_attention_triton(q, k, v, window=w)
    assert swa_parallel.launch_counts["swa_fwd_kernel_even"] == before["swa_fwd_kernel_even"] + 1
    assert_close(out, residual_linear_attention_naive(q.float(), k.float(), v.float(), window=w).half(),
                 TOL[torch.float16], "RLA, dense and even")


def test_tma_tiles_with_poisoned_padding():
    # TMA tensor-descriptor loads (SWA pass and segment kernel) fetch whole tiles: rows of a neighbouring
    # sequence or of padding arrive too and must be zeroed or masked. Padding here is NaN; windows 0, short,
    # past the sequence; the SWA alone and RAttention ("segment" with both kernels on TMA tiles).
    tma_swa = dict(BM=32, BN=16, num_warps=4, num_stages=1, tma=True)
    tma_seg = dict(BC=16, BV=32, num_warps=4, num_stages=1, programs_per_sm=2, split_f=True, phi_k=True, tma=True)
    for T, (H, Hkv), layout, B, w in ((70, (4, 2), "ragged", 3, 9), (90, (2, 1), "packed", 3, 0),
                                      (50, (2, 2), "ragged", 2, 80)):
        c = dict(T=T, D=64, heads=(H, Hkv), B=B, layout=layout, dtype="fp16")
        q, k, v, lkw = make_inputs(c)
        valid = torch.zeros(q.shape[0], T, dtype=torch.bool)
        if layout == "ragged":
            for b, n in enumerate(lkw["lengths"].tolist()):
                valid[b, :n] = True
        else:
            valid[0, : int(lkw["cu_seqlens"][-1])] = True
        refs = {}
        kw = dict(window=w, **rattn_extra(T, H, 64))
        refs["swa"] = swa_attention_naive(q.float(), k.float(), v.float(), window=w, **lkw).half()
        refs["rattn"] = rattention_naive(q.float(), k.float(), v.float(), **kw, **lkw).half()
        for x in (q, k, v):
            x[~valid] = float("nan")
        before = dict(swa_parallel.launch_counts), dict(rla_segment.launch_counts)
        seqs = swa_parallel.sequence_table(q.shape[0], T, q.device, lkw.get("lengths"), lkw.get("cu_seqlens"), 32)
        out = swa_parallel.launch_swa_fwd(q, k, v, torch.zeros_like(q), seqs, window=w, scale=64 ** -0.5, cfg=tma_swa)
        assert_close(out, refs["swa"], TOL[torch.float16], f"TMA SWA {c} w={w}")
        out = rattention_design(q, k, v, scale=None, eps=1e-6, feature_map="softmax", lengths=lkw.get("lengths"),
                                cu_seqlens=lkw.get("cu_seqlens"), design="segment",
                                tuning=dict(segment=tma_seg, seg_len=32, swa_cfg=tma_swa), **kw)
        assert_close(out, refs["rattn"], TOL[torch.float16], f"TMA RAttention {c} w={w}")
        out = rattention_design(q, k, v, scale=None, eps=1e-6, feature_map="softmax", lengths=lkw.get("lengths"),
                                cu_seqlens=lkw.get("cu_seqlens"), design="segment",
                                tuning=dict(segment=dict(tma_seg, overlap=True), seg_len=32, swa_cfg=tma_swa), **kw)
        assert_close(out, refs["rattn"], TOL[torch.float16], f"TMA RAttention, SWA pass alone + combine {c} w={w}")
        assert swa_parallel.launch_counts["swa_fwd_kernel_tma"] == before[0]["swa_fwd_kernel_tma"] + 3
        assert rla_segment.launch_counts["rla_segment_kernel_tma"] == before[1]["rla_segment_kernel_tma"] + 2


@pytest.mark.parametrize("prefetch,tma", [(1, False), (2, True)])  # both modes, both load paths (CI time)
def test_swa_pass_prefetches_the_rla_rows(prefetch, tma):
    # swa_cfg "prefetch_add": the SWA pass loads the rows it adds (the raw o_rla of "segment": two partials or,
    # with the halves in one program, one tensor; the normalized RLA branch of "two_kernel") before its key
    # loop, held in fp32 (1) or in the rows' own dtype (2); with the caller's fp32 RoPE tables (native_tables)
    T, H, Hkv, D, w = 90, 4, 2, 64, 13
    q, k, v, lkw = make_inputs(dict(T=T, D=D, heads=(H, Hkv), B=3, layout="ragged", dtype="fp16"))
    kw = dict(window=w, feature_map="softmax", **rattn_extra(T, H, D))
    ref = rattention_naive(q.float(), k.float(), v.float(), **kw, **lkw).half()
    swa_cfg = dict(BM=16, BN=16, num_warps=4, num_stages=1, tma=tma, prefetch_add=prefetch)
    for design, segment in (("segment", SEGMENT_CFGS["split-phi_q"]), ("segment", SEGMENT_CFGS["both-halves"]),
                            ("two_kernel", SEGMENT_CFGS["split-phi_q"])):
        before = dict(swa_parallel.launch_counts)
        out = rattention_design(q, k, v, scale=None, eps=1e-6, lengths=lkw["lengths"], cu_seqlens=None, design=design,
                                tuning=dict(segment=segment, seg_len=32, swa_cfg=swa_cfg, native_tables=True), **kw)
        assert swa_parallel.launch_counts["swa_fwd_kernel_tma"] == before["swa_fwd_kernel_tma"] + tma
        assert swa_parallel.launch_counts["swa_fwd_kernel_prefetch"] == before["swa_fwd_kernel_prefetch"] + 1
        assert_close(out, ref, TOL[torch.float16], f"{design} {segment} prefetch_add={prefetch} tma={tma}")
    # fp16 inputs keep the raw o_rla in fp32 (its sums can pass 65504): prefetching must not round it to fp16
    g = torch.Generator().manual_seed(5)
    q, k = ((torch.rand(1, 64, h, D, generator=g) * 8).half() for h in (2, 1))  # relu features ~4, 64 of them
    v = (torch.rand(1, 64, 1, D, generator=g) * 8 + 20).half()  # raw sums reach ~1e6
    kw = dict(window=3, feature_map="relu")
    out = rattention_design(q, k, v, rope=None, scale=None, eps=1e-6, swa_norm_weight=None, rla_norm_weight=None,
                            lengths=None, cu_seqlens=None, design="segment",
                            tuning=dict(segment=SEGMENT_CFGS["split-phi_q"], seg_len=32, swa_cfg=swa_cfg), **kw)
    assert_close(out, rattention_naive(q.float(), k.float(), v.float(), **kw).half(), TOL[torch.float16],
                 f"large fp16 sums, prefetch_add={prefetch} tma={tma}")
    with pytest.raises(ValueError, match="prefetch_add must be"):
        rattention_design(q, k, v, rope=None, scale=None, eps=1e-6, swa_norm_weight=None, rla_norm_weight=None,
                          lengths=None, cu_seqlens=None, design="segment",
                          tuning=dict(segment=SEGMENT_CFGS["split-phi_q"], seg_len=32, swa_cfg=dict(swa_cfg,
                                                                                                  prefetch_add=3)),
                          **kw)
