"""Fixtures of the serving tests: tiny random-weight checkpoints in Hugging Face format.

``demo_models_dir`` builds the three demo models once per session (a few seconds).
``tiny_checkpoint(family)`` writes a 2-layer random model of one architecture family with the
demo tokenizer, with settings the demo models do not cover (Llama 3.1 rope scaling, Qwen2 q/k/v
biases, Qwen3 tied embeddings and q/k norms, Mistral with one KV head).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from serving.demo_models import build_demo_models

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

_COMMON = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 512,
    "initializer_range": 0.1,
}
FAMILY_CONFIGS: dict[str, Callable[[int], object]] = {
    "llama": lambda vocab: LlamaConfig(
        vocab_size=vocab,
        num_key_value_heads=2,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        **_COMMON,
    ),
    "qwen2": lambda vocab: Qwen2Config(vocab_size=vocab, num_key_value_heads=2, **_COMMON),
    "qwen3": lambda vocab: Qwen3Config(
        vocab_size=vocab, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True, **_COMMON
    ),
    "mistral": lambda vocab: MistralConfig(
        vocab_size=vocab, num_key_value_heads=1, head_dim=16, sliding_window=None, **_COMMON
    ),
}


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo_models")
    build_demo_models(out)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(demo_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_checkpoint(family)`` -> directory of a seeded 2-layer random model (cached per family)."""
    built: dict[str, Path] = {}
    tokenizer_dir = demo_models_dir / "demo-llama-tiny"

    def make(family: str) -> Path:
        if family not in built:
            out = tmp_path_factory.mktemp(f"tiny-{family}")
            vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
            torch.manual_seed(1234)
            model = AutoModelForCausalLM.from_config(FAMILY_CONFIGS[family](vocab), dtype=torch.float32)
            model.save_pretrained(out)
            for name in TOKENIZER_FILES:
                shutil.copy(tokenizer_dir / name, out / name)
            built[family] = out
        return built[family]

    return make


@pytest.fixture(scope="session")
def lora_adapters(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random PEFT adapters (several ranks and targets) of ``tiny_checkpoint("llama")``."""
    pytest.importorskip("peft")
    from tests.serving.lora_fixtures import write_adapters

    return write_adapters(tiny_checkpoint("llama"), tmp_path_factory.mktemp("adapters"))
