"""Decode: the local-layer step (ring buffer + RLA state) and the global-layer `kv_decode`
(rattn_eval/kernels/decode/README.md). The references against a full forward, the Triton kernels against
the references on the CPU under the interpreter (TRITON_INTERPRET=1, set in conftest; fp32 and fp16), and
on a GPU (marked gpu): bf16 against fp32 references.
"""

import copy

import pytest
import torch
import triton
from closeness import assert_close
from prefill_cases import inputs

from rattn_eval.kernels import (
    LocalCache, Rope, build_local_cache, empty_local_cache, feature_dim, kv_decode, kv_decode_naive, launches,
    local_decode_step, local_decode_step_naive, local_prefill,
)
from rattn_eval.kernels import triton_common
from rattn_eval.kernels.decode import fused_recurrent, kv_split
from rattn_eval.kernels.decode.fused_recurrent import local_decode_step_triton

# Triton's interpreter reads runtime int arguments (the ring length) through a numpy call numpy deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning")


def assert_cache_equal(got: LocalCache, ref: LocalCache, tol):
    assert torch.equal(got.pos, ref.pos), f"pos {got.pos.tolist()} != {ref.pos.tolist()}"
    assert torch.equal(got.k.float(), ref.k.float()), "ring k differs"
    assert torch.equal(got.v.float(), ref.v.float()), "ring v differs"
    assert (got.state is None) == (ref.state is None)
    if ref.state is not None:
        assert got.state.dtype == torch.float32
        assert_close(got.state, ref.state, tol, "state")


# --- the references -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("L,w,kind", [(5, 8, "rattn"), (30, 8, "rattn"), (30, 8, "swa"), (12, 0, "rattn")])
def test_reference_prefill_then_decode_equals_forward(L, w, kind):
    n = 11
    H, Hkv, D = 4, 2, 16
    q, k, v = inputs(L + n, H, Hkv, D, B=2)
    rope = Rope(D, theta=1000.0)
    gs, gr = torch.rand(H, D) + 0.5, torch.rand(H, D) + 0.5
    norms = dict(swa_norm_weight=gs, rla_norm_weight=gr) if kind == "rattn" else {}
    full, _ = local_prefill(q, k, v, window=w, kind=kind, rope=rope, backend="torch", **norms)
    out, cache = local_prefill(q[:, :L], k[:, :L], v[:, :L], window=w, kind=kind, rope=rope, backend="torch", **norms)
    steps = [local_decode_step(q[:, t], k[:, t], v[:, t], cache, rope=rope, backend="torch", **norms) for t in range(L, L + n)]
    got = torch.cat([out, torch.stack(steps, 1)], 1)
    assert_close(got, full, 1e-5, "prefill + decode", row_tol=1e-4)


def test_reference_decode_batch_at_different_positions():
    H, Hkv, D, w = 2, 1, 8, 4
    rope = Rope(D)
    lens = [3, 9]
    seqs = [inputs(14, H, Hkv, D, seed=s) for s in range(2)]
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
        assert_close(torch.stack(outs[b]), ref[0, lens[b] :], 1e-5, f"row {b}", row_tol=1e-4)


def test_reference_cache_size_is_analytic_and_context_independent():
    H, Hkv, D, w = 4, 2, 16, 32
    sizes = []
    for T in (64, 1024):
        q, k, v = inputs(T, H, Hkv, D, B=2)
        c = build_local_cache(k, v, window=w)
        sizes.append(c.nbytes())
        assert c.nbytes() == c.analytic_nbytes(2, w, Hkv, D, torch.float32)
    assert sizes[0] == sizes[1]
    e = empty_local_cache(2, w, Hkv, D, dtype=torch.float32, device="cpu", kind="swa")
    assert e.nbytes() == e.analytic_nbytes(2, w, Hkv, D, torch.float32, kind="swa")



# --- Triton on the CPU interpreter (local layers) ----------------------------------------------------------

def lengths_around_window(B, w):
    """Prompt lengths whose next steps cross the window edge: positions w-1, w, w+1, and far beyond."""
    if B == 1:
        return [w]
    return [max(w - 1, 0), w + 1, 3 * w + 5]


