"""Arena battles never go through the gateway: the registry refuses a gateway model with a battle weight,
and a named battle refuses one; direct chat with it is allowed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from arena.battles import ArenaError, ArenaService
from arena.config import REPO_ROOT, Settings
from arena.db.models import BattleMode
from arena.moderation import WordListModerator
from arena.providers.registry import ModelRegistry, RegistryError
from tests.fake_openai import FakeOpenAI
from tests.servers import registry_toml

MODELS = ("alpha-7b", "bravo-13b")

GATEWAY_MODEL = '[[models]]\nname = "auto"\nbase_url = "{url}"\nweight = {weight}\ntags = ["gateway"]\n'


def test_the_registry_refuses_a_gateway_model_that_could_be_sampled_for_battles() -> None:
    with pytest.raises(RegistryError, match=r"models.toml:1: 'auto' is a gateway virtual model.*weight = 0"):
        ModelRegistry.from_toml_text(GATEWAY_MODEL.format(url="http://gw/v1", weight=1), "models.toml")
    registry = ModelRegistry.from_toml_text(GATEWAY_MODEL.format(url="http://gw/v1", weight=0), "models.toml")
    assert registry["auto"].is_gateway


@pytest.fixture(scope="module")
def fake_models() -> FakeOpenAI:
    with FakeOpenAI(lambda request: "hello", models=list(MODELS)) as server:
        yield server


async def test_a_named_battle_refuses_a_gateway_model_but_direct_chat_takes_it(  # type: ignore[no-untyped-def]
    db_sessions, fake_models: FakeOpenAI, tmp_path: Path
) -> None:
    registry_file = tmp_path / "models.toml"
    registry_file.write_text(registry_toml(fake_models.base_url, MODELS)
                             + GATEWAY_MODEL.format(url=fake_models.base_url, weight=0))
    settings = Settings(database_url="sqlite://", models_file=registry_file, provider_max_retries=0)
    moderator = WordListModerator.from_file(REPO_ROOT / "data" / "moderation_words.txt")
    service = ArenaService(db_sessions, ModelRegistry.from_toml(registry_file), moderator, settings)
    service.sync_models()
    try:
        with pytest.raises(ArenaError, match="'auto' is a gateway virtual model"):
            service.create_battle("visitor-1", BattleMode.NAMED, model_a="auto", model_b=MODELS[0])
        rng = random.Random(0)
        for _ in range(50):  # anonymous battles never sample it (weight 0)
            model_a, model_b, _ = service.sampler.sample(list(service.registry.values()), rng)
            assert "auto" not in (model_a, model_b)
        assert service.create_chat("visitor-1", "auto")
    finally:
        await service.aclose()
