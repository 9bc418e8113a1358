"""The radix prefix cache: matching, splitting, locks, LRU eviction, extra keys, and the
scheduler under memory pressure with pool accounting checked after every step."""

from __future__ import annotations

import random

import pytest
import torch

from serving.memory import KVPool, ReqToTokenPool
from serving.radix_cache import RadixCache
from serving.sampling import SamplingParams
from serving.scheduler import Scheduler
from serving.sequence import GenerationRequest, Sequence, SequenceStatus


def make_cache(num_slots: int = 64) -> tuple[RadixCache, KVPool]:
    pool = KVPool(1, num_slots, 1, 2, torch.float32, "cpu")
    return RadixCache(pool), pool


def cache_tokens(cache: RadixCache, pool: KVPool, tokens: list[int], key=None) -> tuple[int, ...]:
    """Insert ``tokens`` with fresh slots, unlocked; return the slots the cache holds for them."""
    slots = pool.alloc(len(tokens)).tolist()
    match = cache.insert(tokens, slots, key)
    cache.release(match)
    return match.slots


def test_match_returns_the_longest_cached_prefix_and_splits_the_edge():
    cache, pool = make_cache()
    slots = cache_tokens(cache, pool, [1, 2, 3, 4, 5])
    match = cache.match_prefix([1, 2, 3, 9])
    assert match.slots == slots[:3]
    assert cache.prefix_length([1, 2, 3, 4, 5, 6]) == 5
    assert cache.evictable_size() == 2 and cache.total_size() == 5  # [4, 5] split off, unlocked
    cache.release(match)
    assert cache.evictable_size() == 5
    assert cache.match_prefix([7, 8]).length == 0


def test_insert_shares_slots_and_frees_duplicates():
    cache, pool = make_cache()
    first = cache_tokens(cache, pool, [1, 2, 3, 4])
    free_before = pool.num_free
    mine = pool.alloc(6).tolist()  # computed the same 4 tokens again, plus 2 more
    match = cache.insert([1, 2, 3, 4, 5, 6], mine, None)
    assert match.slots[:4] == first and match.slots[4:] == tuple(mine[4:])
    assert pool.num_free == free_before - 6 + 4  # the 4 duplicates went back to the pool
    cache.release(match)
    assert cache.total_size() == 6


def test_locked_nodes_are_never_evicted_and_lru_goes_first():
    cache, pool = make_cache()
    old = cache_tokens(cache, pool, [1, 2, 3])
    cache_tokens(cache, pool, [4, 5, 6])
    held = cache.match_prefix([4, 5, 6])
    cache_tokens(cache, pool, [7, 8])
    cache.release(cache.match_prefix([7, 8]))  # touched: more recent than [1, 2, 3]
    free = pool.num_free
    assert cache.evict(1) == 3  # the least recently used leaf, whole
    assert pool.num_free == free + 3 and cache.prefix_length([1, 2, 3]) == 0
    assert cache.evict(100) == 2  # [7, 8]; [4, 5, 6] is locked
    assert cache.prefix_length([4, 5, 6]) == 3 and cache.evictable_size() == 0
    cache.release(held)
    assert cache.evict(100) == 3 and cache.total_size() == 0
    assert pool.num_free == pool.capacity
    assert len(old) == 3


def test_eviction_climbs_to_parents_that_become_leaves():
    cache, pool = make_cache()
    cache_tokens(cache, pool, [1, 2, 3, 4])
    cache_tokens(cache, pool, [1, 2, 5, 6])  # splits [1, 2] off as a shared parent
    assert cache.evict(6) == 6 and cache.total_size() == 0


def test_extra_keys_do_not_share():
    cache, pool = make_cache()
    cache_tokens(cache, pool, [1, 2, 3], key="adapter-a")
    assert cache.prefix_length([1, 2, 3], "adapter-b") == 0
    assert cache.prefix_length([1, 2, 3]) == 0
    assert cache.prefix_length([1, 2, 3], "adapter-a") == 3


def test_releasing_twice_is_an_error():
    cache, pool = make_cache()
    cache_tokens(cache, pool, [1, 2])
    match = cache.match_prefix([1, 2])
    cache.release(match)
    with pytest.raises(RuntimeError, match="not locked"):
        cache.release(match)


# ----- the scheduler over a tiny pool ------------------------------------------------------------


