"""Qwen2 (bias on q/k/v) and Qwen3 (per-head RMSNorm on q and k) as subclasses of the Llama modules."""

from __future__ import annotations

import torch

from serving.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    RMSNorm,
    head_dim_of,
)
from serving.parallel import SINGLE, TensorParallel


class Qwen2Attention(LlamaAttention):
    """Qwen2 always has biases on q/k/v and never on o_proj."""

    def qkv_bias(self, config) -> bool:
        return True

    def o_proj_bias(self, config) -> bool:
        return False


class Qwen3Attention(LlamaAttention):
    """Qwen3 normalises each query and key head (RMSNorm over head_dim) before rotary."""

    def __init__(self, config, layer_id: int, tp: TensorParallel = SINGLE) -> None:
        super().__init__(config, layer_id, tp)
        self.q_norm = RMSNorm(head_dim_of(config), config.rms_norm_eps)
        self.k_norm = RMSNorm(head_dim_of(config), config.rms_norm_eps)

    def qk_norm(self) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        return self.q_norm.weight, self.k_norm.weight, self.q_norm.eps


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen2Attention


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen3Attention


class Qwen2Model(LlamaModel):
    layer_cls = Qwen2DecoderLayer


class Qwen3Model(LlamaModel):
    layer_cls = Qwen3DecoderLayer


class Qwen2ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen2Model


class Qwen3ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen3Model
