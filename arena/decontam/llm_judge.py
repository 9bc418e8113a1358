"""Stage 4: an LLM judge decides whether a candidate pair is the same question, rephrased or translated.

It sees only the pairs the offline stages left undecided. Every answer is cached in SQLite, keyed by the
two texts, the judge model and the prompt version, so an interrupted run resumes where it stopped and a rerun
costs no calls. Calls run concurrently (bounded by a semaphore) through the arena's :class:`ChatClient`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from arena.providers.client import ChatClient, ProviderError

logger = logging.getLogger(__name__)

PROMPT_VERSION = "decontam-v1"
MAX_CHARS_PER_TEXT = 6000

SYSTEM_PROMPT = (
    "You check benchmarks for contamination. You are shown a benchmark item and a training document. "
    "Decide whether the training document contains the same question as the benchmark item: the same task "
    "copied, lightly edited, rephrased, or translated into another natural or programming language, such that "
    "training on the document would leak the benchmark item. Sharing only a topic, a common phrase or a "
    "generic technique is not enough. Answer with a JSON object: "
    '{"same": true or false, "reason": "one short sentence"}.'
)


@dataclass(frozen=True)
class Verdict:
    """The judge's decision on one pair (``same`` is None when the judge failed)."""

    same: bool | None
    reason: str
    cached: bool = False
    error: str | None = None


def build_messages(item_text: str, doc_text: str) -> list[dict[str, str]]:
    """The chat messages asking the judge about one pair."""
    user = (
        f"Benchmark item:\n<<<\n{item_text[:MAX_CHARS_PER_TEXT]}\n>>>\n\n"
        f"Training document:\n<<<\n{doc_text[:MAX_CHARS_PER_TEXT]}\n>>>\n\n"
        "Is it the same question (copied, rephrased or translated)? Reply with the JSON object only."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_BOOL_WORD = re.compile(r"\b(true|false|yes|no)\b", re.IGNORECASE)


def parse_verdict(text: str) -> tuple[bool, str]:
    """(same, reason) from the judge's answer: the JSON object if present, else the first yes/no/true/false word."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        try:
            data = json.loads(match.group(0))
            if isinstance(data, dict) and isinstance(data.get("same"), bool):
                return data["same"], str(data.get("reason", ""))
        except json.JSONDecodeError:
            pass
    word = _BOOL_WORD.search(text)
    if word is None:
        raise ValueError(f"cannot read a verdict from the judge's answer: {text[:200]!r}")
    return word.group(1).lower() in ("true", "yes"), text.strip()[:300]


def cache_key(judge_model: str, item_text: str, doc_text: str) -> str:
    """The cache key of one judged pair: both texts, the judge model and the prompt version."""
    digest = hashlib.sha256()
    for part in (PROMPT_VERSION, judge_model, item_text, doc_text):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


class JudgeCache:
    """Judge answers in a SQLite file (one row per pair key); safe to reopen after an interruption."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path))
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, same INTEGER NOT NULL, reason TEXT NOT NULL,"
            " judge_model TEXT NOT NULL, prompt_version TEXT NOT NULL)"
        )
        self._db.commit()

    def get(self, key: str) -> Verdict | None:
        row = self._db.execute("SELECT same, reason FROM verdicts WHERE key = ?", (key,)).fetchone()
        return Verdict(bool(row[0]), row[1], cached=True) if row else None

    def put(self, key: str, verdict: Verdict, judge_model: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?)",
            (key, int(bool(verdict.same)), verdict.reason, judge_model, PROMPT_VERSION),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class JudgeRequest:
    """One pair to judge."""

    key: str
    item_text: str
    doc_text: str


async def judge_pairs(
    requests: Sequence[JudgeRequest],
    client: ChatClient,
    cache: JudgeCache,
    *,
    concurrency: int = 8,
    max_tokens: int = 200,
    on_done: Callable[[Verdict], None] | None = None,
) -> dict[str, Verdict]:
    """Judge every pair not already cached, ``concurrency`` at a time; failures become verdicts with an error."""
    semaphore = asyncio.Semaphore(concurrency)
    verdicts: dict[str, Verdict] = {}

    async def judge_one(request: JudgeRequest) -> None:
        verdict = cache.get(request.key)
        if verdict is None:
            async with semaphore:
                verdict = await _ask(client, request, max_tokens)
            if verdict.error is None:
                cache.put(request.key, verdict, client.model_id)
        verdicts[request.key] = verdict
        if on_done is not None:
            on_done(verdict)

    await asyncio.gather(*(judge_one(r) for r in requests))
    return verdicts


async def _ask(client: ChatClient, request: JudgeRequest, max_tokens: int) -> Verdict:
    messages = build_messages(request.item_text, request.doc_text)
    try:
        result = await client.chat(messages, temperature=0.0, max_tokens=max_tokens)
        same, reason = parse_verdict(result.text)
    except (ProviderError, ValueError) as exc:
        logger.warning("judge failed on one pair (will retry on the next run): %s", exc)
        return Verdict(None, "", error=str(exc))
    return Verdict(same, reason)
