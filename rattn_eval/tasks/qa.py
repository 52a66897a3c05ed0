"""Question answering over many documents (RULER's qa_1 / qa_2): the gold paragraph(s) of a
SQuAD v2 or HotpotQA question hidden among distractor paragraphs of the same file.

As in RULER, the question's own hard distractors come first: the other paragraphs of its SQuAD
article, or the non-supporting paragraphs of its HotpotQA example (the dataset's distractor
setting); random paragraphs of the file pad the rest. The distractors are shuffled; the first gold
paragraph sits at the sample's depth, any further gold paragraph (HotpotQA's second supporting
fact) at a random place."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rattn_eval.errors import DataError
from rattn_eval.tasks import corpora
from rattn_eval.tasks.base import (RULER_HINT, Draft, Fitter, Sample, depths_for, make_frame, prefix_sums, run_samples,
                                   sample_id, sample_seed, template_frame, token_positions)

BUDGET = 32
FILES = {"squad": "dev-v2.0.json", "hotpotqa": "hotpot_dev_distractor_v1.json"}


@dataclass(frozen=True, kw_only=True)
class QAConfig:
    dataset: str  # "squad" | "hotpotqa"
    max_new_tokens: int = BUDGET


INSTRUCTION = "Answer the question using the documents below. Reply with the answer only, no other words.\n\n"


def _after(question: str) -> str:
    return ("\n\nAnswer the question using the documents above. Reply with the answer only, no other words."
            f"\n\nQuestion: {question}")


PREFIX = "Answer:"


def data_file(cfg: QAConfig, qa_data, task: str = "qa") -> Path:
    """The dataset file inside the folder (or the file itself) the user gave with --qa-data, for `task`."""
    name = FILES[cfg.dataset]
    if qa_data is None:
        raise DataError(f"task {task} needs {name}: pass the folder holding it with --qa-data (qa_data=...).")
    p = Path(qa_data).expanduser()
    f = p / name if p.is_dir() else p
    if not f.is_file():
        raise DataError(f"{name} not found in {p}: pass the folder holding it with --qa-data (qa_data=...).")
    return f


@lru_cache(maxsize=4)
def load_qa(dataset: str, path: str, mtime_ns: int) -> tuple[list[str], list[tuple[str, list[str], list[int], list[int]]]]:
    """(documents, [(question, answers, gold document indices, the question's own distractor indices)]),
    answerable questions only."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        docs: dict[str, int] = {}
        items = []
        if dataset == "squad":
            for article in raw["data"]:
                para_ids = [docs.setdefault(p["context"], len(docs)) for p in article["paragraphs"]]
                for p, pid in zip(article["paragraphs"], para_ids):
                    same_article = list(dict.fromkeys(j for j in para_ids if j != pid))
                    for qa in p["qas"]:
                        answers = list(dict.fromkeys(a["text"] for a in qa.get("answers", [])))
                        if not qa.get("is_impossible") and answers:
                            items.append((qa["question"], answers, [pid], same_article))
        else:
            for ex in raw:
                gold = []
                for title, sents in ex["context"]:
                    gold.append(docs.setdefault(f"{title}\n{''.join(sents)}", len(docs)))
                supporting = {t for t, _ in ex.get("supporting_facts", [])}
                keep = [g for (title, _), g in zip(ex["context"], gold) if title in supporting] or gold
                own = list(dict.fromkeys(g for g in gold if g not in keep))
                items.append((ex["question"], [ex["answer"]], list(dict.fromkeys(keep)), own))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not a {dataset} file in the original format ({e}).") from e
    if not items:
        raise DataError(f"{path} holds no answerable questions.")
    return list(docs), items


def generate(cfg: QAConfig, tokenizer, *, length: int, n: int, seed: int, task: str = "qa",
             chat_template: str | None = None, depth: list[float] | None = None, qa_data=None) -> list[Sample]:
    """Generate `n` QA samples; the haystack unit is one distractor document; gold documents go at `depth`."""
    f = data_file(cfg, qa_data, task)
    docs, items = load_qa(cfg.dataset, str(f.resolve()), f.stat().st_mtime_ns)
    doc_cost = corpora.unit_token_counts(tokenizer, f"qa:{f.resolve()}:{f.stat().st_mtime_ns}",
                                         [f"Document 1:\n{d}\n\n" for d in docs])
    fitter = Fitter(tokenizer, length=length, budget=cfg.max_new_tokens, task=task)
    depths = depths_for(n, depth)
    order = random.Random(sample_seed(task, length, seed, -1)).sample(range(len(items)), len(items))
    def one(i: int) -> Sample:
        rng = random.Random(sample_seed(task, length, seed, i))
        question, answers, gold, own = items[order[i % len(order)]]
        gold_set = set(gold)
        own = [j for j in rng.sample(own, len(own)) if j not in gold_set]
        taken = gold_set | set(own)
        distract = own + [j for j in rng.sample(range(len(docs)), len(docs)) if j not in taken]
        pre = prefix_sums(doc_cost[j] for j in distract)
        gold_cost = sum(doc_cost[j] for j in gold)
        frame = make_frame(tokenizer, chat_template, INSTRUCTION, _after(question), PREFIX)
        shuffle_seed = rng.getrandbits(64)

        def render(k: int, distract=distract, gold=gold, d=depths[i], shuffle_seed=shuffle_seed):
            # the k distractors (own ones first) in a random order fixed by (sample, k), then the gold
            rk = random.Random(shuffle_seed + k)
            seq = rk.sample(distract[:k], k)
            seq.insert(min(k, max(0, round(d * k))), gold[0])
            for j in gold[1:]:
                seq.insert(rk.randrange(len(seq) + 1), j)
            parts, marks, size = [], {}, 0
            for num, j in enumerate(seq):
                piece = f"Document {num + 1}:\n{docs[j]}" + ("\n\n" if num + 1 < len(seq) else "")
                if j in gold_set:
                    marks[j] = size
                parts.append(piece)
                size += len(piece)
            return "".join(parts), [marks[j] for j in gold]  # the paragraph placed at the depth first

        make = lambda attempt, frame=frame, render=render, pre=pre, gc=gold_cost, nd=len(distract): Draft(  # noqa: E731
            frame, render, lambda k: gc + pre[k], 0, nd, pad=corpora.PAD_WORDS)
        fitted = fitter.fit(make, redraws=0)
        positions = token_positions(tokenizer, fitted.text, fitted.marks, fitted.ids)
        return Sample(
            index=i, id=sample_id(task, length, seed, i), task=task, length=length, input=fitted.text,
            answers=list(answers), num_tokens=len(fitted.ids), max_new_tokens=cfg.max_new_tokens,
            answer_prefix=PREFIX, depth=depths[i], answer_position=positions[0], answer_positions=positions, seed=seed,
        )
    return run_samples(one, n)


@lru_cache(maxsize=4)
def load_qa_ruler(dataset: str, path: str, mtime_ns: int) -> tuple[list[str], list[tuple]]:
    """The file as RULER reads it: (documents sorted, [(question, answers, gold documents, the
    question's own distractors)] in file order). SQuAD: answerable questions, every answer text, the
    other paragraphs of the article as own distractors. HotpotQA: all ten paragraphs of the
    example are gold (RULER keeps the distractor setting's paragraphs together)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        items = []
        if dataset == "squad":
            docs = sorted({p["context"] for a in raw["data"] for p in a["paragraphs"]})
            index = {d: j for j, d in enumerate(docs)}
            for article in raw["data"]:
                same = [index[p["context"]] for p in article["paragraphs"]]
                for p in article["paragraphs"]:
                    own = index[p["context"]]
                    for q in p["qas"]:
                        if not q["is_impossible"]:
                            items.append((q["question"], [a["text"] for a in q["answers"]], [own],
                                          [j for j in same if j != own]))
        else:
            docs = sorted({f"{t}\n{''.join(p)}" for ex in raw for t, p in ex["context"]})
            index = {d: j for j, d in enumerate(docs)}
            for ex in raw:
                paragraphs = [index[f"{t}\n{''.join(p)}"] for t, p in ex["context"]]
                items.append((ex["question"], [ex["answer"]], paragraphs, []))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not a {dataset} file in the original format ({e}).") from e
    if not items:
        raise DataError(f"{path} holds no answerable questions.")
    return docs, items


def generate_ruler(cfg: QAConfig, text, tokenizer, *, length: int, n: int, seed: int, task: str = "qa",
                   chat_template: str | None = None, depth: list[float] | None = None, qa_data=None) -> list[Sample]:
    """QA in RULER's words and with RULER's sampling (`text`: a `ruler_text.RulerText`): sample i asks
    the file's i-th question at every length; its gold documents, its own distractors and then random
    ones are put in order by RULER's fixed-seed shuffle. `depth` is not used. Sizing is this
    project's: prompt + budget in [0.95 L, L]; where whole documents are too coarse for that, other
    random distractors are tried, then words of the noise sentence close the gap after the last
    document."""
    from rattn_eval.tasks.ruler_text import FIXED_SEED

    f = data_file(cfg, qa_data, task)
    docs, items = load_qa_ruler(cfg.dataset, str(f.resolve()), f.stat().st_mtime_ns)
    if n > len(items):
        raise DataError(f"{f.name} has {len(items)} usable questions, fewer than n = {n}.")
    doc_cost = corpora.unit_token_counts(tokenizer, f"qa-ruler:{f.resolve()}:{f.stat().st_mtime_ns}",
                                         [text.qa_document.format(i=1, document=d) + "\n\n" for d in docs])
    fitter = Fitter(tokenizer, length=length, budget=cfg.max_new_tokens, task=task, hint=RULER_HINT)
    prefix = text.qa_prefix
    pad = corpora.pad_words(text.noise, "\n\n")

    def one(i: int) -> Sample:
        rng = random.Random(sample_seed(task, length, seed, i))
        question, answers, gold, own = items[i]
        gold_set = set(gold)
        own = [j for j in own if j not in gold_set]  # the article's other paragraphs, in file order
        own_drawn = rng.sample(own, len(own))
        taken = gold_set | set(own)
        state = rng.getstate()
        gold_cost = sum(doc_cost[j] for j in gold)
        frame = template_frame(tokenizer, chat_template, text.qa_template, prefix, text.qa_delimiter, query=question)

        def render(k: int, others, gold=gold, own=own, own_drawn=own_drawn):
            # RULER: every own distractor (file order) and then random others when they all fit, else a
            # random subset of the own ones; the fixed-seed shuffle orders the lot
            seq = list(gold) + (own + others[:k - len(own)] if k >= len(own) else own_drawn[:k])
            random.Random(FIXED_SEED).shuffle(seq)
            parts, marks, size = [], {}, 0
            for num, j in enumerate(seq):
                if num:
                    parts.append("\n\n")
                    size += 2
                if j in gold_set and j not in marks:
                    marks[j] = size
                piece = text.qa_document.format(i=num + 1, document=docs[j])
                parts.append(piece)
                size += len(piece)
            return "".join(parts), sorted(marks[j] for j in gold)

        def make(attempt: int, own=own, taken=taken, state=state, frame=frame, render=render, gc=gold_cost):
            r = random.Random()
            r.setstate(state)
            if attempt:  # other random distractors after the question's own
                r.seed(f"{sample_seed(task, length, seed, i)}|redraw{attempt}")
            others = [j for j in r.sample(range(len(docs)), len(docs)) if j not in taken]
            pre = prefix_sums(doc_cost[j] for j in own_drawn + others)
            return Draft(frame, lambda k: render(k, others), lambda k: gc + pre[k], 0, len(own) + len(others), pad=pad)

        fitted = fitter.fit(make)
        positions = token_positions(tokenizer, fitted.text, fitted.marks, fitted.ids)
        return Sample(
            index=i, id=sample_id(task, length, seed, i), task=task, length=length, input=fitted.text,
            answers=list(answers), num_tokens=len(fitted.ids), max_new_tokens=cfg.max_new_tokens,
            answer_prefix=prefix, depth=round(positions[0] / len(fitted.ids), 6), answer_position=positions[0],
            answer_positions=positions,
            seed=seed,
        )
    return run_samples(one, n)
