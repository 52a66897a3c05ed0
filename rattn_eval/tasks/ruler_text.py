"""RULER's prompt text, read at run time from the installed lm-evaluation-harness or a RULER checkout.

The `ruler` prompt profile must produce RULER's sample text exactly, yet none of RULER's sentences
live in this repository: they are parsed out of the source files that hold them, with `ast` and
without importing those modules (lm-eval's RULER modules download nltk data at import time).

Two sources:

- `lm-eval`: the `lm_eval/tasks/ruler/` folder of the installed lm-evaluation-harness (a declared
  dependency). Its task layouts are lm-eval's: the common-words task has no worked example, and the
  answer prefix follows the question after the yaml's `target_delimiter`.
- a RULER checkout (`--ruler-dir`): `scripts/data/synthetic/constants.py` (templates and answer
  prefixes, a plain dict) plus the needle, noise and statement strings of the generator scripts
  beside it. Where lm-eval's port differs from RULER's own text, the checkout wins.

`load(ruler_dir=None)` returns a frozen `RulerText`; its `source` string is recorded in every run's
config.json. Templates keep RULER's `str.format` fields (`{context}`, `{query}`, `{type_needle_v}`,
`{num_v}`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from rattn_eval.errors import DataError

# RULER seeds its fixed shuffles (needle order, QA documents, FWE words) with this constant.
FIXED_SEED = 42
# The 40 needle depths (percent) RULER draws from for essay haystacks: round(linspace(0, 100, 40)).
DEPTHS = tuple(int(round(100 * j / 39)) for j in range(40))

MISSING_SOURCE = ("the `ruler` prompt profile needs RULER's text: install lm-eval (pip install lm-eval==0.4.13) "
                  "or pass a RULER checkout with --ruler-dir; --prompts native uses this project's own wording.")


@dataclass(frozen=True, kw_only=True)
class RulerText:
    """RULER's strings for the synthetic and QA tasks.

    niah_template: instruction + {context} + question (plural wording, before the singular rule).
    niah_prefix: the answer prefix (plural wording). needle: the needle sentence (`{type_needle_v}`,
    `{key}`, `{value}`). noise: the repeated haystack block of niah_single_1 (one line).
    vt_template / vt_prefix: variable tracking; vt_noise: its noise line; vt_value / vt_copy:
    statement formats (`{name}`, `{value}`, `{src}`); vt_joiner: what joins noise lines and
    statements; vt_example_tail: what follows the worked example's answer; vt_example_budget /
    vt_example_step / vt_example_counts_answer: how the example is sized to 500 tokens (budget counted,
    noise lines added per step, answer counted).
    cwe_*: common words; cwe_example: whether the worked example precedes the question.
    fwe_*: frequent words; fwe_noise: the token that stands for rank 0; fwe_vocab_of_room: the
    vocabulary is (L - budget) // 50 words rather than L // 50.
    qa_template / qa_prefix / qa_document: QA (`{i}`, `{document}`).
    *_prefix: the answer prefix as the prompt ends with it, after *_delimiter (without a chat
    template); *_example_prefix: the prefix as the worked example spells it before its answer.
    """

    source: str
    niah_template: str
    niah_prefix: str
    niah_delimiter: str
    needle: str
    noise: str
    vt_template: str
    vt_prefix: str
    vt_delimiter: str
    vt_example_prefix: str
    vt_noise: str
    vt_value: str
    vt_copy: str
    vt_joiner: str
    vt_example_tail: str
    vt_example_budget: int
    vt_example_step: int
    vt_example_counts_answer: bool
    cwe_template: str
    cwe_prefix: str
    cwe_delimiter: str
    cwe_example: bool
    cwe_example_prefix: str
    fwe_template: str
    fwe_prefix: str
    fwe_delimiter: str
    fwe_noise: str
    fwe_vocab_of_room: bool
    qa_template: str
    qa_prefix: str
    qa_delimiter: str
    qa_document: str


def singular(text: str) -> str:
    """RULER's rewrite of the NIAH wording when one value is asked for (applied to the templates
    before they are filled in, so keys and values are never touched)."""
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        text = text.replace(old, new)
    return text


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read RULER's text from {path}: {e}.") from e


def _fstring(node: ast.JoinedStr) -> str:
    """An f-string as a str.format template: `f"VAR {x[0]} = {v}"` -> "VAR {x[0]} = {v}"."""
    parts = []
    for v in node.values:
        if isinstance(v, ast.Constant):
            parts.append(str(v.value).replace("{", "{{").replace("}", "}}"))
        else:
            parts.append("{" + ast.unparse(v.value) + "}")
    return "".join(parts)


def _assigned(tree: ast.AST, name: str, path: Path):
    """The literal value last assigned to `name` anywhere in `tree` (module level or inside functions)."""
    found = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            found = node.value
    if found is None:
        raise DataError(f"cannot read RULER's text: no `{name}` in {path}.")
    return found


def _literal(node, path: Path, what: str):
    try:
        return ast.literal_eval(node)
    except ValueError as e:
        raise DataError(f"cannot read RULER's text: {what} in {path} is not a literal.") from e


def _string_assignments(tree: ast.AST, name: str) -> list[str]:
    """Every plain string literal assigned to `name`, in source order."""
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            out.append(node.value.value)
    return out


def _function(tree: ast.AST, name: str, path: Path) -> ast.FunctionDef:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise DataError(f"cannot read RULER's text: no function {name}() in {path}.")


def _fstrings(tree: ast.AST) -> list[str]:
    return [_fstring(n) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]


def _pick(items: list[str], pattern: str, path: Path, what: str) -> str:
    for s in items:
        if re.fullmatch(pattern, s, flags=re.S):
            return s
    raise DataError(f"cannot read RULER's text: no {what} in {path}.")


def _noise_token(tree: ast.AST, path: Path) -> str:
    """The string the frequent-words generator puts at rank 0 (`vocab[0] = "..."`)."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) and node.value.value):
            return node.value.value
    raise DataError(f"cannot read RULER's text: no noise token in {path}.")


