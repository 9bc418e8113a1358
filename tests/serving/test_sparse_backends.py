"""Double Sparsity and H2O backends on a real (tiny, random) Llama, against dense attention."""

from __future__ import annotations

import pytest
import torch

from serving.attention import DenseAttentionBackend
from serving.models import load_model
from serving.sparse.calibration import rank_channels
from serving.sparse.double_sparsity import DoubleSparsityBackend, DoubleSparsityConfig
from serving.sparse.h2o import H2OBackend, H2OConfig
from serving.sparse.offline import OfflineDecoder, continuation_logprobs, greedy

PROMPTS = [list(range(5, 5 + 90)), [7, 8, 9] * 20, list(range(200, 330))]


@pytest.fixture(scope="module")
def llama(tiny_checkpoint):
    return load_model(tiny_checkpoint("llama"), "cpu", torch.float32, max_positions=512)


@pytest.fixture(scope="module")
def channels(llama) -> torch.Tensor:
    return rank_channels(llama, list(range(3, 300)), window=128).top(8)  # 8 of 16 channels


def dense(pool, req_pool) -> DenseAttentionBackend:
    return DenseAttentionBackend(pool, req_pool)


def double_sparsity(channels: torch.Tensor, **settings):
    config = DoubleSparsityConfig(**settings)
    return lambda pool, rows: DoubleSparsityBackend(pool, rows, None, config, channels=channels)


def test_double_sparsity_below_the_threshold_is_dense(llama, channels) -> None:
    want = greedy(llama, dense, PROMPTS, 24)
    assert greedy(llama, double_sparsity(channels, dense_below=4096), PROMPTS, 24) == want


def test_double_sparsity_with_all_channels_and_tokens_equals_dense(llama, channels) -> None:
    """The sparse path (threshold 0) keeping every token computes exact attention."""
    full = torch.arange(16).repeat(2, 2, 1)  # all 16 channels of both KV heads, both layers
    backend = double_sparsity(full, dense_below=0, token_fraction=1.0, min_tokens=0, sink=0, recent=0)
    want = continuation_logprobs(llama, dense, PROMPTS[:2], [[1, 2, 3, 4]] * 2)
    got = continuation_logprobs(llama, backend, PROMPTS[:2], [[1, 2, 3, 4]] * 2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_double_sparsity_sparse_path_stays_close_to_dense(llama, channels) -> None:
    """1/2 channels, 24 of ~100 tokens: log-probabilities move, but stay close on this model."""
    backend = double_sparsity(channels, dense_below=0, token_fraction=1 / 8, min_tokens=8, sink=4, recent=8)
    targets = [[11, 12, 13, 14, 15, 16]] * 3
    want = continuation_logprobs(llama, dense, PROMPTS, targets)
    got = continuation_logprobs(llama, backend, PROMPTS, targets)
    assert got.isfinite().all() and not torch.equal(got, want)
    assert (got - want).abs().mean() < 0.5


def test_double_sparsity_rejects_channels_of_another_model(llama) -> None:
    decoder_args = (llama, double_sparsity(torch.zeros(3, 2, 4, dtype=torch.int32)), 1, 16)
    with pytest.raises(ValueError, match="do not fit the KV pool"):
        OfflineDecoder(*decoder_args)


def test_h2o_with_a_budget_above_the_length_is_dense(llama) -> None:
    backend = lambda pool, table: H2OBackend(pool, table, None, H2OConfig(budget_tokens=1000))  # noqa: E731
    assert greedy(llama, backend, PROMPTS, 16) == greedy(llama, dense, PROMPTS, 16)


def test_h2o_mass_after_prefill_is_one_per_query_and_head(llama) -> None:
    decoder = OfflineDecoder(llama, lambda p, t: H2OBackend(p, t, None, H2OConfig(budget_tokens=1000)), 1, 64)
    decoder.prefill([PROMPTS[0][:40]])
    mass = decoder.pool.side_tables["h2o_mass"]
    torch.testing.assert_close(mass.sum(dim=1), torch.full((2,), 40.0 * 4))  # 40 queries x 4 heads, per layer
    decoder.decode([3])
    torch.testing.assert_close(mass.sum(dim=1), torch.full((2,), 41.0 * 4))


def test_h2o_evicts_to_its_budget_and_frees_the_slots(llama) -> None:
    config = H2OConfig(budget_fraction=0.25, min_budget=8, evict_slack=4)
    decoder = OfflineDecoder(llama, lambda p, t: H2OBackend(p, t, None, config), 3, 160)
    decoder.prefill(PROMPTS)
    for step in range(12):
        decoder.decode([40 + step] * 3)
    lengths = [len(p) + 12 for p in PROMPTS]
    held = decoder.kv_entries()
    for length, kv_len in zip(lengths, held, strict=True):
        assert config.budget(length) <= kv_len <= config.budget(length) + config.evict_slack
    assert decoder.pool.num_free == decoder.pool.capacity - sum(held)  # evicted slots are back
    for seq in decoder.sequences:  # the device rows hold the sequences' remaining slots
        assert decoder.rows.req_to_token[seq.row, : len(seq.slots)].tolist() == seq.slots


def test_h2o_evict_keeps_the_protected_prefix_and_recent_tokens(llama) -> None:
    config = H2OConfig(budget_tokens=20, recent_fraction=0.5, evict_slack=1000)
    decoder = OfflineDecoder(llama, lambda p, t: H2OBackend(p, t, None, config), 1, 128)
    decoder.prefill([PROMPTS[2][:100]])
    seq = decoder.sequences[0]
    before = decoder.rows.req_to_token[seq.row, :100].clone()
    keep = decoder.backend.evict(seq.row, 100, 100, protected=6)
    after = decoder.rows.req_to_token[seq.row, : len(keep)]
    assert len(keep) == 20 and keep == sorted(keep)
    assert keep[:6] == list(range(6)) and keep[-10:] == list(range(90, 100))
    assert torch.equal(after, before[keep])
