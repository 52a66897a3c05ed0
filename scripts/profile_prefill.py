"""Where a prefill's GPU time goes: CUDA kernel time of one prompt's prefill, ours against transformers.

    python scripts/profile_prefill.py --model llama-3.2-1b --context 32736 --out prof.json

Builds the registry model's config with random weights (as `rattn-eval bench e2e --random-weights`), then
for each backend warms up, times two prefills (generate with one new token), and profiles a third with
torch.profiler. Kernel times are summed by name into attention (SDPA / flash / cuDNN kernels and this
project's Triton attention kernels), gemm (cuBLAS / CUTLASS / nvjet) and other (norms, RoPE, activations,
copies). If attention + gemm of one backend is close
to another's whole prefill, no change outside those kernels can make the first much faster. On a CPU
(`--device cpu`) the profile sums operators' CPU self time instead (for a dry run of the script).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from rattn_eval.bench.e2e import build_backend, native_weights, random_prompts
from rattn_eval.models.config import preset

# Substrings of kernel (or, on a CPU, operator) names, matched in this order: attention first, since
# cuDNN's attention kernels also carry GEMM-like tile names. This project's Triton attention kernels
# (swa_*, rla_*, decode_*, kv_decode_*) count as attention; its norm-combine kernels count as other.
CATEGORIES = (
    ("attention", ("flash", "fmha", "cudnn", "attn", "attention", "sdpa", "swa_", "rla_", "decode_")),
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "matmul", "cublas", "addmm", "bmm", "aten::mm")),
)


def category(kernel: str) -> str:
    name = kernel.lower()
    for cat, needles in CATEGORIES:
        if any(n in name for n in needles):
            return cat
    return "other"


def profile_prefill(model_name: str, context: int, backends: list[str], device: torch.device, top: int = 14) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = preset(model_name)
    weights = native_weights(config, device, dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out = {}
    for backend in backends:
        model = build_backend(config, weights, backend, device, dtype)
        model.generate(random_prompts(config.vocab_size, 64, 1, 0), max_new_tokens=2, eos_ids=[])  # warm-up
        prompt = random_prompts(config.vocab_size, context, 1, 1)
        for _ in range(2):
            model.generate(prompt, max_new_tokens=1, eos_ids=[])
            sync()
        wall = model.last_stats["prefill_s"]
        activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
        with profile(activities=[activity]) as prof:
            model.generate(prompt, max_new_tokens=1, eos_ids=[])
            sync()
        sums, rows = {}, []
        for e in prof.key_averages():
            ms = (e.device_time_total if device.type == "cuda" else e.self_cpu_time_total) / 1e3
            if ms <= 0:
                continue
            sums[category(e.key)] = sums.get(category(e.key), 0.0) + ms
            rows.append((ms, e.count, e.key[:110]))
        rows.sort(reverse=True)
        out[backend] = dict(prefill_wall_ms=wall * 1e3, kernel_ms=sums, top=rows[:top])
        print(backend, f"prefill wall {wall * 1e3:.1f} ms", {k: round(v, 1) for k, v in sums.items()}, flush=True)
        for ms, count, key in rows[:top]:
            print(f"   {ms:9.2f} ms x{count:5d} {key}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a registry name with a config, e.g. llama-3.2-1b")
    ap.add_argument("--context", type=int, required=True, help="prompt length in tokens")
    ap.add_argument("--backends", default="triton,hf", help="comma-separated, as bench e2e")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="JSON file for the sums and the top kernels")
    a = ap.parse_args(argv)
    result = profile_prefill(a.model, a.context, a.backends.split(","), torch.device(a.device))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
