"""Every replacement policy, the size limits and the online frequency estimate, on both backends."""

from __future__ import annotations

import pytest

from serving.gateway.cache import CachedAnswer, CacheLimits
from serving.gateway.policies import Policy


def answer(key: str, cost: float, size: int = 10, model: str = "small") -> CachedAnswer:
    return CachedAnswer(key, model, b"x" * size, cost)


def ask(cache, key: str, cost: float, size: int = 10) -> bool:  # type: ignore[no-untyped-def]
    """A gateway request: look up, and on a miss store the answer. True on a hit."""
    if cache.get(key) is not None:
        return True
    cache.put(answer(key, cost, size))
    return False


# a: cheap and popular; b: expensive, asked once, large; c: cheap, asked twice before it could be stored.
EXPECTED_KEPT = {
    Policy.LRU: {"b", "c"},  # a was touched least recently
    Policy.LFU: {"a", "c"},  # b was asked least often
    Policy.GDSF: {"a", "c"},  # b saves little per byte: 1 x 50 / 1000
    Policy.LEC: {"a", "b"},  # b saves the most per request (50); c is not admitted
}


@pytest.mark.parametrize("policy", list(Policy))
def test_each_policy_evicts_its_own_choice(make_cache, policy: Policy) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(CacheLimits(policy=policy, max_entries=2, max_bytes=10**6, frequency_window=10_000))
    assert [ask(cache, "a", 1) for _ in range(3)] == [False, True, True]
    assert not ask(cache, "b", 50, size=1000)
    assert cache.get("c") is None
    admitted = cache.put(answer("c", 1)) if cache.get("c") is None else True
    kept = {key for key in "abc" if cache.peek(key) is not None}
    assert kept == EXPECTED_KEPT[policy]
    assert admitted == ("c" in kept)
    stats = cache.stats()
    assert (stats.entries, stats.hits, stats.evictions) == (2, 2, 1)
    assert stats.rejected == (0 if admitted else 1)
    assert stats.bytes == sum(cache.peek(key).size for key in kept)


def test_gdsf_inflation_ages_out_entries_that_stop_being_asked(make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(CacheLimits(policy=Policy.GDSF, max_entries=2, max_bytes=10**6, frequency_window=10_000))
    for _ in range(5):
        ask(cache, "old", 1)  # score 5 x 1 / 10 = 0.5
    for step in range(40):  # a stream of one-off keys, each scored L + 0.1: L climbs with every eviction
        ask(cache, f"new-{step}", 1)
        ask(cache, f"new-{step}", 1)
    assert cache.peek("old") is None


def test_byte_limit_evicts_until_the_answers_fit(make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(CacheLimits(policy=Policy.LRU, max_entries=100, max_bytes=25, frequency_window=10_000))
    for key in ("a", "b", "c"):
        ask(cache, key, 1, size=10)
    assert {k for k in "abc" if cache.peek(k)} == {"b", "c"} and cache.stats().bytes == 20
    assert not cache.put(answer("huge", 1, size=26))  # bigger than the whole cache: never admitted
    assert cache.stats().bytes == 20
    cache.put(answer("b", 1, size=5))  # replacing an answer counts its new size only
    assert cache.stats().bytes == 15


def test_frequency_counts_misses_and_halves_every_window(make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(CacheLimits(policy=Policy.LEC, max_entries=10, max_bytes=10**6, frequency_window=8))
    for _ in range(5):
        assert cache.get("popular") is None  # counted although never stored
    assert cache.frequency("popular") == 5
    cache.get("other")
    cache.get("other")
    cache.get("other")  # the 8th lookup: every count is halved, ones disappear
    assert (cache.frequency("popular"), cache.frequency("other")) == (2, 1)


def test_lec_learns_popularity_online_and_keeps_the_costly_popular_answer(make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(CacheLimits(policy=Policy.LEC, max_entries=3, max_bytes=10**6, frequency_window=10_000))
    hits = 0
    for step in range(200):  # "hot" (cost 10) every 4th request, among one-off cheap ones
        key = "hot" if step % 4 == 0 else f"cold-{step}"
        hits += ask(cache, key, 10 if key == "hot" else 1)
    assert cache.peek("hot") is not None and hits == 49


def test_clear_empties_the_cache(make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(CacheLimits(max_entries=10))
    ask(cache, "a", 1)
    cache.clear()
    assert cache.peek("a") is None and cache.stats().entries == 0


def test_bad_limits_and_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        CacheLimits(max_entries=0)
    with pytest.raises(ValueError, match="unknown cache policy 'fifo'"):
        Policy.parse("fifo")
