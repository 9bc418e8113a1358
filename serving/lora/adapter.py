"""PEFT LoRA adapters read from a local directory and checked against the base model's shapes.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors``, as
``peft``'s ``save_pretrained`` writes them. Any rank (``r``, and per-module ``rank_pattern`` /
``alpha_pattern``), rsLoRA scaling, and any of the attention and MLP projections
(q/k/v/o/gate/up/down) of the decoder layers are supported. What cannot be served the way
PEFT would compute it is refused with :class:`AdapterError` naming the file: DoRA, trained
biases, ``modules_to_save``, embedding or LM-head adapters, weights of the wrong shape for the
base model, missing files.

The loaded adapter keeps ``lora_A`` and ``lora_B * scaling`` in host memory (pinned when CUDA
is present), ready to be paged into a GPU slot by :class:`~serving.lora.pool.AdapterPool`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from serving.models.llama import LORA_TARGETS, head_dim_of

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$"
)
# Features whose effect our batched kernels do not reproduce: refuse rather than serve wrong outputs.
_UNSUPPORTED = {
    "use_dora": "DoRA adapters",
    "modules_to_save": "modules_to_save (fully trained extra modules)",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D-style weights)",
    "target_parameters": "target_parameters",
    "trainable_token_indices": "trainable_token_indices",
}


class AdapterError(ValueError):
    """An adapter directory that cannot be served; the message names the offending file."""


@dataclass
class LoraAdapter:
    """One adapter's weights in host memory: ``(layer, module) -> (A [r, in], B * scaling [out, r])``."""

    name: str
    path: str
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    uid: int = 0  # set when registered: tells apart two registrations under one name

    @property
    def rank(self) -> int:
        """The largest rank over the adapted modules (what a GPU slot must hold)."""
        return max(a.shape[0] for a, _ in self.weights.values())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def projection_shapes(model_config) -> dict[str, tuple[int, int]]:
    """``module -> (in_features, out_features)`` of each adaptable projection of the base model."""
    hidden, inter = model_config.hidden_size, model_config.intermediate_size
    q = model_config.num_attention_heads * head_dim_of(model_config)
    kv = model_config.num_key_value_heads * head_dim_of(model_config)
    return {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def _read_config(path: Path) -> dict:
    file = path / CONFIG_FILE
    if not path.is_dir():
        raise AdapterError(f"{path}: not a directory (expected a PEFT adapter directory with {CONFIG_FILE})")
    if not file.is_file():
        raise AdapterError(f"{file}: missing (a PEFT adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise AdapterError(f"{file}: not valid JSON ({error})") from error
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"{file}: peft_type must be LORA, got {config.get('peft_type')!r}")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise AdapterError(f"{file}: {what} are not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{file}: trained biases (bias={config['bias']!r}) are not supported")
    if not isinstance(config.get("r"), int) or config["r"] <= 0 or "lora_alpha" not in config:
        raise AdapterError(f"{file}: needs a positive integer r and lora_alpha")
    return config


def _pattern_value(patterns: dict, module_path: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key matching the module path's end."""
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module_path):
            return value
    return default


def _scaling(config: dict, module_path: str, rank: int) -> float:
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module_path, config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        bin_file = file.with_name("adapter_model.bin")
        hint = f" ({bin_file.name} is there: re-save the adapter with safe_serialization)" if bin_file.exists() else ""
        raise AdapterError(f"{file}: missing{hint}")
    try:
        with safe_open(file, framework="pt") as reader:
            return {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise AdapterError(f"{file}: not a readable safetensors file ({error})") from error


def load_adapter(name: str, path: str | Path, model_config, dtype: torch.dtype) -> LoraAdapter:
    """Read and validate the adapter at ``path`` against the base model's ``model_config``."""
    path = Path(path)
    config = _read_config(path)
    file = path / WEIGHTS_FILE
    shapes = projection_shapes(model_config)
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in _read_tensors(file).items():
        match = _KEY.match(key)
        if match is None or match.group(2) not in LORA_TARGETS:
            raise AdapterError(f"{file}: unsupported tensor {key!r} (only LoRA on decoder projections)")
        layer, module = int(match.group(1)), match.group(2)
        if layer >= model_config.num_hidden_layers:
            raise AdapterError(f"{file}: {key} names layer {layer}; the base model has {model_config.num_hidden_layers}")
        parts.setdefault((layer, module), {})[match.group(3)] = tensor
    if not parts:
        raise AdapterError(f"{file}: holds no LoRA weights")
    pin = torch.cuda.is_available()
    weights = {}
    for (layer, module), pair in sorted(parts.items()):
        where = f"{file}: layers.{layer}.{module}"
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{where} has lora_{''.join(pair)} without its pair")
        a, b = pair["A"], pair["B"]
        in_features, out_features = shapes[module]
        rank = a.shape[0] if a.dim() == 2 else -1
        if a.shape != (rank, in_features) or b.shape != (out_features, rank):
            raise AdapterError(
                f"{where}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the base model's "
                f"{module} ({in_features} -> {out_features}); expected ({rank}, {in_features}) / ({out_features}, {rank})"
            )
        block = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        module_path = f"model.layers.{layer}.{block}.{module}"  # what PEFT's patterns match
        scaled_b = b.float() * _scaling(config, module_path, rank)
        a, scaled_b = a.to(dtype).contiguous(), scaled_b.to(dtype).contiguous()
        weights[(layer, module)] = (a.pin_memory(), scaled_b.pin_memory()) if pin else (a, scaled_b)
    adapter = LoraAdapter(name, str(path), weights)
    logger.info("loaded adapter %s from %s (rank %d, %d projections)", name, path, adapter.rank, len(weights))
    return adapter
