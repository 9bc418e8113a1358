"""Stage 1b: language-independent anchors, for translations that share no words with the item.

A translated math word problem keeps its numbers (``278``, ``3.5``, ``$4``), a program translated into
another language keeps its identifiers (``greatest_common_divisor`` becomes ``greatestCommonDivisor``) and
literals. Those *anchors* survive translation where words do not. Each benchmark item's anchors are weighted
by rarity across the benchmark (inverse document frequency), so ``2`` or ``i`` count for little and ``278``
or ``make_palindrome`` for much; a document's score for an item is the weighted share of the item's anchors it
contains. Digits of every script (Devanagari, Bengali, Thai, full-width ...) are read as ASCII digits.

The signal is strong for numeric problems and code, and absent for prose without numbers or identifiers
(most MMLU questions): there the multilingual embedding stage carries the translation.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_IDENTIFIER_CHARS = 5


def _ascii_digits(text: str) -> str:
    """NFKC text with every Unicode decimal digit replaced by its ASCII digit."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() and not ch.isascii() else ch for ch in text)


def _number_anchor(raw: str) -> str | None:
    """A canonical number: thousands separators dropped, decimal comma read as a point; single digits kept."""
    parts = re.split(r"[.,]", raw)
    if len(parts) > 1 and all(len(p) == 3 for p in parts[1:]):
        value = "".join(parts)  # 1,000 / 1.000 / 12,345,678
    elif len(parts) == 2:
        value = f"{parts[0]}.{parts[1]}"  # 3.5 / 3,5
    else:
        value = "".join(parts)
    value = value.lstrip("0") or "0"
    return "#" + value


def _identifier_anchor(raw: str) -> str | None:
    """A code identifier in one spelling for every naming style: ``max_fill``, ``maxFill``, ``MaxFill`` -> maxfill."""
    if "_" not in raw.strip("_") and not re.search(r"[a-z][A-Z]", raw):
        return None
    folded = raw.replace("_", "").lower()
    return "@" + folded if len(folded) >= MIN_IDENTIFIER_CHARS else None


def anchors(text: str) -> Counter[str]:
    """The multiset of number and identifier anchors in ``text``."""
    normalized = _ascii_digits(text)
    found: Counter[str] = Counter()
    for raw in _NUMBER.findall(normalized):
        anchor = _number_anchor(raw)
        if anchor:
            found[anchor] += 1
    for raw in _IDENTIFIER.findall(normalized):
        anchor = _identifier_anchor(raw)
        if anchor:
            found[anchor] += 1
    return found


def numbers(text: str) -> Counter[str]:
    """Only the number anchors of ``text`` (used to check that an accepted copy kept every number)."""
    return Counter({a: n for a, n in anchors(text).items() if a.startswith("#")})


def numbers_kept(item_text: str, doc_text: str) -> bool:
    """True when the document holds every number of the item as often as the item does."""
    doc = numbers(doc_text)
    return all(doc[value] >= count for value, count in numbers(item_text).items())


class AnchorIndex:
    """An inverted index from anchor to the benchmark items holding it, weighted by rarity."""

    def __init__(self, item_texts: list[str], threshold: float = 0.6, min_shared: int = 3, min_weight: float = 6.0):
        if not 0.0 < threshold <= 1.0:
            raise ValueError("anchor threshold must be in (0, 1]")
        self.threshold = threshold
        self.min_shared = min_shared
        self.min_weight = min_weight
        item_anchors = [set(anchors(text)) for text in item_texts]
        frequency: Counter[str] = Counter(a for found in item_anchors for a in found)
        total = len(item_texts)
        self.weight = {a: math.log(1 + total / df) for a, df in frequency.items()}
        self._postings: dict[str, list[int]] = defaultdict(list)
        self._item_weight: list[float] = []
        self._item_count: list[int] = []
        for item, found in enumerate(item_anchors):
            for anchor in found:
                self._postings[anchor].append(item)
            self._item_weight.append(sum(self.weight[a] for a in found))
            self._item_count.append(len(found))

    def match(self, doc_text: str) -> dict[int, tuple[int, float]]:
        """Items whose anchors the document holds enough of: item -> (shared anchors, weighted share).

        Enough means at least ``min_shared`` anchors (or all of a smaller item's, never fewer than 2), a weighted
        share of at least ``threshold`` and a shared rarity weight of at least ``min_weight`` (``2`` and ``10``
        together are everywhere; ``278`` and ``11`` together are not).
        """
        shared_weight: dict[int, float] = defaultdict(float)
        shared_count: Counter[int] = Counter()
        for anchor in anchors(doc_text):
            for item in self._postings.get(anchor, ()):
                shared_weight[item] += self.weight[anchor]
                shared_count[item] += 1
        found: dict[int, tuple[int, float]] = {}
        for item, weight in shared_weight.items():
            needed = min(self.min_shared, self._item_count[item])
            share = weight / self._item_weight[item]
            if shared_count[item] >= max(needed, 2) and share >= self.threshold and weight >= self.min_weight:
                found[item] = (shared_count[item], share)
        return found
