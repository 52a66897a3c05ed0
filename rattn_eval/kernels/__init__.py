"""Attention ops of rattn-eval, layout [B, T, H, D] (k/v [B, T, Hkv, D], GQA when H % Hkv == 0).

Every op takes backend = "auto" | "triton" | "torch". "auto" picks Triton for CUDA tensors
(when triton imports) and the PyTorch reference otherwise. "triton" on CPU works only under
TRITON_INTERPRET=1 (tests). `launches` counts which implementation actually ran, so tests and
results can prove there was no silent fallback.
"""

from __future__ import annotations

import importlib
import os
from collections import Counter

import torch

from .common import (Rope, apply_feature_map, apply_rope, check_eps, check_feature_map, check_input_dtype,
                     check_norm_weights, check_qkv, check_rope_tables, check_varlen, check_window, default_scale,
                     drop_padding, feature_dim, rms_norm, softcap_scores)
from .decode.naive import (LocalCache, build_local_cache, check_kv_decode_args, check_positions, empty_local_cache,
                           local_decode_step_naive)
from .rattention.naive import rattention_chunked, rattention_naive
from .rla.naive import residual_linear_attention_chunked, residual_linear_attention_naive
from .swa.naive import swa_attention_chunked, swa_attention_naive

BACKENDS = ("auto", "triton", "torch")

# op -> (module, function) of the Triton implementation; imported on first use.
_TRITON_IMPLS = {
    "swa": ("rattn_eval.kernels.swa.parallel", "swa_attention_triton"),
    "swa_grad": ("rattn_eval.kernels.swa.backward", "swa_attention_triton_autograd"),
    "rla": ("rattn_eval.kernels.rla.chunk", "residual_linear_attention_triton"),
    "rla_grad": ("rattn_eval.kernels.rla.backward", "residual_linear_attention_triton_autograd"),
    "rattention": ("rattn_eval.kernels.rattention.fused", "rattention_triton"),
    "rattention_grad": ("rattn_eval.kernels.rattention.autograd", "rattention_triton_autograd"),
    "decode": ("rattn_eval.kernels.decode.fused_recurrent", "local_decode_step_triton"),
    "kv_decode": ("rattn_eval.kernels.decode.kv_split", "kv_decode_triton"),
}

launches: Counter = Counter()


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run these tensors here."""


def triton_available(device: torch.device) -> bool:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" to a concrete backend for tensors on `device`; validate explicit choices."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    ok = triton_available(device)
    if backend == "triton" and not ok:
        raise BackendUnavailable(
            f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 on CPU) and an importable triton; got {device}"
        )
    return "triton" if ok and (backend == "triton" or device.type == "cuda") else "torch"


def triton_head_dim_ok(D: int) -> bool:
    """Head dims the Triton prefill kernels (SWA, RLA, RAttention; forward and backward) take: powers of
    two 16..256. At D = 256 the RLA kernels split the value columns finer, so each program's fp32 state
    slice stays the size it has at D = 128."""
    return 16 <= D <= 256 and D & (D - 1) == 0


def _pick(backend: str, q: torch.Tensor, *, softcap=None) -> str:
    """Resolve the backend; "auto" takes the PyTorch path for head dims the Triton kernels lack and for
    softcapped scores, which they do not implement (an explicit backend="triton" raises instead).
    `launches` records which one ran."""
    be = resolve_backend(backend, q.device)
    if be == "triton" and softcap is not None:
        if backend == "triton":
            raise BackendUnavailable("the Triton attention kernels have no attention-logit softcapping; "
                                     "use backend='torch' (or 'auto', which takes it)")
        return "torch"
    if be == "triton" and backend == "auto" and not triton_head_dim_ok(q.shape[-1]):
        return "torch"
    return be


def _check_prefill(q, k, v, window, lengths, cu_seqlens, *, rla: bool, feature_map=None):
    """The checks every prefill op makes before either backend runs, so both raise the same clear error."""
    B, T, H, Hkv, D = check_qkv(q, k, v)
    check_input_dtype(q)
    if rla and (window is None or isinstance(window, bool) or not isinstance(window, int)):
        raise ValueError(f"residual linear attention / rattention need a non-negative int window, got {window!r} "
                         "(use swa_attention(window=None) for full attention)")
    check_window(window)
    check_varlen(B, T, lengths, cu_seqlens)
    if feature_map is not None:
        check_feature_map(feature_map)
    return B, T, H, Hkv, D


def _wants_grad(*tensors) -> bool:
    """Whether autograd will need the gradient of an op over these inputs (None entries ignored)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _triton(op: str):
    module, name = _TRITON_IMPLS[op]
    return getattr(importlib.import_module(module), name)


