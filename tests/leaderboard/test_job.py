"""The leaderboard job against real databases (SQLite and PostgreSQL): GROUP BY, tags, exclusions, snapshots."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from arena.db.models import Battle, Flag, LeaderboardSnapshot, Visitor
from arena.leaderboard.job import LeaderboardOptions, compute_leaderboards
from arena.leaderboard.view import latest_view
from arena.leaderboard.votes import VoteFilter, grouped_votes

from .seed import TRUE_RATINGS, seed_votes

FAST = LeaderboardOptions(rounds=20, anomaly_min_votes=1000)


def test_empty_database_gives_an_honest_empty_view(db_sessions):
    with db_sessions() as session:
        view = latest_view(session)
    assert view.empty and view.updated_at is None and view.categories == ["overall"]
    compute_leaderboards(db_sessions, FAST)
    with db_sessions() as session:
        view = latest_view(session)
    assert view.empty and view.vote_count == 0 and view.updated_at is not None


def test_compute_stores_snapshots_with_ranks_categories_and_exclusions(db_sessions):
    seed_votes(db_sessions, 240, flagged=12)
    snapshots = compute_leaderboards(db_sessions, FAST)
    with db_sessions() as session:
        overall = latest_view(session, "overall", False)
        styled = latest_view(session, "overall", True)
        coding = latest_view(session, "coding", False)
        tagged = session.scalar(select(func.count()).select_from(Battle).where(Battle.tags.is_not(None)))
        stored = session.scalar(select(func.count()).select_from(LeaderboardSnapshot))
    assert stored == len(snapshots) >= 4
    assert tagged == 240  # tags and style are stored once per battle, flagged ones included
    assert overall.vote_count == 228 and overall.exclusions["moderation"] == 12
    assert [row["model"] for row in overall.rows][0] == "alpha-70b"
    assert {row["model"] for row in overall.rows} == set(TRUE_RATINGS)
    top = overall.rows[0]
    assert top["ci_lower"] <= top["rating"] <= top["ci_upper"] and top["organization"] == "Alpha Labs"
    assert {"coding", "language:fr", "language:en"} <= set(overall.categories)
    assert 0 < coding.vote_count < overall.vote_count
    assert styled.rows and "style_coefficients" in styled.payload
    assert overall.payload["win_rate"]["models"] == [row["model"] for row in overall.rows]
    assert len(overall.payload["history"]["times"]) == 3  # three days of votes, one point a day


def test_old_snapshots_are_pruned_newest_kept(db_sessions):
    seed_votes(db_sessions, 60, seed=5)
    keep_two = LeaderboardOptions(rounds=5, anomaly_min_votes=1000, keep_snapshots=2)
    runs = [compute_leaderboards(db_sessions, keep_two, now=datetime(2026, 1, day, tzinfo=UTC)) for day in (1, 2, 3)]
    with db_sessions() as session:
        per_key = session.execute(
            select(LeaderboardSnapshot.category, LeaderboardSnapshot.style_control, func.count())
            .group_by(LeaderboardSnapshot.category, LeaderboardSnapshot.style_control)
        ).all()
        newest = latest_view(session)
        oldest_left = session.scalar(select(func.min(LeaderboardSnapshot.created_at)))
    assert len(per_key) == len(runs[-1]) and {count for _, _, count in per_key} == {2}
    assert newest.updated_at == datetime(2026, 1, 3, tzinfo=UTC)
    assert oldest_left.replace(tzinfo=UTC) == datetime(2026, 1, 2, tzinfo=UTC)


def test_grouping_happens_in_the_database_and_respects_flags(db_sessions):
    seed_votes(db_sessions, 60, seed=3, flagged=6)
    with db_sessions() as session:
        kept = grouped_votes(session)
        everything = grouped_votes(session, VoteFilter(exclude_flagged=False))
    assert kept["count"].sum() == 54 and everything["count"].sum() == 60
    assert len(kept) < 54  # rows are groups, not votes


def test_anomalous_voter_is_flagged_and_excluded(db_sessions):
    seed_votes(db_sessions, 250, seed=4, adversary_votes=30)
    compute_leaderboards(db_sessions, LeaderboardOptions(rounds=10, anomaly_min_votes=10))
    with db_sessions() as session:
        adversary = session.get(Visitor, "adversary-4")
        flags = session.scalars(select(Flag).where(Flag.kind == "anomalous_voter")).all()
        view = latest_view(session)
    assert adversary is not None and adversary.anomalous
    assert [flag.visitor_id for flag in flags] == ["adversary-4"] and "Fisher" in flags[0].detail
    assert view.exclusions["anomalous_voter"] == 30 and view.vote_count == 250


def test_snapshot_shows_the_mle_and_lists_a_model_with_only_wins_as_unrated():
    """Point 1 and 2 of issue 20: no ridge, and a model whose MLE is infinite is listed, not rated."""
    from datetime import UTC, datetime

    import pandas as pd

    from arena.leaderboard.job import build_snapshots
    from arena.ranking import fit_bt, pair_counts

    rows = [("m1", "m2", "a", 30), ("m1", "m2", "b", 20), ("m2", "m3", "a", 25), ("m2", "m3", "b", 15),
            ("m1", "m3", "a", 12), ("m1", "m3", "tie", 8), ("m3", "m1", "a", 5), ("new", "m1", "a", 2),
            ("new", "m3", "a", 1)]
    grouped = pd.DataFrame([(a, b, w, None, n) for a, b, w, n in rows],
                           columns=["model_a", "model_b", "winner", "tags", "count"])
    votes = pd.DataFrame([(a, b, w, datetime(2026, 1, 1, tzinfo=UTC), None, None, None)
                          for a, b, w, n in rows for _ in range(n)],
                         columns=["model_a", "model_b", "winner", "timestamp", "visitor", "tags", "style"])
    snapshots = build_snapshots(grouped, votes, {}, {}, LeaderboardOptions(rounds=20), datetime.now(UTC))
    payload = snapshots[0].payload
    assert payload["unrated"] == [{"model": "new", "votes": 3}]
    shown = {row["model"]: row["rating"] for row in payload["rows"]}
    battles = votes[votes["model_a"] != "new"][["model_a", "model_b", "winner"]]
    mle = fit_bt(pair_counts(battles)).ratings
    assert set(shown) == {"m1", "m2", "m3"}
    for model, rating in shown.items():
        assert abs(rating - mle[model]) <= 0.051  # rounded to 0.1 in the payload


def test_tagging_battles_holds_no_write_lock(tmp_path, monkeypatch):
    """Tags are computed outside any write transaction: while the job tags (lingua's detector
    takes seconds to build on a busy machine), a vote or a new battle can still be written.
    Held through the tagging, SQLite's write lock kept a page's new battle waiting in CI."""
    import sqlite3

    from arena.db.session import get_engine, session_factory
    from arena.leaderboard import job
    from tests.conftest import migrate

    path = tmp_path / "arena.db"
    migrate(f"sqlite:///{path}")
    sessions = session_factory(get_engine(f"sqlite:///{path}"))
    seed_votes(sessions, 12, seed=3)
    tag_battle, probes = job.tag_battle, []

    def tag_while_another_writer_writes(user_turns, detector):
        writer = sqlite3.connect(path, timeout=0.5)
        try:
            writer.execute("BEGIN IMMEDIATE")  # raises "database is locked" if the job holds the lock
            writer.rollback()
            probes.append("written")
        finally:
            writer.close()
        return tag_battle(user_turns, detector)

    monkeypatch.setattr(job, "tag_battle", tag_while_another_writer_writes)
    assert job.annotate_battles(sessions, batch_size=5) == 12
    assert probes == ["written"] * 12
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Battle).where(Battle.tags.is_(None))) == 0
