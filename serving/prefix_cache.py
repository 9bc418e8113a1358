"""The prefix-cache interface the scheduler talks to, and the do-nothing cache used when it is off.

A prefix cache keeps the KV slots of token sequences that finished (or were preempted, or are
still running) so that a later request starting with the same tokens skips computing them. The
scheduler always goes through this interface; with the cache off it talks to
:class:`NoPrefixCache`, which keeps nothing, so there is one code path either way.

Ownership rules (the pool stays a plain allocator; each slot has exactly one owner):

* ``match_prefix(token_ids, extra_key)`` returns the longest cached prefix as a
  :class:`PrefixMatch` whose slots are *locked*: they cannot be evicted until ``release``.
  The caller puts them at the start of its own slot list and never frees them itself.
* ``insert(token_ids, slots, extra_key)`` offers the cache a sequence's KV (``token_ids[i]`` is
  stored at ``slots[i]``). The cache takes ownership of the first ``match.length`` slots of the
  returned locked match (all of them for a radix tree, none for the do-nothing cache); the rest
  stay the caller's to free. Where the cache already held the same tokens under other slots
  (two requests computed the same prefix at once), it frees the caller's duplicates to the pool
  and the returned match holds the cache's slots instead.
* ``release(match)`` unlocks a match (an empty match is fine).
* ``evictable_size()`` counts cached slots that no match locks; ``evict(n)`` frees at least
  ``n`` of them to the pool (fewer when there are not that many), least recently used first.

``extra_key`` namespaces the cache: requests share KV only with requests of the same key. The
engine passes the request's ``extra_key`` (multi-LoRA sets it to the adapter name, since the
same tokens under another adapter have other K/V; ``None`` for the base model).

A sequence whose KV entries no longer equal its computed tokens (a sparse backend dropped some:
its KV length is below its position) is never inserted; its own slots are freed instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from serving.memory import KVPool

ExtraKey = Hashable | None


@dataclass(frozen=True)
class PrefixMatch:
    """A locked run of cached KV slots: ``slots[i]`` holds the K/V of the matched token ``i``.

    ``handle`` is the cache's own reference (a tree node) used to unlock; callers never look
    inside it.
    """

    slots: tuple[int, ...] = ()
    handle: object = field(default=None, compare=False)

    @property
    def length(self) -> int:
        return len(self.slots)


EMPTY_MATCH = PrefixMatch()


class PrefixCache(Protocol):
    """What the scheduler asks of a prefix cache (see the module docstring for ownership)."""

    def match_prefix(self, token_ids: Sequence[int], extra_key: ExtraKey = None) -> PrefixMatch:
        """The longest cached prefix of ``token_ids`` under ``extra_key``, locked."""
        ...

    def insert(
        self, token_ids: Sequence[int], slots: Sequence[int], extra_key: ExtraKey = None
    ) -> PrefixMatch:
        """Offer the KV of ``token_ids`` (at ``slots``); return a locked match over what the
        cache now owns, a prefix of ``token_ids``."""
        ...

    def release(self, match: PrefixMatch) -> None:
        """Unlock a match returned by :meth:`match_prefix` or :meth:`insert`."""
        ...

    def evictable_size(self) -> int:
        """Cached slots that no match locks (what :meth:`evict` could free)."""
        ...

    def evict(self, num_slots: int) -> int:
        """Free at least ``num_slots`` unlocked slots to the pool if there are that many;
        return how many were freed."""
        ...

    def total_size(self) -> int:
        """All slots the cache owns, locked or not (pool accounting: free + sequences' own +
        this = capacity)."""
        ...

    def prefix_length(self, token_ids: Sequence[int], extra_key: ExtraKey = None) -> int:
        """Length of the longest cached prefix, without locking or touching anything (for
        ordering the queue)."""
        ...


class NoPrefixCache:
    """The cache when prefix caching is off: matches nothing, keeps nothing."""

    def __init__(self, kv_pool: KVPool | None = None) -> None:
        self.kv_pool = kv_pool

    def match_prefix(self, token_ids: Sequence[int], extra_key: ExtraKey = None) -> PrefixMatch:
        return EMPTY_MATCH

    def insert(
        self, token_ids: Sequence[int], slots: Sequence[int], extra_key: ExtraKey = None
    ) -> PrefixMatch:
        return EMPTY_MATCH  # the caller keeps (and frees) every slot

    def release(self, match: PrefixMatch) -> None:
        return None

    def evictable_size(self) -> int:
        return 0

    def evict(self, num_slots: int) -> int:
        return 0

    def total_size(self) -> int:
        return 0

    def prefix_length(self, token_ids: Sequence[int], extra_key: ExtraKey = None) -> int:
        return 0
