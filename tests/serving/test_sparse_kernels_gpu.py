"""Sparse decode-attention kernels vs their PyTorch references on a CUDA GPU (bf16/fp16).

Llama-3-8B's attention shape (32 query heads, 8 KV heads, head dim 128) with ragged lengths up
to 8k; the same error measures as ``test_kernels_gpu.py`` (relative norm error and elementwise
closeness); attention mass within 1e-3 relative (fp32 sums of bf16-input probabilities).
"""

from __future__ import annotations

import pytest
import torch

import serving.kernels as kernels
from serving.kernels.testing import make_paged_batch
from tests.serving.test_kernels_gpu import HALF_DTYPES, _ragged_lengths, assert_matches, pytestmark  # noqa: F401

SHAPE = (32, 8, 128)


def _labels(batch, num_channels: int):
    num_slots, num_kv_heads, head_dim = batch.k_cache.shape
    generator = torch.Generator().manual_seed(num_channels)
    channels = torch.stack(
        [torch.randperm(head_dim, generator=generator)[:num_channels] for _ in range(num_kv_heads)]
    )
    channels = channels.to(device="cuda", dtype=torch.int32)
    labels = torch.empty(num_slots, num_kv_heads, num_channels, dtype=batch.k_cache.dtype, device="cuda")
    kernels.store_labels(batch.k_cache, labels, channels, torch.arange(num_slots, device="cuda"))
    return labels, channels


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("num_channels", [8, 16])
def test_label_scores_and_gathered_attention_match_references(dtype, num_channels) -> None:
    lengths = _ragged_lengths(8, 8192, seed=num_channels)
    batch = make_paged_batch(lengths, *SHAPE, dtype, "cuda")
    labels, channels = _labels(batch, num_channels)
    args = (
        batch.q,
        labels,
        channels,
        batch.req_to_token,
        batch.req_pool_indices,
        batch.seq_lens,
        max(lengths),
        16,
        64,
    )
    got, want = kernels.label_scores_triton(*args), kernels.label_scores_ref(*args)
    assert torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite()
    scale = want[finite].abs().max()
    assert ((got[finite] - want[finite]).abs().max() / scale).item() < 2e-2
    positions = kernels.select_tokens(want, 16 + 64 + max(256, max(lengths) // 16))
    gather = (*batch.decode_args()[:-1], positions, batch.scale)
    assert_matches(
        kernels.gathered_decode_attention_triton(*gather),
        kernels.gathered_decode_attention_ref(*gather),
        "gathered",
    )


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_h2o_attention_and_mass_match_references(dtype) -> None:
    lengths = _ragged_lengths(8, 8192, seed=3)
    batch = make_paged_batch(lengths, *SHAPE, dtype, "cuda")
    got_mass = torch.zeros(batch.k_cache.shape[0], device="cuda")
    want_mass = torch.zeros_like(got_mass)
    got = kernels.h2o_decode_attention_triton(*batch.decode_args(), got_mass)
    assert_matches(got, kernels.h2o_decode_attention_ref(*batch.decode_args(), want_mass), "h2o")
    torch.testing.assert_close(got_mass, want_mass, atol=1e-4, rtol=1e-3)
