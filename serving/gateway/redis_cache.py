"""The shared cache backend: Redis, so several gateway processes share one cache and one popularity estimate.

The same rules as :class:`serving.gateway.cache.MemoryCache`, run inside Redis by two Lua scripts, so a
lookup (count, rescore) and a store (insert, evict to the limits) are each one atomic step even with
many gateways. Layout under the ``namespace`` prefix ``P``:

* ``P:e:<key>`` - hash: ``model``, ``payload`` (the response body), ``cost``, ``size``, ``clock``
* ``P:scores``  - sorted set: key -> policy score (the lowest is evicted first)
* ``P:freq``    - hash: key -> windowed lookup count (halved every ``frequency_window`` lookups)
* ``P:meta``    - hash: ``total``, ``clock``, ``inflation`` (GDSF's L), ``bytes``, hit/miss/eviction counters

The scripts touch keys derived from the prefix, so they need one Redis (or one cluster slot), not a
spread-out cluster. Equal scores are broken by key order here and by age in memory.
"""

from __future__ import annotations

from typing import Any

import redis

from serving.gateway.cache import CachedAnswer, CacheLimits, CacheStats

_COMMON = """
local prefix = KEYS[1]
local meta = prefix .. ':meta'
local scores = prefix .. ':scores'
local freq = prefix .. ':freq'

local function score_of(policy, key, clock)
  local e = prefix .. ':e:' .. key
  if policy == 'lru' then return clock end
  local f = tonumber(redis.call('HGET', freq, key) or '0')
  local cost = tonumber(redis.call('HGET', e, 'cost'))
  if policy == 'lfu' then return f end
  if policy == 'lec' then return f * cost end
  local size = math.max(tonumber(redis.call('HGET', e, 'size')), 1)
  local inflation = tonumber(redis.call('HGET', meta, 'inflation') or '0')
  return inflation + f * cost / size
end

local function rescore(policy, key)
  local clock = redis.call('HINCRBY', meta, 'clock', 1)
  redis.call('HSET', prefix .. ':e:' .. key, 'clock', clock)
  redis.call('ZADD', scores, string.format('%.17g', score_of(policy, key, clock)), key)
end

local function count_lookup(policy, key, window)
  redis.call('HINCRBY', freq, key, 1)
  local total = redis.call('HINCRBY', meta, 'total', 1)
  if total < window then return end
  local all = redis.call('HGETALL', freq)
  redis.call('DEL', freq)
  for i = 1, #all, 2 do
    local halved = math.floor(tonumber(all[i + 1]) / 2)
    if halved > 0 then redis.call('HSET', freq, all[i], halved) end
  end
  redis.call('HSET', meta, 'total', math.floor(total / 2))
  if policy == 'lru' then return end
  local members = redis.call('ZRANGE', scores, 0, -1)
  for _, member in ipairs(members) do
    local clock = tonumber(redis.call('HGET', prefix .. ':e:' .. member, 'clock'))
    redis.call('ZADD', scores, string.format('%.17g', score_of(policy, member, clock)), member)
  end
end
"""

_GET = _COMMON + """
local key, policy, window = ARGV[1], ARGV[2], tonumber(ARGV[3])
count_lookup(policy, key, window)
local e = prefix .. ':e:' .. key
if redis.call('EXISTS', e) == 0 then
  redis.call('HINCRBY', meta, 'misses', 1)
  return false
end
redis.call('HINCRBY', meta, 'hits', 1)
rescore(policy, key)
return redis.call('HMGET', e, 'model', 'payload', 'cost')
"""

