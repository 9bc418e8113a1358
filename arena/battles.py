"""The battle domain: pair sampling, turns streamed from two models at once, votes.

Used by the Gradio page and the JSON API alike; it knows nothing about the web.  Every
visitor action is written to the database as it happens: a prompt before the models are
called, each answer (or its error) when it ends, a vote in its own transaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from arena.config import Settings
from arena.db.models import (
    Battle,
    BattleMode,
    BattleStatus,
    Conversation,
    Flag,
    FlagKind,
    Message,
    Model,
    Visitor,
    Vote,
    VoteChoice,
)
from arena.moderation import Moderator
from arena.prompt_limits import PromptLimits
from arena.providers.client import ChatClient, ChatResult, ProviderError
from arena.providers.registry import ModelRegistry, ModelSpec

logger = logging.getLogger(__name__)

SIDES = ("a", "b")


class ArenaError(Exception):
    """A visitor action that cannot be done; ``status_code`` maps it to HTTP."""

    status_code = 400
    code = "invalid_request"


class NotFoundError(ArenaError):
    status_code = 404
    code = "not_found"


class ForbiddenError(ArenaError):
    status_code = 403
    code = "forbidden"


class ConflictError(ArenaError):
    status_code = 409
    code = "conflict"


class RateLimitedError(ArenaError):
    status_code = 429
    code = "rate_limited"


class RefusedError(ArenaError):
    """The prompt was refused by moderation (and the refusal recorded)."""

    status_code = 422
    code = "moderation"


# ----------------------------------------------------------------------------- pair sampling


class PairSampler(Protocol):
    """Chooses the two models of a battle; returns them and the probabilities it used."""

    name: str

    def sample(self, models: Sequence[ModelSpec], rng: random.Random) -> tuple[str, str, dict[str, float]]: ...


class WeightedPairSampler:
    """Model A by registry weight, then model B by weight among the others: never a model twice."""

    name = "weighted"

    def sample(self, models: Sequence[ModelSpec], rng: random.Random) -> tuple[str, str, dict[str, float]]:
        candidates = [m for m in models if m.weight > 0]
        if len(candidates) < 2:
            raise ArenaError("the arena needs at least two models with a positive weight")
        total = sum(m.weight for m in candidates)
        probabilities = {m.name: m.weight / total for m in candidates}
        first = rng.choices(candidates, weights=[m.weight for m in candidates])[0]
        others = [m for m in candidates if m.name != first.name]
        second = rng.choices(others, weights=[m.weight for m in others])[0]
        if rng.random() < 0.5:
            first, second = second, first
        return first.name, second.name, probabilities


def make_pair_sampler(policy: str, sessions: sessionmaker[Session] | None = None) -> PairSampler:
    """The sampler named by ``ARENA_SAMPLING_POLICY``; ``active`` reads vote counts through ``sessions``."""
    if policy == "weighted":
        return WeightedPairSampler()
    if policy == "active":
        if sessions is None:
            raise ValueError("the active sampling policy needs a session factory to read vote counts")
        from arena.leaderboard.active_sampler import ActivePairSampler

        return ActivePairSampler(sessions)
    raise ValueError(f"unknown sampling policy {policy!r}; known: weighted, active")


# ----------------------------------------------------------------------------- views


@dataclass
class SideState:
    """What the page shows for one side of a battle."""

    text: str = ""
    error: str | None = None
    done: bool = False


@dataclass
class TurnUpdate:
    """A snapshot of a turn in progress: both sides' text so far."""

    sides: dict[str, SideState]
    done: bool = False
    status: str = BattleStatus.STREAMING


@dataclass
class BattleView:
    """A battle as a visitor may see it: names hidden until the vote if anonymous."""

    id: str
    mode: str
    status: str
    turn_count: int
    model_a: str | None
    model_b: str | None
    messages: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    vote: str | None = None


@dataclass
class VoteOutcome:
    """A recorded vote; ``duplicate`` when this request repeated an earlier identical vote."""

    battle_id: str
    choice: str
    model_a: str
    model_b: str
    duplicate: bool


# ----------------------------------------------------------------------------- the service


