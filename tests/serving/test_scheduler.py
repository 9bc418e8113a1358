"""Continuous batching without a model: budgets, chunked prefill, joining, preemption, leaks."""

from __future__ import annotations

import torch

from serving.memory import KVPool, ReqToTokenPool
from serving.sampling import SamplingParams
from serving.scheduler import Scheduler
from serving.sequence import GenerationRequest, Sequence, SequenceStatus


def make_scheduler(num_slots: int = 65, max_running: int = 4, budget: int = 16) -> Scheduler:
    pool = KVPool(1, num_slots, 1, 2, torch.float32, "cpu")
    return Scheduler(pool, ReqToTokenPool(max_running, 64, "cpu"), max_running, budget)


def add(scheduler: Scheduler, name: str, prompt_len: int) -> Sequence:
    seq = Sequence(GenerationRequest(name, list(range(1, prompt_len + 1)), SamplingParams()), 64, None)
    scheduler.add(seq)
    return seq


def run_step(scheduler: Scheduler) -> dict[str, int]:
    """One scheduled step with a fake model: every sequence that reaches its end samples token 7."""
    batch = scheduler.schedule()
    assert batch is not None
    new_slots = [
        slot
        for seq, n in zip(batch.sequences, batch.num_new_tokens, strict=True)
        for slot in seq.kv_slots[-n:]
    ]
    assert new_slots == batch.out_cache_loc.tolist()  # each sequence's host slot ids end with its new ones
    sampling = [seq for i, seq in enumerate(batch.sequences) if batch.samples(i)]
    scheduler.advance(batch)
    for seq in sampling:
        seq.token_ids.append(7)
    return {seq.request_id: n for seq, n in zip(batch.sequences, batch.num_new_tokens, strict=True)}


def assert_slot_table_consistent(scheduler: Scheduler) -> None:
    """Running sequences own disjoint slots; together with the free ones they cover the pool."""
    owned: list[int] = []
    for seq in scheduler.running:
        assert seq.num_kv == seq.num_computed
        owned += seq.kv_slots
    assert len(owned) == len(set(owned))
    assert len(owned) + scheduler.kv_pool.num_free == scheduler.kv_pool.capacity


def test_long_prompt_is_prefilled_in_chunks_within_the_budget():
    scheduler = make_scheduler(budget=16)
    seq = add(scheduler, "long", 40)
    assert [run_step(scheduler)["long"] for _ in range(3)] == [16, 16, 8]
    assert seq.num_output_tokens == 1  # sampled only after the last chunk
    assert run_step(scheduler) == {"long": 1}  # then decodes
    assert_slot_table_consistent(scheduler)


def test_new_requests_join_the_running_batch():
    scheduler = make_scheduler(budget=16)
    add(scheduler, "a", 4)
    assert run_step(scheduler) == {"a": 4}
    add(scheduler, "b", 30)
    assert run_step(scheduler) == {"a": 1, "b": 15}  # decode first, then b's first chunk
    assert run_step(scheduler) == {"a": 1, "b": 15}
    assert_slot_table_consistent(scheduler)


def test_max_running_limits_admission():
    scheduler = make_scheduler(max_running=2, budget=64)
    for i in range(3):
        add(scheduler, str(i), 3)
    assert set(run_step(scheduler)) == {"0", "1"}
    assert len(scheduler.waiting) == 1


def test_preemption_frees_the_newest_and_recomputes_it_later():
    scheduler = make_scheduler(num_slots=13, budget=64)  # 12 usable slots
    old, new = add(scheduler, "old", 5), add(scheduler, "new", 5)
    run_step(scheduler)  # 10 slots used, both have sampled one token
    run_step(scheduler)  # 12 used: both decoded one more
    steps = run_step(scheduler)  # old needs a slot: new is preempted
    assert steps == {"old": 1}
    assert (
        new.status is SequenceStatus.WAITING
        and new.num_computed == 0
        and new.kv_slots == []
        and scheduler.num_preemptions == 1
    )
    assert new.token_ids[5:] == [7, 7]  # its generated tokens are kept for recomputation
    assert_slot_table_consistent(scheduler)
    scheduler.finish(old, "stop")
    assert run_step(scheduler) == {"new": 7}  # prompt + 2 generated tokens recomputed at once
    assert_slot_table_consistent(scheduler)


def test_a_sequence_that_cannot_fit_alongside_older_ones_preempts_itself():
    scheduler = make_scheduler(num_slots=9, budget=64)  # 8 usable slots
    a, b = add(scheduler, "a", 4), add(scheduler, "b", 4)
    run_step(scheduler)
    assert run_step(scheduler) == {"a": 1}  # b (newest) gave way
    assert b.status is SequenceStatus.WAITING
    assert a.status is SequenceStatus.RUNNING


def test_finish_and_abort_release_everything():
    scheduler = make_scheduler(budget=8)
    seqs = [add(scheduler, str(i), 6) for i in range(3)]
    run_step(scheduler)
    run_step(scheduler)
    for seq in seqs:  # running, partially prefilled, or still waiting
        scheduler.finish(seq, "abort")
    assert not scheduler.has_work
    assert scheduler.kv_pool.num_free == scheduler.kv_pool.capacity
    assert scheduler.req_pool.num_free == scheduler.max_running
    assert scheduler.schedule() is None


def test_steady_decode_schedules_everyone_and_leaves_it_when_someone_waits():
    """The all-decode fast path gives each running sequence one token, oldest first; a waiting
    request, a prefill in progress or a short pool sends scheduling back through the general loop."""
    scheduler = make_scheduler(num_slots=50, max_running=4, budget=16)  # 49 usable slots
    add(scheduler, "a", 5)
    add(scheduler, "b", 6)
    run_step(scheduler)  # both prefilled (11 slots), both sampled
    assert scheduler._all_decode_fits()
    assert run_step(scheduler) == {"a": 1, "b": 1}
    c = add(scheduler, "c", 20)
    assert not scheduler._all_decode_fits()  # c waits
    assert run_step(scheduler) == {"a": 1, "b": 1, "c": 14}  # decodes first, then c's first chunk
    assert not scheduler._all_decode_fits()  # c is still prefilling
    assert run_step(scheduler) == {"a": 1, "b": 1, "c": 6}  # 37 slots used
    fast_steps = 0
    while scheduler._all_decode_fits():
        assert run_step(scheduler) == {"a": 1, "b": 1, "c": 1}
        fast_steps += 1
    assert fast_steps == 4 and scheduler.kv_pool.num_free == 0  # 12 free slots, 3 a step
    assert run_step(scheduler) == {"a": 1, "b": 1}  # c, the newest, is preempted for room
    assert c.status is SequenceStatus.WAITING
    assert_slot_table_consistent(scheduler)
