"""The token-slot KV pool and the request -> slot table."""

from __future__ import annotations

import pytest
import torch

from serving.memory import PADDING_SLOT, KVPool, OutOfSlotsError, ReqToTokenPool, slots_for_memory


def make_pool(num_slots: int = 9) -> KVPool:
    return KVPool(
        num_layers=2, num_slots=num_slots, num_kv_heads=2, head_dim=4, dtype=torch.float32, device="cpu"
    )


def test_alloc_hands_out_distinct_slots_never_the_padding_slot():
    pool = make_pool()
    first, second = pool.alloc(3), pool.alloc(5)
    slots = torch.cat([first, second]).tolist()
    assert len(set(slots)) == 8 and PADDING_SLOT not in slots
    assert pool.num_free == 0


def test_alloc_beyond_free_raises_and_changes_nothing():
    pool = make_pool()
    pool.alloc(6)
    with pytest.raises(OutOfSlotsError):
        pool.alloc(3)
    assert pool.num_free == 2


def test_free_returns_slots_for_reuse():
    pool = make_pool()
    taken = pool.alloc(8)
    pool.free(taken[:4])
    again = pool.alloc(4)
    assert sorted(again.tolist()) == sorted(taken[:4].tolist())


def test_double_free_is_detected():
    pool = make_pool()
    slots = pool.alloc(2)
    pool.free(slots)
    pool.free(pool.alloc(8))
    with pytest.raises(RuntimeError, match="double free"):
        pool.free(slots)


def test_buffers_have_the_requested_shape_and_size():
    pool = make_pool(num_slots=5)
    assert pool.k[0].shape == (5, 2, 4) and len(pool.v) == 2
    assert pool.bytes_per_slot() == 2 * 2 * 2 * 4 * 4
    assert slots_for_memory(pool.bytes_per_slot() * 100, 2, 2, 4, torch.float32) == 100


def test_side_table_is_per_layer_and_per_slot():
    table = make_pool().add_side_table("h2o_scores", (2,), torch.float32)
    assert table.shape == (2, 9, 2)


def test_req_to_token_rows():
    rows = ReqToTokenPool(max_reqs=2, max_context=8, device="cpu")
    a, b = rows.alloc(), rows.alloc()
    assert {a, b} == {0, 1} and rows.req_to_token.dtype == torch.int32
    with pytest.raises(OutOfSlotsError):
        rows.alloc()
    rows.free(a)
    assert rows.alloc() == a
