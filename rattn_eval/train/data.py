"""Training data: a clean English text stream, a small BPE tokenizer, and batches mixing text with
synthetic recall documents.

`build_dataset(out_dir)` runs once on a CPU and writes everything a training run reads:

    out_dir/
      tokenizer/          tokenizer.json + tokenizer_config.json (BPE, digits split one per token)
      text_tokens.npy     uint16 token stream: <bos> doc <eos> <bos> doc <eos> ... (documents shuffled)
      sentences.txt.gz    filler sentences for synthetic documents, one per line, in corpus order
      words.json          nouns / adjectives (WordNet) for synthetic keys and values
      manifest.json       sources, sizes, sha256 of the selected text, what the cleaning dropped

`select_documents()` is the deterministic function both the build and the clean-stream test
call: the test re-derives the training text from the installed packages, checks its hash
against the committed manifest, and checks that no evaluation phrase or essay text is in it.

`Batches` yields training batches: each row is either a slice of the text stream or one
synthetic recall document (rattn_eval.train.synthetic) padded out with text.
"""

from __future__ import annotations

import ast
import gzip
import json
import random
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import corpora
from .synthetic import Pools, RecallGenerator

DATA_VERSION = 1
VOCAB_SIZE = 4096
SPECIALS = ("<bos>", "<eos>", "<pad>")  # ids 0, 1, 2
BOS, EOS, PAD = 0, 1, 2

# Per-source character caps: the dictionary and WordNet are large and repetitive in style, so
# they are subsampled to keep the mix balanced (and the stream small enough to carry to a GPU).
CAPS = {"gcide": 14_000_000, "wordnet": 5_000_000}
MIN_DOC_CHARS = {"gcide": 150}
ESSAY_NGRAM = 10  # no run of this many essay words may occur in training text
MIN_PHRASE_WORDS = 5  # evaluation template fragments this long or longer are banned


def evaluation_phrases(tasks_dir: Path | None = None) -> list[str]:
    """Every fixed text fragment of the evaluation tasks: the string literals of rattn_eval/tasks
    (instructions, needle sentences, questions, answer prefixes, noise filler), cut at placeholders
    and sentence ends, keeping fragments of at least MIN_PHRASE_WORDS words. Docstrings are skipped.

    Read from the source with `ast`, so every template is covered however a module stores it. The
    `ruler` profile's text, which lives in the installed lm-eval, is added when lm-eval is there.
    """
    if tasks_dir is None:
        tasks_dir = Path(__file__).resolve().parent.parent / "tasks"
    files = sorted(tasks_dir.glob("*.py"))
    if not files:
        raise DataError(f"no task modules found in {tasks_dir}; the clean-stream check needs them.")
    pieces: list[str] = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                body = getattr(node, "body", [])
                if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    docstrings.add(id(body[0].value))
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                # an f-string: its literal parts, with a break where a value is interpolated
                pieces.append("\x00".join(v.value if isinstance(v, ast.Constant) else "" for v in node.values))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                pieces.append(node.value)
    from dataclasses import asdict

    from rattn_eval.tasks import ruler_text

    try:
        pieces += [v for k, v in asdict(ruler_text.load()).items() if isinstance(v, str) and k != "source"]
    except DataError:
        pass  # no RULER text installed: nothing of it can be evaluated either
    out = []
    for piece in pieces:
        for frag in re.split(r"\{[^{}]*\}|\x00|[.?!:;\n]|%[sd]", piece):
            if len(corpora.words(frag)) >= MIN_PHRASE_WORDS:
                out.append(frag.strip())
    return sorted(set(out))


def _cap(docs: list[str], cap: int | None, min_chars: int, seed: int) -> list[str]:
    docs = [d for d in docs if len(d) >= min_chars]
    if cap is None or sum(map(len, docs)) <= cap:
        return docs
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    keep, size = set(), 0
    for i in order:
        if size >= cap:
            break
        keep.add(i)
        size += len(docs[i])
    return [d for i, d in enumerate(docs) if i in keep]


def select_documents(*, phrases: list[str] | None = None, check: bool = True):
    """The training text, deterministically, from the installed sources.

    Returns (docs: dict source -> list[str], dropped: dict source -> list of (doc head, reasons)).
    With check=True, documents containing an evaluation phrase or essay text are dropped.
    """
    phrases = evaluation_phrases() if phrases is None else phrases
    essays = corpora.essay_texts() if check else []
    docs, dropped = {}, {}
    for i, (name, fn) in enumerate(corpora.SOURCES.items()):
        sel = _cap(fn(), CAPS.get(name), MIN_DOC_CHARS.get(name, 1), seed=i)
        bad = corpora.find_contamination(sel, phrases, essay_docs=essays, essay_n=ESSAY_NGRAM) if check else {}
        dropped[name] = [(sel[j][:80], reasons) for j, reasons in sorted(bad.items())]
        docs[name] = [d for j, d in enumerate(sel) if j not in bad]
    return docs, dropped


