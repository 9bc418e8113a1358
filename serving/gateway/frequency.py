"""Online popularity estimates for the cache's frequency-based policies.

Counts every lookup (hits and misses, so a query is known to be popular before it is cached), over a
sliding window: once ``window`` lookups have been counted, every count is halved and zeros dropped
(TinyLFU's reset). Counts therefore follow a popularity that drifts, and the table holds at most
about ``window`` keys. ``p(q)`` in the paper's least-expected-cost rule is ``count(q) / total``;
the policies only compare entries, so they use the count itself.
"""

from __future__ import annotations


class WindowedCounter:
    """Per-key lookup counts, halved every ``window`` lookups."""

    def __init__(self, window: int = 100_000):
        if window < 2:
            raise ValueError(f"the frequency window must be at least 2 lookups, got {window}")
        self.window = window
        self.total = 0
        self._counts: dict[str, int] = {}

    def record(self, key: str) -> bool:
        """Count one lookup of ``key``; True if this lookup triggered the halving of all counts."""
        self._counts[key] = self._counts.get(key, 0) + 1
        self.total += 1
        if self.total < self.window:
            return False
        self._counts = {k: c // 2 for k, c in self._counts.items() if c > 1}
        self.total //= 2
        return True

    def count(self, key: str) -> int:
        return self._counts.get(key, 0)

    def probability(self, key: str) -> float:
        """The estimated share of traffic that asks for ``key``."""
        return self.count(key) / self.total if self.total else 0.0

    def __len__(self) -> int:
        return len(self._counts)
