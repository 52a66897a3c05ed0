"""Synthetic recall documents: facts hidden in filler text, then questions whose answers are the facts.

These teach a small model to retrieve from far back in its context, which English text alone
teaches slowly. Every phrase here is written for training and differs from the evaluation
templates of rattn_eval.tasks (the clean-stream test checks it): the wording of facts,
instructions and questions is drawn from many variants, keys and values come in several shapes
(words, word pairs, made-up names, numbers, hex codes), and fillers are real sentences, repeated
sentences or nothing at all.

Families (weights in FAMILIES, and in RECALL_FAMILIES for the recall-heavy mix of the stage-3 fine-tune):
    single     one fact in filler, one question
    multikey   several facts with distinct keys, one to three questions
    multiquery several facts, one question naming several keys, values in the order asked
    multivalue one key with several values among distractors, asked for all of them
    lines      nothing but fact lines (no filler), one or two questions
    chain      a value passed from name to name; asked which names hold it
    counting   a word list; asked for the most frequent words

Most questions are composed (Q_FORMS x RELS x TAILS): the question names the key with varied
trailing words, and the answer line restates the key with its own trailing words before the
value, so a model learns to find the key wherever it sits and copy what follows it, whatever
the words around it. `document_spans` also returns where the answers are, for loss weighting.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

ATTRS = ("code", "number", "key", "id", "tag", "pin", "label", "token", "serial", "ticket", "password",
         "reference", "locker", "badge", "account", "channel", "room", "seat", "order", "batch", "value", "word")
QUALIFIERS = ("", "", "", "secret ", "private ", "hidden ", "assigned ", "lucky ", "personal ", "backup ",
              "access ", "reserve ", "official ", "unique ", "chosen ", "stored ", "given ", "odd ",
              "mystery ", "current ", "main ")

# {k} key, {a} attribute (qualifier included), {v} value
FACTS = (
    "The {a} of {k} is {v}.",
    "{k} has the {a} {v}.",
    "Note: {a} for {k} = {v}.",
    "{k} -> {v}",
    "{k}: {v}",
    "Remember that the {a} given to {k} is {v}.",
    "Write down {v} as the {a} of {k}.",
    "For {k}, use the {a} {v}.",
    "Record: {k} | {a} | {v}",
    "[{k}] {a} {v}",
    "It was decided that {k} gets the {a} {v}.",
    "Please keep in mind: {k} goes with {v}.",
    "The {a} belonging to {k} reads {v}.",
    "{k} = {v}",
    "Our {a} for {k} is {v}, do not forget it.",
    "Whoever asks about {k} should hear {v}.",
    "One {a} for {k} is {v}.",
    "A {a} for {k} is: {v}.",
    "The {a} for {k} is: {v}.",
    "Here is the {a} for {k}: {v}.",
    "{k} was assigned the {a} {v}.",
    "Memo - the {a} of {k} is {v}.",
    "Keep this {a} for {k} safe: {v}.",
    "The {a} kept for {k} is {v}.",
    "Listed {a} for {k}: {v}.",
    "{k} holds the {a} {v}.",
)

# (question, answer prefix): the answer follows the prefix after one space
QUESTIONS = (
    ("What is the {a} of {k}?", "The {a} of {k} is"),
    ("Which {a} does {k} have?", "{k} has the {a}"),
    ("Find the {a} for {k}.", "Answer:"),
    ("{k} -> ?", "{k} ->"),
    ("Look up {k}.", "{k}:"),
    ("Q: {a} of {k}?", "A:"),
    ("Tell me the {a} that was given to {k}.", "It is"),
    ("Recall the {a} of {k}.", "The {a} of {k} was"),
    ("What did the notes say about {k}?", "The {a} of {k} is"),
    ("Question: what goes with {k}?", "Answer:"),
    ("Give the {a} of {k} from the notes.", "The {a} of {k} is"),
    ("Which {a} was written for {k} earlier?", "For {k} it was"),
)

# Compositional questions and answer lines: the question names the key with some trailing words,
# the answer line restates the key (usually) with its own trailing words and ends in the value.
RELS = ("of", "for", "for", "for", "belonging to", "given to", "linked to", "attached to", "that goes with")
TAILS = ("", "", "", "", " in the notes", " in the passage", " from the passage", " from the document",
         " that appeared earlier", " written earlier", " stated before", " noted somewhere above",
         " given in the text", " found in the text before this question", " recorded above",
         " that was hidden in the text", " quoted in the document", " mentioned earlier", " mentioned before this line",
         " in the material above", " listed earlier in this text", " in the text you just read",
         " spelled out in the passage", " named in the document above", " from the lines above")
Q_FORMS = (
    "What is the {a} {r} {k}{t}?", "What was the {a} {r} {k}{t}?", "Which {a} was given to {k}{t}?",
    "Tell me the {a} {r} {k}{t}.", "Recall the {a} {r} {k}{t}.", "Can you find the {a} {r} {k}{t}?",
    "Do you remember the {a} {r} {k}{t}?", "Question: what is the {a} {r} {k}{t}?", "Find the {a} {r} {k}{t}.",
    "Please state the {a} {r} {k}{t}.", "Now, what {a} did {k} get{t}?", "Which {a} is {r} {k}{t}?",
    "What {a} is {r} {k}{t}?", "Report the {a} {r} {k}{t}.",
)
A_FORMS = (
    "The {a} {r} {k}{t} is", "The {a} {r} {k}{t} is", "The {a} {r} {k}{t} is", "The {a} {r} {k}{t} was",
    "The {a} {r} {k}{t} reads", "The {a} {r} {k}{t} is:", "{k}{t} has the {a}", "For {k}{t}, the {a} is",
    "Answer: the {a} {r} {k} is", "The {a} that {k} got{t} is", "So the {a} {r} {k}{t} is", "{k} ->", "{k}:",
    "Answer:", "A:", "It is",
)
MULTI_Q_FORMS = (
    "What are the {a}s {r} {ks}{t}?", "List the {a}s {r} {ks}{t}.", "Give every {a} {r} {ks}{t}.",
    "Which {a}s go with {ks}{t}?",
)
MULTI_A_FORMS = ("The {a}s {r} {ks}{t} are", "The {a}s {r} {ks}{t}, in order, are", "In order:", "They are")

MULTI_QUESTIONS = (
    ("List every {a} of {k}.", "The {a}s of {k} are"),
    ("What are all the {a}s that belong to {k}?", "They are"),
    ("Q: all {a}s of {k}?", "A:"),
    ("Name each {a} written for {k}.", "{k} has"),
)

HEADERS = (
    "",
    "",
    "Read the notes below. A few of them record a {a} for a name; you will be asked about one.\n\n",
    "Some facts are scattered through the following text. Keep track of each {a}.\n\n",
    "Below is a long passage. Hidden in it are one or more entries of the form name and {a}.\n\n",
    "Study this document carefully, then answer the question at the end.\n\n",
    "Text follows.\n\n",
    "A {a} is tucked into the passage that follows. Remember it; a question about it comes at the end.\n\n",
    "Several {a}s are buried in the following text. Memorize them, since one will be asked for later.\n\n",
    "Hidden somewhere below is a {a}. Read closely and be ready to give it back.\n\n",
    "The document below contains a few {a}s among ordinary sentences. After it comes a question.\n\n",
    "Pay attention to every {a} in this passage; you will need one of them afterwards.\n\n",
)

CHAIN_FORMS = (
    ("Set {x} to {v}.", "Let {y} equal {x}."),
    ("{x} := {v}", "{y} := {x}"),
    ("The variable {x} holds {v}.", "The variable {y} takes whatever {x} holds."),
    ("let {x} = {v}", "let {y} = {x}"),
)
CHAIN_QUESTIONS = (
    ("Which variables end up holding {v}?", "The variables holding {v} are"),
    ("Q: names with value {v}?", "A:"),
    ("List every name that carries the value {v}.", "They are"),
)
COUNT_QUESTIONS = (
    ("Name the {n} entries seen most frequently in that list.", "Most frequent first:"),
    ("Q: the {n} commonest words of the list?", "A:"),
    ("Count the words and give the {n} that repeat the most.", "Answer:"),
)
FAMILIES = {"single": 0.3, "multikey": 0.2, "multivalue": 0.1, "lines": 0.15, "chain": 0.1, "counting": 0.15}
# the mix of the recall-heavy training (stage 3, scripts/train_tiny.sh): mostly key -> value retrieval at every depth
RECALL_FAMILIES = {"single": 0.3, "multikey": 0.3, "multiquery": 0.08, "multivalue": 0.08, "lines": 0.12,
                   "chain": 0.06, "counting": 0.06}


@dataclass
class Pools:
    """Raw material: filler sentences (in corpus order, so runs of them read as passages) and words."""

    sentences: list[str]
    nouns: list[str]
    adjectives: list[str]


class RecallGenerator:
    """`document(rng, max_chars)` -> one training document (text without BOS/EOS), about max_chars long."""

    def __init__(self, pools: Pools, families: dict[str, float] | None = None):
        """families: name -> weight (FAMILIES by default; RECALL_FAMILIES for the recall-heavy mix)."""
        self.p = pools
        self.all_words = pools.nouns + pools.adjectives
        fam = FAMILIES if families is None else families
        self.names = list(fam)
        self.weights = [fam[n] for n in self.names]

    # ---- keys and values --------------------------------------------------------------------------

    def _name(self, rng: random.Random) -> str:
        syl = [rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") + rng.choice(["", "", "n", "r", "l", "s"])
               for _ in range(rng.randint(2, 3))]
        return "".join(syl).capitalize()

    def _hex(self, rng: random.Random) -> str:
        h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _number(self, rng: random.Random) -> str:
        n = rng.choice((4, 5, 6, 7, 7, 7, 7, 7, 7, 8, 9))
        return str(rng.randint(10 ** (n - 1), 10**n - 1))

    def key(self, rng: random.Random, kind: str | None = None) -> str:
        kind = kind or rng.choice(("pair", "pair", "pair", "word", "name", "hex", "item"))
        if kind == "pair":
            sep = rng.choice(("-", "-", "-", " ", "_"))
            return f"{rng.choice(self.p.adjectives)}{sep}{rng.choice(self.p.nouns)}"
        if kind == "word":
            return rng.choice(self.p.nouns)
        if kind == "name":
            return self._name(rng)
        if kind == "hex":
            return self._hex(rng)
        return f"{rng.choice(('item', 'box', 'file', 'case', 'unit'))} {rng.randint(1, 9999)}"

    def value(self, rng: random.Random, kind: str | None = None) -> str:
        kind = kind or rng.choice(("number", "number", "number", "number", "hex", "word", "pair"))
        if kind == "number":
            return self._number(rng)
        if kind == "hex":
            return self._hex(rng)
        if kind == "word":
            return rng.choice(self.p.nouns)
        return f"{rng.choice(self.p.adjectives)}-{rng.choice(self.p.nouns)}"

    # ---- fillers ----------------------------------------------------------------------------------

    def _filler(self, rng: random.Random, chars: int) -> list[str]:
        """Sentences totalling about `chars` characters: a passage, one repeated sentence, or a short cycle."""
        style = rng.random()
        if style < 0.25:
            cycle = [rng.choice(self.p.sentences) for _ in range(rng.randint(1, 4))]
            out, size = [], 0
            while size < chars:
                s = cycle[len(out) % len(cycle)]
                out.append(s)
                size += len(s) + 1
            return out
        out, size = [], 0
        i = rng.randrange(len(self.p.sentences))
        while size < chars:
            s = self.p.sentences[i % len(self.p.sentences)]
            out.append(s)
            size += len(s) + 1
            i += 1 if rng.random() < 0.95 else rng.randrange(len(self.p.sentences))
        return out

    def _weave(self, rng: random.Random, filler: list[str], facts: list[str]) -> str:
        """Insert each fact between filler sentences at a uniformly random depth."""
        slots = sorted(rng.randint(0, len(filler)) for _ in facts)
        order = list(facts)
        rng.shuffle(order)
        out = []
        fi = 0
        for j in range(len(filler) + 1):
            while fi < len(order) and slots[fi] == j:
                out.append(order[fi])
                fi += 1
            if j < len(filler):
                out.append(filler[j])
        sep = rng.choice((" ", " ", "\n", " "))
        return sep.join(out)

    # ---- families ---------------------------------------------------------------------------------

    def document(self, rng: random.Random, max_chars: int) -> str:
        return self.document_spans(rng, max_chars)[0]

    def document_spans(self, rng: random.Random, max_chars: int) -> tuple[str, list[tuple[int, int]]]:
        """(text, answer spans): the character ranges [start, end) of the answers in text."""
        family = rng.choices(self.names, self.weights)[0]
        return getattr(self, f"_{family}")(rng, max_chars)

    def _attr(self, rng):
        return rng.choice(QUALIFIERS) + rng.choice(ATTRS)

    def _qa(self, rng, a, key, *, compositional=None):
        """(question, answer prefix) about `key`: the fixed pairs, or a composed question whose answer
        line restates the key with trailing words (its own or the question's)."""
        if compositional is None:
            compositional = rng.random() < 0.75
        if not compositional:
            q, p = rng.choice(QUESTIONS)
            return q.format(k=key, a=a), p.format(k=key, a=a)
        qa_attr = a if rng.random() < 0.8 else a.split()[-1]
        r, t = rng.choice(RELS), rng.choice(TAILS)
        t2 = t if rng.random() < 0.6 else rng.choice(TAILS)
        return (rng.choice(Q_FORMS).format(a=qa_attr, r=r, k=key, t=t),
                rng.choice(A_FORMS).format(a=qa_attr, r=r, k=key, t=t2))

    def _frame(self, rng, a, body, qas):
        """header + body + each (question, prefix, answer); returns (text, answer spans)."""
        header = rng.choice(HEADERS).format(a=a)
        text = header + body + rng.choice(("\n\n", "\n", " "))
        spans = []
        for i, (q, p, v) in enumerate(qas):
            if i:
                text += "\n"
            text += f"{q}\n{p} "
            spans.append((len(text), len(text) + len(v)))
            text += v
        return text, spans

    def _kv_doc(self, rng, max_chars, n_keys, n_asked, filler=True):
        a = self._attr(rng)
        kkind = rng.choice(("pair", "pair", "pair", "word", "name", "hex", "item"))
        vkind = rng.choice(("number", "number", "number", "number", "hex", "word", "pair"))
        keys = list(dict.fromkeys(self.key(rng, kkind) for _ in range(n_keys)))
        vals = [self.value(rng, vkind) for _ in keys]
        form = rng.choice(FACTS) if rng.random() < 0.7 else None  # one wording per document, or mixed
        facts = [(form or rng.choice(FACTS)).format(k=k, a=a, v=v) for k, v in zip(keys, vals)]
        budget = max(0, max_chars - sum(len(f) + 1 for f in facts) - 200)
        body = self._weave(rng, self._filler(rng, rng.randint(budget // 4, budget)) if filler and budget else [], facts)
        asked = rng.sample(range(len(keys)), min(n_asked, len(keys)))
        return self._frame(rng, a, body, [(*self._qa(rng, a, keys[i]), vals[i]) for i in asked])

    def _single(self, rng, max_chars):
        return self._kv_doc(rng, max_chars, 1, 1)

    def _multikey(self, rng, max_chars):
        return self._kv_doc(rng, max_chars, rng.randint(2, 8), rng.choice((1, 1, 2, 3)))

    def _lines(self, rng, max_chars):
        n = max(2, min(60, max_chars // 60))
        return self._kv_doc(rng, max_chars, rng.randint(2, n), rng.choice((1, 1, 2)), filler=False)

    def _multiquery(self, rng, max_chars):
        """Several facts, one question naming several keys; the values in the order asked."""
        a = self._attr(rng)
        kkind = rng.choice(("pair", "pair", "word", "name"))
        vkind = rng.choice(("number", "number", "number", "hex", "word"))
        keys = list(dict.fromkeys(self.key(rng, kkind) for _ in range(rng.randint(2, 6))))
        vals = [self.value(rng, vkind) for _ in keys]
        form = rng.choice(FACTS)
        facts = [form.format(k=k, a=a, v=v) for k, v in zip(keys, vals)]
        budget = max(0, max_chars - sum(len(f) + 1 for f in facts) - 300)
        body = self._weave(rng, self._filler(rng, rng.randint(budget // 4, budget)) if budget else [], facts)
        asked = rng.sample(range(len(keys)), rng.randint(2, len(keys)))
        names = [keys[i] for i in asked]
        ks = ", ".join(names[:-1]) + rng.choice((", and ", " and ", ", ")) + names[-1]
        r, t = rng.choice(RELS), rng.choice(TAILS)
        q = rng.choice(MULTI_Q_FORMS).format(a=a, r=r, ks=ks, t=t)
        p = rng.choice(MULTI_A_FORMS).format(a=a, r=r, ks=ks, t=t)
        return self._frame(rng, a, body, [(q, p, ", ".join(vals[i] for i in asked))])

    def _multivalue(self, rng, max_chars):
        a = self._attr(rng)
        key = self.key(rng)
        vkind = rng.choice(("number", "number", "hex", "word"))
        vals = list(dict.fromkeys(self.value(rng, vkind) for _ in range(rng.randint(2, 5))))
        others = [self.key(rng) for _ in range(rng.randint(0, 4))]
        form = rng.choice(FACTS)
        facts = [form.format(k=key, a=a, v=v) for v in vals] + [form.format(k=o, a=a, v=self.value(rng, vkind))
                                                                  for o in others]
        budget = max(0, max_chars - sum(len(f) + 1 for f in facts) - 200)
        body = self._weave(rng, self._filler(rng, rng.randint(budget // 4, budget)) if budget else [], facts)
        # facts are shuffled by _weave; the answer lists the values in the order they appear
        vals.sort(key=body.find)
        q, p = rng.choice(MULTI_QUESTIONS)
        return self._frame(rng, a, body, [(q.format(a=a, k=key), p.format(a=a, k=key), ", ".join(vals))])

    def _chain(self, rng, max_chars):
        x_form, y_form = rng.choice(CHAIN_FORMS)
        letters = string.ascii_uppercase if rng.random() < 0.5 else string.ascii_lowercase

        def chain(value):
            names = list(dict.fromkeys("".join(rng.choice(letters) for _ in range(rng.randint(3, 6)))
                                       for _ in range(rng.randint(2, 6))))
            steps = [x_form.format(x=names[0], v=value)] + [y_form.format(y=b, x=a) for a, b in zip(names, names[1:])]
            return names, steps

        v = self._number(rng)
        names, steps = chain(v)
        _, decoy = chain(self._number(rng)) if rng.random() < 0.7 else ([], [])
        decoy = [s for s in decoy if not any(n in s for n in names)]
        merged = []  # interleave the two chains, each kept in order
        while steps or decoy:
            src = steps if steps and (not decoy or rng.random() < 0.5) else decoy
            merged.append(src.pop(0))
        budget = max(0, max_chars - sum(len(s) + 1 for s in merged) - 200)
        filler = self._filler(rng, rng.randint(budget // 4, budget)) if budget else []
        slots = sorted(rng.randint(0, len(filler)) for _ in merged)
        out, mi = [], 0
        for j in range(len(filler) + 1):
            while mi < len(merged) and slots[mi] == j:
                out.append(merged[mi])
                mi += 1
            if j < len(filler):
                out.append(filler[j])
        body = rng.choice((" ", "\n")).join(out)
        q, p = rng.choice(CHAIN_QUESTIONS)
        return self._frame(rng, "value", body, [(q.format(v=v), p.format(v=v), ", ".join(names))])

    def _counting(self, rng, max_chars):
        top = rng.choice((3, 3, 5, 10))
        n_words = max(top * 6, max_chars // 9)
        pool = list(dict.fromkeys(rng.choice(self.all_words) for _ in range(top + n_words)))
        common, rare = pool[:top], pool[top:]
        # common word i appears hi - i times, every other word once or twice: the top list is unique
        hi = max(top + 3, n_words // (3 * top))
        seq = [w for i, w in enumerate(common) for _ in range(hi - i)]
        for w in rare:
            if len(seq) >= n_words:
                break
            seq += [w] * rng.choice((1, 1, 2))
        rng.shuffle(seq)
        style = rng.random()
        if style < 0.4:
            body = " ".join(seq)
        elif style < 0.7:
            body = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(seq))
        else:
            body = ", ".join(seq)
        q, p = rng.choice(COUNT_QUESTIONS)
        return self._frame(rng, "word", body, [(q.format(n=top), p.format(n=top), ", ".join(common))])
