"""`rattn-eval export --format hf`: the exported folder, loaded by transformers with trust_remote_code,
computes what our native model computes (CPU, fp32).

Checkpoints: the shipped tiny-rattn, and two random debug configs with all three layer kinds, window 16
(prompts are longer), perturbed norm weights, and between them every other ModelConfig value the export
maps (qk norm, sandwich norms, GeGLU, relu / identity feature maps, RoPE scale and NoPE, attn scale,
embed scale, untied head, final softcap, sliding-window global layers, the bytes tokenizer and a
tokenizer with a chat template).
"""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from closeness import rel_err

from rattn_eval.cli import cli
from rattn_eval.errors import CheckpointError, ConfigError
from rattn_eval.models import ModelConfig, build_model, load_model, preset, save_checkpoint
from rattn_eval.models.export import FIELD_MAP, check_exportable, export_hf, read_exported

SHIPPED = ("tiny-rattn", "tiny-swa", "tiny-full")
TOL = 1e-4  # max |hf - native| / max |native|, fp32
TINY_TEXT = ("The special magic number for the blue lake is 4821. " * 6
             + "Remember it well. What is the special magic number for the blue lake? Answer:")
CHAT_TEMPLATE = ("{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")

DEBUG_CONFIGS = {
    # bytes tokenizer; local layers of both kinds and a global one with scaled RoPE
    "debug-mixed": dict(kinds=("rattn", "swa", "global", "rattn"), qk_norm=True, norm="sandwich", ffn="geglu",
                        feature_map="relu", rope_theta_local=5000.0, rope_theta_global=5e5, rope_scale_global=4.0,
                        attn_scale=0.3, embed_scale=8.0, tie_embeddings=False, final_softcap=30.0, max_context=512),
    # tiny-rattn's tokenizer plus a chat template; NoPE global layer that is itself sliding-window
    "debug-local-globals": dict(kinds=("swa", "rattn", "global"), window=16, global_window=24,
                                feature_map="identity", nope_global=True, vocab_size=4096,
                                tokenizer="tokenizer.json", max_context=1024),
}


def _debug_checkpoint(root: Path, name: str, tiny_tokenizer_dir: Path) -> Path:
    cfg = preset("debug").replace(name=name, **DEBUG_CONFIGS[name])
    model = build_model(cfg, device="cpu", dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms away from 1, so a dropped or swapped norm shows
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    tokenizer_dir = None
    if cfg.tokenizer == "tokenizer.json":
        tokenizer_dir = root / f"{name}-tokenizer"
        shutil.copytree(tiny_tokenizer_dir, tokenizer_dir, ignore=shutil.ignore_patterns("config.json", "*.safetensors"))
        tok_cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
        (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "chat_template": CHAT_TEMPLATE}))
    return save_checkpoint(root / name, cfg, model.state_dict(), tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (source checkpoint, exported folder) for the shipped checkpoints and the debug configs."""
    from rattn_eval.checkpoints import checkpoint_dir

    root = tmp_path_factory.mktemp("export")
    sources = {name: checkpoint_dir(name) for name in SHIPPED}
    for name in DEBUG_CONFIGS:
        sources[name] = _debug_checkpoint(root, name, sources["tiny-rattn"])
    return {name: (src, export_hf(src, root / f"{name}-hf")) for name, src in sources.items()}


def _hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.float32).eval()


def _prompts(tok, vocab_size):
    """Three prompts: two longer than every window, one shorter than the debug windows (16), whose
    16 generated tokens cross the window boundary; tiny-rattn's from real text."""
    if vocab_size == 4096:  # the shipped checkpoints' tokenizer
        return [tok.encode_prompt(t) for t in (TINY_TEXT, TINY_TEXT[60:], "Hello")]
    gen = torch.Generator().manual_seed(0)
    return [[tok.bos_id] + torch.randint(0, 256, (n,), generator=gen).tolist() for n in (110, 47, 8)]


def _left_padded(prompts, pad_id):
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)
        mask[b, T - len(p):] = 1
    return ids, mask


