"""``arena serve`` as a real process: killed mid-turn, stopped with SIGTERM mid-turn, its logs
(no client address, a loud warning about the default secret) and a bad registry at start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from arena.db.models import Battle, BattleStatus, Conversation, Message
from arena.db.session import get_engine, session_factory
from tests.fake_openai import ChatRequest, FakeOpenAI, Reply
from tests.servers import REPO_ROOT, free_port, registry_toml

MODELS = ("alpha-7b", "bravo-13b")
SLOW_ANSWER = " ".join(f"word{i}" for i in range(100))
FORWARDED_IP = "203.0.113.77"


def _slow(_: ChatRequest) -> Reply:
    return Reply(text=SLOW_ANSWER, word_delay_s=0.1)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(_slow, models=list(MODELS)) as server:
        yield server


@contextmanager
def arena_process(database_url: str, registry: Path, log: Path, **env: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``arena serve`` on a free port (no migration: the test database is migrated), its log in ``log``."""
    port = free_port()
    environment = {**os.environ, "ARENA_DATABASE_URL": database_url, "ARENA_MODELS_FILE": str(registry),
                   "ARENA_TURN_HEARTBEAT_S": "0.1", "ARENA_LEADERBOARD_REFRESH_S": "3600", **env}
    if "ARENA_SECRET_KEY" not in env:
        environment.pop("ARENA_SECRET_KEY", None)
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "arena.cli", "serve", "--port", str(port), "--no-migrate"],
                                   cwd=REPO_ROOT, env=environment, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"arena serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("arena serve did not start")
            time.sleep(0.3)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def side_answers(url: str, battle_id: str) -> list[Message]:
    with session_factory(get_engine(url))() as session:
        return list(session.scalars(
            select(Message).join(Conversation, Message.conversation_id == Conversation.id)
            .where(Conversation.battle_id == battle_id, Message.role == "assistant")
        ))


def start_turn(client: httpx.Client, database_url: str) -> tuple[str, httpx.Response]:
    """A battle whose turn is streaming, with some of both answers already in the database."""
    battle = client.post("/api/v1/battles", json={}).json()["id"]
    stream = client.send(client.build_request("POST", f"/api/v1/battles/{battle}/turns",
                                              json={"prompt": "tell me a long story"}), stream=True)
    assert stream.status_code == 200
    while not all(m.content for m in side_answers(database_url, battle)):  # stored as it arrives
        time.sleep(0.1)
    return battle, stream


def test_a_killed_server_leaves_a_turn_that_a_running_server_fails(database_url, endpoint, tmp_path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(registry_toml(endpoint.base_url, MODELS))
    with arena_process(database_url, registry, tmp_path / "first.log", ARENA_SECRET_KEY="k" * 32) as (first, base), \
            httpx.Client(base_url=base, timeout=30) as client:
        battle, stream = start_turn(client, database_url)
        first.send_signal(signal.SIGKILL)  # no clean-up of any kind runs
        first.wait(timeout=30)
        stream.close()
    with arena_process(database_url, registry, tmp_path / "second.log", ARENA_SECRET_KEY="k" * 32,
                       ARENA_STALE_TURN_S="1", ARENA_REAP_INTERVAL_S="0.2") as (_, base), \
            httpx.Client(base_url=base, timeout=30) as client:
        while (view := client.get(f"/api/v1/battles/{battle}").json())["status"] == BattleStatus.STREAMING:
            time.sleep(0.2)
    assert view["status"] == BattleStatus.FAILED
    answers = side_answers(database_url, battle)
    assert len(answers) == 2
    for answer in answers:
        assert answer.content and SLOW_ANSWER.startswith(answer.content)  # what arrived before the kill
        assert "server went away" in (answer.error or "")


def test_sigterm_stops_open_streams_in_bounded_time_and_logs_no_address(sqlite_url, endpoint, tmp_path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(registry_toml(endpoint.base_url, MODELS))
    log = tmp_path / "serve.log"
    with arena_process(sqlite_url, registry, log, ARENA_SHUTDOWN_GRACE_S="1") as (process, base), \
            httpx.Client(base_url=base, timeout=30, headers={"X-Forwarded-For": FORWARDED_IP}) as client:
        battle, stream = start_turn(client, sqlite_url)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=120)  # a guard only: without a bound it would wait for the story
        stream.close()
    output = log.read_text()
    # uvicorn re-raises the signal after a clean shutdown, so the exit status is "killed by SIGTERM".
    assert returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output
    answers = side_answers(sqlite_url, battle)
    assert all(m.content and SLOW_ANSWER.startswith(m.content) and m.content != SLOW_ANSWER for m in answers)
    assert all(m.error == "the answer was interrupted" for m in answers)
    with session_factory(get_engine(sqlite_url))() as session:
        assert session.get(Battle, battle).status == BattleStatus.FAILED
    assert '"POST /api/v1/battles HTTP' not in output  # uvicorn's access log (with addresses) is off
    assert '"POST /api/v1/battles" 201' in output  # ours, without them
    leaks = [line for line in output.splitlines() if FORWARDED_IP in line or "127.0.0.1:" in line
             and "Uvicorn running on" not in line and "HTTP Request:" not in line
             and not line.startswith("Arena: http://")]  # the server's own and the models' URLs are fine
    assert not leaks
    assert "ARENA_SECRET_KEY is the built-in default" in output


def test_a_bad_registry_is_one_clear_line(sqlite_url, tmp_path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text('[[models]]\nname = "a"\nbase_url = "http://x"\nweight = inf\n')
    run = subprocess.run([sys.executable, "-m", "arena.cli", "serve", "--no-migrate"], cwd=REPO_ROOT,
                         env={**os.environ, "ARENA_DATABASE_URL": sqlite_url, "ARENA_MODELS_FILE": str(registry),
                              "ARENA_SECRET_KEY": "k" * 32},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: {registry}:1: weight must be a finite number >= 0, got inf"
    ]
    assert "Traceback" not in run.stdout + run.stderr
