"""Adapters of one served model: a host-memory store and a few GPU slots paged on demand.

Every registered adapter lives in host memory (:class:`~serving.lora.adapter.LoraAdapter`).
Only ``num_slots`` of them are on the device at a time, in the LoRA weights of the model's
linear layers (``LinearBase.create_lora_slots``); that memory is taken out of the same budget
as the KV cache (the engine sizes the KV pool after it). The scheduler :meth:`acquires
<AdapterPool.acquire>` a slot when it admits a request and :meth:`releases
<AdapterPool.release>` it when the request finishes or is preempted. An adapter without users
stays resident until its slot is needed (LRU); when every slot is in use, ``acquire`` returns
None and the request simply waits in the queue until a slot frees up - it never fails.

Under tensor parallelism the driver's pool reports each change (an adapter added or removed, one
paged into a slot) to ``on_change``; the engine sends it to every worker, whose own pool
:meth:`applies <AdapterPool.apply>` it to its shards of the slots.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from serving.lora.adapter import AdapterError, LoraAdapter, load_adapter
from serving.models.llama import LORA_TARGETS

ALL_TARGETS = tuple(LORA_TARGETS)

logger = logging.getLogger(__name__)


class AdapterInUseError(AdapterError):
    """An adapter that cannot be removed now: requests are still using it."""


class AdapterPool:
    """Host store of adapters + ``num_slots`` device slots with LRU eviction of idle ones."""

    def __init__(
        self, model, model_config, num_slots: int, max_rank: int, targets: tuple[str, ...] = ALL_TARGETS
    ) -> None:
        if num_slots < 1 or max_rank < 1:
            raise ValueError("an adapter pool needs at least one slot and a positive maximum rank")
        unknown = sorted(set(targets) - set(LORA_TARGETS))
        if unknown or not targets:
            raise ValueError(f"LoRA targets must be among {list(LORA_TARGETS)}; got {list(targets)}")
        self.model = model
        self.model_config = model_config
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.dtype = next(model.parameters()).dtype
        # Only the projections of ``targets`` get device slots (q|k|v is one layer: one of them
        # is enough to give it slots for all three).
        self.targets = frozenset(targets)
        layers = {
            id(layer): layer
            for layer_id in range(model_config.num_hidden_layers)
            for layer, _ in (model.lora_target(layer_id, module) for module in targets)
        }
        self._layers = list(layers.values())
        self.device_bytes = sum(layer.create_lora_slots(num_slots, max_rank) for layer in self._layers)
        self.adapters: dict[str, LoraAdapter] = {}
        self._slot_of: dict[str, int] = {}
        self._users: dict[str, int] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # resident without users, oldest first
        self._free_slots = list(range(num_slots - 1, -1, -1))
        self.num_loads = 0
        self.num_evictions = 0
        self._uids = itertools.count(1)
        self.on_change: Callable[[tuple], None] | None = None  # see the module docstring

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
        untargeted = sorted({module for _, module in adapter.weights} - self.targets)
        if untargeted:
            raise AdapterError(
                f"{adapter.path}: adapts {untargeted}, but this engine serves LoRA on {sorted(self.targets)} "
                "only (see --lora-targets)"
            )
        adapter.uid = next(self._uids)
        self.adapters[adapter.name] = adapter
        if self.on_change is not None:  # (serialized only for workers)
            self._report("add", serialize_adapter(adapter))
        return adapter

    def watch(self, on_change: Callable[[tuple], None]) -> None:
        """Report every change from now on to ``on_change``, after an ``"add"`` for each adapter
        already registered (a tensor-parallel driver's pool; see the module docstring)."""
        self.on_change = on_change
        for adapter in self.adapters.values():
            self._report("add", serialize_adapter(adapter))

    def _report(self, *event: object) -> None:
        if self.on_change is not None:
            self.on_change(event)

    def apply(self, event: tuple) -> None:
        """A worker's copy of a driver pool's change: ``("add", bytes)``, ``("remove", name)``
        or ``("load", name, slot)`` (the driver chose the slot; this rank fills its shard)."""
        kind, *args = event
        if kind == "add":
            adapter = deserialize_adapter(args[0])
            self.adapters[adapter.name] = adapter
        elif kind == "remove":
            self.adapters.pop(args[0], None)
        elif kind == "load":
            name, slot = args
            for other in [n for n, s in self._slot_of.items() if s == slot]:
                del self._slot_of[other]  # evicted on the driver
            self._load(name, slot)
        else:
            raise ValueError(f"unknown adapter pool event {kind!r}")

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
        self._report("remove", name)
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
        for layer in self._layers:
            layer.clear_lora(slot)
        for (layer_id, module), (a, b) in adapter.weights.items():
            target, part = self.model.lora_target(layer_id, module)
            target.load_lora(slot, part, a, b)
        self._slot_of[name] = slot
        self.num_loads += 1
        self._report("load", name, slot)
        logger.debug("paged adapter %s into slot %d", name, slot)


def serialize_adapter(adapter: LoraAdapter) -> bytes:
    """An adapter as bytes for a worker's pipe (torch's format: any dtype, bf16 included)."""
    buffer = io.BytesIO()
    torch.save(adapter, buffer)
    return buffer.getvalue()


def deserialize_adapter(data: bytes) -> LoraAdapter:
    """The adapter :func:`serialize_adapter` wrote (bytes from our own driver process)."""
    return torch.load(io.BytesIO(data), weights_only=False)
