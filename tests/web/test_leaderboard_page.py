"""The leaderboard page, its JSON/CSV API and the Gradio tab, over real HTTP and in a real browser.

Each scenario gets its own migrated SQLite database (votes seeded from known true ratings, then
``compute_leaderboards`` as ``arena leaderboard compute`` runs it), served by the real app.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from arena.config import Settings
from arena.db.session import get_engine, session_factory
from arena.leaderboard.job import LeaderboardOptions, compute_leaderboards
from arena.web.app import create_app
from tests.conftest import migrate
from tests.leaderboard.seed import TRUE_RATINGS, seed_votes
from tests.servers import serve_app


def _serve(tmp_path: Path, with_votes: bool) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'leaderboard.db'}"
    migrate(url)
    registry = tmp_path / "models.toml"
    registry.write_text("".join(
        f'[[models]]\nname = "{name}"\nbase_url = "http://127.0.0.1:9/v1"\nmodel_id = "{name}"\n'
        f'organization = "{name.split("-")[0].title()} Labs"\nlicense = "Apache-2.0"\n\n'
        for name in TRUE_RATINGS
    ))
    settings = Settings(database_url=url, models_file=registry, secret_key="leaderboard-test",
                        leaderboard_refresh_s=0)
    if with_votes:
        sessions = session_factory(get_engine(url))
        seed_votes(sessions, 150, flagged=5)
        compute_leaderboards(sessions, LeaderboardOptions(rounds=20, anomaly_min_votes=1000))
    try:
        with serve_app(create_app(settings)) as base:
            yield base
    finally:
        get_engine(url).dispose()


@pytest.fixture(scope="module")
def voted_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("voted")


@pytest.fixture(scope="module")
def voted_url(voted_folder: Path) -> Iterator[str]:
    yield from _serve(voted_folder, with_votes=True)


@pytest.fixture(scope="module")
def empty_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(tmp_path_factory.mktemp("empty"), with_votes=False)


def test_api_serves_json_and_csv(voted_url: str):
    body = httpx.get(f"{voted_url}/api/v1/leaderboard").json()
    assert body["category"] == "overall" and body["vote_count"] == 145
    assert body["excluded_votes"]["moderation"] == 5
    assert body["rows"][0]["model"] == "alpha-70b" and body["rows"][0]["organization"] == "Alpha Labs"
    styled = httpx.get(f"{voted_url}/api/v1/leaderboard", params={"style_control": "true"}).json()
    assert styled["style_control"] and styled["rows"] and set(styled["style_coefficients"]) == {
        "tokens", "headers", "lists", "bold"}
    response = httpx.get(f"{voted_url}/api/v1/leaderboard", params={"category": "coding", "format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["model"] for r in rows} <= set(TRUE_RATINGS) and rows[0]["rank"] == "1"


def test_api_rejects_unknown_category_and_format(voted_url: str):
    missing = httpx.get(f"{voted_url}/api/v1/leaderboard", params={"category": "poetry"})
    assert missing.status_code == 404 and "known: overall" in missing.json()["error"]["message"]
    assert httpx.get(f"{voted_url}/api/v1/leaderboard", params={"format": "xml"}).status_code == 422


def test_empty_state_over_http(empty_url: str):
    page = httpx.get(f"{empty_url}/leaderboard").text
    assert 'id="leaderboard-empty"' in page and "not been computed yet" in page
    assert httpx.get(f"{empty_url}/api/v1/leaderboard").json()["rows"] == []


@pytest.mark.browser
def test_page_in_browser_shows_table_plots_and_switches(browser, voted_url: str, artifacts_dir: Path):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.goto(f"{voted_url}/leaderboard", wait_until="load")
    rows = page.locator("#leaderboard-table tbody tr")
    expect(rows).to_have_count(len(TRUE_RATINGS))
    expect(rows.first).to_contain_text("alpha-70b")
    expect(rows.first).to_contain_text("Alpha Labs")
    for plot in ("plot-ratings", "plot-win-rate", "plot-battle-counts", "plot-history"):
        expect(page.locator(f"#{plot} .main-svg").first).to_be_visible(timeout=20_000)
    expect(page.locator("#leaderboard-meta")).to_contain_text("5 moderation")
    page.screenshot(path=str(artifacts_dir / "leaderboard_page.png"), full_page=True)

    page.locator("#style-control-toggle").check()
    page.wait_for_url("**style_control=true**")
    expect(page.locator("h1")).to_contain_text("Style-controlled")
    expect(page.locator("#leaderboard-table tbody tr").first).to_be_visible()
    page.locator("#category-select").select_option("coding")
    page.wait_for_url("**category=coding**")
    expect(page.locator("#category-select")).to_have_value("coding")
    expect(page.locator("#leaderboard-table tbody tr").first).to_be_visible()
    page.close()


@pytest.mark.browser
def test_gradio_tab_and_empty_page_in_browser(browser, voted_url: str, empty_url: str, artifacts_dir: Path):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(f"{empty_url}/leaderboard", wait_until="load")
    expect(page.locator("#leaderboard-empty")).to_contain_text("No ratings yet")
    expect(page.locator("#leaderboard-table")).to_have_count(0)
    page.screenshot(path=str(artifacts_dir / "leaderboard_empty.png"), full_page=True)

    page.goto(voted_url, wait_until="load")
    page.get_by_role("tab", name="🏆 Leaderboard").click()
    table = page.locator("#gr-leaderboard-table")
    expect(table).to_contain_text("alpha-70b", timeout=30_000)
    expect(page.locator("#gr-leaderboard-note")).to_contain_text("145 votes")
    page.close()


def test_mt_bench_column_appears_once_a_judge_run_stored_scores(voted_url: str, voted_folder: Path) -> None:
    """The page reads the MT-bench column from the database, where `arena-judge` stores it."""
    from arena.judge.arena_db import open_arena_database, store_mt_bench_scores

    assert "<th>MT-bench</th>" not in httpx.get(f"{voted_url}/leaderboard").text  # no arena-judge run yet
    engine = open_arena_database(f"sqlite:///{voted_folder / 'leaderboard.db'}", "mt_bench_scores")
    store_mt_bench_scores(engine, "gpt-4o", {"alpha-70b": {"score": 8.25, "turns": {"turn_1": 8.5}, "judged": 32},
                                             "beta-8b": {"score": None}})
    page = httpx.get(f"{voted_url}/leaderboard").text
    assert "<th>MT-bench</th>" in page and ">8.25</td>" in page
    rows = {r["model"]: r for r in httpx.get(f"{voted_url}/api/v1/leaderboard").json()["rows"]}
    assert rows["alpha-70b"]["mt_bench"] == 8.25 and rows["beta-8b"]["mt_bench"] is None
    csv_rows = list(csv.DictReader(io.StringIO(
        httpx.get(f"{voted_url}/api/v1/leaderboard", params={"format": "csv"}).text)))
    assert {r["model"]: r["mt_bench"] for r in csv_rows}["alpha-70b"] == "8.25"
    store_mt_bench_scores(engine, "gpt-4o", {"alpha-70b": {"score": 7.5}})  # a newer run replaces it
    rows = {r["model"]: r for r in httpx.get(f"{voted_url}/api/v1/leaderboard").json()["rows"]}
    assert rows["alpha-70b"]["mt_bench"] == 7.5


def test_page_reports_sources_unrated_models_and_every_exclusion():
    """Votes per source, models without a finite rating, and down-sampled prompts beside the other exclusions."""
    from datetime import UTC, datetime

    from arena.leaderboard.view import LeaderboardView
    from arena.web.leaderboard import render_page

    row = {"rank": 1, "model": "alpha-70b", "rating": 1100.0, "ci_lower": 1090.0, "ci_upper": 1110.0,
           "votes": 40, "organization": "", "license": ""}
    payload = {"categories": ["overall"], "sources": {"live": 30, "import:clean_battle_x": 10},
               "exclusions": {"moderation": 2, "prompt_dedup": 7, "anomalous_voter": 0},
               "unrated": [{"model": "newcomer", "votes": 3}]}
    page = render_page(LeaderboardView("overall", False, [row], 40, datetime.now(UTC), payload))
    assert "30 live, 10 imported from clean_battle_x" in page
    assert "2 moderation, 7 repeated prompts (top 0.1% down-sampled)" in page
    assert 'id="unrated-models"' in page and "newcomer (3 votes)" in page
