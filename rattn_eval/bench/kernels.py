"""`rattn-eval bench kernels`: prefill and decode attention kernels against the alternatives a user
would pick, timed in one process on one GPU.

Prefill (B=1, H=16, Hkv in {16, 4}, D=128, window 512, bf16, T in {4k, 16k, 32k, 128k}):
  ours RAttention (fused Triton, RoPE + both branches + norms), ours SWA, SDPA full causal,
  FlexAttention with a sliding-window block mask, fla's SWA (`parallel_attn`), and the unfused
  RAttention a user can assemble from fla-core: parallel_attn(window_size=w+1) + feature map +
  (w+1)-shift + chunk_linear_attn(scale=1, normalize=False) on 2D features + two RMS norms
  (q/k handed to it already rotated, so RoPE is not charged to it).
Forward + backward (--backward; the same shapes): ours RAttention and SWA through their autograd
  Functions (Triton forward and backward kernels), SDPA full causal, FlexAttention SWA, fla's SWA,
  and the unfused fla composition differentiated by autograd (RoPE included).
Decode: the card's copy bandwidth (2 GiB dst.copy_(src)); one RAttention step against a ring buffer
  + fp32 state at batch 8 and 64 (Hkv = the smallest of --kv-heads); flash-decoding over a full 32k /
  128k KV cache at batch 1 and 8, ours (`kv_decode`) vs SDPA. Each as GB/s and its share of the copy,
  timed as CUDA-graph replays (the model's decode is graphed).

FLOP formulas (useful work, forward):
  SWA   4 * B * H * D * sum_t (min(t, w) + 1)          (QK^T and PV, 2 flop per MAC)
  SDPA  the same with w = T (full causal)
  RLA   2 * F * D * B * T * (H + Hkv), F = 2D          (state update per KV head + readout per head)
  RAttention = SWA + RLA
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ..errors import ConfigError
from ..kernels.common import flops_swa
from . import int_at_least, int_list, run_script

DEFAULT_LENGTHS = (4096, 16384, 32768, 131072)


def bench_ms(fn, rep_ms=100):
    """ms per call of fn, launches included (triton.testing.do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms))


def flops_rla(B, T, H, Hkv, D):
    return 2.0 * (2 * D) * D * B * T * (H + Hkv)


def _fla():
    """fla-core's ops, or the reason they are missing."""
    try:
        from fla.ops.attn import parallel_attn
        from fla.ops.linear_attn import chunk_linear_attn
    except Exception as e:  # any import failure means: no fla baseline, said out loud
        return None, f"fla-core not importable ({type(e).__name__}: {e})"
    return (parallel_attn, chunk_linear_attn), None


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def unfused_rattention(fla_ops, q, k, v, qr, kr, gs, gr, w):
    """The RAttention a user can assemble from fla-core: parallel_attn(window_size=w+1) on rotated qr / kr,
    the feature map, the (w+1)-shift, chunk_linear_attn(scale=1, normalize=False) on 2D features, and the
    two RMS norms. Returns (B, T, H, D) in q.dtype."""
    import torch.nn.functional as F

    parallel_attn, chunk_linear_attn = fla_ops
    T, H, D = q.shape[1], q.shape[2], q.shape[3]
    grp = H // k.shape[2]
    o_swa = _first(parallel_attn(qr, kr, v, window_size=w + 1))
    kk = k.repeat_interleave(grp, dim=2) if grp > 1 else k
    vv = v.repeat_interleave(grp, dim=2) if grp > 1 else v
    pq = torch.cat([q.float().softmax(-1), (-q.float()).softmax(-1)], -1).to(q.dtype)
    pk = torch.cat([kk.float().softmax(-1), (-kk.float()).softmax(-1)], -1).to(q.dtype)
    pk = F.pad(pk, (0, 0, 0, 0, w + 1, 0))[:, :T]  # shift right by w+1 along T
    vs = F.pad(vv, (0, 0, 0, 0, w + 1, 0))[:, :T]
    o_rla = _first(chunk_linear_attn(pq, pk, vs, scale=1.0, normalize=False))
    return (F.rms_norm(o_swa.float(), (D,), eps=1e-6) * gs + F.rms_norm(o_rla.float(), (D,), eps=1e-6) * gr).to(q.dtype)


