"""RAttention local-global decoder for transformers, in plain PyTorch (remote code).

Written into an exported folder by `rattn-eval export CKPT OUT --format hf`; load it with
AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True). It computes what rattn-eval's
native model (rattn_eval/models/model.py) and its kernels' references (rattn_eval/kernels/{swa,rla,
rattention}/naive.py) compute, with the same fp32 internals, so fp32 logits agree to ~1e-6.
Self-contained: torch and transformers only.

Every layer is one of
    global  full causal softmax attention (sliding-window when config.global_window is set); RoPE of
            base rope_theta_global and linear scale rope_scale_global, or none (nope_global);
    swa     sliding-window softmax attention, query t sees keys t - window .. t; RoPE base rope_theta_local;
    rattn   RAttention: rms(SWA(rope(q), rope(k), v)) * swa_norm + rms(RLA(q, k, v)) * rla_norm, where the
            residual linear attention o_t = phi(q_t) S_{t-window-1}, S_t = sum_{j<=t} phi(k_j)^T v_j, covers
            exactly the keys the window no longer sees (raw q/k: no RoPE, no scale, no normalizer).
q and k are RMS-normed per head first when qk_norm is set.

Padding: attention_mask (B, T) marks the real tokens, which must be one contiguous run per row (left or
right padding). Positions count real tokens only, padded keys are never attended and add nothing to
the linear-attention state, so each row of a left-padded batch gets the logits it gets alone. Logits
at padded positions are meaningless.

Generation: the model keeps its own cache (RAttnCache: every layer's keys and values, plus the linear
state of rattn layers), returned with use_cache=True and continued one token per step, so transformers'
`generate` works as for any decoder (greedy, sampling, beam search; left padding). It is kept simple:
sliding-window layers keep all their keys too. Without a cache (use_cache=False) every step recomputes
the whole prefix, with the same result.

Shapes: B batch, T tokens, W width, H query heads, Hkv kv heads, D head dim, F feature dim, V vocab.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_rattn import RAttnConfig


def rms_norm(x, weight, eps):
    """RMSNorm over the last dim in fp32; weight None = ones. Returns fp32."""
    x = x.float()
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return y if weight is None else y * weight.float()


class RMSNorm(nn.Module):
    """y = x / rms(x) * w, computed in fp32 and returned in x.dtype (plain weights, no 1 + w)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps).to(x.dtype)


def rope_cos_sin(positions, head_dim, theta, factor):
    """positions (B, T) int -> cos, sin (B, T, D) fp32. Frequencies are computed on the CPU in fp32, as
    rattn-eval does, so both give the same tables."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = (1.0 / (float(theta) ** exponent) / float(factor)).to(positions.device)  # (D/2,)
    freqs = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """x (B, T, H, D) rotated by cos/sin (B, T, D), rotate-half convention (dim i pairs with i + D/2)."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def feature_map(x, kind):
    """phi of the residual linear attention, fp32: (..., D) -> (..., F), F = 2D (softmax, relu) or D."""
    x = x.float()
    if kind == "softmax":
        return torch.cat([torch.softmax(x, dim=-1), torch.softmax(-x, dim=-1)], dim=-1)
    if kind == "relu":
        return torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return x


def softmax_attention(q, k, v, valid, window, scale, chunk=256):
    """Causal softmax attention, query t sees keys t - window .. t (window None: all of 0 .. t).

    q (B, T, H, D); k, v (B, T, Hkv, D); valid (B, T) bool, False at padding. Queries run in chunks, each
    against the keys its window can reach, so memory is O(chunk x (chunk + window)). Returns (B, T, H, D)
    in q.dtype.
    """
    B, T, H, D = q.shape
    g = H // k.shape[2]
    out = torch.zeros(B, T, H, D, dtype=torch.float32, device=q.device)
    for s0 in range(0, T, chunk):
        s1 = min(T, s0 + chunk)
        k0 = 0 if window is None else max(0, s0 - window)
        qc = q[:, s0:s1].float().transpose(1, 2)  # (B, H, C, D)
        kc = k[:, k0:s1].float().repeat_interleave(g, dim=2).transpose(1, 2)  # (B, H, K, D)
        vc = v[:, k0:s1].float().repeat_interleave(g, dim=2).transpose(1, 2)
        t = torch.arange(s0, s1, device=q.device)[:, None]
        j = torch.arange(k0, s1, device=q.device)[None, :]
        ok = j <= t
        if window is not None:
            ok = ok & (t - j <= window)
        # a padded query sees itself too, so that no row is empty (its output is never used)
        ok = (ok[None] & valid[:, None, k0:s1]) | (t == j)[None]  # (B, C, K)
        o = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=ok[:, None], scale=scale)
        out[:, s0:s1] = o.transpose(1, 2)
    return out.to(q.dtype)


