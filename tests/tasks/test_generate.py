"""Task generation: exact lengths, references present, determinism, depth, cache, errors."""

import json
import re
import subprocess
import sys

import pytest

from rattn_eval import tasks
from rattn_eval.errors import ConfigError, DataError
from rattn_eval.tasks import ruler_text
from rattn_eval.tasks.base import MIN_FILL

SYNTH = tasks.GROUPS["synthetic"]
# the native needle, and the ruler profile's read from its source (never spelled out here)
_RULER_NEEDLE = re.escape(ruler_text.load().needle).replace(re.escape("{type_needle_v}"), r"\w+").replace(
    re.escape("{key}"), "(.+?)").replace(re.escape("{value}"), r"(\S+)")
NEEDLE = re.compile(rf"One special magic \w+ for (.+?) is: (\S+)\.|{_RULER_NEEDLE}")


def check(samples, tok, name, length, n, template=None):
    assert [s.index for s in samples] == list(range(n))
    assert len({s.id for s in samples}) == n
    for s in samples:
        assert s.task == name and s.length == length
        assert s.num_tokens == len(tok.encode_prompt(s.input))
        assert MIN_FILL * length <= s.num_tokens + s.max_new_tokens <= length, (s.num_tokens, s.max_new_tokens)
        assert s.max_new_tokens == {"vt": 30, "cwe": 120, "fwe": 50}.get(name, 32 if name.startswith("qa") else 128)
        assert s.input.endswith(s.answer_prefix)
        assert s.answers and all(a in s.input[: -len(s.answer_prefix)] for a in s.answers)
        if template is not None:
            assert s.input.startswith("<|im_start|>system") and "<|im_start|>assistant\n" + s.answer_prefix in s.input
        if s.answer_position is not None:
            ids = tok.encode_prompt(s.input)
            assert 0 <= s.answer_position < len(ids)
        json.dumps(s.to_dict())
    if name.startswith("niah"):
        check_niah_keys(samples)


def check_niah_keys(samples):
    """Needles for the queried keys carry exactly the answers; every other needle has another key."""
    for s in samples:
        body = s.input[: -len(s.answer_prefix)]
        question = body[body.rindex("for ") + 4:]
        needles = [(m[0] or m[2], m[1] or m[3]) for m in NEEDLE.findall(body)]
        queried = {k for k, _ in needles if k in question}
        gold = [v for k, v in needles if k in queried]
        assert sorted(gold) == sorted(s.answers)
        distractors = [k for k, _ in needles if k not in queried]
        assert not set(distractors) & queried
        if s.task in ("niah_multikey_2", "niah_multikey_3"):
            assert len(distractors) >= 2 and len(set(distractors)) == len(distractors)


# (task, tokenizer, length, chat template) where RULER's fixed layout cannot fit: the `ruler` profile
# refuses them with a sentence that names --prompts native
# (a byte tokenizer spends a token per character: RULER's 30 x 10 repeated words alone take ~3.6k)
RULER_TOO_SHORT = {("cwe", "bytes", 1024, False), ("cwe", "bytes", 4096, False), ("cwe", "bytes", 1024, True),
                   ("cwe", "bytes", 4096, True), ("vt", "bytes", 1024, True)}


def generate_checked(name, tok, tok_name, length, n, seed, prompts, template=None, **kw):
    """tasks.generate + check, or the refusal the `ruler` profile gives where its layout cannot fit."""
    if prompts == "ruler" and (name, tok_name, length, template is not None) in RULER_TOO_SHORT:
        with pytest.raises(ConfigError, match="--prompts native"):
            tasks.generate(name, tok, length=length, n=n, seed=seed, chat_template=template, prompts=prompts, **kw)
        return None
    samples = tasks.generate(name, tok, length=length, n=n, seed=seed, chat_template=template, prompts=prompts, **kw)
    check(samples, tok, name, length, n, template=template)
    return samples


@pytest.mark.parametrize("prompts", tasks.PROMPTS)
@pytest.mark.parametrize("length", [1024, 4096, 16384])
@pytest.mark.parametrize("tok_name", ["bytes", "gpt2"])
@pytest.mark.parametrize("name", SYNTH)
def test_lengths_plain(tokenizers, name, tok_name, length, prompts):
    generate_checked(name, tokenizers[tok_name], tok_name, length, 2, 1, prompts)


