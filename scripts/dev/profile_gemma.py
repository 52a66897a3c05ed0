"""Profile gemma3-270m (random weights, bf16, triton backend) on one GPU: prefill at 32k (B=1 and a
ragged B=8 batch like a RULER batch) and eager decode steps at B=8; prints the top CUDA kernels."""
import time

import torch
from torch.profiler import ProfilerActivity, profile

from rattn_eval.models import build_model, preset

cfg = preset("gemma3-270m")
model = build_model(cfg, backend="triton", device="cuda", dtype=torch.bfloat16)


def timed(fn, n=3):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n, out


def show(prof, title, n=25):
    print(f"\n===== {title}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=n, max_name_column_width=70))


with torch.inference_mode():
    for B, T, ragged in ((1, 32736, False), (8, 32489, True)):
        lengths = torch.tensor([T - (13 * i if ragged else 0) for i in range(B)], device="cuda")
        ids = torch.randint(0, 1000, (B, T), device="cuda")
        dt, _ = timed(lambda: model.prefill(ids, lengths, T + 128))
        print(f"prefill B={B} T={T} ragged={ragged}: {dt * 1e3:.1f} ms, {int(lengths.sum()) / dt:,.0f} tok/s")
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            model.prefill(ids, lengths, T + 128); torch.cuda.synchronize()
        show(prof, f"prefill B={B} T={T}")
    # decode through generate (CUDA graphs on, then off): 128 new tokens, ragged batch of 8
    prompts = [ids[b, : int(lengths[b])].tolist() for b in range(ids.shape[0])]
    for graphs in (True, False):
        model.cuda_graphs = graphs
        model.generate([p[:4096] for p in prompts], max_new_tokens=8, eos_ids=[])  # warm-up
        t = time.perf_counter()
        out = model.generate(prompts, max_new_tokens=128, eos_ids=[])
        st = model.last_stats
        print(f"generate B=8 ~32.5k + 128, cuda_graphs={graphs}: wall {time.perf_counter() - t:.3f} s, "
              f"prefill {st['prefill_s']:.3f} s, decode {st['decode_s']:.3f} s "
              f"({st['decode_s'] / 127 * 1e3:.2f} ms/step)")
        if graphs:
            ref = out
        else:
            print("graph == eager tokens:", out == ref)
    model.cuda_graphs = True
    logits, caches = model.prefill(ids, lengths, T + 128)
    pos = lengths.clone()
    tok = logits.argmax(-1)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for i in range(5):
            logits = model.decode_step(tok, pos, caches); pos = pos + 1
        torch.cuda.synchronize()
    show(prof, "eager decode x5 by cuda time")