def residual_linear_attention(q, k, v, valid, window, kind, chunk=64):
    """o_t = phi(q_t) S_{t-window-1}, S_t = sum_{j<=t} phi(k_j)^T v_j over real tokens j (S_{<0} = 0).

    Causal linear attention (diagonal included) on phi(k), v shifted right by window + 1, in chunks: the
    state carries the chunks before, a masked (C, C) product covers the chunk itself. q (B, T, H, D);
    k, v (B, T, Hkv, D); valid (B, T). Returns o (B, T, H, D) in q.dtype (fp32 state and sums) and the
    final state (B, Hkv, F, D) fp32, S_{T-window-2}: what the next token's query reads after its update.
    """
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    g = H // Hkv
    pad = ~valid[:, :, None, None]
    pq = feature_map(q, kind)  # (B, T, H, F)
    pk = feature_map(k, kind).masked_fill(pad, 0.0)  # (B, T, Hkv, F); padding adds nothing to the state
    vf = v.float().masked_fill(pad, 0.0)  # (B, T, Hkv, D)
    Fd = pk.shape[-1]
    s = window + 1
    ks, vs = torch.zeros_like(pk), torch.zeros_like(vf)
    if s < T:
        ks[:, s:], vs[:, s:] = pk[:, : T - s], vf[:, : T - s]
    state = torch.zeros(B, Hkv, Fd, D, dtype=torch.float32, device=q.device)
    out = torch.zeros(B, T, H, D, dtype=torch.float32, device=q.device)
    for c0 in range(0, T, chunk):
        c1 = min(T, c0 + chunk)
        C = c1 - c0
        qc = pq[:, c0:c1].reshape(B, C, Hkv, g, Fd)  # (B, C, Hkv, g, F)
        kc, vc = ks[:, c0:c1], vs[:, c0:c1]  # (B, C, Hkv, F), (B, C, Hkv, D)
        inter = torch.einsum("bckgf,bkfd->bckgd", qc, state)
        a = torch.einsum("bckgf,bskf->bkgcs", qc, kc)  # (B, Hkv, g, C, C)
        a = a * torch.ones(C, C, device=q.device).tril()
        intra = torch.einsum("bkgcs,bskd->bckgd", a, vc)
        out[:, c0:c1] = (inter + intra).reshape(B, C, H, D)
        state = state + torch.einsum("bskf,bskd->bkfd", kc, vc)
    return out.to(q.dtype), state


class RAttnLayerCache:
    """What one layer keeps for generation: keys (rotated, as attended) and values of every token so far,
    (B, S, Hkv, D); for rattn layers also the raw keys and the RLA state S_{S-window-2} (B, Hkv, F, D) fp32."""

    def __init__(self, keys, values, raw_keys=None, state=None):
        self.keys, self.values, self.raw_keys, self.state = keys, values, raw_keys, state

    def tensors(self):
        return {n: t for n, t in vars(self).items() if t is not None}


class RAttnCache:
    """The model's generation cache: one RAttnLayerCache per layer and valid (B, S), the real tokens so far.
    Kept as simple as the model: full keys and values per layer (sliding-window layers too)."""

    is_compileable = False
    is_croppable = False

    def __init__(self, layers, valid):
        self.layers, self.valid = layers, valid

    @property
    def is_linear(self):
        return [False] * len(self.layers)

    def get_seq_length(self, layer_idx=0):
        return self.valid.shape[1]

    def reorder_cache(self, beam_idx):
        """Beam search: keep the rows beam_idx (B',)."""
        for layer in self.layers:
            for name, t in layer.tensors().items():
                setattr(layer, name, t.index_select(0, beam_idx.to(t.device)))
        self.valid = self.valid.index_select(0, beam_idx.to(self.valid.device))