_PUT = _COMMON + """
local key, model, payload, cost = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local policy, max_entries, max_bytes = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local e = prefix .. ':e:' .. key
local old = redis.call('HGET', e, 'size')
if old then redis.call('HINCRBY', meta, 'bytes', -tonumber(old)) end
redis.call('HSET', e, 'model', model, 'payload', payload, 'cost', cost, 'size', #payload)
local bytes = redis.call('HINCRBY', meta, 'bytes', #payload)
rescore(policy, key)
while redis.call('ZCARD', scores) > max_entries or bytes > max_bytes do
  local lowest = redis.call('ZRANGE', scores, 0, 0, 'WITHSCORES')
  if #lowest == 0 then break end
  local victim = prefix .. ':e:' .. lowest[1]
  local size = tonumber(redis.call('HGET', victim, 'size') or '0')
  redis.call('ZREM', scores, lowest[1])
  redis.call('DEL', victim)
  bytes = redis.call('HINCRBY', meta, 'bytes', -size)
  redis.call('HINCRBY', meta, 'evictions', 1)
  if policy == 'gdsf' then redis.call('HSET', meta, 'inflation', lowest[2]) end
end
if redis.call('EXISTS', e) == 1 then return 1 end
redis.call('HINCRBY', meta, 'rejected', 1)
return 0
"""


class RedisCache:
    """The response cache in Redis (``redis://127.0.0.1:6379/0`` by default), under one key prefix."""

    def __init__(self, limits: CacheLimits | None = None, *, url: str = "redis://127.0.0.1:6379/0",
                 namespace: str = "arena-gateway", client: redis.Redis | None = None):
        self.limits = limits or CacheLimits()
        self.namespace = namespace
        self._redis = client or redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._get = self._redis.register_script(_GET)
        self._put = self._redis.register_script(_PUT)

    def ping(self) -> None:
        """Fail early with a clear message when Redis can't be reached."""
        try:
            self._redis.ping()
        except redis.RedisError as error:
            raise ConnectionError(f"cannot reach the Redis cache backend: {error}") from error

    def get(self, key: str) -> CachedAnswer | None:
        found = self._get(keys=[self.namespace],
                          args=[key, self.limits.policy.value, self.limits.frequency_window])
        return _answer(key, found) if found else None

    def peek(self, key: str) -> CachedAnswer | None:
        found = self._redis.hmget(self._entry_key(key), "model", "payload", "cost")
        return _answer(key, found) if found[0] is not None else None

    def put(self, answer: CachedAnswer) -> bool:
        limits = self.limits
        if answer.size > limits.max_bytes:
            self._redis.hincrby(f"{self.namespace}:meta", "rejected", 1)
            return False
        admitted = self._put(
            keys=[self.namespace],
            args=[answer.key, answer.model, answer.payload, repr(float(answer.cost)), limits.policy.value,
                  limits.max_entries, limits.max_bytes],
        )
        return bool(admitted)

    def stats(self) -> CacheStats:
        meta = {(k.decode() if isinstance(k, bytes) else str(k)): int(float(v)) for k, v in self._redis.hgetall(f"{self.namespace}:meta").items()}
        return CacheStats(
            entries=int(self._redis.zcard(f"{self.namespace}:scores")),
            bytes=meta.get("bytes", 0), hits=meta.get("hits", 0), misses=meta.get("misses", 0),
            evictions=meta.get("evictions", 0), rejected=meta.get("rejected", 0),
        )

    def frequency(self, key: str) -> int:
        value = self._redis.hget(f"{self.namespace}:freq", key)
        return int(value) if value is not None else 0

    def __contains__(self, key: str) -> bool:
        return bool(self._redis.exists(self._entry_key(key)))

    def __len__(self) -> int:
        return int(self._redis.zcard(f"{self.namespace}:scores"))

    def clear(self) -> None:
        """Delete every key under this cache's prefix (and nothing else)."""
        batch: list[Any] = []
        for name in self._redis.scan_iter(match=f"{self.namespace}:*", count=1000):
            batch.append(name)
            if len(batch) >= 1000:
                self._redis.delete(*batch)
                batch.clear()
        if batch:
            self._redis.delete(*batch)

    def close(self) -> None:
        self._redis.close()

    def _entry_key(self, key: str) -> str:
        return f"{self.namespace}:e:{key}"


def _answer(key: str, fields: list[Any]) -> CachedAnswer:
    model, payload, cost = fields
    name = model.decode() if isinstance(model, bytes) else str(model)
    return CachedAnswer(key=key, model=name, payload=bytes(payload), cost=float(cost))
