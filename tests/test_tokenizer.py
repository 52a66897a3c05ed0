"""Tokenizer module: built-ins, HF folders (SmolLM2 rebuilt from its packaged GGUF), BOS handling, chat templates."""

import json
import shutil

import pytest

from rattn_eval.errors import ConfigError
from rattn_eval.tokenizer import load_tokenizer
from rattn_eval.tokenizer import smollm2_tokenizer_dir

TEXT = "Hello, world! Ünïcödé ✓ — 1234567 numbers\n\ttabs"


@pytest.fixture(scope="session")
def smollm2_dir():
    return smollm2_tokenizer_dir()


def test_bytes_roundtrip_and_specials():
    tok = load_tokenizer("bytes")
    assert tok.name == "bytes" and tok.vocab_size == 259
    assert tok.encode("ab") == [97, 98]
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert len(tok.encode(TEXT)) == len(TEXT.encode("utf-8"))
    # special-token strings in the text are recognised; decode skips them
    assert tok.encode("x<eos>y<pad>") == [120, 257, 121, 258]
    assert tok.decode([256, 104, 105, 257]) == "hi"
    assert tok.decode([0xE2, 0x9C]) == "\ufffd"  # a cut multi-byte character decodes with replacement
    assert tok.encode_prompt("hi") == [256, 104, 105]
    assert tok.encode_prompt("<bos>hi") == [256, 104, 105]  # BOS already present: not doubled


def test_gpt2_known_ids():
    tok = load_tokenizer("gpt2")
    assert tok.name == "gpt2" and tok.vocab_size == 50257
    assert tok.encode("The quick brown fox") == [464, 2068, 7586, 21831]
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode("a<|endoftext|>") == [64, 50256]
    assert tok.decode([64, 50256, 65]) == "ab"
    assert tok.encode_prompt("hi") == tok.encode("hi")  # GPT-2 adds no BOS
    assert tok.eos_ids == {50256}


def test_smollm2_matches_transformers(smollm2_dir):
    from transformers import AutoTokenizer

    tok = load_tokenizer(smollm2_dir)
    ref = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert tok.vocab_size == 49152
    assert tok.encode(TEXT) == ref.encode(TEXT, add_special_tokens=False)
    assert tok.encode_prompt(TEXT) == ref.encode(TEXT)  # SmolLM2 adds no BOS, like transformers
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode("<|im_start|>user") == ref.encode("<|im_start|>user", add_special_tokens=False)
    assert tok.encode("<|im_start|>")[0] == tok.bos_id == 1
    assert 2 in tok.eos_ids
    assert tok.name.startswith("hf-") and len(tok.name) == 19
    assert load_tokenizer(smollm2_dir).name == tok.name
    assert load_tokenizer("smollm2-135m").name == tok.name


def test_chat_template(smollm2_dir):
    from transformers import AutoTokenizer

    tok = load_tokenizer(smollm2_dir)
    ref = AutoTokenizer.from_pretrained(str(smollm2_dir))
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    want = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template("What is 2+2?") == want
    assert tok.apply_chat_template("x").endswith("<|im_start|>assistant\n")
    with pytest.raises(ConfigError, match="no chat template"):
        load_tokenizer("gpt2").apply_chat_template("x")


def test_hf_folder_with_bos_and_name_depends_on_template(smollm2_dir, tmp_path):
    d = tmp_path / "tok"
    shutil.copytree(smollm2_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = True
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(d)
    assert tok.add_bos
    assert tok.encode_prompt("hi") == [tok.bos_id] + tok.encode("hi")
    assert tok.encode_prompt("<|im_start|>hi") == tok.encode("<|im_start|>hi")
    base = load_tokenizer(smollm2_dir).name
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert load_tokenizer(d).name != base
    assert load_tokenizer(d).apply_chat_template("abc") == "abc"


def test_checkpoint_folder_naming_builtin(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"tokenizer": "bytes", "format_version": 1}))
    assert load_tokenizer(tmp_path).name == "bytes"
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_unknown_name_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'gpt2'"):
        load_tokenizer("gtp2")
    with pytest.raises(ConfigError, match="unknown tokenizer"):
        load_tokenizer("zzzzzz")


def _tiny_tokenizer_dir(tmp_path):
    """A copy of a shipped checkpoint's tokenizer files (small; no conversion needed)."""
    from rattn_eval.checkpoints import checkpoint_dir

    d = tmp_path / "tok"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(checkpoint_dir("tiny-full") / name, d / name)
    return d


BAD_TOKENIZER_FILES = {  # id: (file, content)
    "tokenizer-truncated": ("tokenizer.json", "half"),
    "tokenizer-not-json": ("tokenizer.json", "{ not json"),
    "tokenizer-list": ("tokenizer.json", "[1, 2, 3]"),
    "tokenizer-refused": ("tokenizer.json", '{"model": {"type": "NoSuchModel"}}'),
    "tokenizer-not-utf8": ("tokenizer.json", b"\xff\xfe{}"),
    "config-not-json": ("tokenizer_config.json", '{"bos_token": '),
    "config-list": ("tokenizer_config.json", "[]"),
    "template-number": ("tokenizer_config.json", '{"chat_template": 5}'),
    "template-list-of-numbers": ("tokenizer_config.json", '{"chat_template": [1, 2]}'),
    "bos-number": ("tokenizer_config.json", '{"bos_token": 5}'),
    "generation-not-json": ("generation_config.json", "{"),
    "generation-eos-string": ("generation_config.json", '{"eos_token_id": "</s>"}'),
    "template-file-not-utf8": ("chat_template.jinja", b"\xff\xfe"),
}


@pytest.mark.parametrize("case", BAD_TOKENIZER_FILES)
def test_garbled_tokenizer_files_are_one_sentence_naming_the_file(tmp_path, case):
    d = _tiny_tokenizer_dir(tmp_path)
    assert load_tokenizer(d).vocab_size == 4096
    name, content = BAD_TOKENIZER_FILES[case]
    if content == "half":
        data = (d / name).read_bytes()
        content = data[: len(data) // 2]
    (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as err:
        load_tokenizer(d)
    assert str(d / name) in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_config_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ConfigError, match="config.json"):
        load_tokenizer(tmp_path)
