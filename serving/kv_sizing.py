"""How many KV token slots one model's pool gets."""

from __future__ import annotations

import torch

from serving.config import EngineConfig
from serving.memory import slots_for_memory
from serving.models.llama import head_dim_of

DEFAULT_POOL_TOKENS = 32768


def num_kv_slots(config: EngineConfig, model_config, max_context: int, dtype: torch.dtype) -> int:
    """Slots of the pool, the padding slot included.

    ``kv_slots`` gives the exact count (tests); ``kv_memory_gb`` a byte budget for K and V over
    all layers (GPU deployments); by default there is room for every running request at full
    context, capped at 32k tokens (at least one full context), plenty for the CPU path.
    """
    if config.kv_slots is not None:
        return config.kv_slots + 1
    if config.kv_memory_gb is not None:
        budget = int(config.kv_memory_gb * 2**30)
        layers, kv_heads = model_config.num_hidden_layers, model_config.num_key_value_heads
        return slots_for_memory(budget, layers, kv_heads, head_dim_of(model_config), dtype)
    return min(config.max_running * max_context, max(max_context, DEFAULT_POOL_TOKENS)) + 1
