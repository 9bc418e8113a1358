"""The leaderboard job: votes in the database -> ratings -> stored snapshots.

Steps, each idempotent so an interrupted run can simply be run again:

1. :func:`annotate_battles` computes category tags, style features and the prompt hash for live
   voted battles that do not have them yet and stores them on the battle (once per battle).
   Imported battles (``arena import battles``) bring theirs from the battle log.
2. :func:`mark_downsampled_prompts` applies lmarena's de-duplication: battles beyond the
   99.9th-percentile count of the most repeated prompts are marked and left out.
3. :func:`detect_anomalous_voters` flags visitors whose votes are improbable under the fitted
   model (``Visitor.anomalous`` and an ``anomalous_voter`` flag).
4. :func:`compute_leaderboards` groups votes in the database (``GROUP BY model_a, model_b, choice,
   tags``), fits Bradley-Terry with bootstrap intervals per category, with and without style
   control, and stores one :class:`~arena.db.models.LeaderboardSnapshot` per (category, style).

Battles with a flag (moderation, model identity revealed) are excluded, and so are the votes of
anomalous visitors when ``ARENA_EXCLUDE_ANOMALOUS_VOTERS`` is on, and the down-sampled repeated
prompts; the snapshot says how many, and how many votes came from each source.
Pages read snapshots only (:mod:`arena.leaderboard.view`), so a request never recomputes anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from lingua import LanguageDetector
from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session, sessionmaker

from arena.db.models import (
    LIVE_SOURCE,
    OVERALL_CATEGORY,
    Battle,
    Conversation,
    Flag,
    FlagKind,
    LeaderboardSnapshot,
    Message,
    Model,
    Visitor,
    Vote,
)
from arena.leaderboard.votes import (
    PROMPT_DEDUP,
    VoteFilter,
    check_sources,
    exclusion_counts,
    grouped_votes,
    vote_rows,
    votes_by_source,
)
from arena.ranking import (
    BTConfig,
    RatingScale,
    StyleConfig,
    battle_style,
    bootstrap_bt,
    fit_bt,
    fit_style_bt,
    leaderboard_table,
    pair_counts_from_grouped,
    sandwich_se,
)
from arena.ranking.anomalies import flag_anomalous_voters
from arena.ranking.categories import build_language_detector, tag_battle
from arena.ranking.dedup import downsampled_battles, prompt_hash
from arena.ranking.style import STYLE_FEATURES, bootstrap_style_bt, prepare_style_data

logger = logging.getLogger(__name__)

# The plain MLE, as the README promises. Where it is infinite (a model that only won or only lost
# in a category or bootstrap round) the model is left unrated there, see arena.ranking.bradley_terry.
LEADERBOARD_BT = BTConfig()
HISTORY_PERIODS = 90


@dataclass
class LeaderboardOptions:
    """What a compute run does; defaults suit the periodic refresh."""

    rounds: int = 100
    seed: int = 0
    exclude_flagged: bool = True
    exclude_anomalous_voters: bool = True
    detect_anomalies: bool = True
    anomaly_alpha: float = 0.01
    anomaly_min_votes: int = 10
    history_freq: str = "D"
    scale: RatingScale = field(default_factory=RatingScale)
    # lmarena's prompt de-duplication: the top 0.1% most repeated prompts are down-sampled.
    dedup_prompts: bool = True
    # Which battles count: empty for all, else any of live, imported, import:<label>.
    sources: tuple[str, ...] = ()
    # Snapshots kept per (category, style) after a run: pages read only the newest, the rest
    # is a short trail for debugging (a day at the default 10-minute refresh).
    keep_snapshots: int = 144


# ----------------------------------------------------------------------------- annotation


@lru_cache(maxsize=1)
def language_detector() -> LanguageDetector:
    """lingua's detector, built once per process: loading its models takes seconds (read-only after)."""
    return build_language_detector()


def annotate_battles(sessions: sessionmaker[Session], batch_size: int = 500) -> int:
    """Store tags, style and the prompt hash on live voted battles that lack them; returns how
    many were annotated. Imported battles bring theirs from the battle log.

    Tagging is slow (lingua's detector takes seconds to build, then milliseconds a battle), so
    it runs between a read and a short write: a write transaction held through it would lock
    SQLite against every vote and new battle meanwhile (their BEGIN IMMEDIATE waits).
    """
    done = 0
    while True:
        with sessions() as session:
            battles = session.scalars(
                select(Battle)
                .where(exists().where(Vote.battle_id == Battle.id))
                .where(Battle.source == LIVE_SOURCE)
                .where(Battle.tags.is_(None) | Battle.style.is_(None) | Battle.prompt_hash.is_(None))
                .limit(batch_size)
            ).all()
            pending = [(battle.id, battle.tags is None, battle.style is None, *_battle_texts(session, battle.id))
                       for battle in battles]  # fmt: skip
        if not pending:
            return done
        annotations = [_annotation(*item) for item in pending]
        with sessions.begin() as session:
            for battle_id, values in annotations:
                battle = session.get(Battle, battle_id)
                if battle is None:  # deleted meanwhile
                    continue
                for field, value in values.items():
                    if getattr(battle, field) is None:  # another job may have annotated it meanwhile
                        setattr(battle, field, value)
        done += len(annotations)
        logger.info("annotated %d battles", done)


