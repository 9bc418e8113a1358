"""What is cacheable, and which fields change the cache key."""

from __future__ import annotations

from serving.gateway.keys import cache_key, cacheable_reason

BODY = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


def test_only_deterministic_single_answers_are_cacheable_by_default() -> None:
    assert cacheable_reason(BODY) is None
    assert cacheable_reason(BODY | {"temperature": 0.7}) == "temperature is not 0"
    assert cacheable_reason({"messages": []}) == "temperature is not 0"  # OpenAI's default is 1
    assert cacheable_reason(BODY | {"temperature": 0.7}, allow_sampled=True) is None
    assert cacheable_reason(BODY | {"n": 2}) == "n > 1"
    assert cacheable_reason(BODY | {"tools": [{"type": "function"}]}) == "uses tools"
    assert cacheable_reason(BODY | {"logprobs": True}) == "uses logprobs"


def test_the_key_covers_model_conversation_and_sampling_but_not_transport() -> None:
    key = cache_key("auto", BODY)
    assert cache_key("auto", BODY | {"stream": True, "user": "someone"}) == key
    assert cache_key("auto", BODY | {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}) == key
    assert cache_key("large", BODY) != key
    assert cache_key("auto", BODY | {"max_tokens": 5}) != key
    assert cache_key("auto", BODY | {"messages": [{"role": "system", "content": "hi"}]}) != key
