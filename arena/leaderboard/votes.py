"""Reading counted votes from the database, with the leaderboard's exclusions as WHERE clauses.

Used by the leaderboard job (:mod:`arena.leaderboard.job`) and the active pair sampler (:mod:`arena.battles.sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session

from arena.db.models import IMPORT_SOURCE_PREFIX, LIVE_SOURCE, Battle, Flag, FlagKind, Visitor, Vote

IMPORTED = "imported"  # a source selector meaning every imported battle log
PROMPT_DEDUP = "prompt_dedup"  # the exclusion reason of down-sampled repeated prompts


@dataclass(frozen=True)
class VoteFilter:
    """Which votes count. ``sources`` empty means all; else any of ``live``, ``imported`` (every
    import) and ``import:<label>`` (one import)."""

    exclude_flagged: bool = True
    exclude_anomalous: bool = True
    exclude_downsampled: bool = True
    sources: tuple[str, ...] = ()


def check_sources(sources: tuple[str, ...]) -> tuple[str, ...]:
    """The source selectors, checked; ValueError names a bad one."""
    for source in sources:
        if source not in (LIVE_SOURCE, IMPORTED) and not (
            source.startswith(IMPORT_SOURCE_PREFIX) and len(source) > len(IMPORT_SOURCE_PREFIX)
        ):
            raise ValueError(f"unknown source {source!r}: use live, imported or import:<label>")
    return sources


def source_clause(sources: tuple[str, ...]) -> Any:
    """A WHERE clause on Battle.source for the selectors (None when all sources count)."""
    if not sources:
        return None
    clauses = []
    for source in check_sources(sources):
        if source == IMPORTED:
            clauses.append(Battle.source.startswith(IMPORT_SOURCE_PREFIX, autoescape=True))
        else:
            clauses.append(Battle.source == source)
    return or_(*clauses)


def _counted_votes(where: VoteFilter) -> Any:
    """A select over votes joined to battles, with the exclusions as WHERE clauses."""
    query = select(Battle.model_a, Battle.model_b, Vote.choice).join(Vote, Vote.battle_id == Battle.id)
    if where.exclude_flagged:
        query = query.where(~exists().where(Flag.battle_id == Battle.id))
    if where.exclude_anomalous:
        query = query.where(
            ~exists().where((Visitor.id == Vote.visitor_id) & Visitor.anomalous.is_(True))
        )
    if where.exclude_downsampled:
        query = query.where(Battle.prompt_downsampled.is_(False))
    sources = source_clause(where.sources)
    return query if sources is None else query.where(sources)


def grouped_votes(session: Session, where: VoteFilter | None = None) -> pd.DataFrame:
    """Vote counts grouped in the database: model_a, model_b, winner, tags, count."""
    query = _counted_votes(where or VoteFilter()).add_columns(Battle.tags, func.count())
    query = query.group_by(Battle.model_a, Battle.model_b, Vote.choice, Battle.tags)
    rows = session.execute(query).all()
    return pd.DataFrame(rows, columns=["model_a", "model_b", "winner", "tags", "count"])


def grouped_pair_votes(session: Session) -> pd.DataFrame:
    """Vote counts per (model_a, model_b, winner) over all counted votes; for pair sampling."""
    query = _counted_votes(VoteFilter()).add_columns(func.count())
    query = query.group_by(Battle.model_a, Battle.model_b, Vote.choice)
    return pd.DataFrame(session.execute(query).all(), columns=["model_a", "model_b", "winner", "count"])


def vote_rows(session: Session, where: VoteFilter | None = None) -> pd.DataFrame:
    """One row per counted vote with time, tags and style (for style control and rating history)."""
    query = _counted_votes(where or VoteFilter()).add_columns(
        Vote.created_at, Vote.visitor_id, Battle.tags, Battle.style
    )
    rows = session.execute(query.order_by(Vote.created_at, Vote.id)).all()
    return pd.DataFrame(
        rows, columns=["model_a", "model_b", "winner", "timestamp", "visitor", "tags", "style"]
    )


def votes_by_source(session: Session, where: VoteFilter | None = None) -> dict[str, int]:
    """Counted votes per Battle.source (``live``, ``import:<label>``)."""
    query = _counted_votes(where or VoteFilter()).with_only_columns(Battle.source, func.count())
    return {source: int(n) for source, n in session.execute(query.group_by(Battle.source)).all()}


def exclusion_counts(session: Session, sources: tuple[str, ...] = ()) -> dict[str, int]:
    """Votes left out of the leaderboard, by reason (a battle with several flags counts once per
    kind; a down-sampled repeated prompt counts only when nothing else excludes it)."""
    in_sources = source_clause(sources)
    counts = {kind.value: 0 for kind in FlagKind}
    flagged = (select(Flag.kind, func.count(func.distinct(Vote.battle_id)))
               .join(Vote, Vote.battle_id == Flag.battle_id).join(Battle, Battle.id == Vote.battle_id))
    if in_sources is not None:
        flagged = flagged.where(in_sources)
    counts.update({kind: int(n) for kind, n in session.execute(flagged.group_by(Flag.kind)).all()})
    anomalous = (select(func.count(Vote.id)).join(Visitor, Visitor.id == Vote.visitor_id)
                 .join(Battle, Battle.id == Vote.battle_id).where(Visitor.anomalous.is_(True))
                 .where(~exists().where(Flag.battle_id == Vote.battle_id)))
    if in_sources is not None:
        anomalous = anomalous.where(in_sources)
    counts[FlagKind.ANOMALOUS_VOTER.value] = int(session.scalar(anomalous) or 0)
    downsampled = _counted_votes(VoteFilter(exclude_downsampled=False, sources=sources)).where(
        Battle.prompt_downsampled.is_(True)).with_only_columns(func.count())
    counts[PROMPT_DEDUP] = int(session.scalar(downsampled) or 0)
    return counts
