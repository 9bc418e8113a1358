"""Public battle logs -> validated battle rows -> the arena database, all or nothing.

Two layouts carry the same fields:

* FastChat's ``clean_battle_*.json`` (a JSON array, or JSON Lines), as ``clean_battle_data.py``
  writes it;
* the lmarena human-preference datasets (Parquet or JSON Lines, one battle per row).

Per battle: ``model_a``, ``model_b``, ``winner`` (``model_a``, ``model_b``, ``tie``,
``tie (bothbad)``), ``tstamp`` (Unix seconds or ISO 8601) and, when present, ``question_id``,
``turn``, ``anony``, ``language``, ``is_code``, ``conv_metadata`` (answer lengths and markdown
counts, for style control), ``dedup_tag`` (lmarena's prompt de-duplication) and
``conversation_a`` (its first user turn gives the prompt hash for our own de-duplication).

Every row is checked before anything is written; a file with bad rows is refused as a whole,
with each bad row's line (JSON Lines) or row number. A row's identity is a hash of its question
id and outcome fields, so importing a file again (or an overlapping one) adds only new battles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arena.db.models import IMPORT_SOURCE_PREFIX, VoteChoice
from arena.ranking.battles import WINNER_ALIASES
from arena.ranking.dedup import prompt_hash

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20
CHOICES = {"a": VoteChoice.A, "b": VoteChoice.B, "tie": VoteChoice.TIE, "both_bad": VoteChoice.BOTH_BAD}
# FastChat's conv_metadata keys -> our style features (summed over the answers of one side).
STYLE_KEYS = {"tokens": "sum_assistant_{side}_tokens", "headers": "header_count_{side}",
              "lists": "list_count_{side}", "bold": "bold_count_{side}"}


class ImportFileError(ValueError):
    """The file cannot be imported; ``errors`` lists every problem found (row numbers included)."""

    def __init__(self, path: Path, errors: list[str], total: int | None = None):
        self.errors = errors
        shown = errors[:MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        lines = "\n".join(f"  {e}" for e in shown) + (f"\n  ... and {more} more" if more > 0 else "")
        counted = f" in {total} rows" if total is not None else ""
        super().__init__(f"{path}: {len(errors)} bad rows{counted}, nothing imported:\n{lines}")


@dataclass(frozen=True)
class ImportedBattle:
    """One validated battle, ready to become a Battle and a Vote row."""

    source_key: str
    model_a: str
    model_b: str
    choice: VoteChoice
    voted_at: datetime
    turns: int
    anonymous: bool
    tags: dict[str, Any]
    style: dict[str, dict[str, int]] | None
    prompt_hash: str | None
    prompt_downsampled: bool


@dataclass
class ParsedFile:
    """The battles of a file, without duplicates within it, and how many rows were duplicates."""

    battles: list[ImportedBattle] = field(default_factory=list)
    duplicates: int = 0
    rows: int = 0


# ----------------------------------------------------------------------------- reading files


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each row of a .json (array or JSON Lines), .jsonl or .parquet file;
    ``where`` is ``line N`` or ``row N`` (1-based) for error messages."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(path)
    elif suffix in (".json", ".jsonl", ".ndjson"):
        yield from _json_rows(path)
    else:
        raise ImportFileError(path, [f"unknown file type {suffix!r}: use .json, .jsonl or .parquet"])


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ImportFileError(path, [f"not a readable Parquet file: {exc}"]) from exc
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"row {number}", row


def _json_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith("["):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ImportFileError(path, [f"line {exc.lineno}: invalid JSON ({exc.msg})"]) from exc
        for number, row in enumerate(rows, start=1):
            yield f"row {number}", row
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {number}", {"__invalid_json__": exc.msg}


# ----------------------------------------------------------------------------- validating rows


def parse_file(path: Path) -> ParsedFile:
    """Read and validate every row; raise :class:`ImportFileError` listing all bad rows."""
    parsed, errors, seen = ParsedFile(), [], set()
    for where, row in read_rows(path):
        parsed.rows += 1
        try:
            battle = parse_row(row)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if battle.source_key in seen:
            parsed.duplicates += 1
            continue
        seen.add(battle.source_key)
        parsed.battles.append(battle)
    if errors:
        raise ImportFileError(path, errors, parsed.rows)
    if not parsed.rows:
        raise ImportFileError(path, ["the file holds no battles"])
    return parsed


def parse_row(row: Any) -> ImportedBattle:
    """One validated battle from one row; ValueError says what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object with battle fields, got {type(row).__name__}")
    if "__invalid_json__" in row:
        raise ValueError(f"invalid JSON ({row['__invalid_json__']})")
    model_a, model_b = _model(row, "model_a"), _model(row, "model_b")
    if model_a == model_b:
        raise ValueError(f"model_a and model_b are the same model {model_a!r}")
    choice = _choice(row.get("winner"))
    voted_at = _timestamp(row.get("tstamp"))
    turns = _positive_int(row.get("turn", 1), "turn")
    language = _language(row.get("language"))
    categories = ["overall", f"language:{language}"]
    if turns > 1:
        categories.append("multi_turn")
    if row.get("is_code") is True:
        categories.append("coding")
    question_id = row.get("question_id")
    key = json.dumps([None if question_id is None else str(question_id), model_a, model_b, choice.value,
                      voted_at.isoformat(), turns])
    dedup_tag = row.get("dedup_tag") if isinstance(row.get("dedup_tag"), dict) else None
    return ImportedBattle(
        source_key=hashlib.sha256(key.encode()).hexdigest(),
        model_a=model_a,
        model_b=model_b,
        choice=choice,
        voted_at=voted_at,
        turns=turns,
        anonymous=_boolean(row.get("anony", True), "anony"),
        tags={"language": language, "categories": categories, "imported": True},
        style=_style(row.get("conv_metadata")),
        prompt_hash=_prompt_hash(row.get("conversation_a")),
        prompt_downsampled=bool(dedup_tag and dedup_tag.get("high_freq") and not dedup_tag.get("sampled")),
    )


