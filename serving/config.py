"""How one served model is loaded and sized (:class:`EngineConfig`), and what its checkpoint
says about context length and end-of-sequence tokens."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from serving.sparse.calibration import CHANNELS_FILE
from serving.sparse.double_sparsity import DoubleSparsityConfig
from serving.sparse.h2o import H2OConfig

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
    attention_backend: str = "dense"  # dense | double-sparsity | h2o (serving.attention.ATTENTION_BACKENDS)
    double_sparsity: DoubleSparsityConfig = field(default_factory=DoubleSparsityConfig)
    h2o: H2OConfig = field(default_factory=H2OConfig)
    prefix_cache: bool = True  # reuse the KV of shared prefixes (serving/radix_cache.py)
    schedule_policy: str = "lpm"  # "lpm": longest cached prefix first (fairness-bounded); "fcfs"
    # LoRA: adapters registered at start (name -> PEFT directory); more can be added at run time
    # when enable_lora is set. max_loras adapters sit on the device at once (their memory comes
    # out of the KV budget), each of rank <= max_lora_rank; the others wait in host memory.
    lora_adapters: dict[str, str] = field(default_factory=dict)
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 64
    lora_targets: tuple[str, ...] | None = None  # projections with device slots; None: all seven
    # Ranks the model is split across (one process each; rank r on cuda:r, or gloo on the CPU).
    tensor_parallel: int = 1
    # "safetensors": the checkpoint's weights; "dummy": random weights in the checkpoint's
    # config (benchmarks of 8B/70B configurations without their weights; outputs are noise).
    load_format: str = "safetensors"

    @property
    def lora_enabled(self) -> bool:
        return self.enable_lora or bool(self.lora_adapters)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype is None:
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)

    def sparse_options(self) -> object:
        """The chosen backend's settings; Double Sparsity's channel file defaults to the one
        ``arena-serve calibrate`` wrote into the model directory."""
        if self.attention_backend == "double-sparsity":
            settings = self.double_sparsity
            if settings.channels_path is None:
                settings = replace(settings, channels_path=str(Path(self.model_path) / CHANNELS_FILE))
            return settings
        if self.attention_backend == "h2o":
            return self.h2o
        return None

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
