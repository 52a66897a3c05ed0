"""Parity of the native model with transformers for every imported family (CPU, fp32, no download).

Each case builds the transformers model from a config with the family's real shape options scaled down
(scaled RoPE past its original length, biases, norms, softcaps, sliding windows), random weights at O(1)
scale (so attention is peaked and positions matter) with norm weights and biases away from their
defaults, saves it with save_pretrained, converts it, and compares over a prompt longer than the window
and the original context: max relative error max|ours - ref| / max|ref| <= 1e-4, every argmax equal,
32 greedy tokens equal to transformers' generate(do_sample=False). Each case also checks that dropping
its special feature (the scaled RoPE, the softcaps, the biases) moves the logits, so the comparison
would have seen it missing. Run with -s to print the figures.
"""

import pytest
import torch
from closeness import rel_err

from rattn_eval import kernels
from rattn_eval.errors import ConfigError
from rattn_eval.models import build_model, convert, load_model, read_config
from rattn_eval.models.checkpoint import read_weights

NEW = 32  # greedy tokens compared


def _llama3():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})


def _llama_dynamic():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0})


def _qwen25():
    from transformers import Qwen2Config

    # layers >= max_window_layers slide when use_sliding_window is set (transformers' Qwen2 rule)
    return Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       use_sliding_window=True, sliding_window=16, max_window_layers=1,
                       rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                        "original_max_position_embeddings": 64})


def _qwen3():
    from transformers import Qwen3Config

    # head_dim * heads != hidden_size, as in the real Qwen3 models
    return Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, attention_bias=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})


def _gemma2():
    from transformers import Gemma2Config

    return Gemma2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, query_pre_attn_scalar=24,
                        sliding_window=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def _phi35():
    from transformers import Phi3Config

    g = torch.Generator().manual_seed(3)
    short = (1.0 + torch.rand(8, generator=g)).tolist()
    long = (1.0 + 8.0 * torch.rand(8, generator=g)).sort().values.tolist()
    # Phi-3.5-mini sets sliding_window 262144 > max_position_embeddings: no window in effect
    return Phi3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, original_max_position_embeddings=64,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=262144, pad_token_id=0,
                      rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short,
                                       "long_factor": long})


def _phi3_window():
    from transformers import Phi3Config

    # Phi-3-mini-4k style: plain RoPE, one sliding window for every layer
    return Phi3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=512, original_max_position_embeddings=512,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=16, pad_token_id=0)


NO_ROPE_SCALING = {"rope_scaling_global": None, "rope_scaling_local": None}
# family -> config: the transformers config; T: prompt length; expected: native settings the import must give;
# without: changes that must move the logits; triton: whether the Triton backend runs it whole here;
# qk_gain: q/k weights scaled so that scores reach the softcap
CASES = {
    "llama3": dict(config=_llama3, T=100, expected=dict(kinds=("global",) * 2, qkv_bias=True, o_bias=True, mlp_bias=True),
                   without=NO_ROPE_SCALING, triton=True),
    "llama-dynamic": dict(config=_llama_dynamic, T=100, expected=dict(max_context=256), without=NO_ROPE_SCALING,
                          triton=True),
    "qwen2.5": dict(config=_qwen25, T=100, expected=dict(kinds=("global", "swa"), window=15, qkv_bias=True,
                                                         o_bias=False), without=NO_ROPE_SCALING, triton=True),
    "qwen3": dict(config=_qwen3, T=120, expected=dict(qk_norm=True, qkv_bias=True, o_bias=True, head_dim=32),
                  without=dict(qkv_bias=False, o_bias=False), triton=True),
    "gemma2": dict(config=_gemma2, T=120, expected=dict(kinds=("swa", "global") * 2, window=15, attn_softcap=50.0,
                                                        final_softcap=30.0, norm="sandwich", attn_scale=24 ** -0.5),
                   without=dict(attn_softcap=None), triton=False, qk_gain=4.0),
    "phi3.5": dict(config=_phi35, T=100, expected=dict(kinds=("global",) * 2), without=NO_ROPE_SCALING, triton=True),
    "phi3-window": dict(config=_phi3_window, T=60, expected=dict(kinds=("swa",) * 2, window=15),
                        without=dict(window=1000), triton=True),
}


