"""Turns that end badly, on both databases: truncated streams, answers stored as they arrive,
stale turns failed by the reaper, database outages at the end of a turn, and rate limits
under real concurrency (in-process and through the real Redis at 127.0.0.1:6379).

The service runs on the real engines (commits visible to other connections), since these
tests read the database while a turn is still running.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from arena.battles import ArenaService, RateLimitedError
from arena.battles.rate_limit import MemoryRateLimiter, RedisRateLimiter
from arena.battles.streaming import CUT_OFF
from arena.config import REPO_ROOT, Settings
from arena.db.models import Battle, BattleStatus, Conversation, Message
from arena.db.session import get_engine, session_factory
from arena.moderation import ModerationResult, WordListModerator
from arena.providers.registry import ModelRegistry
from tests.environment import unavailable
from tests.fake_openai import ChatRequest, FakeOpenAI, Reply
from tests.servers import TcpProxy, registry_toml

MODELS = ("alpha-7b", "bravo-13b")
REDIS_URL = "redis://127.0.0.1:6379/0"
SLOW_ANSWER = "one two three four five six seven eight nine ten"


def _respond(request: ChatRequest) -> Reply | str:
    prompt = request.last_user_message
    if "truncate" in prompt and request.model == "bravo-13b":
        return Reply(text="half an ans", finish_reason=None)
    if "slow" in prompt:
        delay = 0.3 if request.model == "bravo-13b" else 0.0
        return Reply(text=SLOW_ANSWER, word_delay_s=delay)
    return f"answer about {prompt}"


@pytest.fixture(scope="module")
def fake_models() -> FakeOpenAI:
    with FakeOpenAI(_respond, models=list(MODELS)) as server:
        yield server


class SlowModerator:
    """Moderation that takes a while, like OpenAI's endpoint: the window in which limits were raced."""

    name = "slow"

    async def check(self, text: str) -> ModerationResult:
        await asyncio.sleep(0.05)
        return ModerationResult(False)


def build_service(url: str, base_url: str, tmp_path: Path, **overrides) -> ArenaService:  # type: ignore[no-untyped-def]
    registry_file = tmp_path / "models.toml"
    registry_file.write_text(registry_toml(base_url, MODELS))
    moderator = overrides.pop("moderator", None) or WordListModerator.from_file(
        REPO_ROOT / "data" / "moderation_words.txt")
    limiter = overrides.pop("rate_limiter", None)
    settings = Settings(database_url=url, models_file=registry_file, provider_max_retries=0, **overrides)
    service = ArenaService(session_factory(get_engine(url)), ModelRegistry.from_toml(registry_file), moderator,
                           settings, rate_limiter=limiter)
    service.sync_models()
    return service


def answers(url: str, battle_id: str) -> dict[str, Message]:
    with session_factory(get_engine(url))() as session:
        rows = session.execute(
            select(Conversation.side, Message).join(Message, Message.conversation_id == Conversation.id)
            .where(Conversation.battle_id == battle_id, Message.role == "assistant").order_by(Message.position)
        ).all()
    return {side: message for side, message in rows}  # the last answer of each side


def status_of(url: str, battle_id: str) -> str:
    with session_factory(get_engine(url))() as session:
        return str(session.scalar(select(Battle.status).where(Battle.id == battle_id)))


def visitor() -> str:
    return "v-" + uuid.uuid4().hex[:12]


async def test_a_stream_without_finish_reason_is_a_failure(database_url, fake_models, tmp_path) -> None:
    service = build_service(database_url, fake_models.base_url, tmp_path)
    me = visitor()
    battle = service.create_battle(me, "named", "alpha-7b", "bravo-13b")
    updates = [u async for u in service.play_turn(battle.id, me, "please truncate")]
    await service.aclose()
    assert updates[-1].status == BattleStatus.FAILED
    assert updates[-1].sides["b"].error == CUT_OFF
    stored = answers(database_url, battle.id)
    assert stored["b"].error == CUT_OFF and stored["b"].content == "half an ans"  # kept, but not votable
    assert stored["a"].error is None and stored["a"].finish_reason == "stop"


async def test_each_side_is_stored_when_it_ends_and_partial_text_at_each_heartbeat(
    database_url, fake_models, tmp_path
) -> None:
    service = build_service(database_url, fake_models.base_url, tmp_path, turn_heartbeat_s=0.05)
    me = visitor()
    battle = service.create_battle(me, "named", "alpha-7b", "bravo-13b")
    seen_a_stored_while_b_streams = seen_partial_b = False
    async for update in service.play_turn(battle.id, me, "slow please"):
        if update.done:
            break
        stored = await asyncio.to_thread(answers, database_url, battle.id)
        if not update.sides["b"].done and stored["a"].finish_reason == "stop":
            seen_a_stored_while_b_streams = stored["a"].content == SLOW_ANSWER
        partial = stored["b"].content
        if stored["b"].finish_reason is None and partial and partial != SLOW_ANSWER:
            seen_partial_b = SLOW_ANSWER.startswith(partial)
    await service.aclose()
    assert seen_a_stored_while_b_streams and seen_partial_b
    assert status_of(database_url, battle.id) == BattleStatus.READY


