"""How many KV token slots one model's pool gets."""

from __future__ import annotations

import torch

from serving.config import EngineConfig
from serving.memory import slots_for_memory
from serving.models.llama import head_dim_of

DEFAULT_POOL_TOKENS = 32768


def num_kv_slots(
    config: EngineConfig, model_config, max_context: int, dtype: torch.dtype, shared_bytes: int = 0
) -> int:
    """Slots of the pool, the padding slot included.

    ``kv_slots`` gives the exact count (tests); ``kv_memory_gb`` a byte budget for K and V over
    all layers (GPU deployments; per rank, for its KV heads, under tensor parallelism), less ``shared_bytes`` that other engine memory takes from the
    same budget (the LoRA adapter slots); by default there is room for every running request at
    full context, capped at 32k tokens (at least one full context), plenty for the CPU path.
    """
    if config.kv_slots is not None:
        return config.kv_slots + 1
    if config.kv_memory_gb is not None:
        budget = int(config.kv_memory_gb * 2**30) - shared_bytes
        if budget <= 0:
            raise ValueError(
                f"kv_memory_gb={config.kv_memory_gb} leaves no room for KV after {shared_bytes / 2**30:.2f} GiB "
                "of LoRA adapter slots; lower max_loras or max_lora_rank"
            )
        layers = model_config.num_hidden_layers
        kv_heads = model_config.num_key_value_heads // config.tensor_parallel  # each rank's budget, its heads
        return slots_for_memory(budget, layers, kv_heads, head_dim_of(model_config), dtype)
    return min(config.max_running * max_context, max(max_context, DEFAULT_POOL_TOKENS)) + 1
