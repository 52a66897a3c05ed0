"""H200 exploration: the key loop of the softmax-window kernel, in a stand-alone copy of plain SWA
(dense batch, TMA key / value tiles, no RoPE, no RLA), against the production `swa_attention`:

    python3 results/bench/swa_loop_explore.py [--quick]     # (--quick: T = 512, H = 4, D = 64, w = 100, a CPU check under the interpreter)

Variants (constexpr flags of `swa_x_kernel`):
  LOOP 0: three loops as in swa_fwd_kernel (masked edge tiles, unmasked interior, masked diagonal);
       1: one loop over every tile, always masked (one software pipeline instead of three);
       2: the unmasked interior first, then one masked loop over the edge and diagonal tiles.
  EXP16: p = 2^(s - m) through ex2.approx.f16x2 (two exponentials per MUFU op) instead of fp32 ex2.
  ACC: the P @ V product accumulates into the rescaled accumulator (tl.dot(p, v, acc)).
Each variant: ms per call at T = 32k, B = 1, H = 16, D = 128, w = 512, bf16, Hkv 16 and 4, and max |diff| against
the production kernel's output.
"""

import argparse
import time

import torch
import triton
import triton.language as tl

from rattn_eval.kernels.swa.parallel import INTERPRET, LOG2E, TensorDescriptor, swa_attention_triton

T0 = time.time()


def P(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


@triton.jit
def _exp2(x, EXP16: tl.constexpr):
    if EXP16:
        h = x.to(tl.float16)
        return tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [h], dtype=tl.float16, is_pure=True,
                                         pack=2)
    else:
        return tl.exp2(x)


@triton.jit
def _tile(qs, k_desc, v_desc, row, kv_head, offs_m, offs_j, window, L, m_i, l_i, acc, MASK: tl.constexpr,
          EXP16: tl.constexpr, ACC: tl.constexpr, dt: tl.constexpr):
    k = k_desc.load([row, kv_head]).to(dt)
    v = v_desc.load([row, kv_head]).to(dt)
    sc = tl.dot(qs, tl.trans(k))
    if MASK:
        diff = offs_m[:, None] - offs_j[None, :]
        ok = (diff >= 0) & (diff <= window) & (offs_j < L)[None, :]
        sc = tl.where(ok, sc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = _exp2(sc - m_new[:, None], EXP16)
    l_i = l_i * alpha + tl.sum(p.to(tl.float32), axis=1)
    if ACC:
        acc = tl.dot(p.to(dt), v, acc * alpha[:, None])
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(dt), v)
    return m_new, l_i, acc