def swa_attention(q, k, v, *, window, scale=None, lengths=None, cu_seqlens=None, softcap=None, backend="auto"):
    """Sliding-window softmax attention: query t sees keys t-window..t (window=None: full causal).

    Args:
        q: (B, T, H, D), already rotated; k, v: (B, T, Hkv, D).
        window: previous tokens visible besides the token itself, or None.
        scale: softmax scale, default D ** -0.5.
        softcap: scaled scores -> c * tanh(s / c) before the softmax (Gemma-2); PyTorch path only.
        lengths: (B,) valid tokens per row of a right-padded batch; cu_seqlens: (N+1,) packed offsets, B == 1.
    Returns:
        (B, T, H, D) in q.dtype; zero at padded positions. Differentiable in q, k, v on both backends: with
        gradients enabled and one of them requiring grad, the Triton backend runs its forward with softmax
        statistics and its own backward kernels (counted as "triton.swa_grad").
    """
    _check_prefill(q, k, v, window, lengths, cu_seqlens, rla=False)
    be = _pick(backend, q, softcap=softcap)
    launches[f"{be}.swa"] += 1
    if be == "triton":
        kw = dict(window=window, scale=scale, lengths=lengths, cu_seqlens=cu_seqlens)
        if _wants_grad(q, k, v):
            launches["triton.swa_grad"] += 1
            return _triton("swa_grad")(q, k, v, **kw)
        return _triton("swa")(q, k, v, **kw)
    return swa_attention_chunked(q, k, v, window=window, scale=scale, lengths=lengths, cu_seqlens=cu_seqlens,
                                 softcap=softcap)


def residual_linear_attention(q, k, v, *, window, feature_map="softmax", lengths=None, cu_seqlens=None, backend="auto"):
    """o_t = phi(q_t) S_{t-window-1} with S_t = sum_{j<=t} phi(k_j)^T v_j; raw q/k, no normalizer.

    Args: q (B, T, H, D); k, v (B, T, Hkv, D); feature_map "softmax" | "relu" | "identity".
    Returns: (B, T, H, D) in q.dtype (accumulated in fp32); exactly zero for t <= window. Differentiable in
    q, k, v on both backends: with gradients enabled and one of them requiring grad, the Triton backend
    runs an autograd Function with Triton backward kernels (counted as "triton.rla_grad").
    """
    _check_prefill(q, k, v, window, lengths, cu_seqlens, rla=True, feature_map=feature_map)
    be = _pick(backend, q)
    launches[f"{be}.rla"] += 1
    if be == "triton":
        kw = dict(window=window, feature_map=feature_map, lengths=lengths, cu_seqlens=cu_seqlens)
        if _wants_grad(q, k, v):
            launches["triton.rla_grad"] += 1
            return _triton("rla_grad")(q, k, v, **kw)
        return _triton("rla")(q, k, v, **kw)
    return residual_linear_attention_chunked(q, k, v, window=window, feature_map=feature_map, lengths=lengths, cu_seqlens=cu_seqlens)


def rattention(q, k, v, *, window, rope=None, scale=None, feature_map="softmax", swa_norm_weight=None,
               rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None, backend="auto"):
    """RAttention: rms(SWA(rope(q), rope(k), v)) * g_swa + rms(RLA(q, k, v)) * g_rla.

    Args:
        q: (B, T, H, D) raw; k, v: (B, T, Hkv, D) raw.
        rope: (cos, sin), each (T, D) or (B, T, D), rotate-half convention; applied to the SWA branch only.
        swa_norm_weight, rla_norm_weight: (H, D) or None (ones).
    Returns:
        (B, T, H, D) in q.dtype. Differentiable on both backends. With gradients enabled and q, k, v, a norm
        weight or a RoPE table requiring grad, the Triton backend runs its training path instead of the fused
        prefill (rattention/autograd.py, counted as "triton.rattention_grad"): one autograd Function over the
        kernels of both branches, or, when a RoPE table requires grad, a composition of differentiable ops.
    """
    B, T, H, Hkv, D = _check_prefill(q, k, v, window, lengths, cu_seqlens, rla=True, feature_map=feature_map)
    if rope is not None:
        check_rope_tables(rope, B, T, D, q.device)
    check_norm_weights(H, D, q.device, swa_norm_weight=swa_norm_weight, rla_norm_weight=rla_norm_weight)
    check_eps(eps)
    be = _pick(backend, q)
    launches[f"{be}.rattention"] += 1
    kw = dict(window=window, rope=rope, scale=scale, feature_map=feature_map, swa_norm_weight=swa_norm_weight,
              rla_norm_weight=rla_norm_weight, eps=eps, lengths=lengths, cu_seqlens=cu_seqlens)
    if be == "triton":
        if _wants_grad(q, k, v, swa_norm_weight, rla_norm_weight, *(rope or ())):
            launches["triton.rattention_grad"] += 1
            return _triton("rattention_grad")(q, k, v, **kw)
        return _triton("rattention")(q, k, v, **kw)
    return rattention_chunked(q, k, v, **kw)