@pytest.mark.parametrize("name", [*SHIPPED, *DEBUG_CONFIGS])
def test_logits_equal_native(exports, name):
    """Whole-prompt logits, alone and in a left-padded batch, equal the native model's (torch backend)."""
    src, out = exports[name]
    native, tok = load_model(src, backend="torch", device="cpu", dtype=torch.float32)
    hf = _hf(out)
    prompts = _prompts(tok, native.config.vocab_size)
    assert len(prompts[1]) > (native.config.window or 0) + 1  # the linear branch and the window both act
    ids, mask = _left_padded(prompts, tok.pad_id)
    errs = []
    with torch.inference_mode():
        for b, p in enumerate(prompts):
            ref = native(torch.tensor([p]))[0]  # (T, V)
            alone = hf(torch.tensor([p])).logits[0]
            batched = hf(ids, attention_mask=mask).logits[b, ids.shape[1] - len(p):]
            errs += [rel_err(alone, ref), rel_err(batched, ref)]
    print(f"\n{name}: max relative logit error, alone / left-padded: {max(errs[0::2]):.2e} / {max(errs[1::2]):.2e} "
          f"(prompts of {[len(p) for p in prompts]} tokens, window {native.config.window})")
    assert max(errs) <= TOL


@pytest.mark.parametrize("name", ["tiny-rattn", *DEBUG_CONFIGS])
def test_generate_equals_native_greedy(exports, name):
    """transformers' greedy generate (16 tokens, left-padded batch, its cache or none) equals ours."""
    src, out = exports[name]
    native, tok = load_model(src, backend="torch", device="cpu", dtype=torch.float32)
    hf = _hf(out)
    prompts = _prompts(tok, native.config.vocab_size)
    want = native.generate(prompts, max_new_tokens=16)  # stops at the tokenizer's EOS ids
    ids, mask = _left_padded(prompts, tok.pad_id)
    for use_cache in (True, False):
        with torch.inference_mode():
            seqs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                               use_cache=use_cache)
        got = []
        for row in seqs[:, ids.shape[1]:].tolist():
            ends = [i for i, t in enumerate(row) if t in tok.eos_ids]  # transformers keeps EOS and pads after it
            got.append(row[: ends[0]] if ends else row)
        assert got == want, (use_cache, got, want)
    assert sum(len(w) for w in want) > 16


@pytest.mark.parametrize("name", ["tiny-rattn", *DEBUG_CONFIGS])
def test_tokenizer_and_config_files(exports, name):
    """AutoTokenizer gives our prompt ids (BOS included), special tokens and chat template; the exported
    config reads back to the same ModelConfig and weights (the native backends load the folder too)."""
    from transformers import AutoTokenizer

    src, out = exports[name]
    native, tok = load_model(src, backend="torch", device="cpu", dtype=torch.float32)
    hf_tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    for text in (TINY_TEXT, "tabs\tand\nnew lines, é ü 日本"):
        assert hf_tok(text).input_ids == tok.encode_prompt(text)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.bos_id, min(tok.eos_ids), tok.pad_id)
    if tok.chat_template is not None:
        chat = [{"role": "user", "content": "Hi there"}]
        assert hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
            tok.apply_chat_template("Hi there")
    config, weights = read_exported(out)
    assert dataclasses.replace(config, name=native.config.name, tokenizer=native.config.tokenizer) == native.config
    back, _ = load_model(out, backend="torch", device="cpu", dtype=torch.float32)
    ids = torch.tensor([_prompts(tok, native.config.vocab_size)[0]])
    with torch.inference_mode():
        assert torch.equal(back(ids), native(ids))


