"""The leaderboard page, its JSON/CSV API and the Gradio tab, over real HTTP and in a real browser.

Each scenario gets its own migrated SQLite database (votes seeded from known true ratings, then
``compute_leaderboards`` as ``arena leaderboard compute`` runs it), served by the real app.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from arena.config import Settings
from arena.db.models import Battle, BattleStatus, Model, Vote
from arena.db.session import get_engine, session_factory
from arena.leaderboard.job import LeaderboardOptions, compute_leaderboards
from arena.web.app import create_app
from tests.conftest import migrate
from tests.leaderboard.seed import TRUE_RATINGS, seed_votes
from tests.servers import serve_app

NEWCOMER = "newcomer-1b"  # three votes only: provisional


def _add_newcomer(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as session:
        session.add(Model(name=NEWCOMER, model_id=NEWCOMER, base_url="http://127.0.0.1:9/v1",
                          organization="Newcomer Labs", license="Apache-2.0"))
        session.flush()
        for i, choice in enumerate(("a", "b", "a")):
            battle = Battle(id=f"newcomer-{i}", model_a=NEWCOMER, model_b="beta-8b", status=BattleStatus.VOTED,
                            turn_count=1, created_at=datetime(2026, 11, 22, 12, tzinfo=UTC))
            session.add(battle)
            session.flush()
            session.add(Vote(battle_id=battle.id, choice=choice, turn_count=1, created_at=battle.created_at))


def _serve(tmp_path: Path, with_votes: bool) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'leaderboard.db'}"
    migrate(url)
    registry = tmp_path / "models.toml"
    registry.write_text("".join(
        f'[[models]]\nname = "{name}"\nbase_url = "http://127.0.0.1:9/v1"\nmodel_id = "{name}"\n'
        f'organization = "{name.split("-")[0].title()} Labs"\nlicense = "Apache-2.0"\n\n'
        for name in [*TRUE_RATINGS, NEWCOMER]
    ))
    settings = Settings(database_url=url, models_file=registry, secret_key="leaderboard-test",
                        leaderboard_refresh_s=0)
    if with_votes:
        sessions = session_factory(get_engine(url))
        seed_votes(sessions, 150, flagged=5)
        _add_newcomer(sessions)
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
    assert body["category"] == "overall" and body["vote_count"] == 148
    assert body["excluded_votes"]["moderation"] == 5
    assert body["rows"][0]["model"] == "alpha-70b" and body["rows"][0]["organization"] == "Alpha Labs"
    styled = httpx.get(f"{voted_url}/api/v1/leaderboard", params={"style_control": "true"}).json()
    assert styled["style_control"] and styled["rows"] and set(styled["style_coefficients"]) == {
        "tokens", "headers", "lists", "bold"}
    response = httpx.get(f"{voted_url}/api/v1/leaderboard", params={"category": "coding", "format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["model"] for r in rows} <= {*TRUE_RATINGS, NEWCOMER} and rows[0]["rank"] == "1"


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
    expect(rows).to_have_count(len(TRUE_RATINGS) + 1)
    expect(rows.first).to_contain_text("alpha-70b")
    expect(rows.first).to_contain_text("Alpha Labs")
    for plot in ("plot-ratings", "plot-win-rate", "plot-battle-counts", "plot-history"):
        expect(page.locator(f"#{plot} .main-svg").first).to_be_visible(timeout=20_000)
    expect(page.locator("#leaderboard-meta")).to_contain_text("5 moderation")
    page.screenshot(path=str(artifacts_dir / "leaderboard_page.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(artifacts_dir / "readme_leaderboard.png"))  # docs/leaderboard.png
    page.set_viewport_size({"width": 1280, "height": 1200})

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
    page.get_by_role("tab", name="Leaderboard").click()
    table = page.locator("#gr-leaderboard-table")
    expect(table).to_contain_text("alpha-70b", timeout=30_000)
    expect(page.locator("#gr-leaderboard-note")).to_contain_text("148 votes")
    page.close()


def test_mt_bench_column_appears_once_a_judge_run_stored_scores(voted_url: str, voted_folder: Path) -> None:
    """The page reads the MT-bench column from the database, where `arena-judge` stores it."""
    from arena.judge.arena_db import open_arena_database, store_mt_bench_scores

    assert ">MT-bench</th>" not in httpx.get(f"{voted_url}/leaderboard").text  # no arena-judge run yet
    engine = open_arena_database(f"sqlite:///{voted_folder / 'leaderboard.db'}", "mt_bench_scores")
    store_mt_bench_scores(engine, "gpt-4o", {"alpha-70b": {"score": 8.25, "turns": {"turn_1": 8.5}, "judged": 32},
                                             "beta-8b": {"score": None}})
    page = httpx.get(f"{voted_url}/leaderboard").text
    assert ">MT-bench</th>" in page and ">8.25</td>" in page
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


@pytest.mark.browser
def test_page_and_gradio_tab_show_one_format(browser, voted_url: str, artifacts_dir: Path):  # type: ignore[no-untyped-def]
    """Both views print rounded ratings and "+x / -y"; a model with three votes is "provisional";
    the rating-over-time chart has date ticks and ends at the table's ratings."""
    from playwright.sync_api import expect

    api_rows = {r["model"]: r for r in httpx.get(f"{voted_url}/api/v1/leaderboard").json()["rows"]}
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.goto(f"{voted_url}/leaderboard", wait_until="load")
    top = page.locator("#leaderboard-table tbody tr").first
    cells = top.locator("td").all_inner_texts()
    alpha = api_rows["alpha-70b"]
    interval = f"+{alpha['ci_upper'] - alpha['rating']:.0f} / -{alpha['rating'] - alpha['ci_lower']:.0f}"
    assert cells[:5] == ["1", "alpha-70b", f"{alpha['rating']:.0f}", interval, f"{alpha['votes']:,}"]
    newcomer = page.locator("#leaderboard-table tbody tr", has_text=NEWCOMER)
    expect(newcomer.locator("td").nth(3)).to_have_text("provisional")

    ticks = page.locator("#plot-history .xtick text")
    expect(ticks.first).to_be_visible(timeout=20_000)
    labels = ticks.evaluate_all("texts => texts.map(t => t.textContent)")
    assert labels and all(re.fullmatch(r"[A-Z][a-z]{2} \d{2}", t) for t in labels), labels
    last_points = page.evaluate(
        "() => Object.fromEntries(document.getElementById('plot-history').data.map(t => [t.name, t.y[t.y.length - 1]]))")
    for model, row in api_rows.items():
        assert abs(last_points[model] - row["rating"]) < 0.5, (model, last_points[model], row["rating"])
    page.locator("#plot-history").screenshot(path=str(artifacts_dir / "leaderboard_history.png"))

    page.goto(voted_url, wait_until="load")
    page.get_by_role("tab", name="Leaderboard").click()
    table = page.locator("#gr-leaderboard-table")
    expect(table).to_contain_text(interval, timeout=30_000)
    expect(table).to_contain_text("provisional")
    expect(table).to_contain_text("95% CI")
    expect(table).not_to_contain_text("ci_lower")
    expect(table).not_to_contain_text(f"{alpha['rating']:.1f}")  # rounded, as on the page
    page.screenshot(path=str(artifacts_dir / "leaderboard_gradio_tab.png"), full_page=True)
    page.close()


@pytest.mark.browser
def test_page_is_styled_and_readable_on_a_phone(browser, voted_url: str, artifacts_dir: Path):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(f"{voted_url}/leaderboard", wait_until="load")
    expect(page.locator("#leaderboard-table tbody tr").first).to_be_visible()
    assert page.evaluate("() => window.innerWidth") == 390  # laid out for the phone, not zoomed out
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing sticks out
    font = page.locator("#leaderboard-table td").first.evaluate(
        "td => [getComputedStyle(td).fontSize, getComputedStyle(document.body).fontFamily]")
    assert float(font[0].removesuffix("px")) >= 14 and "system-ui" in font[1]
    expect(page.locator("#leaderboard-nav a.current")).to_have_text("Leaderboard")
    page.screenshot(path=str(artifacts_dir / "leaderboard_phone.png"), full_page=False)
    context.close()
