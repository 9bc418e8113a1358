"""The periodic leaderboard refresh: recomputes the snapshots in a worker thread while the app runs.

Started and stopped by the web app's lifespan; the job itself is :func:`arena.leaderboard.job.compute_leaderboards`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.orm import Session, sessionmaker

from arena.config import Settings
from arena.leaderboard.job import LeaderboardOptions, compute_leaderboards

logger = logging.getLogger(__name__)


class LeaderboardRefresher:
    """Recomputes the snapshots every ``interval_s`` seconds in a worker thread, until stopped."""

    def __init__(self, sessions: sessionmaker[Session], interval_s: float, options: LeaderboardOptions | None = None):
        self.sessions = sessions
        self.interval_s = interval_s
        self.options = options or LeaderboardOptions()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, sessions: sessionmaker[Session], settings: Settings) -> LeaderboardRefresher:
        """Every ``ARENA_LEADERBOARD_REFRESH_S`` seconds (0 turns it off), honouring
        ``ARENA_EXCLUDE_ANOMALOUS_VOTERS``."""
        options = LeaderboardOptions(exclude_anomalous_voters=settings.exclude_anomalous_voters)
        return cls(sessions, settings.leaderboard_refresh_s, options)

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="leaderboard-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(compute_leaderboards, self.sessions, self.options)
            except Exception:  # keep serving the last snapshot; the next round tries again
                logger.exception("leaderboard refresh failed")
