"""The README's end-to-end tables, printed from the committed H200 outputs (nothing typed by hand).

    python results/bench/summarize_e2e.py > results/bench/e2e_summary.md
"""

import json
from pathlib import Path

HERE = Path(__file__).parent


def rows(name):
    return json.loads((HERE / "h200_e2e" / name).read_text())["rows"]


def pair_table(model_file, title):
    data = rows(model_file)
    get = {(r["backend"], r["context"], r["batch"]): r for r in data}
    print(f"\n{title}\n")
    print("| context | batch | prefill triton | prefill hf | ratio | decode tok/s triton | decode tok/s hf | ratio | cache / seq |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (be, ctx, b), r in sorted(get.items(), key=lambda x: (x[0][1], x[0][2])):
        if be != "triton":
            continue
        h = get.get(("hf", ctx, b))
        ok = h is not None and "prefill_s" in h and h.get("prefill_s") is not None

        def f(x, fmt):
            return fmt.format(x) if x is not None else "—"
        pre_h = f"{h['prefill_s']:.3f} s" if ok else ("out of memory" if h else "—")
        dec_h = f"{h['decode_tok_s']:,.0f}" if ok else "—"
        print(f"| {ctx} | {b} | {r['prefill_s']:.3f} s | {pre_h} | {f(h['prefill_s'] / r['prefill_s'] if ok else None, '{:.2f}x')} "
              f"| {r['decode_tok_s']:,.0f} | {dec_h} | {f(r['decode_tok_s'] / h['decode_tok_s'] if ok else None, '{:.2f}x')} "
              f"| {r['cache_bytes_per_seq'] / 2**20:.1f} MiB |")


pair_table("e2e_gemma3-270m.json", "Gemma-3-270M (random weights of the real config, window 511 = HF sliding_window 512), bf16, one H200, 32 new tokens:")
pair_table("e2e_smollm2-135m.json", "SmolLM2-135M (random weights of the real config; all layers global), bf16, one H200, 32 new tokens:")

print("\nWindow sweep, Gemma-3-270M shape, context 32,736, triton:\n")
print("| window | prefill B=1 | prefill B=32 | decode tok/s B=1 | decode tok/s B=32 | cache / seq |")
print("|---:|---:|---:|---:|---:|---:|")
sweep = rows("e2e_gemma3-270m_windows.json")
for w in sorted({r["window"] for r in sweep}):
    a = next(r for r in sweep if r["window"] == w and r["batch"] == 1)
    b = next(r for r in sweep if r["window"] == w and r["batch"] == 32)
    print(f"| {w} | {a['prefill_s']:.3f} s | {b['prefill_s']:.3f} s | {a['decode_tok_s']:,.0f} | {b['decode_tok_s']:,.0f} "
          f"| {a['cache_bytes_per_seq'] / 2**20:.1f} MiB |")

cache = json.loads((HERE / "h200_e2e" / "cache_memory.json").read_text())
print("\nDecode cache per sequence, measured from the allocated cache tensors after a prefill: 8 layers, "
      "[rattn x3, global] x2, window 512, 8 heads / 2 KV heads x 128, vs the same shape all global:\n")
print("| context | RAttention model | of which its 6 RAttention layers | full attention | full / RAttention |")
print("|---:|---:|---:|---:|---:|")
for t in cache["table"]:
    print(f"| {t['length']:,} | {t['rattn_bytes'] / 2**20:.2f} MiB | {t['rattn_local_bytes'] / 2**20:.2f} MiB "
          f"| {t['full_bytes'] / 2**20:.2f} MiB | {t['ratio_full_over_rattn']:.2f}x |")

ruler = json.loads((HERE / "h200_ruler" / "ruler_throughput.json").read_text())
print("\nRULER throughput, niah_single_1 at 32k, 24 samples, batch 8, prefill + 128-token answers "
      "(random weights never stop early), Gemma-3-270M shape:\n")
print("| backend | samples/s | generation wall |")
print("|---|---:|---:|")
for be in ("triton", "hf"):
    print(f"| {be} | {ruler[be]['samples_per_s']:.3f} | {ruler[be]['generate_s']:.2f} s |")
print(f"\ntriton / hf: **{ruler['ratio_samples_per_s']:.2f}x**")

two = json.loads((HERE / "h200x2_scaling" / "report.json").read_text())
print(f"\n1 vs 2 GPUs (torchrun), {two['model']}, {', '.join(two['tasks'])} at 32k, {two['records'][0]} samples, batch {two['batch_size']}:\n")
print("| processes | samples/s (model load excluded) | generation wall |")
print("|---:|---:|---:|")
for s in (two["single"], two["two"]):
    print(f"| {s['world_size']} | {s['samples_per_s']:.2f} | {s['generate_s']:.2f} s |")
print(f"\n2 / 1: **{two['ratio_samples_per_s']:.2f}x** over the whole runs; identical scores and predictions: "
      f"{two['scores_match'] and two['predictions_differ'] == 0}")
