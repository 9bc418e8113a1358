"""Cache replacement policies: each gives an entry a score; the lowest score is evicted first.

* ``lru``  - last access time (a logical clock).
* ``lfu``  - estimated request frequency ``n(q)`` (see :mod:`serving.gateway.frequency`).
* ``gdsf`` - Greedy-Dual-Size-Frequency: ``L + n(q) * cost(q) / size(q)``, where the inflation ``L``
  is the score of the last evicted entry, so entries that stop being asked for age out.
* ``lec``  - the paper's least expected cost: ``p(q) * cost(q)``, the cost the cache expects to save
  per request by holding ``q``; ``p`` is learned online, so ``n(q) * cost(q)`` orders the same way.

``cost(q)`` is what answering ``q`` again would cost: the FLOPs of the model that produced it
(the router's choice), so a cost-aware cache prefers to keep the large model's answers.
"""

from __future__ import annotations

from enum import StrEnum


class Policy(StrEnum):
    LRU = "lru"
    LFU = "lfu"
    GDSF = "gdsf"
    LEC = "lec"

    @classmethod
    def parse(cls, name: str) -> Policy:
        try:
            return cls(name.lower())
        except ValueError:
            raise ValueError(f"unknown cache policy {name!r}; known: {', '.join(p.value for p in cls)}") from None

    @property
    def uses_frequency(self) -> bool:
        return self is not Policy.LRU


def score(policy: Policy, *, clock: int, frequency: int, cost: float, size: int, inflation: float) -> float:
    """The entry's priority under ``policy`` (higher is kept longer)."""
    if policy is Policy.LRU:
        return float(clock)
    if policy is Policy.LFU:
        return float(frequency)
    if policy is Policy.GDSF:
        return inflation + frequency * cost / max(size, 1)
    return frequency * cost
