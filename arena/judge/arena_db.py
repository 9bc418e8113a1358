"""The arena database as arena-judge uses it: human votes to compare with, and the place where
MT-bench scores are stored for the leaderboard page.

arena-judge also runs without an arena, so the database is opened only when it is ready: a
SQLite file that does not exist is never created, and a database without the arena's tables
gives a clear :class:`ArenaDatabaseError` instead of a SQLAlchemy traceback.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from arena.config import get_settings
from arena.db.models import MTBenchScore
from arena.db.session import get_engine


class ArenaDatabaseError(ValueError):
    """The arena database is missing, unreachable or not migrated."""


def _describe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_arena_database(url: str | None, table: str) -> Engine:
    """The engine of the arena database at ``url`` (default ``ARENA_DATABASE_URL``), checked to hold ``table``."""
    url = url or get_settings().database_url
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ArenaDatabaseError(f"not a database URL: {url!r}") from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database or "")
        if not path.is_file():
            raise ArenaDatabaseError(
                f"no arena database at {path}: create it with `arena db upgrade`, or pass --database-url"
            )
    engine = get_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    except SQLAlchemyError as exc:
        raise ArenaDatabaseError(f"cannot open the arena database at {_describe(url)}: {exc.__class__.__name__}: "
                                 f"{str(exc).splitlines()[0]}") from exc
    if table not in tables:
        raise ArenaDatabaseError(
            f"the database at {_describe(url)} has no {table!r} table: run `arena db upgrade` on it first"
        )
    return engine


def store_mt_bench_scores(engine: Engine, judge: str, summary: dict[str, dict[str, Any]]) -> int:
    """Replace ``judge``'s MT-bench scores with this run's (models without a score are skipped);
    returns how many rows were written. One transaction: readers see the old or the new set."""
    now = datetime.now(UTC)
    rows = [
        MTBenchScore(model=model, judge=judge, score=float(result["score"]),
                     turn_1=result.get("turns", {}).get("turn_1"), turn_2=result.get("turns", {}).get("turn_2"),
                     judged_turns=int(result.get("judged", 0)), created_at=now)
        for model, result in summary.items() if result.get("score") is not None
    ]
    with Session(engine) as session, session.begin():
        session.execute(delete(MTBenchScore).where(MTBenchScore.judge == judge))
        session.add_all(rows)
    return len(rows)