def run_steps(B, w, H, Hkv, D, kind, fm, dtype, steps, seed=0, lengths=None, rope_theta=1000.0):
    """Prefill caches for rows at different positions, then compare `steps` Triton steps with the reference.

    The reference runs in fp32 on the same (dtype-rounded) values, so for fp16 only the Triton side rounds.
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = lengths_around_window(B, w) if lengths is None else lengths
    T = max(max(lengths), 1)
    k = torch.randn(B, T, Hkv, D, generator=gen).to(dtype)
    v = torch.randn(B, T, Hkv, D, generator=gen).to(dtype)
    lens = torch.tensor(lengths)
    got = build_local_cache(k, v, window=w, kind=kind, feature_map=fm, lengths=lens)
    ref = build_local_cache(k.float(), v.float(), window=w, kind=kind, feature_map=fm, lengths=lens)
    rope = Rope(D, theta=rope_theta)
    norms = dict(swa_norm_weight=torch.rand(H, D, generator=gen) + 0.5,
                 rla_norm_weight=torch.rand(H, D, generator=gen) + 0.5)
    tol = 1e-4 if dtype == torch.float32 else 2e-3
    for step in range(steps):
        q = torch.randn(B, H, D, generator=gen).to(dtype)
        kn = torch.randn(B, Hkv, D, generator=gen).to(dtype)
        vn = torch.randn(B, Hkv, D, generator=gen).to(dtype)
        out = local_decode_step_triton(q, kn, vn, got, rope=rope, **norms)
        exp = local_decode_step_naive(q.float(), kn.float(), vn.float(), ref, rope=rope, **norms)
        assert out.dtype == dtype and out.shape == (B, H, D)
        assert_close(out, exp, tol, f"output at step {step}, positions {(ref.pos - 1).tolist()}")
    assert_cache_equal(got, ref, 1e-5 if dtype == torch.float32 else 1e-4)


# (B, w, D, H, Hkv, kind, feature_map, dtype): a pairwise-covering subset of
# B {1, 3} x w {0, 1, 7, 64} x D {64, 128} x H/Hkv {1, 4} x kind x feature map x {fp32, fp16}, then groups of
# 3, 5, 8 and 16 query heads (the tensor-core tiles pad them to 16 rows) and D = 48.
CASES = [
    (3, 0, 64, 4, 1, "rattn", "softmax", torch.float32),
    (1, 0, 128, 1, 1, "swa", "softmax", torch.float32),
    (3, 1, 128, 4, 4, "rattn", "relu", torch.float32),
    (1, 1, 64, 4, 1, "rattn", "identity", torch.float16),
    (3, 7, 64, 4, 4, "swa", "softmax", torch.float16),
    (3, 7, 128, 4, 1, "rattn", "identity", torch.float32),
    (1, 7, 64, 1, 1, "rattn", "softmax", torch.float32),
    (3, 7, 64, 2, 1, "rattn", "relu", torch.float16),
    (3, 64, 64, 4, 1, "rattn", "softmax", torch.float32),
    (1, 64, 128, 4, 4, "rattn", "softmax", torch.float16),
    (3, 64, 128, 4, 1, "swa", "softmax", torch.float32),
    (3, 7, 64, 6, 2, "rattn", "softmax", torch.float32),  # a group of 3 query heads (not a power of two)
    (3, 15, 48, 10, 2, "rattn", "softmax", torch.float32),  # D = 48 (halves of 24 in 32-wide tiles), groups of 5
    (3, 16, 64, 8, 1, "swa", "softmax", torch.float16),  # a group of 8
    (3, 17, 64, 16, 1, "rattn", "relu", torch.float32),  # a group of 16: the whole padded tile is real heads
]


def case_id(c):
    B, w, D, H, Hkv, kind, fm, dt = c
    return f"B{B}-w{w}-D{D}-H{H}kv{Hkv}-{kind}" + (f"-{fm}" if kind == "rattn" else "") + f"-{str(dt)[6:]}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_triton_step_matches_reference(case):
    B, w, D, H, Hkv, kind, fm, dtype = case
    run_steps(B, w, H, Hkv, D, kind, fm, dtype, steps=3)


@pytest.mark.parametrize("case", [(3, 64, 128, 4, 1, "rattn", "softmax", torch.float32),
                                  (3, 64, 64, 2, 1, "swa", "softmax", torch.float32),
                                  (3, 64, 64, 6, 2, "rattn", "softmax", torch.float32)], ids=["rattn", "swa", "rattn-G3"])
@pytest.mark.parametrize("target", [1, 4, 64], ids=["one-split", "4-programs", "split-per-block"])
@pytest.mark.parametrize("blocks", ["gpu", "smallest"])
def test_gpu_block_sizes_many_blocks(case, target, blocks, monkeypatch):
    """With the GPU's blocks, or the smallest a tensor-core product takes (16 slots / feature rows), the slot
    and feature loops run over several blocks (w=64: 5 slot blocks; 8 or 16 feature blocks at D=128), kept
    in one program (target 1) or split over several programs and combined (flash-decoding). With a split per
    block the merge reads two splits a round: several rounds, the last part-filled for an odd count."""
    table = fused_recurrent._BLOCKS["gpu"] if blocks == "gpu" else {"block_s": 16, "block_f": 16}
    monkeypatch.setitem(fused_recurrent._BLOCKS, "interpreter", table)
    monkeypatch.setattr(fused_recurrent, "_SPLIT_TARGET", target)
    B, w, D, H, Hkv, kind, fm, dtype = case
    if target == 64:
        monkeypatch.setattr(fused_recurrent, "_MERGE_TILE", 2 * triton.next_power_of_2(H // Hkv) * D)
    run_steps(B, w, H, Hkv, D, kind, fm, dtype, steps=2, seed=7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_head_dim_256_with_state(dtype):
    """Gemma-3-shaped RAttention heads (D = 256): the state's value columns in two slices of 128; GQA, rows
    below, at and past the window, softmax features."""
    run_steps(3, 7, 4, 2, 256, "rattn", "softmax", dtype, steps=3, seed=8)


def test_head_dim_256_gpu_blocks(monkeypatch):
    """D = 256 with the GPU's blocks: 16 blocks of 32 feature rows per value slice, in 4 feature splits."""
    monkeypatch.setitem(fused_recurrent._BLOCKS, "interpreter", fused_recurrent._BLOCKS["gpu"])
    monkeypatch.setattr(fused_recurrent, "_SPLIT_TARGET", 8)
    run_steps(1, 7, 2, 1, 256, "rattn", "softmax", torch.float32, steps=2, seed=9, lengths=[8])


def test_split_counts():
    """The window and state splits cover every row exactly once, in whole blocks."""
    for n, block, programs, target in [(65, 8, 3, 64), (513, 4, 8, 264), (513, 64, 1024, 264), (1, 1, 1, 4), (256, 32, 2, 7)]:
        per, count = fused_recurrent._splits(n, block, programs, target)
        assert per % block == 0 and (count - 1) * per < n <= count * per, (n, block, programs, target)
    assert fused_recurrent._splits(513, 4, 8, 264)[1] == 33  # 8 programs -> 33 splits of 16 slots
    assert fused_recurrent._splits(513, 64, 1024, 264)[1] == 1  # enough programs already: no split


def test_many_steps_from_empty_cache():
    """From position 0 through several wraps of a small ring: every step, then the whole cache."""
    B, w, H, Hkv, D = 2, 3, 4, 2, 64
    got = empty_local_cache(B, w, Hkv, D, dtype=torch.float32, device="cpu", feature_map="relu")
    ref = copy.deepcopy(got)
    got.pos[1] = 5  # rows at different positions: ring contents start as zeros, which is valid
    ref.pos[1] = 5
    gen = torch.Generator().manual_seed(1)
    rope = Rope(D)
    for step in range(11):
        q, kn, vn = (torch.randn(B, n, D, generator=gen) for n in (H, Hkv, Hkv))
        out = local_decode_step_triton(q, kn, vn, got, rope=rope)
        exp = local_decode_step_naive(q, kn, vn, ref, rope=rope)
        assert_close(out, exp, 1e-4, f"step {step}")
    assert_cache_equal(got, ref, 1e-5)


def test_arbitrary_cache_at_large_positions():
    """Any cache content is a valid input: random ring and state, positions up to ~200k (large RoPE angles)."""
    B, w, H, Hkv, D = 3, 5, 4, 2, 64
    gen = torch.Generator().manual_seed(2)
    F = feature_dim(D, "softmax")
    got = LocalCache(torch.randn(B, w + 1, Hkv, D, generator=gen), torch.randn(B, w + 1, Hkv, D, generator=gen),
                     torch.randn(B, Hkv, F, D, generator=gen), torch.tensor([3, 131_071, 199_999]), w, "softmax")
    ref = copy.deepcopy(got)
    rope = Rope(D, theta=10000.0)
    for step in range(2):
        q, kn, vn = (torch.randn(B, n, D, generator=gen) for n in (H, Hkv, Hkv))
        assert_close(local_decode_step_triton(q, kn, vn, got, rope=rope, scale=0.3),
                     local_decode_step_naive(q, kn, vn, ref, rope=rope, scale=0.3), 1e-4, f"step {step}")
    assert_cache_equal(got, ref, 1e-5)


