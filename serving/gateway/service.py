"""The gateway's request path, free of any web framework: cache, then router, then the real endpoint.

``Gateway.chat`` answers a whole chat completion, ``Gateway.chat_stream`` the same as OpenAI stream
chunks. A cached answer is replayed as it was stored (a stream of it is one content chunk). A miss
goes to the requested endpoint, or, for a routed virtual model, to the model its router picks; a
cacheable, completed answer is then stored with its cost in FLOPs, so cost-aware policies keep the
answers that were expensive to make.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serving.gateway import keys
from serving.gateway.cache import CachedAnswer, MemoryCache, ResponseCache
from serving.gateway.config import Endpoint, GatewayConfig
from serving.gateway.embedding import TextEmbedder
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.router import Router
from serving.gateway.semantic import SimilarityIndex
from serving.gateway.upstream import GatewayError, Upstream

logger = logging.getLogger(__name__)


@dataclass
class Answer:
    """A whole chat completion and how the gateway got it."""

    body: dict[str, Any]
    source: str  # "cache", "similar" or "upstream"
    model: str  # the real endpoint that produced it


@dataclass
class _Plan:
    """What one request will do: its key (None: uncacheable) and, once routed, the endpoint."""

    requested: str
    key: str | None
    group: str
    conversation: str
    query: str
    vectors: dict[str, Any] = field(default_factory=dict)


class Gateway:
    def __init__(self, config: GatewayConfig, cache: ResponseCache | None = None, *,
                 embedder: TextEmbedder | None = None, upstream: Upstream | None = None,
                 metrics: GatewayMetrics | None = None):
        self.config = config
        self.cache = cache if cache is not None else MemoryCache(config.cache.limits)
        self.upstream = upstream if upstream is not None else Upstream()
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.routers = {name: Router.load(v.router) for name, v in config.virtual_models.items() if v.router}
        for name, router in self.routers.items():
            for model in (router.small, router.large):
                if model not in config.endpoints:
                    raise GatewayError(500, f"virtual model {name!r}: router model {model!r} is not an endpoint")
        needs_embedder = bool(self.routers) or config.cache.similarity
        self.embedder = embedder if embedder is not None else (TextEmbedder() if needs_embedder else None)
        self.similar = SimilarityIndex(config.cache.similarity_threshold) if config.cache.similarity else None

    async def close(self) -> None:
        await self.upstream.close()

    def model_names(self) -> list[str]:
        return list(self.config.virtual_models) + list(self.config.endpoints)

    # -- whole answers -----------------------------------------------------------------------
    async def chat(self, body: dict[str, Any]) -> Answer:
        plan = self._plan(body)
        cached = await self._lookup(plan)
        if cached is not None:
            return cached
        endpoint = await self._route(plan)
        response = await self.upstream.complete(endpoint, body)
        response["model"] = endpoint.name
        await self._store(plan, endpoint, response)
        return Answer(response, "upstream", endpoint.name)

    # -- streams -----------------------------------------------------------------------------
    async def chat_stream(self, body: dict[str, Any]) -> tuple[str, str, AsyncIterator[dict[str, Any]]]:
        """(source, model, chunks); the lookup and routing happen before the first chunk."""
        plan = self._plan(body)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        cached = await self._lookup(plan)
        if cached is not None:
            return cached.source, cached.model, _replay(cached.body, include_usage)
        endpoint = await self._route(plan)
        relay = self._relay(plan, endpoint, body, include_usage)
        first = await anext(relay, None)  # an endpoint that fails at once fails before any header is sent
        return "upstream", endpoint.name, _prepend(first, relay)

    async def _relay(self, plan: _Plan, endpoint: Endpoint, body: dict[str, Any],
                     include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        """Pass the endpoint's chunks on; at the end, store the whole answer."""
        parts: list[str] = []
        finish_reason = None
        usage = None
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        async for chunk in self.upstream.stream(endpoint, body):
            chunk["model"] = endpoint.name
            completion_id = chunk.get("id", completion_id)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                parts.append((choice.get("delta") or {}).get("content") or "")
                finish_reason = choice.get("finish_reason") or finish_reason
            if chunk.get("choices") or include_usage:
                yield chunk
        whole = _completion(completion_id, endpoint.name, "".join(parts), finish_reason, usage)
        await self._store(plan, endpoint, whole)

    # -- the steps ---------------------------------------------------------------------------
    def _plan(self, body: dict[str, Any]) -> _Plan:
        model = body.get("model")
        if not isinstance(model, str) or model not in self.model_names():
            raise GatewayError(404, f"The model `{model}` does not exist. Available models: "
                               f"{', '.join(self.model_names())}", code="model_not_found", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise GatewayError(400, "messages must be a non-empty list of message objects", param="messages")
        reason = keys.cacheable_reason(body, allow_sampled=self.config.cache.cache_sampled)
        key = keys.cache_key(model, body) if reason is None else None
        params = {name: body[name] for name in keys.KEY_FIELDS if body.get(name) is not None}
        group = json.dumps({"model": model, "params": params}, sort_keys=True)
        return _Plan(model, key, group, keys.conversation_text(messages), keys.last_user_text(messages))

    async def _lookup(self, plan: _Plan) -> Answer | None:
        if plan.key is None:
            self.metrics.lookup("uncacheable")
            return None
        found = await asyncio.to_thread(self.cache.get, plan.key)
        source = "cache"
        if found is None and self.similar is not None:
            found = await self._lookup_similar(plan)
            source = "similar"
        if found is None:
            self.metrics.lookup("miss")
            return None
        self.metrics.lookup("hit" if source == "cache" else "similar")
        self.metrics.requests.labels(plan.requested, source).inc()
        self.metrics.flops.labels("saved_cache").inc(found.cost)
        body = json.loads(found.payload)
        body["id"], body["created"] = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        return Answer(body, source, found.model)

    async def _lookup_similar(self, plan: _Plan) -> CachedAnswer | None:
        assert self.similar is not None
        nearest = self.similar.nearest(plan.group, await self._embed(plan.conversation, plan))
        if nearest is None:
            return None
        found = await asyncio.to_thread(self.cache.peek, nearest[0])
        if found is None:
            self.similar.discard(plan.group, nearest[0])
        return found

    async def _route(self, plan: _Plan) -> Endpoint:
        endpoints = self.config.endpoints
        if plan.requested in endpoints:
            return endpoints[plan.requested]
        virtual = self.config.virtual_models[plan.requested]
        if virtual.target is not None:
            endpoint = endpoints[virtual.target]
        else:
            router = self.routers[plan.requested]
            endpoint = endpoints[router.choose(await self._embed(plan.query, plan))[0]]
        self.metrics.route(plan.requested, endpoint.name)
        self.metrics.requests.labels(plan.requested, "upstream").inc()
        return endpoint

    async def _embed(self, text: str, plan: _Plan) -> Any:
        """The embedding of ``text``, computed once per request (a one-message chat embeds once)."""
        assert self.embedder is not None
        if text not in plan.vectors:
            plan.vectors[text] = (await asyncio.to_thread(self.embedder.encode, [text]))[0]
        return plan.vectors[text]

    async def _store(self, plan: _Plan, endpoint: Endpoint, response: dict[str, Any]) -> None:
        tokens = _tokens(response)
        cost = endpoint.flops(tokens)
        self.metrics.flops.labels("spent").inc(cost)
        router = self.routers.get(plan.requested)
        if router is not None and endpoint.name == router.small:
            large = self.config.endpoints[router.large]
            self.metrics.flops.labels("saved_routing").inc(large.flops(tokens) - cost)
        choices = response.get("choices") or [{}]
        if plan.key is None or choices[0].get("finish_reason") not in ("stop", "length"):
            return
        payload = json.dumps(response, ensure_ascii=False).encode("utf-8")
        await asyncio.to_thread(self.cache.put, CachedAnswer(plan.key, endpoint.name, payload, cost))
        if self.similar is not None:
            self.similar.add(plan.group, plan.key, await self._embed(plan.conversation, plan))
        stats = await asyncio.to_thread(self.cache.stats)
        self.metrics.cache_entries.set(stats.entries)
        self.metrics.cache_bytes.set(stats.bytes)


def _tokens(response: dict[str, Any]) -> int:
    """Prompt + completion tokens from the usage, or about 4 characters a token without it."""
    usage = response.get("usage") or {}
    if usage.get("total_tokens"):
        return int(usage["total_tokens"])
    text = "".join(str((c.get("message") or {}).get("content") or "") for c in response.get("choices") or [])
    return max(1, len(text) // 4)


def _completion(completion_id: str, model: str, text: str, finish_reason: str | None,
                usage: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
    }
    if usage:
        body["usage"] = usage
    return body


async def _prepend(first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    if first is not None:
        yield first
    async for chunk in rest:
        yield chunk


async def _replay(body: dict[str, Any], include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    """A stored whole answer as stream chunks: role, content, finish, and usage if asked."""
    choice = (body.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    envelope = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"]}
    for delta, finish in (({"role": "assistant", "content": ""}, None), ({"content": text}, None),
                          ({}, choice.get("finish_reason"))):
        yield envelope | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if include_usage and body.get("usage"):
        yield envelope | {"choices": [], "usage": body["usage"]}
