"""The offline stages run on one chunk of corpus documents: n-gram, then MinHash, then embeddings.

A :class:`Scanner` holds the benchmark side of every enabled stage. It is built once per worker process (or
Ray actor) and then scans chunks. Stages run cheapest first; a document already *confirmed* by a cheap stage
(a score at or above that stage's accept threshold) skips the expensive embedding stage. What comes out is,
per document with any hit, the candidate pairs (item, document) with each stage's evidence.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from arena.decontam.anchors import AnchorIndex, numbers_kept
from arena.decontam.embedding import Embedder, EmbeddingIndex, default_threshold
from arena.decontam.minhash import MinHashIndex
from arena.decontam.ngram import NgramIndex
from arena.decontam.records import Record
from arena.decontam.text import tokens

STAGES = ("ngram", "anchors", "minhash", "embedding", "llm_judge")
MAX_EDIT_WORDS = 3
"""Consecutive edited words a near-verbatim copy may have at one place (each costs the n-grams covering it)."""


@dataclass(frozen=True)
class StageConfig:
    """Which stages run and their thresholds (a *candidate* threshold feeds the judge; *accept* confirms alone)."""

    ngram: bool = True
    ngram_n: int = 13
    ngram_accept: float = 0.9
    ngram_max_item_df: int = 3
    anchors: bool = True
    anchor_threshold: float = 0.4
    anchor_min_shared: int = 3
    minhash: bool = True
    minhash_threshold: float = 0.5
    minhash_accept: float = 0.9
    minhash_num_perm: int = 128
    embedding: bool = True
    embed_model: str | None = None
    embed_threshold: float | None = None
    embed_margin: float = 0.97
    embed_accept: float = 1.01
    embed_top_k: int = 1
    embed_batch_size: int = 64
    embed_window_words: int | None = None
    embed_device: str = "cpu"

    @property
    def embed_cosine_floor(self) -> float:
        """The candidate cosine: as given, or the default that suits the embedding model."""
        return self.embed_threshold if self.embed_threshold is not None else default_threshold(self.embed_model)

    def to_dict(self) -> dict[str, Any]:
        """The settings that change results (the device does not, so a GPU run can resume a CPU one)."""
        settings = asdict(self)
        settings.pop("embed_device")
        return settings


@dataclass
class PairEvidence:
    """What the offline stages saw for one (benchmark item, corpus document) pair."""

    item: int
    ngram_shared: int = 0
    ngram_ratio: float = 0.0
    anchor_shared: int = 0
    anchor_share: float = 0.0
    minhash_jaccard: float | None = None
    embed_cosine: float | None = None
    embed_margin: float | None = None
    numbers_kept: bool | None = None
    """Whether the document holds every number of the item; checked only for pairs near an accept threshold."""
    ngram_gap: int | None = None
    """The longest run of the item's n-grams missing from the document; checked only for pairs near an accept
    threshold (a run past one edit's footprint means a part of the item is missing or replaced)."""

    def near_verbatim(self, config: StageConfig) -> bool:
        """An n-gram or MinHash score at its accept threshold: a copy, unless the numbers changed."""
        return (self.ngram_shared > 0 and self.ngram_ratio >= config.ngram_accept) or (
            self.minhash_jaccard is not None and self.minhash_jaccard >= config.minhash_accept
        )

    def confirmed_by(self, config: StageConfig) -> str | None:
        """The cheapest stage that accepts this pair without the judge, if any.

        Only near-verbatim copies are accepted: an n-gram share or MinHash Jaccard at its accept threshold,
        every number of the item kept (a word problem with other numbers is another problem, whatever its
        wording shares) and no part of the item missing (the same passage with another question under it is
        another question). Embeddings never accept unless ``embed_accept`` is lowered to 1 or below.
        """
        if self.near_verbatim(config) and self.numbers_kept is not False and not self.part_replaced(config):
            if self.ngram_shared > 0 and self.ngram_ratio >= config.ngram_accept:
                return "ngram"
            return "minhash"
        if self.embed_cosine is not None and self.embed_cosine >= config.embed_accept:
            return "embedding"
        return None

    def part_replaced(self, config: StageConfig) -> bool:
        """Whether the document lacks a run of the item's n-grams longer than a few edited words would cost."""
        return self.ngram_gap is not None and self.ngram_gap > config.ngram_n + MAX_EDIT_WORDS - 1

    def found_by(self) -> list[str]:
        stages = []
        if self.ngram_shared:
            stages.append("ngram")
        if self.anchor_shared:
            stages.append("anchors")
        if self.minhash_jaccard is not None:
            stages.append("minhash")
        if self.embed_cosine is not None:
            stages.append("embedding")
        return stages


@dataclass
class DocHits:
    """A corpus document with at least one candidate pair."""

    doc_id: str
    text: str
    pairs: list[PairEvidence]


@dataclass
class ChunkResult:
    """The outcome of scanning one chunk: hits, and per-stage document counts and seconds."""

    index: int
    docs: int
    hits: list[DocHits] = field(default_factory=list)
    stage_docs: dict[str, int] = field(default_factory=dict)
    stage_pairs: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkResult:
        hits = [
            DocHits(h["doc_id"], h["text"], [PairEvidence(**p) for p in h["pairs"]]) for h in data["hits"]
        ]
        return cls(
            data["index"], data["docs"], hits, data["stage_docs"], data["stage_pairs"], data["stage_seconds"]
        )


@dataclass
class BenchmarkPayload:
    """Everything a worker needs to build a :class:`Scanner`: picklable, built once in the main process."""

    texts: list[str]
    config: StageConfig
    item_vectors: np.ndarray | None = None
    threads: int | None = None


def window_size_for(item_texts: list[str]) -> int:
    """Embedding window (words) for long documents: 1.5x the median benchmark item, within [32, 200].

    A window much longer than the items dilutes a buried item with unrelated text; 200 words is about the
    256 word pieces MiniLM reads anyway.
    """
    lengths = sorted(len(text.split()) for text in item_texts)
    median = lengths[len(lengths) // 2] if lengths else 0
    return int(min(200, max(32, 1.5 * median)))


class Scanner:
    """The benchmark side of the offline stages, and the scan of one corpus chunk."""

    def __init__(self, payload: BenchmarkPayload, embedder: Embedder | None = None):
        self.config = config = payload.config
        item_tokens = [tokens(text) for text in payload.texts]
        self.texts = payload.texts
        self.ngram = NgramIndex(item_tokens, config.ngram_n, config.ngram_max_item_df) if config.ngram else None
        self.anchors = (
            AnchorIndex(payload.texts, config.anchor_threshold, config.anchor_min_shared) if config.anchors else None
        )
        self.minhash = (
            MinHashIndex(item_tokens, config.minhash_threshold, config.minhash_num_perm) if config.minhash else None
        )
        self.embedding: EmbeddingIndex | None = None
        if config.embedding:
            embedder = embedder or Embedder(
                config.embed_model, config.embed_batch_size, payload.threads, config.embed_device
            )
            vectors = payload.item_vectors if payload.item_vectors is not None else embedder.encode(payload.texts)
            self.embedding = EmbeddingIndex(
                vectors,
                embedder,
                threshold=config.embed_cosine_floor,
                min_margin=config.embed_margin,
                top_k=config.embed_top_k,
                window_words=config.embed_window_words or window_size_for(payload.texts),
            )

    def scan(self, index: int, records: list[Record]) -> ChunkResult:
        """Run the enabled stages over ``records``, cheapest first."""
        result = ChunkResult(index=index, docs=len(records))
        evidence: list[dict[int, PairEvidence]] = [{} for _ in records]
        doc_tokens = [tokens(r.text) for r in records] if (self.ngram or self.minhash) else []
        if self.ngram is not None:
            self._run_stage("ngram", result, len(records), lambda: self._ngram_stage(doc_tokens, evidence))
        if self.anchors is not None:
            self._run_stage("anchors", result, len(records), lambda: self._anchor_stage(records, evidence))
        if self.minhash is not None:
            self._run_stage("minhash", result, len(records), lambda: self._minhash_stage(doc_tokens, evidence))
        self._check_copies(records, doc_tokens, evidence)
        if self.embedding is not None:
            open_docs = [i for i, ev in enumerate(evidence) if not self._confirmed(ev)]
            self._run_stage(
                "embedding", result, len(open_docs), lambda: self._embedding_stage(records, open_docs, evidence)
            )
        for record, found in zip(records, evidence, strict=True):
            if found:
                result.hits.append(DocHits(record.doc_id, record.text, sorted(found.values(), key=lambda p: p.item)))
        return result

    def _run_stage(self, name: str, result: ChunkResult, docs: int, run: Any) -> None:
        started = time.perf_counter()
        result.stage_pairs[name] = run()
        result.stage_seconds[name] = time.perf_counter() - started
        result.stage_docs[name] = docs

    def _confirmed(self, found: dict[int, PairEvidence]) -> bool:
        return any(pair.confirmed_by(self.config) for pair in found.values())

    def _ngram_stage(self, doc_tokens: list[list[str]], evidence: list[dict[int, PairEvidence]]) -> int:
        assert self.ngram is not None
        pairs = 0
        for found, toks in zip(evidence, doc_tokens, strict=True):
            for item, (shared, ratio) in self.ngram.match(toks).items():
                pair = found.setdefault(item, PairEvidence(item))
                pair.ngram_shared, pair.ngram_ratio = shared, ratio
                pairs += 1
        return pairs

    def _anchor_stage(self, records: list[Record], evidence: list[dict[int, PairEvidence]]) -> int:
        assert self.anchors is not None
        pairs = 0
        for found, record in zip(evidence, records, strict=True):
            for item, (shared, share) in self.anchors.match(record.text).items():
                pair = found.setdefault(item, PairEvidence(item))
                pair.anchor_shared, pair.anchor_share = shared, round(share, 4)
                pairs += 1
        return pairs

    def _check_copies(
        self, records: list[Record], doc_tokens: list[list[str]], evidence: list[dict[int, PairEvidence]]
    ) -> None:
        """Mark, for pairs an accept threshold would confirm, whether the document kept the item's numbers and
        its longest run of missing n-grams (both can still send the pair to the judge)."""
        for position, (found, record) in enumerate(zip(evidence, records, strict=True)):
            for pair in found.values():
                if pair.near_verbatim(self.config):
                    pair.numbers_kept = numbers_kept(self.texts[pair.item], record.text)
                    if self.ngram is not None:
                        pair.ngram_gap = self.ngram.longest_missing_run(pair.item, doc_tokens[position])

    def _minhash_stage(self, doc_tokens: list[list[str]], evidence: list[dict[int, PairEvidence]]) -> int:
        assert self.minhash is not None
        pairs = 0
        for found, toks in zip(evidence, doc_tokens, strict=True):
            for item, similarity in self.minhash.match(toks).items():
                found.setdefault(item, PairEvidence(item)).minhash_jaccard = similarity
                pairs += 1
        return pairs

    def _embedding_stage(
        self, records: list[Record], open_docs: list[int], evidence: list[dict[int, PairEvidence]]
    ) -> int:
        assert self.embedding is not None
        pairs = 0
        matches = self.embedding.match([records[i].text for i in open_docs])
        for doc, found_items in zip(open_docs, matches, strict=True):
            for item, hit in found_items.items():
                pair = evidence[doc].setdefault(item, PairEvidence(item))
                pair.embed_cosine, pair.embed_margin = round(hit.cosine, 4), hit.margin
                pairs += 1
        return pairs