def test_cli_run_hf_backend_equals_torch(tmp_path):
    """`rattn-eval run --backend hf` on the export gives tiny-rattn's per-sample predictions and scores."""
    runner = CliRunner()
    out = tmp_path / "tiny-rattn-hf"
    res = runner.invoke(cli, ["export", "tiny-rattn", str(out), "--format", "hf"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    records = {}
    for backend, model in (("torch", "tiny-rattn"), ("hf", str(out))):
        run_dir = tmp_path / f"run-{backend}"
        res = runner.invoke(cli, ["run", "-t", "niah_single_1", "-l", "1k", "-n", "4", "--backend", backend, "-m", model,
                                  "--device", "cpu", "-o", str(run_dir), "-q"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
        assert {r["backend"] for r in rows} == {backend}
        records[backend] = {r["id"]: (r["input_sha"], r["prediction"], r["score"]) for r in rows}
    assert len(records["torch"]) == 4 and records["hf"] == records["torch"]
    assert hf_logging.is_progress_bar_enabled() == bars  # -q hides transformers' loading bar for the run only
    print(f"\nniah_single_1 1k, 4 samples: scores {[s for _, _, s in records['hf'].values()]} on both backends")


def test_lm_eval_hf_model_equals_rattn_model(exports, monkeypatch):
    """lm-eval's own `hf` model on the export scores like our `rattn` model on tiny-rattn: the same
    per-request log-likelihoods and generations on the local tasks, with 128-token rolling windows (so
    the linear branch, window 64, is active)."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lmeval_support import GEN_TASK, MC_TASK, PPL_TASK, REPO, TASKS_DIR, run_tasks

    from rattn_eval.integrations.lm_eval import RattnLM

    monkeypatch.chdir(REPO)  # the task YAMLs name their JSONL files relative to the repository root
    task_manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    tasks = (MC_TASK, PPL_TASK, GEN_TASK)
    ours, ours_out = run_tasks(RattnLM("tiny-rattn", backend="torch", device="cpu", dtype="float32", batch_size=4,
                                       max_length=128), task_manager, tasks)
    _, out = exports["tiny-rattn"]
    ref, ref_out = run_tasks("hf", task_manager, tasks, batch_size=4, device="cpu",
                             model_args=f"pretrained={out},trust_remote_code=True,dtype=float32,max_length=128")
    assert lm_eval.__version__.startswith("0.4")
    worst = 0.0
    for task in (MC_TASK, PPL_TASK):
        assert len(ours[task]) == len(ref[task]) > 0
        for got_doc, ref_doc in zip(ours[task], ref[task]):
            for got, want in zip(got_doc, ref_doc):
                got_ll, want_ll = (got[0], want[0]) if isinstance(want, tuple) else (got, want)
                worst = max(worst, abs(got_ll - want_ll) / max(1.0, abs(want_ll)))
                if isinstance(want, tuple):
                    assert got[1] == want[1]
    print(f"\nlm-eval hf vs rattn: worst relative log-likelihood difference {worst:.1e}")
    assert worst <= TOL
    assert ours[GEN_TASK] == ref[GEN_TASK] and any(doc[0] for doc in ref[GEN_TASK])
    for task, metric in ((MC_TASK, "acc,none"), (MC_TASK, "acc_norm,none"), (GEN_TASK, "exact_match,none")):
        assert ours_out["results"][task][metric] == ref_out["results"][task][metric]


def test_export_refuses_a_non_empty_folder_unless_force(exports, tmp_path):
    runner = CliRunner()
    src, _ = exports["debug-mixed"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):  # --force replaces only a previous export
        res = runner.invoke(cli, ["export", str(src), str(busy), *extra])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and "rattn-eval: error:" in res.output, res.output
    assert (busy / "notes.txt").read_text() == "mine"
    out = tmp_path / "out"
    assert runner.invoke(cli, ["export", str(src), str(out)]).exit_code == 0
    res = runner.invoke(cli, ["export", str(src), str(out)])
    assert res.exit_code == 2 and "--force" in res.output
    res = runner.invoke(cli, ["export", str(src), str(out), "--force", "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_export_refuses_config_values_the_modeling_file_lacks(exports, tmp_path):
    """Fields added to ModelConfig later (by an importer, say) are refused at non-default values, by name."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Extended(ModelConfig):
        rope_type: str = "default"

    assert set(FIELD_MAP) <= {f.name for f in dataclasses.fields(ModelConfig)}
    base = preset("debug").to_dict()
    check_exportable(Extended(**base))
    with pytest.raises(ConfigError, match="rope_type = 'yarn' is not implemented"):
        check_exportable(Extended(**base, rope_type="yarn"))
    cfg = preset("debug")
    object.__setattr__(cfg, "ffn", "relu2")  # a value a newer ModelConfig might allow
    with pytest.raises(ConfigError, match="ffn = 'relu2' is not implemented"):
        check_exportable(cfg)
    with pytest.raises(CheckpointError, match="not a rattn-eval checkpoint"):
        export_hf(tmp_path, tmp_path / "out")


def test_hf_backend_trusts_only_our_modeling_code(exports, tmp_path):
    _, out = exports["debug-mixed"]
    copy = tmp_path / "edited"
    shutil.copytree(out, copy)
    with open(copy / "modeling_rattn.py", "a") as f:
        f.write("\nprint('hello')\n")
    with pytest.raises(ConfigError, match="modeling_rattn.py differs"):
        load_model(copy, backend="hf", device="cpu")
    model, tok = load_model(out, backend="hf", device="cpu", dtype=torch.float32)
    assert model.backend == "hf" and model.max_context == 512 and tok.add_bos
