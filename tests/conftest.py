"""Shared fixtures: migrated databases (SQLite and the real PostgreSQL), rolled-back sessions,
and the platform's model endpoints.

* ``database_url`` is parametrized over SQLite and PostgreSQL: every test using it runs on both.
  Each backend gets a fresh database for the whole test session, built by the Alembic
  migrations (so every run exercises them).
* ``db_sessions`` binds a session factory to a connection whose outer transaction is rolled
  back after the test: commits inside the code under test become savepoints.
* Tests that need real commits seen by other connections (HTTP servers, concurrency) use
  ``database_url`` directly and unique ids.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tests.environment import unavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("ARENA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
# As the machine's own probe starts it: headless, as root, with no network chatter.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the latest migration, as ``arena db upgrade`` does."""
    from alembic import command

    from arena.cli import _alembic_config

    command.upgrade(_alembic_config(url), "head")


def _postgres_reachable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as exc:  # the reason is shown in the skip message
        return f"PostgreSQL at {make_url(PG_ADMIN_URL).render_as_string(hide_password=True)} unreachable: {exc}"


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new database on the test PostgreSQL, built by the migrations, dropped afterwards.

    Skips when PostgreSQL is unreachable on a developer's machine; fails under CI, where the
    tests must run on both databases.
    """
    reason = _postgres_reachable()
    if reason:
        unavailable(reason)
    from arena.db.session import get_engine

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped afterwards."""
    with fresh_postgres_database("arena_test") as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, migrated SQLite database file for this test session."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'arena.db'}"
    migrate(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """The URL of a migrated database; tests using it run on SQLite and on PostgreSQL."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def db_sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory whose every change is rolled back after the test."""
    from arena.db.session import get_engine

    connection = get_engine(database_url).connect()
    outer = connection.begin()
    factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield factory
    finally:
        outer.rollback()
        connection.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave screenshots for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    """Debian chromium driven by Playwright, one per test module (sync Playwright can't nest)."""
    if not CHROMIUM.exists():
        unavailable(f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
