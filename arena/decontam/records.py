"""Reading benchmark and corpus files: JSONL, JSON arrays, Parquet and CSV, gzip or not, or a directory of them.

Every record is streamed (JSON arrays excepted: a JSON array is one value, so it is parsed whole; use JSONL
for corpora that do not fit in memory). A record that cannot be read or lacks a text field is reported with
its file and line, then skipped (``on_error="skip"``) or raised (``on_error="fail"``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

logger = logging.getLogger(__name__)

OnError = Literal["skip", "fail"]
SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
PARQUET_BATCH_ROWS = 1024
ID_FIELDS = ("task_id", "question_id", "id", "uid")
"""Fields taken as a benchmark item's own id, in this order, when ``id_field="auto"``."""


class BadRecordError(ValueError):
    """A record that cannot be used; the message names the file and line."""


class InputError(ValueError):
    """An input path that does not exist or has an unsupported format."""


@dataclass(frozen=True)
class Record:
    """One benchmark item or corpus document.

    ``doc_id`` is stable across runs (``file:line``, or the record's own id such as HumanEval's ``task_id``
    when an id field is used), so matches can be traced back. ``raw`` is the record as read, kept for ``filter``.
    """

    doc_id: str
    source: str
    line: int
    text: str
    raw: dict[str, Any] = field(compare=False, repr=False)


@dataclass
class ReadStats:
    """How many records were read and which were skipped (with the reason, file and line)."""

    read: int = 0
    skipped: list[str] = field(default_factory=list)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus every supported file under named directories (sorted, so chunking is stable)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p) is not None))
        elif path.is_file():
            if _format_of(path) is None:
                raise InputError(f"{path}: unsupported format (expected {', '.join(SUPPORTED_SUFFIXES)}, optionally .gz)")
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or directory")
    if not files:
        raise InputError(f"no input files found in {[str(p) for p in paths]}")
    return files


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if not suffixes:
        return None
    suffix = suffixes[-1]
    if suffix == ".ndjson":
        return "jsonl"
    return suffix.lstrip(".") if suffix in SUPPORTED_SUFFIXES else None


def _open_text(path: Path) -> TextIO:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def join_fields(row: dict[str, Any], fields: list[str], where: str) -> str:
    """The named fields of ``row`` joined by newlines (lists, e.g. answer choices, are joined too)."""
    parts: list[str] = []
    for name in fields:
        if name not in row:
            raise BadRecordError(f"{where}: field {name!r} is missing (record has {sorted(row)[:10]})")
        value = row[name]
        if value is None:
            continue
        if isinstance(value, list | tuple):
            parts.extend(str(v) for v in value if v is not None)
        elif isinstance(value, str | int | float):
            parts.append(str(value))
        else:
            raise BadRecordError(f"{where}: field {name!r} is a {type(value).__name__}, not text")
    return "\n".join(p for p in parts if p)


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | BadRecordError]]:
    """(line, row) for JSONL; a file whose first character is '[' is read as a JSON array (line of each item)."""
    with _open_text(path) as handle:
        first = handle.read(1)
        while first and first.isspace():
            first = handle.read(1)
        if first == "[":
            yield from _json_array_rows(path, first + handle.read())
            return
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, BadRecordError(f"{path}:{line_no}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                yield line_no, BadRecordError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
                continue
            yield line_no, row


def _json_array_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any] | BadRecordError]]:
    decoder = json.JSONDecoder()
    try:
        rows = decoder.decode(text)
    except json.JSONDecodeError as exc:
        yield exc.lineno, BadRecordError(f"{path}:{exc.lineno}: invalid JSON array ({exc.msg}); file not read")
        return
    if not isinstance(rows, list):
        yield 1, BadRecordError(f"{path}:1: expected a JSON array of objects; file not read")
        return
    # Line numbers of each element: find each top-level object start by scanning once.
    starts = _array_element_lines(text)
    for index, row in enumerate(rows):
        line_no = starts[index] if index < len(starts) else 0
        if isinstance(row, dict):
            yield line_no, row
        else:
            yield line_no, BadRecordError(f"{path}:{line_no}: array element {index} is not an object")


def _array_element_lines(text: str) -> list[int]:
    """The line on which each top-level element of a JSON array starts."""
    lines: list[int] = []
    depth = 0
    in_string = escaped = False
    line = 1
    expecting = True
    for char in text:
        if char == "\n":
            line += 1
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
            if depth == 1 and expecting:
                lines.append(line)
                expecting = False
        elif char in "[{":
            if depth == 1 and expecting:
                lines.append(line)
                expecting = False
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 1:
            expecting = True
        elif depth == 1 and expecting and not char.isspace():
            lines.append(line)
            expecting = False
    return lines