def _annotation(battle_id: str, needs_tags: bool, needs_style: bool, user_turns: list[str],
                answers: dict[str, list[str]]) -> tuple[str, dict[str, Any]]:
    """The missing annotations of one battle (no database work)."""
    values: dict[str, Any] = {"prompt_hash": prompt_hash(user_turns[0] if user_turns else "")}
    if needs_tags:
        values["tags"] = tag_battle(user_turns, language_detector())
    if needs_style:
        values["style"] = battle_style(answers["a"], answers["b"])
    return battle_id, values


def mark_downsampled_prompts(sessions: sessionmaker[Session], batch_size: int = 500) -> int:
    """Recompute which battles of the top 0.1% most repeated prompts are left out (lmarena's
    de-duplication, :mod:`arena.ranking.dedup`) and store it on them; returns how many are."""
    with sessions() as session:
        rows = session.execute(
            select(Battle.id, Battle.prompt_hash, Battle.prompt_downsampled)
            .where(Battle.prompt_hash.is_not(None))
            .where(exists().where(Vote.battle_id == Battle.id))
        ).all()
    prompts = pd.Series({battle_id: hash_ for battle_id, hash_, _ in rows}, dtype=object)
    dropped = downsampled_battles(prompts)
    flips = [(battle_id, battle_id in dropped) for battle_id, _, was in rows if was != (battle_id in dropped)]
    with sessions.begin() as session:
        for start in range(0, len(flips), batch_size):
            chunk = flips[start : start + batch_size]
            for value in (True, False):
                ids = [battle_id for battle_id, now_dropped in chunk if now_dropped is value]
                if ids:
                    session.execute(update(Battle).where(Battle.id.in_(ids)).values(prompt_downsampled=value))
    if dropped:
        logger.info("prompt de-duplication leaves out %d of %d battles with a known prompt", len(dropped), len(rows))
    return len(dropped)


def _battle_texts(session: Session, battle_id: str) -> tuple[list[str], dict[str, list[str]]]:
    """The visitor's turns (from side a; both sides get the same) and each side's answers."""
    rows = session.execute(
        select(Conversation.side, Message.role, Message.content)
        .join(Message, Message.conversation_id == Conversation.id)
        .where(Conversation.battle_id == battle_id)
        .order_by(Conversation.side, Message.position)
    ).all()
    user_turns = [content for side, role, content in rows if side == "a" and role == "user"]
    answers: dict[str, list[str]] = {"a": [], "b": []}
    for side, role, content in rows:
        if role == "assistant" and side in answers:
            answers[side].append(content or "")
    return user_turns, answers


# ----------------------------------------------------------------------------- anomalies


def detect_anomalous_voters(sessions: sessionmaker[Session], alpha: float = 0.01, min_votes: int = 10) -> int:
    """Flag visitors whose votes are improbable under the model; returns how many were newly flagged."""
    with sessions() as session:
        votes = vote_rows(session, VoteFilter(exclude_anomalous=False))
    votes = votes[votes["visitor"].notna().to_numpy(bool)]
    if votes.empty:
        return 0
    verdicts = flag_anomalous_voters(votes, alpha=alpha, min_votes=min_votes)
    flagged = verdicts[verdicts["flagged"]]
    newly = 0
    with sessions.begin() as session:
        for row in flagged.itertuples(index=False):
            visitor = session.get(Visitor, row.visitor)
            if visitor is None or visitor.anomalous:
                continue
            visitor.anomalous = True
            session.add(Flag(kind=FlagKind.ANOMALOUS_VOTER, visitor_id=row.visitor,
                             detail=f"{row.votes} votes, combined p = {row.p_value:.2e} (Fisher)"))
            newly += 1
    if newly:
        logger.warning("flagged %d anomalous voters", newly)
    return newly


# ----------------------------------------------------------------------------- computing


def categories_in(grouped: pd.DataFrame) -> list[str]:
    """``overall`` first, then every category some counted vote carries, sorted."""
    found: set[str] = set()
    for tags in grouped["tags"]:
        if isinstance(tags, dict):
            found.update(str(c) for c in tags.get("categories", []))
    found.discard(OVERALL_CATEGORY)
    return [OVERALL_CATEGORY, *sorted(found)]


