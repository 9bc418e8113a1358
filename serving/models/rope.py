"""Rotary embedding tables from a transformers config (all rope types transformers knows)."""

from __future__ import annotations

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


def _rope_parameters(config) -> dict:
    """The config's rope settings as one dict (transformers 5 ``rope_parameters``, or older keys)."""
    params = getattr(config, "rope_parameters", None)
    if params:
        return dict(params)
    legacy = dict(getattr(config, "rope_scaling", None) or {})
    legacy.setdefault("rope_type", legacy.pop("type", "default"))
    legacy.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return legacy


def inverse_frequencies(config, head_dim: int) -> tuple[torch.Tensor, float]:
    """``(inv_freq[head_dim/2], attention_scaling)`` exactly as transformers computes them."""
    params = _rope_parameters(config)
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params["rope_theta"]
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        return inv_freq, 1.0
    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"unsupported rope type {rope_type!r}")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


def build_cos_sin_cache(config, head_dim: int, max_positions: int, device) -> torch.Tensor:
    """fp32 ``[max_positions, head_dim]`` table: cos of the frequencies, then their sin."""
    inv_freq, scaling = inverse_frequencies(config, head_dim)
    positions = torch.arange(max_positions, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    return (torch.cat((angles.cos(), angles.sin()), dim=-1) * scaling).to(device)