def _csv_rows(path: Path, columns: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any] | BadRecordError]]:
    """CSV rows as dicts: named by the header line, or by ``columns`` for header-less files."""
    with _open_text(path) as handle:
        reader = csv.DictReader(handle, fieldnames=columns) if columns else csv.DictReader(handle)
        header = reader.fieldnames or []
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, BadRecordError(f"{path}:{reader.line_num}: invalid CSV ({exc})")
                continue
            line_no = reader.line_num
            if None in row or any(v is None for v in row.values()):
                yield line_no, BadRecordError(
                    f"{path}:{line_no}: expected {len(header)} columns"
                    + (" as given by --columns" if columns else " as in the header (header-less? give --columns)")
                )
                continue
            yield line_no, dict(row)


def _parquet_rows(path: Path, columns: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any] | BadRecordError]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    row_no = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row


def _rows(path: Path, fmt: str, columns: list[str] | None) -> Iterator[tuple[int, dict[str, Any] | BadRecordError]]:
    """The rows of one file; a file that cannot be read at all raises one :class:`InputError` naming it."""
    if fmt == "csv":
        reader = _csv_rows(path, columns)
    elif fmt == "parquet":
        reader = _parquet_rows(path)
    else:
        reader = _json_rows(path)
    read = 0
    try:
        for row in reader:
            read += 1
            yield row
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} after "
                         f"{read} records); convert it to UTF-8") from exc
    except (EOFError, zlib.error) as exc:
        raise InputError(f"{path}: truncated or damaged gzip ({exc}) after {read} records") from exc
    except gzip.BadGzipFile as exc:
        raise InputError(f"{path}: not a gzip file ({exc}); rename it without .gz if it is plain text") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from exc
    except Exception as exc:  # pyarrow's ArrowInvalid and kin: garbage that calls itself Parquet
        if type(exc).__module__.startswith("pyarrow"):
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
        raise


def _record_id(row: dict[str, Any], id_field: str | None) -> str | None:
    """The record's own id: the named field, or with ``"auto"`` the first of :data:`ID_FIELDS` present."""
    if id_field is None:
        return None
    names = ID_FIELDS if id_field == "auto" else (id_field,)
    for name in names:
        value = row.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value)
    return None


def iter_records(
    paths: Iterable[str | Path],
    fields: list[str],
    *,
    on_error: OnError = "skip",
    stats: ReadStats | None = None,
    root: Path | None = None,
    id_field: str | None = None,
    columns: list[str] | None = None,
) -> Iterator[Record]:
    """Stream the records of every file, their ``fields`` joined into ``text``.

    Records whose text is empty after joining are skipped silently (nothing to match); unreadable ones are
    logged with file and line and skipped, or raised when ``on_error="fail"``. A file that cannot be read at
    all (truncated gzip, not UTF-8, not Parquet) raises :class:`InputError` naming it. ``id_field`` names
    the field holding each record's own id (``"auto"``: the first of :data:`ID_FIELDS` present); ``columns``
    names the columns of header-less CSV files.
    """
    if not fields:
        raise InputError("at least one --field is needed")
    stats = stats if stats is not None else ReadStats()
    for path in expand_paths(paths):
        fmt = _format_of(path)
        assert fmt is not None
        label = _label(path, root)
        if fmt == "csv" and columns is None:
            _check_csv_header(path, fields)
        for line_no, row in _rows(path, fmt, columns):
            if isinstance(row, BadRecordError):
                _handle_bad(row, on_error, stats)
                continue
            try:
                text = join_fields(row, fields, f"{path}:{line_no}")
            except BadRecordError as exc:
                _handle_bad(exc, on_error, stats)
                continue
            stats.read += 1
            if text.strip():
                own_id = _record_id(row, id_field)
                yield Record(own_id or f"{label}:{line_no}", label, line_no, text, row)


def _check_csv_header(path: Path, fields: list[str]) -> None:
    """A CSV whose first line names none of the wanted fields is header-less: say so instead of skipping all."""
    try:
        with _open_text(path) as handle:
            header = next(csv.reader(handle), [])
    except (UnicodeDecodeError, EOFError, OSError, zlib.error):
        return  # reported with its reason when the rows are read
    if header and not set(fields) & set(header):
        raise InputError(
            f"{path}: the first line has none of the fields {fields} (it starts {header[:3]}); "
            "for a CSV without a header line give the column names with --columns"
        )


def _label(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(path)


def _handle_bad(error: BadRecordError, on_error: OnError, stats: ReadStats) -> None:
    if on_error == "fail":
        raise error
    logger.warning("skipping bad record: %s", error)
    stats.skipped.append(str(error))


def iter_chunks(records: Iterable[Record], chunk_size: int) -> Iterator[list[Record]]:
    """Consecutive lists of at most ``chunk_size`` records (the unit of work, of parallelism and of resume)."""
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
