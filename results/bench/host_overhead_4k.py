"""H200: host launch cost against GPU time at T = 4k (B = 1, H = 16, D = 128, w = 512, bf16), plain SWA with pointer
loads and with TMA tiles, and RAttention (default design, with and without phi(q) from a pre-pass):

    python3 results/bench/host_overhead_4k.py

Per variant: do_bench time (CUDA events over back-to-back calls), the host time per call (launches only, no sync),
and the GPU time per call inside one CUDA graph (no host cost).
"""

import time
from importlib import import_module

import torch
import triton.testing

rf = import_module("rattn_eval.kernels.rattention.fused")
sp = import_module("rattn_eval.kernels.swa.parallel")
from rattn_eval.kernels import Rope  # noqa: E402

H, D, W = 16, 128, 512


def host_ms(fn, n=200):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e3
    torch.cuda.synchronize()
    return host


def graph_ms(fn, n=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    return triton.testing.do_bench(lambda: g.replay(), warmup=3, rep=50) / n


def main():
    dev = "cuda"
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    for T in (4096, 16384):
        for Hkv in (16, 4):
            g = torch.Generator(device=dev).manual_seed(0)
            q = torch.randn(1, T, H, D, device=dev, generator=g).to(torch.bfloat16)
            k = torch.randn(1, T, Hkv, D, device=dev, generator=g).to(torch.bfloat16)
            v = torch.randn(1, T, Hkv, D, device=dev, generator=g).to(torch.bfloat16)
            tables = Rope(D).tables(T, dev)
            variants = {}
            for name, cfg in (("swa pointer", dict(BM=64, BN=64, num_warps=4, num_stages=3)),
                              ("swa tma", dict(BM=64, BN=64, num_warps=4, num_stages=3, tma=True))):
                seqs = sp.sequence_table(1, T, q.device, None, None, 64)
                out = torch.empty_like(q)
                variants[name] = (lambda cfg=cfg, seqs=seqs, out=out: sp.launch_swa_fwd(
                    q, k, v, out, seqs, window=W, scale=D ** -0.5, cfg=cfg))
            seg = dict(rf.RLA_TUNING["segment"])
            for name, tuning in (("rattention default", None),
                                 ("rattention no phi_q", {"segment": dict(seg, phi_q=False, num_stages=2)})):
                variants[name] = (lambda tuning=tuning: rf.rattention_design(
                    q, k, v, window=W, rope=tables, scale=None, feature_map="softmax", swa_norm_weight=None,
                    rla_norm_weight=None, eps=1e-6, lengths=None, cu_seqlens=None, design="segment", tuning=tuning))
            for name, fn in variants.items():
                t_bench = triton.testing.do_bench(fn, warmup=5, rep=50)
                t_host = host_ms(fn)
                try:
                    t_graph = f"{graph_ms(fn):.4f}"
                except Exception as e:  # noqa: BLE001
                    t_graph = f"n/a ({type(e).__name__})"
                print(f"T {T} Hkv {Hkv} {name:22s} do_bench {t_bench:.4f} ms  host/call {t_host:.4f} ms  "
                      f"graph/call {t_graph} ms", flush=True)


if __name__ == "__main__":
    main()
