"""Figures for results/train: training loss of the tiny models and the in-format recall probe.

    python -m rattn_eval.train.plots results/train
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..models.registry import ShippedCheckpoint, names

NAMES = names(ShippedCheckpoint)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(results: Path) -> Path:
    """Loss vs tokens seen, both stages on one axis (stage 2 continues stage 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in NAMES:
        s1 = json.loads((results / f"summary_stage1_{name}.json").read_text())
        tok_per_step = s1["config"]["batch_size"] * s1["config"]["seq_len"]
        steps1 = s1["steps"]
        xs, ys = [], []
        for stage, offset in (("stage1", 0), ("stage2", steps1)):
            for r in _read_jsonl(results / f"loss_{stage}_{name}.jsonl"):
                xs.append((r["step"] + offset) * tok_per_step / 1e6)
                ys.append(r["loss"])
        ax.plot(xs, ys, label=name, lw=1)
    ax.set_ylim(2.5, 6)
    ax.axvline(steps1 * tok_per_step / 1e6, color="gray", ls=":", lw=1)
    ax.text(steps1 * tok_per_step / 1e6, 5.9, " stage 2", color="gray", va="top")
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("training loss (all tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    out = results / "loss_curves.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_probe(results: Path) -> Path:
    """In-format recall score vs document length per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_jsonl(results / "recall_probe.jsonl")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in NAMES:
        pts = sorted((r["length"], r["score"]) for r in rows if r["model"] == name)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.axvline(1024, color="gray", ls=":", lw=1)
    ax.text(1024, 98, " training length", color="gray", va="top")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1024, 2048, 4096, 8192], ["1k", "2k", "4k", "8k"])
    ax.set_ylim(-2, 102)
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("recall (% exact)")
    ax.set_title(f"in-format recall probe (n={rows[0]['n']} per point)")
    ax.legend()
    ax.grid(alpha=0.3)
    out = results / "recall_probe.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_finetune(results: Path, name: str = "tiny-rattn") -> Path:
    """Stage 3 (recall fine-tune on a CPU): loss on all tokens and on answer tokens vs step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_jsonl(results / f"loss_stage3_{name}.jsonl")
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in rows], lw=1, label="all tokens")
    ax.plot(steps, [r["answer_loss"] for r in rows], lw=1, label="answer tokens (+ <eos>)")
    ax.set_xlabel("fine-tuning step (4 x 512 tokens)")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"{name}: recall fine-tune on 1 CPU core (stage 3)")
    ax.legend()
    ax.grid(alpha=0.3)
    out = results / f"loss_stage3_{name}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "results/train")
    print(plot_loss(folder))
    for name in ("tiny-full", "tiny-swa", "tiny-rattn"):
        if (folder / f"loss_stage3_{name}.jsonl").is_file():
            print(plot_finetune(folder, name))
    if (folder / "recall_probe.jsonl").is_file():
        print(plot_probe(folder))
