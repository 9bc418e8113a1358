"""Helpers shared by the arena-decontam tests (and the benchmark): locating the shared data, small files."""

from __future__ import annotations

import json
from pathlib import Path

from tests.environment import SHARED_DATA


def shared_decontam_dir() -> Path:
    """../shared/data/decontam beside the repository, or under $ARENA_SHARED_DATA."""
    return SHARED_DATA / "decontam"


def read_texts(path: Path, limit: int | None = None, field: str = "text") -> list[str]:
    """The ``field`` of the first ``limit`` lines of a JSONL file."""
    texts = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)[field])
            if limit is not None and len(texts) >= limit:
                break
    return texts


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
