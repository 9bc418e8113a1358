"""The arena in a real browser (Debian chromium driven by Playwright), against our real engine.

A visitor loads the page, asks a question, sees two answers stream from the demo models
served by ``python -m serving``, votes, sees the reveal, and the vote is in the database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from arena.config import REPO_ROOT, Settings
from arena.db.models import Battle, Vote
from arena.db.session import get_engine, session_factory
from arena.web.app import create_app
from tests.servers import DEMO_MODELS, build_demo_models, demo_model_server, registry_toml, serve_app

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def demo_models_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models_dir = build_demo_models(REPO_ROOT / "data" / "demo_models")
    with demo_model_server(models_dir) as url:
        yield url


@pytest.fixture
def arena_page_url(sqlite_url: str, demo_models_url: str, tmp_path: Path) -> Iterator[str]:
    registry = tmp_path / "models.toml"
    registry.write_text(registry_toml(demo_models_url, DEMO_MODELS, max_tokens=24))
    settings = Settings(database_url=sqlite_url, models_file=registry, secret_key="browser-test")
    with serve_app(create_app(settings)) as url:
        yield url


def test_battle_in_the_browser_streams_votes_and_reveals(
    browser, arena_page_url: str, sqlite_url: str, artifacts_dir: Path  # type: ignore[no-untyped-def]
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(arena_page_url, wait_until="load")
    page.locator("#battle-send").wait_for(timeout=30_000)
    expect(page.locator("#battle-vote-a")).to_be_disabled()

    page.locator("#battle-prompt textarea").fill("Write a haiku about autumn.")
    page.locator("#battle-send").click()
    status = page.locator("#battle-status")
    expect(status).to_contain_text("Both answered", timeout=60_000)
    for side in ("a", "b"):
        bot_messages = page.locator(f"#battle-chat-{side} .message.bot, #battle-chat-{side} [data-testid='bot']")
        expect(bot_messages.first).to_be_visible()
        assert bot_messages.first.inner_text().strip()
    expect(page.locator("#battle-chat-a")).not_to_contain_text("demo-")  # still anonymous

    page.locator("#battle-vote-a").click()
    expect(status).to_contain_text("Thanks for voting", timeout=30_000)
    revealed = status.inner_text()
    names = re.findall(r"Model [AB]: (demo-[a-z-]+)", revealed)
    assert len(names) == 2 and set(names) <= set(DEMO_MODELS) and names[0] != names[1]
    expect(page.locator("#battle-vote-b")).to_be_disabled()
    page.screenshot(path=str(artifacts_dir / "arena_battle_voted.png"), full_page=True)

    with session_factory(get_engine(sqlite_url))() as session:
        vote = session.scalars(select(Vote).order_by(Vote.id.desc())).first()
        assert vote is not None and vote.choice == "a"
        battle = session.get(Battle, vote.battle_id)
        assert battle is not None and [battle.model_a, battle.model_b] == names
    page.close()


def test_empty_prompt_shows_a_clear_message(browser, arena_page_url: str) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(arena_page_url, wait_until="load")
    page.locator("#battle-send").wait_for(timeout=30_000)
    page.locator("#battle-send").click()
    expect(page.locator("#battle-status")).to_contain_text("Please type a message first", timeout=20_000)
    page.close()
