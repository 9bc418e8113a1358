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

# ----------------------------------------------------------------------------- Triton interpreter tests

# What test_kernels.py's child pytest reported, for the summary line.
CHILD_RESULT = pytest.StashKey[str]()


def _interpreter_mode() -> bool:
    """As test_kernels.py decides it: TRITON_INTERPRET=1 from the start of the process."""
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside interpreter mode the ``triton_interpreter`` tests run in a child pytest
    (test_interpreted_kernels_in_subprocess): leave them out here instead of skipping each."""
    if _interpreter_mode():
        return
    in_child = [item for item in items if item.get_closest_marker("triton_interpreter")]
    if in_child:
        items[:] = [item for item in items if not item.get_closest_marker("triton_interpreter")]
        config.stash[CHILD_COUNT] = len(in_child)


CHILD_COUNT = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    count = config.stash.get(CHILD_COUNT, 0)
    if not count:
        return
    result = config.stash.get(CHILD_RESULT, "not run (test_interpreted_kernels_in_subprocess was deselected or failed)")
    terminalreporter.write_line(
        f"Triton-interpreter kernel tests: {count} ran in child pytests with TRITON_INTERPRET=1 (one per kernel "
        f"test file: test_kernels.py, test_sparse_kernels.py, test_lora_kernels.py), not in this one; "
        f"test_kernels.py's child: {result}")


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
