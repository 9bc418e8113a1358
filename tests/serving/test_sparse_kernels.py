"""Sparse decode-attention kernels (Double Sparsity, H2O) vs their PyTorch references.

As in ``test_kernels.py``, the Triton comparisons run in a child pytest with
``TRITON_INTERPRET=1`` set from the start; the references are checked in the parent against
independent computations (dense decode attention, explicit loops). Error bounds: fp32 outputs
within 2e-5 absolute of the reference, fp16 within 3e-3 (+1% relative); label scores within
1e-4 (fp32) / 2e-2 (fp16); attention mass within 1e-5.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import serving.kernels as kernels
from serving.kernels.testing import PagedBatch, make_paged_batch
from tests.serving.test_kernels import DTYPES, GQA_SHAPES, INTERPRETED, assert_close, interpreted

_CHILD_TIMEOUT_S = 300
SEQ_LENS = [1, 37, 0, 130, 70]
_SCORE_TOLERANCE = {torch.float32: {"atol": 1e-4, "rtol": 1e-5}, torch.float16: {"atol": 2e-2, "rtol": 1e-2}}


def test_interpreted_sparse_kernels_in_subprocess() -> None:
    """Run this file's interpreted comparisons in a fresh interpreter-mode pytest."""
    if INTERPRETED:
        pytest.skip("already running in interpreter mode")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "SERVING_KERNELS": "auto"}
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-x"]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert result.returncode == 0, f"interpreted kernel tests failed:\n{result.stdout}\n{result.stderr}"
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed, 1 skipped", summary), f"only this test may skip in the child: {summary}"


