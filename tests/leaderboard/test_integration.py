"""The active pair sampler, the refresh after new votes and the ``arena leaderboard`` CLI on real databases."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from arena.battles import ActivePairSampler, ArenaError, make_pair_sampler
from arena.cli import app
from arena.db.models import Battle, BattleStatus, Model, Vote
from arena.db.session import get_engine, session_factory
from arena.leaderboard.job import LeaderboardOptions, compute_leaderboards
from arena.leaderboard.refresher import LeaderboardRefresher, RefreshPolicy, votes_since
from arena.leaderboard.view import latest_view
from arena.providers.registry import ModelSpec
from tests.conftest import migrate

from .seed import TRUE_RATINGS, seed_votes


def specs(names: list[str]) -> list[ModelSpec]:
    return [ModelSpec(name=n, base_url="http://127.0.0.1:9/v1", model_id=n) for n in names]


def test_active_sampler_draws_valid_pairs_and_caches_its_plan(db_sessions):
    seed_votes(db_sessions, 80, seed=5)
    ticks = [0.0]
    sampler = make_pair_sampler("active", db_sessions)
    assert isinstance(sampler, ActivePairSampler)
    sampler.clock = lambda: ticks[0]
    rng = random.Random(0)
    models = specs([*TRUE_RATINGS, "newcomer-7b"])
    seen = set()
    for _ in range(300):
        a, b, shares = sampler.sample(models, rng)
        assert a != b and {a, b} <= {m.name for m in models}
        seen.add(frozenset((a, b)))
    assert sum(shares.values()) == pytest.approx(1.0)
    # The unseen newcomer has by far the widest interval: nearly every battle is its, against everyone.
    assert shares["newcomer-7b"] > 0.4  # uniform sampling would give it 0.2
    assert {frozenset(("newcomer-7b", name)) for name in TRUE_RATINGS} <= seen
    plan = sampler.plan([m.name for m in models])
    assert sampler.plan([m.name for m in models]) is plan  # cached within refresh_s
    ticks[0] = 1e6
    assert sampler.plan([m.name for m in models]) is not plan
    with pytest.raises(ArenaError, match="at least two models"):
        sampler.sample(specs(["solo"]), rng)
    with pytest.raises(ValueError, match="needs a session factory"):
        make_pair_sampler("active")


def test_refresh_policy_debounces_new_votes() -> None:
    """Due once votes are quiet for debounce_s, or max_wait_s after the first new vote was seen."""
    policy = RefreshPolicy(debounce_s=5, max_wait_s=60)
    t0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    later = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    assert policy.due(None, None, None, t0) == (False, None)  # no votes at all
    assert policy.due(t0, later(1), None, later(2)) == (False, None)  # counted in the snapshot
    assert policy.due(later(10), t0, None, later(12)) == (False, later(12))  # too fresh: wait
    assert policy.due(later(10), t0, later(12), later(15)) == (True, later(12))  # quiet for 5 s
    assert policy.due(None, None, None, t0) == (False, None)
    # Votes every second: the debounce never elapses, the longest wait does.
    assert policy.due(later(70), t0, later(12), later(71)) == (False, later(12))
    assert policy.due(later(72), t0, later(12), later(72)) == (True, later(12))


async def test_refresher_recomputes_soon_after_a_new_vote(tmp_path: Path):
    # Its own database: the refresher works from a thread, with its own connections.
    url = f"sqlite:///{tmp_path / 'refresher.db'}"
    migrate(url)
    sessions = session_factory(get_engine(url))
    seed_votes(sessions, 40, seed=9)
    compute_leaderboards(sessions, LeaderboardOptions(rounds=10))
    with sessions() as session:
        first = latest_view(session)
    assert first.vote_count == 40
    with sessions.begin() as session:  # one more vote, cast now
        battle = Battle(id="fresh-battle", mode="anonymous", model_a="alpha-70b", model_b="beta-8b",
                        status=BattleStatus.VOTED, turn_count=1)
        session.add(battle)
        session.flush()
        session.add(Vote(battle_id=battle.id, choice="a", turn_count=1))
    refresher = LeaderboardRefresher(sessions, RefreshPolicy(debounce_s=0.1, max_wait_s=2))
    refresher.options.rounds = 10
    refresher.start()
    try:
        for _ in range(1200):
            await asyncio.sleep(0.05)
            with sessions() as session:
                if latest_view(session).vote_count > 40:
                    break
    finally:
        await refresher.stop()
    with sessions() as session:
        view = latest_view(session)
        assert view.vote_count == 41 and view.updated_at is not None and view.updated_at > first.updated_at
        assert votes_since(session, view.updated_at) == 0


def test_cli_compute_then_show(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    migrate(url)
    runner = CliRunner()
    empty = runner.invoke(app, ["leaderboard", "show", "--url", url])
    assert empty.exit_code == 0 and "No ratings yet" in empty.output
    seed_votes(session_factory(get_engine(url)), 60, seed=2)
    computed = runner.invoke(app, ["leaderboard", "compute", "--url", url, "--rounds", "10"])
    assert computed.exit_code == 0, computed.output
    assert "60 votes counted overall" in computed.output
    shown = runner.invoke(app, ["leaderboard", "show", "--url", url])
    assert shown.exit_code == 0 and "alpha-70b" in shown.output and "95% CI" in shown.output
    as_json = runner.invoke(app, ["leaderboard", "show", "--url", url, "--output", "json", "--style-control"])
    assert json.loads(as_json.output)["style_control"] is True
    bad = runner.invoke(app, ["leaderboard", "show", "--url", url, "--output", "xml"])
    assert bad.exit_code != 0
    get_engine(url).dispose()


def test_cli_show_prints_whole_names_the_page_format_and_says_why_it_is_empty(tmp_path: Path):
    """Piped at 80 columns, a 60-character model name is printed whole; the cells are the
    page's; an unknown category is an error naming the known ones, and an empty one says so."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    migrate(url)
    sessions = session_factory(get_engine(url))
    seed_votes(sessions, 60, seed=2)
    long_name = "a-very-long-model-name-from-a-provider-that-likes-long-names-v2"
    with sessions.begin() as session:
        session.add(Model(name=long_name, model_id=long_name, base_url="http://127.0.0.1:9/v1"))
        session.flush()
        session.execute(update(Battle).where(Battle.model_a == "alpha-70b").values(model_a=long_name))
        session.execute(update(Battle).where(Battle.model_b == "alpha-70b").values(model_b=long_name))
    compute_leaderboards(sessions, LeaderboardOptions(rounds=10))
    runner = CliRunner()
    shown = runner.invoke(app, ["leaderboard", "show", "--url", url], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    assert any(long_name in line for line in shown.output.splitlines()), shown.output
    with sessions() as session:
        row = next(r for r in latest_view(session).rows if r["model"] == long_name)
    assert f"+{row['ci_upper'] - row['rating']:.0f} / -{row['rating'] - row['ci_lower']:.0f}" in shown.output

    unknown = runner.invoke(app, ["leaderboard", "show", "--url", url, "--category", "poetry"])
    assert unknown.exit_code == 1 and "No category 'poetry'" in unknown.output and "known: overall" in unknown.output
    as_csv = runner.invoke(app, ["leaderboard", "show", "--url", url, "--category", "poetry", "--output", "csv"])
    assert as_csv.exit_code == 1 and "No category 'poetry'" in as_csv.output


async def test_stopping_waits_for_a_running_recompute(tmp_path: Path, monkeypatch):
    """The recompute runs in a thread, which a cancelled task leaves running: stop() waits for it,
    so no database work outlives the app (a recompute left running held SQLite's lock in CI)."""
    import threading
    import time

    from arena.leaderboard import refresher as refresher_module

    url = f"sqlite:///{tmp_path / 'stop.db'}"
    migrate(url)
    sessions = session_factory(get_engine(url))
    seed_votes(sessions, 20, seed=4)
    started, finished = threading.Event(), threading.Event()
    real = refresher_module.compute_leaderboards

    def slow_compute(*args, **kwargs):
        started.set()
        time.sleep(1.0)
        result = real(*args, **kwargs)
        finished.set()
        return result

    monkeypatch.setattr(refresher_module, "compute_leaderboards", slow_compute)
    refresher = LeaderboardRefresher(sessions, RefreshPolicy(debounce_s=0.05, max_wait_s=1))
    refresher.options.rounds = 5
    refresher.start()
    while not started.is_set():
        await asyncio.sleep(0.02)
    await refresher.stop()
    assert finished.is_set()