def _in_category(tags_column: pd.Series, category: str) -> np.ndarray:
    if category == OVERALL_CATEGORY:
        return np.ones(len(tags_column), dtype=bool)
    return tags_column.map(
        lambda tags: isinstance(tags, dict) and category in tags.get("categories", [])
    ).to_numpy(bool)


def _style_frame(votes: pd.DataFrame) -> pd.DataFrame:
    """Votes with stored style, as a battles table with ``<feature>_a`` / ``<feature>_b`` columns."""
    has_style = votes["style"].map(lambda s: isinstance(s, dict) and "a" in s and "b" in s).to_numpy(bool)
    styled = votes[has_style]
    frame = styled[["model_a", "model_b", "winner"]].reset_index(drop=True)
    for side in ("a", "b"):
        for feature in STYLE_FEATURES:
            frame[f"{feature}_{side}"] = [int(s[side].get(feature, 0)) for s in styled["style"]]
    return frame


def _plain_table(grouped: pd.DataFrame, options: LeaderboardOptions) -> tuple[pd.DataFrame, Any, list[dict[str, Any]]]:
    """The rated models' table, the pair counts, and the models without a finite MLE (with votes)."""
    counts = pair_counts_from_grouped(grouped[["model_a", "model_b", "winner", "count"]])
    fit = fit_bt(counts, LEADERBOARD_BT, options.scale)
    samples = bootstrap_bt(counts, options.rounds, options.seed, LEADERBOARD_BT, options.scale, point=fit)
    se = sandwich_se(counts, fit, LEADERBOARD_BT, options.scale)
    votes = counts.votes_per_model()
    unrated = [{"model": model, "votes": int(votes[model])} for model in fit.unrated]
    return leaderboard_table(fit.ratings, samples, votes, se), counts, unrated


def _style_table(battles: pd.DataFrame, options: LeaderboardOptions) -> tuple[pd.DataFrame, dict[str, float]]:
    config = StyleConfig()
    data = prepare_style_data(battles, config)
    fit = fit_style_bt(data, config, options.scale)
    samples = bootstrap_style_bt(data, options.rounds, options.seed, config, options.scale, point=fit)
    votes = pd.concat([battles["model_a"], battles["model_b"]]).value_counts()
    return leaderboard_table(fit.ratings, samples, votes), fit.coefficients.round(4).to_dict()


def _matrix_payload(frame: pd.DataFrame, order: list[str]) -> dict[str, Any]:
    frame = frame.reindex(index=order, columns=order)
    values = [[None if pd.isna(v) else round(float(v), 4) for v in row] for row in frame.to_numpy()]
    return {"models": order, "values": values}


def _history_payload(votes: pd.DataFrame, freq: str, models: list[str], options: LeaderboardOptions) -> dict[str, Any]:
    """Bradley-Terry ratings from the votes up to the end of each period (the last
    ``HISTORY_PERIODS``), fitted and anchored as the table is: the chart and the table share
    one scale, and the last point is the table's rating."""
    if votes.empty:
        return {"times": [], "series": {}}
    frame = votes[["model_a", "model_b", "winner"]].copy()
    frame["period"] = pd.to_datetime(votes["timestamp"], utc=True).dt.floor(freq)
    per_period = frame.groupby(["period", "model_a", "model_b", "winner"]).size().rename("count").reset_index()
    periods = sorted(per_period["period"].unique())[-HISTORY_PERIODS:]
    series: dict[str, list[float | None]] = {m: [] for m in models}
    for period in periods:
        upto = per_period[per_period["period"] <= period]
        grouped = upto.groupby(["model_a", "model_b", "winner"], as_index=False)["count"].sum()
        ratings = fit_bt(pair_counts_from_grouped(grouped), LEADERBOARD_BT, options.scale).ratings
        for model in models:
            value = ratings.get(model)
            series[model].append(round(float(value), 1) if value is not None and np.isfinite(value) else None)
    return {"times": [pd.Timestamp(p).strftime("%Y-%m-%d") for p in periods], "series": series}


