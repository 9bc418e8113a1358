"""Per-visitor rate limits whose check and count are one atomic step.

A request takes a slot in the visitor's sliding window *before* any slow work (moderation,
the models), so concurrent requests cannot all pass one check.  The in-process
:class:`MemoryRateLimiter` is the embedded default; :class:`RedisRateLimiter`
(``ARENA_RATE_LIMIT_REDIS_URL``) shares the limit between several server processes, taking the
slot with one Lua script so that Redis runs check and count as one command.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol


class RateLimiter(Protocol):
    """Takes one slot of ``limit`` per ``window_s`` for ``key``; returns None, or seconds until a slot frees."""

    def acquire(self, key: str, limit: int, window_s: float) -> float | None: ...


class MemoryRateLimiter:
    """A sliding window per key in this process (thread-safe): the default with one server process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}

    def acquire(self, key: str, limit: int, window_s: float) -> float | None:
        now = self._clock()
        with self._lock:
            window = self._windows.setdefault(key, deque())
            while window and window[0] <= now - window_s:
                window.popleft()
            if len(window) >= limit:
                return max(window[0] + window_s - now, 0.001)
            window.append(now)
            if len(self._windows) > 100_000:  # forget idle visitors now and then
                self._forget_idle(now, window_s)
            return None

    def _forget_idle(self, now: float, window_s: float) -> None:
        for key in [k for k, w in self._windows.items() if not w or w[-1] <= now - window_s]:
            del self._windows[key]


# Sliding window in a sorted set: drop old entries, count, add if under the limit — atomically.
_SLIDING_WINDOW = """
local key, now, window, limit, member = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return tostring(tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', key, now, member)
redis.call('PEXPIRE', key, math.ceil(window * 1000))
return false
"""


class RedisRateLimiter:
    """The same sliding window kept in Redis, shared by every server process that uses it."""

    def __init__(self, url: str, prefix: str = "arena:rate:"):
        import redis

        self._redis: Any = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._script = self._redis.register_script(_SLIDING_WINDOW)
        self._prefix = prefix

    def acquire(self, key: str, limit: int, window_s: float) -> float | None:
        now = self._redis.time()  # Redis' clock, the same for every process
        seconds = now[0] + now[1] / 1e6
        wait = self._script(keys=[self._prefix + key], args=[seconds, window_s, limit, uuid.uuid4().hex])
        return None if wait is None else max(float(wait), 0.001)

    def close(self) -> None:
        self._redis.close()


def build_rate_limiter(redis_url: str | None) -> RateLimiter:
    """Redis when a URL is configured (several processes share the limit), else in-process."""
    return RedisRateLimiter(redis_url) if redis_url else MemoryRateLimiter()
