"""Arena battles never go through the gateway: the registry refuses a gateway model with a battle weight,
and a named battle refuses one; direct chat with it is allowed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from arena.battles import ArenaError, BattleMode
from arena.providers.registry import ModelRegistry, RegistryError
from tests.test_battles import MODELS, fake_models, make_service  # noqa: F401 - the module fixture

GATEWAY_MODEL = '[[models]]\nname = "auto"\nbase_url = "{url}"\nweight = {weight}\ntags = ["gateway"]\n'


def test_the_registry_refuses_a_gateway_model_that_could_be_sampled_for_battles() -> None:
    with pytest.raises(RegistryError, match=r"models.toml:1: 'auto' is a gateway virtual model.*weight = 0"):
        ModelRegistry.from_toml_text(GATEWAY_MODEL.format(url="http://gw/v1", weight=1), "models.toml")
    registry = ModelRegistry.from_toml_text(GATEWAY_MODEL.format(url="http://gw/v1", weight=0), "models.toml")
    assert registry["auto"].is_gateway


async def test_a_named_battle_refuses_a_gateway_model_but_direct_chat_takes_it(  # type: ignore[no-untyped-def]
    db_sessions, fake_models, tmp_path: Path  # noqa: F811
) -> None:
    service = make_service(db_sessions, fake_models.base_url, tmp_path)
    text = (tmp_path / "models.toml").read_text() + GATEWAY_MODEL.format(url=fake_models.base_url, weight=0)
    (tmp_path / "models.toml").write_text(text)
    service.registry = ModelRegistry.from_toml(tmp_path / "models.toml")
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