class RAttnAttention(nn.Module):
    """One attention layer of kind "global", "swa" or "rattn" (see the module docstring)."""

    def __init__(self, config, layer):
        super().__init__()
        self.kind = config.layer_kinds[layer]
        self.window = config.layer_window(layer)
        # the attention actually run: a global layer with a window is plain sliding-window attention
        self.mode = "global" if self.window is None else ("swa" if self.kind == "global" else self.kind)
        self.H, self.Hkv, self.D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.scale = self.D**-0.5 if config.attn_scale is None else float(config.attn_scale)
        self.feature_map = config.feature_map
        self.eps = config.rms_norm_eps
        W = config.hidden_size
        self.q_proj = nn.Linear(W, self.H * self.D, bias=False)
        self.k_proj = nn.Linear(W, self.Hkv * self.D, bias=False)
        self.v_proj = nn.Linear(W, self.Hkv * self.D, bias=False)
        self.o_proj = nn.Linear(self.H * self.D, W, bias=False)
        self.q_norm = RMSNorm(self.D, self.eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.D, self.eps) if config.qk_norm else None
        if self.kind == "rattn":  # per-head output norms of the two branches
            self.swa_norm = nn.Parameter(torch.ones(self.H, self.D))
            self.rla_norm = nn.Parameter(torch.ones(self.H, self.D))
        if self.kind != "global":
            self.rope = (config.rope_theta_local, 1.0)
        else:
            self.rope = None if config.nope_global else (config.rope_theta_global, config.rope_scale_global)

    def _qkv(self, x, positions):
        """x (B, T, W) -> raw q (B, T, H, D), k, v (B, T, Hkv, D) (QK-normed when configured), rotated q, k."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D)
        k = self.k_proj(x).view(B, T, self.Hkv, self.D)
        v = self.v_proj(x).view(B, T, self.Hkv, self.D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is None:
            return q, k, v, q, k
        cos, sin = rope_cos_sin(positions, self.D, *self.rope)
        return q, k, v, apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def _combine(self, o, o_rla, dtype):
        return (rms_norm(o, self.swa_norm, self.eps) + rms_norm(o_rla, self.rla_norm, self.eps)).to(dtype)

    def forward(self, x, positions, valid, use_cache=False):
        """x (B, T, W), positions (B, T), valid (B, T) -> (B, T, W), and this layer's cache when use_cache."""
        B, T, _ = x.shape
        q, k, v, qr, kr = self._qkv(x, positions)
        o = softmax_attention(qr, kr, v, valid, self.window, self.scale)  # (B, T, H, D)
        state = None
        if self.mode == "rattn":  # the linear branch reads the un-rotated q, k
            o_rla, state = residual_linear_attention(q, k, v, valid, self.window, self.feature_map)
            o = self._combine(o, o_rla, q.dtype)
        cache = RAttnLayerCache(kr, v, k if self.mode == "rattn" else None, state) if use_cache else None
        return self.o_proj(o.reshape(B, T, self.H * self.D)), cache

    def step(self, x, positions, valid, cache):
        """One new token per row after the S cached ones. x (B, 1, W), positions (B, 1), valid (B, S + 1)
        including the new token; cache updated in place. Returns (B, 1, W)."""
        B = x.shape[0]
        q, k, v, qr, kr = self._qkv(x, positions)
        cache.keys = torch.cat([cache.keys, kr], dim=1)  # (B, S + 1, Hkv, D)
        cache.values = torch.cat([cache.values, v], dim=1)
        t = cache.keys.shape[1] - 1  # index of the new token
        k0 = 0 if self.window is None else max(0, t - self.window)
        ok = valid[:, k0:].clone()
        ok[:, -1] = True  # the token sees itself (a padded one too, as in the forward pass)
        g = self.H // self.Hkv
        kc = cache.keys[:, k0:].float().repeat_interleave(g, dim=2).transpose(1, 2)  # (B, H, K, D)
        vc = cache.values[:, k0:].float().repeat_interleave(g, dim=2).transpose(1, 2)
        o = F.scaled_dot_product_attention(qr.float().transpose(1, 2), kc, vc, attn_mask=ok[:, None, None, :],
                                           scale=self.scale)  # (B, H, 1, D)
        o = o.transpose(1, 2).to(q.dtype)  # (B, 1, H, D)
        if self.mode == "rattn":
            cache.raw_keys = torch.cat([cache.raw_keys, k], dim=1)
            j = t - self.window - 1  # the key that leaves the window now enters the linear state
            if j >= 0:
                pk = feature_map(cache.raw_keys[:, j], self.feature_map) * valid[:, j, None, None]  # (B, Hkv, F)
                cache.state = cache.state + torch.einsum("bkf,bkd->bkfd", pk, cache.values[:, j].float())
            pq = feature_map(q[:, 0], self.feature_map).reshape(B, self.Hkv, g, -1)  # (B, Hkv, g, F)
            o_rla = torch.einsum("bkgf,bkfd->bkgd", pq, cache.state).reshape(B, 1, self.H, self.D).to(q.dtype)
            o = self._combine(o, o_rla, q.dtype)
        return self.o_proj(o.reshape(B, 1, self.H * self.D))


