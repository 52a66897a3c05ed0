"""In-format recall probe: the training's own synthetic recall format at chosen lengths.

RULER's templates (rattn_eval.tasks) are deliberately never trained on. This probe asks the other
question: does a model still retrieve in the format it was trained on when the document is
longer than the training context and the fact lies far outside the local window? It builds
`single` recall documents (one fact in filler, one question) of about `length` tokens with
rattn_eval.train.synthetic, greedily decodes the answer and scores exact containment.

    python -m rattn_eval.train.probe --models tiny-rattn,tiny-swa,tiny-full --lengths 1k,2k,4k,8k -n 12 --seeds 0,1
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from pathlib import Path

from .synthetic import Pools, RecallGenerator


def probe_documents(gen: RecallGenerator, tok, *, length: int, n: int, seed: int):
    """n (prompt, answer, depth) with prompt tokens in [0.85 length, length - 32]; depth is the fact's
    relative position in the prompt (0 = start)."""
    rng = random.Random(f"probe|{length}|{seed}")
    out = []
    while len(out) < n:
        doc = gen._single(rng, int(length * rng.uniform(2.6, 3.6)))
        prompt, answer = doc.rsplit(" ", 1)
        ntok = len(tok.encode_prompt(prompt))
        if not 0.85 * length <= ntok <= length - 32:
            continue
        key_at = prompt.find(answer)
        out.append((prompt, answer, round(key_at / len(prompt), 3)))
    return out


def run_probe(models: list[str], lengths: list[int], *, n: int, seeds: list[int], data_dir: str,
              out: str | None = None, log=print) -> list[dict]:
    """Score each model at each length on n documents per seed (n * len(seeds) per point); rows as JSONL."""
    from ..models import load_model

    data_dir = Path(data_dir)
    words = json.loads((data_dir / "words.json").read_text())
    with gzip.open(data_dir / "sentences.txt.gz", "rt", encoding="utf-8") as f:
        sentences = f.read().splitlines()
    gen = RecallGenerator(Pools(sentences=sentences, nouns=words["nouns"], adjectives=words["adjectives"]))
    rows = []
    for name in models:
        model, tok = load_model(name, device="cpu", backend="torch")
        for length in lengths:
            docs = [d for seed in seeds for d in probe_documents(gen, tok, length=length, n=n, seed=seed)]
            t = time.perf_counter()
            outs = model.generate([tok.encode_prompt(p) for p, _, _ in docs], max_new_tokens=32)
            preds = [tok.decode(o) for o in outs]
            hits = [a in p for (_, a, _), p in zip(docs, preds)]
            row = {"model": name, "length": length, "n": len(docs), "seeds": list(seeds),
                   "score": round(100 * sum(hits) / len(docs), 1), "hits": hits, "depths": [d for _, _, d in docs],
                   "seconds": round(time.perf_counter() - t, 1)}
            rows.append(row)
            log(f"{name} {length}: {row['score']} ({sum(hits)}/{len(docs)}) in {row['seconds']} s")
    if out:
        Path(out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def main(argv=None) -> int:
    from ..tasks import parse_length

    p = argparse.ArgumentParser(prog="python -m rattn_eval.train.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny-rattn,tiny-swa,tiny-full")
    p.add_argument("--lengths", default="1k,2k,4k,8k")
    p.add_argument("-n", type=int, default=12, help="documents per seed and length")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--data", default=".cache/train-data", help="the training data folder (filler and words)")
    p.add_argument("--out", default=None, help="JSONL file for the results")
    a = p.parse_args(argv)
    run_probe(a.models.split(","), [parse_length(x) for x in a.lengths.split(",")], n=a.n,
              seeds=[int(s) for s in a.seeds.split(",")], data_dir=a.data, out=a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
