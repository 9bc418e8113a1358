"""Stage 1: exact and n-gram overlap on normalized text (hashed), the cheapest stage.

The benchmark side is an inverted index from n-gram hash to the items holding it. A corpus document is
scored against every item it shares an n-gram with; the score is the share of the item's n-grams found in
the document, so an item copied verbatim inside a long document scores 1.0. Items shorter than ``n`` tokens
are indexed as one gram of their own length, so short questions are still caught when copied exactly.

Boilerplate is discounted: an n-gram held by more than ``max_item_df`` benchmark items is a template stem
("Which of the following statements is true about", a shared code header), not evidence that a document
copied any one of them, so it is left out of the index and out of every item's gram count.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from arena.decontam.text import hashed_ngrams


class NgramIndex:
    """Hashed n-grams of the benchmark items."""

    def __init__(self, item_tokens: list[list[str]], n: int = 13, max_item_df: int = 3):
        if n < 1:
            raise ValueError("n-gram size must be at least 1")
        if max_item_df < 1:
            raise ValueError("max_item_df must be at least 1")
        self.n = n
        postings: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for item, toks in enumerate(item_tokens):
            size = min(n, len(toks))
            for gram in hashed_ngrams(toks, size) if size else set():
                postings[size][gram].append(item)
        self.boilerplate_grams = 0
        self._postings: dict[int, dict[int, list[int]]] = {}
        self.gram_counts = [0] * len(item_tokens)
        for size, grams in postings.items():
            kept: dict[int, list[int]] = {}
            for gram, items in grams.items():
                if len(items) > max_item_df:
                    self.boilerplate_grams += 1
                    continue
                kept[gram] = items
                for item in items:
                    self.gram_counts[item] += 1
            self._postings[size] = kept
        self._sizes = sorted(self._postings)

    def match(self, doc_tokens: list[str]) -> dict[int, tuple[int, float]]:
        """Items sharing at least one n-gram with the document: item -> (shared grams, share of the item's grams)."""
        shared: Counter[int] = Counter()
        for size in self._sizes:
            postings = self._postings[size]
            for gram in hashed_ngrams(doc_tokens, size):
                for item in postings.get(gram, ()):
                    shared[item] += 1
        return {item: (count, count / self.gram_counts[item]) for item, count in shared.items()}
