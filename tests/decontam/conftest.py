"""Fixtures for the arena-decontam tests: the shared real data, and one embedding model per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.decontam.helpers import shared_decontam_dir
from tests.environment import unavailable


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_decontam_dir()
    if not path.is_dir():
        unavailable(f"shared decontam data not found at {path} (set ARENA_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def embedder():
    from arena.decontam.embedding import Embedder

    return Embedder("minilm", batch_size=32, threads=1)
