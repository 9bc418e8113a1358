"""Gateway fixtures: both cache backends (the in-memory one and the real Redis at 127.0.0.1:6379)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from serving.gateway.cache import CacheLimits, MemoryCache, ResponseCache
from tests.environment import unavailable

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_reachable() -> str | None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return None
    except redis.RedisError as error:
        return f"Redis at {REDIS_URL} unreachable: {error}"


@pytest.fixture(params=["memory", "redis"])
def make_cache(request: pytest.FixtureRequest) -> Iterator[Callable[[CacheLimits], ResponseCache]]:
    """A factory of empty caches of one backend; Redis ones live under a unique prefix, deleted afterwards."""
    made = []

    def factory(limits: CacheLimits) -> ResponseCache:
        if request.param == "memory":
            return MemoryCache(limits)
        reason = redis_reachable()
        if reason:
            unavailable(reason)
        from serving.gateway.redis_cache import RedisCache

        cache = RedisCache(limits, url=REDIS_URL, namespace=f"test-gateway-{uuid.uuid4().hex[:10]}")
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        cache.clear()
        cache.close()