class RAttnMLP(nn.Module):
    """Gated FFN: down(act(gate(x)) * up(x)); act = silu (SwiGLU) or tanh-GELU (GeGLU)."""

    def __init__(self, config):
        super().__init__()
        self.kind = config.ffn
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        g = self.gate_proj(x)
        g = F.silu(g) if self.kind == "swiglu" else F.gelu(g, approximate="tanh")
        return self.down_proj(g * self.up_proj(x))


class RAttnBlock(nn.Module):
    """Pre-norm (x + f(norm(x))) or sandwich (x + post_norm(f(pre_norm(x)))) around attention and FFN."""

    def __init__(self, config, layer):
        super().__init__()
        eps = config.rms_norm_eps
        self.attn_norm = RMSNorm(config.hidden_size, eps)
        self.attn = RAttnAttention(config, layer)
        self.ffn_norm = RMSNorm(config.hidden_size, eps)
        self.ffn = RAttnMLP(config)
        sandwich = config.norm_style == "sandwich"
        self.post_attn_norm = RMSNorm(config.hidden_size, eps) if sandwich else None
        self.post_ffn_norm = RMSNorm(config.hidden_size, eps) if sandwich else None

    def _rest(self, x, a):
        x = x + (a if self.post_attn_norm is None else self.post_attn_norm(a))
        f = self.ffn(self.ffn_norm(x))
        return x + (f if self.post_ffn_norm is None else self.post_ffn_norm(f))

    def forward(self, x, positions, valid, use_cache=False):
        a, cache = self.attn(self.attn_norm(x), positions, valid, use_cache)
        return self._rest(x, a), cache

    def step(self, x, positions, valid, cache):
        return self._rest(x, self.attn.step(self.attn_norm(x), positions, valid, cache))


