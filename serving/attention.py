"""The attention interface models call, and the per-step batch description it reads.

A model never sees the scheduler: each forward gets a :class:`ForwardBatch` (flat token rows
plus per-request metadata) and an :class:`AttentionBackend`. The backend writes the new tokens'
K/V into the :class:`~serving.memory.KVPool` at ``out_cache_loc`` and runs paged attention
through ``serving.kernels`` (Triton on CUDA, PyTorch reference on CPU).

Sparse attention (H2O, Double Sparsity) plugs in as another backend with the same ``forward``
signature that also updates its per-slot side tables; multi-LoRA adds per-request adapter
indices to :class:`ForwardBatch`, not to the backend.
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

    def forward(
        self,
        layer_id: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        """Store k/v ``[T, Hkv, D]`` at the batch's slots, attend with q ``[T, Hq, D]``."""
        k_cache, v_cache = self.kv_pool.k[layer_id], self.kv_pool.v[layer_id]
        k_cache[batch.out_cache_loc] = k.to(k_cache.dtype)
        v_cache[batch.out_cache_loc] = v.to(v_cache.dtype)
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
