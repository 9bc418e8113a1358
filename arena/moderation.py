"""Prompt moderation, pluggable: OpenAI's moderation endpoint when a key is set, else a word list.

The local word list (``data/moderation_words.txt``, one lower-case word or phrase per line,
``category: phrase``) is deliberately small and transparent: it catches the obvious, and
the dataset cards say which check was used.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModerationResult:
    flagged: bool
    categories: tuple[str, ...] = field(default_factory=tuple)
    source: str = "wordlist"


class Moderator(Protocol):
    """Anything that can judge a text."""

    name: str

    async def check(self, text: str) -> ModerationResult: ...


class WordListModerator:
    """Flags text containing a listed word or phrase (whole words, case-insensitive)."""

    name = "wordlist"

    def __init__(self, entries: Iterable[tuple[str, str]]):
        by_category: dict[str, list[str]] = {}
        for category, phrase in entries:
            by_category.setdefault(category, []).append(re.escape(phrase))
        self._patterns = {
            category: re.compile(r"\b(?:" + "|".join(phrases) + r")\b", re.IGNORECASE)
            for category, phrases in by_category.items()
        }

    @property
    def patterns(self) -> dict[str, re.Pattern[str]]:
        """One compiled pattern per category (for callers that batch their own pre-checks)."""
        return dict(self._patterns)

    @classmethod
    def from_file(cls, path: str | Path) -> WordListModerator:
        """Read ``category: phrase`` lines; ``#`` starts a comment; a bad line names its number."""
        entries = []
        for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            category, sep, phrase = line.partition(":")
            if not sep or not phrase.strip() or not category.strip():
                raise ValueError(f"{path}:{number}: expected 'category: phrase', got {raw!r}")
            entries.append((category.strip(), phrase.strip().lower()))
        return cls(entries)

    def check_sync(self, text: str) -> ModerationResult:
        hits = tuple(sorted(c for c, pattern in self._patterns.items() if pattern.search(text)))
        return ModerationResult(bool(hits), hits, self.name)

    async def check(self, text: str) -> ModerationResult:
        return self.check_sync(text)


class OpenAIModerator:
    """OpenAI's moderation endpoint; falls back to the word list when the call fails."""

    name = "openai"

    def __init__(self, api_key: str, fallback: WordListModerator, model: str = "omni-moderation-latest"):
        from openai import AsyncOpenAI

        self._client = AsyncOpenAI(api_key=api_key, timeout=10.0, max_retries=1)
        self._fallback = fallback
        self._model = model

    async def check(self, text: str) -> ModerationResult:
        import openai

        try:
            response = await self._client.moderations.create(model=self._model, input=text)
        except openai.OpenAIError as exc:
            logger.warning("moderation API failed (%s); using the word list", exc)
            return await self._fallback.check(text)
        result = response.results[0]
        categories = tuple(sorted(name for name, hit in result.categories.model_dump().items() if hit))
        return ModerationResult(bool(result.flagged), categories, self.name)


def build_moderator(wordlist: Path, openai_api_key: str | None) -> Moderator:
    """The configured moderator: OpenAI when a key is set, else the local word list."""
    words = WordListModerator.from_file(wordlist)
    if openai_api_key:
        return OpenAIModerator(openai_api_key, fallback=words)
    return words
