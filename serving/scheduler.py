"""Continuous batching with chunked prefill and preemption by recompute.

Every step the scheduler builds one batch under a token budget:

1. Running sequences, oldest first: one token each when decoding, or the next chunk of their
   prompt when a long prefill was split. When the KV pool is short, the newest running sequence
   is preempted: its slots are freed and it goes back to the front of the queue, to be
   recomputed (prompt + tokens generated so far) later. The pool can therefore never overflow.
2. Waiting sequences, first come first served, while budget, request rows and free slots last.
   A prompt larger than the remaining budget is prefilled in chunks over several steps.

Slots for all new tokens of a step are popped from the pool at once (host memory); the model
runner records them in the request rows of ``req_to_token`` on the device, as part of the
step's forward (inside the CUDA graph for decode batches), so scheduling costs no device work.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from functools import cached_property

import torch

from serving.memory import KVPool, ReqToTokenPool
from serving.sequence import Sequence, SequenceStatus

logger = logging.getLogger(__name__)


@dataclass
class ScheduledBatch:
    """Sequences of one step with the number of new tokens each feeds to the model."""

    sequences: list[Sequence]
    num_new_tokens: list[int]
    # [sum(num_new_tokens)] int64 host tensor: KV slots of the new tokens, in order; the model
    # runner writes them into req_to_token at (request row, position) before attention reads it.
    out_cache_loc: torch.Tensor
    # A decode step scheduled before the host read the previous step's tokens (overlap): each
    # sequence feeds its still-unread last token, which the model runner takes from the device.
    ahead: bool = False

    @cached_property
    def is_decode(self) -> bool:
        return all(n == 1 for n in self.num_new_tokens)

    def samples(self, index: int) -> bool:
        """Whether sequence ``index`` reaches its last token this step (so a token is sampled)."""
        seq = self.sequences[index]
        return self.ahead or seq.num_cached + self.num_new_tokens[index] == len(seq.token_ids)


class Scheduler:
    """Owns the waiting queue, the running set and all KV bookkeeping."""

    def __init__(
        self,
        kv_pool: KVPool,
        req_pool: ReqToTokenPool,
        max_running: int,
        max_batch_tokens: int,
    ) -> None:
        self.kv_pool = kv_pool
        self.req_pool = req_pool
        self.max_running = max_running
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._reserved = 0  # slots promised to this step's sequences before the single allocation

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence."""
        seq.status = SequenceStatus.WAITING
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
            count = min(seq.num_uncached, budget)
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
            and all(seq.num_uncached == 1 for seq in self.running)
        )

    def _one_more_token_each_fits(self) -> bool:
        """Budget and free slots cover one new token for every running sequence."""
        return len(self.running) <= min(self.max_batch_tokens, self.kv_pool.num_free)

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
        """Start waiting sequences while budget, rows and free slots allow (no preemption)."""
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            seq = self.waiting[0]
            count = min(seq.num_uncached, budget)
            if count > self._free_slots() or self.req_pool.num_free == 0:
                break
            self.waiting.popleft()
            seq.req_pool_idx = self.req_pool.alloc()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            chosen.append((seq, count))
            budget -= count
            self._reserved += count

    def _free_slots(self) -> int:
        return self.kv_pool.num_free - self._reserved

    def _make_room(self, count: int, protect: Sequence, chosen: list[tuple[Sequence, int]]) -> bool:
        """Preempt the newest running sequences (not ``protect``, not already chosen) until
        ``count`` slots are free; False when only ``protect`` and chosen ones are left."""
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
        """Free a running sequence's KV and requeue it at the front for recomputation."""
        self._release(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        logger.debug("preempted %s (%d tokens)", seq.request_id, len(seq.token_ids))

    def _release(self, seq: Sequence) -> None:
        """Give back a sequence's KV slots and request row."""
        if seq.req_pool_idx is not None:
            slots = self.req_pool.req_to_token[seq.req_pool_idx, : seq.num_cached]
            self.kv_pool.free(slots.to(torch.int64))
            self.req_pool.free(seq.req_pool_idx)
            seq.req_pool_idx = None
        seq.num_cached = 0
        if seq in self.running:
            self.running.remove(seq)

    def _allocate(self, chosen: list[tuple[Sequence, int]]) -> ScheduledBatch:
        """Pop the step's slots; the model runner records them in ``req_to_token``."""
        self._reserved = 0
        counts = [count for _, count in chosen]
        slots = self.kv_pool.alloc(sum(counts))
        return ScheduledBatch([seq for seq, _ in chosen], counts, slots)

    def rollback(self, batch: ScheduledBatch) -> None:
        """Undo a step whose forward pass failed: give back the slots it allocated."""
        self.kv_pool.free(batch.out_cache_loc)

    def advance(self, batch: ScheduledBatch) -> None:
        """Record that the batch's tokens are now in KV (call after the forward pass)."""
        for seq, count in zip(batch.sequences, batch.num_new_tokens, strict=True):
            seq.num_cached += count

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
