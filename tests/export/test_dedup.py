"""Prompt dedup: signatures equal datasketch's, exact and near verdicts, state that survives a save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasketch import MinHash

from arena.export.dedup import (
    NUM_PERM,
    SEED,
    BloomFilter,
    DedupConfig,
    MinHasher,
    PromptDeduplicator,
    identity_hash,
    shingle_hashes,
)

BASE = (
    "Please explain in simple words how a refrigerator keeps food cold, what the compressor does, "
    "and why the back of the fridge feels warm when it is running for a long time."
)


def test_batch_signatures_equal_datasketch_minhash() -> None:
    texts = [BASE, "hi", "", "two words", BASE.upper(), "Привет, как дела? Что нового у тебя сегодня", "..."]
    signatures = MinHasher().signatures(texts)
    hashes, offsets = shingle_hashes(texts)
    assert list(np.diff(offsets)) == [len(BASE.split()) - 2, 1, 1, 1, len(BASE.split()) - 2, 6, 1]
    for index, signature in enumerate(signatures):
        reference = MinHash(num_perm=NUM_PERM, seed=SEED, hashfunc=identity_hash, scheme="affine32")
        reference.update_batch(hashes[offsets[index] : offsets[index + 1]].tolist())
        np.testing.assert_array_equal(reference.hashvalues, signature)
    np.testing.assert_array_equal(signatures[0], signatures[4])  # case does not matter


def test_exact_and_near_duplicates_are_dropped_in_stream_order() -> None:
    dedup = PromptDeduplicator(DedupConfig(capacity=10_000))
    near = BASE.replace("simple words", "plain words")
    verdicts = dedup.verdicts([BASE, "  " + BASE.upper() + " ", near, "Something else entirely, about tea."])
    assert verdicts == ["keep", "exact", "near", "keep"]
    # Later batches remember earlier ones.
    assert dedup.verdicts([BASE, "A brand new question about orbital mechanics?"]) == ["exact", "keep"]


def test_battle_sides_share_one_verdict() -> None:
    dedup = PromptDeduplicator(DedupConfig(capacity=10_000))
    verdicts = dedup.verdicts([BASE, BASE, BASE, BASE], ["b1", "b1", None, "b2"])
    assert verdicts == ["keep", "keep", "exact", "exact"]
    assert dedup.verdicts([BASE], ["b1"]) == ["keep"]  # the other side, in a later batch


def test_disabled_dedup_keeps_everything() -> None:
    dedup = PromptDeduplicator(DedupConfig(enabled=False))
    assert dedup.verdicts([BASE, BASE]) == ["keep", "keep"]


def test_bloom_filter_state_round_trips(tmp_path: Path) -> None:
    dedup = PromptDeduplicator(DedupConfig(capacity=10_000))
    dedup.verdicts([BASE])
    dedup.bloom.save(tmp_path / "bloom.npy")
    restored = PromptDeduplicator(DedupConfig(capacity=10_000))
    restored.bloom = BloomFilter.load(tmp_path / "bloom.npy", restored.bloom.num_hashes)
    assert restored.verdicts([BASE, "fresh prompt"]) == ["exact", "keep"]


def test_bloom_false_positive_rate_is_near_its_target() -> None:
    bloom = BloomFilter.for_capacity(20_000, 1e-3)
    rng = np.random.default_rng(7)
    bloom.add(rng.integers(0, 2**63, 20_000, dtype=np.uint64))
    probes = rng.integers(0, 2**63, 50_000, dtype=np.uint64)
    assert bloom.contains(probes).mean() < 3e-3
