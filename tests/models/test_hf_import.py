"""Importers and the hf backend on tiny random transformers models saved by the test (CPU, fp32)."""

import json
import os
from pathlib import Path

import pytest
import torch

from rattn_eval.errors import CheckpointError
from rattn_eval.models import convert, load_model, read_config


def _save_llama(path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # norms away from 1 so a dropped or misplaced norm shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(path)
    return model


def _save_gemma3(path):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                           query_pre_attn_scalar=16, sliding_window=8, layer_types=["sliding_attention", "sliding_attention",
                           "full_attention", "sliding_attention"], rope_parameters={
                               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                               "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}})
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(path)
    return model


PROMPTS = [[5, 17, 250, 3, 99, 41, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 200, 201], [44, 45], [1, 2, 3, 4, 5, 6, 7, 8, 9]]


def test_hf_backend_generate_equals_torch_on_converted_llama(tmp_path):
    _save_llama(tmp_path / "hf")
    hf_model, _ = load_model(tmp_path / "hf", backend="hf", device="cpu")
    assert hf_model.backend == "hf"
    convert(tmp_path / "hf", tmp_path / "ours", tokenizer="bytes")
    ours, tok = load_model(tmp_path / "ours", backend="torch")
    assert ours.backend == "torch" and tok.name
    ref = hf_model.generate(PROMPTS, max_new_tokens=[6, 10, 4], eos_ids=[])
    got = ours.generate(PROMPTS, max_new_tokens=[6, 10, 4], eos_ids=[])
    assert got == ref and [len(g) for g in got] == [6, 10, 4]
    x = torch.tensor([PROMPTS[0]])
    a, b = ours(x), hf_model(x)
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_gemma3_import_crosses_the_window_with_linear_rope(tmp_path):
    hf = _save_gemma3(tmp_path / "hf")
    ours, tok = load_model(tmp_path / "hf", backend="torch")  # an HF folder converts in memory
    assert tok is None
    assert ours.config.window == 7 and ours.config.kinds == ("swa", "swa", "global", "swa")
    assert ours.config.rope_scale_global == 8.0 and ours.config.norm == "sandwich"
    x = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = ours(x), hf(input_ids=x).logits
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    narrow, _ = load_model(tmp_path / "hf", backend="torch", window=3)
    with torch.inference_mode():
        assert (narrow(x)[:, 10:] - a[:, 10:]).abs().max() > 1e-3
    hf_back, _ = load_model(tmp_path / "hf", backend="hf", device="cpu")
    prompts = [x[0, :30].tolist(), x[0, :11].tolist()]
    assert ours.generate(prompts, max_new_tokens=5, eos_ids=[]) == hf_back.generate(prompts, max_new_tokens=5, eos_ids=[])


def test_native_checkpoint_runs_on_hf_backend(tmp_path):
    _save_gemma3(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ours", tokenizer="bytes")
    assert read_config(tmp_path / "ours").window == 7
    ours, _ = load_model(tmp_path / "ours", backend="torch")
    via_hf, _ = load_model(tmp_path / "ours", backend="hf", device="cpu")
    prompts = [[3] * 20, [9, 8, 7]]
    assert ours.generate(prompts, max_new_tokens=6, eos_ids=[]) == via_hf.generate(prompts, max_new_tokens=6, eos_ids=[])


def test_convert_errors(tmp_path):
    _save_llama(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        convert(tmp_path / "hf", tmp_path / "ours")
    with pytest.raises(CheckpointError, match="expected a Hugging Face folder or a .gguf file"):
        convert(tmp_path / "nothing.bin", tmp_path / "x")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing keys: model.layers.1.mlp.up_proj.weight"):
        convert(tmp_path / "hf", tmp_path / "ours", tokenizer="bytes")


def test_gemma3_config_json_in_the_transformers_4_layout_imports_right():
    # Hub folders of Gemma-3 keep the 4.x keys: the local theta in rope_local_base_freq, a
    # global-only rope_scaling, a layer pattern instead of layer_types, tying left to the default.
    from rattn_eval.models.importers import config_from_hf, normalize_hf_config

    hf = {"model_type": "gemma3_text", "vocab_size": 512, "hidden_size": 64, "num_attention_heads": 4,
          "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 128, "rms_norm_eps": 1e-6,
          "max_position_embeddings": 32768, "num_hidden_layers": 6, "rope_theta": 1e6,
          "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
          "sliding_window": 512, "sliding_window_pattern": 6, "query_pre_attn_scalar": 16}
    cfg = config_from_hf(normalize_hf_config(hf))
    assert (cfg.rope_theta_local, cfg.rope_theta_global, cfg.rope_scale_global) == (1e4, 1e6, 8.0)
    assert cfg.tie_embeddings and cfg.window == 511
    assert cfg.kinds == ("swa",) * 5 + ("global",)


def test_convert_stays_the_function_after_its_module_loads():
    """The importer module is not named like the package's `convert` function: loading a submodule binds
    its name on the package, which once turned `from rattn_eval.models import convert` into a module
    for every caller after the first conversion (seen as "'module' object is not callable")."""
    import importlib

    import rattn_eval.models as models

    importlib.import_module("rattn_eval.models.importers")
    from rattn_eval.models import convert as again

    assert callable(again) and again is models.convert and not isinstance(again, type(importlib))


def _tree(path):
    """{relative path: bytes} of every file under `path`: what a refused conversion must leave as it was."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_convert_never_writes_into_its_source_or_a_foreign_folder(tmp_path):
    hf = tmp_path / "hf"
    _save_llama(hf)
    before = _tree(hf)
    (tmp_path / "link").symlink_to(hf)
    for dst in (hf, hf / "ours", tmp_path / "link", tmp_path / "link" / "ours"):
        for force in (False, True):
            with pytest.raises(CheckpointError, match="source"):
                convert(hf, dst, tokenizer="bytes", force=force)
    with pytest.raises(CheckpointError, match="source"):
        convert(tmp_path / "link", hf, tokenizer="bytes")
    assert _tree(hf) == before

    run = tmp_path / "run"  # a run directory: --force must not replace it either
    run.mkdir()
    (run / "config.json").write_text('{"tasks": ["vt"]}')
    (run / "records.jsonl").write_text("{}\n")
    with pytest.raises(CheckpointError, match="not empty.*--force"):
        convert(hf, run, tokenizer="bytes")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        convert(hf, run, tokenizer="bytes", force=True)
    assert _tree(run) == {"config.json": b'{"tasks": ["vt"]}', "records.jsonl": b"{}\n"}

    ours = tmp_path / "ours"
    ours.mkdir()  # an empty folder is fine
    convert(hf, ours, tokenizer="bytes")
    with pytest.raises(CheckpointError, match="not empty.*--force"):
        convert(hf, ours, tokenizer="gpt2")
    convert(hf, ours, tokenizer="gpt2", force=True)
    assert read_config(ours).tokenizer == "gpt2"
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="notes.txt"):
        convert(hf, ours, tokenizer="bytes", force=True)
    assert read_config(ours).tokenizer == "gpt2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "link", "ours", "run"]  # no temp folders left


def test_convert_onto_a_file_or_an_unwritable_place(tmp_path):
    hf = tmp_path / "hf"
    _save_llama(hf)
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    with pytest.raises(CheckpointError, match="is a file"):
        convert(hf, blocker, tokenizer="bytes")
    with pytest.raises(CheckpointError, match="cannot write"):
        convert(hf, blocker / "ours", tokenizer="bytes")
    assert blocker.read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_convert_into_a_read_only_folder(tmp_path):
    hf = tmp_path / "hf"
    _save_llama(hf)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="cannot write"):
            convert(hf, ro / "ours", tokenizer="bytes")
    finally:
        ro.chmod(0o755)


def test_convert_into_a_read_only_place_simulated(tmp_path, monkeypatch):
    """The read-only case for root (CI), which ignores the folder's mode: every mkdir under `ro` fails
    as it would on a read-only mount."""
    import errno

    hf = tmp_path / "hf"
    _save_llama(hf)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if ro in Path(path).parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    for dst in (ro / "ours", ro / "a" / "b"):
        with pytest.raises(CheckpointError, match="cannot write a checkpoint at .*Read-only file system") as err:
            convert(hf, dst, tokenizer="bytes")
        assert "\n" not in str(err.value)
    assert list(ro.iterdir()) == []


def test_interrupted_convert_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    hf = tmp_path / "hf"
    _save_llama(hf)
    convert(hf, tmp_path / "old", tokenizer="bytes")
    old = _tree(tmp_path / "old")

    def killed(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        convert(hf, tmp_path / "new", tokenizer="bytes")
    with pytest.raises(KeyboardInterrupt):
        convert(hf, tmp_path / "old", tokenizer="gpt2", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "old"]
    assert _tree(tmp_path / "old") == old


def _write_index(hf, weights, shard_name):
    """model.safetensors.index.json mapping every tensor of `weights` to `shard_name`."""
    from safetensors.torch import load_file

    keys = load_file(str(weights))
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard_name for k in keys}}))


@pytest.mark.parametrize("where", ["parent", "absolute", "missing", "not-json"])
def test_index_shards_stay_inside_the_folder(tmp_path, where):
    hf = tmp_path / "hf"
    _save_llama(hf)
    outside = tmp_path / "outside.safetensors"
    (hf / "model.safetensors").rename(outside)
    if where == "not-json":
        (hf / "model.safetensors.index.json").write_text('{"weight_map": ')
    else:
        _write_index(hf, outside, {"parent": "../outside.safetensors", "absolute": str(outside),
                              "missing": "model-00002-of-00002.safetensors"}[where])
    message = {"parent": "outside", "absolute": "outside", "missing": "missing", "not-json": "not valid JSON"}[where]
    with pytest.raises(CheckpointError, match=message) as err:
        convert(hf, tmp_path / "ours", tokenizer="bytes")
    assert "model.safetensors.index.json" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=message):
        load_model(hf, backend="torch")
    with pytest.raises(CheckpointError, match=message):
        load_model(hf, backend="hf", device="cpu")