def _save(make_config, path, qk_gain=1.0):
    """A random transformers model at O(1) activations, norms and biases away from their defaults."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = make_config()
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
            elif n.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.3)
            elif "embed" in n:
                p.copy_(torch.randn_like(p))
            else:
                gain = qk_gain if n.endswith(("q_proj.weight", "k_proj.weight")) else 1.0
                p.copy_(torch.randn_like(p) * gain * p.shape[1] ** -0.5)
    model.save_pretrained(path)
    model.generation_config.eos_token_id = None  # greedy runs its full length
    return model


def _compare(tag, ours, ref_logits, ref_greedy, x, prompt):
    with torch.inference_mode():
        logits = ours(x)
    rel = rel_err(logits, ref_logits)
    agree = int((logits.argmax(-1) == ref_logits.argmax(-1)).sum())
    greedy = ours.generate([prompt], max_new_tokens=NEW, eos_ids=[])[0]
    same = sum(a == b for a, b in zip(greedy, ref_greedy))
    print(f"\n{tag}: max rel err {rel:.2e}, argmax {agree}/{x.shape[1]}, greedy {same}/{NEW} equal")
    assert rel <= 1e-4 and agree == x.shape[1] and greedy == ref_greedy, (rel, agree, greedy, ref_greedy)


def _reference(family, tmp_path):
    """Save the family's transformers model, convert it; returns (checkpoint path, native config, prompt,
    transformers' logits over it, transformers' greedy continuation)."""
    case = CASES[family]
    hf = _save(case["config"], tmp_path / "hf", case.get("qk_gain", 1.0))
    convert(tmp_path / "hf", tmp_path / "ours", tokenizer="bytes")
    cfg = read_config(tmp_path / "ours")
    assert {k: getattr(cfg, k) for k in case["expected"]} == case["expected"]
    prompt = torch.randint(0, 256, (case["T"],), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        ref_logits = hf(input_ids=torch.tensor([prompt])).logits
        ref_greedy = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW, pad_token_id=0)
    assert ref_greedy.shape[1] == len(prompt) + NEW
    return tmp_path / "ours", cfg, prompt, ref_logits, ref_greedy[0, len(prompt):].tolist()


@pytest.mark.parametrize("family", CASES)
def test_family_matches_transformers(family, tmp_path):
    path, cfg, prompt, ref_logits, ref_greedy = _reference(family, tmp_path)
    x = torch.tensor([prompt])
    ours, _ = load_model(path, backend="torch", device="cpu")
    _compare(f"{family} torch", ours, ref_logits, ref_greedy, x, prompt)
    with torch.inference_mode():  # the comparison would have seen the feature missing
        without = cfg.replace(**CASES[family]["without"])
        keys = build_model(without).state_dict().keys()
        plain = build_model(without, {k: v for k, v in read_weights(path).items() if k in keys})
        assert rel_err(plain(x), ref_logits) > 1e-3

    via_hf, _ = load_model(path, backend="hf", device="cpu")  # the converted checkpoint, back in transformers
    with torch.inference_mode():
        assert rel_err(via_hf(x), ref_logits) <= 1e-4
    assert via_hf.generate([prompt], max_new_tokens=NEW, eos_ids=[])[0] == ref_greedy


@pytest.mark.parametrize("family", CASES)
def test_family_loads_by_hub_id_from_the_cache(family, tmp_path, cache_repo):
    """The saved folder as a hub repo in a populated cache: `-m org/NAME` imports it as the folder does."""
    case = CASES[family]
    hf = _save(case["config"], tmp_path / "src", case.get("qk_gain", 1.0))
    snap = cache_repo(f"org/tiny-{family}", tmp_path / "src")
    ours, _ = load_model(f"org/tiny-{family}", backend="torch", device="cpu", dtype=torch.float32)
    assert ours.revision == snap.name and ours.config.name == f"org/tiny-{family}"
    assert {k: getattr(ours.config, k) for k in case["expected"]} == case["expected"]
    x = torch.randint(0, 256, (1, case["T"]), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert rel_err(ours(x), hf(input_ids=x).logits) <= 1e-4


# The Triton interpreter takes ~6 s a family on CPU: by default the three whose kernels differ (global
# layers with biases and llama3 RoPE; sliding layers with YaRN frequencies read in-kernel; LongRoPE
# frequencies per row), the rest with -m slow.
TRITON = [f if f in ("llama3", "qwen2.5", "phi3.5") else pytest.param(f, marks=pytest.mark.slow)
          for f, case in CASES.items() if case["triton"]]


@pytest.mark.parametrize("family", TRITON)
def test_family_matches_transformers_on_triton(family, tmp_path):
    path, _, prompt, ref_logits, ref_greedy = _reference(family, tmp_path)
    before = kernels.launches.copy()
    ours, _ = load_model(path, backend="triton", device="cpu")
    assert ours.backend == "triton" and ours.fallbacks == []
    _compare(f"{family} triton", ours, ref_logits, ref_greedy, torch.tensor([prompt]), prompt)
    ran = kernels.launches - before
    assert ran and all(op.startswith("triton.") for op in ran), ran


def test_phi3_longrope_rebuilds_the_cache_when_decoding_passes_the_original_length(tmp_path):
    """A prompt within the original 64 tokens prefills with the short factors. When decoding passes 64,
    transformers' Phi-3 drops its cache and recomputes it with the long factors; ours re-prefills, and
    without that step the continuation differs."""
    hf = _save(_phi35, tmp_path / "hf")
    ours, _ = load_model(tmp_path / "hf", backend="torch", device="cpu")
    assert ours.cache_rebuild_at == 64
    prompt = torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(2)).tolist()
    x = torch.tensor([prompt])
    with torch.inference_mode():
        # with no mask, generate would take every prompt token equal to pad_token_id for padding
        ref = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=NEW,
                          pad_token_id=0)[0, 50:].tolist()
        assert rel_err(ours(x), hf(input_ids=x).logits) <= 1e-4
    assert ours.generate([prompt], max_new_tokens=NEW, eos_ids=[])[0] == ref
    assert ours.generate([torch.tensor(prompt)], max_new_tokens=NEW, eos_ids=[])[0] == ref  # a tensor prompt too
    longer = torch.randint(0, 256, (90,), generator=torch.Generator().manual_seed(3)).tolist()
    alone = ours.generate([longer], max_new_tokens=NEW, eos_ids=[])
    assert ours.generate([prompt, longer, prompt[:20]], max_new_tokens=[NEW, NEW, 8], eos_ids=[])[:2] == [ref, alone[0]]
    ours.cache_rebuild_at = None  # keep the short-rotated cache: what a plain decode loop would do
    assert ours.generate([prompt], max_new_tokens=NEW, eos_ids=[])[0] != ref


def test_longrope_outside_phi3_keeps_the_cache_as_transformers_does(tmp_path):
    """transformers' Llama (and Qwen2, Gemma-3) with LongRoPE keeps the keys it cached with the short factors
    when decoding passes the original length, where its Phi-3 recomputes them: a Llama import says so
    (rebuild_cache false) and generates as transformers' Llama does, which differs from a fresh forward."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0,
                                       "original_max_position_embeddings": 32, "short_factor": [1.0] * 8,
                                       "long_factor": [1.0 + 2 * i for i in range(8)]})
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn_like(p) * (1.0 if "embed" in name else p.shape[1] ** -0.5))
    hf.save_pretrained(tmp_path / "hf")
    ours, _ = load_model(tmp_path / "hf", backend="torch", device="cpu")
    assert ours.config.rope_scaling_global["rebuild_cache"] is False and ours.cache_rebuild_at is None
    prompt = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(2)).tolist()
    x = torch.tensor([prompt])
    with torch.inference_mode():
        ref = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=32,
                          pad_token_id=0)[0, 20:].tolist()
    assert ours.generate([prompt], max_new_tokens=32, eos_ids=[])[0] == ref
    ours.cache_rebuild_at = 32  # Phi-3's recomputation past the original length: another continuation here
    assert ours.generate([prompt], max_new_tokens=32, eos_ids=[])[0] != ref


