"""Continuous batching with chunked prefill, a prefix cache, and preemption by recompute.

Every step the scheduler builds one batch under a token budget:

1. Running sequences, oldest first: one token each when decoding, or the next chunk of their
   prompt when a long prefill was split. When the KV pool is short, unlocked prefix-cache
   entries are evicted first; then the newest running sequence is preempted: its KV goes to the
   prefix cache (kept there while the pool allows, so its recomputation may be short) and it
   goes back to the front of the queue. The pool can therefore never overflow.
2. Waiting sequences, first come first served, while budget, request rows and free slots last.
   Each starts past its longest cached prefix (``PrefixCache.match_prefix``); a prompt larger
   than the remaining budget is prefilled in chunks over several steps.

The scheduler decides *which* tokens are computed and keeps each sequence's slot ids on the
host (``Sequence.kv_slots``). Slots for all new tokens of a step are popped from the pool at
once; the attention backend records them in the device slot table as part of the step's
forward (inside the CUDA graph for decode batches), so scheduling costs no device work, and
releasing a sequence reads nothing back from the device.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import torch

from serving.memory import KVPool, ReqToTokenPool
from serving.prefix_cache import EMPTY_MATCH, NoPrefixCache, PrefixCache, PrefixMatch
from serving.radix_cache import RadixCache
from serving.sequence import Sequence, SequenceStatus

logger = logging.getLogger(__name__)

# lpm: a waiting sequence passed over this many times by later arrivals goes first.
FAIRNESS_BOUND = 8
# lpm orders at most this many waiting sequences (a tree walk each); beyond, first come first served.
LPM_MAX_QUEUE = 128
# A waiting sequence sharing at least this many uncached tokens with one being prefilled waits.
IN_BATCH_SHARE_MIN_TOKENS = 32
SCHEDULE_POLICIES = ("lpm", "fcfs")


@dataclass
class SchedulerStats:
    """Counters since start (the server's /metrics reads them)."""

    prompt_tokens: int = 0  # prompt tokens of admitted requests
    cached_tokens: int = 0  # of those, taken from the prefix cache


@dataclass
class ScheduledBatch:
    """Sequences of one step with the number of new tokens each feeds to the model."""

    sequences: list[Sequence]
    num_new_tokens: list[int]
    # [sum(num_new_tokens)] int64 host tensor: KV slots of the new tokens, in order (also
    # appended to each sequence's kv_slots).
    out_cache_loc: torch.Tensor
    # Per sequence, the first entry of its kv_slots not yet in its slot-table row: the step
    # records kv_slots[table_starts[i]:] (the new tokens', and a prefix hit's on the first step).
    table_starts: list[int] = field(default_factory=list)
    # Every sequence feeds one token and records only that token's slot: a decode batch.
    is_decode: bool = False
    # A decode step scheduled before the host read the previous step's tokens (overlap): each
    # sequence feeds its still-unread last token, which the model runner takes from the device.
    ahead: bool = False

    def samples(self, index: int) -> bool:
        """Whether sequence ``index`` reaches its last token this step (so a token is sampled)."""
        seq = self.sequences[index]
        if seq.score_from is not None:
            return False
        return self.ahead or seq.num_computed + self.num_new_tokens[index] == len(seq.token_ids)

    def score_positions(self, index: int) -> range:
        """Positions computed this step whose logits score the next token (scoring sequences:
        those from ``score_from - 1`` to the last but one)."""
        seq = self.sequences[index]
        if seq.score_from is None:
            return range(0)
        start = max(seq.num_computed, seq.score_from - 1)
        end = min(seq.num_computed + self.num_new_tokens[index], len(seq.token_ids) - 1)
        return range(start, max(start, end))


class Scheduler:
    """Owns the waiting queue, the running set and the sequences' KV bookkeeping."""

    def __init__(
        self,
        kv_pool: KVPool,
        req_pool: ReqToTokenPool,
        max_running: int,
        max_batch_tokens: int,
        prefix_cache: PrefixCache | None = None,
        policy: str = "lpm",
    ) -> None:
        if policy not in SCHEDULE_POLICIES:
            raise ValueError(f"schedule policy must be one of {SCHEDULE_POLICIES}, got {policy!r}")
        self.kv_pool = kv_pool
        self.req_pool = req_pool
        self.prefix_cache: PrefixCache = prefix_cache if prefix_cache is not None else NoPrefixCache(kv_pool)
        self._caching = not isinstance(self.prefix_cache, NoPrefixCache)
        self.policy = policy
        self.stats = SchedulerStats()
        self.max_running = max_running
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._arrivals = 0
        self._reserved = 0  # slots promised to this step's sequences before the single allocation

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence."""
        seq.status = SequenceStatus.WAITING
        seq.arrival = self._arrivals
        self._arrivals += 1
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch | None:
        """Pick this step's sequences and token counts, allocating their KV slots."""
        if self._all_decode_fits():
            return self._allocate([(seq, 1) for seq in self.running])
        budget = self.max_batch_tokens
        self._reserved = 0
        preemptions_before = self.num_preemptions
        chosen: list[tuple[Sequence, int]] = []
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            count = min(seq.num_to_compute, budget)
            if not self._make_room(count, protect=seq, chosen=chosen):
                self._preempt(seq)
                continue
            chosen.append((seq, count))
            budget -= count
            self._reserved += count
        if self.num_preemptions == preemptions_before:  # memory is tight: admit nobody new
            self._admit_waiting(budget, chosen)
        if not chosen:
            return None
        return self._allocate(chosen)

    def _all_decode_fits(self) -> bool:
        """The steady state, decided without the general loop: nobody waits, every running
        sequence decodes one token, and budget and free slots cover them all."""
        return (
            not self.waiting
            and bool(self.running)
            and self._one_more_token_each_fits()
            and all(seq.num_to_compute == 1 for seq in self.running)
        )

    def _one_more_token_each_fits(self) -> bool:
        """Budget and free (or evictable) slots cover one new token for every running sequence."""
        return len(self.running) <= min(self.max_batch_tokens, self._free_slots())

    def schedule_ahead(self, launched: ScheduledBatch) -> ScheduledBatch | None:
        """The decode step after ``launched``, before its tokens are known, or None.

        Only in the steady state: ``launched`` decoded every running sequence, nobody waits, and
        budget and free slots cover one more token each. The caller makes sure no sequence can
        reach its length limit with the unread token (a stop token may still end one: its
        extra step is then wasted, its slot freed with the rest of the sequence's).
        """
        running = self.running
        if (
            self.waiting
            or len(running) != len(launched.sequences)
            or any(a is not b for a, b in zip(running, launched.sequences, strict=True))
            or not self._one_more_token_each_fits()
        ):
            return None
        batch = self._allocate([(seq, 1) for seq in running])
        batch.ahead = True
        return batch

    def _admit_waiting(self, budget: int, chosen: list[tuple[Sequence, int]]) -> None:
        """Start waiting sequences while budget, rows and free slots allow (no preemption).

        Each starts past its longest cached prefix (at least its last token is computed, for
        its logits). A sequence sharing a long uncached prefix with one being prefilled is
        deferred to a later step, when that prefix will be in the cache (SGLang's in-batch
        prefix caching): a batch of requests with one new shared prompt computes it once.
        """
        if not self.waiting:
            return
        sharing = self._prefills_in_flight() if self._caching else None
        admitted_arrival = -1
        for seq in self._admission_order():
            if budget <= 0 or len(self.running) >= self.max_running or self.req_pool.num_free == 0:
                break
            # At least the last token is computed (for its logits); a scoring one from score_from - 1.
            limit = len(seq.token_ids) - 1 if seq.score_from is None else seq.score_from - 1
            match = self.prefix_cache.match_prefix(seq.token_ids[:limit], seq.extra_key)
            if sharing is not None:
                shared = sharing.prefix_length(seq.token_ids[:-1], seq.extra_key)
                if shared - match.length >= IN_BATCH_SHARE_MIN_TOKENS:
                    self.prefix_cache.release(match)
                    continue
            count = min(len(seq.token_ids) - match.length, budget)
            if count > self._free_slots():
                self.prefix_cache.release(match)
                break
            self.waiting.remove(seq)
            self._start(seq, match)
            chosen.append((seq, count))
            budget -= count
            self._reserved += count
            admitted_arrival = max(admitted_arrival, seq.arrival)
            if sharing is not None:
                sharing.insert(seq.token_ids, [0] * len(seq.token_ids), seq.extra_key)
        for seq in self.waiting:
            if seq.arrival < admitted_arrival:
                seq.skips += 1

    def _admission_order(self) -> list[Sequence]:
        """Waiting sequences in the order to try them. ``lpm``: longest cached prefix first,
        except that sequences passed over ``FAIRNESS_BOUND`` times (and preempted ones) go first,
        in arrival order; first come first served when the queue is long (ordering costs a
        tree walk per request) or the cache is off."""
        waiting = list(self.waiting)
        if self.policy != "lpm" or not self._caching or len(waiting) > LPM_MAX_QUEUE:
            return waiting
        prefix_length = self.prefix_cache.prefix_length

        def priority(seq: Sequence) -> tuple[int, int, int]:
            if seq.skips >= FAIRNESS_BOUND:
                return (0, seq.arrival, 0)
            return (1, -prefix_length(seq.token_ids[:-1], seq.extra_key), seq.arrival)

        return sorted(waiting, key=priority)

    def _prefills_in_flight(self) -> RadixCache:
        """A token trie of the running sequences still prefilling (slots unused)."""
        trie = RadixCache(None)
        for seq in self.running:
            if seq.num_to_compute > 1:
                trie.insert(seq.token_ids, [0] * len(seq.token_ids), seq.extra_key)
        return trie

    def _start(self, seq: Sequence, match: PrefixMatch) -> None:
        """Make a waiting sequence running, its KV starting with the matched prefix's slots."""
        seq.req_pool_idx = self.req_pool.alloc()
        seq.prefix, seq.kv_slots, seq.table_len = match, list(match.slots), 0
        seq.num_computed = match.length
        seq.status = SequenceStatus.RUNNING
        if not seq.admitted:
            seq.admitted, seq.cached_tokens = True, match.length
            self.stats.prompt_tokens += seq.num_prompt_tokens
            self.stats.cached_tokens += match.length
        self.running.append(seq)

    def _free_slots(self) -> int:
        """Slots this step can still promise: free ones and unlocked cached ones."""
        return self.kv_pool.num_free + self.prefix_cache.evictable_size() - self._reserved

    def _make_room(self, count: int, protect: Sequence, chosen: list[tuple[Sequence, int]]) -> bool:
        """Preempt the newest running sequences (not ``protect``, not already chosen) until
        ``count`` slots are free or evictable; False when only ``protect`` and chosen ones are left."""
        if self._free_slots() >= count:
            return True
        chosen_ids = {id(s) for s, _ in chosen}
        while self._free_slots() < count:
            victims = [
                s
                for s in self.running
                if s is not protect and id(s) not in chosen_ids and s.status is SequenceStatus.RUNNING
            ]
            if not victims:
                return False
            self._preempt(max(victims, key=lambda s: s.arrival))
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Hand a running sequence's KV to the prefix cache and requeue it at the front."""
        self._release(seq)
        seq.status = SequenceStatus.WAITING
        seq.skips = FAIRNESS_BOUND  # first in line again, whatever the policy
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        logger.debug("preempted %s (%d tokens)", seq.request_id, len(seq.token_ids))

    def _release(self, seq: Sequence) -> None:
        """Give back a sequence's KV (to the prefix cache, the rest to the pool) and its row."""
        if seq.req_pool_idx is not None:
            self._hand_back_kv(seq)
            self.req_pool.free(seq.req_pool_idx)
            seq.req_pool_idx = None
        seq.num_computed, seq.kv_slots, seq.prefix, seq.table_len = 0, [], EMPTY_MATCH, 0
        seq.scores.clear()  # a scoring sequence rescored from scratch when readmitted
        if seq in self.running:
            self.running.remove(seq)

    def _hand_back_kv(self, seq: Sequence) -> None:
        """Offer the computed tokens' KV to the prefix cache, unlock the sequence's match, and
        free the slots the cache did not take (host ids: no device read-back)."""
        cache = self.prefix_cache
        computed = min(seq.num_computed, len(seq.token_ids))
        kept = seq.prefix
        if len(seq.kv_slots) == seq.num_computed:  # KV entry i holds token i: reusable
            kept = cache.insert(seq.token_ids[:computed], seq.kv_slots[:computed], seq.extra_key)
            cache.release(seq.prefix)
        cache.release(kept)
        self.kv_pool.free(seq.kv_slots[kept.length :])

    def _allocate(self, chosen: list[tuple[Sequence, int]]) -> ScheduledBatch:
        """Pop the step's slots (evicting cached ones if the pool is short) and append each
        sequence's to its ``kv_slots``; the backend records them in the slot table."""
        self._reserved = 0
        counts = [count for _, count in chosen]
        needed = sum(counts)
        if needed > self.kv_pool.num_free:
            self.prefix_cache.evict(needed - self.kv_pool.num_free)
        slots = self.kv_pool.alloc(needed)
        slot_ids = slots.tolist()
        table_starts: list[int] = []
        offset = 0
        is_decode = True
        for seq, count in chosen:
            table_starts.append(seq.table_len)
            seq.kv_slots.extend(slot_ids[offset : offset + count])
            offset += count
            is_decode = (
                is_decode and count == 1 and seq.table_len == len(seq.kv_slots) - 1 and seq.score_from is None
            )
        return ScheduledBatch([seq for seq, _ in chosen], counts, slots, table_starts, is_decode)

    def rollback(self, batch: ScheduledBatch) -> None:
        """Undo a step whose forward pass failed: give back the slots it allocated."""
        for seq, count in zip(batch.sequences, batch.num_new_tokens, strict=True):
            del seq.kv_slots[len(seq.kv_slots) - count :]
        self.kv_pool.free(batch.out_cache_loc)

    def advance(self, batch: ScheduledBatch) -> None:
        """Record that the batch's tokens are now computed and in the slot table (call after
        the forward pass is queued). A prefill chunk's KV goes into the prefix cache at once,
        so requests arriving meanwhile with the same prefix share it."""
        for seq, count in zip(batch.sequences, batch.num_new_tokens, strict=True):
            seq.num_computed += count
            seq.table_len = len(seq.kv_slots)
            if count > 1 and self._caching:
                self._cache_running(seq)

    def _cache_running(self, seq: Sequence) -> None:
        """Insert a running sequence's computed KV into the cache and hold it by a lock; where
        the cache already had those tokens under other slots, use the cache's (the row is
        rewritten from the first change on)."""
        if len(seq.kv_slots) != seq.num_computed:
            return
        computed = seq.num_computed
        match = self.prefix_cache.insert(seq.token_ids[:computed], seq.kv_slots[:computed], seq.extra_key)
        self.prefix_cache.release(seq.prefix)
        seq.prefix = match
        for index, slot in enumerate(match.slots):
            if seq.kv_slots[index] != slot:
                seq.table_len = min(seq.table_len, index)
                seq.kv_slots[index] = slot

    def finish(self, seq: Sequence, reason: str) -> None:
        """Stop a sequence (any state): free what it owns and mark it finished."""
        if seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def find(self, request_id: str) -> Sequence | None:
        """The live sequence with this id, if any."""
        for seq in (*self.running, *self.waiting):
            if seq.request_id == request_id:
                return seq
        return None
