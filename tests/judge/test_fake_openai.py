"""The reusable local OpenAI-compatible test server, seen through the arena's own client."""

from __future__ import annotations

import openai
import pytest

from arena.providers import ChatClient, ProviderError
from tests.fake_openai import ChatRequest, FakeOpenAI, Reply


def echo(request: ChatRequest) -> Reply | str:
    if request.last_user_message == "fail":
        return Reply(status=503, error_message="overloaded")
    if request.last_user_message == "slow":
        return Reply(text="late", delay_s=1.0)
    return f"echo: {request.last_user_message}"


async def test_streaming_non_streaming_models_and_errors() -> None:
    with FakeOpenAI(echo, models=["m1", "m2"]) as server:
        client = ChatClient(server.base_url, "m1", max_retries=0, timeout_s=0.3)
        result = await client.chat([{"role": "user", "content": "hi there"}], temperature=0.2)
        assert result.text == "echo: hi there" and result.completion_tokens == 3 and result.prompt_tokens == 2
        chunks = [chunk async for chunk in client.stream_chat([{"role": "user", "content": "a b c"}])]
        assert "".join(c.delta for c in chunks) == "echo: a b c"
        assert chunks[-1].result is not None and chunks[-1].result.completion_tokens == 4
        with pytest.raises(ProviderError) as failure:
            await client.chat([{"role": "user", "content": "fail"}])
        assert failure.value.status_code == 503 and failure.value.retryable
        with pytest.raises(ProviderError, match="timed out"):
            await client.chat([{"role": "user", "content": "slow"}])
        await client.close()
        models = await openai.AsyncOpenAI(base_url=server.base_url, api_key="x").models.list()
        assert [m.id for m in models.data] == ["m1", "m2"]
        assert [r.temperature for r in server.calls("m1")][:2] == [0.2, 0.7]
        assert server.calls("m1")[1].stream