async def test_the_reaper_fails_turns_whose_server_went_away(database_url, fake_models, tmp_path) -> None:
    """A turn whose server died stays 'streaming' in the database; a live server's reaper ends it."""
    crashed = build_service(database_url, fake_models.base_url, tmp_path, turn_heartbeat_s=0.05)
    me = visitor()
    battle = crashed.create_battle(me, "named", "alpha-7b", "bravo-13b")
    stream = crashed.play_turn(battle.id, me, "slow please")
    async for _ in stream:
        stored = await asyncio.to_thread(answers, database_url, battle.id)
        if stored["b"].content:  # some of side b's text is in the database
            break
    for run in list(crashed._runs):  # the process dies: its tasks vanish without a word
        run.task.cancel()
        for task in run.streams._tasks.values():
            task.cancel()
    await asyncio.sleep(0)
    assert status_of(database_url, battle.id) == BattleStatus.STREAMING

    survivor = build_service(database_url, fake_models.base_url, tmp_path, stale_turn_s=0.2, reap_interval_s=0.05)
    survivor.start_reaper()
    while status_of(database_url, battle.id) == BattleStatus.STREAMING:
        await asyncio.sleep(0.05)
    await survivor.aclose()
    assert status_of(database_url, battle.id) == BattleStatus.FAILED
    stored = answers(database_url, battle.id)
    assert stored["a"].content == SLOW_ANSWER and stored["a"].error is None  # finished before the crash
    assert stored["b"].content and SLOW_ANSWER.startswith(stored["b"].content)  # kept what arrived
    assert "server went away" in (stored["b"].error or "")


@pytest.mark.postgres
async def test_a_database_outage_at_the_end_of_a_turn_loses_nothing(postgres_url, fake_models, tmp_path) -> None:
    target = make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    url = target.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        service = build_service(url, fake_models.base_url, tmp_path)
        me = visitor()
        battle = service.create_battle(me, "named", "alpha-7b", "bravo-13b")
        stream = service.play_turn(battle.id, me, "slow please")
        async for update in stream:
            if update.sides["b"].text:
                break
        proxy.cut()  # the database goes away while both models are still writing
        await asyncio.sleep(3.5)  # side b streams its last words (about 3 s) into the outage
        proxy.restore()
        final = [u async for u in stream][-1]
        await service.aclose()
    finally:
        proxy.close()
        get_engine(url).dispose()
    assert final.status == BattleStatus.READY
    assert status_of(postgres_url, battle.id) == BattleStatus.READY
    stored = answers(postgres_url, battle.id)
    assert {side: m.content for side, m in stored.items()} == {"a": SLOW_ANSWER, "b": SLOW_ANSWER}


async def _race(services: list[ArenaService], me: str, turns: int) -> tuple[int, int]:
    battles = [services[i % len(services)].create_battle(me, "named", "alpha-7b", "bravo-13b") for i in range(turns)]

    async def one(index: int) -> bool:
        try:
            async for _ in services[index % len(services)].play_turn(battles[index].id, me, f"question {index}"):
                pass
        except RateLimitedError:
            return False
        return True

    results = await asyncio.gather(*(one(i) for i in range(turns)))
    return sum(results), turns - sum(results)


async def test_the_turn_limit_holds_under_concurrency(database_url, fake_models, tmp_path) -> None:
    service = build_service(database_url, fake_models.base_url, tmp_path, moderator=SlowModerator(),
                            rate_limit_turns=30, rate_limit_creations=1000)
    accepted, refused = await _race([service], visitor(), 60)
    await service.aclose()
    assert (accepted, refused) == (30, 30)


def test_creating_battles_and_chats_is_limited(database_url, fake_models, tmp_path) -> None:
    service = build_service(database_url, fake_models.base_url, tmp_path, rate_limit_creations=3)
    me = visitor()
    service.create_battle(me)
    service.create_chat(me, "alpha-7b")
    service.create_battle(me)
    with pytest.raises(RateLimitedError, match="3 new battles or chats") as refused:
        service.create_chat(me, "alpha-7b")
    assert 0 < refused.value.retry_after_s <= 60
    service.create_battle(visitor())  # others are not affected


def _redis_limiter(prefix: str) -> RedisRateLimiter:
    try:
        limiter = RedisRateLimiter(REDIS_URL, prefix=prefix)
        limiter.acquire("probe", 1, 1.0)
    except Exception as exc:  # the reason is shown in the skip message
        unavailable(f"Redis at {REDIS_URL} unreachable: {exc}")
    return limiter


@pytest.mark.postgres
async def test_two_servers_share_one_limit_through_redis(postgres_url, fake_models, tmp_path) -> None:
    prefix = f"arena-test-{uuid.uuid4().hex[:8]}:"
    services = [build_service(postgres_url, fake_models.base_url, tmp_path, moderator=SlowModerator(),
                              rate_limit_turns=30, rate_limit_creations=1000, rate_limiter=_redis_limiter(prefix))
                for _ in range(2)]
    accepted, refused = await _race(services, visitor(), 60)
    for service in services:
        await service.aclose()
    assert (accepted, refused) == (30, 30)


def test_limiters_free_a_slot_when_the_window_passes() -> None:
    now = [0.0]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    assert [limiter.acquire("k", 2, 10.0) for _ in range(3)] == [None, None, 10.0]
    now[0] = 10.5
    assert limiter.acquire("k", 2, 10.0) is None
    redis_limiter = _redis_limiter(f"arena-test-{uuid.uuid4().hex[:8]}:")
    assert [redis_limiter.acquire("k", 2, 30.0) is None for _ in range(3)] == [True, True, False]
    redis_limiter.close()
