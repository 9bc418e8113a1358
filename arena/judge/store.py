"""Append-only JSONL stores that survive crashes: answers and judgments.

Every record is written as one line, flushed and fsynced before the call returns, under an
advisory file lock so two processes never interleave lines. A process killed mid-write
leaves at most one partial last line; opening the store cuts it off (with a warning) so the
record is simply produced again. A malformed line anywhere else is an error naming it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def safe_name(name: str) -> str:
    """``name`` usable as a file name: runs of other characters than letters, digits, ``._-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


class StoreError(ValueError):
    """A store file is corrupt somewhere other than a crash-truncated last line."""


class JsonlStore:
    """Records keyed by one field, loaded at open and appended durably."""

    def __init__(self, path: Path, key_field: str):
        self.path = Path(path)
        self.key_field = key_field
        self._records: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StoreError(f"{self.path}:{number}: corrupt record: {exc.msg}") from exc
            if not isinstance(record, dict) or self.key_field not in record:
                raise StoreError(f"{self.path}:{number}: record without {self.key_field!r}")
            self._records[str(record[self.key_field])] = record
        if tail.strip():
            logger.warning("%s: dropping a partial last line left by an interrupted run", self.path)
            with self.path.open("r+b") as handle:
                handle.truncate(len(raw) - len(tail))

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def values(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._records.values()))

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` durably; a later record with the same key replaces it on load."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        self._records[str(record[self.key_field])] = record
