"""Generate model answers to MT-bench questions through the arena's providers.

One JSONL file per model under ``<out>/model_answer/``; a question is written once both
turns are answered, so an interrupted run resumes by skipping what is already there.
The second turn sees the model's own first answer, as in MT-bench, and each category is
sampled at MT-bench's temperature.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena.judge.calls import CallPolicy, chat_with_backoff
from arena.judge.costs import UsageMeter
from arena.judge.questions import Question
from arena.judge.store import JsonlStore, safe_name
from arena.providers import ChatClient, ModelSpec, ProviderError

logger = logging.getLogger(__name__)

ANSWER_DIR = "model_answer"


def answer_file(out_dir: Path, model: str) -> Path:
    """Where a model's answers live; the model name is made file-system safe."""
    return Path(out_dir) / ANSWER_DIR / f"{safe_name(model)}.jsonl"


def open_answers(out_dir: Path, model: str) -> JsonlStore:
    return JsonlStore(answer_file(out_dir, model), key_field="question_id")


def answered_models(out_dir: Path) -> list[str]:
    """Models that have an answer file in ``out_dir``, by the name stored in their records."""
    models = []
    for path in sorted((Path(out_dir) / ANSWER_DIR).glob("*.jsonl")):
        store = JsonlStore(path, key_field="question_id")
        first = next(store.values(), None)
        if first is not None:
            models.append(str(first["model"]))
    return models


def load_answer_turns(out_dir: Path, model: str) -> dict[str, list[str]]:
    """A model's answers as ``{str(question_id): [turn texts]}``."""
    return {
        str(record["question_id"]): list(record["turns"]) for record in open_answers(out_dir, model).values()
    }


@dataclass
class AnswerStats:
    model: str
    generated: int = 0
    skipped: int = 0
    failed: int = 0


async def generate_answers(
    questions: list[Question],
    spec: ModelSpec,
    out_dir: Path,
    policy: CallPolicy,
    meter: UsageMeter,
    *,
    max_tokens: int | None = None,
    on_done: Callable[[], None] | None = None,
) -> AnswerStats:
    """Answer every question not yet answered by ``spec``; failures are logged and retried next run."""
    store = open_answers(out_dir, spec.name)
    stats = AnswerStats(spec.name)
    pending = [q for q in questions if str(q.question_id) not in store]
    stats.skipped = len(questions) - len(pending)
    client = ChatClient.for_model(spec, timeout_s=policy.timeout_s, max_retries=policy.client_retries)
    semaphore = asyncio.Semaphore(policy.concurrency)

    async def answer(question: Question) -> None:
        async with semaphore:
            try:
                record = await _answer_question(client, spec, question, policy, meter, max_tokens)
            except ProviderError as exc:
                logger.error("%s: question %s not answered: %s", spec.name, question.question_id, exc)
                stats.failed += 1
            else:
                store.append(record)
                stats.generated += 1
        if on_done is not None:
            on_done()

    try:
        await asyncio.gather(*(answer(q) for q in pending))
    finally:
        await client.close()
    return stats


async def _answer_question(
    client: ChatClient,
    spec: ModelSpec,
    question: Question,
    policy: CallPolicy,
    meter: UsageMeter,
    max_tokens: int | None,
) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    turns, prompt_tokens, completion_tokens, latencies, finish_reasons = [], [], [], [], []
    for user_turn in question.turns:
        messages.append({"role": "user", "content": user_turn})
        result = await chat_with_backoff(
            client,
            messages,
            policy,
            meter,
            temperature=question.temperature,
            max_tokens=max_tokens or spec.max_tokens,
        )
        messages.append({"role": "assistant", "content": result.text})
        turns.append(result.text)
        prompt_tokens.append(result.prompt_tokens)
        completion_tokens.append(result.completion_tokens)
        latencies.append(round(result.latency_s, 4))
        finish_reasons.append(result.finish_reason)
    return {
        "question_id": question.question_id,
        "answer_id": uuid.uuid4().hex,
        "model": spec.name,
        "model_id": spec.model_id,
        "category": question.category,
        "temperature": question.temperature,
        "turns": turns,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_s": latencies,
        "finish_reasons": finish_reasons,
        "tstamp": time.time(),
    }
