"""Keeps the leaderboard current while the app runs: a recompute soon after votes arrive.

A worker watches two timestamps in the database, the newest vote and the newest snapshot (both
indexed, so a look costs one index probe). When a vote is newer than the snapshot, it waits
until votes have been quiet for ``debounce_s`` seconds (a burst of votes costs one recompute),
but never longer than ``max_wait_s`` after it first saw the new vote (steady voting still
updates the page), then recomputes in a worker thread. Because the state is in the database, a
restart, several server processes or ``arena leaderboard compute`` run by hand all agree.

Started and stopped by the web app's lifespan; the job itself is :func:`arena.leaderboard.job.compute_leaderboards`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from arena.config import Settings
from arena.db.models import OVERALL_CATEGORY, LeaderboardSnapshot, Vote
from arena.leaderboard.job import LeaderboardOptions, compute_leaderboards

logger = logging.getLogger(__name__)

STOP_GRACE_S = 30.0


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time here is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def newest_vote_at(session: Session) -> datetime | None:
    return _utc(session.scalar(select(func.max(Vote.created_at))))


def newest_snapshot_at(session: Session) -> datetime | None:
    """When the newest overall leaderboard was computed (every run writes one)."""
    return _utc(session.scalar(
        select(LeaderboardSnapshot.created_at)
        .where(LeaderboardSnapshot.category == OVERALL_CATEGORY, LeaderboardSnapshot.style_control.is_(False))
        .order_by(LeaderboardSnapshot.created_at.desc())
        .limit(1)
    ))


def votes_since(session: Session, moment: datetime | None) -> int:
    """Votes cast after ``moment`` (all votes when None): what the next recompute will add."""
    query = select(func.count(Vote.id))
    if moment is not None:
        query = query.where(Vote.created_at > moment)
    return int(session.scalar(query) or 0)


@dataclass(frozen=True)
class RefreshPolicy:
    """When new votes make a recompute due."""

    debounce_s: float = 5.0  # quiet time after the newest vote
    max_wait_s: float = 60.0  # longest a vote waits while others keep arriving

    def due(self, newest_vote: datetime | None, newest_snapshot: datetime | None,
            pending_since: datetime | None, now: datetime) -> tuple[bool, datetime | None]:
        """(recompute now?, since when votes have been pending) for the timestamps seen ``now``."""
        if newest_vote is None or (newest_snapshot is not None and newest_vote <= newest_snapshot):
            return False, None
        pending_since = pending_since or now
        quiet = (now - newest_vote).total_seconds() >= self.debounce_s
        overdue = (now - pending_since).total_seconds() >= self.max_wait_s
        return quiet or overdue, pending_since


class LeaderboardRefresher:
    """Recomputes the snapshots soon after new votes (see the module docstring), until stopped."""

    def __init__(self, sessions: sessionmaker[Session], policy: RefreshPolicy | None = None,
                 options: LeaderboardOptions | None = None, *, enabled: bool = True):
        self.sessions = sessions
        self.policy = policy or RefreshPolicy()
        self.options = options or LeaderboardOptions()
        self.enabled = enabled
        # Look often enough to honour the debounce, at most every 2 s (one index probe each).
        self.poll_s = max(0.05, min(2.0, self.policy.debounce_s / 2))
        self._task: asyncio.Task[None] | None = None
        self._computing: asyncio.Future[list[LeaderboardSnapshot]] | None = None  # the recompute's thread

    @classmethod
    def from_settings(cls, sessions: sessionmaker[Session], settings: Settings) -> LeaderboardRefresher:
        """``ARENA_LEADERBOARD_DEBOUNCE_S`` and ``ARENA_LEADERBOARD_REFRESH_S`` (0 turns it off),
        honouring ``ARENA_EXCLUDE_ANOMALOUS_VOTERS``."""
        options = LeaderboardOptions(exclude_anomalous_voters=settings.exclude_anomalous_voters)
        policy = RefreshPolicy(debounce_s=settings.leaderboard_debounce_s,
                               max_wait_s=max(settings.leaderboard_refresh_s, settings.leaderboard_debounce_s))
        return cls(sessions, policy, options, enabled=settings.leaderboard_refresh_s > 0)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="leaderboard-refresh")

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop watching; a recompute already running (a thread: it cannot be cancelled) gets
        ``grace_s`` to finish, so no database work outlives the app by more than that."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._computing is not None and not self._computing.done():
            _, pending = await asyncio.wait({self._computing}, timeout=grace_s)
            if pending:
                logger.warning("a leaderboard recompute still runs %.0f s after the app stopped", grace_s)

    def check(self, pending_since: datetime | None) -> tuple[bool, datetime | None]:
        """Read the two timestamps and decide (see :meth:`RefreshPolicy.due`)."""
        with self.sessions() as session:
            newest_vote, newest_snapshot = newest_vote_at(session), newest_snapshot_at(session)
        return self.policy.due(newest_vote, newest_snapshot, pending_since, datetime.now(UTC))

    async def _run(self) -> None:
        pending_since: datetime | None = None
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                due, pending_since = await asyncio.to_thread(self.check, pending_since)
                if due:
                    computing = asyncio.ensure_future(
                        asyncio.to_thread(compute_leaderboards, self.sessions, self.options)
                    )
                    self._computing = computing
                    await asyncio.shield(computing)  # a stop waits for it (see stop)
                    pending_since = None
            except Exception:  # keep serving the last snapshot; try again after the longest wait
                logger.exception("leaderboard refresh failed")
                await asyncio.sleep(self.policy.max_wait_s)
