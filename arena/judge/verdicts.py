"""Parse the judge's verdict out of its free-text output.

Single grading asks for ``[[rating]]`` (1-10), pairwise for ``[[A]]``, ``[[B]]`` or ``[[C]]``
(tie). Judges are not always obedient, so the parsers accept a few common variants and
refuse anything ambiguous: ``None`` means *unparseable*, which the caller retries and then
reports; it is never turned into a score.
"""

from __future__ import annotations

import re

RATING_STRICT = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*(?:/\s*10\s*)?\]\]")
RATING_LOOSE = re.compile(
    r"(?:rating|score)\s*[:=]?\s*\[?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\]?", re.IGNORECASE
)
PAIR_STRICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
PAIR_LOOSE = re.compile(r"(?:final verdict|verdict)\s*(?:is)?\s*[:=]?\s*\[\s*([ABC])\s*\]", re.IGNORECASE)

TIE = "tie"
PAIR_VERDICTS = {"A": "A", "B": "B", "C": TIE}
# Choices offered to an engine that supports constrained choice decoding.
RATING_CHOICES = [f"[[{n}]]" for n in range(1, 11)]
PAIR_CHOICES = ["[[A]]", "[[B]]", "[[C]]"]


def parse_rating(text: str) -> float | None:
    """The 1-10 rating in ``text``, or ``None`` when absent, out of range or contradictory."""
    for pattern in (RATING_STRICT, RATING_LOOSE):
        values = {float(match) for match in pattern.findall(text)}
        if not values:
            continue
        if len(values) > 1:
            return None
        value = values.pop()
        return value if 1.0 <= value <= 10.0 else None
    return None


def parse_pairwise(text: str) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"``; ``None`` when absent or when the judge names several."""
    for pattern in (PAIR_STRICT, PAIR_LOOSE):
        letters = set(pattern.findall(text))
        if not letters:
            continue
        if len(letters) > 1:
            return None
        return PAIR_VERDICTS[letters.pop()]
    return None
