"""Builders of random paged-KV batches, shared by the kernel tests and the kernel benchmark.

A batch scatters each request's tokens over random slots of the pool and places the requests
in shuffled rows of a slot table that is wider than needed (so rows are strided views and
entries past a request's length hold garbage), which is what the engine's pool looks like
after some churn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PagedBatch:
    """Inputs of the paged attention ops; ``extend_lens``/``q_start`` are set for extend batches."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    req_to_token: torch.Tensor
    req_pool_indices: torch.Tensor
    seq_lens: torch.Tensor
    extend_lens: torch.Tensor
    q_start: torch.Tensor
    scale: float

    def decode_args(self) -> tuple:
        """Positional arguments of ``decode_attention``."""
        return (
            self.q,
            self.k_cache,
            self.v_cache,
            self.req_to_token,
            self.req_pool_indices,
            self.seq_lens,
            self.scale,
        )

    def extend_args(self) -> tuple:
        """Positional arguments of ``extend_attention``."""
        return (
            self.q, self.k_cache, self.v_cache, self.req_to_token, self.req_pool_indices,
            self.seq_lens, self.extend_lens, self.q_start, self.scale,
        )  # fmt: skip


def _slot_table(seq_lens: list[int], num_slots: int, generator: torch.Generator, device: str) -> tuple:
    """Scatter requests over random pool slots; return (strided table view, row per request)."""
    batch, width = len(seq_lens), max(seq_lens) + 7
    storage = torch.full((batch + 3, width + 5), -1, dtype=torch.int32)
    table = storage[:, 2 : 2 + width]
    rows = torch.randperm(batch + 3, generator=generator)[:batch]
    slots = torch.randperm(num_slots, generator=generator).to(torch.int32)
    used = 0
    for row, length in zip(rows.tolist(), seq_lens, strict=True):
        table[row, :length] = slots[used : used + length]
        used += length
    strided_view = storage.to(device)[:, 2 : 2 + width]  # row stride != width
    return strided_view, rows.to(device=device, dtype=torch.int64)


def make_paged_batch(
    seq_lens: list[int],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    extend_lens: list[int] | None = None,
    seed: int = 0,
) -> PagedBatch:
    """A random batch: decode (one query per request) or, with ``extend_lens``, extend.

    Query rows are a strided view (a slice of a fused qkv-like buffer) and extend batches
    leave a gap between requests' tokens, so kernels must honour strides and ``q_start``.
    """
    generator = torch.Generator().manual_seed(seed)
    num_slots = sum(seq_lens) + 64
    req_to_token, req_pool_indices = _slot_table(seq_lens, num_slots, generator, device)

    values = torch.Generator(device=device).manual_seed(seed)  # drawn on the device: large pools

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=values, device=device, dtype=torch.float32).to(dtype)

    k_cache, v_cache = randn(num_slots, num_kv_heads, head_dim), randn(num_slots, num_kv_heads, head_dim)
    query_counts = extend_lens if extend_lens is not None else [1] * len(seq_lens)
    starts, cursor = [], 0
    for count in query_counts:
        starts.append(cursor)
        cursor += count + (1 if extend_lens is not None else 0)
    fused = randn(max(cursor, 1), num_q_heads + 2, head_dim)
    return PagedBatch(
        q=fused[:cursor, 1 : 1 + num_q_heads],
        k_cache=k_cache,
        v_cache=v_cache,
        req_to_token=req_to_token,
        req_pool_indices=req_pool_indices,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=device),
        extend_lens=torch.tensor(query_counts, dtype=torch.int64, device=device),
        q_start=torch.tensor(starts, dtype=torch.int64, device=device),
        scale=head_dim**-0.5,
    )
