"""KV memory: a token-slot pool (page size 1) and a request -> slot table, SGLang style.

Two plain objects over preallocated torch tensors:

* :class:`ReqToTokenPool` - one row per live request, ``req_to_token[row, pos]`` is the KV slot
  holding that request's token at position ``pos``. The attention kernels read it directly.
* :class:`KVPool` - per layer ``k[num_slots, n_kv_heads, head_dim]`` and ``v`` of the same shape,
  plus a free-slot stack. Allocation pops ``n`` slots and freeing pushes them back, both O(n)
  tensor copies with no Python loop, and since a page is one token nothing is wasted beyond the
  tokens actually stored. The stack lives in host memory: a step's slots travel to the device
  together with its other inputs, in one copy (see ``serving/model_runner.py``).

Slot 0 is never handed out: it is the padding slot that padded batch entries (CUDA graph
buckets) write into and read from, so garbage there harms no request.

How later features plug in (kept in mind by this design, not implemented here):

* Radix prefix cache: slots are just integers, so a prefix tree can own slot runs and hand the
  same slots to several requests by copying them into their ``req_to_token`` rows. Ownership is
  then counted per tree node (a ref count per node, LRU eviction of unreferenced leaves); the
  pool itself stays a dumb allocator, and the cache calls :meth:`KVPool.free` on eviction. The
  scheduler's ``num_cached`` per request (tokens already in KV) is what a cache hit sets.
* Sparse attention (H2O, Double Sparsity): per-slot side tables indexed by slot, e.g. an
  accumulated-attention score ``[num_layers, num_slots]`` (H2O) or a label cache
  ``[num_layers, num_slots, n_kv_heads, r]`` (Double Sparsity) are allocated next to ``k``/``v``
  with :meth:`KVPool.add_side_table`, written at the same ``out_cache_loc`` as K/V, and read
  through the same ``req_to_token`` indirection; evicting a token is freeing its slot and
  compacting the request's row.
* Multi-LoRA: KV layout is adapter-independent; the adapter index travels per request in the
  forward batch, not in memory.
"""

from __future__ import annotations

import logging

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

    def free(self, slots: torch.Tensor) -> None:
        """Push slot ids (a tensor on any device) back onto the free stack."""
        count = slots.numel()
        if count == 0:
            return
        if self._top + count > self.capacity:
            raise RuntimeError("freeing more KV slots than were allocated (double free)")
        self._stack[self._top : self._top + count] = slots.to("cpu", torch.int64)
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
