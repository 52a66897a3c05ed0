"""The tiny random `debug` model: caches, batching, strict checkpoints, window overrides (CPU, fp32, torch)."""

import json

import pytest
import torch

from rattn_eval.errors import BudgetError, CheckpointError, ConfigError
from rattn_eval.kernels import LocalCache
from rattn_eval.models import ModelConfig, build_model, load_model, preset
from rattn_eval.models.model import KVCache


def _model(kinds, window=16, **kw):
    cfg = preset("debug").replace(kinds=kinds, window=window, **kw)
    return build_model(cfg, device="cpu", dtype=torch.float32)


def _ids(T, B=1, seed=0):
    return torch.randint(0, 259, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["global", "swa", "rattn"])
@pytest.mark.parametrize("prompt_len", [5, 40], ids=["shorter", "longer"])
def test_prefill_then_decode_equals_full_forward(kind, prompt_len):
    """Prompt shorter and longer than the window (16), then decode across the window boundary."""
    model = _model((kind, kind))
    total = prompt_len + 24
    ids = _ids(total)
    with torch.inference_mode():
        full = model(ids)  # (1, total, V)
        logits, caches = model.prefill(ids[:, :prompt_len], torch.tensor([prompt_len]), total)
        got = [logits]
        pos = torch.tensor([prompt_len])
        for t in range(prompt_len, total - 1):
            got.append(model.decode_step(ids[:, t], pos, caches))
            pos = pos + 1
    got = torch.stack(got, dim=1)  # (1, total - prompt_len, V)
    ref = full[:, prompt_len - 1 : total - 1]
    err = (got - ref).abs().max() / ref.abs().max()
    assert err < 1e-5, f"{kind}: decode differs from the full forward by {err:.2e}"


def test_mixed_layers_generate_matches_full_forward_argmax():
    model, _ = load_model("debug", backend="torch")
    prompt = _ids(37)[0].tolist()
    out = model.generate([prompt], max_new_tokens=12, eos_ids=[])[0]
    seq = torch.tensor([prompt + out])
    with torch.inference_mode():
        greedy = model(seq)[0, len(prompt) - 1 : -1].argmax(-1).tolist()
    assert out == greedy


def test_padded_batch_equals_one_by_one():
    model, _ = load_model("debug", backend="torch")
    prompts = [_ids(n, seed=n)[0].tolist() for n in (3, 41, 17, 28)]
    budgets = [9, 4, 20, 13]
    batched = model.generate(prompts, max_new_tokens=budgets, eos_ids=[])
    single = [model.generate([p], max_new_tokens=n, eos_ids=[])[0] for p, n in zip(prompts, budgets)]
    assert batched == single
    assert [len(o) for o in batched] == budgets
    stats = model.last_stats
    assert set(stats) == {"prefill_tokens", "prefill_s", "decode_tokens", "decode_s", "peak_mem_bytes", "cache_bytes"}


def test_eos_excluded_and_stop_strings():
    model, tok = load_model("debug", backend="torch")
    prompt = _ids(20)[0].tolist()
    free = model.generate([prompt], max_new_tokens=10, eos_ids=[])[0]
    # the 4th generated token as EOS: output stops before it, EOS not included
    eos_cut = model.generate([prompt], max_new_tokens=10, eos_ids=[free[3]])[0]
    assert eos_cut == free[: free.index(free[3])]
    text = tok.decode(free)
    stop = text[2:4] if len(text) >= 4 else text
    stopped = model.generate([prompt], max_new_tokens=10, eos_ids=[], stop=[stop])[0]
    assert free[: len(stopped)] == stopped
    assert stop in tok.decode(stopped) and stop not in tok.decode(stopped[:-1])


def test_budget_and_numerics_errors(monkeypatch):
    model, _ = load_model("debug", backend="torch")
    small = model.config.replace(max_context=32)
    m2 = build_model(small)
    with pytest.raises(BudgetError):
        m2.generate([[1] * 30], max_new_tokens=5)
    from rattn_eval.errors import NumericsError

    with torch.no_grad():
        model.norm.weight[0] = float("nan")
    with pytest.raises(NumericsError):
        model.generate([[1, 2, 3]], max_new_tokens=2)