def positions_from_mask(attention_mask, B, T, device):
    """(positions (B, T) int64, valid (B, T) bool). Real tokens are numbered 0, 1, ... in each row."""
    if attention_mask is None:
        return torch.arange(T, device=device).expand(B, T), torch.ones(B, T, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (B, T):
        raise ValueError(f"attention_mask must be (batch, cached + input tokens) = ({B}, {T}) of 0/1, got "
                         f"{tuple(attention_mask.shape)}")
    valid = attention_mask.to(device).bool()
    runs = (valid[:, 1:] & ~valid[:, :-1]).sum(dim=1) + valid[:, 0].long()  # starts of runs of real tokens
    if bool((runs > 1).any()):
        raise ValueError("each row of attention_mask must be one contiguous run of ones (left or right padding; "
                         "generation needs left padding)")
    return (valid.long().cumsum(dim=1) - 1).clamp(min=0), valid


class RAttnPreTrainedModel(PreTrainedModel):
    config_class = RAttnConfig
    base_model_prefix = "model"
    _no_split_modules = ["RAttnBlock"]
    supports_gradient_checkpointing = False
    # the model brings its own cache (RAttnCache): transformers must not build one
    _supports_cache_class = False
    _supports_static_cache = False

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False

    @torch.no_grad()
    def _init_weights(self, module):
        """Random init for from_config (from_pretrained loads every weight): N(0, initializer_range), norms at 1."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, RAttnAttention) and module.kind == "rattn":
            module.swa_norm.fill_(1.0)
            module.rla_norm.fill_(1.0)


class RAttnModel(RAttnPreTrainedModel):
    """Embedding -> blocks -> final norm. forward returns the normed last hidden state (B, T, W) and,
    with use_cache, an RAttnCache to continue from."""

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(RAttnBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, use_cache=None, **kwargs):
        """input_ids (B, T) or inputs_embeds (B, T, W) (multiplied by embed_scale either way).

        attention_mask (B, S + T) covers the S cached tokens too; cache: an RAttnCache from an earlier call
        (updated in place), the input being the tokens after it. use_cache (default config.use_cache):
        return the cache. Returns BaseModelOutputWithPast(last_hidden_state (B, T, W), cache).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        cache = _check_unsupported(cache, kwargs)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, W)
        if self.config.embed_scale != 1.0:
            x = x * torch.tensor(self.config.embed_scale, dtype=x.dtype)
        B, T = x.shape[:2]
        S = 0 if cache is None else cache.get_seq_length()
        positions, valid = positions_from_mask(attention_mask, B, S + T, x.device)  # (B, S + T) each
        if cache is None:
            layer_caches = []
            for block in self.layers:
                x, layer_cache = block(x, positions, valid, use_cache)
                layer_caches.append(layer_cache)
            cache = RAttnCache(layer_caches, valid) if use_cache else None
        else:  # continue token by token from the cache
            outs = []
            for c in range(T):
                h, t = x[:, c : c + 1], S + c
                for block, layer_cache in zip(self.layers, cache.layers):
                    h = block.step(h, positions[:, t : t + 1], valid[:, : t + 1], layer_cache)
                outs.append(h)
            x = torch.cat(outs, dim=1)
            cache.valid = valid
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), **{_CACHE_FIELD: cache})


# transformers 5 names the cache field of model outputs "cache", transformers 4 "past_key_values"
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _check_unsupported(cache, kwargs):
    """The cache passed under either name; refuse what this model cannot honor rather than ignore it."""
    legacy = kwargs.pop("past_key_values", None)
    cache = cache if cache is not None else legacy
    if cache is not None and not isinstance(cache, RAttnCache):
        raise ValueError(f"this model continues only from its own RAttnCache, not {type(cache).__name__}")
    if kwargs.get("position_ids") is not None:
        raise ValueError("position_ids are not supported: positions are counted from attention_mask")
    for key in ("output_attentions", "output_hidden_states"):
        if kwargs.get(key):
            raise ValueError(f"{key}=True is not supported by this model")
    return cache


class RAttnForCausalLM(RAttnPreTrainedModel, GenerationMixin):
    """RAttnModel + head (the embedding matrix when tie_word_embeddings) + optional final softcap."""

    def __init__(self, config):
        super().__init__(config)
        self.model = RAttnModel(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, cache=None,
                use_cache=None, logits_to_keep=0, **kwargs):
        """Logits (B, T, V) (of the last logits_to_keep positions when > 0); loss: next-token cross-entropy on
        labels (B, T), -100 ignored; cache / use_cache as RAttnModel.forward."""
        return_dict = kwargs.pop("return_dict", None)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, cache=cache,
                         use_cache=use_cache, **kwargs)
        h = out.last_hidden_state  # (B, T, W)
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        else:
            h = h[:, logits_to_keep]
        logits = F.linear(h, self.model.embed.weight) if self.lm_head is None else self.lm_head(h)
        c = self.config.final_softcap
        if c is not None:
            logits = torch.tanh(logits / c) * c
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        new_cache = getattr(out, _CACHE_FIELD)
        if return_dict is False:
            return tuple(t for t in (loss, logits, new_cache) if t is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: new_cache})

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, inputs_embeds=None, cache=None,
                                      past_key_values=None, use_cache=None, logits_to_keep=None, **kwargs):
        """The tokens after the cache (all of them on the first step or without a cache), the whole mask."""
        if inputs_embeds is not None:
            raise ValueError("generate from input_ids: this model does not continue from inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            input_ids = input_ids[:, cache.get_seq_length():]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache, "use_cache": use_cache}
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs

    def _reorder_cache(self, cache, beam_idx):
        cache.reorder_cache(beam_idx)
        return cache


__all__ = ["RAttnCache", "RAttnConfig", "RAttnForCausalLM", "RAttnModel", "RAttnPreTrainedModel"]
