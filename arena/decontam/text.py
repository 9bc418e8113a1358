"""Text normalization shared by every stage: the same tokens for the benchmark and the corpus.

Normalized tokens are NFKC-folded, lower-cased words and numbers; punctuation and whitespace differences
disappear. CJK characters are one token each (Chinese has no spaces), so n-grams work on translations too.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+", re.UNICODE)


def tokens(text: str) -> list[str]:
    """Normalized word tokens of ``text``."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def token_spans(text: str) -> list[tuple[str, int, int]]:
    """(normalized token, start, end) in the original ``text``, for highlighting matches.

    NFKC can change lengths, so spans are computed on the lower-cased original; tokens then differ from
    :func:`tokens` only for compatibility characters, which is harmless for display.
    """
    return [(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(text.lower())]


def stable_hash(value: str) -> int:
    """A 64-bit hash that is the same in every process and run (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def ngrams(token_list: list[str], n: int) -> Iterator[str]:
    """The word n-grams of ``token_list`` as space-joined strings."""
    for start in range(len(token_list) - n + 1):
        yield " ".join(token_list[start : start + n])


def hashed_ngrams(token_list: list[str], n: int) -> set[int]:
    """The set of stable hashes of the n-grams of ``token_list``."""
    return {stable_hash(gram) for gram in ngrams(token_list, n)}