def bench_prefill(T, H, Hkv, D, window, dtype, fla_ops, log):
    """Times every method at one shape. Returns a list of row dicts."""
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from ..kernels import Rope, apply_rope
    from ..kernels.rattention.fused import rattention_triton
    from ..kernels.swa.parallel import swa_attention_triton

    dev = "cuda"
    B, w = 1, window
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, T, H, D, device=dev, generator=g, dtype=dtype)
    k = torch.randn(B, T, Hkv, D, device=dev, generator=g, dtype=dtype)
    v = torch.randn(B, T, Hkv, D, device=dev, generator=g, dtype=dtype)
    cos, sin = Rope(D).tables(T, dev)
    qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    gs = torch.rand(H, D, device=dev) + 0.5
    gr = torch.rand(H, D, device=dev) + 0.5
    qt, krt, vt = (x.transpose(1, 2).contiguous() for x in (qr, kr, v))  # (B, H, T, D) for SDPA / flex

    f_swa = flops_swa(B, T, H, D, w)
    f_rattn = f_swa + flops_rla(B, T, H, Hkv, D)
    f_full = flops_swa(B, T, H, D, None)
    rows = []

    def add(method, fn, flops, note=""):
        try:
            ms = bench_ms(fn)
        except Exception as e:  # a baseline that cannot run at this size is reported, not fatal
            log(f"  {method}: failed ({type(e).__name__}: {str(e)[:160]})")
            rows.append(dict(T=T, H=H, Hkv=Hkv, D=D, window=w, method=method, ms=None, tflops=None, note=str(e)[:200]))
            return
        rows.append(dict(T=T, H=H, Hkv=Hkv, D=D, window=w, method=method, ms=ms, tflops=flops / ms * 1e-9, note=note))
        log(f"  {method:<22} {ms:9.3f} ms {flops / ms * 1e-9:8.1f} TFLOP/s {note}")

    ours_r = lambda: rattention_triton(q, k, v, window=w, rope=(cos, sin), swa_norm_weight=gs, rla_norm_weight=gr)  # noqa: E731
    ours_s = lambda: swa_attention_triton(qr, kr, v, window=w)  # noqa: E731
    o_r, o_s = ours_r(), ours_s()
    add("ours_rattention", ours_r, f_rattn)
    add("ours_swa", ours_s, f_swa)
    add("sdpa_full_causal", lambda: F.scaled_dot_product_attention(qt, krt, vt, is_causal=True, enable_gqa=Hkv != H), f_full)

    mask = create_block_mask(lambda b, h, qi, ki: (qi >= ki) & (qi - ki <= w), None, None, T, T, device=dev, _compile=True)
    flex = torch.compile(flex_attention)
    o_f = flex(qt, krt, vt, block_mask=mask, enable_gqa=Hkv != H).transpose(1, 2)
    add("flex_swa", lambda: flex(qt, krt, vt, block_mask=mask, enable_gqa=Hkv != H), f_swa,
        f"ours_swa vs flex rel.err {_rel(o_s, o_f):.2e}")

    if fla_ops is not None:
        parallel_attn = fla_ops[0]
        add("fla_swa", lambda: parallel_attn(qr, kr, v, window_size=w + 1), f_swa)
        unfused = lambda: unfused_rattention(fla_ops, q, k, v, qr, kr, gs, gr, w)  # noqa: E731
        try:
            o_u = unfused()
            note = f"ours_rattention vs unfused rel.err {_rel(o_r, o_u):.2e}"
        except Exception as e:
            note = f"check failed: {type(e).__name__}: {str(e)[:120]}"
        add("fla_unfused_rattention", unfused, f_rattn, note)
    del q, k, v, qr, kr, qt, krt, vt
    torch.cuda.empty_cache()
    return rows


def graph_ms(fn, rep_ms=100):
    """ms per call of fn replayed from a CUDA graph, as the model's decode runs (no launch overhead)."""
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms))


