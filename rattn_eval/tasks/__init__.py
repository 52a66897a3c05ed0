"""RULER-style tasks at exact token lengths.

    from rattn_eval.tokenizer import load_tokenizer
    from rattn_eval import tasks
    tok = load_tokenizer("gpt2")
    samples = tasks.generate("niah_single_2", tok, length=tasks.parse_length("4k"), n=10, seed=0)

`TASKS` maps RULER's 13 task names to (family, config); `GROUPS` holds `niah`, `synthetic`
and `ruler`. Generated samples are cached on disk under $RATTN_EVAL_CACHE (default
~/.cache/rattn-eval/samples; set it to "off" to disable), keyed by everything that
determines them, each file with a checksum of its samples: an edited or damaged file is generated again.

Two prompt profiles (`PROMPTS`): `ruler` (the default) writes RULER's own text with RULER's
sampling, read at run time from the installed lm-eval or a RULER checkout (`ruler_text`), so
scores sit beside published RULER tables; `native` keeps this project's wording.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from rattn_eval.errors import ConfigError, did_you_mean
from rattn_eval.tasks import common_words, frequent_words, niah, qa, ruler_text, variable_tracking
from rattn_eval.tasks.base import GENERATOR_VERSION, NATIVE_GENERATOR_VERSION, Sample, sample_id

__all__ = ["TASKS", "GROUPS", "PROMPTS", "Sample", "TaskSpec", "generate", "generate_to_file", "parse_length",
           "resolve", "write_jsonl", "read_jsonl", "cache_dir", "GENERATOR_VERSION", "generator_version",
           "prompt_source", "unused_option"]

log = logging.getLogger(__name__)

PROMPTS = ("ruler", "native")
# Samples per (task, length): RULER itself uses 500; a bound turns a typo such as -n 10000000000 into
# one clear sentence instead of minutes of generation and tens of GB of memory.
MAX_SAMPLES = 100_000  # the first is the default of RunConfig, generate() and the CLI


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str
    generate: Callable[..., list[Sample]]
    generate_ruler: Callable[..., list[Sample]]
    config: Any
    needs_qa_data: bool = False

    @property
    def max_new_tokens(self) -> int:
        return self.config.max_new_tokens


def _spec(name, family, mod, config, **kw):
    return TaskSpec(name, family, mod.generate, mod.generate_ruler, config, **kw)


_NC = niah.NiahConfig
TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    _spec("niah_single_1", "niah", niah, _NC(haystack="noise")),
    _spec("niah_single_2", "niah", niah, _NC(haystack="essay")),
    _spec("niah_single_3", "niah", niah, _NC(haystack="essay", value_type="uuids")),
    _spec("niah_multikey_1", "niah", niah, _NC(haystack="essay", num_keys=4)),
    _spec("niah_multikey_2", "niah", niah, _NC(haystack="needle")),
    _spec("niah_multikey_3", "niah", niah, _NC(haystack="needle", key_type="uuids", value_type="uuids")),
    _spec("niah_multivalue", "niah", niah, _NC(haystack="essay", num_values=4)),
    _spec("niah_multiquery", "niah", niah, _NC(haystack="essay", num_keys=4, num_queries=4)),
    _spec("vt", "variable_tracking", variable_tracking, variable_tracking.VTConfig()),
    _spec("cwe", "common_words", common_words, common_words.CWEConfig()),
    _spec("fwe", "frequent_words", frequent_words, frequent_words.FWEConfig()),
    _spec("qa_1", "qa", qa, qa.QAConfig(dataset="squad"), needs_qa_data=True),
    _spec("qa_2", "qa", qa, qa.QAConfig(dataset="hotpotqa"), needs_qa_data=True),
]}

GROUPS: dict[str, list[str]] = {
    "niah": [t for t in TASKS if t.startswith("niah_")],
    "synthetic": [t for t, s in TASKS.items() if not s.needs_qa_data],
    "ruler": list(TASKS),
}


def unused_option(names: list[str], *, depth, qa_data, prompts: str, ruler_dir) -> str | None:
    """The sentence refusing the first given option that none of the tasks `names` reads under `prompts`
    (None when each given one is read): needle depths (NIAH; QA in this project's wording), the QA data,
    a RULER checkout (RULER's wording only). A run keeps its options in config.json, so one with no effect
    would only block a resume without it."""
    listing = ", ".join(names)
    if depth and not any(TASKS[t].family == "niah" or (TASKS[t].needs_qa_data and prompts == "native")
                         for t in names):
        where = "NIAH tasks, and QA tasks with --prompts native"
        return f"--depth places needles in {where}; none of {listing} has one: drop --depth"
    if qa_data and not any(TASKS[t].needs_qa_data for t in names):
        return f"--qa-data is read by the QA tasks (qa_1, qa_2) only; none of {listing} reads it: drop --qa-data"
    if ruler_dir and prompts != "ruler":
        return f"--ruler-dir is RULER's text for --prompts ruler; --prompts {prompts} does not read it: drop --ruler-dir"
    return None


def resolve(names_or_groups) -> list[str]:
    """Task names for a list (or comma-separated string) of task and group names, in order, deduplicated."""
    if isinstance(names_or_groups, str):
        names_or_groups = [names_or_groups]
    out: dict[str, None] = {}
    for item in names_or_groups:
        for name in (x.strip() for x in str(item).split(",")):
            if not name:
                continue
            if name in GROUPS:
                out.update(dict.fromkeys(GROUPS[name]))
            elif name in TASKS:
                out[name] = None
            else:
                hint = did_you_mean(name, [*TASKS, *GROUPS])
                raise ConfigError(f"unknown task or group {name!r}.{hint} Groups: {', '.join(GROUPS)}.")
    if not out:
        raise ConfigError("no task given.")
    return list(out)


_LENGTH = re.compile(r"([0-9]+)([km]?)")  # ASCII digits only: "٤k" is not a length


def parse_length(text) -> int:
    """'32k' -> 32768, '1m' -> 1048576, '4096' -> 4096 (k = 1024, m = 1024*1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ConfigError(f"length must be positive, got {text}.")
        return text
    s = str(text).strip().lower()
    m = _LENGTH.fullmatch(s)
    if not m:
        raise ConfigError(f"bad length {str(text)!r}: use a positive number of tokens like 4096, 4k or 1m.")
    value = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2)]
    if value <= 0:
        raise ConfigError(f"bad length {str(text)!r}: it must be positive.")
    return value


def cache_dir() -> Path | None:
    """Folder of cached samples, or None when caching is off (RATTN_EVAL_CACHE=off)."""
    env = os.environ.get("RATTN_EVAL_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rattn-eval" / "samples"


def generator_version(prompts: str) -> int:
    """The generator version behind a profile's samples (native samples are unchanged since 3)."""
    return NATIVE_GENERATOR_VERSION if prompts == "native" else GENERATOR_VERSION


def check_prompts(prompts: str) -> None:
    if prompts not in PROMPTS:
        hint = did_you_mean(str(prompts), PROMPTS)
        raise ConfigError(f"unknown prompt profile {prompts!r}; choose one of {', '.join(PROMPTS)}.{hint}")


def prompt_source(prompts: str, ruler_dir=None) -> str | None:
    """Where a profile's text comes from, as recorded in config.json (None for `native`)."""
    check_prompts(prompts)
    if prompts == "native":
        return None
    return ruler_text.load(None if ruler_dir is None else str(ruler_dir)).source


def _cache_key(name, tokenizer, length, n, seed, chat_template, depth, qa_file, prompts, text) -> str | None:
    tok_name = getattr(tokenizer, "name", None)
    if not tok_name:
        return None  # a tokenizer without an identity cannot be cached safely
    spec = TASKS[name]
    qa_id = None
    if qa_file is not None:
        st = qa_file.stat()
        qa_id = [str(qa_file.resolve()), st.st_size, st.st_mtime_ns]
    key = {
        "task": name, "config": asdict(spec.config), "length": length, "n": n, "seed": seed,
        "tokenizer": tok_name, "chat_template": chat_template, "depth": depth, "qa": qa_id,
        "version": generator_version(prompts),
    }
    if prompts != "native":  # native keys stay as they were, so its cached samples stay valid
        key["prompts"] = {"profile": prompts, "text": asdict(text)}
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def generate(name: str, tokenizer, *, length, n: int, seed: int = 0, chat_template: str | None = None,
             depth: list[float] | float | None = None, qa_data=None, use_cache: bool = True,
             prompts: str = "ruler", ruler_dir=None) -> list[Sample]:
    """Samples of task `name` whose prompt tokens + generation budget lie in [0.95 L, L].

    Args:
        name: one of the 13 names in `TASKS`.
        tokenizer: a `rattn_eval.tokenizer.Tokenizer` (or anything with encode/decode; then no disk cache).
        length: target L in tokens (int or a string like "32k").
        n, seed: number of samples and the seed everything random derives from.
        chat_template: None for a plain prompt, or a jinja chat template wrapping the user turn.
        depth: needle depth(s) in [0, 1] cycled over samples; default: the profile's own draw.
        qa_data: folder (or file) with dev-v2.0.json / hotpot_dev_distractor_v1.json for qa_1 / qa_2.
        use_cache: read and write the on-disk cache (see `cache_dir`).
        prompts: "ruler" (RULER's text and sampling) or "native" (this project's wording).
        ruler_dir: a RULER checkout to read RULER's text from instead of the installed lm-eval.
    """
    if name not in TASKS:
        resolve([name])  # raises with a suggestion
        raise ConfigError(f"{name!r} is a group, not a task; expand it with resolve().")
    check_prompts(prompts)
    spec = TASKS[name]
    length = parse_length(length)
    if not 0 < n <= MAX_SAMPLES:
        raise ConfigError(f"n must lie in 1..{MAX_SAMPLES} samples per (task, length), got {n}.")
    if depth is not None:
        depth = [float(depth)] if isinstance(depth, (int, float)) else [float(d) for d in depth]
        if not depth or any(not 0.0 <= d <= 1.0 for d in depth):
            raise ConfigError(f"depths must lie in [0, 1], got {depth}.")
    kwargs: dict[str, Any] = dict(length=length, n=n, seed=seed, task=name, chat_template=chat_template, depth=depth)
    qa_file = None
    if spec.needs_qa_data:
        qa_file = qa.data_file(spec.config, qa_data, name)
        kwargs["qa_data"] = qa_file
    text = None if prompts == "native" else ruler_text.load(None if ruler_dir is None else str(ruler_dir))
    folder = cache_dir() if use_cache else None
    key = _cache_key(name, tokenizer, length, n, seed, chat_template, depth, qa_file, prompts, text) if folder else None
    path = folder / f"{name}-{length}-{key}.jsonl" if key else None
    if path is not None and path.is_file():
        cached = _read_cache(path)
        if cached is not None and _complete(cached, name, length, n, seed):
            return cached
    if text is None:
        samples = spec.generate(spec.config, tokenizer, **kwargs)
    else:
        samples = spec.generate_ruler(spec.config, text, tokenizer, **kwargs)
    if path is not None:
        _write_cache(samples, path)
    return samples


def _write_cache(samples: list[Sample], path: Path) -> None:
    """A cache file: a header line {"sha256": <hash of the lines below>}, then the samples as JSON Lines."""
    body = _jsonl(samples).encode("utf-8")
    header = json.dumps({"sha256": hashlib.sha256(body).hexdigest()}) + "\n"
    _write_atomic(path, header.encode("utf-8") + body)


def _read_cache(path: Path) -> list[Sample] | None:
    """The samples of a cache file, or None (then they are generated again and the file replaced) when it
    is damaged, edited (its content no longer matches its checksum) or written before checksums."""
    try:
        header, _, body = path.read_bytes().partition(b"\n")
        want = json.loads(header).get("sha256") if header.startswith(b'{"sha256"') else None
        if want is None:
            log.info("sample cache file %s has no checksum; generating its samples again", path)
            return None
        if hashlib.sha256(body).hexdigest() != want:
            log.warning("sample cache file %s does not match its checksum (edited or damaged); generating its "
                        "samples again", path)
            return None
        return [Sample.from_dict(json.loads(line)) for line in body.decode("utf-8").splitlines() if line.strip()]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # a damaged cache file is regenerated and replaced


def _complete(samples: list[Sample], task: str, length: int, n: int, seed: int) -> bool:
    """Whether a cache file holds exactly the n samples it is named for (a cut or edited file does not)."""
    return len(samples) == n and all(
        s.index == i and s.id == sample_id(task, length, seed, i) and s.task == task and s.length == length
        and s.seed == seed for i, s in enumerate(samples))


def write_jsonl(samples: list[Sample], path) -> Path:
    """Write samples as JSON Lines atomically (temporary file + rename)."""
    path = Path(path)
    _write_atomic(path, _jsonl(samples).encode("utf-8"))
    return path


def _jsonl(samples: list[Sample]) -> str:
    return "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in samples)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path) -> list[Sample]:
    with open(path, encoding="utf-8") as f:
        return [Sample.from_dict(json.loads(line)) for line in f if line.strip()]


def generate_to_file(name: str, tokenizer, out, *, length, n: int, seed: int = 0, chat_template: str | None = None,
                     depth=None, qa_data=None, use_cache: bool = True, prompts: str = "ruler",
                     ruler_dir=None) -> Path:
    """`rattn-eval generate`: generate (or read cached) samples and write them to `out` as JSONL.
    `tokenizer` may be a Tokenizer or a name/path for `load_tokenizer`."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from rattn_eval.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    samples = generate(name, tokenizer, length=length, n=n, seed=seed, chat_template=chat_template, depth=depth,
                       qa_data=qa_data, use_cache=use_cache, prompts=prompts, ruler_dir=ruler_dir)
    return write_jsonl(samples, out)
