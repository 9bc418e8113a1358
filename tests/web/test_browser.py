"""The arena in a real browser (Debian chromium driven by Playwright), against our real engine.

A visitor loads the page, asks a question, sees two answers stream from the demo models
served by ``python -m serving``, votes, sees the reveal, and the vote is in the database.
The page must also be finished work: API docs that load offline, no emoji standing in for
meaning, no Clear button on battle panes, a Send button that looks as disabled as it is, a
header that fits every tab, and long prompts that are either answered or refused with a reason.
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
from arena.web.app import build_service, create_app
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
    settings = Settings(database_url=sqlite_url, models_file=registry, secret_key="browser-test",
                        leaderboard_debounce_s=0.5)
    with serve_app(create_app(settings)) as url:
        yield url


def test_context_windows_come_from_the_engine(demo_models_url: str, sqlite_url: str, tmp_path: Path) -> None:
    """The registry gives no context_tokens: the service asks the endpoint (GET /models lists
    max_model_len), so the page's limit is what the demo models can take."""
    registry = tmp_path / "models.toml"
    registry.write_text(registry_toml(demo_models_url, DEMO_MODELS, max_tokens=24))
    service = build_service(Settings(database_url=sqlite_url, models_file=registry, secret_key="context-test"))
    assert {name: spec.context_tokens for name, spec in service.registry.items()} == dict.fromkeys(DEMO_MODELS, 16384)
    assert service.prompt_limits.message_limit() == 8000


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

    # Gradio's chatbot offers a Clear button; in a battle it would wipe one side before the vote.
    for side in ("a", "b"):
        expect(page.locator(f"#battle-chat-{side} button[aria-label='Clear']")).to_have_count(1)
        expect(page.locator(f"#battle-chat-{side} button[aria-label='Clear']")).to_be_hidden()
    expect(page.locator("#battle-send")).to_be_enabled()

    page.locator("#battle-vote-a").click()
    expect(status).to_contain_text("Thanks for voting", timeout=30_000)
    revealed = status.inner_text()
    names = re.findall(r"Model [AB]: (demo-[a-z-]+)", revealed)
    assert len(names) == 2 and set(names) <= set(DEMO_MODELS) and names[0] != names[1]
    expect(page.locator("#battle-vote-b")).to_be_disabled()
    # After the vote the textbox is closed, and Send with it, looking disabled too.
    expect(page.locator("#battle-prompt textarea")).to_be_disabled()
    expect(page.locator("#battle-send")).to_be_disabled()
    # (waited for: the button fades with a CSS transition)
    page.wait_for_function("() => parseFloat(getComputedStyle(document.querySelector('#battle-send')).opacity) < 0.6",
                           timeout=10_000)
    page.screenshot(path=str(artifacts_dir / "arena_battle_voted.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 860})
    page.screenshot(path=str(artifacts_dir / "readme_arena_battle.png"))  # docs/arena_battle.png

    with session_factory(get_engine(sqlite_url))() as session:
        vote = session.scalars(select(Vote).order_by(Vote.id.desc())).first()
        assert vote is not None and vote.choice == "a"
        battle = session.get(Battle, vote.battle_id)
        assert battle is not None and [battle.model_a, battle.model_b] == names
    page.close()


def test_empty_prompt_shows_a_clear_message(browser, arena_page_url: str, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    """The message comes before any database work: an empty Send creates no battle."""
    from playwright.sync_api import expect

    def battles() -> int:
        with session_factory(get_engine(sqlite_url))() as session:
            return len(session.scalars(select(Battle.id)).all())

    before = battles()
    page = browser.new_page()
    page.goto(arena_page_url, wait_until="load")
    page.locator("#battle-send").wait_for(timeout=30_000)
    page.locator("#battle-send").click()
    expect(page.locator("#battle-status")).to_contain_text("Please type a message first", timeout=20_000)
    page.close()
    assert battles() == before


EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F\u2190-\u21FF\u2300-\u23FF]")


def test_no_emoji_carries_meaning_on_any_tab(browser, arena_page_url: str, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Emoji render as boxes without an emoji font: no label, tab or message may rely on one."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(arena_page_url, wait_until="load")
    page.locator("#battle-send").wait_for(timeout=30_000)
    seen = {}
    for tab in ("Arena (battle)", "Side-by-side (named)", "Direct chat", "Leaderboard"):
        page.get_by_role("tab", name=tab).click()
        seen[tab] = page.locator("body").inner_text()
    page.get_by_role("tab", name="Arena (battle)").click()
    page.locator("#battle-send").click()  # an error message too
    expect(page.locator("#battle-status")).to_contain_text("Please type a message first", timeout=20_000)
    seen["error"] = page.locator("#battle-status").inner_text()
    page.goto(f"{arena_page_url}/leaderboard", wait_until="load")
    seen["/leaderboard"] = page.locator("body").inner_text()
    for where, text in seen.items():
        assert not EMOJI.findall(text), f"{where}: {sorted(set(EMOJI.findall(text)))}"
    page.close()


def test_header_fits_every_tab(browser, arena_page_url: str, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(arena_page_url, wait_until="load")
    page.locator("#battle-send").wait_for(timeout=30_000)
    header = page.locator("#arena-header")
    expect(header).not_to_contain_text("Two anonymous models")
    expect(page.locator("#battle-intro")).to_contain_text("Two anonymous models answer")
    page.get_by_role("tab", name="Direct chat").click()
    expect(page.locator("#chat-intro")).to_be_visible()
    expect(page.locator("#chat-intro")).to_contain_text("one model of your choice")
    expect(page.locator("#battle-intro")).to_be_hidden()
    page.screenshot(path=str(artifacts_dir / "arena_direct_chat.png"), full_page=True)
    page.close()


def test_api_docs_load_offline(browser, arena_page_url: str, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Swagger UI with every request outside the app refused, as on a machine offline."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_local(route) -> None:  # type: ignore[no-untyped-def]
        if route.request.url.startswith(arena_page_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(f"{arena_page_url}/api/v1/docs", wait_until="load")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Arena", timeout=20_000)
    expect(page.locator(".opblock-summary-path", has_text="/api/v1/battles/{battle_id}/vote")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "api_docs.png"))
    assert outside == [], f"the docs reached outside the app: {outside}"
    page.close()


def test_long_prompts_are_answered_or_refused_with_the_reason(  # type: ignore[no-untyped-def]
    browser, arena_page_url: str, sqlite_url: str, artifacts_dir: Path
) -> None:
    """The page's limit (8,000 characters) fits the demo models' context, so a prompt at the
    limit gets two answers that can be voted on; one character more is refused with a message
    and stays in the textbox whole, never cut silently."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(arena_page_url, wait_until="load")
    textbox = page.locator("#battle-prompt textarea")
    textbox.wait_for(timeout=30_000)
    assert "up to 8,000 characters" in (textbox.get_attribute("placeholder") or "")

    too_long = "why is the sky blue? " * 380 + "x" * 21  # 8,001 characters
    assert len(too_long) == 8001
    textbox.fill(too_long)
    assert len(textbox.input_value()) == 8001
    page.locator("#battle-send").click()
    status = page.locator("#battle-status")
    expect(status).to_contain_text("Your message has 8,001 characters; the limit is 8,000", timeout=20_000)
    assert len(textbox.input_value()) == 8001

    textbox.fill(too_long[:8000])
    page.locator("#battle-send").click()
    expect(status).to_contain_text("Both answered", timeout=120_000)
    expect(page.locator("#battle-vote-a")).to_be_enabled()
    page.screenshot(path=str(artifacts_dir / "arena_long_prompt.png"))
    page.close()


def test_votes_reach_the_leaderboard_within_seconds(browser, arena_page_url: str, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """No "No ratings yet" until a 10-minute refresh: the page shows the vote once voting pauses
    (debounce 0.5 s here), and says when the ratings were computed."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(arena_page_url, wait_until="load")
    page.locator("#battle-prompt textarea").fill("Name three rivers.")
    page.locator("#battle-send").click()
    expect(page.locator("#battle-status")).to_contain_text("Both answered", timeout=60_000)
    page.locator("#battle-vote-b").click()
    expect(page.locator("#battle-status")).to_contain_text("Thanks for voting", timeout=30_000)

    for _ in range(240):  # reload until the refresher has counted the vote (each load is a fresh read)
        page.goto(f"{arena_page_url}/leaderboard", wait_until="load")
        if page.locator("#leaderboard-table").count() and "newer vote" not in page.locator("#last-updated").inner_text():
            break
        page.wait_for_timeout(250)
    expect(page.locator("#leaderboard-table tbody tr").first).to_be_visible()
    expect(page.locator("#last-updated")).to_contain_text("Computed at 20")
    expect(page.locator("#last-updated")).not_to_contain_text("newer vote")
    page.screenshot(path=str(artifacts_dir / "leaderboard_after_vote.png"), full_page=True)
    page.close()
