"""Opt-in similarity lookup: a new request may reuse the cached answer of a near-identical one.

Holds, per (model, sampling parameters) group, the embeddings of cached conversations and their
cache keys; a lookup returns the key of the most similar one if its cosine reaches ``threshold``.
The index lives in the gateway process (with the Redis backend, each gateway indexes the answers it
stored itself; exact lookups still see everyone's). Keys whose entry was evicted are dropped when found.
"""

from __future__ import annotations

import threading

import numpy as np


class SimilarityIndex:
    """Cosine nearest neighbour over unit vectors, grouped so answers never cross models or parameters."""

    def __init__(self, threshold: float = 0.95, max_items: int = 100_000):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"the similarity threshold must lie in (0, 1], got {threshold}")
        self.threshold = threshold
        self.max_items = max_items
        self._lock = threading.Lock()
        self._groups: dict[str, tuple[list[str], list[np.ndarray]]] = {}

    def add(self, group: str, key: str, vector: np.ndarray) -> None:
        with self._lock:
            keys, vectors = self._groups.setdefault(group, ([], []))
            if key in keys:
                return
            keys.append(key)
            vectors.append(np.asarray(vector, dtype=np.float32))
            if len(keys) > self.max_items:
                del keys[0], vectors[0]

    def nearest(self, group: str, vector: np.ndarray) -> tuple[str, float] | None:
        """The most similar stored key of ``group`` and its cosine, if it reaches the threshold."""
        with self._lock:
            keys, vectors = self._groups.get(group, ([], []))
            if not keys:
                return None
            similarities = np.stack(vectors) @ np.asarray(vector, dtype=np.float32)
            best = int(np.argmax(similarities))
            if similarities[best] < self.threshold:
                return None
            return keys[best], float(similarities[best])

    def discard(self, group: str, key: str) -> None:
        with self._lock:
            keys, vectors = self._groups.get(group, ([], []))
            if key in keys:
                index = keys.index(key)
                del keys[index], vectors[index]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(keys) for keys, _ in self._groups.values())
