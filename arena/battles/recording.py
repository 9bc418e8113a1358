"""Writing running turns into the database, and failing the turns of servers that went away.

A turn's answers are written as they arrive: the partial text of each side at every heartbeat
(which also tells other servers the turn is alive), each side's final answer as soon as it
ends, then the battle's outcome.  Writes are retried through database outages for
``store_retry_s``, so an answer already received survives the database being down at the end
of its turn.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from arena.battles.streaming import SideState, TurnStore
from arena.config import Settings
from arena.db.models import Battle, BattleStatus, Conversation, Flag, FlagKind, Message
from arena.providers.registry import ModelRegistry, ModelSpec

logger = logging.getLogger(__name__)

STOPPED = "the turn stopped before the answer finished (the server went away)"
# Database errors worth retrying: the connection or the server, not the statement.
TRANSIENT_DB_ERRORS = (OperationalError, PoolTimeoutError)

R = TypeVar("R")


@dataclass(frozen=True)
class SideJob:
    """What one side of a turn asks its model, and the answer row it fills."""

    model: str
    history: list[dict[str, str]]
    message_id: int


class TurnRecorder:
    """The database side of running turns; blocking work goes through ``run_blocking`` (a thread pool)."""

    def __init__(self, sessions: sessionmaker[Session], registry: ModelRegistry, settings: Settings,
                 run_blocking: Callable[..., Awaitable[Any]]):
        self.sessions = sessions
        self.registry = registry
        self.settings = settings
        self._run_blocking = run_blocking

    def for_battle(self, battle_id: str, jobs: dict[str, SideJob], *, anonymous: bool) -> TurnStore:
        """Where a battle's turn writes; an anonymous answer naming its model flags the battle."""

        async def save_progress(states: dict[str, SideState]) -> None:
            await self.store(self.save_progress, jobs, states, battle_id=battle_id)

        async def save_side(side: str, state: SideState) -> None:
            await self.store(self.save_answer, jobs[side], state, battle_id=battle_id, anonymous=anonymous)

        async def settle(states: dict[str, SideState]) -> str:
            return await self.store(self.settle_battle, battle_id, states)

        return TurnStore(save_progress, save_side, settle)

    def for_chat(self, conversation_id: str, job: SideJob) -> TurnStore:
        """Where a direct chat's turn writes (one side, no battle to settle)."""

        async def save_progress(states: dict[str, SideState]) -> None:
            await self.store(self.save_progress, {"a": job}, states, conversation_id=conversation_id)

        async def save_side(_: str, state: SideState) -> None:
            await self.store(self.save_answer, job, state, conversation_id=conversation_id)

        async def settle(states: dict[str, SideState]) -> str:
            return BattleStatus.FAILED if states["a"].error else BattleStatus.READY

        return TurnStore(save_progress, save_side, settle)

    async def store(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run a write off the event loop, retried through database outages for up to ``store_retry_s``."""
        deadline = time.monotonic() + self.settings.store_retry_s
        delay = 0.1
        while True:
            try:
                return await self._run_blocking(fn, *args, **kwargs)  # type: ignore[no-any-return]
            except TRANSIENT_DB_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("database unavailable while storing an answer (%s); retrying in %.1f s",
                               type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def save_progress(self, jobs: dict[str, SideJob], states: dict[str, SideState], *,
                       battle_id: str | None = None, conversation_id: str | None = None) -> None:
        """The heartbeat: store the partial text of unfinished sides and touch the battle or chat."""
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            for side, job in jobs.items():
                if not states[side].done:
                    session.execute(update(Message).where(Message.id == job.message_id,
                                                          Message.finish_reason.is_(None))
                                    .values(content=states[side].text))
            self._touch(session, now, battle_id=battle_id, conversation_id=conversation_id)

    def save_answer(self, job: SideJob, state: SideState, *, battle_id: str | None = None,
                     conversation_id: str | None = None, anonymous: bool = False) -> None:
        """Store one side's final answer (or the text it had when it failed), as soon as it ends."""
        result = state.result
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            session.execute(update(Message).where(Message.id == job.message_id).values(
                content=state.text,
                error=state.error,
                finish_reason="error" if state.error else (result.finish_reason if result else None),
                prompt_tokens=result.prompt_tokens if result else None,
                completion_tokens=result.completion_tokens if result else None,
                latency_ms=result.latency_s * 1000 if result else None,
            ))
            if battle_id and anonymous and _reveals_identity(state.text, self.registry[job.model]):
                side_row = session.scalars(select(Conversation).join(Message, Message.conversation_id == Conversation.id)
                                           .where(Message.id == job.message_id)).one()
                session.add(Flag(kind=FlagKind.IDENTITY_REVEALED, battle_id=battle_id,
                                 conversation_id=side_row.id, detail=f"side {side_row.side} named its model"))
            self._touch(session, now, battle_id=battle_id, conversation_id=conversation_id)

    @staticmethod
    def _touch(session: Session, now: datetime, *, battle_id: str | None, conversation_id: str | None) -> None:
        if battle_id:
            session.execute(update(Battle).where(Battle.id == battle_id, Battle.status == BattleStatus.STREAMING)
                            .values(updated_at=now))
        if conversation_id:
            session.execute(update(Conversation).where(Conversation.id == conversation_id).values(updated_at=now))

    def settle_battle(self, battle_id: str, states: dict[str, SideState]) -> str:
        """Ready when both sides answered, failed otherwise; a battle already failed by the reaper stays so."""
        status = BattleStatus.FAILED if any(s.error for s in states.values()) else BattleStatus.READY
        with self.sessions.begin() as session:
            session.execute(update(Battle).where(Battle.id == battle_id, Battle.status == BattleStatus.STREAMING)
                            .values(status=status, updated_at=datetime.now(UTC)))
            return str(session.scalar(select(Battle.status).where(Battle.id == battle_id)))

    def fail_stale_turns(self, older_than_s: float | None = None) -> int:
        """Fail turns whose server stopped touching them (crashed, killed); return how many battles.

        A live turn touches its battle or chat every ``turn_heartbeat_s``; one silent for
        ``stale_turn_s`` has no server left.  Its battle becomes 'failed' and its unfinished
        answers keep the text stored so far, with an error saying why they end there.
        """
        limit = older_than_s if older_than_s is not None else self.settings.stale_turn_s
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=limit)
        with self.sessions.begin() as session:
            stale = list(session.scalars(
                select(Battle.id).where(Battle.status == BattleStatus.STREAMING, Battle.updated_at < cutoff)
            ))
            if stale:
                session.execute(update(Battle).where(Battle.id.in_(stale), Battle.status == BattleStatus.STREAMING)
                                .values(status=BattleStatus.FAILED, updated_at=now))
            abandoned = select(Conversation.id).where(
                Conversation.battle_id.in_(stale)
                | (Conversation.battle_id.is_(None) & (Conversation.updated_at < cutoff))
            )
            session.execute(
                update(Message)
                .where(Message.conversation_id.in_(abandoned), Message.role == "assistant",
                       Message.finish_reason.is_(None), Message.error.is_(None))
                .values(error=STOPPED, finish_reason="error")
            )
        if stale:
            logger.warning("marked %d abandoned streaming battle(s) as failed", len(stale))
        return len(stale)


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
