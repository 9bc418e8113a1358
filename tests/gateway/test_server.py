"""The gateway over real HTTP, in front of two local OpenAI-compatible endpoints (a small and a large model),
with the in-memory cache and the real Redis; clients are the official ``openai`` package and the arena's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from arena.providers.client import ChatClient
from serving.gateway.cache import MemoryCache
from serving.gateway.config import ConfigError, GatewayConfig
from serving.gateway.redis_cache import RedisCache
from serving.gateway.router import Router
from serving.gateway.server import create_app
from serving.gateway.service import Gateway
from tests.fake_openai import ChatRequest, FakeOpenAI, Reply
from tests.gateway.conftest import REDIS_URL, redis_reachable
from tests.gateway.test_router import embedder, synthetic_queries  # noqa: F401 - the session fixture
from tests.servers import serve_app

HARD_PROMPT = "Prove that the square root of 2 is irrational, and generalise the proof to every prime."
EASY_PROMPT = "Say hello to the baker."


def _answer(request: ChatRequest) -> Reply:
    text = f"{request.model} answers: {request.last_user_message[:20]}"
    return Reply(text=text, prompt_tokens=10, completion_tokens=len(text.split()))


@pytest.fixture(scope="module")
def endpoints() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with FakeOpenAI(_answer, models=["small-model"]) as small, FakeOpenAI(_answer, models=["large-model"]) as large:
        yield small, large


@pytest.fixture(scope="module")
def router_file(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:  # type: ignore[no-untyped-def]  # noqa: F811
    prompts, small_ok = synthetic_queries()
    router = Router.fit(embedder.encode(prompts), small_ok, np.ones(len(prompts)), small="small", large="large",
                        target_quality=0.98, seed=1)
    path = tmp_path_factory.mktemp("router") / "router.json"
    router.save(path)
    return path


def config_for(endpoints: tuple[FakeOpenAI, FakeOpenAI], router_file: Path, **cache: object) -> GatewayConfig:
    small, large = endpoints
    return GatewayConfig.from_dict({
        "endpoints": [{"name": "small", "base_url": small.base_url, "model_id": "small-model", "params_b": 1},
                      {"name": "large", "base_url": large.base_url, "model_id": "large-model", "params_b": 10}],
        "virtual_models": [{"name": "auto", "router": str(router_file)}, {"name": "cached-large", "target": "large"}],
        "cache": {"policy": "lec", **cache},
    })


@pytest.fixture
def gateway_url(endpoints, router_file, embedder) -> Iterator[str]:  # type: ignore[no-untyped-def]  # noqa: F811
    for server in endpoints:
        server.reset()
    gateway = Gateway(config_for(endpoints, router_file), embedder=embedder)
    with serve_app(create_app(gateway)) as url:
        yield url


def chat(url: str, prompt: str, model: str = "auto", **fields: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, **fields}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_routes_each_query_and_answers_repeats_from_the_cache(gateway_url: str, endpoints) -> None:  # type: ignore[no-untyped-def]
    small, large = endpoints
    first = chat(gateway_url, EASY_PROMPT)
    assert first.status_code == 200 and first.headers["x-gateway-cache"] == "miss"
    assert first.headers["x-gateway-model"] == "small" and first.json()["model"] == "small"
    hard = chat(gateway_url, HARD_PROMPT)
    assert hard.headers["x-gateway-model"] == "large"
    again = chat(gateway_url, EASY_PROMPT)
    assert again.headers["x-gateway-cache"] == "hit"
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert len(small.calls()) == 1 and len(large.calls()) == 1  # the repeat never reached an endpoint
    other_params = chat(gateway_url, EASY_PROMPT, max_tokens=7)  # other sampling parameters: another key
    assert other_params.headers["x-gateway-cache"] == "miss"
    sampled = [chat(gateway_url, EASY_PROMPT, temperature=0.7) for _ in range(2)]  # not deterministic: never cached
    assert [r.headers["x-gateway-cache"] for r in sampled] == ["miss", "miss"] and len(small.calls()) == 4


def test_official_client_streams_through_the_gateway_and_the_stream_is_cached(gateway_url: str, endpoints) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="x", max_retries=0)
    texts = []
    for _ in range(2):
        stream = client.chat.completions.create(model="cached-large", temperature=0, stream=True,
                                                messages=[{"role": "user", "content": "Tell me a story."}])
        texts.append("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))
    assert texts[0] == texts[1] == "large-model answers: Tell me a story."
    assert len(endpoints[1].calls()) == 1
    whole = client.chat.completions.create(model="cached-large", temperature=0,
                                           messages=[{"role": "user", "content": "Tell me a story."}])
    assert whole.choices[0].message.content == texts[0] and len(endpoints[1].calls()) == 1


async def test_the_arena_client_reaches_the_gateway_for_direct_chat(gateway_url: str) -> None:
    client = ChatClient(f"{gateway_url}/v1", "auto", max_retries=0)
    try:
        chunks = [c async for c in client.stream_chat([{"role": "user", "content": EASY_PROMPT}], temperature=0)]
    finally:
        await client.close()
    assert chunks[-1].result is not None and chunks[-1].result.text.startswith("small-model answers")


def test_metrics_report_hit_rate_routed_share_and_flops(gateway_url: str) -> None:
    for prompt in (EASY_PROMPT, EASY_PROMPT, HARD_PROMPT, EASY_PROMPT):
        assert chat(gateway_url, prompt).status_code == 200
    text = httpx.get(f"{gateway_url}/metrics").text
    assert "arena_gateway_cache_hit_rate 0.5" in text
    assert 'arena_gateway_routed_share{model="small",virtual_model="auto"} 0.5' in text
    assert 'arena_gateway_routed_share{model="large",virtual_model="auto"} 0.5' in text
    saved_cache = _metric(text, 'arena_gateway_flops_total{kind="saved_cache"}')
    saved_routing = _metric(text, 'arena_gateway_flops_total{kind="saved_routing"}')
    assert saved_cache > 0 and saved_routing > 0


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name))
    return float(line.split()[-1])


def test_bad_requests_get_openai_errors(gateway_url: str, endpoints) -> None:  # type: ignore[no-untyped-def]
    unknown = chat(gateway_url, "hi", model="gpt-9")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    empty = httpx.post(f"{gateway_url}/v1/chat/completions", json={"model": "auto", "messages": []})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
    broken = httpx.post(f"{gateway_url}/v1/chat/completions", content=b"{not json")
    assert broken.status_code == 400
    models = httpx.get(f"{gateway_url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["auto", "cached-large", "small", "large"]


def test_a_failing_endpoint_is_reported_and_nothing_is_cached(endpoints, router_file, embedder) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    config = config_for(endpoints, router_file)
    with FakeOpenAI(lambda _: Reply(status=500, error_message="engine down")) as broken:
        config.endpoints["large"] = config.endpoints["large"].__class__("large", broken.base_url, "large-model", 10)
        gateway = Gateway(config, embedder=embedder)
        with serve_app(create_app(gateway)) as url:
            failed = chat(url, HARD_PROMPT)
            assert failed.status_code == 502 and "engine down" in failed.json()["error"]["message"]
            streamed = chat(url, HARD_PROMPT, stream=True)  # fails before the stream starts: a real status
            assert streamed.status_code == 502 and "engine down" in streamed.json()["error"]["message"]
            assert gateway.cache.stats().entries == 0


def test_two_gateways_share_the_redis_cache(endpoints, router_file, embedder) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    reason = redis_reachable()
    if reason:
        pytest.skip(reason)
    for server in endpoints:
        server.reset()
    config = config_for(endpoints, router_file)
    namespace = f"test-gateway-{uuid.uuid4().hex[:10]}"
    caches = [RedisCache(config.cache.limits, url=REDIS_URL, namespace=namespace) for _ in range(2)]
    try:
        with serve_app(create_app(Gateway(config, caches[0], embedder=embedder))) as first, \
                serve_app(create_app(Gateway(config, caches[1], embedder=embedder))) as second:
            assert chat(first, HARD_PROMPT).headers["x-gateway-cache"] == "miss"
            shared = chat(second, HARD_PROMPT)
            assert shared.headers["x-gateway-cache"] == "hit" and shared.headers["x-gateway-model"] == "large"
        assert len(endpoints[1].calls()) == 1
    finally:
        caches[0].clear()


def test_similarity_lookup_is_opt_in(endpoints, router_file, embedder) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    for server in endpoints:
        server.reset()
    config = config_for(endpoints, router_file, similarity=True, similarity_threshold=0.9)
    with serve_app(create_app(Gateway(config, MemoryCache(config.cache.limits), embedder=embedder))) as url:
        assert chat(url, "What is the capital city of France?").headers["x-gateway-cache"] == "miss"
        near = chat(url, "what is the capital city of france")
        assert near.headers["x-gateway-cache"] == "similar"
        assert chat(url, "How do I bake sourdough bread?").headers["x-gateway-cache"] == "miss"


def test_malformed_config_is_refused_with_its_place() -> None:
    with pytest.raises(ConfigError, match="no \\[\\[endpoints\\]\\]"):
        GatewayConfig.from_dict({})
    with pytest.raises(ConfigError, match="target 'nowhere' is not an endpoint"):
        GatewayConfig.from_dict({"endpoints": [{"name": "a", "base_url": "http://x"}],
                                 "virtual_models": [{"name": "v", "target": "nowhere"}]})
    with pytest.raises(ConfigError, match="unknown cache policy"):
        GatewayConfig.from_dict({"endpoints": [{"name": "a", "base_url": "http://x"}], "cache": {"policy": "fifo"}})
