"""Random PEFT LoRA adapters of the tiny test models, written with ``peft`` itself."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

# name -> LoraConfig keywords: several ranks, target sets, rsLoRA and per-module patterns.
ADAPTER_SPECS: dict[str, dict] = {
    "all-r8": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
    "qv-r4": {"r": 4, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]},
    "mlp-r16-rslora": {"r": 16, "lora_alpha": 8, "use_rslora": True, "target_modules": ["gate_proj", "up_proj", "down_proj"]},
    "patterns": {
        "r": 8,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "o_proj", "down_proj"],
        "rank_pattern": {"o_proj": 2},
        "alpha_pattern": {"down_proj": 24},
        "layers_to_transform": [1],
    },
}


def write_adapter(base_dir: Path, out: Path, spec: dict, seed: int) -> Path:
    """Save a randomly initialised (non-zero B) LoRA adapter of the model at ``base_dir``."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, **spec))
    with torch.no_grad():  # make the deltas large enough to change greedy tokens
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(3.0)
    model.save_pretrained(out)
    return out


def write_adapters(base_dir: Path, root: Path) -> dict[str, Path]:
    """All of :data:`ADAPTER_SPECS` under ``root``; name -> directory."""
    return {
        name: write_adapter(base_dir, root / name, spec, seed)
        for seed, (name, spec) in enumerate(ADAPTER_SPECS.items())
    }