@pytest.mark.parametrize("prompts", tasks.PROMPTS)
@pytest.mark.parametrize("length", [1024, 4096])
@pytest.mark.parametrize("tok_name", ["bytes", "smollm2"])
@pytest.mark.parametrize("name", SYNTH)
def test_lengths_chat_template(tokenizers, smollm2, name, tok_name, length, prompts):
    generate_checked(name, tokenizers[tok_name], tok_name, length, 2, 2, prompts, template=smollm2.chat_template)


# The whole grid costs about 20 s with the disk cache off, so it runs in CI.
@pytest.mark.parametrize("prompts", tasks.PROMPTS)
@pytest.mark.parametrize("template", [False, True])
@pytest.mark.parametrize("length", [1024, 4096, 16384, 32768])
@pytest.mark.parametrize("name", SYNTH)
def test_lengths_smollm2_full_grid(smollm2, name, length, template, prompts):
    generate_checked(name, smollm2, "smollm2", length, 4, 3, prompts, smollm2.chat_template if template else None)


@pytest.mark.parametrize("tok_name", ["bytes", "gpt2"])
@pytest.mark.parametrize("length", [1024, 4096])
@pytest.mark.parametrize("name", ["qa_1", "qa_2"])
def test_qa(tokenizers, qa_dir, name, tok_name, length):
    tok = tokenizers[tok_name]
    samples = tasks.generate(name, tok, length=length, n=3, seed=0, qa_data=qa_dir)
    check(samples, tok, name, length, 3)
    assert all(s.input.count("Document 1:\n") == 1 for s in samples)


def test_qa_chat_template_and_depth(smollm2, qa_dir):
    ss = tasks.generate("qa_1", smollm2, length=4096, n=2, seed=0, qa_data=qa_dir, chat_template=smollm2.chat_template,
                        depth=[0.0, 1.0], prompts="native")
    check(ss, smollm2, "qa_1", 4096, 2, template=smollm2.chat_template)
    assert ss[0].answer_position < 0.2 * ss[0].num_tokens < 0.8 * ss[1].num_tokens < ss[1].answer_position


def test_qa_needs_data(tokenizers, tmp_path):
    with pytest.raises(DataError, match="task qa_1 needs dev-v2.0.json: .* --qa-data"):
        tasks.generate("qa_1", tokenizers["bytes"], length=1024, n=1, seed=0)
    with pytest.raises(DataError, match="--qa-data"):
        tasks.generate("qa_2", tokenizers["bytes"], length=1024, n=1, seed=0, qa_data=tmp_path)
    (tmp_path / "dev-v2.0.json").write_text("{\"data\": 5}")
    with pytest.raises(DataError, match="original format"):
        tasks.generate("qa_1", tokenizers["bytes"], length=1024, n=1, seed=0, qa_data=tmp_path)


@pytest.mark.parametrize("name", SYNTH)
def test_same_seed_identical_other_seed_differs(tokenizers, name):
    tok = tokenizers["gpt2"]
    a = [json.dumps(s.to_dict()) for s in tasks.generate(name, tok, length=2048, n=3, seed=7)]
    b = [json.dumps(s.to_dict()) for s in tasks.generate(name, tok, length=2048, n=3, seed=7)]
    c = [json.dumps(s.to_dict()) for s in tasks.generate(name, tok, length=2048, n=3, seed=8)]
    assert a == b
    assert all(x != y for x, y in zip(a, c))
    # samples do not depend on n: a shorter run is a prefix of a longer one
    assert [json.dumps(s.to_dict()) for s in tasks.generate(name, tok, length=2048, n=2, seed=7)] == a[:2]


