"""The response cache: what an entry holds, the backend interface, and the in-memory backend.

Both backends (this one, embedded, and :mod:`serving.gateway.redis_cache`, shared by several gateway
processes) keep the same rules: every lookup is counted by the online frequency estimate; a stored
answer gets a score from its policy (:mod:`serving.gateway.policies`); when the cache holds more
than ``max_entries`` entries or ``max_bytes`` bytes, the lowest-scored entries are evicted, which may
be the new entry itself (a one-off answer is not admitted over more valuable ones).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from dataclasses import dataclass
from typing import Protocol

from serving.gateway.frequency import WindowedCounter
from serving.gateway.policies import Policy, score


@dataclass(frozen=True)
class CacheLimits:
    """The cache's size limits (both apply) and its policy."""

    policy: Policy = Policy.LEC
    max_entries: int = 10_000
    max_bytes: int = 256 * 2**20
    frequency_window: int = 100_000

    def __post_init__(self) -> None:
        if self.max_entries < 1 or self.max_bytes < 1:
            raise ValueError("cache limits must be positive (max_entries >= 1, max_bytes >= 1)")


@dataclass(frozen=True)
class CachedAnswer:
    """A stored answer: the real model that produced it, the response body, and what it cost."""

    key: str
    model: str
    payload: bytes
    cost: float

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass
class CacheStats:
    entries: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    rejected: int = 0


class ResponseCache(Protocol):
    """What the gateway needs from a cache backend (calls are blocking; the server runs them in threads)."""

    limits: CacheLimits

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer, or None; either way the lookup counts toward the key's frequency."""

    def put(self, answer: CachedAnswer) -> bool:
        """Store ``answer`` and evict down to the limits; False if the answer itself was evicted
        (or is larger than the whole cache, which then evicts nothing)."""

    def peek(self, key: str) -> CachedAnswer | None:
        """The stored answer without counting a lookup (for the similarity index)."""

    def stats(self) -> CacheStats: ...

    def clear(self) -> None: ...


@dataclass
class _Entry:
    answer: CachedAnswer
    score: float
    clock: int


class MemoryCache:
    """The embedded backend: a dict of entries plus a lazily cleaned min-heap of scores (thread-safe)."""

    def __init__(self, limits: CacheLimits | None = None):
        self.limits = limits or CacheLimits()
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._entries: dict[str, _Entry] = {}
            self._heap: list[tuple[float, int, str]] = []
            self._order = itertools.count()
            self._frequency = WindowedCounter(self.limits.frequency_window)
            self._clock = 0
            self._inflation = 0.0
            self._bytes = 0
            self._stats = CacheStats()

    # -- the interface -----------------------------------------------------------------------
    def get(self, key: str) -> CachedAnswer | None:
        with self._lock:
            self._count(key)
            entry = self._entries.get(key)
            if entry is None:
                self._stats.misses += 1
                return None
            self._stats.hits += 1
            self._rescore(key, entry)
            return entry.answer

    def peek(self, key: str) -> CachedAnswer | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry.answer if entry else None

    def put(self, answer: CachedAnswer) -> bool:
        with self._lock:
            if answer.size > self.limits.max_bytes:  # could only be stored by emptying the cache, then not fit
                self._stats.rejected += 1
                return False
            old = self._entries.pop(answer.key, None)
            if old is not None:
                self._bytes -= old.answer.size
            entry = _Entry(answer, 0.0, 0)
            self._entries[answer.key] = entry
            self._bytes += answer.size
            self._rescore(answer.key, entry)
            self._evict_to_limits()
            admitted = answer.key in self._entries
            if not admitted:
                self._stats.rejected += 1
            return admitted

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._entries), self._bytes, self._stats.hits, self._stats.misses,
                              self._stats.evictions, self._stats.rejected)

    def frequency(self, key: str) -> int:
        """The current frequency estimate of ``key`` (for tests and the simulation)."""
        with self._lock:
            return self._frequency.count(key)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # -- internals (called with the lock held) ------------------------------------------------
    def _count(self, key: str) -> None:
        if self._frequency.record(key) and self.limits.policy.uses_frequency:
            self._rescore_all()

    def _rescore(self, key: str, entry: _Entry) -> None:
        self._clock += 1
        entry.clock = self._clock
        entry.score = score(
            self.limits.policy, clock=self._clock, frequency=self._frequency.count(key),
            cost=entry.answer.cost, size=entry.answer.size, inflation=self._inflation,
        )
        heapq.heappush(self._heap, (entry.score, next(self._order), key))
        if len(self._heap) > 4 * len(self._entries) + 64:
            self._rebuild_heap()

    def _rescore_all(self) -> None:
        """After the frequency counts were halved: every frequency-based score changes."""
        for key, entry in self._entries.items():
            entry.score = score(
                self.limits.policy, clock=entry.clock, frequency=self._frequency.count(key),
                cost=entry.answer.cost, size=entry.answer.size, inflation=self._inflation,
            )
        self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = [(e.score, next(self._order), k) for k, e in self._entries.items()]
        heapq.heapify(self._heap)

    def _evict_to_limits(self) -> None:
        limits = self.limits
        while self._entries and (len(self._entries) > limits.max_entries or self._bytes > limits.max_bytes):
            entry_score, _, key = heapq.heappop(self._heap)
            entry = self._entries.get(key)
            if entry is None or entry.score != entry_score:
                continue  # a stale heap item: the entry was rescored or removed since
            del self._entries[key]
            self._bytes -= entry.answer.size
            self._stats.evictions += 1
            if limits.policy is Policy.GDSF:
                self._inflation = entry_score
