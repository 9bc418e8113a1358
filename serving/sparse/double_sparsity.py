"""Double Sparsity attention backend: label cache + top-k tokens + exact attention over them.

Prefill (extend) attention is dense. Every forward also copies the heavy channels of the new
keys into the label cache (``labels[L, S, Hkv, R]``, a side table of the KV pool written at the
same slots as K/V), so the labels of every cached token exist when decode needs them. A decode
step whose longest request is below ``dense_below`` tokens runs the dense kernel (greedy output
is then exactly dense attention's); above it, per layer:

1. label scores of every cached position from q's heavy channels (``kernels.label_scores``);
2. the ``K`` best positions per request and KV head (``kernels.select_tokens``), ``K`` = sink +
   recent + heavy tokens, heavy = ``max(min_tokens, token_fraction * longest)``;
3. exact attention over those positions only (``kernels.gathered_decode_attention``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from serving import kernels
from serving.attention import AttentionBackend, ForwardBatch, ForwardMode
from serving.memory import KVPool

LABELS_TABLE = "double_sparsity_labels"


@dataclass(frozen=True)
class DoubleSparsityConfig:
    """Sparsity settings (defaults: the paper's 1/8 channels of 128 and 1/16 of the tokens)."""

    heavy_channels: int = 16
    token_fraction: float = 1 / 16
    min_tokens: int = 256
    sink: int = 16
    recent: int = 64
    dense_below: int = 2048  # decode steps whose longest context is shorter run dense

    def __post_init__(self) -> None:
        if self.heavy_channels < 1 or not 0 < self.token_fraction <= 1:
            raise ValueError("heavy_channels must be >= 1 and token_fraction in (0, 1]")
        if min(self.min_tokens, self.sink, self.recent, self.dense_below) < 0:
            raise ValueError("min_tokens, sink, recent and dense_below must be >= 0")

    def selected_tokens(self, context: int) -> int:
        """``K``: positions kept per KV head for a batch whose longest context is ``context``."""
        heavy = max(self.min_tokens, math.ceil(self.token_fraction * context))
        return min(context, self.sink + self.recent + heavy)

    def is_sparse(self, context: int) -> bool:
        """Whether a decode step with this longest context uses the sparse path."""
        return context >= self.dense_below and self.selected_tokens(context) < context


class DoubleSparsityBackend(AttentionBackend):
    """Paged attention with Double Sparsity at decode; ``channels[L, Hkv, R]`` from calibration."""

    def __init__(
        self,
        kv_pool: KVPool,
        req_to_token: torch.Tensor,
        channels: torch.Tensor,
        config: DoubleSparsityConfig,
    ) -> None:
        super().__init__(kv_pool, req_to_token)
        num_layers, num_kv_heads, num_channels = channels.shape
        k0 = kv_pool.k[0]
        if (num_layers, num_kv_heads) != (len(kv_pool.k), k0.shape[1]) or num_channels > k0.shape[2]:
            raise ValueError(
                f"channels {tuple(channels.shape)} do not fit the KV pool "
                f"({len(kv_pool.k)} layers, {k0.shape[1]} KV heads, head dim {k0.shape[2]})"
            )
        self.config = config
        self.channels = channels.to(device=kv_pool.device, dtype=torch.int32).contiguous()
        self.labels = kv_pool.add_side_table(LABELS_TABLE, (num_kv_heads, num_channels), k0.dtype)
        self._step: tuple[ForwardBatch, int] | None = None  # (batch, longest context) of this step

    def _longest(self, batch: ForwardBatch) -> int:
        """The step's longest context (one host read per step, not per layer)."""
        if self._step is None or self._step[0] is not batch:
            self._step = (batch, int(batch.seq_lens.max().item()) if batch.seq_lens.numel() else 0)
        return self._step[1]

    def forward(self, layer_id: int, q: torch.Tensor, batch: ForwardBatch, scale: float) -> torch.Tensor:
        """Store the new keys' labels, then dense (extend, short) or sparse (long decode) attention."""
        k_cache, v_cache = self.kv_cache(layer_id)
        kernels.store_labels(k_cache, self.labels[layer_id], self.channels[layer_id], batch.out_cache_loc)
        if batch.mode is not ForwardMode.DECODE:
            return super().forward(layer_id, q, batch, scale)
        longest = self._longest(batch)
        if not self.config.is_sparse(longest):
            return super().forward(layer_id, q, batch, scale)
        scores = kernels.label_scores(
            q, self.labels[layer_id], self.channels[layer_id], self.req_to_token, batch.req_pool_indices,
            batch.seq_lens, longest, self.config.sink, self.config.recent,
        )  # fmt: skip
        positions = kernels.select_tokens(scores, self.config.selected_tokens(longest))
        return kernels.gathered_decode_attention(
            q, k_cache, v_cache, self.req_to_token, batch.req_pool_indices, batch.seq_lens, positions, scale
        )
