"""The native local-global decoder: embedding -> layers (global | swa | rattn) -> norm -> logits.

Reads top to bottom: norms and FFN, the full KV cache of global layers, attention (one module
for the three kinds), the block, the model with its forward / prefill / decode step, then
batched greedy generation. Attention math goes through rattn_eval.kernels with the model's
backend ("torch" = PyTorch references, "triton" = Triton kernels).

Shapes: B batch, T tokens, W width, H query heads, Hkv kv heads, D head dim, V vocab.
"""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels
from ..kernels import LocalCache
from ..errors import BudgetError, ConfigError, NumericsError
from . import rope as rope_lib
from .config import ModelConfig


def _pointwise():
    """The Triton pointwise kernels, imported on first use (a CPU-only torch install never needs triton)."""
    from ..kernels import pointwise

    return pointwise


class RMSNorm(nn.Module):
    """y = x / rms(x) * w over the last dim, computed in fp32 (plain weights; Gemma's 1 + w is folded at import)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    fused = False  # set by Model.set_backend: the Triton kernel on the "triton" backend (forward-only)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """norm(x), or residual + norm(x) (norm rounded to x.dtype first, as an unfused add would)."""
        if self.fused and not torch.is_grad_enabled():
            return _pointwise().rms_norm_triton(x, self.weight, self.eps, residual=residual)
        y = kernels.rms_norm(x, self.weight, self.eps).to(x.dtype)
        return y if residual is None else residual + y


class FeedForward(nn.Module):
    """Gated FFN: down(act(gate(x)) * up(x)); act = silu (SwiGLU) or tanh-GELU (GeGLU)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.ffn
        self.gate_proj = nn.Linear(cfg.width, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.width, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.width, bias=cfg.mlp_bias)

    fused = False  # set by Model.set_backend: one Triton kernel for act(gate) * up on the "triton" backend (forward-only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate_proj(x)
        if self.fused and not torch.is_grad_enabled():
            return self.down_proj(_pointwise().gated_act_triton(g, self.up_proj(x), "silu" if self.kind == "swiglu" else "gelu_tanh"))
        g = F.silu(g) if self.kind == "swiglu" else F.gelu(g, approximate="tanh")
        return self.down_proj(g * self.up_proj(x))


class KVCache:
    """Full KV cache of one global layer (gpt-fast style): k, v (B, S, Hkv, D), rotated keys.

    S is sized by the caller to prompt + new tokens of the current generate call (rounded up when
    the cache is kept for a CUDA graph), never to max_context. Rows may sit at different positions:
    `update` writes row b at pos[b]. Slots past a row's position are never read (decode masks them).
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v

    @classmethod
    def empty(cls, B: int, size: int, Hkv: int, D: int, *, dtype, device) -> "KVCache":
        k = torch.zeros(B, size, Hkv, D, dtype=dtype, device=device)
        return cls(k, torch.zeros_like(k))

    def write_prefill(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (B, T, Hkv, D) of a right-padded prefill -> slots 0..T-1 (padding slots are never read)."""
        T = k.shape[1]
        if T > self.k.shape[1]:
            raise ValueError(f"a prefill of {T} tokens does not fit a cache of {self.k.shape[1]} slots")
        self.k[:, :T] = k
        self.v[:, :T] = v

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """pos (B,) int64; k, v (B, Hkv, D): write each row's new token at its own position."""
        rows = torch.arange(k.shape[0], device=k.device)
        self.k[rows, pos] = k.to(self.k.dtype)
        self.v[rows, pos] = v.to(self.v.dtype)

    def select(self, index: torch.Tensor) -> "KVCache":
        return KVCache(self.k[index], self.v[index])

    def rows(self, r0: int, r1: int) -> "KVCache":
        """Rows r0..r1-1 as a view: writes land in this cache."""
        return KVCache(self.k[r0:r1], self.v[r0:r1])

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def _local_rows(cache: LocalCache, r0: int, r1: int) -> LocalCache:
    """Rows r0..r1-1 of a local-layer cache as views: writes land in `cache`."""
    state = None if cache.state is None else cache.state[r0:r1]
    return LocalCache(cache.k[r0:r1], cache.v[r0:r1], state, cache.pos[r0:r1], cache.window, cache.feature_map)