def test_identical_in_fresh_process(tokenizers, tmp_path):
    code = ("import json; from rattn_eval import tasks; from rattn_eval.tokenizer import load_tokenizer; "
            "print(json.dumps([s.to_dict() for t in ('niah_multikey_3', 'cwe') for s in tasks.generate(t, "
            "load_tokenizer('gpt2'), length=2048, n=2, seed=5)]))")
    env = {"RATTN_EVAL_CACHE": "off", "PYTHONHASHSEED": "123", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    here = json.dumps([s.to_dict() for t in ("niah_multikey_3", "cwe")
                       for s in tasks.generate(t, tokenizers["gpt2"], length=2048, n=2, seed=5)])
    assert out.stdout.strip() == here


@pytest.mark.parametrize("prompts", tasks.PROMPTS)
@pytest.mark.parametrize("name", ["niah_single_1", "niah_single_2", "niah_multikey_2", "niah_multiquery"])
def test_depth_honoured(tokenizers, name, prompts):
    tok = tokenizers["gpt2"]
    ss = tasks.generate(name, tok, length=4096, n=3, seed=0, depth=[0.0, 0.5, 1.0], prompts=prompts)
    assert [s.depth for s in ss] == [0.0, 0.5, 1.0]
    rel = [s.answer_position / s.num_tokens for s in ss]
    assert rel[0] < 0.15 and 0.4 < rel[1] < 0.6 and rel[2] > 0.85, rel
    ds = [s.depth for s in tasks.generate(name, tok, length=2048, n=8, seed=0, prompts=prompts)]
    if prompts == "native":  # default: depths spread evenly over [0, 1)
        assert sorted(ds) == [j / 8 for j in range(8)]
    elif name in ("niah_single_1", "niah_multikey_2"):  # RULER: random lines
        assert all(0 <= d < 1 for d in ds) and len(set(ds)) == 8
    else:  # RULER: essay depths drawn from its 40 (percent)
        assert all(round(100 * d) in ruler_text.DEPTHS for d in ds) and len(set(ds)) > 1


def test_answer_position_points_at_needle(tokenizers):
    """The token at answer_position holds the needle's first character, for tokenizers with the tiktoken
    fast path (bytes, GPT-2, SmolLM2) and without it (the shipped tiny models' BPE, where counting the
    prefix's tokens used to land one token late: " One" holds the space before the needle)."""
    from pathlib import Path

    from rattn_eval.tokenizer import load_tokenizer

    tiny = load_tokenizer(Path(tasks.__file__).parents[1] / "checkpoints" / "tiny-rattn")
    for name, tok in [*tokenizers.items(), ("tiny-rattn", tiny)]:
        for depth in (0.0, 0.3, 0.77):
            for prompts, needle in (("native", "One special magic"), ("ruler", ruler_text.load().needle.split("{")[0].strip())):
                s = tasks.generate("niah_single_2", tok, length=2048, n=1, seed=0, depth=depth, prompts=prompts)[0]
                ids = tok.encode_prompt(s.input)
                p = s.answer_position
                assert tok.decode(ids[p: p + 24]).lstrip().startswith(needle), (name, depth, prompts)
                assert "One" not in tok.decode(ids[max(0, p - 3): p]), (name, depth, prompts)


@pytest.mark.parametrize("name", ["niah_multiquery", "niah_single_2"])
def test_essay_needles_at_the_same_spot_are_separated(tokenizers, name):
    """Needles placed at one sentence end (here all at depth 0) are separated from each other and from
    the text by a space (the second of two needles at the start was glued to the first word)."""
    for s in tasks.generate(name, tokenizers["gpt2"], length=1024, n=2, seed=0, depth=[0.0]):
        assert not re.search(r"is: \d+\.\S", s.input), s.input[:400]


def test_vt_chains_in_order_in_example_and_question(tokenizers):
    """Every assignment comes after the one it copies, in the worked example as in the question
    (RULER builds both alike; the example used to list its statements in random order)."""
    from rattn_eval.tasks.variable_tracking import INSTRUCTION

    stmt = re.compile(r"VAR ([A-Z]{5}) = (?:VAR ([A-Z]{5})|\d+)\.")
    for length in (1024, 4096, 8192):
        for s in tasks.generate("vt", tokenizers["gpt2"], length=length, n=3, seed=0, prompts="native"):
            example, question = s.input.split(INSTRUCTION)[1:3]
            for part in (example.split("\n\nQuestion")[0], question.split("\n\nQuestion")[0]):
                found = stmt.findall(part)
                assert len(found) == 5
                seen = set()
                for var, src in found:
                    assert not src or src in seen, (length, s.index, found)
                    seen.add(var)


def test_vt_several_chains_interleave_in_order():
    from rattn_eval.tokenizer import load_tokenizer
    from rattn_eval.tasks import variable_tracking as vt

    cfg = vt.VTConfig(num_chains=3)
    s = vt.generate(cfg, load_tokenizer("bytes"), length=4096, n=1, seed=1)[0]
    body = s.input.split(vt.INSTRUCTION)[2].split("\n\nQuestion")[0]
    found = re.findall(r"VAR ([A-Z]{5}) = (?:VAR ([A-Z]{5})|\d+)\.", body)
    assert len(found) == 15
    seen = set()
    for var, src in found:
        assert not src or src in seen
        seen.add(var)
    # the three chains interleave (each takes its own sorted depths) rather than following one another
    heads = [i for i, (_, src) in enumerate(found) if not src]
    assert len(heads) == 3 and heads != [0, 5, 10], heads


def test_qa_takes_the_questions_own_distractors_first(tmp_path, tokenizers):
    """As RULER: a SQuAD question's haystack holds the other paragraphs of its article, a HotpotQA
    question's its non-supporting context paragraphs, before random paragraphs of the file."""
    squad = {"version": "v2.0", "data": [
        {"title": f"A{a}", "paragraphs": [
            {"context": f"Article{a} paragraph {p}: the lake Mirr{a}x{p} is deep and cold. " * 2,
             "qas": [{"id": f"q{a}{p}", "question": f"How is lake Mirr{a}x{p}?", "is_impossible": False,
                      "answers": [{"text": f"deep{a}x{p}", "answer_start": 0}]}]}
            for p in range(5)]} for a in range(40)]}
    hotpot = [{"_id": f"h{a}", "question": f"Where is Quell{a}?", "answer": f"north{a}",
               "supporting_facts": [[f"T{a}_0", 0], [f"T{a}_1", 0]],
               "context": [[f"T{a}_{b}", [f"Paragraph {b} of example {a}. "]] for b in range(10)]} for a in range(40)]
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(squad))
    (tmp_path / "hotpot_dev_distractor_v1.json").write_text(json.dumps(hotpot))
    tok = tokenizers["gpt2"]
    for s in tasks.generate("qa_1", tok, length=2048, n=3, seed=0, qa_data=tmp_path):
        a = re.search(r"lake Mirr(\d+)x", s.input.rsplit("Question:", 1)[1]).group(1)
        own = set(re.findall(rf"Document \d+:\nArticle{a} paragraph (\d)", s.input))
        assert own == {"0", "1", "2", "3", "4"}, own
    for s in tasks.generate("qa_2", tok, length=2048, n=3, seed=0, qa_data=tmp_path):
        a = re.search(r"Quell(\d+)", s.input.rsplit("Question:", 1)[1]).group(1)
        docs = re.findall(rf"Document (\d+):\nT{a}_(\d)", s.input)
        assert sorted(b for _, b in docs) == [str(b) for b in range(10)], docs