def _rows_payload(table: pd.DataFrame, meta: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for row in table.itertuples(index=False):
        organization, license_ = meta.get(row.model, ("", ""))
        rows.append({
            "rank": int(row.rank),
            "model": row.model,
            "rating": round(float(row.rating), 1),
            "ci_lower": round(float(row.lower), 1),
            "ci_upper": round(float(row.upper), 1),
            "votes": int(row.votes),
            "organization": organization,
            "license": license_,
        })
    return rows


def build_snapshots(
    grouped: pd.DataFrame,
    votes: pd.DataFrame,
    meta: dict[str, tuple[str, str]],
    exclusions: dict[str, int],
    options: LeaderboardOptions,
    now: datetime,
) -> list[LeaderboardSnapshot]:
    """Snapshot rows for every category x {plain, style-controlled}; pure apart from the ORM objects."""
    categories = categories_in(grouped)
    snapshots = []
    for category in categories:
        in_grouped = grouped[_in_category(grouped["tags"], category)]
        in_votes = votes[_in_category(votes["tags"], category)]
        vote_count = int(in_grouped["count"].sum())
        base = {"categories": categories, "exclusions": exclusions, "computed_at": now.isoformat(),
                "bootstrap_rounds": options.rounds}
        plain: dict[str, Any] = {**base, "rows": []}
        order: list[str] = []
        if vote_count:
            table, counts, unrated = _plain_table(in_grouped, options)
            order = list(table["model"])
            plain["rows"] = _rows_payload(table, meta)
            plain["unrated"] = unrated
            plain["win_rate"] = _matrix_payload(counts.win_rate_matrix(), order)
            plain["battle_counts"] = _matrix_payload(counts.matrix(), order)
            plain["history"] = _history_payload(in_votes, options.history_freq, order, options)
        snapshots.append(LeaderboardSnapshot(created_at=now, category=category, style_control=False,
                                             vote_count=vote_count, payload=plain))
        styled = _style_frame(in_votes)
        style: dict[str, Any] = {**base, "rows": [], "styled_votes": len(styled)}
        if len(styled) and styled[["model_a", "model_b"]].stack().nunique() >= 2:
            table, coefficients = _style_table(styled, options)
            style["rows"] = _rows_payload(table, meta)
            style["style_coefficients"] = coefficients
            for key in ("win_rate", "battle_counts", "history"):
                if key in plain:
                    style[key] = plain[key]
        snapshots.append(LeaderboardSnapshot(created_at=now, category=category, style_control=True,
                                             vote_count=len(styled), payload=style))
    return snapshots


def compute_leaderboards(sessions: sessionmaker[Session], options: LeaderboardOptions | None = None,
                         now: datetime | None = None) -> list[LeaderboardSnapshot]:
    """Annotate, flag anomalies, compute every category and store the snapshots; returns them."""
    options = options or LeaderboardOptions()
    now = now or datetime.now(UTC)
    where = VoteFilter(options.exclude_flagged, options.exclude_anomalous_voters, options.dedup_prompts,
                       check_sources(options.sources))
    annotate_battles(sessions)
    if options.dedup_prompts:
        mark_downsampled_prompts(sessions)
    if options.detect_anomalies:
        detect_anomalous_voters(sessions, options.anomaly_alpha, options.anomaly_min_votes)
    with sessions() as session:
        grouped = grouped_votes(session, where)
        votes = vote_rows(session, where)
        exclusions = exclusion_counts(session, options.sources)
        if not options.exclude_anomalous_voters:
            exclusions[FlagKind.ANOMALOUS_VOTER.value] = 0
        if not options.dedup_prompts:
            exclusions[PROMPT_DEDUP] = 0
        sources = votes_by_source(session, where)
        meta = {m.name: (m.organization, m.license) for m in session.scalars(select(Model))}
    snapshots = build_snapshots(grouped, votes, meta, exclusions, options, now)
    for snapshot in snapshots:
        snapshot.payload = {**snapshot.payload, "sources": sources, "source_filter": list(options.sources)}
    with sessions.begin() as session:
        session.add_all(snapshots)
        session.flush()
        pruned = prune_snapshots(session, options.keep_snapshots)
    if pruned:
        logger.info("pruned %d old leaderboard snapshots", pruned)
    logger.info("stored %d leaderboard snapshots (%d votes overall)", len(snapshots),
                snapshots[0].vote_count if snapshots else 0)
    return snapshots


def prune_snapshots(session: Session, keep: int) -> int:
    """Delete all but the newest ``keep`` snapshots of each (category, style); returns how many
    went. Without it the table grows by one row per category and style every refresh."""
    keys = session.execute(select(LeaderboardSnapshot.category, LeaderboardSnapshot.style_control).distinct()).all()
    stale: list[int] = []
    for category, style_control in keys:
        stale += session.scalars(
            select(LeaderboardSnapshot.id)
            .where(LeaderboardSnapshot.category == category, LeaderboardSnapshot.style_control.is_(style_control))
            .order_by(LeaderboardSnapshot.created_at.desc(), LeaderboardSnapshot.id.desc())
            .offset(max(keep, 1))
        ).all()
    if stale:
        session.execute(delete(LeaderboardSnapshot).where(LeaderboardSnapshot.id.in_(stale)))
    return len(stale)