def split_sentences(doc: str) -> list[str]:
    flat = " ".join(doc.split())
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", flat) if 25 <= len(s) <= 300]


def word_lists() -> dict[str, list[str]]:
    """Lower-case single words from WordNet's index files (keys and values of synthetic facts)."""
    out = {}
    for pos, name in (("noun", "nouns"), ("adj", "adjectives")):
        path = corpora.WORDNET / f"index.{pos}"
        if not path.is_file():
            raise DataError(f"{path} is missing; install it with `apt-get install -y wordnet-base`.")
        lemmas = [ln.split(" ", 1)[0] for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith(" ")]
        out[name] = sorted(w for w in lemmas if re.fullmatch(r"[a-z]{3,10}", w))
    return out


def train_tokenizer(texts, out_dir: Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """Byte-level BPE with every digit its own token (numbers copy digit by digit) and the
    specials <bos>/<eos>/<pad> at ids 0/1/2. Writes tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": True,
    }, indent=2) + "\n")
    return out_dir


def build_dataset(out_dir: str | Path, *, seed: int = 0, log=print) -> dict:
    """Select and clean the text, train the tokenizer, write the token stream and pools (see module doc)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    phrases = evaluation_phrases()
    log(f"{len(phrases)} evaluation phrases banned")
    docs, dropped = select_documents(phrases=phrases)
    for name in docs:
        log(f"{name}: {len(docs[name])} docs, {sum(map(len, docs[name])) / 1e6:.2f} MB, dropped {len(dropped[name])}")
    flat = [d for name in docs for d in docs[name]]
    random.Random(seed).shuffle(flat)

    pools = Pools(sentences=[s for name in ("news", "wiki", "fortunes", "kjv", "gcide") for d in docs[name]
                             for s in split_sentences(d)], **word_lists())
    gen = RecallGenerator(pools)
    rng = random.Random(seed + 1)
    synth = [gen.document(rng, rng.randint(200, 4000)) for _ in range(3000)]
    tok_dir = train_tokenizer(flat + synth, out_dir / "tokenizer")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ids = [BOS]
    for enc in tok.encode_batch(flat, add_special_tokens=False):
        ids.extend(enc.ids)
        ids += [EOS, BOS]
    stream = np.asarray(ids[:-1], dtype=np.uint16)
    np.save(out_dir / "text_tokens.npy", stream)
    with gzip.open(out_dir / "sentences.txt.gz", "wt", encoding="utf-8", compresslevel=6) as f:
        f.write("\n".join(pools.sentences) + "\n")
    (out_dir / "words.json").write_text(json.dumps({"nouns": pools.nouns, "adjectives": pools.adjectives}))
    manifest = {
        "data_version": DATA_VERSION,
        "sources": {name: {"docs": len(d), "chars": sum(map(len, d)), "sha256": corpora.sha256_text(d),
                           "dropped": len(dropped[name])} for name, d in docs.items()},
        "caps": CAPS,
        "banned_phrases": len(phrases),
        "essay_ngram": ESSAY_NGRAM,
        "text_tokens": int(stream.size),
        "chars_per_token": round(sum(map(len, flat)) / stream.size, 3),
        "sentences": len(pools.sentences),
        "vocab_size": tok.get_vocab_size(),
        "seed": seed,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"{stream.size / 1e6:.2f}M text tokens ({manifest['chars_per_token']} chars/token), "
        f"{len(pools.sentences)} filler sentences")
    return manifest


class Batches:
    """Infinite iterator of (B, T + 1) int64 token batches (inputs = [:, :-1], targets = [:, 1:]).

    A row is, with probability `synthetic`, recall documents (<bos> doc <eos>), otherwise a random
    slice of the text stream. Without `pack` a recall row holds one document of a random length up
    to the row, padded out with text; with `pack` it holds as many documents as fit (lengths from the
    curriculum below), the rest text. Deterministic for a given (seed, worker).

    answer_weight: when set, each batch is (rows, weights): float32 (B, T + 1), the loss weight of
    predicting each token: answer_weight on the answer tokens of recall documents (and the <eos>
    after them), 1 elsewhere. families: the recall family mix (synthetic.FAMILIES by default).
    Curriculum: the first `short_batches` batches (counted over all workers, batch i of worker w
    being batch w + i * num_workers) draw documents of 64..short_max tokens; later ones draw half
    from 0.6 T..T (facts at every depth of a full-length row) and half from 64..T.
    """

    def __init__(self, data_dir: str | Path, *, seq_len: int, batch_size: int, synthetic: float, seed: int,
                 worker: int = 0, num_workers: int = 1, families: dict[str, float] | None = None,
                 answer_weight: float | None = None, pack: bool = False, short_batches: int = 0,
                 short_max: int = 384):
        from tokenizers import Tokenizer

        data_dir = Path(data_dir)
        missing = [f for f in ("text_tokens.npy", "sentences.txt.gz", "words.json", "tokenizer/tokenizer.json")
                   if not (data_dir / f).is_file()]
        if missing:
            raise DataError(f"training data in {data_dir} is incomplete (missing {', '.join(missing)}); "
                            "build it with `python -m rattn_eval.train data --out DIR`.")
        self.text = np.load(data_dir / "text_tokens.npy", mmap_mode="r")
        words = json.loads((data_dir / "words.json").read_text())
        with gzip.open(data_dir / "sentences.txt.gz", "rt", encoding="utf-8") as f:
            sentences = f.read().splitlines()
        self.gen = RecallGenerator(Pools(sentences=sentences, nouns=words["nouns"], adjectives=words["adjectives"]),
                                   families)
        self.tok = Tokenizer.from_file(str(data_dir / "tokenizer" / "tokenizer.json"))
        self.T, self.B, self.synthetic = seq_len, batch_size, synthetic
        self.answer_weight, self.pack = answer_weight, pack
        self.short_batches, self.short_max = short_batches, min(short_max, seq_len)
        self.index, self.stride = worker, max(1, num_workers)  # global batch index of the next batch
        self.rng = random.Random(f"{seed}|{worker}")
        self.np_rng = np.random.default_rng([seed, worker])
        if self.text.size <= seq_len + 1:
            raise DataError(f"the text stream ({self.text.size} tokens) is shorter than one row ({seq_len + 1}).")

    def _target_tokens(self, room: int) -> int:
        lo = min(64, self.T)
        if self.index < self.short_batches:
            hi = self.short_max
        elif self.pack and self.rng.random() < 0.5:
            lo, hi = int(0.6 * self.T), self.T
        else:
            hi = self.T
        return min(room, self.rng.randint(lo, max(lo, hi)))

    def recall_doc(self, max_tokens: int, target: int | None = None) -> tuple[list[int], list[float]]:
        """(<bos> synthetic document <eos>, per-token answer flags), at most max_tokens tokens."""
        target = self.rng.randint(min(64, self.T), self.T) if target is None else target
        chars = int(min(target, max_tokens) * 2.6)  # synthetic text runs about 2.8 chars per token
        while True:
            text, spans = self.gen.document_spans(self.rng, chars)
            enc = self.tok.encode(text, add_special_tokens=False)
            if len(enc.ids) + 2 <= max_tokens:
                break
            chars = int(chars * 0.8)
        off = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        flags = np.zeros(len(enc.ids) + 2, dtype=np.float32)
        for a, b in spans:
            flags[1:-1] += (off[:, 0] < b) & (off[:, 1] > a)
        flags[-1] = 1.0  # the <eos> that ends the answer: stopping is part of answering
        return [BOS] + enc.ids + [EOS], np.minimum(flags, 1.0)

    def text_slice(self, n: int) -> np.ndarray:
        start = int(self.np_rng.integers(0, self.text.size - n))
        return np.asarray(self.text[start : start + n], dtype=np.int64)

    def __iter__(self):
        return self

    def __next__(self):
        rows = np.empty((self.B, self.T + 1), dtype=np.int64)
        weights = np.ones((self.B, self.T + 1), dtype=np.float32)
        for b in range(self.B):
            if self.rng.random() >= self.synthetic:
                rows[b] = self.text_slice(self.T + 1)
                continue
            ids, flags = [], []
            while True:
                room = self.T + 1 - len(ids)
                if room < min(64, self.T) or (ids and not self.pack):
                    break
                d_ids, d_flags = self.recall_doc(room, self._target_tokens(room))
                ids += d_ids
                flags.append(d_flags)
            rows[b, : len(ids)] = ids
            if self.answer_weight is not None:
                weights[b, : len(ids)] += (self.answer_weight - 1.0) * np.concatenate(flags)
            if len(ids) < self.T + 1:
                rows[b, len(ids):] = self.text_slice(self.T + 1 - len(ids))
        self.index += self.stride
        return rows if self.answer_weight is None else (rows, weights)