def test_cache_reads_instead_of_regenerating(tokenizers, tmp_path, monkeypatch):
    monkeypatch.setenv("RATTN_EVAL_CACHE", str(tmp_path))
    tok = tokenizers["gpt2"]
    first = tasks.generate("vt", tok, length=2048, n=2, seed=0)
    files = list(tmp_path.glob("vt-2048-*.jsonl"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("regenerated")

    spec = tasks.TASKS["vt"]
    monkeypatch.setitem(tasks.TASKS, "vt", tasks.TaskSpec(spec.name, spec.family, boom, boom, spec.config))
    assert tasks.generate("vt", tok, length=2048, n=2, seed=0) == first
    with pytest.raises(AssertionError, match="regenerated"):  # another seed is another key
        tasks.generate("vt", tok, length=2048, n=2, seed=1)
    with pytest.raises(AssertionError, match="regenerated"):  # so is another tokenizer
        tasks.generate("vt", tokenizers["bytes"], length=2048, n=2, seed=0)
    assert not list(tmp_path.glob("*.tmp"))


def test_generate_to_file(tmp_path):
    out = tasks.generate_to_file("fwe", "bytes", tmp_path / "x.jsonl", length="2k", n=2, seed=0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and {"index", "id", "task", "input", "answers", "num_tokens", "max_new_tokens", "depth",
                               "seed", "answer_position"} <= set(rows[0])
    assert tasks.read_jsonl(out)[1].to_dict() == rows[1]


def test_too_short_length_is_a_clear_error(tokenizers):
    with pytest.raises(ConfigError, match="too small"):
        tasks.generate("niah_single_2", tokenizers["gpt2"], length=200, n=1, seed=0)
    with pytest.raises(ConfigError, match="too small"):
        tasks.generate("cwe", tokenizers["gpt2"], length=100, n=1, seed=0)


def test_parse_length_and_resolve():
    assert tasks.parse_length("32k") == 32768
    assert tasks.parse_length("1m") == 1024 * 1024
    assert tasks.parse_length("4096") == 4096 and tasks.parse_length(" 4K ") == 4096
    for bad in ("32q", "0", "-4k", "", "k", "1.5k"):
        with pytest.raises(ConfigError):
            tasks.parse_length(bad)
    assert tasks.resolve(["niah"]) == tasks.GROUPS["niah"] and len(tasks.GROUPS["niah"]) == 8
    assert len(tasks.resolve("synthetic")) == 11 and len(tasks.resolve("ruler")) == 13
    assert tasks.resolve("vt,cwe,vt") == ["vt", "cwe"]
    with pytest.raises(ConfigError, match="Did you mean 'niah_single_1'"):
        tasks.resolve(["niah_singel_1"])
    with pytest.raises(ConfigError, match="unknown task"):
        tasks.generate("nope", None, length=1024, n=1, seed=0)
    with pytest.raises(ConfigError, match="depths"):
        tasks.generate("vt", None, length=1024, n=1, seed=0, depth=[1.5])


def test_a_cut_cache_file_is_regenerated(tokenizers, tmp_path, monkeypatch):
    """A cache file cut short (or holding other samples) is not trusted: the samples are generated again."""
    monkeypatch.setenv("RATTN_EVAL_CACHE", str(tmp_path))
    tok = tokenizers["gpt2"]
    full = tasks.generate("fwe", tok, length=2048, n=5, seed=0)
    (f,) = tmp_path.glob("fwe-2048-*.jsonl")
    f.write_text("".join(f.read_text().splitlines(keepends=True)[:2]))
    assert tasks.generate("fwe", tok, length=2048, n=5, seed=0) == full
    assert len(f.read_text().splitlines()) == 1 + 5  # and the cache file is whole again (checksum line + samples)


@pytest.mark.parametrize("field", ["answers", "input"])
def test_an_edited_cache_file_is_regenerated(tokenizers, tmp_path, monkeypatch, caplog, field):
    """Each cache file carries a checksum of its samples: one whose answers or prompt were edited (count
    and ids intact) is not trusted, and the samples are generated again, correct."""
    monkeypatch.setenv("RATTN_EVAL_CACHE", str(tmp_path))
    tok = tokenizers["gpt2"]
    full = tasks.generate("vt", tok, length=2048, n=3, seed=0)
    (f,) = tmp_path.glob("vt-2048-*.jsonl")
    header, *rows = f.read_text().splitlines(keepends=True)
    assert "sha256" in json.loads(header)
    row = json.loads(rows[1])
    row[field] = ["EDITED"] if field == "answers" else row["input"].replace("VAR", "VAX", 1)
    assert row != json.loads(rows[1])
    f.write_text(header + rows[0] + json.dumps(row) + "\n" + "".join(rows[2:]))
    with caplog.at_level("WARNING", logger="rattn_eval.tasks"):
        again = tasks.generate("vt", tok, length=2048, n=3, seed=0)
    assert again == full and again[1].answers != ["EDITED"]
    assert any("does not match its checksum" in r.getMessage() for r in caplog.records)
    assert f.read_text().splitlines(keepends=True) == [header, *rows]  # the cache file is whole again


def test_sample_count_is_bounded(tokenizers):
    with pytest.raises(ConfigError, match="n must lie in 1..100000"):
        tasks.generate("vt", tokenizers["gpt2"], length=2048, n=10 ** 20, seed=0)


@pytest.mark.parametrize("names,prompts,option,refused", [
    (["niah_single_1"], "ruler", "depth", False), (["niah_multikey_2"], "native", "depth", False),
    (["qa_1"], "native", "depth", False), (["qa_2"], "ruler", "depth", True),
    (["vt", "cwe", "fwe"], "native", "depth", True), (["vt", "niah_single_3"], "ruler", "depth", False),
    (["qa_2"], "ruler", "qa_data", False), (["vt", "qa_1"], "native", "qa_data", False),
    (["niah_single_1"], "ruler", "qa_data", True),
    (["vt"], "ruler", "ruler_dir", False), (["vt"], "native", "ruler_dir", True),
])
def test_unused_option_refuses_exactly_the_options_no_task_reads(names, prompts, option, refused):
    given = dict(depth=None, qa_data=None, ruler_dir=None)
    given[option] = [0.5] if option == "depth" else "somewhere"
    msg = tasks.unused_option(names, prompts=prompts, **given)
    assert (msg is not None) == refused, msg
    assert tasks.unused_option(names, prompts=prompts, depth=None, qa_data=None, ruler_dir=None) is None