def copy_bandwidth(nbytes=2 * 2**30) -> float:
    """The card's measured device-to-device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / ms * 1e-6


def local_step_inputs(batch, H, Hkv, D, window, dtype, device):
    """A random RAttention local-decode cache (ring + fp32 state, rows at position 32768, so the leaving
    token is folded into the state) and one step's q, k, v; plus the bytes the step must read and write:
    ring k and v read, one slot written, state read and written, q / k / v in and o out."""
    from ..kernels import empty_local_cache

    cache = empty_local_cache(batch, window, Hkv, D, dtype=dtype, device=device, kind="rattn")
    for t in (cache.k, cache.v, cache.state):
        t.normal_()
    cache.pos = torch.full((batch,), 32768, dtype=torch.long, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, H, D, device=device, dtype=dtype, generator=g)
    k, v = (torch.randn(batch, Hkv, D, device=device, dtype=dtype, generator=g) for _ in range(2))
    el = torch.finfo(dtype).bits // 8
    nbytes = batch * (2 * (window + 1) * Hkv * D * el + 2 * Hkv * cache.state.shape[2] * D * 4 + 2 * Hkv * D * el
                      + 2 * H * D * el)
    return cache, q, k, v, nbytes


def bench_decode(batches, H, Hkv, D, window, dtype, contexts, log, kv_batches=(1, 8)):
    """Decode steps against the card's copy bandwidth: the RAttention local step (ring + fp32 state) at each
    batch, and flash-decoding over a full KV cache (`kv_decode`, our Triton) vs SDPA at each context. Each step
    is timed as replays of a CUDA graph, the way the model decodes."""
    import torch.nn.functional as F

    from ..kernels import Rope
    from ..kernels.decode.fused_recurrent import local_decode_step_triton
    from ..kernels.decode.kv_split import kv_decode_triton

    dev = "cuda"
    rows = []
    el = torch.finfo(dtype).bits // 8
    copy = copy_bandwidth()
    rows.append(dict(method="copy", batch=None, context=None, ms=None, gbps=copy, of_copy=1.0,
                     note="dst.copy_(src), 2 GiB", cache_bytes=None))
    log(f"  copy bandwidth: {copy:.0f} GB/s (read + write)")

    def add(method, batch, ctx, ms, nbytes, cache_bytes, note=""):
        gbps = nbytes / ms * 1e-6
        rows.append(dict(method=method, batch=batch, context=ctx, ms=ms, gbps=gbps, of_copy=gbps / copy, note=note,
                         cache_bytes=cache_bytes))
        log(f"  {method:<24} batch {batch:>3} ctx {str(ctx):>6}: {ms:.4f} ms, {gbps:.0f} GB/s "
            f"({gbps / copy:.0%} of copy)")

    rope = Rope(D)
    for batch in batches:
        cache, q, k1, v1, nbytes = local_step_inputs(batch, H, Hkv, D, window, dtype, dev)
        ms = graph_ms(lambda: local_decode_step_triton(q, k1, v1, cache, rope=rope))
        add("ours_decode_rattention", batch, "any", ms, nbytes, cache.nbytes(), f"window {window}")
        del cache
        torch.cuda.empty_cache()
    for batch in kv_batches:
        for ctx in contexts:
            try:
                kc = torch.randn(batch, ctx, Hkv, D, device=dev, dtype=dtype)
                vc = torch.randn(batch, ctx, Hkv, D, device=dev, dtype=dtype)
            except torch.OutOfMemoryError as e:
                log(f"  kv decode batch {batch} ctx {ctx}: out of memory ({e})")
                continue
            q = torch.randn(batch, H, D, device=dev, dtype=dtype)
            pos = torch.full((batch,), ctx - 1, dtype=torch.long, device=dev)
            nb = 2 * kc.numel() * el
            ms = graph_ms(lambda: kv_decode_triton(q, kc, vc, pos))
            add("ours_kv_decode", batch, ctx, ms, nb, nb)
            kt, vt, qd = kc.transpose(1, 2), vc.transpose(1, 2), q[:, :, None]  # SDPA's (B, Hkv, S, D) views
            ms = graph_ms(lambda: F.scaled_dot_product_attention(qd, kt, vt, enable_gqa=Hkv != H))
            add("sdpa_decode_full_cache", batch, ctx, ms, nb, nb, "same cache layout, strided views")
            del kc, vc, kt, vt
            torch.cuda.empty_cache()
    return rows


def bench_backward(T, H, Hkv, D, window, dtype, fla_ops, log):
    """Forward + backward of every method at one shape (gradients of q, k, v and, for RAttention, the norm
    weights, for a random upstream gradient). Returns a list of row dicts (ms, peak memory)."""
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from .. import kernels
    from ..kernels import Rope, apply_rope

    dev = "cuda"
    B, w = 1, window
    g = torch.Generator(device=dev).manual_seed(0)
    mk = lambda h: torch.randn(B, T, h, D, device=dev, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    q, k, v = mk(H), mk(Hkv), mk(Hkv)
    cos, sin = Rope(D).tables(T, dev)
    with torch.no_grad():
        qr0, kr0 = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    qr, kr = qr0.clone().requires_grad_(), kr0.clone().requires_grad_()  # rotated leaves for the SWA-only methods
    gs = (torch.rand(H, D, device=dev) + 0.5).requires_grad_()
    gr = (torch.rand(H, D, device=dev) + 0.5).requires_grad_()
    qt, krt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (qr, kr, v))
    do = torch.randn(B, T, H, D, device=dev, generator=g, dtype=dtype)
    dot = do.transpose(1, 2).contiguous()
    leaves = [q, k, v, qr, kr, gs, gr, qt, krt, vt]
    f_swa = 3.5 * flops_swa(B, T, H, D, w)  # forward + backward (2.5x the forward's products)
    f_rattn = f_swa + 3 * flops_rla(B, T, H, Hkv, D)
    f_full = 3.5 * flops_swa(B, T, H, D, None)
    rows = []

    def add(method, fn, flops, note=""):
        def step():
            for x in leaves:
                x.grad = None
            fn()
        try:
            step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            ms = bench_ms(step)
        except Exception as e:  # a method that cannot run at this size is reported, not fatal
            log(f"  {method}: failed ({type(e).__name__}: {str(e)[:160]})")
            rows.append(dict(T=T, H=H, Hkv=Hkv, D=D, window=w, method=method, ms=None, tflops=None, peak_mib=None,
                             note=str(e)[:200]))
            return
        rows.append(dict(T=T, H=H, Hkv=Hkv, D=D, window=w, method=method, ms=ms, tflops=flops / ms * 1e-9,
                         peak_mib=peak, note=note))
        log(f"  {method:<22} {ms:9.3f} ms {flops / ms * 1e-9:8.1f} TFLOP/s {peak:9.0f} MiB {note}")

    add("ours_rattention", lambda: kernels.rattention(q, k, v, window=w, rope=(cos, sin), swa_norm_weight=gs,
                                                      rla_norm_weight=gr, backend="triton").backward(do), f_rattn)
    add("ours_swa", lambda: kernels.swa_attention(qr, kr, v, window=w, backend="triton").backward(do), f_swa)
    add("sdpa_full_causal", lambda: F.scaled_dot_product_attention(qt, krt, vt, is_causal=True,
                                                                   enable_gqa=Hkv != H).backward(dot), f_full)
    mask = create_block_mask(lambda b, h, qi, ki: (qi >= ki) & (qi - ki <= w), None, None, T, T, device=dev, _compile=True)
    flex = torch.compile(flex_attention)
    add("flex_swa", lambda: flex(qt, krt, vt, block_mask=mask, enable_gqa=Hkv != H).backward(dot), f_swa)
    if fla_ops is not None:
        parallel_attn = fla_ops[0]
        add("fla_swa", lambda: _first(parallel_attn(qr, kr, v, window_size=w + 1)).backward(do), f_swa)

        def unfused():
            qq, kk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # RoPE under autograd, charged to it
            unfused_rattention(fla_ops, q, k, v, qq, kk, gs, gr, w).backward(do)

        add("fla_unfused_rattention", unfused, f_rattn, "RoPE charged to it (autograd through apply_rope)")
    del q, k, v, qr, kr, qt, krt, vt, leaves
    torch.cuda.empty_cache()
    return rows


def backward_ratios(rows):
    """Per (T, Hkv): the forward + backward ratios the training targets are stated in."""
    out = []
    for T, Hkv in sorted({(r["T"], r["Hkv"]) for r in rows}):
        ms = {r["method"]: r["ms"] for r in rows if r["T"] == T and r["Hkv"] == Hkv and r["ms"]}
        r = dict(T=T, Hkv=Hkv)
        for name, (a, b) in {"unfused_over_ours_rattention": ("fla_unfused_rattention", "ours_rattention"),
                             "sdpa_full_over_ours_rattention": ("sdpa_full_causal", "ours_rattention"),
                             "ours_rattention_over_flex_swa": ("ours_rattention", "flex_swa"),
                             "ours_swa_over_flex_swa": ("ours_swa", "flex_swa")}.items():
            r[name] = ms[a] / ms[b] if a in ms and b in ms else None
        out.append(r)
    return out


def ratios(rows):
    """Per (T, Hkv): the ratios the targets are stated in."""
    out = []
    keys = sorted({(r["T"], r["Hkv"]) for r in rows})
    for T, Hkv in keys:
        ms = {r["method"]: r["ms"] for r in rows if r["T"] == T and r["Hkv"] == Hkv and r["ms"]}
        r = dict(T=T, Hkv=Hkv)
        pairs = {
            "unfused_over_ours_rattention": ("fla_unfused_rattention", "ours_rattention"),
            "sdpa_full_over_ours_rattention": ("sdpa_full_causal", "ours_rattention"),
            "ours_rattention_over_flex_swa": ("ours_rattention", "flex_swa"),
            "ours_swa_over_flex_swa": ("ours_swa", "flex_swa"),
            "ours_swa_over_fla_swa": ("ours_swa", "fla_swa"),
            "ours_rattention_over_ours_swa": ("ours_rattention", "ours_swa"),
        }
        for name, (a, b) in pairs.items():
            r[name] = ms[a] / ms[b] if a in ms and b in ms else None
        out.append(r)
    return out


def format_table(result) -> str:
    lines = [f"# {result['command']}", f"# device: {result['device']}; torch {result['torch']}; triton {result['triton']}; "
             f"fla: {result['fla']}", "", "## prefill (ms, TFLOP/s of useful work; FLOP formulas in rattn_eval/bench/kernels.py)", ""]
    lines.append(f"{'T':>7} {'Hkv':>4} {'method':<24} {'ms':>9} {'TFLOP/s':>8}  note")
    for r in result["prefill"]:
        ms = f"{r['ms']:9.3f}" if r["ms"] else "   failed"
        tf = f"{r['tflops']:8.1f}" if r["tflops"] else "       -"
        lines.append(f"{r['T']:>7} {r['Hkv']:>4} {r['method']:<24} {ms} {tf}  {r['note']}")
    lines += ["", "## ratios (time / time; < 1 means the first is faster)", ""]
    names = [k for k in (result["ratios"][0] if result["ratios"] else {}) if k not in ("T", "Hkv")]
    lines.append(f"{'T':>7} {'Hkv':>4} " + " ".join(f"{n:>32}" for n in names))
    for r in result["ratios"]:
        lines.append(f"{r['T']:>7} {r['Hkv']:>4} " + " ".join(f"{r[n]:>32.3f}" if r[n] else f"{'-':>32}" for n in names))
    if result.get("backward"):
        lines += ["", "## forward + backward (ms, TFLOP/s of useful work, peak memory above the inputs)", ""]
        lines.append(f"{'T':>7} {'Hkv':>4} {'method':<24} {'ms':>9} {'TFLOP/s':>8} {'MiB':>8}  note")
        for r in result["backward"]:
            ms = f"{r['ms']:9.3f}" if r["ms"] else "   failed"
            tf = f"{r['tflops']:8.1f}" if r["tflops"] else "       -"
            mem = f"{r['peak_mib']:8.0f}" if r["peak_mib"] is not None else "       -"
            lines.append(f"{r['T']:>7} {r['Hkv']:>4} {r['method']:<24} {ms} {tf} {mem}  {r['note']}")
        lines += ["", "## forward + backward ratios (time / time)", ""]
        names = [k for k in result["backward_ratios"][0] if k not in ("T", "Hkv")] if result["backward_ratios"] else []
        lines.append(f"{'T':>7} {'Hkv':>4} " + " ".join(f"{n:>32}" for n in names))
        for r in result["backward_ratios"]:
            lines.append(f"{r['T']:>7} {r['Hkv']:>4} " + " ".join(f"{r[n]:>32.3f}" if r[n] else f"{'-':>32}" for n in names))
    if result.get("decode"):
        lines += ["", "## decode (one token per sequence; GB/s of bytes read + written, against the copy bandwidth)", ""]
        for r in result["decode"]:
            if r["method"] == "copy":
                lines.append(f"{'copy':<24} {'':>19} {'':>12} {r['gbps']:8.0f} GB/s {'100%':>5}  {r['note']}")
                continue
            lines.append(f"{r['method']:<24} batch {r['batch']:>3} ctx {str(r['context']):>6} {r['ms']:9.4f} ms "
                         f"{r['gbps']:8.0f} GB/s {r['of_copy']:5.0%}  cache {r['cache_bytes'] / 2**20:.1f} MiB {r['note']}")
    return "\n".join(lines) + "\n"


def check_shapes(lengths, heads, kv_heads, head_dim, window) -> None:
    """One ConfigError for a shape the kernels do not take, before anything is timed."""
    from ..kernels import triton_head_dim_ok

    if not lengths or min(lengths) < 1:
        raise ConfigError(f"--lengths must be >= 1, got {', '.join(map(str, lengths)) or 'none'}")
    if heads < 1 or not kv_heads or any(n < 1 or heads % n for n in kv_heads):
        raise ConfigError(f"--kv-heads must divide the {heads} query heads, got "
                          f"{', '.join(map(str, kv_heads)) or 'none'}")
    if not triton_head_dim_ok(head_dim):
        raise ConfigError(f"head dim {head_dim}: the Triton kernels take power-of-two head dims 16..256")
    if window < 0:
        raise ConfigError(f"--window must be >= 0, got {window}")


def bench_kernels(*, lengths=DEFAULT_LENGTHS, heads=16, kv_heads=(16, 4), head_dim=128, window=512, dtype="bfloat16",
                  decode=True, decode_batches=(8, 64), decode_contexts=(32768, 131072), backward=False, forward=True,
                  out_dir=None, command="", log=print):
    """Run the kernel benchmark; returns the result dict and writes kernels.json / kernels.txt to out_dir."""
    check_shapes(lengths, heads, kv_heads, head_dim, window)
    dt = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if dt is None:
        raise ConfigError(f"bench dtype must be bfloat16 or float16, got {dtype!r}")
    if not torch.cuda.is_available():
        raise ConfigError("`rattn-eval bench kernels` needs a CUDA GPU; none is visible")
    import triton

    fla_ops, fla_missing = _fla()
    fla_desc = "fla-core " + __import__("fla").__version__ if fla_ops else fla_missing
    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; {fla_desc}")
    if fla_ops is None:
        log("NOTE: fla baselines (fla_swa, fla_unfused_rattention) are skipped: " + fla_missing)
    prefill, bwd = [], []
    for Hkv in kv_heads:
        for T in lengths:
            if forward:
                log(f"prefill T={T} H={heads} Hkv={Hkv} D={head_dim} w={window} {dtype}")
                t0 = time.time()
                prefill += bench_prefill(T, heads, Hkv, head_dim, window, dt, fla_ops, log)
                log(f"  ({time.time() - t0:.1f} s)")
            if backward:
                log(f"forward + backward T={T} H={heads} Hkv={Hkv} D={head_dim} w={window} {dtype}")
                t0 = time.time()
                bwd += bench_backward(T, heads, Hkv, head_dim, window, dt, fla_ops, log)
                log(f"  ({time.time() - t0:.1f} s)")
    dec = []
    if decode:
        log(f"decode batches={decode_batches} H={heads} Hkv={min(kv_heads)} D={head_dim} w={window}")
        dec = bench_decode(decode_batches, heads, min(kv_heads), head_dim, window, dt, decode_contexts, log)
    result = dict(command=command or "python -m rattn_eval.bench.kernels", device=torch.cuda.get_device_name(),
                  torch=torch.__version__, triton=triton.__version__, fla=fla_desc, python=platform.python_version(),
                  prefill=prefill, ratios=ratios(prefill), backward=bwd, backward_ratios=backward_ratios(bwd), decode=dec)
    text = format_table(result)
    log("\n" + text)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kernels.json").write_text(json.dumps(result, indent=1))
        (out / "kernels.txt").write_text(text)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="rattn-eval bench kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int_list, default=",".join(str(x) for x in DEFAULT_LENGTHS),
                    help="comma-separated T values, e.g. 4096,32k")
    ap.add_argument("--kv-heads", type=int_list, default="16,4", help="comma-separated KV head counts (H=16)")
    ap.add_argument("--window", type=int_at_least(0), default=512)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--no-decode", action="store_true", help="skip the decode benchmark")
    ap.add_argument("--backward", action="store_true", help="also time forward + backward (training)")
    ap.add_argument("--no-prefill", action="store_true", help="skip the forward-only prefill benchmark")
    ap.add_argument("--out", default=None, help="directory for kernels.json and kernels.txt")
    a = ap.parse_args(argv)
    cmd = "rattn-eval bench kernels " + " ".join(sys.argv[1:] if argv is None else argv)
    bench_kernels(lengths=a.lengths, kv_heads=a.kv_heads, window=a.window, dtype=a.dtype, decode=not a.no_decode,
                  backward=a.backward, forward=not a.no_prefill, out_dir=a.out, command=cmd)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, "rattn-eval bench kernels"))