class ArenaService:
    """Battles, direct chats and votes over a database and a model registry."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: ModelRegistry,
        moderator: Moderator,
        settings: Settings,
        sampler: PairSampler | None = None,
        client_factory: Callable[[ModelSpec], ChatClient] | None = None,
    ):
        self.sessions = sessions
        self.registry = registry
        self.moderator = moderator
        self.settings = settings
        self.prompt_limits = PromptLimits(settings.max_prompt_chars, registry)
        self.sampler = sampler or make_pair_sampler(settings.sampling_policy, sessions)
        self._client_factory = client_factory or (
            lambda spec: ChatClient.for_model(
                spec, timeout_s=settings.request_timeout_s, max_retries=settings.provider_max_retries
            )
        )
        self._clients: dict[str, ChatClient] = {}

    # -- registry mirror -------------------------------------------------------------------

    def sync_models(self) -> None:
        """Mirror the registry into the ``models`` table (inactive if no longer listed)."""
        with self.sessions.begin() as session:
            existing = {m.name: m for m in session.scalars(select(Model))}
            for spec in self.registry.values():
                row = existing.pop(spec.name, None) or Model(name=spec.name)
                row.model_id, row.base_url = spec.model_id, spec.base_url
                row.organization, row.license = spec.organization, spec.license
                row.tags, row.weight, row.active = list(spec.tags), spec.weight, True
                session.add(row)
            for row in existing.values():
                row.active = False

    async def aclose(self) -> None:
        """Close the HTTP connections to the model endpoints."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def fail_abandoned_streams(self, older_than_s: float | None = None) -> int:
        """Mark battles stuck in 'streaming' (their server died mid-answer) as failed; return how many.

        A live stream touches nothing until it ends, so only battles streaming for longer than
        twice the model timeout are taken as abandoned; their prompts stay stored.
        """
        limit = older_than_s if older_than_s is not None else 2 * self.settings.request_timeout_s
        cutoff = datetime.now(UTC) - timedelta(seconds=limit)
        with self.sessions.begin() as session:
            result = session.execute(
                update(Battle)
                .where(Battle.status == BattleStatus.STREAMING, Battle.updated_at < cutoff)
                .values(status=BattleStatus.FAILED, updated_at=datetime.now(UTC))
            )
            count = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if count:
            logger.warning("marked %d abandoned streaming battle(s) as failed", count)
        return count

    def client(self, model_name: str) -> ChatClient:
        if model_name not in self._clients:
            self._clients[model_name] = self._client_factory(self.registry[model_name])
        return self._clients[model_name]

    # -- creating battles and chats ----------------------------------------------------------

    def create_battle(
        self,
        visitor_id: str,
        mode: str = BattleMode.ANONYMOUS,
        model_a: str | None = None,
        model_b: str | None = None,
        rng: random.Random | None = None,
    ) -> BattleView:
        """A new battle: sampled pair when anonymous, the visitor's pick when named."""
        if mode == BattleMode.ANONYMOUS:
            model_a, model_b, weights = self.sampler.sample(list(self.registry.values()), rng or random.Random())
            policy = self.sampler.name
        elif mode == BattleMode.NAMED:
            model_a, model_b = self._check_named_pair(model_a, model_b)
            weights, policy = {}, "visitor"
        else:
            raise ArenaError(f"unknown battle mode {mode!r}; use 'anonymous' or 'named'")
        with self.sessions.begin() as session:
            self._touch_visitor(session, visitor_id)
            battle = Battle(
                mode=str(mode),
                anonymous=mode == BattleMode.ANONYMOUS,
                model_a=model_a,
                model_b=model_b,
                visitor_id=visitor_id,
                sampling_policy=policy,
                sampling_weights=weights,
            )
            session.add(battle)
            session.flush()
            for side, name in zip(SIDES, (model_a, model_b), strict=True):
                session.add(Conversation(visitor_id=visitor_id, model_name=name, battle_id=battle.id, side=side))
            return self._view(session, battle)

    def _check_named_pair(self, model_a: str | None, model_b: str | None) -> tuple[str, str]:
        if not model_a or not model_b:
            raise ArenaError("pick two models for a side-by-side battle")
        if model_a == model_b:
            raise ArenaError("pick two different models")
        for name in (model_a, model_b):
            if name not in self.registry:
                raise NotFoundError(f"unknown model {name!r}")
        return model_a, model_b

    def create_chat(self, visitor_id: str, model: str) -> str:
        """A direct chat with one named model; returns the conversation id."""
        if model not in self.registry:
            raise NotFoundError(f"unknown model {model!r}")
        with self.sessions.begin() as session:
            self._touch_visitor(session, visitor_id)
            conversation = Conversation(visitor_id=visitor_id, model_name=model)
            session.add(conversation)
            session.flush()
            return conversation.id

    @staticmethod
    def _touch_visitor(session: Session, visitor_id: str) -> None:
        visitor = session.get(Visitor, visitor_id)
        if visitor is not None:
            visitor.last_seen_at = datetime.now(UTC)
            return
        try:
            with session.begin_nested():
                session.add(Visitor(id=visitor_id))
        except IntegrityError:  # created concurrently by the visitor's other tab
            pass

    # -- turns -----------------------------------------------------------------------------

    async def play_turn(self, battle_id: str, visitor_id: str, prompt: str) -> AsyncIterator[TurnUpdate]:
        """Send ``prompt`` to both models of the battle and stream both answers at once."""
        prompt = self._check_prompt_shape(prompt)
        with self.sessions.begin() as session:
            battle = self._owned_battle(session, battle_id, visitor_id)
            if battle.turn_count >= self.settings.max_turns:
                raise ConflictError(f"this battle reached {self.settings.max_turns} turns; vote or start a new round")
            for conversation in self._conversations(session, battle_id):
                self._check_context(conversation, prompt)
            self._check_rate_limit(session, visitor_id)
        await self._moderate(prompt, visitor_id, battle_id=battle_id)
        with self.sessions.begin() as session:
            self._claim_for_streaming(session, battle_id)
            battle = session.get_one(Battle, battle_id)
            battle.turn_count += 1
            turn = battle.turn_count
            for conversation in self._conversations(session, battle_id):
                self._append(session, conversation, turn, "user", prompt)
        async with aclosing(self._stream_sides(battle_id, turn)) as updates:
            async for snapshot in updates:
                yield snapshot

    async def regenerate(self, battle_id: str, visitor_id: str) -> AsyncIterator[TurnUpdate]:
        """Ask both models again for the last turn, replacing their last answers."""
        with self.sessions.begin() as session:
            battle = self._owned_battle(session, battle_id, visitor_id)
            if battle.turn_count == 0:
                raise ConflictError("nothing to regenerate yet: ask a question first")
            self._check_rate_limit(session, visitor_id)
            self._claim_for_streaming(session, battle_id)
            for conversation in self._conversations(session, battle_id):
                last = conversation.messages[-1] if conversation.messages else None
                if last is not None and last.role == "assistant":
                    conversation.messages.remove(last)
            turn = battle.turn_count
        async with aclosing(self._stream_sides(battle_id, turn)) as updates:
            async for snapshot in updates:
                yield snapshot

    def _claim_for_streaming(self, session: Session, battle_id: str) -> None:
        """Move the battle to 'streaming' unless another request or a vote got there first."""
        claimed = session.execute(
            update(Battle)
            .where(Battle.id == battle_id, Battle.status.in_([BattleStatus.OPEN, BattleStatus.READY]))
            .values(status=BattleStatus.STREAMING, updated_at=datetime.now(UTC))
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            status = session.scalar(select(Battle.status).where(Battle.id == battle_id))
            raise ConflictError(_status_message(status))
        session.expire_all()

    async def _stream_sides(self, battle_id: str, turn: int) -> AsyncGenerator[TurnUpdate, None]:
        with self.sessions() as session:
            histories = {c.side or "": (c.model_name, _history(c)) for c in self._conversations(session, battle_id)}
        states = {side: SideState() for side in SIDES}
        queue: asyncio.Queue[tuple[str, str | None, BaseException | None]] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._pump(side, model, history, queue))
            for side, (model, history) in histories.items()
        ]
        try:
            pending = len(tasks)
            while pending:
                side, delta, error = await queue.get()
                if delta is not None:
                    states[side].text += delta
                else:
                    pending -= 1
                    states[side].done = True
                    if error is not None:
                        states[side].error = _describe_error(error)
                yield TurnUpdate(sides=states)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            status = self._finish_turn(battle_id, turn, states, tasks)
        yield TurnUpdate(sides=states, done=True, status=status)

    async def _pump(
        self,
        side: str,
        model: str,
        history: list[dict[str, str]],
        queue: asyncio.Queue[tuple[str, str | None, BaseException | None]],
    ) -> ChatResult | None:
        """Stream one model's answer into the shared queue, report how it ended, return its usage."""
        spec = self.registry[model]
        result: ChatResult | None = None
        try:
            async for chunk in self.client(model).stream_chat(
                history, temperature=self.settings.temperature, max_tokens=spec.max_tokens
            ):
                if chunk.result is not None:
                    result = chunk.result
                elif chunk.delta:
                    await queue.put((side, chunk.delta, None))
        except ProviderError as exc:
            await queue.put((side, None, exc))
            return None
        except Exception as exc:  # any endpoint failure stays on its own side
            logger.exception("model %s failed", model)
            await queue.put((side, None, exc))
            return None
        await queue.put((side, None, None))
        return result

    def _finish_turn(
        self,
        battle_id: str,
        turn: int,
        states: dict[str, SideState],
        tasks: list[asyncio.Task[ChatResult | None]],
    ) -> str:
        """Store both answers (or their errors) and settle the battle's status."""
        for state in states.values():
            if not state.done and state.error is None:
                state.error = "the answer was interrupted"
        failed = any(state.error for state in states.values())
        with self.sessions.begin() as session:
            battle = session.get_one(Battle, battle_id)
            for conversation in self._conversations(session, battle_id):
                state = states[conversation.side or ""]
                usage = _task_usage(tasks[SIDES.index(conversation.side or "a")])
                self._append(session, conversation, turn, "assistant", state.text, error=state.error, usage=usage)
                if battle.anonymous and _reveals_identity(state.text, self.registry[conversation.model_name]):
                    session.add(Flag(kind=FlagKind.IDENTITY_REVEALED, battle_id=battle_id,
                                     conversation_id=conversation.id,
                                     detail=f"side {conversation.side} named its model"))
            battle.status = BattleStatus.FAILED if failed else BattleStatus.READY
            return battle.status

    # -- direct chat ---------------------------------------------------------------------------

    async def chat_turn(self, conversation_id: str, visitor_id: str, prompt: str) -> AsyncIterator[SideState]:
        """One turn of a direct chat, streamed."""
        prompt = self._check_prompt_shape(prompt)
        with self.sessions.begin() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None or conversation.battle_id is not None:
                raise NotFoundError("no such chat")
            if conversation.visitor_id != visitor_id:
                raise ForbiddenError("this chat belongs to another visitor")
            self._check_context(conversation, prompt)
            self._check_rate_limit(session, visitor_id)
        await self._moderate(prompt, visitor_id, conversation_id=conversation_id)
        with self.sessions.begin() as session:
            conversation = session.get_one(Conversation, conversation_id)
            turn = sum(1 for m in conversation.messages if m.role == "user") + 1
            self._append(session, conversation, turn, "user", prompt)
            model, history = conversation.model_name, _history(conversation)
        state = SideState()
        queue: asyncio.Queue[tuple[str, str | None, BaseException | None]] = asyncio.Queue()
        task = asyncio.create_task(self._pump("a", model, history, queue))
        try:
            while not state.done:
                _, delta, error = await queue.get()
                if delta is not None:
                    state.text += delta
                else:
                    state.done = True
                    state.error = _describe_error(error) if error else None
                yield state
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if not state.done:
                state.error = "the answer was interrupted"
            with self.sessions.begin() as session:
                conversation = session.get_one(Conversation, conversation_id)
                self._append(session, conversation, turn, "assistant", state.text,
                             error=state.error, usage=_task_usage(task))

    # -- votes ---------------------------------------------------------------------------------

    def vote(self, battle_id: str, visitor_id: str, choice: str) -> VoteOutcome:
        """Record the visitor's verdict, once: repeats of the same vote are harmless."""
        try:
            choice = VoteChoice(choice).value
        except ValueError:
            raise ArenaError(f"unknown vote {choice!r}; use one of a, b, tie, both_bad") from None
        session = self.sessions()
        try:
            with session.begin():
                # Fast path, two statements: claim the finished battle, then write the vote.
                claimed = session.execute(
                    update(Battle)
                    .where(Battle.id == battle_id, Battle.visitor_id == visitor_id,
                           Battle.status == BattleStatus.READY)
                    .values(status=BattleStatus.VOTED, updated_at=datetime.now(UTC))
                    .returning(Battle.model_a, Battle.model_b, Battle.turn_count)
                ).first()
                if claimed is None:
                    return self._repeated_or_refused_vote(session, battle_id, visitor_id, choice)
                session.execute(insert(Vote).values(battle_id=battle_id, choice=choice,
                                                    turn_count=claimed.turn_count, visitor_id=visitor_id))
                outcome = VoteOutcome(battle_id, choice, claimed.model_a, claimed.model_b, duplicate=False)
        except IntegrityError:
            # Another request (double click, retry, second tab) recorded the vote first.
            session.rollback()
            battle = session.get_one(Battle, battle_id)
            existing = session.scalars(select(Vote).where(Vote.battle_id == battle_id)).one()
            return _repeat_outcome(battle, existing, choice)
        finally:
            session.close()
        return outcome

    def _repeated_or_refused_vote(self, session: Session, battle_id: str, visitor_id: str, choice: str) -> VoteOutcome:
        """Why a battle could not be claimed: an earlier identical vote (fine), or a refusal."""
        battle = self._owned_battle(session, battle_id, visitor_id)
        existing = session.scalar(select(Vote).where(Vote.battle_id == battle_id))
        if existing is not None:
            return _repeat_outcome(battle, existing, choice)
        raise ConflictError(_status_message(battle.status))

    # -- reading -------------------------------------------------------------------------------

    def get_battle(self, battle_id: str) -> BattleView:
        """A battle as anyone holding its (random, unguessable) id may see it: names hidden until voted."""
        with self.sessions() as session:
            battle = session.get(Battle, battle_id)
            if battle is None:
                raise NotFoundError(f"no battle {battle_id!r}")
            return self._view(session, battle)

    def _view(self, session: Session, battle: Battle) -> BattleView:
        revealed = not battle.anonymous or battle.status == BattleStatus.VOTED
        vote = session.scalar(select(Vote.choice).where(Vote.battle_id == battle.id))
        messages = {
            c.side or "": [{"role": m.role, "content": m.content} for m in c.messages]
            for c in self._conversations(session, battle.id)
        }
        return BattleView(
            id=battle.id,
            mode=battle.mode,
            status=battle.status,
            turn_count=battle.turn_count,
            model_a=battle.model_a if revealed else None,
            model_b=battle.model_b if revealed else None,
            messages=messages,
            vote=vote,
        )

    # -- helpers -------------------------------------------------------------------------------

    def _check_prompt_shape(self, prompt: str) -> str:
        prompt = (prompt or "").strip()
        if not prompt:
            raise ArenaError("Please type a message first.")
        too_long = self.prompt_limits.too_long(prompt)
        if too_long:
            raise ArenaError(too_long)
        return prompt

    def _check_context(self, conversation: Conversation, prompt: str) -> None:
        """Refuse a turn that would overflow the model's context window (the endpoint would fail it)."""
        overflow = self.prompt_limits.overflow([conversation.model_name], _history(conversation), prompt)
        if overflow:
            raise ArenaError(overflow)

    def _check_rate_limit(self, session: Session, visitor_id: str) -> None:
        since = datetime.now(UTC) - timedelta(seconds=self.settings.rate_limit_window_s)
        recent = session.scalar(
            select(func.count(Message.id))
            .join(Conversation, Message.conversation_id == Conversation.id)
            .where(
                Conversation.visitor_id == visitor_id,
                (Conversation.side.is_(None)) | (Conversation.side == "a"),
                Message.role == "user",
                Message.created_at >= since,
            )
        )
        if (recent or 0) >= self.settings.rate_limit_turns:
            raise RateLimitedError(
                f"You sent {recent} messages in the last {self.settings.rate_limit_window_s:.0f} s; "
                "please wait a moment."
            )

    async def _moderate(self, prompt: str, visitor_id: str, *, battle_id: str | None = None,
                        conversation_id: str | None = None) -> None:
        result = await self.moderator.check(prompt)
        if not result.flagged:
            return
        with self.sessions.begin() as session:
            session.add(Flag(kind=FlagKind.MODERATION, battle_id=battle_id, conversation_id=conversation_id,
                             visitor_id=visitor_id,
                             detail=f"{result.source}: {', '.join(result.categories)}"))
        raise RefusedError(
            "This message was flagged by moderation (" + ", ".join(result.categories) + ") and was not sent."
        )

    def _owned_battle(self, session: Session, battle_id: str, visitor_id: str) -> Battle:
        battle = session.get(Battle, battle_id)
        if battle is None:
            raise NotFoundError(f"no battle {battle_id!r}")
        if battle.visitor_id != visitor_id:
            raise ForbiddenError("this battle belongs to another visitor")
        return battle

    @staticmethod
    def _conversations(session: Session, battle_id: str) -> list[Conversation]:
        return list(
            session.scalars(select(Conversation).where(Conversation.battle_id == battle_id).order_by(Conversation.side))
        )

    @staticmethod
    def _append(
        session: Session,
        conversation: Conversation,
        turn: int,
        role: str,
        content: str,
        *,
        error: str | None = None,
        usage: tuple[int | None, int | None, float | None, str | None] | None = None,
    ) -> None:
        prompt_tokens, completion_tokens, latency_s, finish_reason = usage or (None, None, None, None)
        position = len(conversation.messages)
        conversation.messages.append(
            Message(
                position=position,
                turn=turn,
                role=role,
                content=content,
                model_name=conversation.model_name if role == "assistant" else None,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=latency_s * 1000 if latency_s is not None else None,
                finish_reason=finish_reason if error is None else "error",
                error=error,
            )
        )
        session.flush()