def test_generate_refuses_bad_arguments_with_one_sentence():
    model, _ = load_model("debug", backend="torch")
    V = model.embed.num_embeddings
    bad = {
        "a 2-d tensor": (dict(prompts=torch.ones(2, 3, dtype=torch.long)), "list of token-id lists"),
        "an id past the vocabulary": (dict(prompts=[[1, 2], [3, V]]), f"prompt 1 holds token id {V}, outside"),
        "a negative id": (dict(prompts=[[-1, 2]]), "token id -1, outside"),
        "float ids": (dict(prompts=[[3.7, 2.0]]), "integer token ids"),
        "a float budget": (dict(max_new_tokens=2.5), "max_new_tokens"),
        "no budget": (dict(max_new_tokens=None), "max_new_tokens"),
    }
    for what, (kw, match) in bad.items():
        args = dict(dict(prompts=[[1, 2, 3]], max_new_tokens=2), **kw)
        with pytest.raises(ConfigError, match=match):
            model.generate(args.pop("prompts"), **args)
            pytest.fail(f"{what}: no error")
    # one EOS id may be given alone; 1-d tensors and int32 ids are prompts like lists
    alone = model.generate([[1, 2, 3]], max_new_tokens=3, eos_ids=5)
    assert alone == model.generate([torch.tensor([1, 2, 3], dtype=torch.int32)], max_new_tokens=3, eos_ids={5})
    with pytest.raises(ValueError, match="at least one token per prompt"):
        model.prefill(torch.ones(2, 4, dtype=torch.long), torch.tensor([4, 0]), cache_size=8)


@pytest.mark.parametrize("per_pass", [1, 2, 3])
def test_prefill_in_row_groups_equals_one_pass(per_pass):
    """A batch larger than `prefill_tokens` runs in groups of rows, each trimmed to its longest prompt:
    logits and every cache (global slots, local rings, RLA states, positions) equal one pass, and so
    does generation."""
    cfg = preset("debug").replace(kinds=("rattn", "swa", "global"), window=8)
    model = build_model(cfg, backend="torch")
    lens = [30, 7, 19, 30, 1]
    ids = torch.zeros(len(lens), 30, dtype=torch.long)
    for b, n in enumerate(lens):
        ids[b, :n] = _ids(n, seed=b)[0]
    lengths = torch.tensor(lens)
    with torch.inference_mode():
        ref_logits, ref_caches = model.prefill(ids, lengths, 40)
        model.prefill_tokens = 30 * per_pass  # per_pass rows of 30 tokens at a time
        logits, caches = model.prefill(ids, lengths, 40)
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for got, ref in zip(caches, ref_caches):
        if isinstance(ref, KVCache):
            for b, n in enumerate(lens):  # slots past a row's prompt are never read
                assert torch.allclose(got.k[b, :n], ref.k[b, :n], atol=1e-5) and torch.allclose(got.v[b, :n], ref.v[b, :n], atol=1e-5)
        else:
            assert torch.equal(got.pos, ref.pos)
            assert torch.allclose(got.k, ref.k, atol=1e-5) and torch.allclose(got.v, ref.v, atol=1e-5)
            assert (got.state is None) == (ref.state is None)
            if ref.state is not None:
                assert torch.allclose(got.state, ref.state, atol=1e-5, rtol=1e-5)
    prompts = [ids[b, :n].tolist() for b, n in enumerate(lens)]
    grouped = model.generate(prompts, max_new_tokens=6, eos_ids=[])
    model.prefill_tokens = 1 << 20
    assert grouped == model.generate(prompts, max_new_tokens=6, eos_ids=[])


def test_cache_memory_is_analytic_and_context_independent():
    cfg = preset("debug")
    model = build_model(cfg)
    local_sizes = {}
    for T in (1024, 16384):
        ids = _ids(T)
        with torch.inference_mode():
            _, caches = model.prefill(ids, torch.tensor([T]), T + 1)
        for i, (kind, cache) in enumerate(zip(cfg.kinds, caches)):
            if kind == "global":
                assert isinstance(cache, KVCache) and cache.nbytes() == 2 * (T + 1) * cfg.n_kv_heads * cfg.head_dim * 4
                continue
            assert isinstance(cache, LocalCache)
            measured = sum(t.numel() * t.element_size() for t in (cache.k, cache.v, cache.pos, cache.state) if t is not None)
            analytic = LocalCache.analytic_nbytes(1, cfg.window, cfg.n_kv_heads, cfg.head_dim, torch.float32, kind=kind,
                                                  feature_map=cfg.feature_map)
            assert measured == analytic
            local_sizes.setdefault(i, set()).add(measured)
    assert all(len(s) == 1 for s in local_sizes.values())


