"""How MT-bench jobs call models: bounded concurrency, backoff on rate limits and timeouts.

The openai client already retries 429/5xx a few times; on top of that a job may retry a
retryable :class:`ProviderError` (rate limit, timeout, unreachable) with exponential
backoff and jitter, so a long run survives a busy endpoint instead of losing work.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

from arena.judge.costs import UsageMeter
from arena.providers import ChatClient, ChatResult, ProviderError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallPolicy:
    """Limits for one job's model calls."""

    concurrency: int = 8
    attempts: int = 4
    backoff_s: float = 2.0
    timeout_s: float = 120.0
    client_retries: int = 2

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")


async def chat_with_backoff(
    client: ChatClient,
    messages: list[dict[str, str]],
    policy: CallPolicy,
    meter: UsageMeter,
    **params: Any,
) -> ChatResult:
    """One chat call, retried with exponential backoff while the error is retryable."""
    for attempt in range(1, policy.attempts + 1):
        try:
            result = await client.chat(messages, **params)
        except ProviderError as exc:
            if not exc.retryable or attempt == policy.attempts:
                raise
            delay = policy.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
            logger.warning("%s (attempt %d/%d); retrying in %.1fs", exc, attempt, policy.attempts, delay)
            await asyncio.sleep(delay)
            continue
        meter.add(client.model_id, result.prompt_tokens, result.completion_tokens)
        return result
    raise AssertionError("unreachable")  # the loop either returns or raises
