"""Llama family (Llama 2/3/3.1, Mistral) as plain nn.Modules over the paged attention backend.

Parameter names follow Hugging Face checkpoints (``model.layers.N.self_attn.o_proj.weight``)
except for two fused projections, loaded from their HF parts by :data:`STACKED_PARAMS`:
``qkv_proj`` = q|k|v and ``gate_up_proj`` = gate|up (one matmul instead of three / two).
Projections are :mod:`serving.layers.linear` layers: each parameter loads itself from its HF
part (``weight_loader``), and each takes the step's LoRA slots (``batch.lora``), so PEFT
adapters on any of q/k/v/o/gate/up/down (:data:`LORA_TARGETS`) apply per request.
The config is the transformers config object read from ``config.json``.
"""

from __future__ import annotations

import torch
from torch import nn

from serving import kernels
from serving.attention import AttentionBackend, ForwardBatch
from serving.layers.linear import (
    LinearBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from serving.layers.vocab import ParallelLMHead, VocabParallelEmbedding
from serving.models.rope import build_cos_sin_cache
from serving.parallel import SINGLE, TensorParallel

# (fused parameter, HF checkpoint part, shard id): the part names of the layers' weight_loader.
STACKED_PARAMS = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)

# PEFT target module name -> (our projection under a decoder layer, its part of that projection).
LORA_TARGETS: dict[str, tuple[str, str | int | None]] = {
    "q_proj": ("self_attn.qkv_proj", "q"),
    "k_proj": ("self_attn.qkv_proj", "k"),
    "v_proj": ("self_attn.qkv_proj", "v"),
    "o_proj": ("self_attn.o_proj", None),
    "gate_proj": ("mlp.gate_up_proj", 0),
    "up_proj": ("mlp.gate_up_proj", 1),
    "down_proj": ("mlp.down_proj", None),
}


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

    def __init__(self, config, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        size = config.intermediate_size
        shard = {"tp_rank": tp.rank, "tp_size": tp.size}
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [size, size], bias=bias, **shard)
        self.down_proj = RowParallelLinear(size, config.hidden_size, bias=bias, **shard)

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        gate_up = self.gate_up_proj(x, batch.lora)
        return self.down_proj(gate_up, batch.lora, silu_mul_input=True)


class LlamaAttention(nn.Module):
    """Grouped-query attention: fused qkv projection, the backend's rotary + KV store + paged
    attention, output projection. It is the backend's ``AttentionLayer``: layer index, scale,
    rotary table (shared by all layers, set by ``init_rotary``) and q/k norms. Under tensor
    parallelism it holds this rank's query and KV heads (``num_heads``, ``num_kv_heads``)."""

    is_neox = True

    def __init__(self, config, layer_id: int, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.cos_sin_cache = torch.empty(0)  # the model's table, set by LlamaForCausalLM.init_rotary
        self.head_dim = head_dim_of(config)
        self.scale = self.head_dim**-0.5
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size,
            self.head_dim,
            config.num_attention_heads,
            config.num_key_value_heads,
            bias=self.qkv_bias(config),
            tp_rank=tp.rank,
            tp_size=tp.size,
        )
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(
            config.num_attention_heads * self.head_dim,
            config.hidden_size,
            bias=self.o_proj_bias(config),
            tp_rank=tp.rank,
            tp_size=tp.size,
        )

    def qkv_bias(self, config) -> bool:
        """Whether q/k/v projections have biases (Llama: ``attention_bias``; Qwen2: always)."""
        return bool(getattr(config, "attention_bias", False))

    def o_proj_bias(self, config) -> bool:
        """Llama's ``attention_bias`` covers o_proj too; Qwen2 overrides (bias on q/k/v only)."""
        return bool(getattr(config, "attention_bias", False))

    def qk_norm(self) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        """Per-head q/k RMSNorm weights and eps (Qwen3), applied before rotary; Llama has none."""
        return None, None, 0.0

    def forward(self, hidden: torch.Tensor, batch: ForwardBatch, attention: AttentionBackend) -> torch.Tensor:
        """Project q/k/v, let the backend apply rotary, store K/V and attend, project the output."""
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden, batch.lora)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        out = attention.forward(self, q, k, v, batch)
        return self.o_proj(out.reshape(num_tokens, self.q_size), batch.lora)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm transformer block; the residual stream is carried separately for fused add+norm."""

    attention_cls: type[LlamaAttention] = LlamaAttention

    def __init__(self, config, layer_id: int, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.self_attn = self.attention_cls(config, layer_id, tp)
        self.mlp = LlamaMLP(config, tp)
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
        return self.mlp(hidden, batch), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm."""

    layer_cls: type[LlamaDecoderLayer] = LlamaDecoderLayer

    def __init__(self, config, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        self.layers = nn.ModuleList(self.layer_cls(config, i, tp) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, batch: ForwardBatch, attention: AttentionBackend) -> torch.Tensor:
        hidden = self.embed_tokens(batch.input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, batch, attention)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """Causal LM head over :class:`LlamaModel`; returns fp32 logits of ``batch.logits_indices``
    rows (the whole vocabulary on every rank under tensor parallelism)."""

    model_cls: type[LlamaModel] = LlamaModel
    stacked_params = STACKED_PARAMS

    def __init__(self, config, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.config = config
        self.tp = tp
        self.num_kv_heads = config.num_key_value_heads // tp.size  # KV heads this rank stores
        self.model = self.model_cls(config, tp)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp)
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
        return self.lm_head(hidden[batch.logits_indices]).float()

    def checkpoint_target(self, hf_name: str) -> tuple[str, str | int | None]:
        """Map a checkpoint name like ``...self_attn.k_proj.weight`` to (our param name, part)."""
        for fused, part, shard in self.stacked_params:
            if f".{part}." in hf_name:
                return hf_name.replace(f".{part}.", f".{fused}."), shard
        return hf_name, None

    def lora_target(self, layer_id: int, module: str) -> tuple[LinearBase, str | int | None]:
        """The projection (and its part) that a PEFT adapter's ``layers.N.<module>`` adapts."""
        if module not in LORA_TARGETS:
            raise KeyError(module)
        path, part = LORA_TARGETS[module]
        layer = self.get_submodule(f"model.layers.{layer_id}.{path}")
        assert isinstance(layer, LinearBase)
        return layer, part

    def linear_layers(self) -> list[LinearBase]:
        """Every adapter-aware projection of the model, in module order."""
        return [m for m in self.modules() if isinstance(m, LinearBase)]
