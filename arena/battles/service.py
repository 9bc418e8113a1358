"""The battle service: battles, turns streamed from two models at once, direct chats, votes.

Used by the Gradio page and the JSON API alike; it knows nothing about the web.  Every
visitor action is written to the database as it happens: a prompt (with an empty answer row
per side) before the models are called, each side's partial answer at every heartbeat and
its final answer (or error) when it ends, a vote in its own transaction.  Database work on
the async paths runs in the service's thread pool, so a slow query never stalls the event
loop; writes at the end of a turn are retried through short database outages.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from arena.battles.errors import (
    ArenaError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    RefusedError,
)
from arena.battles.rate_limit import RateLimiter, build_rate_limiter
from arena.battles.recording import TRANSIENT_DB_ERRORS, SideJob, TurnRecorder
from arena.battles.sampling import PairSampler, make_pair_sampler
from arena.battles.streaming import SideState, SideStreams, TurnRun, TurnStore, TurnUpdate, wait_for_runs
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
from arena.providers.client import ChatClient, StreamChunk
from arena.providers.registry import ModelRegistry, ModelSpec

logger = logging.getLogger(__name__)

SIDES = ("a", "b")

P = ParamSpec("P")
R = TypeVar("R")


# ----------------------------------------------------------------------------- views


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
        rate_limiter: RateLimiter | None = None,
    ):
        self.sessions = sessions
        self.registry = registry
        self.moderator = moderator
        self.settings = settings
        self.prompt_limits = PromptLimits(settings.max_prompt_chars, registry)
        self.sampler = sampler or make_pair_sampler(settings.sampling_policy, sessions)
        self.rate_limiter = rate_limiter or build_rate_limiter(settings.rate_limit_redis_url)
        self._client_factory = client_factory or (
            lambda spec: ChatClient.for_model(
                spec, timeout_s=settings.request_timeout_s, max_retries=settings.provider_max_retries
            )
        )
        self._clients: dict[str, ChatClient] = {}
        self._db_pool = ThreadPoolExecutor(max_workers=settings.db_threads, thread_name_prefix="arena-db")
        self._runs: set[TurnRun] = set()
        self.recorder = TurnRecorder(sessions, registry, settings, self.run_blocking)
        self._reaper: asyncio.Task[None] | None = None

    async def run_blocking(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking (database) work in the service's thread pool, keeping the event loop free."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_pool, functools.partial(fn, *args, **kwargs))

    # -- registry mirror and lifecycle -------------------------------------------------------

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

    def start_reaper(self) -> None:
        """Fail stale turns now and every ``reap_interval_s`` (turns of crashed servers end in bounded time)."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while True:
            try:
                await self.run_blocking(self.fail_abandoned_streams)
            except TRANSIENT_DB_ERRORS as exc:
                logger.warning("could not look for stale turns: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.reap_interval_s)

    async def aclose(self) -> None:
        """Stop open turns (storing what they received), then close the model connections and threads."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        left = await wait_for_runs(set(self._runs), self.settings.shutdown_grace_s)
        if left:
            logger.error("%d turn(s) did not finish storing in %.0f s; the reaper will fail them at the next start",
                         left, self.settings.shutdown_grace_s)
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
        close_limiter = getattr(self.rate_limiter, "close", None)
        if close_limiter is not None:
            close_limiter()
        # Finish the database work in flight; a fresh pool keeps the (sync) service usable afterwards.
        self._db_pool.shutdown(wait=True)
        self._db_pool = ThreadPoolExecutor(max_workers=self.settings.db_threads, thread_name_prefix="arena-db")

    def fail_abandoned_streams(self, older_than_s: float | None = None) -> int:
        """Fail turns whose server went away (see :meth:`TurnRecorder.fail_stale_turns`); return how many."""
        return self.recorder.fail_stale_turns(older_than_s)

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
        self._take_slot("new", visitor_id, self.settings.rate_limit_creations, "new battles or chats")
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
                raise NotFoundError(f"unknown model {_shown(name)}")
            if self.registry[name].is_gateway:
                raise ArenaError(f"{_shown(name)} is a gateway virtual model (cached, routed answers): direct chat only")
        return model_a, model_b

    def create_chat(self, visitor_id: str, model: str) -> str:
        """A direct chat with one named model; returns the conversation id."""
        if model not in self.registry:
            raise NotFoundError(f"unknown model {_shown(model)}")
        self._take_slot("new", visitor_id, self.settings.rate_limit_creations, "new battles or chats")
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
        """Send ``prompt`` to both models of the battle and stream both answers at once.

        The turn runs in its own task: leaving this iterator early stops the models, and the
        task stores what they wrote and fails the battle; it never stays 'streaming'.
        """
        prompt = self.check_prompt(prompt)
        _check_id(battle_id)
        await self.run_blocking(self._check_turn_allowed, battle_id, visitor_id, prompt)
        await self._moderate(prompt, visitor_id, battle_id=battle_id)
        jobs = await self.run_blocking(self._begin_battle_turn, battle_id, prompt)
        async for snapshot in self._run_battle_turn(battle_id, jobs):
            yield snapshot

    async def regenerate(self, battle_id: str, visitor_id: str) -> AsyncIterator[TurnUpdate]:
        """Ask both models again for the last turn, replacing their last answers."""
        _check_id(battle_id)
        jobs = await self.run_blocking(self._begin_regeneration, battle_id, visitor_id)
        async for snapshot in self._run_battle_turn(battle_id, jobs):
            yield snapshot

    def _check_turn_allowed(self, battle_id: str, visitor_id: str, prompt: str) -> None:
        with self.sessions() as session:
            battle = self._owned_battle(session, battle_id, visitor_id)
            if battle.turn_count >= self.settings.max_turns:
                raise ConflictError(f"this battle reached {self.settings.max_turns} turns; vote or start a new round")
            for conversation in self._conversations(session, battle_id):
                self._check_context(conversation, prompt)
        self._take_turn_slot(visitor_id)

    def _begin_battle_turn(self, battle_id: str, prompt: str) -> dict[str, SideJob]:
        """Claim the battle, store the prompt and an empty answer per side; return what to ask each side."""
        with self.sessions.begin() as session:
            self._claim_for_streaming(session, battle_id)
            battle = session.get_one(Battle, battle_id)
            battle.turn_count += 1
            turn = battle.turn_count
            jobs = {}
            for conversation in self._conversations(session, battle_id):
                self._append(session, conversation, turn, "user", prompt)
                jobs[conversation.side or ""] = self._side_job(session, conversation, turn)
            return jobs

    def _begin_regeneration(self, battle_id: str, visitor_id: str) -> dict[str, SideJob]:
        with self.sessions.begin() as session:
            battle = self._owned_battle(session, battle_id, visitor_id)
            if battle.turn_count == 0:
                raise ConflictError("nothing to regenerate yet: ask a question first")
            self._take_turn_slot(visitor_id)
            self._claim_for_streaming(session, battle_id)
            conversations = self._conversations(session, battle_id)
            for conversation in conversations:
                last = conversation.messages[-1] if conversation.messages else None
                if last is not None and last.role == "assistant":
                    conversation.messages.remove(last)
            session.flush()
            return {c.side or "": self._side_job(session, c, battle.turn_count) for c in conversations}

    def _side_job(self, session: Session, conversation: Conversation, turn: int) -> SideJob:
        """The history to send and a new, empty answer row that the turn fills as it streams."""
        history = _history(conversation)
        answer = self._append(session, conversation, turn, "assistant", "", in_progress=True)
        return SideJob(conversation.model_name, history, answer.id)

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

    async def _run_battle_turn(self, battle_id: str, jobs: dict[str, SideJob]) -> AsyncIterator[TurnUpdate]:
        anonymous = await self.run_blocking(self._is_anonymous, battle_id)

        async for snapshot in self._run(jobs, self.recorder.for_battle(battle_id, jobs, anonymous=anonymous)):
            yield snapshot

    async def _run(self, jobs: dict[str, SideJob], store: TurnStore) -> AsyncIterator[TurnUpdate]:
        """Start the turn's task and follow it; the first snapshot (empty) comes at once."""
        streams = SideStreams({side: self._opener(job) for side, job in jobs.items()})
        run = TurnRun(streams, store, heartbeat_s=self.settings.turn_heartbeat_s,
                      deadline_s=self.settings.turn_timeout_s)
        self._runs.add(run)
        run.task.add_done_callback(lambda _: self._runs.discard(run))
        yield TurnUpdate(sides=dict(streams.states))
        async for snapshot in run.watch():
            yield snapshot

    def _opener(self, job: SideJob) -> Callable[[], AsyncGenerator[StreamChunk, None]]:
        spec = self.registry[job.model]
        return lambda: self.client(job.model).stream_chat(
            job.history, temperature=self.settings.temperature, max_tokens=spec.max_tokens
        )

    def _is_anonymous(self, battle_id: str) -> bool:
        with self.sessions() as session:
            return bool(session.scalar(select(Battle.anonymous).where(Battle.id == battle_id)))

    # -- direct chat ---------------------------------------------------------------------------

    async def chat_turn(self, conversation_id: str, visitor_id: str, prompt: str) -> AsyncIterator[SideState]:
        """One turn of a direct chat, streamed; stored like a battle's side."""
        prompt = self.check_prompt(prompt)
        _check_id(conversation_id)
        await self.run_blocking(self._check_chat_allowed, conversation_id, visitor_id, prompt)
        await self._moderate(prompt, visitor_id, conversation_id=conversation_id)
        job = await self.run_blocking(self._begin_chat_turn, conversation_id, prompt)
        async for snapshot in self._run({"a": job}, self.recorder.for_chat(conversation_id, job)):
            yield snapshot.sides["a"]

    def _check_chat_allowed(self, conversation_id: str, visitor_id: str, prompt: str) -> None:
        with self.sessions() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None or conversation.battle_id is not None:
                raise NotFoundError("no such chat")
            if conversation.visitor_id != visitor_id:
                raise ForbiddenError("this chat belongs to another visitor")
            self._check_context(conversation, prompt)
        self._take_turn_slot(visitor_id)

    def _begin_chat_turn(self, conversation_id: str, prompt: str) -> SideJob:
        with self.sessions.begin() as session:
            conversation = session.get_one(Conversation, conversation_id)
            turn = sum(1 for m in conversation.messages if m.role == "user") + 1
            self._append(session, conversation, turn, "user", prompt)
            return self._side_job(session, conversation, turn)

    # -- votes ---------------------------------------------------------------------------------

    def vote(self, battle_id: str, visitor_id: str, choice: str) -> VoteOutcome:
        """Record the visitor's verdict, once: repeats of the same vote are harmless."""
        try:
            choice = VoteChoice(choice).value
        except ValueError:
            raise ArenaError(f"unknown vote {_shown(choice)}; use one of a, b, tie, both_bad") from None
        _check_id(battle_id)
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
        _check_id(battle_id)
        with self.sessions() as session:
            battle = session.get(Battle, battle_id)
            if battle is None:
                raise NotFoundError(f"no battle {_shown(battle_id)}")
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

    def check_prompt(self, prompt: str) -> str:
        """The prompt, stripped, or :class:`ArenaError` saying why it cannot be sent (empty, NUL,
        too long). Pages call it before creating a battle or chat, so a refused prompt leaves no row."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise ArenaError("Please type a message first.")
        if "\x00" in prompt:
            raise ArenaError("Your message contains a NUL character (\\u0000); remove it and send again.")
        too_long = self.prompt_limits.too_long(prompt)
        if too_long:
            raise ArenaError(too_long)
        return prompt

    def _check_context(self, conversation: Conversation, prompt: str) -> None:
        """Refuse a turn that would overflow the model's context window (the endpoint would fail it)."""
        overflow = self.prompt_limits.overflow([conversation.model_name], _history(conversation), prompt)
        if overflow:
            raise ArenaError(overflow)

    def _take_turn_slot(self, visitor_id: str) -> None:
        self._take_slot("turn", visitor_id, self.settings.rate_limit_turns, "messages")

    def _take_slot(self, kind: str, visitor_id: str, limit: int, what: str) -> None:
        """Take one slot of the visitor's window, atomically, or refuse with when to retry."""
        window = self.settings.rate_limit_window_s
        wait = self.rate_limiter.acquire(f"{kind}:{visitor_id}", limit, window)
        if wait is not None:
            raise RateLimitedError(
                f"You sent {limit} {what} in the last {window:.0f} s; please wait {wait:.0f} s.", retry_after_s=wait
            )

    async def _moderate(self, prompt: str, visitor_id: str, *, battle_id: str | None = None,
                        conversation_id: str | None = None) -> None:
        result = await self.moderator.check(prompt)
        if not result.flagged:
            return
        await self.run_blocking(self._record_flag, result.source, result.categories, visitor_id,
                                battle_id, conversation_id)
        raise RefusedError(
            "This message was flagged by moderation (" + ", ".join(result.categories) + ") and was not sent."
        )

    def _record_flag(self, source: str, categories: tuple[str, ...], visitor_id: str, battle_id: str | None,
                     conversation_id: str | None) -> None:
        with self.sessions.begin() as session:
            session.add(Flag(kind=FlagKind.MODERATION, battle_id=battle_id, conversation_id=conversation_id,
                             visitor_id=visitor_id, detail=f"{source}: {', '.join(categories)}"))

    def _owned_battle(self, session: Session, battle_id: str, visitor_id: str) -> Battle:
        battle = session.get(Battle, battle_id)
        if battle is None:
            raise NotFoundError(f"no battle {_shown(battle_id)}")
        if battle.visitor_id != visitor_id:
            raise ForbiddenError("this battle belongs to another visitor")
        return battle

    @staticmethod
    def _conversations(session: Session, battle_id: str) -> list[Conversation]:
        return list(
            session.scalars(select(Conversation).where(Conversation.battle_id == battle_id).order_by(Conversation.side))
        )

    @staticmethod
    def _append(session: Session, conversation: Conversation, turn: int, role: str, content: str, *,
                in_progress: bool = False) -> Message:
        """Add a message at the end of the conversation; an answer starts empty and ``in_progress``."""
        message = Message(
            position=len(conversation.messages),
            turn=turn,
            role=role,
            content=content,
            model_name=conversation.model_name if role == "assistant" else None,
            finish_reason=None if in_progress or role != "assistant" else "stop",
        )
        conversation.messages.append(message)
        session.flush()
        return message


# ----------------------------------------------------------------------------- small helpers


def _history(conversation: Conversation) -> list[dict[str, str]]:
    """The messages to send: every user message and every answer that did not fail."""
    return [
        {"role": m.role, "content": m.content}
        for m in conversation.messages
        if m.role == "user" or (m.role == "assistant" and m.error is None and m.finish_reason is not None)
    ]


def _check_id(value: str) -> None:
    """Ids are hex strings; one with a NUL byte would make PostgreSQL fail, so it is refused here."""
    if "\x00" in value:
        raise ArenaError("ids cannot contain a NUL character (\\u0000)")


def _shown(value: str) -> str:
    """A visitor-supplied value quoted for an error message, shortened."""
    return repr(value[:80] + ("…" if len(value) > 80 else ""))


def _status_message(status: str | None) -> str:
    messages: dict[str | None, str] = {
        None: "no such battle",
        BattleStatus.OPEN: "this battle has no answers yet: ask a question first",
        BattleStatus.STREAMING: "the models are still answering: wait for both answers",
        BattleStatus.FAILED: "a model failed in this battle, so it cannot be voted on: start a new round",
        BattleStatus.VOTED: "this battle is already voted on: start a new round",
    }
    return messages.get(status, f"the battle is {status}")


def _repeat_outcome(battle: Battle, existing: Vote, choice: str) -> VoteOutcome:
    if existing.choice != choice:
        raise ConflictError(f"this battle was already voted {existing.choice!r}; a vote cannot be changed")
    return VoteOutcome(battle.id, existing.choice, battle.model_a, battle.model_b, duplicate=True)
