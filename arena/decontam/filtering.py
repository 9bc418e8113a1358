"""``arena-decontam filter``: write the corpus without the documents a scan found contaminated.

Documents are recognised by the hash of their text (the same ``--field`` joined as in the scan), so the
filter works whatever paths the scan was given, and also drops exact duplicates of a contaminated document.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from arena.decontam.records import OnError, ReadStats, Record, iter_chunks, iter_records

logger = logging.getLogger(__name__)

PARQUET_ROWS_PER_WRITE = 10_000


@dataclass
class FilterResult:
    """How many documents were kept and dropped."""

    kept: int
    dropped: int
    skipped_records: list[str]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def contaminated_hashes(matches_path: Path, include_suspected: bool = False) -> set[str]:
    """Hashes of the documents that a scan's matches.jsonl labels contaminated (and suspected, if asked)."""
    if matches_path.is_dir():
        matches_path = matches_path / "matches.jsonl"
    wanted = {"contaminated", "suspected"} if include_suspected else {"contaminated"}
    hashes: set[str] = set()
    with open(matches_path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                match = json.loads(line)
                if match["verdict"] in wanted:
                    hashes.add(text_hash(match["doc_text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{matches_path}:{line_no}: not a match record ({exc})") from exc
    return hashes


def filter_corpus(
    corpus: Iterable[str | Path],
    fields: list[str],
    matches_path: Path,
    out_path: Path,
    *,
    include_suspected: bool = False,
    on_error: OnError = "skip",
) -> FilterResult:
    """Stream ``corpus`` into ``out_path`` (JSONL, .jsonl.gz or .parquet) leaving out contaminated documents."""
    drop = contaminated_hashes(matches_path, include_suspected)
    stats = ReadStats()
    kept = dropped = 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(out_path.name + ".partial")
    writer = _ParquetSink(tmp_path) if out_path.suffix == ".parquet" else _JsonlSink(tmp_path)
    try:
        for chunk in iter_chunks(iter_records(corpus, fields, on_error=on_error, stats=stats), 1000):
            keep: list[Record] = []
            for record in chunk:
                if text_hash(record.text) in drop:
                    dropped += 1
                else:
                    keep.append(record)
            kept += len(keep)
            writer.write([r.raw for r in keep])
    finally:
        writer.close()
    tmp_path.replace(out_path)
    logger.info("kept %d documents, dropped %d", kept, dropped)
    return FilterResult(kept, dropped, stats.skipped)


class _JsonlSink:
    def __init__(self, path: Path):
        self._handle: IO[str] = (
            gzip.open(path, "wt", encoding="utf-8")  # noqa: SIM115 - closed by close()
            if path.name.endswith(".gz.partial")
            else open(path, "w", encoding="utf-8")  # noqa: SIM115
        )

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        self._handle.close()


class _ParquetSink:
    def __init__(self, path: Path):
        self._path = path
        self._writer: Any = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        if self._writer is None:
            table = pa.Table.from_pylist(rows)
            self._writer = pq.ParquetWriter(self._path, table.schema)
        else:
            table = pa.Table.from_pylist(rows, schema=self._writer.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            pq.write_table(pa.table({}), self._path)
        else:
            self._writer.close()
