"""H2O attention backend: exact attention that accumulates per-key attention mass, and eviction.

The KV pool gets a float32 side table ``mass[L, S]``: how much attention each slot's key has
received so far in each layer (summed over query heads). Every forward resets the new slots'
mass, then attends: prefill densely with the mass of the causal attention matrix added
(``kernels.extend_attention_mass_ref``), decode with ``kernels.h2o_decode_attention``, which
adds each step's probabilities in the same pass.

Slots are shared by all layers, so a token is evicted from every layer at once: its score is
its mass summed over layers. :meth:`H2OBackend.evict` keeps, for one sequence, the protected
prefix (slots shared with other requests through a prefix cache are never evicted), the most
recent tokens and the heavy hitters up to the budget, frees the other slots to the pool and
compacts the sequence's ``req_to_token`` row. Keys are stored with rotary applied, so evicting
never changes the remaining keys; new tokens keep their true positions (the caller passes them
in ``ForwardBatch.positions``, separate from the row length ``seq_lens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from serving import kernels
from serving.attention import AttentionBackend, ForwardBatch, ForwardMode
from serving.memory import KVPool

MASS_TABLE = "h2o_mass"


@dataclass(frozen=True)
class H2OConfig:
    """KV budget per sequence: ``budget_tokens`` if set, else ``budget_fraction`` of its length;
    ``recent_fraction`` of the budget is the recent window, the rest heavy hitters. Eviction runs
    when a sequence holds ``evict_slack`` entries more than its budget (amortising its cost)."""

    budget_fraction: float = 0.2
    budget_tokens: int | None = None
    recent_fraction: float = 0.5
    min_budget: int = 64
    evict_slack: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.budget_fraction <= 1 or not 0 <= self.recent_fraction <= 1:
            raise ValueError("budget_fraction must be in (0, 1] and recent_fraction in [0, 1]")
        if self.budget_tokens is not None and self.budget_tokens < 1:
            raise ValueError("budget_tokens must be >= 1")
        if self.min_budget < 1 or self.evict_slack < 0:
            raise ValueError("min_budget must be >= 1 and evict_slack >= 0")

    def budget(self, length: int) -> int:
        """KV entries a sequence of ``length`` tokens may keep."""
        if self.budget_tokens is not None:
            return self.budget_tokens
        return max(self.min_budget, math.ceil(self.budget_fraction * length))

    def recent(self, length: int) -> int:
        return math.ceil(self.recent_fraction * self.budget(length))


class H2OBackend(AttentionBackend):
    """Paged attention with H2O's attention-mass bookkeeping and per-sequence eviction."""

    def __init__(self, kv_pool: KVPool, req_to_token: torch.Tensor, config: H2OConfig) -> None:
        super().__init__(kv_pool, req_to_token)
        self.config = config
        self.mass = kv_pool.add_side_table(MASS_TABLE, (), torch.float32)

    def forward(self, layer_id: int, q: torch.Tensor, batch: ForwardBatch, scale: float) -> torch.Tensor:
        """Exact attention; the keys it reads gain the probability mass they received."""
        mass = self.mass[layer_id]
        mass[batch.out_cache_loc] = 0.0  # a reused slot starts fresh
        k_cache, v_cache = self.kv_cache(layer_id)
        if batch.mode is ForwardMode.DECODE:
            return kernels.h2o_decode_attention(
                q, k_cache, v_cache, self.req_to_token, batch.req_pool_indices, batch.seq_lens, scale, mass
            )
        kernels.extend_attention_mass_ref(
            q, k_cache, self.req_to_token, batch.req_pool_indices, batch.seq_lens, batch.extend_lens,
            batch.q_start, scale, mass,
        )  # fmt: skip
        return super().forward(layer_id, q, batch, scale)

    def needs_eviction(self, kv_len: int, length: int) -> bool:
        """Whether a sequence of ``length`` tokens holding ``kv_len`` entries is over budget + slack."""
        return kv_len > self.config.budget(length) + self.config.evict_slack

    def evict(self, row: int, kv_len: int, length: int, protected: int = 0) -> int:
        """Evict down to the budget the entries of request row ``row`` (``kv_len`` held, of a
        sequence of ``length`` tokens; the first ``protected`` are shared and stay); free their
        slots, compact the row; return the new number of entries."""
        budget = self.config.budget(length)
        if kv_len <= budget:
            return kv_len
        slots = self.req_to_token[row, :kv_len].long()
        total = self.mass[:, slots].sum(dim=0)
        keep = kernels.h2o_keep_positions(total, budget, self.config.recent(length), protected)
        dropped = torch.ones(kv_len, dtype=torch.bool, device=slots.device)
        dropped[keep] = False
        freed = slots[dropped]
        self.mass[:, freed] = 0.0
        self.req_to_token[row, : keep.numel()] = slots[keep].to(self.req_to_token.dtype)
        self.kv_pool.free(freed)
        return int(keep.numel())