def assert_pool_accounting(scheduler: Scheduler, cache: RadixCache) -> None:
    """Every slot has one owner: free, a running sequence's own, or the cache; running
    sequences' shared slots are in the cache and locked."""
    pool = scheduler.kv_pool
    free = set(pool._stack[: pool.num_free].tolist())
    assert len(free) == pool.num_free
    cached = cache.all_slots()
    assert len(set(cached)) == len(cached) == cache.total_size()
    own: list[int] = []
    for seq in scheduler.running:
        assert seq.num_kv == seq.num_computed
        shared = seq.kv_slots[: seq.prefix.length]
        assert shared == list(seq.prefix.slots) and set(shared) <= set(cached)
        own += seq.kv_slots[seq.prefix.length :]
    assert not (set(own) & set(cached)) and not (set(own) & free) and not (set(cached) & free)
    assert len(own) == len(set(own))
    assert len(free) + len(own) + len(cached) == pool.capacity
    assert cache.total_size() == cache.evictable_size() + cache.locked_slots()
    for seq in scheduler.running:  # locked: an eviction of everything evictable keeps them
        assert set(seq.prefix.slots) <= set(cached)


def fake_step(scheduler: Scheduler, rng: random.Random) -> None:
    """Schedule and 'run' a step: sequences that reach their end sample a token; some finish."""
    batch = scheduler.schedule()
    if batch is None:
        return
    sampling = [seq for i, seq in enumerate(batch.sequences) if batch.samples(i)]
    scheduler.advance(batch)
    for seq in sampling:
        seq.token_ids.append(rng.randrange(1, 5))
        if len(seq.token_ids) >= seq.max_total_tokens or rng.random() < 0.05:
            scheduler.finish(seq, "stop")


def test_eviction_under_memory_pressure_keeps_every_slot_accounted_for():
    rng = random.Random(0)
    pool = KVPool(1, 49, 1, 2, torch.float32, "cpu")  # 48 usable slots: ~2 requests at a time
    cache = RadixCache(pool)
    scheduler = Scheduler(pool, ReqToTokenPool(6, 64, "cpu"), 6, 24, cache)
    shared = [rng.randrange(5, 50) for _ in range(12)]
    added = 0
    for step in range(2000):
        if step % 2 == 0 and added < 60:
            prompt = shared[: rng.randrange(0, 12)] + [
                rng.randrange(5, 50) for _ in range(rng.randrange(1, 10))
            ]
            params = SamplingParams(max_tokens=20)
            seq = Sequence(
                GenerationRequest(str(added), prompt, params), len(prompt) + rng.randrange(5, 25), None
            )
            scheduler.add(seq)
            added += 1
        fake_step(scheduler, rng)
        assert_pool_accounting(scheduler, cache)
        if step % 50 == 49 and scheduler.running:  # abort one mid-flight
            scheduler.finish(rng.choice(scheduler.running), "abort")
            assert_pool_accounting(scheduler, cache)
        if added == 60 and not scheduler.has_work:
            break
    assert not scheduler.has_work
    assert scheduler.num_preemptions > 0 and scheduler.stats.cached_tokens > 0
    assert cache.locked_slots() == 0
    cache.evict(pool.capacity)
    assert pool.num_free == pool.capacity


def test_a_shared_uncached_prompt_is_prefilled_once():
    pool = KVPool(1, 257, 1, 2, torch.float32, "cpu")
    cache = RadixCache(pool)
    scheduler = Scheduler(pool, ReqToTokenPool(8, 128, "cpu"), 8, 256, cache)
    prompt = list(range(10, 70))
    seqs = []
    for i in range(4):
        seqs.append(Sequence(GenerationRequest(str(i), prompt + [100 + i], SamplingParams()), 80, None))
        scheduler.add(seqs[-1])
    first = scheduler.schedule()
    assert first is not None and [s.request_id for s in first.sequences] == ["0"]  # the others wait
    scheduler.advance(first)
    seqs[0].token_ids.append(7)
    second = scheduler.schedule()
    assert second is not None and second.num_new_tokens == [1, 1, 1, 1]  # the others share 60 tokens
    assert all(s.cached_tokens == 60 for s in seqs[1:])
    assert all(s.status is SequenceStatus.RUNNING for s in seqs)