def _yaml_delimiter(path: Path, default: str) -> str:
    """`target_delimiter` of an lm-eval task yaml (a quoted scalar), else `default`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return default
    m = re.search(r"^target_delimiter:\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*')\s*$", text, flags=re.M)
    if not m:
        return default
    raw = m.group(1)
    return ast.literal_eval(raw) if raw.startswith('"') else raw[1:-1]


def _needle_template(needle: str) -> str:
    # sources spell the needle's fields as {type_needle_v}, {key}, {value}
    for field in ("{type_needle_v}", "{key}", "{value}"):
        if field not in needle:
            raise DataError(f"unexpected needle sentence {needle!r}: it lacks {field}.")
    return needle


def _from_lm_eval(folder: Path, version: str) -> RulerText:
    f_niah, f_prep, f_vt, f_cwe, f_fwe, f_qa = (folder / n for n in (
        "niah_utils.py", "prepare_niah.py", "vt_utils.py", "cwe_utils.py", "fwe_utils.py", "qa_utils.py"))
    niah_template = _literal(_assigned(_parse(f_niah), "TEMPLATE", f_niah), f_niah, "TEMPLATE")
    prep = _parse(f_prep)
    needle = _needle_template(_literal(_assigned(prep, "NEEDLE", f_prep), f_prep, "NEEDLE"))
    haystacks = _string_assignments(_function(prep, "get_haystack", f_prep), "haystack")
    noise = _pick([h for h in haystacks if h != needle], r"[^{}\n]+", f_prep, "noise haystack")
    # the answer prefix is an f-string in generate_samples; its plural form names {type_needle_v} whole
    prefixes = _fstrings(_function(prep, "generate_samples", f_prep))
    niah_prefix = _pick(prefixes, r".*\{type_needle_v\}.*\{query\}.*", f_prep, "plural answer prefix")

    vt = _parse(f_vt)
    vt_cfg = _literal(_assigned(vt, "CONFIG", f_vt), f_vt, "CONFIG")["variable_tracking"]
    vt_noise = _pick(_string_assignments(_function(vt, "generate_input_output", f_vt), "noise"), r"[^{}]+",
                     f_vt, "noise line")
    chain = _fstrings(_function(vt, "generate_chains", f_vt))
    vt_value = _pick(chain, r"VAR \{this_vars\[0\]\} = \{.*\}", f_vt, "first statement")
    vt_copy = _pick(chain, r"VAR \{this_vars\[j \+ 1\]\} = VAR \{this_vars\[j\]\}\s*", f_vt, "copy statement")
    vt_value = re.sub(r"\{this_vars\[0\]\}", "{name}", vt_value)
    vt_value = re.sub(r"= \{.*\}", "= {value}", vt_value)
    vt_copy = vt_copy.replace("{this_vars[j + 1]}", "{name}").replace("{this_vars[j]}", "{src}")

    cwe = _literal(_assigned(_parse(f_cwe), "CONFIG", f_cwe), f_cwe, "CONFIG")
    fwe_tree = _parse(f_fwe)
    fwe = _literal(_assigned(fwe_tree, "CONFIG", f_fwe), f_fwe, "CONFIG")
    fwe_noise = _noise_token(fwe_tree, f_fwe)
    qa_tree = _parse(f_qa)
    qa = _literal(_assigned(qa_tree, "CONFIG", f_qa), f_qa, "CONFIG")
    qa_document = _literal(_assigned(qa_tree, "DOCUMENT_PROMPT", f_qa), f_qa, "DOCUMENT_PROMPT")
    niah_delim = _yaml_delimiter(folder / "niah_single_1.yaml", " ")
    return RulerText(
        source=f"lm-eval {version}",
        niah_template=niah_template, niah_prefix=niah_prefix, niah_delimiter=niah_delim, needle=needle, noise=noise,
        # lm-eval strips each answer prefix into gen_prefix and joins it with the yaml's delimiter; its
        # variable-tracking port joins noise lines (which end with a newline) and statements by spaces
        # and puts two blank lines after the worked example; its common-words task shows no example.
        vt_template=vt_cfg["template"], vt_prefix=vt_cfg["answer_prefix"].strip(),
        vt_delimiter=_yaml_delimiter(folder / "vt.yaml", niah_delim), vt_example_prefix=vt_cfg["answer_prefix"],
        vt_noise=vt_noise, vt_value=vt_value, vt_copy=vt_copy, vt_joiner=" ", vt_example_tail="\n\n\n\n",
        vt_example_budget=30, vt_example_step=5, vt_example_counts_answer=True,
        cwe_template=cwe["template"], cwe_prefix=cwe["answer_prefix"].strip(),
        cwe_delimiter=_yaml_delimiter(folder / "cwe.yaml", niah_delim), cwe_example=False,
        cwe_example_prefix=cwe["answer_prefix"],
        fwe_template=fwe["template"], fwe_prefix=fwe["answer_prefix"].strip(),
        fwe_delimiter=_yaml_delimiter(folder / "fwe.yaml", niah_delim), fwe_noise=fwe_noise, fwe_vocab_of_room=False,
        qa_template=qa["template"], qa_prefix=qa["answer_prefix"].strip(),
        qa_delimiter=_yaml_delimiter(folder / "qa_squad.yaml", niah_delim), qa_document=qa_document,
    )


def _from_checkout(root: Path, revision: str) -> RulerText:
    """RULER's own text: constants.py's templates and answer prefixes (a plain dict), the needle and
    noise strings of niah.py, the noise and statement formats of variable_tracking.py, the dots token
    of freq_words_extraction.py and the document format of qa.py. RULER appends each answer prefix
    (which starts with a space) to its template directly."""
    syn = root / "scripts" / "data" / "synthetic"
    f_const, f_niah, f_vt, f_fwe, f_qa = (syn / n for n in (
        "constants.py", "niah.py", "variable_tracking.py", "freq_words_extraction.py", "qa.py"))
    tasks = _literal(_assigned(_parse(f_const), "TASKS", f_const), f_const, "TASKS")
    try:
        keys = ("niah", "variable_tracking", "common_words_extraction", "freq_words_extraction", "qa")
        niah, vt, cwe, fwe, qa = (tasks[k] for k in keys)
        for d in (niah, vt, cwe, fwe, qa):
            d["template"], d["answer_prefix"]  # noqa: B018 - both keys must be there
    except (KeyError, TypeError) as e:
        raise DataError(f"cannot read RULER's text: {f_const} lacks {e}.") from e
    niah_tree = _parse(f_niah)
    needle = _needle_template(_literal(_assigned(niah_tree, "needle", f_niah), f_niah, "needle"))
    noise = _pick(_string_assignments(niah_tree, "haystack"), r"[^{}\n]+", f_niah, "noise haystack")
    vt_tree = _parse(f_vt)
    vt_noise = _pick(_string_assignments(vt_tree, "haystack"), r"[^{}]+", f_vt, "noise line")
    chain = _fstrings(_function(vt_tree, "generate_chains", f_vt))
    vt_value = _pick(chain, r"VAR \{this_vars\[0\]\} = \{.*\}", f_vt, "first statement")
    vt_value = re.sub(r"= \{.*\}", "= {value}", vt_value.replace("{this_vars[0]}", "{name}"))
    vt_copy = _pick(chain, r"VAR \{this_vars\[j \+ 1\]\} = VAR \{this_vars\[j\]\}\s*", f_vt, "copy statement")
    vt_copy = vt_copy.replace("{this_vars[j + 1]}", "{name}").replace("{this_vars[j]}", "{src}")
    fwe_noise = _noise_token(_parse(f_fwe), f_fwe)
    qa_document = _literal(_assigned(_parse(f_qa), "DOCUMENT_PROMPT", f_qa), f_qa, "DOCUMENT_PROMPT")
    return RulerText(
        source=f"RULER checkout {revision}",
        niah_template=niah["template"], niah_prefix=niah["answer_prefix"], niah_delimiter="", needle=needle,
        noise=noise,
        # statements and noise lines one per line; one blank line after the worked example
        vt_template=vt["template"], vt_prefix=vt["answer_prefix"], vt_delimiter="",
        vt_example_prefix=vt["answer_prefix"], vt_noise=vt_noise, vt_value=vt_value, vt_copy=vt_copy,
        vt_joiner="\n", vt_example_tail="\n\n", vt_example_budget=0, vt_example_step=1, vt_example_counts_answer=False,
        cwe_template=cwe["template"], cwe_prefix=cwe["answer_prefix"], cwe_delimiter="", cwe_example=True,
        cwe_example_prefix=cwe["answer_prefix"],
        fwe_template=fwe["template"], fwe_prefix=fwe["answer_prefix"], fwe_delimiter="", fwe_noise=fwe_noise,
        fwe_vocab_of_room=True,
        qa_template=qa["template"], qa_prefix=qa["answer_prefix"], qa_delimiter="", qa_document=qa_document,
    )


def lm_eval_folder() -> tuple[Path, str] | None:
    """(lm_eval/tasks/ruler folder, lm-eval version) of the installed package, located without importing it."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "tasks" / "ruler"
    if not (folder / "niah_utils.py").is_file():
        return None
    try:
        version = metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return folder, version


def _git_revision(folder: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown revision"


@lru_cache(maxsize=8)
def load(ruler_dir: str | None = None) -> RulerText:
    """RULER's text from the checkout `ruler_dir`, or else from the installed lm-eval.

    Raises DataError naming both options (and `--prompts native`) when neither is available."""
    if ruler_dir is not None:
        root = Path(ruler_dir).expanduser()
        if not (root / "scripts" / "data" / "synthetic" / "constants.py").is_file():
            raise DataError(f"{root} is not a RULER checkout: it has no scripts/data/synthetic/constants.py.")
        return _fingerprinted(_from_checkout(root, _git_revision(root)))
    found = lm_eval_folder()
    if found is None:
        raise DataError(MISSING_SOURCE)
    return _fingerprinted(_from_lm_eval(*found))


def _fingerprinted(text: RulerText) -> RulerText:
    """`source` + a hash of every string read: two texts that differ never share a source (an edited
    checkout, an lm-eval installed from a branch), so a run directory never resumes across them."""
    from dataclasses import asdict, replace

    blob = json.dumps({k: v for k, v in asdict(text).items() if k != "source"}, sort_keys=True)
    return replace(text, source=f"{text.source}, text {hashlib.sha256(blob.encode()).hexdigest()[:12]}")
