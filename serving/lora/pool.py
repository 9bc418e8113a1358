"""Adapters of one served model: a host-memory store and a few GPU slots paged on demand.

Every registered adapter lives in host memory (:class:`~serving.lora.adapter.LoraAdapter`).
Only ``num_slots`` of them are on the device at a time, in the LoRA weights of the model's
linear layers (``LinearBase.create_lora_slots``); that memory is taken out of the same budget
as the KV cache (the engine sizes the KV pool after it). The scheduler :meth:`acquires
<AdapterPool.acquire>` a slot when it admits a request and :meth:`releases
<AdapterPool.release>` it when the request finishes or is preempted. An adapter without users
stays resident until its slot is needed (LRU); when every slot is in use, ``acquire`` returns
None and the request simply waits in the queue until a slot frees up - it never fails.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from pathlib import Path

import torch

from serving.lora.adapter import AdapterError, LoraAdapter, load_adapter, projection_shapes

logger = logging.getLogger(__name__)


class AdapterInUseError(AdapterError):
    """An adapter that cannot be removed now: requests are still using it."""


class AdapterPool:
    """Host store of adapters + ``num_slots`` device slots with LRU eviction of idle ones."""

    def __init__(self, model, model_config, num_slots: int, max_rank: int) -> None:
        if num_slots < 1 or max_rank < 1:
            raise ValueError("an adapter pool needs at least one slot and a positive maximum rank")
        self.model = model
        self.model_config = model_config
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.dtype = next(model.parameters()).dtype
        self.device_bytes = sum(layer.create_lora_slots(num_slots, max_rank) for layer in model.linear_layers())
        self.adapters: dict[str, LoraAdapter] = {}
        self._slot_of: dict[str, int] = {}
        self._users: dict[str, int] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # resident without users, oldest first
        self._free_slots = list(range(num_slots - 1, -1, -1))
        self.num_loads = 0
        self.num_evictions = 0
        self._uids = itertools.count(1)

    @staticmethod
    def slot_bytes(model_config, max_rank: int, dtype: torch.dtype) -> int:
        """Device bytes of one slot for ``model_config`` (to size the KV budget before building)."""
        # Each sub-projection has its own rank block of A; B spans the fused output once.
        per_layer = sum(max_rank * (fan_in + fan_out) for fan_in, fan_out in projection_shapes(model_config).values())
        element = torch.empty((), dtype=dtype).element_size()
        return per_layer * model_config.num_hidden_layers * element

    # ----- the host store -----------------------------------------------------------------

    def register(self, name: str, path: str | Path) -> LoraAdapter:
        """Read, validate and store the adapter at ``path`` under ``name``."""
        return self.add(load_adapter(self._check_name(name), path, self.model_config, self.dtype))

    def add(self, adapter: LoraAdapter) -> LoraAdapter:
        """Store an already-loaded adapter (benchmarks build them in memory)."""
        self._check_name(adapter.name)
        if adapter.rank > self.max_rank:
            raise AdapterError(
                f"{adapter.path}: rank {adapter.rank} exceeds the engine's maximum LoRA rank {self.max_rank} "
                "(start it with a larger --max-lora-rank)"
            )
        adapter.uid = next(self._uids)
        self.adapters[adapter.name] = adapter
        return adapter

    def _check_name(self, name: str) -> str:
        if not name or ":" in name or "/" in name:
            raise AdapterError(f"bad adapter name {name!r}: use letters, digits, '-', '_' or '.'")
        if name in self.adapters:
            raise AdapterError(f"an adapter named {name!r} is already registered")
        return name

    def unregister(self, name: str) -> None:
        """Forget an adapter; refused while requests use it (they would lose their weights)."""
        if name not in self.adapters:
            raise KeyError(name)
        if self._users.get(name):
            raise AdapterInUseError(f"adapter {name!r} is in use by {self._users[name]} request(s); retry later")
        slot = self._slot_of.pop(name, None)
        if slot is not None:
            self._idle.pop(name, None)
            self._free_slots.append(slot)
        del self.adapters[name]
        logger.info("unregistered adapter %s", name)

    def __contains__(self, name: object) -> bool:
        return name in self.adapters

    def names(self) -> list[str]:
        return sorted(self.adapters)

    # ----- device slots ---------------------------------------------------------------------

    def acquire(self, name: str) -> int | None:
        """The device slot holding ``name`` for one more user, paging it in if needed; None
        when every slot is held by running requests (the caller retries later)."""
        slot = self._slot_of.get(name)
        if slot is None:
            slot = self._take_slot()
            if slot is None:
                return None
            self._load(name, slot)
        self._idle.pop(name, None)
        self._users[name] = self._users.get(name, 0) + 1
        return slot

    def release(self, name: str) -> None:
        """One user of ``name`` is done; without users it becomes evictable (most recent last)."""
        users = self._users[name] - 1
        if users:
            self._users[name] = users
            return
        del self._users[name]
        if name in self._slot_of:
            self._idle[name] = None

    def is_resident(self, name: str) -> bool:
        return name in self._slot_of

    def _take_slot(self) -> int | None:
        if self._free_slots:
            return self._free_slots.pop()
        if not self._idle:
            return None
        victim, _ = self._idle.popitem(last=False)
        self.num_evictions += 1
        logger.debug("evicted adapter %s from its slot", victim)
        return self._slot_of.pop(victim)

    def _load(self, name: str, slot: int) -> None:
        """Copy ``name``'s host weights into ``slot`` of every projection (zeros where it has none)."""
        adapter = self.adapters[name]
        for layer in self.model.linear_layers():
            layer.clear_lora(slot)
        for (layer_id, module), (a, b) in adapter.weights.items():
            target, part = self.model.lora_target(layer_id, module)
            target.load_lora(slot, part, a, b)
        self._slot_of[name] = slot
        self.num_loads += 1
        logger.debug("paged adapter %s into slot %d", name, slot)