# ----------------------------------------------------------------------------- small helpers


def _history(conversation: Conversation) -> list[dict[str, str]]:
    """The messages to send: every user message and every answer that did not fail."""
    return [
        {"role": m.role, "content": m.content}
        for m in conversation.messages
        if m.role == "user" or (m.role == "assistant" and m.error is None)
    ]


def _task_usage(task: asyncio.Task[ChatResult | None]) -> tuple[int | None, int | None, float | None, str | None]:
    if not task.done() or task.cancelled() or task.exception() is not None:
        return (None, None, None, None)
    result = task.result()
    if result is None:
        return (None, None, None, None)
    return (result.prompt_tokens, result.completion_tokens, result.latency_s, result.finish_reason)


def _describe_error(error: BaseException) -> str:
    if isinstance(error, ProviderError) and error.status_code == 400 and "context length" in str(error):
        return ("the conversation is longer than this model's context window, so it could not answer; "
                "start a new round")
    if isinstance(error, ProviderError):
        return str(error)
    return f"the model failed: {type(error).__name__}: {error}"


def _status_message(status: str | None) -> str:
    messages: dict[str | None, str] = {
        None: "no such battle",
        BattleStatus.OPEN: "this battle has no answers yet: ask a question first",
        BattleStatus.STREAMING: "the models are still answering: wait for both answers",
        BattleStatus.FAILED: "a model failed in this battle, so it cannot be voted on: start a new round",
        BattleStatus.VOTED: "this battle is already voted on: start a new round",
    }
    return messages.get(status, f"the battle is {status}")


def _reveals_identity(text: str, spec: ModelSpec) -> bool:
    """Whether an answer names its own model (name, served id, family or organization)."""
    names = {spec.name, spec.model_id}
    names.update(part for part in re.split(r"[-_/ .:]", spec.name) if len(part) >= 4 and part.isalpha()
                 and part.lower() not in _GENERIC_NAME_PARTS)
    if len(spec.organization) >= 3:
        names.add(spec.organization)
    lowered = text.lower()
    return any(re.search(r"\b" + re.escape(name.lower()) + r"\b", lowered) for name in names if name)


_GENERIC_NAME_PARTS = {"demo", "tiny", "chat", "instruct", "base", "model", "mini", "small", "large", "preview"}


def _repeat_outcome(battle: Battle, existing: Vote, choice: str) -> VoteOutcome:
    if existing.choice != choice:
        raise ConflictError(f"this battle was already voted {existing.choice!r}; a vote cannot be changed")
    return VoteOutcome(battle.id, existing.choice, battle.model_a, battle.model_b, duplicate=True)
