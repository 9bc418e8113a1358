"""Reading stored leaderboard snapshots: what pages, the API and ``arena leaderboard show`` display."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arena.db.models import OVERALL_CATEGORY, LeaderboardSnapshot, MTBenchScore


@dataclass
class LeaderboardView:
    """What pages and the API show: the newest snapshot of one (category, style) or an empty state."""

    category: str
    style_control: bool
    rows: list[dict[str, Any]]
    vote_count: int
    updated_at: datetime | None
    payload: dict[str, Any]

    @property
    def empty(self) -> bool:
        return not self.rows

    @property
    def categories(self) -> list[str]:
        return list(self.payload.get("categories", [OVERALL_CATEGORY]))

    @property
    def unrated(self) -> list[dict[str, Any]]:
        """Models with votes but no finite rating yet (they only won, or only lost, so far)."""
        return list(self.payload.get("unrated", []))

    @property
    def sources(self) -> dict[str, int]:
        """Counted votes per source: ``live`` and ``import:<label>``."""
        return dict(self.payload.get("sources", {}))

    @property
    def exclusions(self) -> dict[str, int]:
        return dict(self.payload.get("exclusions", {}))

    def as_frame(self) -> pd.DataFrame:
        columns = ["rank", "model", "rating", "ci_lower", "ci_upper", "votes", "organization", "license"]
        if any("mt_bench" in row for row in self.rows):
            columns.insert(6, "mt_bench")
        return pd.DataFrame(self.rows, columns=columns)


def latest_view(session: Session, category: str = OVERALL_CATEGORY, style_control: bool = False) -> LeaderboardView:
    """The newest snapshot for ``category`` and ``style_control`` (an empty view if none yet)."""
    snapshot = session.scalars(
        select(LeaderboardSnapshot)
        .where(LeaderboardSnapshot.category == category, LeaderboardSnapshot.style_control.is_(style_control))
        .order_by(LeaderboardSnapshot.created_at.desc(), LeaderboardSnapshot.id.desc())
        .limit(1)
    ).first()
    if snapshot is None:
        categories = _known_categories(session)
        return LeaderboardView(category, style_control, [], 0, None, {"categories": categories})
    created = snapshot.created_at if snapshot.created_at.tzinfo else snapshot.created_at.replace(tzinfo=UTC)
    return LeaderboardView(category, style_control, list(snapshot.payload.get("rows", [])),
                           snapshot.vote_count, created, dict(snapshot.payload))


def _known_categories(session: Session) -> list[str]:
    latest = session.scalars(
        select(LeaderboardSnapshot)
        .where(LeaderboardSnapshot.category == OVERALL_CATEGORY)
        .order_by(LeaderboardSnapshot.created_at.desc())
        .limit(1)
    ).first()
    return list(latest.payload.get("categories", [OVERALL_CATEGORY])) if latest else [OVERALL_CATEGORY]



def mt_bench_scores(session: Session) -> dict[str, float]:
    """Each model's MT-bench score (1-10) from the judge whose ``arena-judge`` run is the newest;
    ``{}`` before any run stored scores."""
    newest = session.execute(
        select(MTBenchScore.judge).order_by(MTBenchScore.created_at.desc(), MTBenchScore.id.desc()).limit(1)
    ).scalar()
    if newest is None:
        return {}
    rows = session.execute(select(MTBenchScore.model, func.max(MTBenchScore.score))
                           .where(MTBenchScore.judge == newest).group_by(MTBenchScore.model)).all()
    return {model: float(score) for model, score in rows}