def test_hf_config_of_a_native_longrope_follows_its_cache_semantics():
    """A native LongRoPE config that recomputes its cache (the default) becomes transformers' Phi-3, the one
    family that does; one that keeps it a Llama; a Qwen-shaped one that recomputes has no transformers match."""
    from rattn_eval.models.config import ModelConfig
    from rattn_eval.models.importers import hf_config_from_native

    longrope = {"type": "longrope", "factor": 4.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                "original_max_position_embeddings": 32}
    base = dict(vocab_size=64, width=32, n_heads=2, n_kv_heads=1, head_dim=16, kinds=("global",) * 2,
                intermediate_size=32, max_context=128, rope_scaling_global=longrope)
    assert type(hf_config_from_native(ModelConfig(**base))).__name__ == "Phi3Config"
    keeps = dict(base, rope_scaling_global={**longrope, "rebuild_cache": False})
    assert type(hf_config_from_native(ModelConfig(**keeps))).__name__ == "LlamaConfig"
    assert type(hf_config_from_native(ModelConfig(**keeps, qkv_bias=True))).__name__ == "Qwen2Config"
    with pytest.raises(ConfigError, match="only Phi-3 does"):
        hf_config_from_native(ModelConfig(**base, qkv_bias=True))


def test_gemma2_softcap_falls_back_to_torch_and_is_recorded(tmp_path):
    hf = _save(_gemma2, tmp_path / "hf", qk_gain=4.0)
    with pytest.raises(ConfigError, match="backend 'triton' cannot run layer 0.*softcapping"):
        load_model(tmp_path / "hf", backend="triton", device="cpu")
    ours, _ = load_model(tmp_path / "hf", backend="torch", device="cpu")
    ours.set_backend("triton")  # what backend="auto" resolves to on a GPU
    assert ours.backend == "triton"
    assert ours.fallbacks == [{"layers": [0, 1, 2, 3], "part": "attention", "ran": "torch",
                               "reason": "attention-logit softcapping (attn_softcap) is not in the Triton attention kernels"}]
    x = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(1))
    before = kernels.launches.copy()
    with torch.inference_mode():
        assert rel_err(ours(x), hf(input_ids=x).logits) <= 1e-4
    ran = kernels.launches - before
    assert ran["torch.swa"] == 4 and not ran["triton.swa"]


