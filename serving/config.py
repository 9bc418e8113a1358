"""How one served model is loaded and sized (:class:`EngineConfig`), and what its checkpoint
says about context length and end-of-sequence tokens."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONTEXT = 4096


@dataclass
class EngineConfig:
    """How to load and size one served model."""

    model_path: str
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    max_context: int | None = None  # None: the model's max_position_embeddings, capped at 4096
    max_running: int = 32
    max_batch_tokens: int = 512
    kv_memory_gb: float | None = None  # None: max_running full contexts, capped at 32k tokens
    kv_slots: int | None = None  # exact pool size in tokens (overrides kv_memory_gb; tests)
    cuda_graphs: bool | None = None  # None: on for CUDA
    detokenize: bool = True  # False: token ids only (benchmarks); stop strings then unsupported
    # Launch the next decode step before reading this one's tokens, so the GPU never waits for
    # the host between steps (see Engine.step). None: on for CUDA.
    overlap: bool | None = None
    attention_backend: str = "dense"  # a name in serving.attention.ATTENTION_BACKENDS
    prefix_cache: bool = True  # reuse the KV of shared prefixes (serving/radix_cache.py)
    schedule_policy: str = "lpm"  # "lpm": longest cached prefix first (fairness-bounded); "fcfs"

    def torch_dtype(self) -> torch.dtype:
        if self.dtype is None:
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)

    @property
    def use_cuda_graphs(self) -> bool:
        return self.device.startswith("cuda") if self.cuda_graphs is None else self.cuda_graphs

    @property
    def use_overlap(self) -> bool:
        return self.device.startswith("cuda") if self.overlap is None else self.overlap


def eos_token_ids(model_path: str | Path, config, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-sequence ids from generation_config.json, config.json and the tokenizer."""
    ids: set[int] = set()
    sources = [getattr(config, "eos_token_id", None), tokenizer.eos_token_id]
    if (Path(model_path) / "generation_config.json").is_file():
        sources.append(GenerationConfig.from_pretrained(model_path).eos_token_id)
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def sliding_window(model_config) -> int | None:
    """The attention window of a model that uses one (Mistral v0.1, Qwen2 with use_sliding_window)."""
    window = getattr(model_config, "sliding_window", None)
    if not window or not getattr(model_config, "use_sliding_window", True):
        return None
    return int(window)


def context_limit(config: EngineConfig, model_config) -> int:
    """Longest prompt + output: the configured one, else the model's (capped at 4096); never past
    a sliding window (within it, sliding-window attention is full attention)."""
    limit = config.max_context or min(model_config.max_position_embeddings, DEFAULT_MAX_CONTEXT)
    window = sliding_window(model_config)
    if window is not None and window < limit:
        logger.info("capping context at the sliding window of %d tokens", window)
        limit = window
    return limit
