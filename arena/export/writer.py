"""Output files: Parquet + JSONL shards written atomically, the resume state, the manifest.

Layout of an export directory (one dataset, Hugging Face style)::

    README.md                     dataset card
    data/train-00000.parquet      Parquet shards (explicit schema, zstd)
    jsonl/train-00000.jsonl       the same rows as JSON lines
    plots/*.png                   figures used by the card
    manifest.json                 every file above with its size and SHA-256
    .export-state/                resume state; not part of the release (not in the manifest).
                                  While the export runs it holds the last database id read;
                                  on completion only counts and the options fingerprint remain.

A shard is written to ``*.tmp`` files and renamed when complete, and only then is the state
(last source id, statistics, dedup filter) saved, so a crash at any point loses at most the
shard in progress: the next run deletes stray ``*.tmp`` files and redoes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

STATE_DIR = ".export-state"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
SPLIT = "train"


def shard_paths(out: Path, index: int) -> tuple[Path, Path]:
    return out / "data" / f"{SPLIT}-{index:05d}.parquet", out / "jsonl" / f"{SPLIT}-{index:05d}.jsonl"


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


class ShardWriter:
    """Writes one shard's rows to Parquet (one row group per batch) and JSONL, then renames."""

    def __init__(self, out: Path, index: int, schema: pa.Schema):
        self.index = index
        self.schema = schema
        self.parquet_path, self.jsonl_path = shard_paths(out, index)
        self.parquet_path.parent.mkdir(parents=True, exist_ok=True)
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self._parquet_tmp = self.parquet_path.with_suffix(".parquet.tmp")
        self._jsonl_tmp = self.jsonl_path.with_suffix(".jsonl.tmp")
        self._parquet = pq.ParquetWriter(self._parquet_tmp, schema, compression="zstd")
        self._jsonl = open(self._jsonl_tmp, "wb")  # noqa: SIM115 - closed in close()
        self.rows = 0

    def write(self, table: pa.Table, json_lines: list[bytes]) -> None:
        """Append rows given as an Arrow table and as the same rows' JSON lines."""
        if not table.num_rows:
            return
        self._parquet.write_table(table)
        self._jsonl.write(b"".join(json_lines))
        self.rows += table.num_rows

    def close(self) -> list[str]:
        """Finish the shard; returns its files relative to the export directory."""
        self._parquet.close()
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        self._jsonl.close()
        self._parquet_tmp.replace(self.parquet_path)
        self._jsonl_tmp.replace(self.jsonl_path)
        out = self.parquet_path.parent.parent
        return [str(self.parquet_path.relative_to(out)), str(self.jsonl_path.relative_to(out))]

    def abort(self) -> None:
        self._parquet.close()
        self._jsonl.close()
        self._parquet_tmp.unlink(missing_ok=True)
        self._jsonl_tmp.unlink(missing_ok=True)


@dataclass
class ExportState:
    """Progress of one export, saved after every shard."""

    dataset: str
    fingerprint: str
    cursor: str | None = None
    shards: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    dedup_file: str | None = None
    dedup_capacity: int = 0
    complete: bool = False

    @staticmethod
    def path(out: Path) -> Path:
        return out / STATE_DIR / STATE_FILE

    @classmethod
    def load(cls, out: Path) -> ExportState | None:
        path = cls.path(out)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: unreadable export state ({exc}); remove it or use --restart") from exc

    def save(self, out: Path) -> None:
        path = self.path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_bytes(orjson.dumps(self.__dict__, default=_json_default, option=orjson.OPT_INDENT_2))
        tmp.replace(path)

    @property
    def rows_written(self) -> int:
        return sum(int(shard["rows"]) for shard in self.shards)


def remove_partial_files(out: Path) -> None:
    """Delete ``*.tmp`` files that an interrupted run left behind."""
    for folder in (out / "data", out / "jsonl", out / STATE_DIR):
        if folder.is_dir():
            for stray in folder.glob("*.tmp*"):
                stray.unlink()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(out: Path, extra: dict[str, Any]) -> Path:
    """``manifest.json``: every released file with its size and SHA-256 (state excluded)."""
    files = []
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if not path.is_file() or relative.parts[0] == STATE_DIR or relative.name == MANIFEST_FILE:
            continue
        files.append({"path": relative.as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    manifest = {**extra, "files": files}
    target = out / MANIFEST_FILE
    target.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return target
