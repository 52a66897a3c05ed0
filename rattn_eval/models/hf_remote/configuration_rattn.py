"""Configuration of the RAttention local-global decoder for transformers (remote code).

Written into an exported folder by `rattn-eval export CKPT OUT --format hf`, next to
modeling_rattn.py; load with AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True).
Self-contained: needs torch and transformers only, not rattn-eval.
"""

from transformers import PretrainedConfig

LAYER_KINDS = ("global", "swa", "rattn")
FFN_KINDS = ("swiglu", "geglu")
NORM_STYLES = ("pre", "sandwich")
FEATURE_MAPS = ("softmax", "relu", "identity")


class RAttnConfig(PretrainedConfig):
    """Shape and semantics of the decoder; rattn-eval's ModelConfig under transformers' usual names.

    layer_kinds: one entry per layer, "global" (full causal attention), "swa" (sliding-window softmax
        attention) or "rattn" (sliding-window attention + residual linear attention).
    window: w of the local layers: a query sees w previous tokens plus itself (transformers'
        sliding_window W is w = W - 1).
    global_window: None = global layers see the whole prefix; an int makes them sliding-window layers
        of that window (they keep their own RoPE).
    ffn: "swiglu" (silu(gate) * up) or "geglu" (tanh-GELU(gate) * up).
    norm_style: "pre" (x + f(norm(x))) or "sandwich" (x + post_norm(f(pre_norm(x)))).
    feature_map: phi of the residual linear attention: "softmax" ([softmax(x), softmax(-x)]),
        "relu" ([relu(x), relu(-x)]) or "identity".
    qk_norm: RMS-norm each head of q and k (weights q_norm, k_norm) before RoPE.
    rope_theta_local / rope_theta_global: RoPE base of local / global layers; rope_scale_global:
        linear position scaling of global layers; nope_global: no RoPE in global layers.
    attn_scale: softmax scale, None = head_dim ** -0.5.
    embed_scale: the embeddings are multiplied by it.
    final_softcap: logits -> c * tanh(logits / c) when set.
    """

    model_type = "rattn"

    def __init__(self, vocab_size=259, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 layer_kinds=("rattn", "swa", "global", "rattn"), ffn="swiglu", intermediate_size=128,
                 norm_style="pre", rms_norm_eps=1e-6, window=16, global_window=None, feature_map="softmax",
                 qk_norm=False, rope_theta_local=10000.0, rope_theta_global=10000.0, rope_scale_global=1.0,
                 nope_global=False, attn_scale=None, embed_scale=1.0, final_softcap=None,
                 max_position_embeddings=4096, tie_word_embeddings=True, initializer_range=0.02, use_cache=True,
                 **kwargs):
        layer_kinds = list(layer_kinds)
        for name, value, allowed in (("layer_kinds", layer_kinds, LAYER_KINDS), ("ffn", [ffn], FFN_KINDS),
                                     ("norm_style", [norm_style], NORM_STYLES),
                                     ("feature_map", [feature_map], FEATURE_MAPS)):
            bad = [v for v in value if v not in allowed]
            if bad:
                raise ValueError(f"{name}: unknown value(s) {bad}; each is one of {', '.join(allowed)}")
        if num_attention_heads % num_key_value_heads:
            raise ValueError(f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({num_key_value_heads})")
        if any(k != "global" for k in layer_kinds) and (window is None or window < 0):
            raise ValueError(f"layers of kind swa/rattn need a window >= 0, got {window!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.layer_kinds = layer_kinds
        self.num_hidden_layers = len(layer_kinds)
        self.ffn = ffn
        self.intermediate_size = intermediate_size
        self.norm_style = norm_style
        self.rms_norm_eps = rms_norm_eps
        self.window = window
        self.global_window = global_window
        self.feature_map = feature_map
        self.qk_norm = qk_norm
        self.rope_theta_local = rope_theta_local
        self.rope_theta_global = rope_theta_global
        self.rope_scale_global = rope_scale_global
        self.nope_global = nope_global
        self.attn_scale = attn_scale
        self.embed_scale = embed_scale
        self.final_softcap = final_softcap
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        kwargs.pop("num_hidden_layers", None)  # written by save_pretrained; always len(layer_kinds)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def layer_window(self, i):
        """Attention window of layer i (None = full causal)."""
        return self.global_window if self.layer_kinds[i] == "global" else self.window
