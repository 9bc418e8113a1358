"""Which chat requests may be answered from the cache, and the key they are stored under.

A cached answer is only correct for the same model, the same conversation and the same sampling
parameters, so the key hashes all three in canonical JSON. Sampled requests (temperature > 0)
would return one frozen sample forever, so by default only deterministic ones (temperature 0)
are cacheable; ``n > 1``, tools and logprobs are never cached.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Fields that change the answer; anything else (stream, user, stream_options) does not.
KEY_FIELDS = (
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "stop",
    "seed", "presence_penalty", "frequency_penalty", "repetition_penalty", "response_format",
)
UNCACHEABLE_FIELDS = ("tools", "functions", "logprobs", "top_logprobs", "logit_bias")


def cacheable_reason(body: dict[str, Any], *, allow_sampled: bool = False) -> str | None:
    """``None`` if the request may be cached, else why not (for logs and tests)."""
    if int(body.get("n") or 1) != 1:
        return "n > 1"
    for name in UNCACHEABLE_FIELDS:
        if body.get(name):
            return f"uses {name}"
    temperature = body.get("temperature", 1.0)
    if not allow_sampled and (temperature is None or float(temperature) != 0.0):
        return "temperature is not 0"
    return None


def conversation_text(messages: list[dict[str, Any]]) -> str:
    """The conversation as one string (roles kept; a lone user message as it is): what the similarity
    index embeds, so that answers are only reused for the same history."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return message_text(messages[0])
    return "\n".join(f"{m.get('role', '')}: {message_text(m)}" for m in messages)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The query the router judges: the last user message (what its training prompts are)."""
    users = [message_text(m) for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


def message_text(message: dict[str, Any]) -> str:
    """A message's content as text (text parts of a multi-part content joined)."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def cache_key(model: str, body: dict[str, Any]) -> str:
    """SHA-256 over the model, the messages (role and text) and the answer-changing parameters."""
    messages = [{"role": m.get("role", ""), "content": message_text(m)} for m in body.get("messages", [])]
    params = {name: body[name] for name in KEY_FIELDS if body.get(name) is not None}
    canonical = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
