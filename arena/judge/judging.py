"""Judge MT-bench answers with an LLM: single grading, pairwise vs a baseline, or all pairs.

Every judgment is keyed by a hash of the judge, the prompt version and the exact judge
input (question, answers, references), and stored durably the moment it is made
(``<out>/judgments.jsonl``). A rerun therefore costs nothing, and an interrupted run
resumes with only the missing judgments. Unparseable verdicts are retried with a reminder
(optionally with constrained choice decoding) and, if still unparseable, stored as such
and reported; they are never turned into a score.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

from arena.judge.calls import CallPolicy, chat_with_backoff
from arena.judge.costs import UsageMeter
from arena.judge.prompts import PAIRWISE, SINGLE, JudgePrompt, PromptSet, pairwise_fields, single_fields
from arena.judge.questions import Question
from arena.judge.store import JsonlStore
from arena.judge.verdicts import PAIR_CHOICES, RATING_CHOICES, parse_pairwise, parse_rating
from arena.providers import ChatClient, ProviderError

logger = logging.getLogger(__name__)

JUDGMENT_FILE = "judgments.jsonl"
JUDGE_MAX_TOKENS = 2048
OK = "ok"
UNPARSEABLE = "unparseable"


class Mode(StrEnum):
    """How answers are judged."""

    SINGLE = "single"
    PAIRWISE_BASELINE = "pairwise-baseline"
    PAIRWISE_ALL = "pairwise-all"

    @property
    def kind(self) -> str:
        return SINGLE if self is Mode.SINGLE else PAIRWISE


def open_judgments(out_dir: Path) -> JsonlStore:
    return JsonlStore(Path(out_dir) / JUDGMENT_FILE, key_field="key")


@dataclass(frozen=True)
class JudgeTask:
    """One judge call: a question turn and one answer (single) or two in presented order."""

    question: Question
    turn: int
    models: tuple[str, ...]
    answers: tuple[tuple[str, ...], ...]
    prompt: JudgePrompt
    judge: str

    @property
    def kind(self) -> str:
        return self.prompt.kind

    def messages(self) -> list[dict[str, str]]:
        if self.kind == SINGLE:
            fields = single_fields(self.question, list(self.answers[0]), self.turn)
        else:
            fields = pairwise_fields(self.question, list(self.answers[0]), list(self.answers[1]), self.turn)
        return self.prompt.messages(**fields)

    @cached_property
    def key(self) -> str:
        """Hash of judge, prompt version, models and the exact judge input."""
        material = json.dumps(
            [self.judge, self.prompt.version, self.models, self.turn, self.messages()], ensure_ascii=False
        )
        return hashlib.sha256(material.encode()).hexdigest()

    def record(self, verdict: Any, status: str, outputs: list[str], usage: tuple[int, int]) -> dict[str, Any]:
        return {
            "key": self.key,
            "judge": self.judge,
            "kind": self.kind,
            "question_id": self.question.question_id,
            "category": self.question.category,
            "turn": self.turn,
            "models": list(self.models),
            "answer_chars": [len(answer[self.turn - 1]) for answer in self.answers],
            "prompt": self.prompt.name,
            "prompt_version": self.prompt.version,
            "verdict": verdict,
            "status": status,
            "outputs": outputs,
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "tstamp": time.time(),
        }


@dataclass
class TaskPlan:
    """The judge calls a mode needs, and what could not be planned for lack of answers."""

    tasks: list[JudgeTask] = field(default_factory=list)
    missing_answers: int = 0


def plan_tasks(
    mode: Mode,
    questions: list[Question],
    answers: dict[str, dict[str, list[str]]],
    prompts: PromptSet,
    judge: str,
    *,
    baseline: str | None = None,
    swap: bool = True,
) -> TaskPlan:
    """Every judge call for ``mode`` over both turns of every question.

    ``answers`` maps model -> question id (as str) -> turn texts. Pairwise modes judge each
    pair in both orders unless ``swap`` is off.
    """
    plan = TaskPlan()
    models = list(answers)
    if mode is Mode.SINGLE:
        groups: list[tuple[str, ...]] = [(m,) for m in models]
    elif mode is Mode.PAIRWISE_BASELINE:
        if baseline is None:
            raise ValueError("pairwise-baseline needs --baseline MODEL")
        if not answers.get(baseline):
            raise ValueError(f"no answers from the baseline model {baseline!r}; run gen-answers for it first")
        groups = [(m, baseline) for m in models if m != baseline]
    else:
        groups = list(itertools.combinations(models, 2))
    if swap and mode is not Mode.SINGLE:
        groups = [order for pair in groups for order in (pair, pair[::-1])]
    for question in questions:
        qid = str(question.question_id)
        for turn in range(1, min(2, len(question.turns)) + 1):
            prompt = prompts.for_question(mode.kind, question, turn)
            for group in groups:
                texts = [answers[m].get(qid) for m in group]
                if any(t is None or len(t) < turn for t in texts):
                    plan.missing_answers += 1
                    continue
                task = JudgeTask(question, turn, group, tuple(tuple(t) for t in texts if t), prompt, judge)
                _ = task.key  # renders the prompt now: a template/data mismatch fails before any call
                plan.tasks.append(task)
    return plan


@dataclass
class JudgeStats:
    """What one judge run did: cache hits, new calls and failures."""

    planned: int = 0
    cached: int = 0
    judged: int = 0
    unparseable: int = 0
    errors: int = 0
    judge_calls: int = 0
    parse_retries: int = 0
    missing_answers: int = 0


REASK_TEMPERATURE = 0.7  # re-asks after the first one sample, so they can differ


@dataclass(frozen=True)
class ParsePolicy:
    """How hard to try for a parseable verdict."""

    retries: int = 2
    guided_choice: bool = False
    retry_unparseable: bool = False


async def run_judgments(
    plan: TaskPlan,
    client: ChatClient,
    store: JsonlStore,
    policy: CallPolicy,
    meter: UsageMeter,
    parse: ParsePolicy,
    *,
    on_done: Callable[[], None] | None = None,
) -> JudgeStats:
    """Judge every planned task that the store does not already hold."""
    stats = JudgeStats(planned=len(plan.tasks), missing_answers=plan.missing_answers)
    semaphore = asyncio.Semaphore(policy.concurrency)

    async def judge(task: JudgeTask) -> None:
        existing = store.get(task.key)
        if existing is not None and (existing["status"] == OK or not parse.retry_unparseable):
            stats.cached += 1
            stats.unparseable += existing["status"] == UNPARSEABLE
        else:
            async with semaphore:
                try:
                    record = await _judge_one(task, client, policy, meter, parse, stats)
                except ProviderError as exc:
                    logger.error("judge call failed for question %s: %s", task.question.question_id, exc)
                    stats.errors += 1
                else:
                    store.append(record)
                    stats.judged += 1
                    stats.unparseable += record["status"] == UNPARSEABLE
        if on_done is not None:
            on_done()

    await asyncio.gather(*(judge(task) for task in plan.tasks))
    return stats


async def _judge_one(
    task: JudgeTask,
    client: ChatClient,
    policy: CallPolicy,
    meter: UsageMeter,
    parse: ParsePolicy,
    stats: JudgeStats,
) -> dict[str, Any]:
    """Ask the judge; on an unparseable verdict remind it of the format and ask again."""
    parser = parse_rating if task.kind == SINGLE else parse_pairwise
    choices = RATING_CHOICES if task.kind == SINGLE else PAIR_CHOICES
    messages = task.messages()
    outputs: list[str] = []
    prompt_tokens = completion_tokens = 0
    for attempt in range(parse.retries + 1):
        extra_body = {"guided_choice": choices} if attempt > 0 and parse.guided_choice else None
        result = await chat_with_backoff(
            client,
            messages,
            policy,
            meter,
            temperature=reask_temperature(attempt),
            max_tokens=JUDGE_MAX_TOKENS,
            extra_body=extra_body,
        )
        stats.judge_calls += 1
        stats.parse_retries += attempt > 0
        prompt_tokens += result.prompt_tokens or 0
        completion_tokens += result.completion_tokens or 0
        outputs.append(result.text)
        verdict = parser(result.text)
        if verdict is not None:
            return task.record(verdict, OK, outputs, (prompt_tokens, completion_tokens))
        logger.info(
            "unparseable verdict for question %s (attempt %d)", task.question.question_id, attempt + 1
        )
        messages = [*task.messages(), {"role": "assistant", "content": result.text}, _reminder(task)]
    return task.record(None, UNPARSEABLE, outputs, (prompt_tokens, completion_tokens))


def reask_temperature(attempt: int) -> float:
    """Temperature of judge call ``attempt`` (0 = the first ask): 0 for the first ask and the first
    re-ask, then higher. At temperature 0 a second re-ask after the same unparseable reply would be
    byte-identical to the first one and get the same reply back: a paid call that cannot help."""
    return 0.0 if attempt <= 1 else REASK_TEMPERATURE


def _reminder(task: JudgeTask) -> dict[str, str]:
    wanted = '"[[rating]]", a number from 1 to 10' if task.kind == SINGLE else '"[[A]]", "[[B]]" or "[[C]]"'
    return {
        "role": "user",
        "content": f"Your reply did not end with a verdict in the required format. Reply with only {wanted}.",
    }