def test_window_override_changes_outputs():
    base, _ = load_model("debug", backend="torch")
    narrow, _ = load_model("debug", backend="torch", window=4)
    all_local, _ = load_model("debug", backend="torch", window=16, local_globals=True)
    assert narrow.config.window == 4 and all_local.config.global_window == 16
    ids = _ids(60)
    with torch.inference_mode():
        a, b, c = base(ids), narrow(ids), all_local(ids)
    assert torch.equal(a[:, :5], b[:, :5])  # every layer sees the whole prefix up to t = 4 either way
    assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-3
    assert (a[:, 20:] - c[:, 20:]).abs().max() > 1e-3
    with pytest.raises(ConfigError):
        load_model("debug", local_globals=True)


def test_unknown_names_get_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean 'debug'"):
        load_model("debgu")
    with pytest.raises(ConfigError, match="Did you mean 'rattn-3b'"):
        preset("rattn-3")
    with pytest.raises(ConfigError, match="unknown backend"):
        load_model("debug", backend="tritno")


def test_checkpoint_round_trip(tmp_path):
    model, tok = load_model("debug", backend="torch")
    model.save(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["format_version"] == 1
    loaded, tok2 = load_model(tmp_path / "ck", backend="torch")
    assert loaded.config == model.config and tok2.vocab_size == tok.vocab_size
    ids = _ids(30)
    with torch.inference_mode():
        assert torch.equal(loaded(ids), model(ids))


def test_strict_loading_errors(tmp_path):
    model, _ = load_model("debug", backend="torch")
    ck = model.save(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope", backend="torch")

    # config/weight mismatch: a wider FFN, one layer more, and an unexpected tensor
    cfg = json.loads((ck / "config.json").read_text())
    cfg["intermediate_size"] = 96
    cfg["kinds"] = cfg["kinds"] + ["swa"]
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        load_model(ck, backend="torch")
    msg = str(err.value)
    assert "missing keys: layers.4.attn.k_proj.weight" in msg
    assert "mis-shaped keys: layers.0.ffn.down_proj.weight (64, 128) (config wants (64, 96))" in msg

    ck2 = model.save(tmp_path / "ck2")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(ck2 / "model.safetensors"))
    sd["extra.weight"] = torch.zeros(2)
    save_file(sd, str(ck2 / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected keys: extra.weight"):
        load_model(ck2, backend="torch")

    ck3 = model.save(tmp_path / "ck3")
    data = (ck3 / "model.safetensors").read_bytes()
    (ck3 / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(ck3, backend="torch")


def test_config_round_trip_and_validation():
    cfg = preset("debug")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        cfg.replace(kinds=("global", "local"))
    with pytest.raises(ConfigError):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": 1})
    big = preset("rattn-3b")
    assert big.n_layers == 56 and big.kinds.count("global") == 14 and big.nope_global


BAD_CONFIGS = {  # id: (change to the debug config, words the message must hold)
    "zero-kv-heads": ({"n_kv_heads": 0}, ["n_kv_heads", "positive integer"]),
    "length-string": ({"max_context": "32k"}, ["max_context", "positive integer", "'32k'"]),
    "fractional-window": ({"window": 64.5}, ["window", "integer >= 0 or null"]),
    "negative-width": ({"width": -64}, ["width", "positive integer"]),
    "zero-head-dim": ({"head_dim": 0}, ["head_dim", "positive integer"]),
    "list-for-number": ({"vocab_size": [259]}, ["vocab_size", "positive integer"]),
    "bool-for-number": ({"intermediate_size": True}, ["intermediate_size", "positive integer"]),
    "string-for-bool": ({"qk_norm": "false"}, ["qk_norm", "true or false"]),
    "string-kinds": ({"kinds": "global"}, ["kinds", "list"]),
    "nan-theta": ({"rope_theta_local": float("nan")}, ["rope_theta_local", "positive number"]),
    "null-eps": ({"norm_eps": None}, ["norm_eps", "positive number"]),
    "number-name": ({"tokenizer": 5}, ["tokenizer", "string"]),
    "unknown-key": ({"colour": 1}, ["'colour'", "unknown key"]),
    "misspelt-key": ({"widht": 64}, ["'widht'", "Did you mean 'width'"]),
    "missing-key": ({"width": ...}, ["missing", "'width'"]),
}


def _write_config(folder, change):
    cfg = {"format_version": 1, **preset("debug").to_dict()}
    for k, v in change.items():
        if v is ...:
            del cfg[k]
        else:
            cfg[k] = v
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_checkpoint_config_is_one_sentence_naming_file_and_key(tmp_path, case):
    from rattn_eval.models import read_config

    change, words = BAD_CONFIGS[case]
    _write_config(tmp_path / "ck", change)
    with pytest.raises(CheckpointError) as err:
        read_config(tmp_path / "ck")
    msg = str(err.value)
    assert str(tmp_path / "ck" / "config.json") in msg and "\n" not in msg
    for w in words:
        assert w in msg
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "ck", backend="torch")


@pytest.mark.parametrize("text", ['{"format_version": 1, "width": ', '[1, 2]', '"format_version"', '7'])
def test_checkpoint_config_that_is_not_a_json_object(tmp_path, text):
    from rattn_eval.models import read_config

    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="config.json") as err:
        read_config(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path, backend="torch")


def test_triton_backend_runs_triton_kernels_and_matches_torch():
    """Under TRITON_INTERPRET=1 (conftest) the triton backend runs on CPU; launches prove it ran."""
    from rattn_eval import kernels

    cfg = preset("debug").replace(kinds=("rattn", "swa", "global"), window=4)
    ref = build_model(cfg, backend="torch")
    tri = build_model(cfg, backend="triton")
    ids = _ids(12, B=2)
    before = kernels.launches.copy()
    with torch.inference_mode():
        a, b = ref(ids), tri(ids)
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    prompts = [ids[0].tolist(), ids[1, :7].tolist()]
    assert tri.generate(prompts, max_new_tokens=3, eos_ids=[]) == ref.generate(prompts, max_new_tokens=3, eos_ids=[])
    ran = kernels.launches - before
    assert ran["triton.rattention"] >= 2 and ran["triton.swa"] >= 2 and ran["triton.decode"] >= 2


def test_rattn_head_dim_256_runs_on_triton():
    """Gemma-3-shaped RAttention heads (head_dim 256): the triton backend runs the rattn layers' prefill and
    decode steps on the Triton kernels, records no fallback, and matches the torch backend."""
    from rattn_eval import kernels

    cfg = preset("debug").replace(head_dim=256, kinds=("rattn", "swa"), window=4)
    ref = build_model(cfg, backend="torch")
    tri = build_model(cfg, backend="triton")
    assert tri.fallbacks == []
    ids = _ids(12)
    with torch.inference_mode():
        a = ref(ids)
        before = kernels.launches.copy()
        b = tri(ids)
        tokens = tri.generate([ids[0].tolist()], max_new_tokens=3, eos_ids=[])
        ran = kernels.launches - before
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    assert tokens == ref.generate([ids[0].tolist()], max_new_tokens=3, eos_ids=[])
    assert ran["triton.rattention"] >= 2 and ran["triton.decode"] >= 2
    assert not ran["torch.rattention"] and not ran["torch.decode"]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_graph_decoding_equals_eager(backend):
    """On a GPU, decoding replays a CUDA graph with every row kept in the batch; it must give the very
    tokens of eager decoding (rows leave the batch), with ragged prompts, per-row budgets and EOS."""
    cfg = preset("debug").replace(kinds=("rattn", "swa", "global", "rattn"), window=16)
    model = build_model(cfg, backend=backend, device="cuda", dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 259, (n,), generator=gen).tolist() for n in (5, 40, 23, 61)]
    budgets = [30, 3, 17, 30]
    outs = {}
    for graphs in (False, True):
        model.cuda_graphs = graphs
        outs[graphs] = model.generate(prompts, max_new_tokens=budgets, eos_ids=[])
    assert [len(o) for o in outs[False]] == budgets
    assert outs[True] == outs[False]
    # an EOS that occurs in one row's output stops that row early, identically in both modes
    eos = outs[False][0][4]
    for graphs in (False, True):
        model.cuda_graphs = graphs
        outs[graphs] = model.generate(prompts, max_new_tokens=budgets, eos_ids=[eos])
    assert outs[True] == outs[False]
    assert len(outs[True][0]) <= 4


@pytest.mark.gpu
def test_a_kept_decode_graph_serves_the_next_call():
    """The graphed decode and its caches are kept for the next generate call of the same shape: that
    call (other prompts, the same rows and rounded cache) replays the same graph and decodes what eager
    decoding decodes; an eager call, another shape, a replaced parameter and set_backend drop it, and
    deleting the model frees it without the cycle collector."""
    from rattn_eval.models.model import GRAPH_CACHE_ROUND

    cfg = preset("debug").replace(kinds=("rattn", "swa", "global", "rattn"), window=16)
    model = build_model(cfg, backend="triton", device="cuda", dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    first = [torch.randint(0, 259, (n,), generator=gen).tolist() for n in (50, 12)]
    second = [torch.randint(0, 259, (n,), generator=gen).tolist() for n in (9, 70)]
    model.generate(first, max_new_tokens=20, eos_ids=[])
    kept = model._graphed
    assert kept is not None and kept.graph is not None and kept.key[1] == GRAPH_CACHE_ROUND
    out = model.generate(second, max_new_tokens=[20, 11], eos_ids=[])
    assert model._graphed is kept
    model.cuda_graphs = False
    assert out == model.generate(second, max_new_tokens=[20, 11], eos_ids=[])
    assert model._graphed is None  # the eager call dropped it
    model.cuda_graphs = True
    model.generate(second, max_new_tokens=3, eos_ids=[])
    kept = model._graphed
    model.generate(second[:1], max_new_tokens=3, eos_ids=[])
    assert model._graphed is not kept
    with torch.no_grad():
        model.layers[0].attn.q_proj.weight = torch.nn.Parameter(model.layers[0].attn.q_proj.weight.clone())
    kept = model._graphed
    model.generate(second[:1], max_new_tokens=3, eos_ids=[])
    assert model._graphed is not kept  # a replaced parameter is a new address: never replay the old graph
    model.set_backend("torch")
    assert model._graphed is None
    model.set_backend("triton")
    model.generate(second, max_new_tokens=3, eos_ids=[])
    import gc
    import weakref

    gc.disable()  # the kept graph must not tie the model into a cycle: deleting it frees weights and caches
    try:
        ref = weakref.ref(model)
        del model, kept
        assert ref() is None
    finally:
        gc.enable()


def test_stop_strings_match_special_tokens_too():
    """Stop strings are matched against the output with special tokens written out (as lm-eval's `hf`
    does): a stop string that is a special token but not EOS (here <pad>) ends the row right there.
    Decoding with the special tokens skipped never saw it, so generation ran on to the budget."""
    from rattn_eval.tokenizer import load_tokenizer
    from rattn_eval.models.model import _advance

    tok = load_tokenizer("bytes")
    assert tok.decode([104, 258, 105]) == "hi" and tok.decode_with_special([104, 258, 105]) == "h<pad>i"
    outputs = [[104], [104]]
    keep = _advance(outputs, [0, 1], [258, 105], budgets=[10, 10], eos={257}, stop=["<pad>"], tokenizer=tok)
    assert keep == [1] and outputs == [[104, 258], [104, 105]]
    gpt2 = load_tokenizer("gpt2")
    assert gpt2.decode_with_special([40, 50256]).endswith("<|endoftext|>") and "<|" not in gpt2.decode([40, 50256])


def test_bench_e2e_records_a_cell_past_the_context_and_goes_on():
    """A context that leaves no room for the new tokens is an error row of its own, not the end of the run."""
    from rattn_eval.bench.e2e import bench_e2e
    from rattn_eval.models.registry import entry

    cfg = entry("debug").config().replace(max_context=128)
    rows = bench_e2e(cfg, [126, 32], [1], ["torch"], device="cpu", dtype="float32", new_tokens=4, log=lambda _: None)
    assert [r["context"] for r in rows] == [126, 32]
    assert "more than the model's context" in rows[0]["error"]
    assert "error" not in rows[1] and rows[1]["prefill_s"] > 0