@pytest.mark.parametrize("L,w,kind", [(5, 8, "rattn"), (40, 8, "rattn"), (40, 8, "swa"), (9, 8, "rattn")],
                         ids=["L5-w8-rattn", "L40-w8-rattn", "L40-w8-swa", "L9-w8-rattn"])
def test_prefill_then_triton_decode_equals_forward(L, w, kind):
    """prefill(L) (torch) + n Triton steps == one forward over L + n tokens, RoPE on."""
    n = 6
    B, H, Hkv, D = 2, 4, 2, 64
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(B, L + n, H, D, generator=gen)
    k = torch.randn(B, L + n, Hkv, D, generator=gen)
    v = torch.randn(B, L + n, Hkv, D, generator=gen)
    rope = Rope(D, theta=1000.0)
    norms = dict(swa_norm_weight=torch.rand(H, D, generator=gen) + 0.5,
                 rla_norm_weight=torch.rand(H, D, generator=gen) + 0.5) if kind == "rattn" else {}
    full, _ = local_prefill(q, k, v, window=w, kind=kind, rope=rope, backend="torch", **norms)
    _, cache = local_prefill(q[:, :L], k[:, :L], v[:, :L], window=w, kind=kind, rope=rope, backend="torch", **norms)
    steps = [local_decode_step(q[:, t], k[:, t], v[:, t], cache, rope=rope, backend="triton", **norms)
             for t in range(L, L + n)]
    assert_close(torch.stack(steps, 1), full[:, L:], 1e-4, "decoded tokens")


def test_triton_path_launched():
    B, w, H, Hkv, D = 1, 2, 1, 1, 64
    cache = empty_local_cache(B, w, Hkv, D, dtype=torch.float32, device="cpu")
    before_t, before_r = launches["triton.decode"], launches["torch.decode"]
    q, kn, vn = torch.randn(B, H, D), torch.randn(B, Hkv, D), torch.randn(B, Hkv, D)
    local_decode_step(q, kn, vn, cache, backend="triton")
    assert launches["triton.decode"] == before_t + 1
    assert launches["torch.decode"] == before_r
    assert cache.pos.tolist() == [1]


@pytest.mark.parametrize("kind,dtype", [("rattn", torch.float32), ("swa", torch.float16)])
def test_cache_size_analytic_and_context_independent(kind, dtype):
    B, w, Hkv, D = 2, 16, 1, 8
    sizes = []
    gen = torch.Generator().manual_seed(4)
    for T in (1024, 16384):
        k = torch.randn(B, T, Hkv, D, generator=gen).to(dtype)
        v = torch.randn(B, T, Hkv, D, generator=gen).to(dtype)
        cache = build_local_cache(k, v, window=w, kind=kind)
        analytic = LocalCache.analytic_nbytes(B, w, Hkv, D, dtype, kind=kind)
        assert cache.nbytes() == analytic
        q = torch.randn(B, 2, D).to(dtype)
        local_decode_step_triton(q, k[:, 0], v[:, 0], cache)
        assert cache.nbytes() == analytic, "a decode step must not grow the cache"
        sizes.append(cache.nbytes())
    assert sizes[0] == sizes[1]


DECODE_STEPS = {"torch": local_decode_step_naive, "triton": local_decode_step_triton}


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_inputs_raise_and_leave_the_cache_alone(backend):
    """Both backends (and the public entry point) refuse bad inputs with one clear ValueError before
    writing anything: ring, state and pos are bit-for-bit as they were."""
    cache = empty_local_cache(2, 3, 1, 64, dtype=torch.float32, device="cpu")
    cache.k.normal_(), cache.v.normal_(), cache.state.normal_()
    before = copy.deepcopy(cache)
    q, kv = torch.randn(2, 4, 64), torch.randn(2, 1, 64)
    bad = {
        "cache ring": (q, torch.randn(2, 2, 64), torch.randn(2, 2, 64), {}),
        "H % Hkv": (torch.randn(2, 3, 64), torch.randn(2, 2, 64), torch.randn(2, 2, 64), {}),
        "Rope of head dim": (q, kv, kv, {"rope": Rope(32)}),
        "share one dtype": (q, kv.half(), kv.half(), {}),
        "swa_norm_weight must be": (q, kv, kv, {"swa_norm_weight": torch.ones(64)}),
        "cache ring is": (q[:1], kv[:1], kv[:1], {}),
    }
    for match, (qq, kk, vv, kw) in bad.items():
        for step in (DECODE_STEPS[backend], lambda *a, **k: local_decode_step(*a, backend=backend, **k)):
            with pytest.raises(ValueError, match=match):
                step(qq, kk, vv, cache, **kw)
    wide = LocalCache(cache.k.double(), cache.v.double(), cache.state, cache.pos, cache.window)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        DECODE_STEPS[backend](q, kv, kv, wide)
    broadcast = {"pos": LocalCache(cache.k, cache.v, cache.state, cache.pos[:1].expand(2), cache.window),
                 "state": LocalCache(cache.k, cache.v, cache.state[:1].expand(2, -1, -1, -1), cache.pos, cache.window),
                 "ring k": LocalCache(cache.k[:, :1].expand(-1, 4, -1, -1), cache.v, cache.state, cache.pos, 3)}
    for name, shared in broadcast.items():
        with pytest.raises(ValueError, match=f"cache's {name} is a broadcast"):
            DECODE_STEPS[backend](q, kv, kv, shared)
    # views whose entries share memory without a zero stride, and one tensor as both rings
    k, st = cache.k, cache.state
    aliased = {"ring k is a view": k.as_strided(k.shape, (k.stride(1),) + k.stride()[1:]),
               "state is a view": st.as_strided(st.shape, st.stride()[:2] + (1, 1))}
    for match, view in aliased.items():
        name = match.split(" is")[0]
        overlapping = LocalCache(view if name == "ring k" else cache.k, cache.v, view if name == "state" else st,
                                 cache.pos, cache.window)
        with pytest.raises(ValueError, match=f"cache's {match} whose entries may share memory"):
            DECODE_STEPS[backend](q, kv, kv, overlapping)
    with pytest.raises(ValueError, match="ring k and ring v are one tensor"):
        DECODE_STEPS[backend](q, kv, kv, LocalCache(cache.k, cache.k, st, cache.pos, cache.window))
    assert_cache_equal(cache, before, 0.0)
    assert torch.equal(cache.state, before.state)