def local_prefill(q, k, v, *, window, kind="rattn", rope: Rope | None = None, scale=None, feature_map="softmax",
                  swa_norm_weight=None, rla_norm_weight=None, eps=1e-6, lengths=None, softcap=None, backend="auto"):
    """Prefill a local layer and return (output, filled LocalCache).

    Args: q (B, T, H, D), k, v (B, T, Hkv, D), all raw (un-rotated); kind "swa" | "rattn";
    rope: a Rope (positions 0..T-1) or None; lengths (B,) for right-padded prompts; softcap (swa only).
    Returns: o (B, T, H, D), cache whose size depends on window and shape only.
    """
    tables = None if rope is None else rope.tables(q.shape[1], q.device)
    if kind == "swa":
        qr, kr = (q, k) if tables is None else (apply_rope(q, *tables), apply_rope(k, *tables))
        o = swa_attention(qr, kr, v, window=window, scale=scale, lengths=lengths, softcap=softcap, backend=backend)
    elif kind == "rattn":
        if softcap is not None:
            raise ValueError("softcap applies to softmax attention (kind 'swa'), not to rattn layers")
        o = rattention(q, k, v, window=window, rope=tables, scale=scale, feature_map=feature_map,
                       swa_norm_weight=swa_norm_weight, rla_norm_weight=rla_norm_weight, eps=eps, lengths=lengths,
                       backend=backend)
    else:
        raise ValueError(f"unknown local layer kind {kind!r}; choose 'swa' or 'rattn'")
    return o, build_local_cache(k, v, window=window, kind=kind, feature_map=feature_map, lengths=lengths)


def local_decode_step(q, k, v, cache: LocalCache, *, rope: Rope | None = None, scale=None, swa_norm_weight=None,
                      rla_norm_weight=None, eps=1e-6, softcap=None, backend="auto"):
    """One decode step for a batch whose sequences may sit at different positions.

    Args: q (B, H, D) raw; k, v (B, Hkv, D) raw; cache from `local_prefill` / `empty_local_cache` (updated in place);
    softcap as in swa_attention (plain SWA caches, PyTorch path only).
    Returns: (B, H, D) in q.dtype. A position below 0 (a damaged cache) raises ValueError for CPU tensors;
    on a GPU (where checking would cost a sync per layer and step) that row's output is NaN and its cache
    rows are left alone.
    """
    check_positions(cache.pos)  # the arguments themselves are checked by either backend, before it writes
    if softcap is not None and cache.state is not None:  # as local_prefill refuses it
        raise ValueError("softcap applies to softmax attention (plain SWA caches), not to rattn layers")
    be = resolve_backend(backend, q.device) if softcap is None else _pick(backend, q, softcap=softcap)
    launches[f"{be}.decode"] += 1
    kw = dict(rope=rope, scale=scale, swa_norm_weight=swa_norm_weight, rla_norm_weight=rla_norm_weight, eps=eps)
    if be == "triton":
        return _triton("decode")(q, k, v, cache, **kw)
    return local_decode_step_naive(q, k, v, cache, softcap=softcap, **kw)


def kv_decode_naive(q, k, v, pos, *, scale=None, softcap=None):
    """Reference decode attention of a global layer, fp32: q (B, H, D) against cache keys 0..pos[b]."""
    B, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    qf = q.float().reshape(B, Hkv, H // Hkv, D)
    s = softcap_scores(torch.einsum("bkgd,bskd->bkgs", qf, k.float()) * default_scale(D, scale), softcap)
    visible = torch.arange(S, device=q.device)[None, :] <= pos[:, None]  # (B, S)
    s = s.masked_fill(~visible[:, None, None, :], float("-inf"))
    vf = drop_padding(v.float(), visible)  # unfilled slots may hold anything, NaN included
    o = torch.einsum("bkgs,bskd->bkgd", torch.softmax(s, dim=-1), vf)  # pos < 0: no key, NaN
    o = o.masked_fill((pos >= S)[:, None, None, None], float("nan"))  # past the cache: NaN, as the Triton kernel
    return o.reshape(B, H, D).to(q.dtype)


def kv_decode(q, k, v, pos, *, scale=None, softcap=None, backend="auto"):
    """Decode attention of a global layer over its full KV cache: one query per row.

    Args: q (B, H, D) rotated; k, v (B, S, Hkv, D) the cache (rotated keys); pos (B,) int64, the newest
    filled position of each row (keys 0..pos[b] are attended; later slots are ignored); softcap as in
    swa_attention (PyTorch path only).
    Returns: (B, H, D) in q.dtype. A position outside [0, S-1] raises ValueError for CPU tensors; on a GPU
    (no sync per layer and step to check it) that row's output is NaN.
    """
    check_kv_decode_args(q, k, v, pos)
    check_positions(pos, k.shape[1])
    be = _pick(backend, q, softcap=softcap)
    launches[f"{be}.kv_decode"] += 1
    if be == "triton":
        return _triton("kv_decode")(q, k, v, pos, scale=scale)
    return kv_decode_naive(q, k, v, pos, scale=scale, softcap=softcap)


__all__ = [
    "BACKENDS", "BackendUnavailable", "LocalCache", "Rope", "apply_feature_map", "apply_rope", "build_local_cache",
    "empty_local_cache", "feature_dim", "kv_decode", "kv_decode_naive", "launches", "local_decode_step", "local_prefill", "rattention",
    "rattention_naive", "residual_linear_attention", "residual_linear_attention_naive", "resolve_backend",
    "rms_norm", "swa_attention", "swa_attention_naive",
]