def _model(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a model name, got {value!r}")
    if len(value) > 200:
        raise ValueError(f"{name} is longer than 200 characters")
    return value.strip()


def _choice(winner: Any) -> VoteChoice:
    normalized = WINNER_ALIASES.get(str(winner).strip().lower()) if isinstance(winner, str) else None
    if normalized is None:
        raise ValueError(f"winner must be model_a, model_b, tie or 'tie (bothbad)', got {winner!r}")
    return CHOICES[normalized]


def _timestamp(value: Any) -> datetime:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"tstamp must be Unix seconds or an ISO 8601 time, got {value!r}")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 < value < 32503680000:  # before the year 3000
            raise ValueError(f"tstamp {value!r} is not a plausible Unix time")
        return datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"tstamp {value!r} is not an ISO 8601 time") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"tstamp must be Unix seconds or an ISO 8601 time, got {value!r}")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _language(value: Any) -> str:
    """FastChat's language name (``English``) or an ISO code, as our ISO 639-1 tag; else ``unknown``."""
    if not isinstance(value, str) or not value.strip():
        return "unknown"
    from lingua import IsoCode639_1, Language

    text = value.strip()
    try:
        return str(Language.from_str(text).iso_code_639_1.name.lower())
    except ValueError:
        pass
    try:
        return str(IsoCode639_1.from_str(text.lower()).name.lower())
    except ValueError:
        return "unknown"


def _style(metadata: Any) -> dict[str, dict[str, int]] | None:
    """Our per-side style counts from FastChat's ``conv_metadata``; None when it is absent."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ValueError("conv_metadata must be an object")
    return {side: {feature: _count(metadata, key.format(side=side)) for feature, key in STYLE_KEYS.items()}
            for side in ("a", "b")}


def _count(metadata: dict[str, Any], key: str) -> int:
    """A count, or the sum of a dict of counts (``{"h1": 2, "h2": 0}``), non-negative."""
    value = metadata.get(key, 0)
    values: Iterable[Any] = value.values() if isinstance(value, dict) else [value]
    total = 0
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or not math.isfinite(v):
            raise ValueError(f"conv_metadata.{key} must be a non-negative count, got {value!r}")
        total += int(v)
    return total


def _prompt_hash(conversation: Any) -> str | None:
    """The hash of the first user turn of ``conversation_a`` (a list of role/content messages)."""
    if not isinstance(conversation, list | tuple):
        return None
    for message in conversation:
        if isinstance(message, dict) and message.get("role") == "user":
            return prompt_hash(str(message.get("content") or ""))
    return None


def source_name(label: str) -> str:
    """``import:<label>``: what Battle.source says for battles of this import."""
    label = label.strip()
    if not label or len(label) > 90 or any(c.isspace() for c in label):
        raise ValueError(f"source label must be 1-90 characters without spaces, got {label!r}")
    return f"{IMPORT_SOURCE_PREFIX}{label}"