def with_labels(batch: PagedBatch, num_channels: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random distinct channels per KV head and the label cache of every slot of the pool."""
    generator = torch.Generator().manual_seed(seed)
    num_slots, num_kv_heads, head_dim = batch.k_cache.shape
    channels = torch.stack(
        [torch.randperm(head_dim, generator=generator)[:num_channels] for _ in range(num_kv_heads)]
    ).to(torch.int32)
    labels = torch.zeros(num_slots, num_kv_heads, num_channels, dtype=batch.k_cache.dtype)
    kernels.store_labels(batch.k_cache, labels, channels, torch.arange(num_slots))
    return labels, channels


def score_args(batch: PagedBatch, labels, channels, sink: int, recent: int) -> tuple:
    max_len = int(batch.seq_lens.max()) + 3  # wider than needed: the tail must be -inf
    return (
        batch.q,
        labels,
        channels,
        batch.req_to_token,
        batch.req_pool_indices,
        batch.seq_lens,
        max_len,
        sink,
        recent,
    )


# --- references against independent computations ------------------------------------------


def test_store_labels_copies_the_heavy_channels_at_the_given_slots() -> None:
    k_cache = torch.randn(10, 2, 8)
    labels = torch.full((10, 2, 3), -1.0)
    channels = torch.tensor([[7, 0, 3], [1, 2, 5]], dtype=torch.int32)
    kernels.store_labels(k_cache, labels, channels, torch.tensor([4, 9]))
    for slot in (4, 9):
        for head in range(2):
            assert torch.equal(labels[slot, head], k_cache[slot, head, channels[head].long()])
    assert (labels[[0, 1, 2, 3, 5, 6, 7, 8]] == -1.0).all()


def test_label_scores_reference_is_the_group_max_of_partial_dot_products() -> None:
    batch = make_paged_batch([12, 5], 4, 2, 16)
    labels, channels = with_labels(batch, 4)
    scores = kernels.label_scores_ref(*score_args(batch, labels, channels, sink=2, recent=3))
    for b, length in enumerate([12, 5]):
        row = int(batch.req_pool_indices[b])
        for head in range(2):
            for n in range(length):
                slot = int(batch.req_to_token[row, n])
                keys = batch.k_cache[slot, head, channels[head].long()]
                queries = batch.q[b, 2 * head : 2 * head + 2][:, channels[head].long()]
                expected = (queries @ keys).max()
                if n < 2 or n >= length - 3:
                    assert scores[b, head, n] == float("inf")
                else:
                    torch.testing.assert_close(scores[b, head, n], expected)
            assert (scores[b, head, length:] == float("-inf")).all()


def test_all_channels_and_all_tokens_give_dense_attention() -> None:
    """With R = D the label scores are exact; selecting every token is dense attention."""
    batch = make_paged_batch(SEQ_LENS, 8, 2, 16)
    labels, channels = with_labels(batch, 16)
    scores = kernels.label_scores_ref(*score_args(batch, labels, channels, sink=0, recent=0))
    positions = kernels.select_tokens(scores, scores.shape[-1])
    dense = kernels.decode_attention_ref(*batch.decode_args())
    sparse = kernels.gathered_decode_attention_ref(*batch.decode_args()[:-1], positions, batch.scale)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


def test_gathered_attention_reference_equals_dense_attention_over_the_chosen_tokens() -> None:
    batch = make_paged_batch([40], 2, 1, 16)
    positions = torch.tensor([[[3, 17, 39, 0, 25, 45, 41]]], dtype=torch.int32)  # 45, 41: past the end
    got = kernels.gathered_decode_attention_ref(*batch.decode_args()[:-1], positions, batch.scale)
    keep = [3, 17, 39, 0, 25]
    slots = batch.req_to_token[int(batch.req_pool_indices[0]), keep].long()
    keys, values = batch.k_cache[slots, 0], batch.v_cache[slots, 0]
    probs = torch.softmax(batch.q[0] @ keys.T * batch.scale, dim=-1)
    torch.testing.assert_close(got[0], probs @ values)


def test_select_tokens_keeps_sinks_recent_and_best_scores() -> None:
    scores = torch.tensor([[[float("inf"), 0.5, 3.0, -1.0, 2.0, float("inf"), float("-inf")]]])
    chosen = kernels.select_tokens(scores, 4)
    assert sorted(chosen.flatten().tolist()) == [0, 2, 4, 5]
    assert kernels.select_tokens(scores, 99).shape[-1] == 7


def test_h2o_reference_accumulates_probabilities_per_slot() -> None:
    batch = make_paged_batch(SEQ_LENS, 8, 2, 16)
    mass = torch.zeros(batch.k_cache.shape[0])
    out = kernels.h2o_decode_attention_ref(*batch.decode_args(), mass)
    torch.testing.assert_close(out, kernels.decode_attention_ref(*batch.decode_args()))
    nonempty = sum(1 for n in SEQ_LENS if n)
    torch.testing.assert_close(mass.sum(), torch.tensor(8.0 * nonempty))  # each head's probs sum to 1
    b, n = 3, 17  # one key by hand
    slot = int(batch.req_to_token[int(batch.req_pool_indices[b]), n])
    row = batch.req_to_token[int(batch.req_pool_indices[b]), : SEQ_LENS[b]].long()
    keys = batch.k_cache[row].repeat_interleave(4, dim=1)  # [L, Hq, D]
    probs = torch.softmax(torch.einsum("hd,lhd->hl", batch.q[b], keys) * batch.scale, dim=-1)
    torch.testing.assert_close(mass[slot], probs[:, n].sum())


def test_h2o_keep_positions_budget_recent_and_protected_prefix() -> None:
    mass = torch.tensor([9.0, 0.1, 5.0, 0.2, 7.0, 0.3, 0.0, 0.0, 0.0, 0.0])
    assert kernels.h2o_keep_positions(mass, budget=5, recent=2).tolist() == [0, 2, 4, 8, 9]
    assert kernels.h2o_keep_positions(mass, budget=5, recent=2, protected=3).tolist() == [0, 1, 2, 8, 9]
    assert kernels.h2o_keep_positions(mass, budget=3, recent=2, protected=3).tolist() == [0, 1, 2, 8, 9]
    assert kernels.h2o_keep_positions(mass, budget=20, recent=2).tolist() == list(range(10))
    assert kernels.h2o_keep_positions(mass, budget=4, recent=0).tolist() == [0, 2, 4, 5]


# --- Triton (interpreter) against the references ------------------------------------------


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim"), GQA_SHAPES)
@pytest.mark.parametrize("num_channels", [8, 16], ids=["r8", "r16"])
def test_label_scores_match_reference(dtype, num_q_heads, num_kv_heads, head_dim, num_channels) -> None:
    batch = make_paged_batch(SEQ_LENS, num_q_heads, num_kv_heads, head_dim, dtype)
    labels, channels = with_labels(batch, min(num_channels, head_dim))
    args = score_args(batch, labels, channels, sink=4, recent=8)
    got, want = kernels.label_scores_triton(*args), kernels.label_scores_ref(*args)
    assert torch.equal(got.isposinf(), want.isposinf()) and torch.equal(got.isneginf(), want.isneginf())
    finite = want.isfinite()
    torch.testing.assert_close(got[finite], want[finite], **_SCORE_TOLERANCE[dtype])


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim"), GQA_SHAPES)
def test_gathered_attention_matches_reference(dtype, num_q_heads, num_kv_heads, head_dim) -> None:
    """Top-k of real label scores: sinks, recent, heavy tokens and padding past short requests."""
    batch = make_paged_batch(SEQ_LENS, num_q_heads, num_kv_heads, head_dim, dtype)
    labels, channels = with_labels(batch, 8)
    scores = kernels.label_scores_ref(*score_args(batch, labels, channels, sink=2, recent=4))
    positions = kernels.select_tokens(scores, 24)
    args = (*batch.decode_args()[:-1], positions, batch.scale)
    assert_close(
        kernels.gathered_decode_attention_triton(*args), kernels.gathered_decode_attention_ref(*args)
    )


@interpreted
@pytest.mark.parametrize("num_splits", [1, 3])
def test_gathered_attention_split_counts_and_strided_positions(num_splits) -> None:
    from serving.kernels.sparse_decode import gathered_decode_attention_triton

    batch = make_paged_batch([5, 95], 4, 1, 64, seed=num_splits)
    wide = torch.stack([torch.randperm(100)[:40] for _ in range(2)])[:, None].to(torch.int32)  # some >= len
    positions = wide.expand(2, 1, 40).clone()
    got = gathered_decode_attention_triton(
        *batch.decode_args()[:-1], positions, batch.scale, num_splits=num_splits, block_n=16
    )
    assert_close(
        got, kernels.gathered_decode_attention_ref(*batch.decode_args()[:-1], positions, batch.scale)
    )


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim"), GQA_SHAPES)
def test_h2o_attention_and_mass_match_reference(dtype, num_q_heads, num_kv_heads, head_dim) -> None:
    batch = make_paged_batch(SEQ_LENS, num_q_heads, num_kv_heads, head_dim, dtype)
    start = torch.rand(batch.k_cache.shape[0])  # mass from earlier steps is added to, not replaced
    got_mass, want_mass = start.clone(), start.clone()
    got = kernels.h2o_decode_attention_triton(*batch.decode_args(), got_mass)
    want = kernels.h2o_decode_attention_ref(*batch.decode_args(), want_mass)
    assert_close(got, want)
    torch.testing.assert_close(got_mass, want_mass, atol=1e-5, rtol=1e-5)


@interpreted
def test_h2o_mass_with_one_split_and_small_scratch() -> None:
    from serving.kernels.sparse_decode import h2o_decode_attention_triton

    batch = make_paged_batch([33, 64], 8, 1, 32, seed=5)
    got_mass, want_mass = torch.zeros(batch.k_cache.shape[0]), torch.zeros(batch.k_cache.shape[0])
    got = h2o_decode_attention_triton(*batch.decode_args(), got_mass, max_len=64, num_splits=1, block_n=16)
    assert_close(got, kernels.h2o_decode_attention_ref(*batch.decode_args(), want_mass))
    torch.testing.assert_close(got_mass, want_mass, atol=1e-5, rtol=1e-5)


@interpreted
def test_sparse_kernels_reject_bad_shapes() -> None:
    batch = make_paged_batch([8], 4, 2, 16)
    labels, channels = with_labels(batch, 4)
    with pytest.raises(ValueError, match="labels"):
        kernels.label_scores_triton(
            batch.q, labels[:, :1], channels, *score_args(batch, labels, channels, 0, 0)[3:]
        )
    with pytest.raises(ValueError, match="positions"):
        kernels.gathered_decode_attention_triton(
            *batch.decode_args()[:-1], torch.zeros(1, 3, 4, dtype=torch.int32), batch.scale
        )
    with pytest.raises(ValueError, match="mass"):
        kernels.h2o_decode_attention_triton(*batch.decode_args(), torch.zeros(4, dtype=torch.float64))
