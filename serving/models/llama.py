"""Llama family (Llama 2/3/3.1, Mistral) as plain nn.Modules over the paged attention backend.

Parameter names follow Hugging Face checkpoints (``model.layers.N.self_attn.o_proj.weight``)
except for two fused projections, loaded from their HF parts by :data:`STACKED_PARAMS`:
``qkv_proj`` = q|k|v and ``gate_up_proj`` = gate|up (one matmul instead of three / two).
The config is the transformers config object read from ``config.json``.
"""

from __future__ import annotations

import torch
from torch import nn

from serving import kernels
from serving.attention import AttentionBackend, ForwardBatch
from serving.models.rope import build_cos_sin_cache

# (fused parameter, HF checkpoint part, shard id); shard ids index _shard_slices.
STACKED_PARAMS = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)


def head_dim_of(config) -> int:
    """Per-head size: explicit ``head_dim`` when the config has one (Qwen3, Mistral), else derived."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class RMSNorm(nn.Module):
    """RMSNorm; given a residual it adds it first and returns ``(normed, new_residual)``.
    (Qwen3's per-head q/k norms only hold weights here: they run fused into rotary.)"""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return kernels.rms_norm(x, self.weight, self.eps)
        return kernels.fused_add_rms_norm(x, residual, self.weight, self.eps)


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward with the gate and up projections fused; the down projection applies
    SiLU-and-mul to its input (one kernel at small batch, see ``kernels.linear``)."""

    def __init__(self, config) -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = kernels.linear(x, self.gate_up_proj.weight, self.gate_up_proj.bias)
        return kernels.linear(gate_up, self.down_proj.weight, self.down_proj.bias, silu_mul_input=True)


class LlamaAttention(nn.Module):
    """Grouped-query attention: fused qkv projection, the backend's rotary + KV store + paged
    attention, output projection. It is the backend's ``AttentionLayer``: layer index, scale,
    rotary table (shared by all layers, set by ``init_rotary``) and q/k norms."""

    is_neox = True

    def __init__(self, config, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.cos_sin_cache = torch.empty(0)  # the model's table, set by LlamaForCausalLM.init_rotary
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = head_dim_of(config)
        self.scale = self.head_dim**-0.5
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=self.qkv_bias(config)
        )
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=self.o_proj_bias(config))

    def qkv_bias(self, config) -> bool:
        """Whether q/k/v projections have biases (Llama: ``attention_bias``; Qwen2: always)."""
        return bool(getattr(config, "attention_bias", False))

    def o_proj_bias(self, config) -> bool:
        """Llama's ``attention_bias`` covers o_proj too; Qwen2 overrides (bias on q/k/v only)."""
        return bool(getattr(config, "attention_bias", False))

    def shard_slice(self, shard_id: str) -> slice:
        """Rows of ``qkv_proj`` that the HF ``q_proj`` / ``k_proj`` / ``v_proj`` fill."""
        starts = {"q": 0, "k": self.q_size, "v": self.q_size + self.kv_size}
        size = self.q_size if shard_id == "q" else self.kv_size
        return slice(starts[shard_id], starts[shard_id] + size)

    def qk_norm(self) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        """Per-head q/k RMSNorm weights and eps (Qwen3), applied before rotary; Llama has none."""
        return None, None, 0.0

    def forward(self, hidden: torch.Tensor, batch: ForwardBatch, attention: AttentionBackend) -> torch.Tensor:
        """Project q/k/v, let the backend apply rotary, store K/V and attend, project the output."""
        num_tokens = hidden.shape[0]
        qkv = kernels.linear(hidden, self.qkv_proj.weight, self.qkv_proj.bias)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        out = attention.forward(self, q, k, v, batch)
        return kernels.linear(out.reshape(num_tokens, self.q_size), self.o_proj.weight, self.o_proj.bias)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm transformer block; the residual stream is carried separately for fused add+norm."""

    attention_cls: type[LlamaAttention] = LlamaAttention

    def __init__(self, config, layer_id: int) -> None:
        super().__init__()
        self.self_attn = self.attention_cls(config, layer_id)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden, residual, batch, attention):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, batch, attention)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm."""

    layer_cls: type[LlamaDecoderLayer] = LlamaDecoderLayer

    def __init__(self, config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.layer_cls(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, batch: ForwardBatch, attention: AttentionBackend) -> torch.Tensor:
        hidden = self.embed_tokens(batch.input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, batch, attention)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """Causal LM head over :class:`LlamaModel`; returns fp32 logits of ``batch.logits_indices`` rows."""

    model_cls: type[LlamaModel] = LlamaModel
    stacked_params = STACKED_PARAMS

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.model = self.model_cls(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight
        self.cos_sin_cache: torch.Tensor | None = None

    def init_rotary(self, max_positions: int, device: torch.device | str) -> None:
        """Build the fp32 cos|sin table (after weights are materialised on ``device``)."""
        self.cos_sin_cache = build_cos_sin_cache(self.config, head_dim_of(self.config), max_positions, device)
        for layer in self.model.layers:
            layer.self_attn.cos_sin_cache = self.cos_sin_cache

    def forward(self, batch: ForwardBatch, attention: AttentionBackend) -> torch.Tensor:
        if self.cos_sin_cache is None:
            raise RuntimeError("call init_rotary() before forward()")
        hidden = self.model(batch, attention)
        return kernels.linear(hidden[batch.logits_indices], self.lm_head.weight).float()

    def fused_param_target(self, hf_name: str) -> tuple[str, slice] | None:
        """Map a checkpoint name like ``...self_attn.k_proj.weight`` to (fused param name, rows)."""
        for fused, part, shard in self.stacked_params:
            if f".{part}." not in hf_name:
                continue
            fused_name = hf_name.replace(f".{part}.", f".{fused}.")
            module = self.get_submodule(fused_name.rsplit(".", 2)[0])
            if isinstance(shard, str):
                return fused_name, module.shard_slice(shard)
            size = module.intermediate_size
            return fused_name, slice(shard * size, (shard + 1) * size)
        return None
