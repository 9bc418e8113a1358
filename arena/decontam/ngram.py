"""Stage 1: exact and n-gram overlap on normalized text (hashed), the cheapest stage.

The benchmark side is an inverted index from n-gram hash to the items holding it. A corpus document is
scored against every item it shares an n-gram with; the score is the share of the item's n-grams found in
the document, so an item copied verbatim inside a long document scores 1.0. Items shorter than ``n`` tokens
are indexed as one gram of their own length, so short questions are still caught when copied exactly.

Boilerplate is discounted: an n-gram held by more than ``max_item_df`` benchmark items is a template stem
("Which of the following statements is true about", a shared code header), not evidence that a document
copied any one of them, so it is left out of the index and out of every item's gram count, together with the
grams that lie mostly on such a stem.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

from arena.decontam.text import hashed_ngrams, stable_hash


class NgramIndex:
    """Hashed n-grams of the benchmark items."""

    def __init__(self, item_tokens: list[list[str]], n: int = 13, max_item_df: int = 3):
        if n < 1:
            raise ValueError("n-gram size must be at least 1")
        if max_item_df < 1:
            raise ValueError("max_item_df must be at least 1")
        self.n = n
        item_grams = [_positional_grams(toks, min(n, len(toks))) for toks in item_tokens]
        holders: dict[int, set[int]] = defaultdict(set)
        for item, grams in enumerate(item_grams):
            for gram in grams:
                holders[gram].add(item)
        self.boilerplate_grams = 0
        self._postings: dict[int, dict[int, list[int]]] = defaultdict(dict)
        self.gram_counts = [0] * len(item_tokens)
        self._sequences: list[tuple[list[int | None], int]] = []
        """Each item's grams in order, boilerplate as None, and their size (for :meth:`longest_missing_run`)."""
        for item, grams in enumerate(item_grams):
            size = min(n, len(item_tokens[item]))
            kept = _outside_boilerplate(grams, size, lambda gram: len(holders[gram]) > max_item_df)
            self.boilerplate_grams += len(set(grams)) - len(kept)
            self.gram_counts[item] = len(kept)
            self._sequences.append(([gram if gram in kept else None for gram in grams], size))
            postings = self._postings[size]
            for gram in kept:
                postings.setdefault(gram, []).append(item)
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


    def longest_missing_run(self, item: int, doc_tokens: list[str]) -> int:
        """The longest run of consecutive grams of ``item`` (boilerplate skipped) that the document lacks.

        An edited word inside the item costs ``n`` grams; a missing run much longer than that is a whole part
        of the item absent or replaced - another question under the same passage, another ending - which a
        high share of shared grams alone would hide. A run at either end of the item is counted as if the item
        went on (``n - 1`` more), since a replaced ending of k tokens loses only k grams.
        """
        sequence, size = self._sequences[item]
        present = set(hashed_ngrams(doc_tokens, size))
        kept = [gram in present for gram in sequence if gram is not None]
        longest = run = 0
        for position, found in enumerate(kept):
            run = 0 if found else run + 1
            at_edge = run > 0 and (position + 1 == run or position + 1 == len(kept))
            longest = max(longest, run + (size - 1 if at_edge else 0))
        return longest


def _positional_grams(toks: list[str], size: int) -> list[int]:
    """The hashed n-grams of ``toks`` in order of position (repeats kept, so positions line up)."""
    return [stable_hash(" ".join(toks[start : start + size])) for start in range(len(toks) - size + 1)] if size else []


def _outside_boilerplate(grams: list[int], size: int, is_boilerplate: Callable[[int], bool]) -> set[int]:
    """The grams of an item that lie mostly outside its boilerplate.

    A token is boilerplate when a boilerplate gram covers it; a gram is dropped when at least half of its tokens
    are boilerplate, so the grams straddling the end of a template stem ("... as of 2020? Scenario 1 | I took")
    go with the stem instead of pairing every item with every document that starts a scenario the same way.
    """
    covered = [False] * (len(grams) + size - 1)
    for start, gram in enumerate(grams):
        if is_boilerplate(gram):
            for position in range(start, start + size):
                covered[position] = True
    kept: set[int] = set()
    for start, gram in enumerate(grams):
        if 2 * sum(covered[start : start + size]) < size:
            kept.add(gram)
    return kept
