"""Reading counted votes from the database, with the leaderboard's exclusions as WHERE clauses.

Used by the leaderboard job (:mod:`arena.leaderboard.job`) and the active pair sampler.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from arena.db.models import Battle, Flag, FlagKind, Visitor, Vote


def _counted_votes(exclude_flagged: bool, exclude_anomalous: bool) -> Any:
    """A select over votes joined to battles, with the exclusions as WHERE clauses."""
    query = select(Battle.model_a, Battle.model_b, Vote.choice).join(Vote, Vote.battle_id == Battle.id)
    if exclude_flagged:
        query = query.where(~exists().where(Flag.battle_id == Battle.id))
    if exclude_anomalous:
        query = query.where(
            ~exists().where((Visitor.id == Vote.visitor_id) & Visitor.anomalous.is_(True))
        )
    return query


def grouped_votes(session: Session, exclude_flagged: bool = True, exclude_anomalous: bool = True) -> pd.DataFrame:
    """Vote counts grouped in the database: model_a, model_b, winner, tags, count."""
    query = _counted_votes(exclude_flagged, exclude_anomalous).add_columns(Battle.tags, func.count())
    query = query.group_by(Battle.model_a, Battle.model_b, Vote.choice, Battle.tags)
    rows = session.execute(query).all()
    return pd.DataFrame(rows, columns=["model_a", "model_b", "winner", "tags", "count"])


def grouped_pair_votes(session: Session) -> pd.DataFrame:
    """Vote counts per (model_a, model_b, winner) over all counted votes; for pair sampling."""
    query = _counted_votes(True, True).add_columns(func.count())
    query = query.group_by(Battle.model_a, Battle.model_b, Vote.choice)
    return pd.DataFrame(session.execute(query).all(), columns=["model_a", "model_b", "winner", "count"])


def vote_rows(session: Session, exclude_flagged: bool = True, exclude_anomalous: bool = True) -> pd.DataFrame:
    """One row per counted vote with time, tags and style (for style control and rating history)."""
    query = _counted_votes(exclude_flagged, exclude_anomalous).add_columns(
        Vote.created_at, Vote.visitor_id, Battle.tags, Battle.style
    )
    rows = session.execute(query.order_by(Vote.created_at, Vote.id)).all()
    return pd.DataFrame(
        rows, columns=["model_a", "model_b", "winner", "timestamp", "visitor", "tags", "style"]
    )


def exclusion_counts(session: Session) -> dict[str, int]:
    """Votes left out of the leaderboard, by reason (a battle with several flags counts once per kind)."""
    counts = {kind.value: 0 for kind in FlagKind}
    flagged = session.execute(
        select(Flag.kind, func.count(func.distinct(Vote.battle_id)))
        .join(Vote, Vote.battle_id == Flag.battle_id)
        .group_by(Flag.kind)
    ).all()
    counts.update({kind: int(n) for kind, n in flagged})
    counts[FlagKind.ANOMALOUS_VOTER.value] = int(session.scalar(
        select(func.count(Vote.id))
        .join(Visitor, Visitor.id == Vote.visitor_id)
        .where(Visitor.anomalous.is_(True))
        .where(~exists().where(Flag.battle_id == Vote.battle_id))
    ) or 0)
    return counts