def _copy_local(dst: LocalCache, src: LocalCache) -> None:
    """Copy a freshly built local cache into `dst` in place (a captured decode graph keeps addressing dst)."""
    dst.k.copy_(src.k)
    dst.v.copy_(src.v)
    dst.pos.copy_(src.pos)
    if dst.state is not None:
        dst.state.copy_(src.state)


class Attention(nn.Module):
    """One attention layer. kind "global" (full causal, or SWA when cfg.global_window is set),
    "swa" or "rattn"; q/k/v/o projections (optional biases), optional QK-norm, RoPE per layer kind,
    optional score softcapping."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.kind = cfg.kinds[layer]
        self.window = cfg.layer_window(layer)
        # the attention actually run: a global layer with a window behaves as plain SWA
        self.mode = "global" if self.window is None else ("swa" if self.kind == "global" else self.kind)
        self.H, self.Hkv, self.D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.feature_map = cfg.feature_map
        self.eps = cfg.norm_eps
        self.softcap = cfg.attn_softcap
        self.q_proj = nn.Linear(cfg.width, self.H * self.D, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.width, self.Hkv * self.D, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.width, self.Hkv * self.D, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.H * self.D, cfg.width, bias=cfg.o_bias)
        self.q_norm = RMSNorm(self.D, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.D, cfg.norm_eps) if cfg.qk_norm else None
        if self.kind == "rattn":  # per-head output norms of the two branches
            self.swa_norm = nn.Parameter(torch.ones(self.H, self.D))
            self.rla_norm = nn.Parameter(torch.ones(self.H, self.D))
        if self.kind == "global":
            theta, scaling = cfg.rope_theta_global, cfg.rope_scaling_global
            if scaling is None and cfg.rope_scale_global != 1.0:
                scaling = {"type": "linear", "factor": cfg.rope_scale_global}
        else:
            theta, scaling = cfg.rope_theta_local, cfg.rope_scaling_local
        with torch.device("cpu"):  # RoPE frequencies are plain tensors: keep them real when built on meta
            if self.kind == "global" and cfg.nope_global:
                self.rope = None
            elif rope_lib.length_dependent(scaling):
                self.rope = rope_lib.LengthRope(self.D, theta, scaling)
            else:
                self.rope = kernels.Rope(self.D, theta, inv_freq=rope_lib.inv_freq(self.D, theta, scaling))
        # YaRN / LongRoPE scale cos and sin by a factor a, so every score by a ** 2: folded into the scale
        a = 1.0 if self.rope is None else rope_lib.attention_factor(scaling)
        self.scale = cfg.attn_scale if a == 1.0 else (cfg.attn_scale or self.D**-0.5) * a * a
        self.backend = "torch"

    def triton_gap(self) -> str | None:
        """Why the Triton kernels cannot run this layer's attention (then it runs the PyTorch path), or None."""
        if self.softcap is not None:
            return "attention-logit softcapping (attn_softcap) is not in the Triton attention kernels"
        if not kernels.triton_head_dim_ok(self.D):
            return f"head dim {self.D}: the Triton attention kernels take power-of-two head dims 16..256"
        return None

    def _softcap(self) -> dict:
        """The softcap keyword for kernel calls, only when set (training ops take no softcap)."""
        return {} if self.softcap is None else {"softcap": self.softcap}

    def _global_tables(self, T: int, device, lengths):
        """cos, sin of a global layer's prefill: (T, D), or (B, T, D) for a length-dependent RoPE (each row
        rotated with the frequencies of its own length)."""
        if isinstance(self.rope, rope_lib.LengthRope):
            return self.rope.tables(T, device, lengths)
        return self.rope.tables(T, device)

    def _qkv(self, x: torch.Tensor):
        """x (B, T, W) -> raw q (B, T, H, D), k, v (B, T, Hkv, D), QK-normed when configured."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D)
        k = self.k_proj(x).view(B, T, self.Hkv, self.D)
        v = self.v_proj(x).view(B, T, self.Hkv, self.D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def _norm_weights(self):
        if self.kind != "rattn":
            return {}
        return dict(swa_norm_weight=self.swa_norm, rla_norm_weight=self.rla_norm, eps=self.eps)

    def new_cache(self, B: int, size: int, dtype, device):
        """An empty decode cache for B rows: a KVCache of `size` slots (global layers) or a LocalCache
        whose size depends on the window only."""
        if self.mode == "global":
            return KVCache.empty(B, size, self.Hkv, self.D, dtype=dtype, device=device)
        return kernels.empty_local_cache(B, self.window, self.Hkv, self.D, dtype=dtype, device=device, kind=self.mode,
                                         feature_map=self.feature_map)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """x (B, T, W), lengths (B,) of a right-padded batch -> out (B, T, W). With `cache` (prefill: this
        layer's cache for these B rows, from `new_cache`), the layer's keys and values are written into it."""
        B, T, _ = x.shape
        q, k, v = self._qkv(x)
        if self.mode == "global":
            # On a GPU with the triton backend, full causal attention goes to SDPA (FlashAttention /
            # cuDNN): faster than our SWA kernel run with no window at Gemma's head dim 256. A
            # right-padded batch needs no mask: under causality a real token never sees padding.
            fast = self.backend == "triton" and x.is_cuda
            if self.rope is not None:
                cos, sin = self._global_tables(T, x.device, lengths)  # (T, D) or (B, T, D)
                plain = cos.dim() == 2 and self.D & (self.D - 1) == 0
                pointwise = fast and plain and not torch.is_grad_enabled()  # apply_rope_triton has no backward
                rope = _pointwise().apply_rope_triton if pointwise else kernels.apply_rope
                q, k = rope(q, cos, sin), rope(k, cos, sin)
            if fast:
                o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                   is_causal=True, scale=self.scale,
                                                   enable_gqa=self.H != self.Hkv).transpose(1, 2)
            else:
                o = kernels.swa_attention(q, k, v, window=None, scale=self.scale, lengths=lengths, backend=self.backend,
                                          **self._softcap())
            if cache is not None:
                cache.write_prefill(k, v)
        elif cache is not None:
            o, built = kernels.local_prefill(q, k, v, window=self.window, kind=self.mode, rope=self.rope,
                                             scale=self.scale, feature_map=self.feature_map, lengths=lengths,
                                             backend=self.backend, **self._norm_weights(), **self._softcap())
            _copy_local(cache, built)
        elif self.mode == "rattn":
            tables = None if self.rope is None else self.rope.tables(T, x.device)
            o = kernels.rattention(q, k, v, window=self.window, rope=tables, scale=self.scale,
                                   feature_map=self.feature_map, lengths=lengths, backend=self.backend,
                                   **self._norm_weights())
        else:
            if self.rope is not None:
                cos, sin = self.rope.tables(T, x.device)
                q, k = kernels.apply_rope(q, cos, sin), kernels.apply_rope(k, cos, sin)
            o = kernels.swa_attention(q, k, v, window=self.window, scale=self.scale, lengths=lengths,
                                      backend=self.backend, **self._softcap())
        return self.o_proj(o.reshape(B, T, self.H * self.D))

    def step(self, x: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
        """One decode token per row. x (B, W), pos (B,) absolute positions; cache updated in place."""
        B = x.shape[0]
        q, k, v = self._qkv(x[:, None])  # (B, 1, H, D), (B, 1, Hkv, D)
        if self.mode != "global":
            o = kernels.local_decode_step(q[:, 0], k[:, 0], v[:, 0], cache, rope=self.rope, scale=self.scale,
                                          backend=self.backend, **self._norm_weights(), **self._softcap())  # (B, H, D)
            return self.o_proj(o.reshape(B, self.H * self.D))
        if self.rope is not None:
            cos, sin = self.rope.cos_sin(pos)  # (B, D)
            q, k = kernels.apply_rope(q, cos[:, None], sin[:, None]), kernels.apply_rope(k, cos[:, None], sin[:, None])
        cache.update(pos, k[:, 0], v[:, 0])
        # Attend over the whole cache, keys 0..pos per row: the shapes stay the same every step (no
        # host sync for the longest row, capturable in a CUDA graph); flash-decoding on the triton backend.
        o = kernels.kv_decode(q[:, 0], cache.k, cache.v, pos, scale=self.scale, backend=self.backend,
                              **self._softcap())  # (B, H, D)
        return self.o_proj(o.reshape(B, self.H * self.D))


class Block(nn.Module):
    """Pre-norm (x + f(norm(x))) or Gemma sandwich (x + post_norm(f(pre_norm(x)))) around attention and FFN."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.ffn = FeedForward(cfg)
        sandwich = cfg.norm == "sandwich"
        self.post_attn_norm = RMSNorm(cfg.width, cfg.norm_eps) if sandwich else None
        self.post_ffn_norm = RMSNorm(cfg.width, cfg.norm_eps) if sandwich else None

    @staticmethod
    def _add(x, norm, y):
        """x + y (pre-norm) or x + norm(y) (sandwich; one fused pass on the triton backend)."""
        return x + y if norm is None else norm(y, residual=x)

    def forward(self, x, lengths=None, cache=None):
        x = self._add(x, self.post_attn_norm, self.attn(self.attn_norm(x), lengths, cache))
        return self._add(x, self.post_ffn_norm, self.ffn(self.ffn_norm(x)))

    def step(self, x, pos, cache):
        x = self._add(x, self.post_attn_norm, self.attn.step(self.attn_norm(x), pos, cache))
        return self._add(x, self.post_ffn_norm, self.ffn(self.ffn_norm(x)))


def initial_weight(name: str, shape, gen: torch.Generator) -> torch.Tensor:
    """The random initial value of parameter `name` (fp32, on gen's device): norms at 1, biases at 0, the
    embedding N(0, 1), projections N(0, 1/fan_in), so activations and attention scores are O(1) and a
    random model's outputs depend visibly on every token it can see (what the tests need)."""
    if "norm" in name:
        return torch.ones(shape, device=gen.device)
    if name.endswith(".bias"):
        return torch.zeros(shape, device=gen.device)
    x = torch.randn(shape, generator=gen, device=gen.device)
    return x if name == "embed.weight" else x * shape[1] ** -0.5


class Model(nn.Module):
    """Native decoder. `model(input_ids [B, T], lengths=None) -> logits [B, T, V]`; `generate` for greedy decoding.

    Attributes: config, backend ("torch" | "triton", the kernel path that runs), fallbacks (the layers
    whose attention runs the PyTorch path on the triton backend, and why: see set_backend), tokenizer
    (set by load_model), max_context, last_stats (timings of the last generate call), cuda_graphs (decode
    replays a CUDA graph on GPUs; set False, or RATTN_EVAL_CUDA_GRAPHS=0, for eager steps).
    """

    cuda_graphs = True
    _graphed = None  # the decode graph kept for the next generate call (see _decode_graph)
    prefill_tokens = 65536  # tokens per prefill pass; larger batches run in groups of rows (see prefill)

    def __init__(self, cfg: ModelConfig, *, backend: str = "torch", strict: bool = False):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.tokenizer = None
        self.last_stats: dict = {}
        # LongRoPE switches to its long factors once a sequence passes the original length; transformers'
        # Phi-3 generate then recomputes the whole cache (prepare_inputs_for_generation), and so does ours,
        # unless the config says the family keeps its cache (rebuild_cache false: its Llama, Qwen2, Gemma-3)
        s = cfg.rope_scaling_global
        longrope = (s is not None and s["type"] == "longrope" and s.get("rebuild_cache", True)
                    and not cfg.nope_global)
        self.cache_rebuild_at = s["original_max_position_embeddings"] if longrope else None
        self.set_backend(backend, strict=strict)

    @property
    def max_context(self) -> int:
        return self.config.max_context

    def set_backend(self, backend: str, *, strict: bool = False) -> None:
        """Run on "torch" or "triton". On "triton", a layer whose attention the Triton kernels lack
        (softcapping, an odd head dim) runs its attention on the PyTorch path, and `fallbacks` lists those
        layers as [{"layers": [...], "part": "attention", "ran": "torch", "reason": ...}]; with strict=True
        (an explicit --backend triton) such a layer raises ConfigError instead."""
        if backend not in ("torch", "triton"):
            raise ConfigError(f"a native model runs on the 'torch' or 'triton' backend, not {backend!r}.")
        gaps = {i: block.attn.triton_gap() for i, block in enumerate(self.layers)} if backend == "triton" else {}
        gaps = {i: why for i, why in gaps.items() if why}
        if gaps and strict:
            i = min(gaps)
            raise ConfigError(f"backend 'triton' cannot run layer {i} of {self.config.name!r}: {gaps[i]}; "
                              "use backend 'auto', which runs such layers on the PyTorch path, or 'torch'.")
        self.backend = backend
        self._graphed = None  # a captured decode graph runs the old backend's kernels
        for module in self.modules():
            if isinstance(module, (RMSNorm, FeedForward)):
                module.fused = backend == "triton"
        for i, block in enumerate(self.layers):
            block.attn.backend = "torch" if i in gaps else backend
        self.fallbacks = [{"layers": [i for i in gaps if gaps[i] == why], "part": "attention", "ran": "torch",
                           "reason": why} for why in dict.fromkeys(gaps.values())]

    def init_weights(self, seed: int | None = None) -> "Model":
        """Deterministic random weights from `seed` (default config.init_seed), by `initial_weight`."""
        gen = torch.Generator().manual_seed(self.config.init_seed if seed is None else seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(initial_weight(name, p.shape, gen))
        return self

    def save(self, path):
        """Write this model as a checkpoint directory (config.json, model.safetensors, tokenizer files)."""
        from .checkpoint import save_checkpoint

        folder = getattr(self.tokenizer, "folder", None)
        return save_checkpoint(path, self.config, self.state_dict(), tokenizer_dir=folder)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)  # (B, T, W)
        return x if self.config.embed_scale == 1.0 else x * torch.tensor(self.config.embed_scale, dtype=x.dtype)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + head: (..., W) -> (..., V)."""
        h = self.norm(h)
        logits = F.linear(h, self.embed.weight) if self.lm_head is None else self.lm_head(h)
        c = self.config.final_softcap
        return logits if c is None else torch.tanh(logits / c) * c

    def hidden_states(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> last layer's output (B, T, W), before the final norm."""
        x = self._embed(input_ids)
        for block in self.layers:
            x = block(x, lengths)
        return x

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) int64, lengths (B,) for right padding -> logits (B, T, V)."""
        return self._logits(self.hidden_states(input_ids, lengths))

    def new_caches(self, B: int, size: int) -> list:
        """Empty decode caches for B rows, one per layer; global layers get `size` slots."""
        w = self.embed.weight
        return [block.attn.new_cache(B, size, w.dtype, w.device) for block in self.layers]

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, cache_size: int, caches: list | None = None):
        """Run the prompts and fill every layer's cache.

        A batch of more than `prefill_tokens` tokens runs in groups of as many rows as fit that many
        tokens (at least one row), each group trimmed to its longest prompt, so activation memory stays
        that of one group while the caches hold the whole batch: at long contexts the batch is then
        bounded by the caches alone.

        Args: input_ids (B, T) right-padded, lengths (B,), cache_size: slots of the global KV caches;
            caches: caches from `new_caches(B, >= max(cache_size, T))` to fill in place (None: new ones).
        Returns: logits at each row's last prompt token (B, V), caches (one per layer).
        """
        B, T = input_ids.shape
        if B and int(lengths.min()) < 1:
            raise ValueError("prefill needs at least one token per prompt: a length of 0 has no last token")
        if caches is None:
            caches = self.new_caches(B, max(cache_size, T))
        per = max(1, self.prefill_tokens // max(T, 1))
        if B <= per:
            groups = [(0, B, T)]
        else:
            host = lengths.tolist()
            groups = [(r0, min(r0 + per, B), max(host[r0:r0 + per])) for r0 in range(0, B, per)]
        last = []
        for r0, r1, t in groups:
            x = self._embed(input_ids[r0:r1, :t])
            lg = lengths[r0:r1]
            for block, cache in zip(self.layers, caches):
                view = cache.rows(r0, r1) if isinstance(cache, KVCache) else _local_rows(cache, r0, r1)
                x = block(x, lg, view)
            last.append(x[torch.arange(r1 - r0, device=x.device), lg - 1])  # (rows, W)
        return self._logits(torch.cat(last)), caches

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor, caches: list) -> torch.Tensor:
        """tokens (B,) at absolute positions pos (B,) -> logits (B, V); caches updated in place."""
        x = self._embed(tokens)  # (B, W)
        for block, cache in zip(self.layers, caches):
            x = block.step(x, pos, cache)
        return self._logits(x)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], *, max_new_tokens: int | list[int],
                 eos_ids: Iterable[int] | None = None, stop: list[str] | None = None, tokenizer=None) -> list[list[int]]:
        """Batched greedy decoding; see `greedy_generate`."""
        return greedy_generate(self, prompts, max_new_tokens=max_new_tokens, eos_ids=eos_ids, stop=stop,
                               tokenizer=tokenizer)


def _check_finite(logits: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(logits).all()):
        raise NumericsError(f"the model produced NaN or inf logits during {where}; try float32 or a smaller input.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_count(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def normalize_generate_args(model, prompts, max_new_tokens, eos_ids, stop, tokenizer, vocab_size: int):
    """Validate generate() arguments: prompts a list of token-id sequences (lists or 1-d integer tensors) with
    ids in [0, vocab_size), max_new_tokens an int >= 0 or one per prompt, eos_ids an id or ids. Returns
    (prompts as lists of ints, per-row budgets, eos id set, stop list, tokenizer)."""
    if not isinstance(prompts, (list, tuple)):
        raise ConfigError(f"generate takes its prompts as a list of token-id lists (or 1-d tensors), not a "
                          f"{type(prompts).__name__}.")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("generate needs a non-empty list of non-empty prompts.")
    rows = []
    for i, p in enumerate(prompts):
        t = torch.as_tensor(p)
        if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ConfigError(f"prompt {i} must be a 1-d sequence of integer token ids, got {t.dtype} values of "
                              f"shape {tuple(t.shape)}.")
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= vocab_size:
            raise ConfigError(f"prompt {i} holds token id {lo if lo < 0 else hi}, outside the model's vocabulary "
                              f"of {vocab_size} ids.")
        rows.append(t.tolist())
    if _is_count(max_new_tokens):
        budgets = [int(max_new_tokens)] * len(prompts)
    elif isinstance(max_new_tokens, (list, tuple)) and all(_is_count(b) for b in max_new_tokens):
        budgets = [int(b) for b in max_new_tokens]
    else:
        budgets = []
    if len(budgets) != len(prompts) or any(b < 0 for b in budgets):
        raise ConfigError("max_new_tokens must be an int >= 0 or one such int per prompt.")
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if eos_ids is None:
        eos_ids = set(tokenizer.eos_ids) if tokenizer is not None else set()
    elif _is_count(eos_ids):
        eos_ids = {eos_ids}
    stop = [s for s in (stop or []) if s]
    if stop and tokenizer is None:
        raise ConfigError("stop strings need a tokenizer to decode the generated text.")
    for i, (p, b) in enumerate(zip(rows, budgets)):
        if len(p) + b > model.max_context:
            raise BudgetError(f"prompt {i} has {len(p)} tokens + {b} new tokens, more than the model's context of "
                              f"{model.max_context} tokens.")
    return rows, budgets, set(int(e) for e in eos_ids), stop, tokenizer


def stop_text(tokenizer, ids) -> str:
    """The generated text stop strings are matched against: special tokens written out (as lm-eval's `hf`
    model decodes for its stop criteria), so a stop string like "<|im_end|>" that is a special token but
    not EOS ends the row; a tokenizer without `decode_with_special` decodes plainly."""
    decode = getattr(tokenizer, "decode_with_special", None) or tokenizer.decode
    return decode(ids)


def _advance(outputs, rows, toks, budgets, eos, stop, tokenizer) -> list[int]:
    """Append each slot's new token to its row's output; returns the slots that go on generating.
    A row ends at EOS (not appended), at its budget, or when its text contains a stop string."""
    keep = []
    for slot, (row, tok) in enumerate(zip(rows, toks)):
        done = len(outputs[row]) >= budgets[row] or tok in eos
        if not done:
            outputs[row].append(tok)
            done = len(outputs[row]) >= budgets[row] or any(s in stop_text(tokenizer, outputs[row]) for s in stop)
        if not done:
            keep.append(slot)
    return keep


def _use_cuda_graphs(model, device: torch.device) -> bool:
    return (device.type == "cuda" and getattr(model, "cuda_graphs", True)
            and os.environ.get("RATTN_EVAL_CUDA_GRAPHS", "1") != "0")


class _GraphedDecode:
    """`model.decode_step` as a CUDA graph: one eager step (on a side stream) compiles the kernels and
    warms the libraries, the next is captured, every later one is a replay. This removes the Python and
    launch cost of the ~20 small kernels per layer that otherwise bound batched decoding. The caches
    are updated in place, so the graph keeps addressing the same tensors step after step, and from one
    generate call to the next (see `_decode_graph`)."""

    def __init__(self, caches: list, key: tuple):
        self.caches, self.key = caches, key  # no reference to the model: the model holds this object
        self.graph = None
        self.warm = False

    def __call__(self, model: Model, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if not self.warm:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                logits = model.decode_step(tokens, pos, self.caches)
            torch.cuda.current_stream().wait_stream(side)
            self.warm = True
            return logits
        if self.graph is None:
            self.tokens, self.pos = tokens.clone(), pos.clone()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records only: nothing runs, the caches are untouched
                self.logits = model.decode_step(self.tokens, self.pos, self.caches)
            self.graph = graph  # only a graph whose capture finished is ever replayed
        self.tokens.copy_(tokens)
        self.pos.copy_(pos)
        self.graph.replay()
        return self.logits


# Global caches of a graphed decode get a multiple of this many slots, so that generate calls whose
# prompts and budgets differ a little (one RULER length) share one set of caches and one captured graph.
GRAPH_CACHE_ROUND = 1024


def _decode_graph(model: Model, B: int, cache_size: int) -> _GraphedDecode:
    """The graphed decode for B rows and `cache_size` global slots: the model's last one when it was made
    for the same rows, slots (rounded up to GRAPH_CACHE_ROUND), backend and tensors (every parameter and
    buffer at the same address, dtype and device), else a new one with new caches. Only one is kept: the
    old one's caches and graph are freed before the new caches are made."""
    size = -(-cache_size // GRAPH_CACHE_ROUND) * GRAPH_CACHE_ROUND
    tensors = tuple((t.data_ptr(), t.dtype, t.device) for t in (*model.parameters(), *model.buffers()))
    key = (B, size, model.backend, tensors)
    kept = model._graphed
    if kept is not None and kept.key == key:
        return kept
    model._graphed = None
    del kept
    model._graphed = _GraphedDecode(model.new_caches(B, size), key)
    return model._graphed


def _rebuild_caches(model: Model, prompts, outputs, active: torch.Tensor, pos: torch.Tensor, cache_size: int):
    """Re-prefill the active rows, each up to and including the token fed at `pos`: what transformers' Phi-3
    does when a sequence first passes LongRoPE's original length, so that every cached key is rotated with the
    long factors. Rows that do not cross come out as their caches were (same frequencies, same math).
    Returns (logits at pos (B', V), new caches)."""
    rows = active.tolist()
    ids = torch.zeros(len(rows), int(pos.max()) + 1, dtype=torch.long, device=pos.device)  # (B', T)
    for i, r in enumerate(rows):
        seq = prompts[r] + outputs[r]  # the prompt and every token generated so far, the last one at pos[i]
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return model.prefill(ids, pos + 1, cache_size)


def greedy_generate(model: Model, prompts, *, max_new_tokens, eos_ids=None, stop=None, tokenizer=None):
    """Batched greedy decoding.

    Prompts are right-padded and prefilled together with per-row lengths; decoding then advances every
    unfinished row one token per step at its own position. A row ends at EOS (not included in its
    output), when its decoded output contains a stop string (the tokens stay; the caller trims the
    text), or at its budget. Decoding eagerly, finished rows are dropped from the batch, so they cost
    no more compute; the CUDA-graph path (the default on CUDA, see _use_cuda_graphs) keeps every row
    in the batch (fixed shapes), so finished rows are still computed each step and their tokens ignored.
    A LongRoPE model re-prefills the batch once when a row first passes its original length (see
    _rebuild_caches); such a generation decodes eagerly, without a CUDA graph.

    Returns one list of new token ids per prompt; sets model.last_stats.
    """
    prompts, budgets, eos, stop, tokenizer = normalize_generate_args(
        model, prompts, max_new_tokens, eos_ids, stop, tokenizer, model.embed.num_embeddings)
    device = model.embed.weight.device
    B = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    T = int(lengths.max())
    ids = torch.zeros(B, T, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p, dtype=torch.long)
    cache_size = max(len(p) + n for p, n in zip(prompts, budgets))
    rebuild = getattr(model, "cache_rebuild_at", None)
    crossing = rebuild is not None and any(len(p) <= rebuild < len(p) + n for p, n in zip(prompts, budgets))
    if _use_cuda_graphs(model, device) and not crossing:
        graphed = _decode_graph(model, B, max(cache_size, T))
    else:
        graphed = model._graphed = None  # eager decoding: a kept graph's caches would only hold memory
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    outputs: list[list[int]] = [[] for _ in range(B)]

    _sync(device)
    t0 = time.perf_counter()
    logits, caches = model.prefill(ids, lengths, cache_size, None if graphed is None else graphed.caches)  # (B, V)
    _check_finite(logits, "prefill")
    _sync(device)
    prefill_s = time.perf_counter() - t0
    cache_bytes = sum(c.nbytes() for c in caches)

    pos = lengths.clone()  # absolute position of the next token of each slot
    t0 = time.perf_counter()
    decode_tokens = 0
    if graphed is None:
        # eager: finished rows leave the batch, so they cost no more compute
        active = torch.arange(B, device=device)  # original row of each batch slot
        while True:
            tokens = logits.argmax(dim=-1)  # (B',)
            keep = _advance(outputs, active.tolist(), tokens.tolist(), budgets, eos, stop, tokenizer)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                active, pos, tokens = active[index], pos[index], tokens[index]
                caches = [c.select(index) for c in caches]
            if crossing and bool((pos == rebuild).any()):
                logits, caches = _rebuild_caches(model, prompts, outputs, active, pos, cache_size)
            else:
                logits = model.decode_step(tokens, pos, caches)
            _check_finite(logits, "decoding")
            decode_tokens += len(keep)
            pos = pos + 1
    else:
        # CUDA graph: one launch per step; every row stays in the batch (fixed shapes) and a finished
        # row's position stops moving, so its cache writes stay in bounds and its tokens are ignored
        live = list(range(B))
        while True:
            tokens = logits.argmax(dim=-1)  # (B,)
            host = torch.cat([tokens, torch.isfinite(logits).all().view(1).long()]).tolist()  # one sync
            if not host[-1]:
                raise NumericsError("the model produced NaN or inf logits during decoding; try float32 or a smaller input.")
            keep = _advance(outputs, live, [host[r] for r in live], budgets, eos, stop, tokenizer)
            live = [live[i] for i in keep]
            if not live:
                break
            try:
                logits = graphed(model, tokens, pos)
            except BaseException:
                model._graphed = None  # a graph interrupted mid-capture or mid-step is not kept
                raise
            decode_tokens += len(live)
            # a finished row's `pos` holds but its local caches' cache.pos still advance: harmless, its outputs are ignored
            moving = torch.zeros(B, dtype=torch.long)
            moving[live] = 1
            pos = pos + moving.to(device, non_blocking=True)
    _sync(device)
    model.last_stats = dict(
        prefill_tokens=int(lengths.sum()), prefill_s=prefill_s, decode_tokens=decode_tokens,
        decode_s=time.perf_counter() - t0,
        peak_mem_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        cache_bytes=cache_bytes,
    )
    return outputs
