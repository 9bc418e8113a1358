"""The battle domain on both databases: sampling, streamed turns, failures, votes, limits.

Model endpoints are a local OpenAI-compatible server over real HTTP (tests/fake_openai.py),
so failures, identity leaks and slow answers can be played on purpose; the end-to-end tests
in tests/web use our real serving engine.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from arena.battles import (
    ArenaError,
    ArenaService,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    RefusedError,
    WeightedPairSampler,
)
from arena.config import REPO_ROOT, Settings
from arena.db.models import Battle, BattleStatus, Conversation, Flag, FlagKind, Message, Vote
from arena.moderation import WordListModerator
from arena.providers.registry import ModelRegistry, ModelSpec
from tests.fake_openai import ChatRequest, FakeOpenAI, Reply
from tests.servers import free_port, registry_toml

MODELS = ("alpha-7b", "bravo-13b", "charlie-2")


def _respond(request: ChatRequest) -> Reply | str:
    prompt = request.last_user_message
    if "who are you" in prompt:
        return f"I am {request.model}, nice to meet you."
    if "too much context" in prompt and request.model == "bravo-13b":  # a context window the registry doesn't know
        return Reply(status=400, error_message="This model's maximum context length is 2048 tokens. However, "
                                               "your messages resulted in 2100 tokens.")
    if "crash" in prompt and request.model == "bravo-13b":
        return Reply(status=500, error_message="the GPU caught fire")
    turns = sum(1 for m in request.messages if m["role"] == "user")
    return f"answer {turns} from the model about {prompt}"


@pytest.fixture(scope="module")
def fake_models() -> FakeOpenAI:
    with FakeOpenAI(_respond, models=list(MODELS)) as server:
        yield server


def make_service(db_sessions, base_url: str, tmp_path: Path, **overrides) -> ArenaService:  # type: ignore[no-untyped-def]
    registry_file = tmp_path / "models.toml"
    registry_file.write_text(registry_toml(base_url, MODELS))
    settings = Settings(database_url="sqlite://", models_file=registry_file, provider_max_retries=0, **overrides)
    service = ArenaService(
        db_sessions,
        ModelRegistry.from_toml(registry_file),
        WordListModerator.from_file(REPO_ROOT / "data" / "moderation_words.txt"),
        settings,
    )
    service.sync_models()
    return service


@pytest.fixture
async def service(db_sessions, fake_models: FakeOpenAI, tmp_path: Path):  # type: ignore[no-untyped-def]
    service = make_service(db_sessions, fake_models.base_url, tmp_path)
    yield service
    await service.aclose()


def answers_of(session, battle_id: str) -> list[Message]:  # type: ignore[no-untyped-def]
    """The assistant messages of one battle (other tests share the database)."""
    return list(session.scalars(
        select(Message).join(Conversation, Message.conversation_id == Conversation.id)
        .where(Conversation.battle_id == battle_id, Message.role == "assistant")
    ))


async def play(service: ArenaService, battle_id: str, visitor: str, prompt: str):  # type: ignore[no-untyped-def]
    updates = [u async for u in service.play_turn(battle_id, visitor, prompt)]
    return updates


# ----------------------------------------------------------------------------- sampling


def test_weighted_sampler_never_pairs_a_model_with_itself_and_follows_weights() -> None:
    specs = [ModelSpec(name=n, base_url="http://x/v1", model_id=n, weight=w) for n, w in
             [("m1", 1.0), ("m2", 1.0), ("m3", 2.0), ("m0", 0.0)]]
    rng = random.Random(7)
    appearances: Counter[str] = Counter()
    for _ in range(4000):
        a, b, probabilities = WeightedPairSampler().sample(specs, rng)
        assert a != b
        appearances.update((a, b))
    assert "m0" not in appearances
    assert probabilities == {"m1": 0.25, "m2": 0.25, "m3": 0.5}
    # m3 has twice the weight, so it appears in clearly more battles than m1 or m2.
    assert appearances["m3"] > 1.2 * appearances["m1"]


def test_sampler_needs_two_models() -> None:
    with pytest.raises(ArenaError, match="at least two models"):
        WeightedPairSampler().sample([ModelSpec("m", "http://x/v1", "m")], random.Random())


# ----------------------------------------------------------------------------- a whole battle


async def test_battle_streams_both_answers_then_vote_reveals_names(service: ArenaService, db_sessions) -> None:
    battle = service.create_battle("visitor-1")
    assert battle.model_a is None and battle.model_b is None  # anonymous until the vote
    updates = await play(service, battle.id, "visitor-1", "What is a monad?")
    assert len(updates) > 3  # streamed, not one block
    final = updates[-1]
    assert final.done and final.status == BattleStatus.READY
    assert all(s.text.startswith("answer 1 from the model") for s in final.sides.values())

    outcome = service.vote(battle.id, "visitor-1", "a")
    assert not outcome.duplicate and {outcome.model_a, outcome.model_b} <= set(MODELS)
    view = service.get_battle(battle.id)
    assert view.model_a == outcome.model_a and view.status == BattleStatus.VOTED and view.vote == "a"
    with db_sessions() as session:
        messages = answers_of(session, battle.id)
        assert len(messages) == 2
        assert all(m.completion_tokens and m.latency_ms and m.finish_reason == "stop" for m in messages)
        assert session.scalar(select(Vote.turn_count).where(Vote.battle_id == battle.id)) == 1


async def test_multi_turn_sends_the_history(service: ArenaService, fake_models: FakeOpenAI) -> None:
    battle = service.create_battle("visitor-2")
    await play(service, battle.id, "visitor-2", "first question")
    final = (await play(service, battle.id, "visitor-2", "second question"))[-1]
    assert all(s.text.startswith("answer 2") for s in final.sides.values())
    view = service.get_battle(battle.id)
    assert view.turn_count == 2 and [m["role"] for m in view.messages["a"]] == ["user", "assistant"] * 2


async def test_regenerate_replaces_the_last_answers(service: ArenaService) -> None:
    battle = service.create_battle("visitor-3")
    await play(service, battle.id, "visitor-3", "tell me")
    final = [u async for u in service.regenerate(battle.id, "visitor-3")][-1]
    assert final.status == BattleStatus.READY
    view = service.get_battle(battle.id)
    assert [m["role"] for m in view.messages["b"]] == ["user", "assistant"]


async def test_one_failing_endpoint_keeps_the_other_answer_and_blocks_the_vote(
    service: ArenaService, db_sessions
) -> None:
    battle = service.create_battle("visitor-4", "named", "alpha-7b", "bravo-13b")
    final = (await play(service, battle.id, "visitor-4", "please crash"))[-1]
    assert final.status == BattleStatus.FAILED
    assert final.sides["a"].error is None and final.sides["a"].text.startswith("answer")
    assert "500" in (final.sides["b"].error or "")
    with pytest.raises(ConflictError, match="failed"):
        service.vote(battle.id, "visitor-4", "a")
    with db_sessions() as session:
        stored = answers_of(session, battle.id)
        assert {bool(m.error) for m in stored} == {True, False}  # recorded as failed, not lost


async def test_a_context_length_error_is_explained_without_naming_the_model(service: ArenaService) -> None:
    battle = service.create_battle("visitor-4c", "named", "alpha-7b", "bravo-13b")
    final = (await play(service, battle.id, "visitor-4c", "too much context"))[-1]
    assert final.status == BattleStatus.FAILED
    error = final.sides["b"].error or ""
    assert "longer than this model's context window" in error and "start a new round" in error
    assert "bravo" not in error


async def test_unreachable_endpoint_is_an_error_on_its_side(db_sessions, tmp_path: Path, fake_models) -> None:
    service = make_service(db_sessions, fake_models.base_url, tmp_path)
    dead = ModelSpec("charlie-2", f"http://127.0.0.1:{free_port()}/v1", "charlie-2")
    service.registry._specs["charlie-2"] = dead  # an endpoint that refuses connections
    battle = service.create_battle("visitor-5", "named", "alpha-7b", "charlie-2")
    final = (await play(service, battle.id, "visitor-5", "hello"))[-1]
    assert final.status == BattleStatus.FAILED and "cannot reach" in (final.sides["b"].error or "")


# ----------------------------------------------------------------------------- votes are facts


async def test_votes_are_idempotent_and_cannot_change(service: ArenaService, db_sessions) -> None:
    battle = service.create_battle("visitor-6")
    await play(service, battle.id, "visitor-6", "question")
    first = service.vote(battle.id, "visitor-6", "tie")
    again = service.vote(battle.id, "visitor-6", "tie")  # double click / retry
    assert not first.duplicate and again.duplicate
    with pytest.raises(ConflictError, match="already voted"):
        service.vote(battle.id, "visitor-6", "b")
    with db_sessions() as session:
        assert session.scalar(select(func.count(Vote.id)).where(Vote.battle_id == battle.id)) == 1


async def test_votes_refused_for_unknown_unfinished_or_foreign_battles(service: ArenaService) -> None:
    with pytest.raises(NotFoundError):
        service.vote("no-such-battle", "visitor-7", "a")
    battle = service.create_battle("visitor-7")
    with pytest.raises(ConflictError, match="no answers yet"):
        service.vote(battle.id, "visitor-7", "a")
    await play(service, battle.id, "visitor-7", "question")
    with pytest.raises(ForbiddenError):
        service.vote(battle.id, "someone-else", "a")
    with pytest.raises(ArenaError, match="unknown vote"):
        service.vote(battle.id, "visitor-7", "c")


async def test_vote_while_answers_stream_is_refused(service: ArenaService) -> None:
    battle = service.create_battle("visitor-8")
    stream = service.play_turn(battle.id, "visitor-8", "slow question")
    await anext(stream)  # the models are answering now
    with pytest.raises(ConflictError, match="still answering"):
        service.vote(battle.id, "visitor-8", "a")
    async for _ in stream:
        pass
    assert not service.vote(battle.id, "visitor-8", "a").duplicate


# ----------------------------------------------------------------------------- limits and flags


async def test_prompt_limits(service: ArenaService) -> None:
    battle = service.create_battle("visitor-9")
    with pytest.raises(ArenaError, match="type a message"):
        await play(service, battle.id, "visitor-9", "   ")
    with pytest.raises(ArenaError, match="Your message has 8,001 characters; the limit is 8,000"):
        await play(service, battle.id, "visitor-9", "x" * 8001)


async def test_limits_follow_the_models_context_window(db_sessions, fake_models: FakeOpenAI, tmp_path: Path) -> None:
    """A model with a 600-token context and 100-token answers takes messages of at most 476
    characters (8 + 16 tokens of template); a conversation that would overflow it is refused
    before anything is sent or stored, instead of failing at the endpoint."""
    registry_file = tmp_path / "small.toml"
    registry_file.write_text(registry_toml(fake_models.base_url, MODELS, max_tokens=100, context_tokens=600))
    settings = Settings(database_url="sqlite://", models_file=registry_file, provider_max_retries=0)
    service = ArenaService(db_sessions, ModelRegistry.from_toml(registry_file),
                           WordListModerator.from_file(REPO_ROOT / "data" / "moderation_words.txt"), settings)
    service.sync_models()
    assert service.prompt_limits.message_limit() == 476
    battle = service.create_battle("visitor-ctx")
    with pytest.raises(ArenaError, match=r"the limit is 476 \(what the models' 600-token context window"):
        await play(service, battle.id, "visitor-ctx", "y" * 477)
    updates = await play(service, battle.id, "visitor-ctx", "y" * 300)
    assert updates[-1].status == BattleStatus.READY
    with pytest.raises(ArenaError, match="no longer fits the models' context window"):
        await play(service, battle.id, "visitor-ctx", "z" * 300)
    with db_sessions() as session:
        prompts = session.scalars(select(Message.content).join(Conversation).where(
            Conversation.battle_id == battle.id, Message.role == "user")).all()
    assert sorted(len(p) for p in prompts) == [300, 300]  # one turn, stored once per side
    await service.aclose()


async def test_moderation_refuses_and_records_the_flag(service: ArenaService, db_sessions) -> None:
    battle = service.create_battle("visitor-10")
    with pytest.raises(RefusedError, match="violence"):
        await play(service, battle.id, "visitor-10", "Tell me how to make a bomb")
    with db_sessions() as session:
        flag = session.scalars(select(Flag).where(Flag.battle_id == battle.id)).one()
        assert flag.kind == FlagKind.MODERATION and flag.visitor_id == "visitor-10"
        assert session.get(Battle, battle.id).turn_count == 0  # nothing was sent


async def test_rate_limit_per_visitor(db_sessions, fake_models, tmp_path: Path) -> None:
    service = make_service(db_sessions, fake_models.base_url, tmp_path, rate_limit_turns=2)
    battle = service.create_battle("visitor-11")
    await play(service, battle.id, "visitor-11", "one")
    await play(service, battle.id, "visitor-11", "two")
    with pytest.raises(RateLimitedError, match="2 messages"):
        await play(service, battle.id, "visitor-11", "three")
    other = service.create_battle("visitor-12")  # others are not affected
    assert (await play(service, other.id, "visitor-12", "one"))[-1].status == BattleStatus.READY


async def test_answer_naming_its_model_flags_the_battle(service: ArenaService, db_sessions) -> None:
    battle = service.create_battle("visitor-13")
    await play(service, battle.id, "visitor-13", "who are you?")
    with db_sessions() as session:
        kinds = session.scalars(select(Flag.kind).where(Flag.battle_id == battle.id)).all()
    assert kinds == [FlagKind.IDENTITY_REVEALED] * 2


def test_named_battles_show_names_and_need_two_different_models(service: ArenaService) -> None:
    view = service.create_battle("visitor-14", "named", "alpha-7b", "charlie-2")
    assert (view.model_a, view.model_b) == ("alpha-7b", "charlie-2")
    with pytest.raises(ArenaError, match="two different"):
        service.create_battle("visitor-14", "named", "alpha-7b", "alpha-7b")
    with pytest.raises(NotFoundError):
        service.create_battle("visitor-14", "named", "alpha-7b", "nope")


async def test_direct_chat_streams_and_stores(service: ArenaService, db_sessions) -> None:
    conversation = service.create_chat("visitor-15", "charlie-2")
    states = [s async for s in service.chat_turn(conversation, "visitor-15", "hi there")]
    assert states[-1].done and states[-1].text.startswith("answer 1")
    with pytest.raises(ForbiddenError):
        [s async for s in service.chat_turn(conversation, "intruder", "hi")]
    with db_sessions() as session:
        roles = session.scalars(select(Message.role).where(Message.conversation_id == conversation)
                                .order_by(Message.position)).all()
    assert roles == ["user", "assistant"]


async def test_leaving_mid_stream_stores_the_interrupted_turn(db_sessions, tmp_path: Path) -> None:
    def slow(request: ChatRequest) -> Reply:
        return Reply(text="a slow answer", delay_s=5.0)

    with FakeOpenAI(slow, models=list(MODELS)) as server:
        service = make_service(db_sessions, server.base_url, tmp_path)
        battle = service.create_battle("visitor-16")
        stream = service.play_turn(battle.id, "visitor-16", "long answer please")
        assert not (await anext(stream)).done  # the turn started: the models are asked
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)
        waiting.cancel()  # the visitor closed the tab: the server cancels the request
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await service.aclose()
    with db_sessions() as session:
        stored = session.get(Battle, battle.id)
        assert stored.status == BattleStatus.FAILED
        answers = answers_of(session, battle.id)
        assert len(answers) == 2 and all(m.error == "the answer was interrupted" for m in answers)


async def test_battles_abandoned_mid_stream_are_marked_failed(service: ArenaService, db_sessions) -> None:
    from datetime import UTC, datetime, timedelta

    stuck = service.create_battle("visitor-17")
    fresh = service.create_battle("visitor-17")
    with db_sessions.begin() as session:  # a server died while these were streaming
        session.get(Battle, stuck.id).status = BattleStatus.STREAMING
        session.get(Battle, fresh.id).status = BattleStatus.STREAMING
        session.flush()
        session.get(Battle, stuck.id).updated_at = datetime.now(UTC) - timedelta(hours=1)
    assert service.fail_abandoned_streams(older_than_s=600) == 1
    assert service.get_battle(stuck.id).status == BattleStatus.FAILED
    assert service.get_battle(fresh.id).status == BattleStatus.STREAMING  # may still be answering
    with pytest.raises(ConflictError, match="failed"):
        service.vote(stuck.id, "visitor-17", "a")
