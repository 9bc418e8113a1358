"""The platform under abuse, over real HTTP: clients that hang up mid-stream, a table lock that
must not stall the event loop, NUL bytes, a database that goes away, the error shape and the
OpenAPI schema (checked by schemathesis), and the visitor cookie behind HTTPS.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from arena.config import REPO_ROOT, Settings
from arena.db.models import BattleStatus, Conversation, Message
from arena.db.session import get_engine, session_factory
from arena.identity import COOKIE_NAME
from arena.web.app import create_app
from tests.fake_openai import ChatRequest, FakeOpenAI, Reply
from tests.servers import TcpProxy, registry_toml, serve_app

MODELS = ("alpha-7b", "bravo-13b")
SLOW_ANSWER = " ".join(f"word{i}" for i in range(40))


def _answer(request: ChatRequest) -> Reply | str:
    if "slow" in request.last_user_message:
        return Reply(text=SLOW_ANSWER, word_delay_s=0.1)
    return f"answer to {request.last_user_message}"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(_answer, models=list(MODELS)) as server:
        yield server


def make_settings(database_url: str, endpoint: FakeOpenAI, tmp_path: Path, **overrides: object) -> Settings:
    registry = tmp_path / "models.toml"
    registry.write_text(registry_toml(endpoint.base_url, MODELS))
    return Settings(database_url=database_url, models_file=registry, secret_key="test-secret",
                    moderation_wordlist=REPO_ROOT / "data" / "moderation_words.txt", **overrides)  # type: ignore[arg-type]


@pytest.fixture
def arena_url(database_url: str, endpoint: FakeOpenAI, tmp_path: Path) -> Iterator[str]:
    with serve_app(create_app(make_settings(database_url, endpoint, tmp_path))) as url:
        yield url


def stored_answers(url: str, battle_id: str) -> list[Message]:
    with session_factory(get_engine(url))() as session:
        return list(session.scalars(
            select(Message).join(Conversation, Message.conversation_id == Conversation.id)
            .where(Conversation.battle_id == battle_id, Message.role == "assistant")
        ))


# ----------------------------------------------------------------------------- 1. clients that hang up


async def _open_and_hang_up(client: httpx.AsyncClient) -> str:
    battle = (await client.post("/api/v1/battles", json={})).json()["id"]
    async with client.stream("POST", f"/api/v1/battles/{battle}/turns", json={"prompt": "slow please"}) as turn:
        assert turn.status_code == 200, await turn.aread()
        async for line in turn.aiter_lines():
            if line.startswith("data: "):
                break  # one event read; leaving the block closes the connection
    return battle


def test_clients_hanging_up_mid_stream_leave_no_battle_streaming(arena_url: str, database_url: str) -> None:
    async def twenty() -> list[str]:
        async with httpx.AsyncClient(base_url=arena_url, timeout=30) as client:
            await client.get("/healthz")  # one visitor: the cookie first, then twenty tabs at once
            return list(await asyncio.gather(*(_open_and_hang_up(client) for _ in range(20))))

    battles = asyncio.run(twenty())
    with httpx.Client(base_url=arena_url, timeout=30) as reader:
        statuses = {}
        for battle in battles:
            while (status := reader.get(f"/api/v1/battles/{battle}").json()["status"]) == BattleStatus.STREAMING:
                time.sleep(0.1)
            statuses[battle] = status
    assert set(statuses.values()) <= {BattleStatus.FAILED, BattleStatus.READY}
    for battle in battles:
        answers = stored_answers(database_url, battle)
        assert len(answers) == 2 and all(m.finish_reason is not None for m in answers)  # each one settled
        assert all(SLOW_ANSWER.startswith(m.content) for m in answers)  # what arrived was kept


# ----------------------------------------------------------------------------- 2. the event loop


@pytest.mark.postgres
def test_health_answers_while_a_turn_waits_on_a_locked_table(postgres_url: str, endpoint, tmp_path) -> None:
    with serve_app(create_app(make_settings(postgres_url, endpoint, tmp_path))) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        battle = client.post("/api/v1/battles", json={}).json()["id"]
        locker = create_engine(postgres_url).connect()
        locker.begin()
        locker.execute(text("LOCK TABLE battles IN ACCESS EXCLUSIVE MODE"))
        turn: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: turn.setdefault(
            "response", client.post(f"/api/v1/battles/{battle}/turns", json={"prompt": "hello"})))
        thread.start()
        waiting = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        with create_engine(postgres_url).connect() as watcher:
            while watcher.execute(waiting).scalar_one() == 0:  # the turn is blocked on the lock now
                time.sleep(0.05)
        health = httpx.get(f"{url}/healthz", timeout=60)
        still_blocked = thread.is_alive()
        locker.rollback()
        locker.close()
        thread.join(timeout=60)
    assert health.status_code == 200 and still_blocked  # answered while the turn waited
    assert turn["response"].status_code == 200 and '"status": "ready"' in turn["response"].text


# ----------------------------------------------------------------------------- 6-8. bad input, one error shape


def test_nul_bytes_are_refused_with_400(arena_url: str) -> None:
    with httpx.Client(base_url=f"{arena_url}/api/v1", timeout=30) as client:
        battle = client.post("/battles", json={}).json()["id"]
        attempts = [
            client.post(f"/battles/{battle}/turns", json={"prompt": "hi\x00there"}),
            client.post("/battles", json={"mode": "named", "model_a": "alpha-7b\x00", "model_b": "bravo-13b"}),
            client.post("/chats", json={"model": "\x00"}),
            client.get("/battles/abc%00def"),
            client.post("/battles/%00/vote", json={"choice": "a"}),
        ]
    for response in attempts:
        assert response.status_code == 400, response.text
        assert "NUL" in response.json()["error"]["message"]


def test_validation_errors_use_the_documented_shape(arena_url: str) -> None:
    with httpx.Client(base_url=f"{arena_url}/api/v1", timeout=30) as client:
        bad_mode = client.post("/battles", json={"mode": "free-for-all"})
        no_prompt = client.post("/battles/abc/turns", json={})
    for response in (bad_mode, no_prompt):
        assert response.status_code == 422
        assert set(response.json()) == {"error"} and response.json()["error"]["code"] == "invalid_request"
    assert "body.prompt" in no_prompt.json()["error"]["message"]


@pytest.mark.postgres
def test_database_outage_answers_503_with_retry_after_and_recovers(postgres_url: str, endpoint, tmp_path) -> None:
    target = make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    url = target.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        with serve_app(create_app(make_settings(url, endpoint, tmp_path))) as base, \
                httpx.Client(base_url=f"{base}/api/v1", timeout=30) as client:
            battle = client.post("/battles", json={}).json()["id"]
            proxy.cut()
            down = [client.get(f"/battles/{battle}"), client.post("/battles", json={}),
                    client.post(f"/battles/{battle}/turns", json={"prompt": "hello"})]
            proxy.restore()
            back = client.get(f"/battles/{battle}")
    finally:
        proxy.close()
        get_engine(url).dispose()
    for response in down:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "database_unavailable"
        assert int(response.headers["Retry-After"]) >= 1
    assert back.status_code == 200 and back.json()["id"] == battle


def test_the_openapi_schema_is_true(database_url: str, endpoint, tmp_path) -> None:
    """schemathesis over /api/v1: no undocumented status, no 5xx, bodies match the schema."""
    settings = make_settings(database_url, endpoint, tmp_path, rate_limit_turns=10_000, rate_limit_creations=10_000)
    with serve_app(create_app(settings)) as base:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/api/v1/openapi.json", "--url", base,
             "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
             "response_schema_conformance", "--max-examples", "25", "--seed", "18", "--workers", "1",
             "--phases", "examples,coverage,fuzzing", "--mode", "all", "--request-timeout", "30",
             "--suppress-health-check", "all", "--warnings", "off"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,  # its cache stays out of the repo
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


# ----------------------------------------------------------------------------- 10. cookies over HTTPS


def test_cookie_is_secure_behind_https(arena_url: str) -> None:
    plain = httpx.get(f"{arena_url}/healthz")
    behind_tls = httpx.get(f"{arena_url}/healthz", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in plain.headers["set-cookie"]
    assert f"{COOKIE_NAME}=" in behind_tls.headers["set-cookie"] and "; Secure" in behind_tls.headers["set-cookie"]