@triton.jit
def swa_x_kernel(q_ptr, k_desc, v_desc, o_ptr, T, H, Hkv, window, qk_scale,
                 D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, LOOP: tl.constexpr, EXP16: tl.constexpr,
                 ACC: tl.constexpr, HF: tl.constexpr):
    """Grid (T / BM, H) (HF: (H, T / BM)); B = 1, T a multiple of BM; q / o (T, H, D), k / v (T, Hkv, D)."""
    if HF:
        pid_m = tl.program_id(1)
        h = tl.program_id(0)
    else:
        pid_m = tl.program_id(0)
        h = tl.program_id(1)
    L = T
    hk = h // (H // Hkv)
    kv_head = hk * D
    s0 = pid_m * BM
    dt = q_ptr.dtype.element_ty
    offs_m = s0 + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BN)
    q_rows = offs_m.to(tl.int64) * (H * D) + h * D
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :])
    qs = (q.to(tl.float32) * qk_scale).to(dt)
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, D], dtype=tl.float32)
    lo = tl.maximum(s0 - window, 0)
    hi = tl.minimum(s0 + BM, L)
    edge_end = s0 + BM - 1 - window
    n_tot = tl.cdiv(hi - lo, BN)
    n_a = tl.minimum(tl.cdiv(tl.maximum(edge_end - lo, 0), BN), n_tot)
    n_b = tl.minimum(tl.maximum((s0 - lo + 1) // BN, n_a), n_tot)
    if LOOP == 0:
        for i in range(0, n_a):
            j0 = lo + i * BN
            m_i, l_i, acc = _tile(qs, k_desc, v_desc, j0, kv_head, offs_m, j0 + offs_n, window, L, m_i, l_i, acc,
                                  True, EXP16, ACC, dt)
        for i in range(n_a, n_b):
            j0 = lo + i * BN
            m_i, l_i, acc = _tile(qs, k_desc, v_desc, j0, kv_head, offs_m, j0 + offs_n, window, L, m_i, l_i, acc,
                                  False, EXP16, ACC, dt)
        for i in range(n_b, n_tot):
            j0 = lo + i * BN
            m_i, l_i, acc = _tile(qs, k_desc, v_desc, j0, kv_head, offs_m, j0 + offs_n, window, L, m_i, l_i, acc,
                                  True, EXP16, ACC, dt)
    elif LOOP == 1:
        for i in range(0, n_tot):
            j0 = lo + i * BN
            m_i, l_i, acc = _tile(qs, k_desc, v_desc, j0, kv_head, offs_m, j0 + offs_n, window, L, m_i, l_i, acc,
                                  True, EXP16, ACC, dt)
    else:
        for i in range(n_a, n_b):
            j0 = lo + i * BN
            m_i, l_i, acc = _tile(qs, k_desc, v_desc, j0, kv_head, offs_m, j0 + offs_n, window, L, m_i, l_i, acc,
                                  False, EXP16, ACC, dt)
        for i in range(0, n_a + n_tot - n_b):
            j0 = lo + tl.where(i < n_a, i, n_b + i - n_a) * BN
            m_i, l_i, acc = _tile(qs, k_desc, v_desc, j0, kv_head, offs_m, j0 + offs_n, window, L, m_i, l_i, acc,
                                  True, EXP16, ACC, dt)
    o = acc / l_i[:, None]
    tl.store(o_ptr + q_rows[:, None] + offs_d[None, :], o.to(o_ptr.dtype.element_ty))


def swa_x(q, k, v, window, cfg):
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    assert B == 1 and T % cfg["BM"] == 0
    o = torch.empty_like(q)
    kd = TensorDescriptor.from_tensor(k.view(T, Hkv * D), [cfg["BN"], D])
    vd = TensorDescriptor.from_tensor(v.view(T, Hkv * D), [cfg["BN"], D])
    grid = (T // cfg["BM"], H)
    if cfg.get("HF"):
        grid = grid[::-1]
    swa_x_kernel[grid](q, kd, vd, o, T, H, Hkv, window, D ** -0.5 * LOG2E, D=D, BM=cfg["BM"], BN=cfg["BN"],
                       LOOP=cfg["LOOP"], EXP16=cfg["EXP16"], ACC=cfg["ACC"], HF=cfg.get("HF", 0),
                       num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o


def c(BM, BN, nw, ns, LOOP, EXP16=0, ACC=0, HF=0):
    return dict(BM=BM, BN=BN, num_warps=nw, num_stages=ns, LOOP=LOOP, EXP16=EXP16, ACC=ACC, HF=HF)


CFGS = ([c(64, 64, 4, 3, L, e, a) for L in (0, 1, 2) for e in (0, 1) for a in (0, 1)]
        + [c(64, 64, 4, 3, L, 0, 1, 1) for L in (0, 1, 2)]
        + [c(128, 64, 8, 3, L, e, 1) for L in (1, 2) for e in (0, 1)]
        + [c(128, 128, 8, 2, L, e, 1) for L in (1, 2) for e in (0, 1)]
        + [c(64, 64, 4, 4, L, 0, 1) for L in (1, 2)] + [c(64, 64, 4, 2, L, 0, 1) for L in (1, 2)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--until", type=float, default=400.0)
    args = ap.parse_args()
    T, H, D, W = (512, 4, 64, 100) if args.quick else (32768, 16, 128, 512)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float16
    torch.manual_seed(0)
    for Hkv in ((2,) if args.quick else (16, 4)):
        q = torch.randn(1, T, H, D, device=dev, dtype=dtype)
        k = torch.randn(1, T, Hkv, D, device=dev, dtype=dtype)
        v = torch.randn(1, T, Hkv, D, device=dev, dtype=dtype)
        ref = swa_attention_triton(q, k, v, window=W)
        if dev == "cuda":
            t = triton.testing.do_bench(lambda: swa_attention_triton(q, k, v, window=W), warmup=5, rep=60)
            P(f"Hkv {Hkv}: production swa_attention {t:.4f} ms")
        for i, cfg in enumerate(CFGS):
            if time.time() - T0 > args.until:
                P("time up")
                break
            if INTERPRET and (cfg["EXP16"] or cfg["BM"] > 64):
                continue
            try:
                o = swa_x(q, k, v, W, cfg)
                err = (o.float() - ref.float()).abs().max().item()
                t = triton.testing.do_bench(lambda: swa_x(q, k, v, W, cfg), warmup=5, rep=60) if dev == "cuda" else 0.0
                P(f"Hkv {Hkv} cfg {i} {cfg}: {t:.4f} ms, max|diff| {err:.2e}")
            except Exception as e:  # noqa: BLE001
                P(f"Hkv {Hkv} cfg {i} {cfg}: failed {type(e).__name__}: {str(e)[:200]}")
        if args.quick:
            break


if __name__ == "__main__":
    main()