@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
def test_head_dims_run_triton_or_record_the_fallback(head_dim):
    from rattn_eval.models.config import ModelConfig

    cfg = ModelConfig(vocab_size=64, width=32, n_heads=2, n_kv_heads=1, head_dim=head_dim, kinds=("swa", "global"),
                      window=7, intermediate_size=32, qkv_bias=True, max_context=256, init_seed=1)
    ref = build_model(cfg, backend="torch", device="cpu")
    ours = build_model(cfg, ref.state_dict(), backend="triton", device="cpu")
    pow2 = head_dim & (head_dim - 1) == 0
    assert ours.fallbacks == ([] if pow2 else [{"layers": [0, 1], "part": "attention", "ran": "torch", "reason":
                              f"head dim {head_dim}: the Triton attention kernels take power-of-two head dims 16..256"}])
    if not pow2:
        with pytest.raises(ConfigError, match=f"head dim {head_dim}"):
            build_model(cfg, ref.state_dict(), backend="triton", device="cpu", strict_backend=True)
    x = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert rel_err(ours(x), ref(x)) <= 1e-4
    assert ours.generate([x[0].tolist()], max_new_tokens=4, eos_ids=[]) == ref.generate([x[0].tolist()], max_new_tokens=4, eos_ids=[])


def _hf_dict(make_config, **changes) -> dict:
    d = make_config().to_dict()
    d.update(changes)
    return d


