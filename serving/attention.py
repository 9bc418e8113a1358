"""The attention interface models call, and the per-step batch description it reads.

A model never sees the scheduler: each forward gets a :class:`ForwardBatch` (flat token rows
plus per-request metadata) and an :class:`AttentionBackend`. A layer first writes its new
tokens' K/V into the backend's :meth:`~AttentionBackend.kv_cache` at ``out_cache_loc`` (fused
with rotary: ``kernels.rotary_store_kv``), then calls :meth:`~AttentionBackend.forward`, which
runs paged attention through ``serving.kernels`` (Triton on CUDA, PyTorch reference on CPU).

Sparse attention (H2O, Double Sparsity) plugs in as another backend with the same two methods,
whose ``forward`` also updates its per-slot side tables (the new keys are in the cache by then);
multi-LoRA adds per-request adapter indices to :class:`ForwardBatch`, not to the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from serving import kernels
from serving.memory import KVPool


class ForwardMode(Enum):
    """Decode: exactly one new token per request. Extend: any number (prefill, chunks, decodes)."""

    EXTEND = "extend"
    DECODE = "decode"


@dataclass
class ForwardBatch:
    """One model step over ``T`` new tokens belonging to ``B`` requests.

    Tensors live on the model's device. Request ``b``'s new tokens are rows
    ``q_start[b] : q_start[b] + extend_lens[b]``; ``seq_lens[b]`` counts its tokens in KV
    after this step, ``req_pool_indices[b]`` is its ``req_to_token`` row. ``logits_indices``
    picks the rows whose next-token logits are needed (the last new token of each request that
    samples).
    """

    mode: ForwardMode
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    out_cache_loc: torch.Tensor  # [T] int64, KV slot of each new token
    req_pool_indices: torch.Tensor  # [B] int64
    seq_lens: torch.Tensor  # [B] int64
    extend_lens: torch.Tensor  # [B] int64
    q_start: torch.Tensor  # [B] int64
    logits_indices: torch.Tensor  # [N] int64


class AttentionBackend:
    """Paged attention over a :class:`KVPool` and a ``req_to_token`` table."""

    def __init__(self, kv_pool: KVPool, req_to_token: torch.Tensor) -> None:
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token

    def kv_cache(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer_id``'s ``(k_cache, v_cache)``, each ``[num_slots, Hkv, D]``."""
        return self.kv_pool.k[layer_id], self.kv_pool.v[layer_id]

    def forward(self, layer_id: int, q: torch.Tensor, batch: ForwardBatch, scale: float) -> torch.Tensor:
        """Attend with q ``[T, Hq, D]`` over each request's cached tokens (the new ones included)."""
        k_cache, v_cache = self.kv_cache(layer_id)
        if batch.mode is ForwardMode.DECODE:
            return kernels.decode_attention(
                q, k_cache, v_cache, self.req_to_token, batch.req_pool_indices, batch.seq_lens, scale
            )
        return kernels.extend_attention(
            q,
            k_cache,
            v_cache,
            self.req_to_token,
            batch.req_pool_indices,
            batch.seq_lens,
            batch.extend_lens,
            batch.q_start,
            scale,
        )
