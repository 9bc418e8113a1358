"""The OpenAI-compatible client against a local endpoint over real HTTP."""

from __future__ import annotations

import asyncio

import pytest

from arena.providers.client import ChatClient, ProviderError
from tests.fake_openai import ChatRequest, FakeOpenAI, Reply
from tests.servers import free_port


def _respond(request: ChatRequest) -> Reply | str:
    prompt = request.last_user_message
    if prompt == "slow":
        return Reply(text="late", delay_s=3.0)
    if prompt == "busy":
        return Reply(status=429, error_message="slow down")
    if prompt == "bad":
        return Reply(status=400, error_message="bad request")
    return f"you said {prompt}"


@pytest.fixture(scope="module")
def endpoint() -> FakeOpenAI:
    with FakeOpenAI(_respond, models=["m"]) as server:
        yield server


async def test_chat_returns_text_usage_and_latency(endpoint: FakeOpenAI) -> None:
    client = ChatClient(endpoint.base_url, "m", max_retries=0)
    result = await client.chat([{"role": "user", "content": "hello"}], max_tokens=10, seed=1)
    await client.close()
    assert result.text == "you said hello" and result.finish_reason == "stop"
    assert result.completion_tokens and result.prompt_tokens and result.latency_s > 0
    assert endpoint.calls()[-1].body["max_tokens"] == 10


async def test_stream_yields_deltas_then_the_result(endpoint: FakeOpenAI) -> None:
    client = ChatClient(endpoint.base_url, "m", max_retries=0)
    chunks = [c async for c in client.stream_chat([{"role": "user", "content": "a b c"}])]
    await client.close()
    assert "".join(c.delta for c in chunks) == "you said a b c"
    assert len(chunks) > 3 and chunks[-1].done and chunks[-1].result.completion_tokens == 5
    assert chunks[-1].result.first_token_s is not None


async def test_errors_become_provider_errors(endpoint: FakeOpenAI) -> None:
    client = ChatClient(endpoint.base_url, "m", max_retries=1, timeout_s=0.5)
    with pytest.raises(ProviderError, match="400") as bad:
        await client.chat([{"role": "user", "content": "bad"}])
    assert not bad.value.retryable
    endpoint.reset()
    with pytest.raises(ProviderError, match="429") as busy:
        await client.chat([{"role": "user", "content": "busy"}])
    assert busy.value.retryable and len(endpoint.calls()) == 2  # retried once, then gave up
    with pytest.raises(ProviderError, match="timed out"):
        await client.chat([{"role": "user", "content": "slow"}])
    await client.close()
    dead = ChatClient(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=0)
    with pytest.raises(ProviderError, match="cannot reach"):
        await dead.chat([{"role": "user", "content": "hi"}])
    await dead.close()


async def test_cancelling_a_stream_closes_it(endpoint: FakeOpenAI) -> None:
    client = ChatClient(endpoint.base_url, "m", max_retries=0)
    task = asyncio.ensure_future(anext(client.stream_chat([{"role": "user", "content": "slow"}])))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.close()