UNSUPPORTED = {
    "llama": (lambda: _hf_dict(_llama3, partial_rotary_factor=0.5), "partial_rotary_factor"),
    "qwen2": (lambda: _hf_dict(_qwen25, use_sliding_window=False), "layer_types has sliding_attention layers but sliding_window is null"),
    "qwen3": (lambda: _hf_dict(_qwen3, use_sliding_window=True, sliding_window=16, max_window_layers=1, layer_types=None,
                               rope_parameters={"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}),
              "rope_type 'dynamic' with sliding_window"),
    "gemma2": (lambda: _hf_dict(_gemma2, hidden_activation="gelu"), "hidden_activation"),
    "phi3": (lambda: _hf_dict(_phi35, sliding_window=16), "rope_type 'longrope' with sliding_window"),
}


@pytest.mark.parametrize("family", UNSUPPORTED)
def test_unsupported_variant_names_the_key(family):
    from rattn_eval.models.importers import config_from_hf, normalize_hf_config

    make, key = UNSUPPORTED[family]
    with pytest.raises(ConfigError, match=key):
        config_from_hf(normalize_hf_config(make()))


def test_rope_scaling_config_is_validated_and_old_configs_load():
    from rattn_eval.models.config import ModelConfig, preset

    old = {k: v for k, v in preset("debug").to_dict().items()
           if k not in ("rope_scaling_local", "rope_scaling_global", "qkv_bias", "o_bias", "mlp_bias", "attn_softcap")}
    assert ModelConfig.from_dict(old) == preset("debug")  # a config.json written before these fields
    cfg = preset("debug").replace(kinds=("global",) * 2, rope_scaling_global={
        "type": "longrope", "factor": 4.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
        "original_max_position_embeddings": 64})
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    bad = [({"rope_scaling_local": {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 64}},
            "rope_scaling_local of type 'dynamic'"),
           ({"rope_scaling_global": {"type": "yarn", "factor": 2.0}}, "missing original_max_position_embeddings"),
           ({"rope_scaling_global": {"type": "longrope", "factor": 2.0, "short_factor": [1.0] * 3, "long_factor": [1.0] * 8,
                                     "original_max_position_embeddings": 64}}, "short_factor must be a list of 8"),
           ({"rope_scaling_global": {"type": "ntk"}}, "rope_scaling_global must be null or a dict"),
           ({"qkv_bias": 1}, "qkv_bias must be true or false"),
           ({"attn_softcap": 50.0}, "rattn layers do not take it")]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            preset("debug").replace(**change)


ROPES = {  # transformers rope_parameters, all on head dim 16 and max_position_embeddings 256
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn-mscale": {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 32, "mscale": 0.707,
                    "mscale_all_dim": 1.0, "beta_fast": 16, "truncate": False},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0 + i / 8 for i in range(8)],
                 "long_factor": [2.0 + i for i in range(8)], "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("kind", ROPES)
def test_rope_frequencies_equal_transformers_bit_for_bit(kind):
    """inv_freq and the attention factor of models/rope.py against transformers' own init functions."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from rattn_eval.models import rope
    from rattn_eval.models.importers import _rope

    hf = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=256,
                     rope_parameters={"rope_theta": 10000.0, **ROPES[kind]})
    theta, scaling = _rope(hf.to_dict(), hf.rope_parameters, "test")
    rope.check_scaling(scaling, 16, "rope_scaling_global")
    fn = ROPE_INIT_FUNCTIONS[ROPES[kind]["rope_type"]]
    if rope.length_dependent(scaling):
        ours = rope.LengthRope(16, theta, scaling)
        for seq_len in (10, 64, 65, 256, 300):
            if kind == "dynamic" and seq_len <= 256:  # transformers keeps its init frequencies up to max_position
                ref, factor = fn(hf, None)
            elif kind == "longrope" and seq_len <= 64:  # the short set is the one of its init
                ref, factor = fn(hf, None)
            else:  # recomputed from a tensor length, as its dynamic update does
                ref, factor = fn(hf, None, seq_len=torch.tensor(seq_len))
            assert torch.equal(ours.inv_freq_for(torch.tensor([seq_len]))[0], ref), seq_len
    else:
        ref, factor = fn(hf, None)
        assert torch.equal(rope.inv_freq(16, theta, scaling), ref)
    assert rope.attention_factor(scaling) == factor


def test_softcap_references_agree_and_triton_refuses_it():
    from rattn_eval.kernels.swa.naive import swa_attention_chunked, swa_attention_naive

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 40, h, 16, generator=g) * 3 for h in (4, 2, 2))
    lengths = torch.tensor([40, 23])
    for window in (7, None):
        ref = swa_attention_naive(q, k, v, window=window, softcap=5.0, lengths=lengths)
        assert rel_err(swa_attention_chunked(q, k, v, window=window, softcap=5.0, lengths=lengths, chunk=16), ref) < 1e-6
        assert rel_err(swa_attention_naive(q, k, v, window=window, lengths=lengths), ref) > 1e-2
    with pytest.raises(kernels.BackendUnavailable, match="softcapping"):
        kernels.swa_attention(q, k, v, window=7, softcap=5.0, backend="triton")


def test_yarn_reaches_factor_times_the_original_context():
    """A Qwen2.5 config that adds YaRN x4 to its 32k positions serves 128k prompts, as its model card says."""
    from rattn_eval.models.registry import entry

    assert entry("qwen2.5-1.5b").config().max_context == 4 * 32768
    assert entry("llama-3.2-1b").config().max_context == 131072  # llama3 names the extended length itself
