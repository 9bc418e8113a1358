"""KV memory: a token-slot pool (page size 1) and a request -> slot table, SGLang style.

Two plain objects over preallocated torch tensors:

* :class:`ReqToTokenPool` - one row per live request, ``req_to_token[row, i]`` is the KV slot
  of the request's ``i``-th KV entry (its token at position ``i`` unless a sparse backend dropped
  entries). The attention kernels read it directly.
* :class:`KVPool` - per layer ``k[num_slots, n_kv_heads, head_dim]`` and ``v`` of the same shape,
  plus a free-slot stack. Allocation pops ``n`` slots and freeing pushes them back, both O(n)
  tensor copies with no Python loop, and since a page is one token nothing is wasted beyond the
  tokens actually stored. The stack lives in host memory: a step's slots travel to the device
  together with its other inputs, in one copy (see ``serving/model_runner.py``).

Slot 0 is never handed out: it is the padding slot that padded batch entries (CUDA graph
buckets) write into and read from, so garbage there harms no request.

Who owns what: the scheduler allocates slots and request rows (host integers only); each
sequence keeps its slot ids on the host (``Sequence.kv_slots``); the prefix cache
(``serving/prefix_cache.py``) owns shared slots and frees them here on eviction; the attention
backend (``serving/attention.py``) is the only code that reads or writes the K/V tensors, the
``req_to_token`` table and any side table (:meth:`KVPool.add_side_table`: H2O's accumulated
attention ``[num_layers, num_slots]``, Double Sparsity's label cache
``[num_layers, num_slots, n_kv_heads, r]``, written at the same slots as K/V).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

PADDING_SLOT = 0


class OutOfSlotsError(RuntimeError):
    """Raised when an allocation asks for more slots or rows than are free."""


class ReqToTokenPool:
    """Rows of ``req_to_token[max_reqs, max_context]`` (int32) handed out to live requests."""

    def __init__(self, max_reqs: int, max_context: int, device: torch.device | str) -> None:
        self.req_to_token = torch.zeros((max_reqs, max_context), dtype=torch.int32, device=device)
        self._free_rows = list(range(max_reqs - 1, -1, -1))

    @property
    def num_free(self) -> int:
        """Rows not owned by any request."""
        return len(self._free_rows)

    def alloc(self) -> int:
        """Take one row; raise :class:`OutOfSlotsError` when none is free."""
        if not self._free_rows:
            raise OutOfSlotsError("no free request rows")
        return self._free_rows.pop()

    def free(self, row: int) -> None:
        """Give a row back."""
        self._free_rows.append(row)


class KVPool:
    """Per-layer K/V tensors over ``num_slots`` token slots and a stack of free slot ids."""

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        if num_slots < 2:
            raise ValueError("the KV pool needs at least 2 slots (slot 0 is padding)")
        shape = (num_slots, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots = num_slots
        self.device = torch.device(device)
        self.side_tables: dict[str, torch.Tensor] = {}
        # Free stack (host memory): entries [0, _top) are free slot ids; slot 0 (padding) is never in it.
        self._stack = torch.arange(1, num_slots, dtype=torch.int64)
        self._top = num_slots - 1

    @property
    def capacity(self) -> int:
        """Slots a request could ever get (all but the padding slot)."""
        return self.num_slots - 1

    @property
    def num_free(self) -> int:
        """Slots currently free."""
        return self._top

    def alloc(self, count: int) -> torch.Tensor:
        """Pop ``count`` free slot ids (int64 host tensor); raise :class:`OutOfSlotsError` if short."""
        if count > self._top:
            raise OutOfSlotsError(f"asked for {count} KV slots, {self._top} free")
        self._top -= count
        return self._stack[self._top : self._top + count].clone()

    def free(self, slots: torch.Tensor | Sequence[int]) -> None:
        """Push slot ids (host ints, or a host tensor) back onto the free stack."""
        count = slots.numel() if isinstance(slots, torch.Tensor) else len(slots)
        if count == 0:
            return
        if self._top + count > self.capacity:
            raise RuntimeError("freeing more KV slots than were allocated (double free)")
        values = (
            slots.to(torch.int64)
            if isinstance(slots, torch.Tensor)
            else torch.tensor(slots, dtype=torch.int64)
        )
        self._stack[self._top : self._top + count] = values
        self._top += count

    def add_side_table(self, name: str, per_slot_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Allocate a per-layer, per-slot side table (sparse-attention scores, label caches)."""
        table = torch.zeros((len(self.k), self.num_slots, *per_slot_shape), dtype=dtype, device=self.device)
        self.side_tables[name] = table
        return table

    def bytes_per_slot(self) -> int:
        """KV bytes one token occupies across all layers (K and V)."""
        return 2 * sum(t[0].numel() * t.element_size() for t in self.k)


def slots_for_memory(
    budget_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    """How many token slots fit in ``budget_bytes`` of K and V across all layers."""
    per_slot = 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
    return max(2, budget_bytes // per_slot)
