"""Triton pieces shared by the kernels: jit helpers (feature maps, RoPE rows, the online-softmax step, k / v
tiles, the program decode of the block and segment grids, carry blocks), the sequence table of a dense /
padded / packed batch, and launch helpers (dummies, zeroed atomic counters, operand precision, TMA
availability, SM count, which row of a hand-edited tuning table applies).

Imported on first use of a Triton path only (`kernels/__init__.py` imports no Triton module).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import torch
import triton
import triton.language as tl

try:  # host-side TMA descriptors (triton >= 3.4); older releases take the pointer loads
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - depends on the installed triton
    TensorDescriptor = None

from . import triton_head_dim_ok
from .common import cdiv, check_varlen

LOG2E = 1.4426950408889634
# The interpreter runs programs one after another: the kernels take smaller tiles there, so short test
# shapes still cross every tile and phase boundary, at about the same cost.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
FEATURES = {"softmax": 0, "relu": 1, "identity": 2}  # the FEATURE constexpr of the kernels (common.FEATURE_MAPS)


@triton.jit
def feature_map_half(x, HALF: tl.constexpr, FEATURE: tl.constexpr):
    """Feature half HALF of phi(x) for fp32 rows x (R, D): softmax -> softmax(x) | softmax(-x),
    relu -> relu(x) | relu(-x), identity -> x (both halves)."""
    if FEATURE == 0:
        if HALF == 0:
            e = tl.exp2((x - tl.max(x, axis=1)[:, None]) * 1.4426950408889634)
        else:
            e = tl.exp2((tl.min(x, axis=1)[:, None] - x) * 1.4426950408889634)
        y = e * (1.0 / tl.sum(e, axis=1))[:, None]  # one division per row, not per element
    elif FEATURE == 1:
        if HALF == 0:
            y = tl.maximum(x, 0.0)
        else:
            y = tl.maximum(-x, 0.0)
    else:
        y = x
    return y


@triton.jit
def feature_map_halves(x, FEATURE: tl.constexpr):
    """phi(x) for fp32 rows x (R, D) as its two halves (`feature_map_half` 0 and 1; identity -> (x, x), the
    second half then unused)."""
    return feature_map_half(x, 0, FEATURE), feature_map_half(x, 1, FEATURE)


@triton.jit
def rope_rows(x, x_ptr, rows, cos_ptr, sin_ptr, rp, ok, D: tl.constexpr):
    """x (R, D) fp32, the rows at x_ptr + rows, rotated rotate-half style with the table rows at
    cos_ptr / sin_ptr + rp: x * cos + roll(x, D/2) * (-sin | +sin). Tables of any float dtype; fp32 math."""
    offs_d = tl.arange(0, D)
    half = (offs_d + D // 2) % D
    xs = tl.load(x_ptr + rows[:, None] + half[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + rp[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + rp[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    sign = tl.where(offs_d < D // 2, -1.0, 1.0)
    return x * c + xs * s * sign[None, :]


@triton.jit
def softmax_step(sc, v, m_i, l_i, acc, qk_scale, MASKED: tl.constexpr, PRECISION: tl.constexpr,
                 SCALE_SCORES: tl.constexpr, P_RES: tl.constexpr = False):
    """Online-softmax update with one tile of base-2 scores sc (BM, BN) and its values v (BN, D, in the
    operand dtype): returns (m_i, l_i, acc). MASKED: sc may hold -inf. A row with no key yet keeps its
    running maximum at -inf and takes its exponentials against 0 (no NaN from -inf - -inf); the maximum
    itself must not be clamped, or a later tile whose scores all lie far below 0 would underflow to
    p = 0 (the row's output then 0 instead of its softmax).
    SCALE_SCORES (qk_scale > 0): sc are raw q.k products, scaled here in fp32 (one FMA with the max), so q
    is not rounded to the operand dtype a second time after a multiply by the scale; otherwise sc are
    already in base 2. P_RES (16-bit v): also multiply the rounding residual of p (p - p in v's dtype) by v,
    one more MMA, so acc holds p @ v with p unrounded (to ~2^-16) rather than rounded to 8 or 11 bits."""
    if SCALE_SCORES:
        m_new = tl.maximum(m_i, tl.max(sc, axis=1) * qk_scale)
    else:
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
    if MASKED:
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    alpha = tl.exp2(m_i - m_use)
    if SCALE_SCORES:
        p = tl.exp2(sc * qk_scale - m_use[:, None])
    else:
        p = tl.exp2(sc - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    p_op = p.to(v.dtype)
    acc = tl.dot(p_op, v, acc * alpha[:, None], input_precision=PRECISION)
    if P_RES:
        acc = tl.dot((p - p_op.to(tl.float32)).to(v.dtype), v, acc, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def kv_tile(k_ptr, v_ptr, tok0, offs_j, L, Hkv, head_off, like, D: tl.constexpr, MASKED: tl.constexpr):
    """The k and v rows offs_j of one sequence (position 0 at token row tok0) and one KV head (its column
    offset head_off) of (B, T, Hkv, D) tensors, in the dtype of the tensor `like`: (len(offs_j), D) each.
    MASKED: rows at or past the sequence length L load as zeros."""
    dt = like.dtype
    kv_off = ((tok0 + offs_j).to(tl.int64) * (Hkv * D) + head_off)[:, None] + tl.arange(0, D)[None, :]
    if MASKED:
        ok = (offs_j < L)[:, None]
        k = tl.load(k_ptr + kv_off, mask=ok, other=0.0).to(dt)
        v = tl.load(v_ptr + kv_off, mask=ok, other=0.0).to(dt)
    else:
        k = tl.load(k_ptr + kv_off).to(dt)
        v = tl.load(v_ptr + kv_off).to(dt)
    return k, v


@triton.jit
def segment_carry(carry_ptr, n, hk, seg, Hkv, NSEG, BLOCK: tl.constexpr):
    """The block of BLOCK fp32 entries that a carry tensor (sequences, Hkv, NSEG, ...) holds for sequence
    n, KV head hk and segment seg."""
    return carry_ptr + ((n * Hkv + hk).to(tl.int64) * NSEG + seg) * BLOCK


@triton.jit
def block_program(HEADS, Hkv, HEADS_FIRST: tl.constexpr):
    """(block, sequence, head, KV head) of this program in a 2-D grid (blocks, sequences * HEADS), or with
    the two axes swapped under HEADS_FIRST; HEADS is H for programs over query heads, Hkv over KV heads."""
    if HEADS_FIRST:
        blk = tl.program_id(1)
        nh = tl.program_id(0)
    else:
        blk = tl.program_id(0)
        nh = tl.program_id(1)
    head = nh % HEADS
    return blk, nh // HEADS, head, head // (HEADS // Hkv)


@triton.jit
def segment_program(pid, HEADS, NSEG, SEGLEN, T, seq_len_ptr, seq_row_ptr, seq_start_ptr, NF: tl.constexpr,
                    NV: tl.constexpr):
    """Program `pid` of a 1-D grid over (sequences, HEADS, NSEG segments, NF feature halves, NV slices),
    the last fastest (no 65535 limit on any factor; programs sharing a tile launch side by side), as
    (slice, half, segment, sequence, head, the sequence's length L, the segment's first row and end row
    (<= L), the sequence's first row in the flattened B * T rows). A segment whose first row is >= L has
    no work."""
    iv = pid % NV
    f = (pid // NV) % NF
    seg = (pid // (NV * NF)) % NSEG
    nh = pid // (NV * NF * NSEG)
    n = nh // HEADS
    L = tl.load(seq_len_ptr + n)
    t_first = seg * SEGLEN
    t_end = tl.minimum(t_first + SEGLEN, L)
    tok0 = tl.load(seq_row_ptr + n).to(tl.int64) * T + tl.load(seq_start_ptr + n)
    return iv, f, seg, n, nh % HEADS, L, t_first, t_end, tok0


class SequenceTable:
    """The sequences of a dense, right-padded or packed batch, as int32 device tensors.

    row / start / length per sequence, so a program never straddles two sequences. `count` and
    `max_len` are Python ints; `dense` says sequence n is batch row n with all T tokens (kernels may
    skip the table loads); `zero_fill` says some output rows belong to no sequence (padding) and must
    be zeroed. `block` is the query-block size of the launch the table was built for.
    """

    def __init__(self, B, T, device, lengths, cu_seqlens, block):
        check_varlen(B, T, lengths, cu_seqlens)
        if cu_seqlens is not None:
            cu = [int(x) for x in cu_seqlens.tolist()]
            spans = [(0, a, b - a) for a, b in zip(cu, cu[1:]) if b > a]
            self.zero_fill = cu[-1] < T or len(spans) == 0
        elif lengths is not None:
            ls = [int(x) for x in lengths.tolist()]
            spans = [(b, 0, x) for b, x in enumerate(ls) if x > 0]
            self.zero_fill = any(x < T for x in ls)
        else:
            spans = [(b, 0, T) for b in range(B)] if T > 0 else []
            self.zero_fill = False
        self.dense = lengths is None and cu_seqlens is None
        cols = [list(c) for c in zip(*spans)] if spans else [[], [], []]
        table = torch.tensor(cols, dtype=torch.int32).reshape(3, len(spans)).to(device)  # one copy
        self.row, self.start, self.length = table[0], table[1], table[2]
        self.count = len(spans)
        self.max_len = max((n for _, _, n in spans), default=0)
        self.block = block


_DENSE_TABLES: dict = {}


def sequence_table(B, T, device, lengths, cu_seqlens, block) -> SequenceTable:
    """SequenceTable, cached for dense batches: building one copies to the device, which syncs the
    host with the GPU (and would expose every later launch's Python overhead)."""
    if lengths is not None or cu_seqlens is not None:
        return SequenceTable(B, T, device, lengths, cu_seqlens, block)
    key = (B, T, str(device), block)
    if key not in _DENSE_TABLES:
        if len(_DENSE_TABLES) >= 256:
            _DENSE_TABLES.clear()
        _DENSE_TABLES[key] = SequenceTable(B, T, device, None, None, block)
    return _DENSE_TABLES[key]


def tuning_row(table: Mapping, dtype: torch.dtype, D: int) -> dict:
    """The row of a hand-edited tuning table for inputs of this dtype and head dim: "interpreter" under
    TRITON_INTERPRET, "fp32" for fp32 inputs (their tiles take twice the shared memory), "16-bit" for
    fp16 / bf16; on a GPU at D > 128 the table's "fp32, D 256" / "16-bit, D 256" row, whose tiles keep
    the per-program footprint of D = 128. A copy the caller may change (a shallow one: a table whose rows
    nest settings copies those itself)."""
    key = "interpreter" if INTERPRET else "fp32" if dtype == torch.float32 else "16-bit"
    if D > 128 and not INTERPRET:
        key += ", D 256"
    return dict(table[key])


def check_head_dim(D: int) -> None:
    """The head dims the Triton prefill kernels take (`kernels.triton_head_dim_ok`), as a ValueError."""
    if not triton_head_dim_ok(D):
        raise ValueError(f"the Triton attention kernels support power-of-two head dims 16..256, got {D}")


def precision_for(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (no TF32), so they match the references to ~1e-6.
    return "ieee" if dtype == torch.float32 else "tf32"


_DUMMIES: dict = {}


def dummy(device) -> torch.Tensor:
    """A 1-element fp32 tensor for pointer arguments a launch does not read (cached: no fill per call)."""
    key = str(device)
    if key not in _DUMMIES:
        _DUMMIES[key] = torch.zeros(1, dtype=torch.float32, device=device)
    return _DUMMIES[key]


# Zeroed int32 counters per device for the kernels whose programs count themselves: `decode_step_kernel`
# (one per (row, KV head) pair, then one per row) and `kv_decode_kernel` (one per pair). The kernels leave
# them at zero, so one buffer serves every step and layer on the device, replayed CUDA graphs included. A
# larger buffer is added when needed; the smaller ones stay alive, because a captured graph may still
# address them. Two steps running at once on two streams of one device would share the counters: not
# supported.
_counters: dict[str, list[torch.Tensor]] = {}


def counter_buffer(n: int, device: torch.device) -> torch.Tensor:
    """At least n zeroed int32 counters on `device` (see `_counters`)."""
    kept = _counters.setdefault(str(device), [])
    if kept and kept[-1].numel() >= n:
        return kept[-1]
    fresh = torch.zeros(max(n, 2 * kept[-1].numel() if kept else 64), dtype=torch.int32, device=device)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # From the graph's pool: its zeroing is recorded in the graph right before the kernel that uses it,
        # so every replay starts from zeros, and the pool may hand the memory on after that kernel.
        return fresh
    kept.append(fresh)
    return fresh


def rope_launch_args(rope, D, device):
    """(cos, sin, stride_rope_b) for a kernel launch: the tables (or dummies without rope) and the
    element stride between the batch rows of (B, T, D) tables (0 for shared (T, D) tables)."""
    if rope is None:
        return dummy(device), dummy(device), 0
    cos, sin = rope
    return cos, sin, cos.shape[1] * D if cos.dim() == 3 else 0


def tma_ok(*ts) -> bool:
    """Whether tiles can come through TMA tensor descriptors: 16-byte aligned 16-bit tensors whose
    token rows fit int32 coordinates, on a GPU with TMA (sm_90+) or under the interpreter."""
    if TensorDescriptor is None:
        return False
    for t in ts:
        if t.dtype not in (torch.float16, torch.bfloat16) or t.data_ptr() % 16 or t.shape[0] * t.shape[1] >= 2**31:
            return False
    if INTERPRET:
        return True
    return ts[0].is_cuda and _has_tma(ts[0].device.index if ts[0].device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _has_tma(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def num_sms(device) -> int:
    """Streaming multiprocessors of a CUDA device (4 elsewhere: the interpreter's stand-in)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


__all__ = [
    "FEATURES", "INTERPRET", "LOG2E", "SequenceTable", "TensorDescriptor", "block_program", "cdiv",
    "check_head_dim", "dummy", "feature_map_half", "feature_map_halves", "kv_tile", "num_sms", "precision_for",
    "rope_launch_args", "rope_rows", "segment_carry", "segment_program", "sequence_table", "softmax_step", "tma_ok", "tuning_row",
]
