"""`python -m rattn_eval.train {data,tiny,run}`: build the training data, train the three tiny models,
or train one model from a JSON TrainConfig.

    python -m rattn_eval.train data --out .cache/train-data
    python -m rattn_eval.train tiny --data .cache/train-data --out runs/tiny --budget-s 450 --workers 6
    python -m rattn_eval.train run --config my_run.json      # TrainConfig fields; "model": a preset name or a dict
"""

from __future__ import annotations

import argparse
import json
import sys

from ..models.registry import ShippedCheckpoint, names
from .trainer import TRAIN_BACKENDS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rattn_eval.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="select, clean and tokenize the training text")
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("tiny", help="train tiny-full, tiny-swa and tiny-rattn within a time budget")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--budget-s", type=float, required=True)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--seq-len", type=int, default=1024)
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--max-steps", type=int, default=100_000)
    t.add_argument("--names", default=",".join(names(ShippedCheckpoint)))
    t.add_argument("--init-from", default=None, help="folder with <name>/ checkpoints to continue from")
    t.add_argument("--synthetic", type=float, default=0.5, help="fraction of synthetic recall rows")
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--min-lr", type=float, default=3e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--families", default="default", choices=("default", "recall"), help="synthetic family mix")
    t.add_argument("--answer-weight", type=float, default=None, help="loss weight of answer tokens")
    t.add_argument("--pack", action="store_true", help="pack several synthetic documents per row")
    t.add_argument("--short-frac", type=float, default=0.0, help="fraction of steps with short documents only")
    t.add_argument("--warmup", type=int, default=100, help="warmup steps (at most a tenth of the run)")
    t.add_argument("--backend", default="auto", choices=TRAIN_BACKENDS,
                   help="kernel backend to train on (auto: triton on CUDA, torch elsewhere)")
    r = sub.add_parser("run", help="train one model from a JSON TrainConfig")
    r.add_argument("--config", required=True)
    args = p.parse_args(argv)

    from ..errors import RattnError

    try:
        if args.cmd == "data":
            from .data import build_dataset

            build_dataset(args.out, seed=args.seed)
        elif args.cmd == "tiny":
            from .tiny import train_tiny

            train_tiny(args.data, args.out, budget_s=args.budget_s, batch_size=args.batch_size, seq_len=args.seq_len,
                       num_workers=args.workers, max_steps=args.max_steps, names=tuple(args.names.split(",")),
                       init_from=args.init_from, synthetic=args.synthetic, lr=args.lr, min_lr=args.min_lr,
                       seed=args.seed, families=args.families, answer_weight=args.answer_weight, pack=args.pack,
                       short_frac=args.short_frac, warmup_steps=args.warmup,
                       backend=args.backend)
        else:
            from ..errors import ConfigError, did_you_mean
            from ..models.config import ModelConfig, preset
            from .trainer import TrainConfig, train

            raw = json.loads(open(args.config).read())
            fields = set(TrainConfig.__dataclass_fields__)
            unknown = sorted(set(raw) - fields)
            if unknown:
                hint = " (the attention path is chosen by \"backend\": auto, triton or torch)" if "fast_attention" in unknown else ""
                raise ConfigError(f"{args.config}: unknown TrainConfig key {unknown[0]!r}{hint}.{did_you_mean(unknown[0], sorted(fields))}")
            m = raw.pop("model")
            model = preset(m) if isinstance(m, str) else ModelConfig.from_dict(m)
            train(TrainConfig(model=model, **raw))
    except RattnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