def test_fp32_activations_on_a_16_bit_ring_stay_fp32():
    """fp32 q / k / v against an fp16 ring: only the ring is rounded (k / v as it stores them), the query and
    the products stay in fp32, so the step matches the fp32 reference run on the same rounded ring at 1e-4."""
    gen = torch.Generator().manual_seed(14)
    B, w, H, Hkv, D = 3, 20, 8, 2, 64
    ring_k, ring_v = (torch.randn(B, w + 1, Hkv, D, generator=gen).half() for _ in range(2))
    got = LocalCache(ring_k, ring_v, torch.randn(B, Hkv, 2 * D, D, generator=gen), torch.tensor([3, 21, 1000]), w)
    ref = LocalCache(got.k.float(), got.v.float(), got.state.clone(), got.pos.clone(), w)
    for step in range(2):
        q, kn, vn = (torch.randn(B, n, D, generator=gen) for n in (H, Hkv, Hkv))
        out = local_decode_step_triton(q, kn, vn, got, rope=Rope(D))
        exp = local_decode_step_naive(q, kn.half().float(), vn.half().float(), ref, rope=Rope(D))
        assert out.dtype == torch.float32
        assert_close(out, exp, 1e-4, f"step {step}")
    assert_cache_equal(got, ref, 1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_negative_position(backend):
    """A damaged cache with a negative position: the public step raises on the CPU (the check is free
    there); the backends themselves (what runs on a GPU, where checking costs a sync per step) give
    that row NaN and leave its ring and state alone, and the other rows are computed as usual."""
    B, w, H, Hkv, D = 2, 4, 4, 2, 64
    gen = torch.Generator().manual_seed(5)
    F = feature_dim(D, "softmax")
    cache = LocalCache(torch.randn(B, w + 1, Hkv, D, generator=gen), torch.randn(B, w + 1, Hkv, D, generator=gen),
                       torch.randn(B, Hkv, F, D, generator=gen), torch.tensor([-3, 9]), w, "softmax")
    q, kn, vn = (torch.randn(B, n, D, generator=gen) for n in (H, Hkv, Hkv))
    with pytest.raises(ValueError, match="non-negative"):
        local_decode_step(q, kn, vn, cache, rope=Rope(D), backend=backend)
    assert cache.pos.tolist() == [-3, 9]
    good = cache.select(torch.tensor([1]))
    before = copy.deepcopy(cache)
    out = DECODE_STEPS[backend](q, kn, vn, cache, rope=Rope(D))
    assert torch.isnan(out[0]).all(), "the row at a negative position must come out NaN"
    assert torch.equal(cache.k[0], before.k[0]) and torch.equal(cache.v[0], before.v[0]), "its ring was written"
    assert torch.equal(cache.state[0], before.state[0]), "its state was changed"
    exp = local_decode_step_naive(q[1:], kn[1:], vn[1:], good, rope=Rope(D))
    assert_close(out[1:], exp, 1e-4, "the row at a valid position")
    assert torch.equal(cache.k[1], good.k[0]) and torch.equal(cache.v[1], good.v[0])
    assert_close(cache.state[1], good.state[0], 1e-5, "state of the row at a valid position")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind", ["rattn", "swa"])
def test_unfilled_slots_may_hold_anything(backend, kind):
    """Slots not filled yet (position < window) are masked: NaN there must not reach the output or the
    state (0 * NaN through a masked weight or a fold that does not happen)."""
    B, w, H, Hkv, D = 2, 8, 2, 1, 64
    clean = empty_local_cache(B, w, Hkv, D, dtype=torch.float32, device="cpu", kind=kind)
    gen = torch.Generator().manual_seed(6)
    clean.pos.copy_(torch.tensor([3, 0]))
    for b, n in enumerate(clean.pos.tolist()):
        clean.k[b, :n], clean.v[b, :n] = torch.randn(2, n, Hkv, D, generator=gen)
    poisoned = copy.deepcopy(clean)
    for b, n in enumerate(clean.pos.tolist()):
        poisoned.k[b, n:], poisoned.v[b, n:] = float("nan"), float("inf")
    for step in range(3):
        q, kn, vn = (torch.randn(B, n, D, generator=gen) for n in (H, Hkv, Hkv))
        exp = local_decode_step_naive(q, kn, vn, clean, rope=Rope(D))
        got = DECODE_STEPS[backend](q, kn, vn, poisoned, rope=Rope(D))
        assert_close(got, exp, 1e-4, f"step {step}")
    if kind == "rattn":
        assert torch.equal(poisoned.state, clean.state), "the state took in a slot that never left the window"


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind", ["rattn", "swa"])
def test_empty_batch(backend, kind):
    cache = empty_local_cache(0, 8, 2, 64, dtype=torch.float32, device="cpu", kind=kind)
    out = DECODE_STEPS[backend](torch.randn(0, 4, 64), torch.randn(0, 2, 64), torch.randn(0, 2, 64), cache, rope=Rope(64))
    assert out.shape == (0, 4, 64)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_kv_decode_empty_batch(backend):
    out = kv_decode(torch.randn(0, 4, 64), torch.randn(0, 10, 2, 64), torch.randn(0, 10, 2, 64),
                    torch.zeros(0, dtype=torch.long), backend=backend)
    assert out.shape == (0, 4, 64)


# --- Triton on the CPU interpreter (global layers: kv_decode) ------------------------------------------------

@pytest.mark.parametrize("case", [
    # B, S, H, Hkv, D, positions
    (3, 200, 4, 1, 256, [0, 57, 199]),
    (2, 131, 8, 2, 64, [130, 3]),
    (1, 40, 2, 2, 128, [17]),
    (2, 150, 6, 2, 64, [149, 70]),
    (1, 140, 6, 1, 64, [139]),
], ids=["gemma-like", "gqa-d64", "mha-d128", "group-3", "group-6"])
@pytest.mark.parametrize("target", [1, 4, 1000], ids=["one-split", "4-programs", "many-splits"])
def test_kv_decode_matches_reference(case, target, monkeypatch):
    """Keys past each row's position (here random, not zeros) must be ignored; every split count agrees."""
    monkeypatch.setattr(kv_split, "_SPLIT_TARGET", target)
    B, S, H, Hkv, D, positions = case
    if target == 1000:  # the merge then reads two splits a round: several rounds where there are 3+ splits
        monkeypatch.setattr(fused_recurrent, "_MERGE_TILE", 2 * triton.next_power_of_2(H // Hkv) * D)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(B, H, D, generator=gen)
    k = torch.randn(B, S, Hkv, D, generator=gen)
    v = torch.randn(B, S, Hkv, D, generator=gen)
    pos = torch.tensor(positions)
    exp = kv_decode_naive(q, k, v, pos, scale=0.07)
    before = launches["triton.kv_decode"]
    got = kv_decode(q, k, v, pos, scale=0.07, backend="triton")
    assert launches["triton.kv_decode"] == before + 1
    assert_close(got, exp, 1e-5, "kv decode")
    # unfilled slots may hold NaN (a cache from torch.empty): neither path may let them through
    kn, vn = k.clone(), v.clone()
    for b, p in enumerate(positions):
        kn[b, p + 1:] = float("nan")
        vn[b, p + 1:] = float("nan")
    assert_close(kv_decode_naive(q, kn, vn, pos, scale=0.07), exp, 1e-6, "reference with NaN slots")
    assert_close(kv_decode(q, kn, vn, pos, scale=0.07, backend="triton"), exp, 1e-5, "kv decode with NaN slots")
    # the reference itself: explicit softmax over the visible keys of each row
    for b, p in enumerate(positions):
        kk = k[b, : p + 1].repeat_interleave(H // Hkv, dim=1)  # (p+1, H, D)
        vv = v[b, : p + 1].repeat_interleave(H // Hkv, dim=1)
        att = torch.softmax(torch.einsum("hd,shd->hs", q[b], kk) * 0.07, dim=-1)
        assert_close(exp[b], torch.einsum("hs,shd->hd", att, vv), 1e-5, f"reference row {b}")
    # a row at a position outside the cache reads no key: every split empty, the merge gives NaN, not a number
    bad = pos.clone()
    bad[0] = -1
    out = kv_split.kv_decode_triton(q, k, v, bad, scale=0.07)
    assert torch.isnan(out[0]).all()
    assert_close(out[1:], exp[1:], 1e-5, "rows beside a bad one")


def test_kv_decode_errors():
    q, kv, pos = torch.randn(2, 4, 64), torch.randn(2, 10, 3, 64), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="H % Hkv"):
        kv_decode(q, kv, kv, pos, backend="triton")
    with pytest.raises(ValueError, match="dtype"):
        kv_decode(q, torch.randn(2, 10, 2, 64).half(), torch.randn(2, 10, 2, 64).half(), pos, backend="triton")
    empty = torch.randn(2, 0, 2, 64)
    for call in (lambda: kv_decode(q, empty, empty, pos, backend="triton"),
                 lambda: kv_split.kv_decode_triton(q, empty, empty, pos)):
        with pytest.raises(ValueError, match="at least one position"):
            call()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_kv_decode_positions_outside_the_cache(backend):
    """pos < 0 or >= S: the public op raises on the CPU; the backends (what runs on a GPU, without a sync
    per step) give that row NaN, never read past the cache, and compute the other rows as usual."""
    gen = torch.Generator().manual_seed(5)
    B, S, H, Hkv, D = 3, 20, 4, 2, 64
    q = torch.randn(B, H, D, generator=gen)
    k = torch.randn(B, S, Hkv, D, generator=gen)
    v = torch.randn(B, S, Hkv, D, generator=gen)
    pos = torch.tensor([S, 7, -1])
    with pytest.raises(ValueError, match=r"in \[0, 19\]"):
        kv_decode(q, k, v, pos, backend=backend)
    impl = kv_decode_naive if backend == "torch" else kv_split.kv_decode_triton
    got = impl(q, k, v, pos)
    assert torch.isnan(got[0]).all() and torch.isnan(got[2]).all(), "rows at positions outside the cache must be NaN"
    assert_close(got[1:2], kv_decode_naive(q[1:2], k[1:2], v[1:2], pos[1:2]), 1e-5, "the row at a valid position")



def test_kv_decode_leaves_its_counters_at_zero(monkeypatch):
    """The splits of a pair count themselves on a counter and the last one merges (one launch per call):
    after calls split over several programs, at rows of different lengths, every counter is back at zero,
    so the next call (or a replayed CUDA graph) starts clean, and each call gives the reference's output."""
    monkeypatch.setattr(kv_split, "_SPLIT_TARGET", 16)
    monkeypatch.setattr(triton_common, "_counters", {})
    gen = torch.Generator().manual_seed(11)
    B, S, H, Hkv, D = 3, 150, 4, 2, 64
    k, v = torch.randn(B, S, Hkv, D, generator=gen), torch.randn(B, S, Hkv, D, generator=gen)
    for pos in ([149, 3, 20], [0, 64, 130], [-1, 5, S]):
        q, pos = torch.randn(B, H, D, generator=gen), torch.tensor(pos)
        got = kv_split.kv_decode_triton(q, k, v, pos)
        ok = (pos >= 0) & (pos < S)  # a position outside the cache: that row NaN, the others computed
        assert torch.isnan(got[~ok]).all()
        assert_close(got[ok], kv_decode_naive(q[ok], k[ok], v[ok], pos[ok]), 1e-5, f"pos {pos.tolist()}")
        buffers = triton_common._counters["cpu"]
        assert buffers and all(int(b.abs().sum()) == 0 for b in buffers), "a counter was left non-zero"


@pytest.mark.parametrize("kind,D", [("rattn", 64), ("swa", 64), ("rattn", 256)])
def test_local_step_leaves_its_counters_at_zero(kind, D, monkeypatch):
    """The step is one launch: its splits count themselves on their pair's counter, the pair's last split
    merges and counts the pair on its row's counter, and the row's last pair advances the row's position.
    Over steps split over many programs, with a row at a negative position among them, every counter is back at
    zero after each step, each position moved by one, the valid rows match the reference and the row at the
    negative position keeps its ring and state. D = 256 splits the state's value columns in two as well.
    (The interpreter runs the programs in order; `test_gpu_local_step_many_steps_small_batches` runs them
    concurrently.)"""
    monkeypatch.setattr(fused_recurrent, "_SPLIT_TARGET", 64)
    monkeypatch.setitem(fused_recurrent._BLOCKS, "interpreter", {"block_s": 16, "block_f": 16})
    monkeypatch.setattr(triton_common, "_counters", {})
    B, w, H, Hkv = 3, 40, 4, 2
    gen = torch.Generator().manual_seed(15)
    F = feature_dim(D, "softmax") if kind == "rattn" else None
    ring = [torch.randn(B, w + 1, Hkv, D, generator=gen) for _ in range(2)]
    state = torch.randn(B, Hkv, F, D, generator=gen) if kind == "rattn" else None
    cache = LocalCache(*ring, state, torch.tensor([-5, 3, 100]), w, "softmax")
    ref = cache.select(torch.tensor([1, 2]))
    before = copy.deepcopy(cache)
    rope = Rope(D)
    for step in range(3):
        q, kn, vn = (torch.randn(B, n, D, generator=gen) for n in (H, Hkv, Hkv))
        out = local_decode_step_triton(q, kn, vn, cache, rope=rope)
        exp = local_decode_step_naive(q[1:], kn[1:], vn[1:], ref, rope=rope)
        assert torch.isnan(out[0]).all()
        assert_close(out[1:], exp, 1e-4, f"step {step}")
        assert cache.pos.tolist() == [-4 + step, 4 + step, 101 + step]
        buffers = triton_common._counters["cpu"]
        assert buffers and all(int(b.abs().sum()) == 0 for b in buffers), "a counter was left non-zero"
    assert torch.equal(cache.k[1:], ref.k) and torch.equal(cache.v[1:], ref.v)
    assert torch.equal(cache.k[0], before.k[0]) and torch.equal(cache.v[0], before.v[0])
    if state is not None:
        assert_close(cache.state[1:], ref.state, 1e-5, "state")
        assert torch.equal(cache.state[0], before.state[0])


@pytest.mark.parametrize("kind", ["rattn", "swa"])
def test_cache_rows_in_a_strided_view(kind):
    """A cache made of every other row of another (views, positions included, strided in the batch): the step
    reads and writes those rows only, and advances their positions in the parent's tensor."""
    B, w, H, Hkv, D = 4, 9, 4, 2, 64
    gen = torch.Generator().manual_seed(14)
    k, v = (torch.randn(B, 30, Hkv, D, generator=gen) for _ in range(2))
    lens = torch.tensor([5, 30, 10, 12])
    got = build_local_cache(k, v, window=w, kind=kind, lengths=lens)
    ref = build_local_cache(k, v, window=w, kind=kind, lengths=lens)

    def every_other(c):
        return LocalCache(c.k[::2], c.v[::2], None if c.state is None else c.state[::2], c.pos[::2], w, c.feature_map)

    for step in range(2):
        q, kn, vn = (torch.randn(2, n, D, generator=gen) for n in (H, Hkv, Hkv))
        out = local_decode_step_triton(q, kn, vn, every_other(got), rope=Rope(D))
        exp = local_decode_step_naive(q, kn, vn, every_other(ref), rope=Rope(D))
        assert_close(out, exp, 1e-4, f"step {step}")
    assert got.pos.tolist() == [7, 30, 12, 12]
    assert_cache_equal(got, ref, 1e-5)


def test_kv_decode_query_strided_in_the_head_dim():
    """A query that is a view with a strided head dim (every other column of a wider tensor) is taken, as on the
    torch backend; only the cache must be contiguous in the head dim (it is not copied each step)."""
    gen = torch.Generator().manual_seed(17)
    B, S, H, Hkv, D = 2, 30, 4, 2, 32
    q = torch.randn(B, H, 2 * D, generator=gen)[..., ::2]
    k, v = (torch.randn(B, S, Hkv, D, generator=gen) for _ in range(2))
    pos = torch.tensor([29, 4])
    assert_close(kv_split.kv_decode_triton(q, k, v, pos), kv_decode_naive(q, k, v, pos), 1e-5, "strided q")
    with pytest.raises(ValueError, match="cache must be contiguous in the head dim"):
        kv_split.kv_decode_triton(q, torch.randn(B, S, Hkv, 2 * D)[..., ::2], v, pos)


def test_kv_decode_strided_positions():
    """Positions given as a strided view (every other entry of a longer tensor) are read as the view holds them."""
    gen = torch.Generator().manual_seed(16)
    B, S, H, Hkv, D = 3, 40, 4, 2, 32
    q = torch.randn(B, H, D, generator=gen)
    k, v = (torch.randn(B, S, Hkv, D, generator=gen) for _ in range(2))
    pos = torch.tensor([39, 0, 2, 0, 17, 0])[::2]
    assert_close(kv_split.kv_decode_triton(q, k, v, pos), kv_decode_naive(q, k, v, pos.clone()), 1e-5, "strided pos")


# --- Triton on a GPU -----------------------------------------------------------------------------------------

GPU_CASES = [("rattn", 128, "softmax"), ("rattn", 128, "relu"), ("rattn", 64, "identity"), ("swa", 128, "softmax"),
             ("swa", 256, "softmax"), ("rattn", 256, "softmax")]


@pytest.mark.gpu
@pytest.mark.parametrize("kind,D,fm", GPU_CASES, ids=[f"{k}-D{d}-{f}" for k, d, f in GPU_CASES])
def test_gpu_bf16_ring_vs_fp32_reference(kind, D, fm):
    """bf16 ring on CUDA vs the fp32 reference on the same values: window 512, B=64, rows spread over
    positions below, at and far above the window (up to ~200k, where RoPE angles are large)."""
    B, w, H, Hkv = 64, 512, 16, 4
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(5)
    pos = torch.randint(0, 200_000, (B,), generator=gen, device=dev)
    pos[:6] = torch.tensor([0, 1, w - 1, w, w + 1, 2 * w + 3], device=dev)
    ring_k = torch.randn(B, w + 1, Hkv, D, generator=gen, device=dev).to(torch.bfloat16)
    ring_v = torch.randn(B, w + 1, Hkv, D, generator=gen, device=dev).to(torch.bfloat16)
    state = None
    if kind == "rattn":
        state = torch.randn(B, Hkv, feature_dim(D, fm), D, generator=gen, device=dev)
    got = LocalCache(ring_k, ring_v, state, pos, w, fm)
    ref = LocalCache(ring_k.float(), ring_v.float(), None if state is None else state.clone(), pos.clone(), w, fm)
    rope = Rope(D, theta=10000.0)
    norms = dict(swa_norm_weight=torch.rand(H, D, generator=gen, device=dev) + 0.5,
                 rla_norm_weight=torch.rand(H, D, generator=gen, device=dev) + 0.5)
    before = launches["triton.decode"]
    for step in range(4):
        q, kn, vn = (torch.randn(B, n, D, generator=gen, device=dev).to(torch.bfloat16) for n in (H, Hkv, Hkv))
        out = local_decode_step(q, kn, vn, got, rope=rope, backend="auto", **norms)
        exp = local_decode_step_naive(q.float(), kn.float(), vn.float(), ref, rope=rope, **norms)
        assert out.dtype == torch.bfloat16
        assert_close(out, exp, 1e-2, f"bf16 output at step {step}")
    assert launches["triton.decode"] == before + 4
    assert_cache_equal(got, ref, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["swa", "rattn"])
def test_gpu_fp32_rope_angles_up_to_a_million_positions(kind):
    """fp32 ring on CUDA against the fp32 reference at 1e-4: the keys' RoPE angles, reduced in fp64 and fed to
    the GPU's approximate sin / cos, must match the reference's accurate ones from position 0 to ~2**20
    (angles ~1e6 rad at the highest frequency), over a few steps."""
    B, w, H, Hkv, D = 16, 64, 8, 2, 128
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(13)
    pos = torch.randint(0, 2**20, (B,), generator=gen, device=dev)
    pos[:4] = torch.tensor([0, w, 2**17 - 1, 2**20 - 1], device=dev)
    state = torch.randn(B, Hkv, feature_dim(D, "softmax"), D, generator=gen, device=dev) if kind == "rattn" else None
    got = LocalCache(torch.randn(B, w + 1, Hkv, D, generator=gen, device=dev),
                     torch.randn(B, w + 1, Hkv, D, generator=gen, device=dev), state, pos, w, "softmax")
    ref = copy.deepcopy(got)
    rope = Rope(D, theta=10000.0)
    for step in range(3):
        q, kn, vn = (torch.randn(B, n, D, generator=gen, device=dev) for n in (H, Hkv, Hkv))
        assert_close(local_decode_step_triton(q, kn, vn, got, rope=rope),
                     local_decode_step_naive(q, kn, vn, ref, rope=rope), 1e-4, f"step {step}")
    assert_cache_equal(got, ref, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [8, 64])
def test_gpu_local_step_captured_in_a_graph(batch, monkeypatch):
    """The local step captured in a CUDA graph (as the model decodes), with no counter buffer kept yet (the
    capture makes its own, zeroed at each replay) and with a kept one: each replay advances the positions on
    the GPU and matches the reference stepped alongside, and the kept counters stay at zero. Batch 8 splits
    every pair over many programs, batch 64 over few."""
    B, w, H, Hkv, D = batch, 512, 16, 4, 128
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(17)
    rope = Rope(D, theta=10000.0)
    for kept in (False, True):
        pos = torch.randint(0, 100_000, (B,), generator=gen, device=dev)
        pos[:3] = torch.tensor([0, w - 1, w], device=dev)
        state = torch.randn(B, Hkv, feature_dim(D, "softmax"), D, generator=gen, device=dev)
        ring = [torch.randn(B, w + 1, Hkv, D, generator=gen, device=dev).to(torch.bfloat16) for _ in range(2)]
        got = LocalCache(*ring, state, pos, w, "softmax")
        ref = LocalCache(ring[0].float(), ring[1].float(), state.clone(), pos.clone(), w, "softmax")
        q, kn, vn = (torch.zeros(B, n, D, device=dev, dtype=torch.bfloat16) for n in (H, Hkv, Hkv))
        scratch = copy.deepcopy(got)
        local_decode_step_triton(q, kn, vn, scratch, rope=rope)  # compiles the kernel outside the capture
        torch.cuda.synchronize()
        monkeypatch.setattr(triton_common, "_counters", {})
        if kept:
            local_decode_step_triton(q, kn, vn, scratch, rope=rope)  # keeps a counter buffer before the capture
            torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = local_decode_step_triton(q, kn, vn, got, rope=rope)
        for step in range(3):
            for x, n in ((q, H), (kn, Hkv), (vn, Hkv)):
                x.copy_(torch.randn(B, n, D, generator=gen, device=dev))
            graph.replay()
            torch.cuda.synchronize()
            exp = local_decode_step_naive(q.float(), kn.float(), vn.float(), ref, rope=rope)
            assert_close(out.float(), exp, 1e-2, f"replay {step}, kept buffer {kept}")
        assert_cache_equal(got, ref, 1e-4)
        buffers = triton_common._counters.get(str(q.device), [])
        assert all(int(b.abs().sum()) == 0 for b in buffers)
        assert (len(buffers) == 1) == kept


@pytest.mark.gpu
def test_gpu_local_step_many_steps_small_batches():
    """The step's programs run concurrently on a GPU (the interpreter runs them in order): at small batches,
    where every pair is split over many programs, 150 steps each checked against the reference -- output,
    ring, positions and counters after every step, the state at the end -- with a row at a negative position
    among them (NaN output, nothing written, its position still advanced). Plain SWA and D = 256 included."""
    dev = torch.device("cuda")
    for B, Hkv, H, D, kind, w in [(1, 1, 4, 128, "rattn", 512), (2, 4, 16, 128, "rattn", 512),
                                  (3, 2, 4, 256, "rattn", 300), (4, 4, 16, 128, "swa", 1000),
                                  (8, 4, 16, 128, "rattn", 512)]:
        gen = torch.Generator(device=dev).manual_seed(B)
        pos = torch.randint(0, 3 * w, (B,), generator=gen, device=dev)
        if B > 1:
            pos[0] = -1000  # stays negative over the 150 steps
        state = torch.randn(B, Hkv, feature_dim(D, "softmax"), D, generator=gen, device=dev) if kind == "rattn" else None
        ring = [torch.randn(B, w + 1, Hkv, D, generator=gen, device=dev).to(torch.bfloat16) for _ in range(2)]
        got = LocalCache(*ring, state, pos, w, "softmax")
        ref = LocalCache(ring[0].float(), ring[1].float(), None if state is None else state.clone(), pos.clone(),
                         w, "softmax")
        rope = Rope(D, theta=10000.0)
        ok = slice(1, None) if B > 1 else slice(None)
        row0 = copy.deepcopy(got.select(torch.tensor([0], device=dev)))
        for step in range(150):
            q, kn, vn = (torch.randn(B, n, D, generator=gen, device=dev).to(torch.bfloat16) for n in (H, Hkv, Hkv))
            out = local_decode_step_triton(q, kn, vn, got, rope=rope)
            exp = local_decode_step_naive(q.float(), kn.float(), vn.float(), ref, rope=rope)
            where = f"B {B}, Hkv {Hkv}, D {D}, {kind}, step {step}"
            assert_close(out[ok].float(), exp[ok], 1e-2, where)
            assert B == 1 or torch.isnan(out[0]).all(), where
            assert torch.equal(got.pos, ref.pos), where
            assert torch.equal(got.k[ok].float(), ref.k[ok]) and torch.equal(got.v[ok].float(), ref.v[ok]), where
            assert all(int(b.abs().sum()) == 0 for b in triton_common._counters[str(q.device)]), where
        if state is not None:
            assert_close(got.state[ok], ref.state[ok], 1e-4, f"state, B {B}, D {D}")
        if B > 1:  # the row at a negative position: nothing written
            assert torch.equal(got.k[:1], row0.k) and torch.equal(got.v[:1], row0.v)
            assert state is None or torch.equal(got.state[:1], row0.state)


@pytest.mark.gpu
def test_gpu_negative_position_gives_nan_and_writes_nothing():
    """On CUDA the public step does not sync to check positions: a row at a negative position comes out
    NaN, its ring and state stay as they were (no write out of bounds), the other rows are exact."""
    B, w, H, Hkv, D = 4, 512, 16, 4, 128
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(6)
    cache = LocalCache(torch.randn(B, w + 1, Hkv, D, generator=gen, device=dev),
                       torch.randn(B, w + 1, Hkv, D, generator=gen, device=dev),
                       torch.randn(B, Hkv, feature_dim(D, "softmax"), D, generator=gen, device=dev),
                       torch.tensor([-5, 3, 700, 513], device=dev), w, "softmax")
    before = copy.deepcopy(cache)
    good = before.select(torch.tensor([1, 2, 3], device=dev))
    q, kn, vn = (torch.randn(B, n, D, generator=gen, device=dev) for n in (H, Hkv, Hkv))
    out = local_decode_step(q, kn, vn, cache, rope=Rope(D), backend="auto")
    torch.cuda.synchronize()
    assert torch.isnan(out[0]).all()
    assert torch.equal(cache.k[0], before.k[0]) and torch.equal(cache.v[0], before.v[0])
    assert torch.equal(cache.state[0], before.state[0])
    exp = local_decode_step_naive(q[1:], kn[1:], vn[1:], good, rope=Rope(D))
    assert_close(out[1:], exp, 1e-4, "rows at valid positions")


@pytest.mark.gpu
def test_kv_decode_bf16_gpu():
    gen = torch.Generator().manual_seed(4)
    B, S, H, Hkv, D = 8, 32768 + 100, 4, 1, 256
    q = torch.randn(B, H, D, generator=gen).cuda()
    k = torch.randn(B, S, Hkv, D, generator=gen).cuda()
    v = torch.randn(B, S, Hkv, D, generator=gen).cuda()
    pos = torch.tensor([S - 1 - 13 * i for i in range(B)]).cuda()
    exp = kv_decode_naive(q, k, v, pos)
    got = kv_decode(q.bfloat16(), k.bfloat16(), v.bfloat16(), pos, backend="triton")
    assert_close(got, exp, 1e-2, "bf16 kv decode", row_tol=3e-2)


@pytest.mark.gpu
def test_kv_decode_captured_in_a_graph_gpu(monkeypatch):
    """kv_decode captured in a CUDA graph with no counter buffer kept yet (the capture makes its own,
    zeroed at each replay) and with a kept one; each replay at new positions gives the reference's output
    and leaves the kept counters at zero."""
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(12)
    B, S, H, Hkv, D = 2, 4096, 16, 4, 128
    k, v = (torch.randn(B, S, Hkv, D, generator=gen, device=dev, dtype=torch.bfloat16) for _ in range(2))
    q = torch.randn(B, H, D, generator=gen, device=dev, dtype=torch.bfloat16)
    pos = torch.tensor([S - 1, 100], device=dev)
    kv_split.kv_decode_triton(q, k, v, pos)  # compiles and loads the kernel: no module load inside a capture
    torch.cuda.synchronize()
    for kept in (False, True):
        monkeypatch.setattr(triton_common, "_counters", {})
        if kept:
            kv_split.kv_decode_triton(q, k, v, pos)  # an eager call keeps a buffer before the capture
            torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = kv_split.kv_decode_triton(q, k, v, pos)
        for new in ([7, S - 2], [2000, 0]):
            pos.copy_(torch.tensor(new, device=dev))
            graph.replay()
            torch.cuda.synchronize()
            exp = kv_decode_naive(q.float(), k.float(), v.float(), pos)
            assert_close(out.float(), exp, 1e-2, f"replay at {new}, kept buffer {kept}")
        buffers = triton_common._counters.get(str(q.device), [])
        assert all(int(b.abs().sum()) == 0 for b in buffers)
        assert (len(buffers) == 1) == kept


@pytest.mark.gpu
def test_kv_decode_addresses_past_2_31_elements_gpu():
    """A cache whose keys of one row span more than 2**31 elements (a strided view, position stride
    2**30): the kernel's offsets are 64-bit, so the last position is read where it lies."""
    dev = torch.device("cuda")
    buf = torch.zeros(2**31 + 64, dtype=torch.float16, device=dev)
    k = buf.as_strided((1, 3, 1, 16), (0, 2**30, 16, 1))
    v = buf.as_strided((1, 3, 1, 16), (0, 2**30, 16, 1), 32)
    gen = torch.Generator(device=dev).manual_seed(13)
    for x in (k, v):
        x.copy_(torch.randn(1, 3, 1, 16, generator=gen, device=dev))
    q = torch.randn(1, 4, 16, generator=gen, device=dev, dtype=torch.float16)
    for dtype in (torch.int32, torch.int64):  # an int32 position once made the key index 32-bit
        pos = torch.tensor([2], device=dev, dtype=dtype)
        exp = kv_decode_naive(q.float(), k.float(), v.float(), pos)
        assert_close(kv_split.kv_decode_triton(q, k, v, pos).float(), exp, 2e-3, f"position 2 at 2**31, {dtype}")
    del buf, k, v


@pytest.mark.gpu
def test_kv_decode_positions_outside_the_cache_gpu():
    """On CUDA no sync checks pos: rows past the cache or below 0 come out NaN (nothing read past it)."""
    gen = torch.Generator().manual_seed(6)
    B, S, H, Hkv, D = 4, 300, 8, 2, 128
    q = torch.randn(B, H, D, generator=gen).cuda()
    k = torch.randn(B, S, Hkv, D, generator=gen).cuda()
    v = torch.randn(B, S, Hkv, D, generator=gen).cuda()
    pos = torch.tensor([S, 17, -1, S + 10_000]).cuda()
    got = kv_decode(q, k, v, pos, backend="auto")
    assert torch.isnan(got[[0, 2, 3]]).all()
    assert_close(got[1:2], kv_decode_naive(q[1:2], k[1:2], v[1:2], pos[1:2]), 1e-5, "the row at a valid position")


@pytest.mark.parametrize("backend", ["torch", "triton", "auto"])
def test_softcap_on_a_rattn_cache_is_refused_as_in_prefill(backend):
    cache = empty_local_cache(2, 3, 1, 16, dtype=torch.float32, device="cpu")  # an RAttention cache (with state)
    before = copy.deepcopy(cache)
    q, kv = torch.randn(2, 2, 16), torch.randn(2, 1, 16)
    with pytest.raises(ValueError, match="not to rattn layers"):
        local_decode_step(q, kv, kv, cache, softcap=30.0, backend=backend)
    assert_cache_equal(cache, before, 0.0)
