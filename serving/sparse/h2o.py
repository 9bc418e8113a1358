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
compacts the sequence's ``req_to_token`` row (the scheduler drops them from ``Sequence.kv_slots``
and frees them to the pool: :meth:`H2OBackend.eviction_plan`). Keys are stored with rotary applied, so evicting
never changes the remaining keys; new tokens keep their true positions (``ForwardBatch.positions``
comes from ``Sequence.num_computed``, the row length ``seq_lens`` from ``len(kv_slots)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from serving import kernels
from serving.attention import (
    AttentionLayer,
    DenseAttentionBackend,
    ForwardBatch,
    ForwardMode,
    rotary_and_store,
)
from serving.memory import KVPool, ReqToTokenPool
from serving.parallel import SINGLE, TensorParallel
from serving.sparse.settings import H2OConfig

if TYPE_CHECKING:
    from serving.scheduler import ScheduledBatch
    from serving.sequence import Sequence

MASS_TABLE = "h2o_mass"


class H2OBackend(DenseAttentionBackend):
    """Paged attention with H2O's attention-mass bookkeeping and per-sequence eviction.

    Decode steps may be CUDA-graph captured (the mass kernel's scratch is as wide as the slot
    table); the engine does not schedule ahead, since eviction changes a sequence's KV length
    between steps, and runs without the prefix cache, which would own (and share) the slots of
    a prompt that H2O must be free to evict.
    """

    supports_overlap = False
    supports_prefix_cache = False  # the cache would own the prompt's slots, which H2O must evict

    def __init__(
        self,
        kv_pool: KVPool,
        req_pool: ReqToTokenPool,
        model_config: object = None,
        options: H2OConfig | None = None,
        tp: TensorParallel = SINGLE,
    ) -> None:
        super().__init__(kv_pool, req_pool, model_config, options, tp)
        self.config = options or H2OConfig()
        self.mass = kv_pool.add_side_table(MASS_TABLE, (), torch.float32)

    def forward(
        self, layer: AttentionLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """Rotary + K/V store, exact attention; the keys it reads gain the mass they received."""
        layer_id = layer.layer_id
        k_cache, v_cache = self.kv_pool.k[layer_id], self.kv_pool.v[layer_id]
        q = rotary_and_store(layer, q, k, v, batch, k_cache, v_cache)
        mass = self.mass[layer_id]
        mass[batch.out_cache_loc] = 0.0  # a reused slot starts fresh
        if batch.mode is ForwardMode.DECODE:
            return kernels.h2o_decode_attention(
                q,
                k_cache,
                v_cache,
                self.req_to_token,
                batch.req_pool_indices,
                batch.seq_lens,
                layer.scale,
                mass,
            )
        kernels.extend_attention_mass_ref(
            q, k_cache, self.req_to_token, batch.req_pool_indices, batch.seq_lens, batch.extend_lens,
            batch.q_start, layer.scale, mass,
        )  # fmt: skip
        return kernels.extend_attention(
            q, k_cache, v_cache, self.req_to_token, batch.req_pool_indices, batch.seq_lens,
            batch.extend_lens, batch.q_start, layer.scale,
        )  # fmt: skip

    def eviction_plan(self, batch: ScheduledBatch) -> list[tuple[Sequence, tuple[int, int, int, int]]]:
        """Each sequence of the step over budget (and not opted out), with the arguments of its
        :meth:`evict`; the caller evicts, drops the rest from the sequence's slots and frees them."""
        plans = []
        for seq in batch.sequences:
            if seq.req_pool_idx is None or not seq.params.sparse_attention:
                continue
            if self.needs_eviction(seq.num_kv, seq.num_computed):
                plans.append((seq, (seq.req_pool_idx, seq.num_kv, seq.num_computed, seq.prefix.length)))
        return plans

    def needs_eviction(self, kv_len: int, length: int) -> bool:
        """Whether a sequence of ``length`` tokens holding ``kv_len`` entries is over budget + slack."""
        return kv_len > self.config.budget(length) + self.config.evict_slack

    def evict(self, row: int, kv_len: int, length: int, protected: int = 0) -> list[int]:
        """Choose which of request row ``row``'s ``kv_len`` entries (a sequence of ``length``
        tokens, whose first ``protected`` are shared and stay) are kept under the budget;
        compact the row to them, clear the mass of the others; return the kept indices."""
        budget = self.config.budget(length)
        if kv_len <= budget:
            return list(range(kv_len))
        slots = self.req_to_token[row, :kv_len].long()
        total = self.tp.all_reduce(self.mass[:, slots].sum(dim=0))  # every rank's heads: one choice
        keep = kernels.h2o_keep_positions(total, budget, self.config.recent(length), protected)
        dropped = torch.ones(kv_len, dtype=torch.bool, device=slots.device)
        dropped[keep] = False
        self.mass[:, slots[dropped]] = 0.0
        self.req_to_token[row, : keep.numel()] = slots[keep].to(self.req_to_token.dtype)
        return keep.tolist()
