"""The JSON API over real HTTP, on SQLite and PostgreSQL, plus the vote concurrency test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from arena.config import REPO_ROOT, Settings
from arena.db.models import Battle, BattleStatus, Model, Visitor, Vote
from arena.db.session import get_engine, session_factory
from arena.identity import COOKIE_NAME, VisitorIdentity
from arena.web.app import create_app
from tests.fake_openai import ChatRequest, FakeOpenAI
from tests.servers import registry_toml, serve_app

MODELS = ("alpha-7b", "bravo-13b")


def _answer(request: ChatRequest) -> str:
    return f"answer to {request.last_user_message}"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(_answer, models=list(MODELS)) as server:
        yield server


@pytest.fixture
def settings(database_url: str, endpoint: FakeOpenAI, tmp_path: Path) -> Settings:
    registry = tmp_path / "models.toml"
    registry.write_text(registry_toml(endpoint.base_url, MODELS))
    return Settings(database_url=database_url, models_file=registry, secret_key="test-secret",
                    moderation_wordlist=REPO_ROOT / "data" / "moderation_words.txt")


@pytest.fixture
def arena_url(settings: Settings) -> Iterator[str]:
    with serve_app(create_app(settings)) as url:
        yield url


def sse_events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]


def test_health_and_openapi(arena_url: str) -> None:
    assert httpx.get(f"{arena_url}/healthz").json() == {"status": "ok", "models": 2}
    schema = httpx.get(f"{arena_url}/api/v1/openapi.json").json()
    assert {"/api/v1/battles", "/api/v1/battles/{battle_id}/vote", "/api/v1/models"} <= set(schema["paths"])


def test_battle_over_http_from_creation_to_reveal(arena_url: str) -> None:
    with httpx.Client(base_url=f"{arena_url}/api/v1", timeout=30) as client:
        assert [m["name"] for m in client.get("/models").json()] == list(MODELS)
        battle = client.post("/battles", json={}).json()
        assert battle["model_a"] is None and battle["status"] == "open"
        assert client.cookies.get(COOKIE_NAME)  # the visitor got a signed cookie
        turn = client.post(f"/battles/{battle['id']}/turns", json={"prompt": "why is the sky blue"})
        assert turn.headers["content-type"].startswith("text/event-stream")
        events = sse_events(turn)
        text = {side: "".join(e.get("delta", "") for e in events if e.get("side") == side) for side in "ab"}
        assert text == {"a": "answer to why is the sky blue", "b": "answer to why is the sky blue"}
        assert events[-1] == {"done": True, "status": "ready", "errors": {}}
        hidden = client.get(f"/battles/{battle['id']}").json()
        assert hidden["model_a"] is None and len(hidden["messages"]["a"]) == 2

        vote = client.post(f"/battles/{battle['id']}/vote", json={"choice": "b"})
        assert vote.status_code == 200 and vote.json()["duplicate"] is False
        assert client.post(f"/battles/{battle['id']}/vote", json={"choice": "b"}).json()["duplicate"] is True
        changed = client.post(f"/battles/{battle['id']}/vote", json={"choice": "a"})
        assert changed.status_code == 409 and "already voted" in changed.json()["error"]["message"]
        revealed = client.get(f"/battles/{battle['id']}").json()
        assert {revealed["model_a"], revealed["model_b"]} == set(MODELS) and revealed["vote"] == "b"


def test_api_errors_are_clear(arena_url: str) -> None:
    with httpx.Client(base_url=f"{arena_url}/api/v1", timeout=30) as client:
        battle = client.post("/battles", json={}).json()
        empty = client.post(f"/battles/{battle['id']}/turns", json={"prompt": " "})
        assert empty.status_code == 400 and empty.json()["error"]["message"] == "Please type a message first."
        early = client.post(f"/battles/{battle['id']}/vote", json={"choice": "a"})
        assert early.status_code == 409 and "no answers yet" in early.json()["error"]["message"]
        assert client.post("/battles/nope/vote", json={"choice": "a"}).status_code == 404
        assert client.post(f"/battles/{battle['id']}/vote", json={"choice": "maybe"}).status_code == 422
        same = client.post("/battles", json={"mode": "named", "model_a": "alpha-7b", "model_b": "alpha-7b"})
        assert same.status_code == 400
    with httpx.Client(base_url=f"{arena_url}/api/v1") as stranger:
        assert stranger.post(f"/battles/{battle['id']}/turns", json={"prompt": "hi"}).status_code == 403


def test_direct_chat_over_http(arena_url: str) -> None:
    with httpx.Client(base_url=f"{arena_url}/api/v1", timeout=30) as client:
        chat = client.post("/chats", json={"model": "bravo-13b"}).json()
        events = sse_events(client.post(f"/chats/{chat['conversation_id']}/turns", json={"prompt": "hello"}))
        assert "".join(e.get("delta", "") for e in events) == "answer to hello"
        assert events[-1] == {"done": True, "error": None}


@pytest.mark.postgres
def test_concurrent_votes_on_postgres_leave_exactly_one_vote_per_battle(
    postgres_url: str, endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    """200 concurrent vote attempts over 50 battles (duplicates and conflicting choices)."""
    registry = tmp_path / "models.toml"
    registry.write_text(registry_toml(endpoint.base_url, MODELS))
    settings = Settings(database_url=postgres_url, models_file=registry, secret_key="test-secret")
    identity = VisitorIdentity(settings.secret_key)
    cookies = [identity.new_cookie() for _ in range(50)]
    battle_ids = _ready_battles(postgres_url, [identity.visitor_id_from_cookie(c) or "" for c in cookies])

    async def attempt(index: int, client: httpx.AsyncClient) -> tuple[str, int, str | None]:
        battle = index % 50
        choice = "a" if index % 4 else "tie"  # one attempt in four disagrees with the others
        response = await client.post(f"/api/v1/battles/{battle_ids[battle]}/vote", json={"choice": choice},
                                     cookies={COOKIE_NAME: cookies[battle]})
        return battle_ids[battle], response.status_code, response.json().get("choice")

    async def storm(url: str) -> list[tuple[str, int, str | None]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(attempt(i, client) for i in range(200)))

    with serve_app(create_app(settings)) as url:
        results = asyncio.run(storm(url))
    assert {status for _, status, _ in results} <= {200, 409}
    with session_factory(get_engine(postgres_url))() as session:
        votes = dict(session.execute(select(Vote.battle_id, Vote.choice).where(Vote.battle_id.in_(battle_ids))).all())
        per_battle = session.execute(
            select(func.count(Vote.id)).where(Vote.battle_id.in_(battle_ids)).group_by(Vote.battle_id)
        ).scalars().all()
    assert len(votes) == 50 and set(per_battle) == {1}
    for battle_id, status, choice in results:  # every 200 told the truth about the stored vote
        if status == 200:
            assert votes[battle_id] == choice


def _ready_battles(url: str, visitors: list[str]) -> list[str]:
    """Battles that finished answering, one per visitor, written straight to the database."""
    with session_factory(get_engine(url)).begin() as session:
        for name in MODELS:
            if session.get(Model, name) is None:
                session.add(Model(name=name, model_id=name, base_url="http://unused/v1"))
        session.add_all(Visitor(id=visitor) for visitor in visitors)
        session.flush()
        battles = []
        for visitor in visitors:
            battle = Battle(model_a=MODELS[0], model_b=MODELS[1], visitor_id=visitor, status=BattleStatus.READY,
                            turn_count=1)
            session.add(battle)
            battles.append(battle)
        session.flush()
        return [b.id for b in battles]
