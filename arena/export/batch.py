"""The per-batch work that parallelises: everything but the order-dependent dedup decision.

A worker process gets a batch of units straight from the database and returns a
:class:`PreparedBatch`: the cleaned candidate rows as an Arrow table and as JSON lines, their
dedup keys, and a small summary per row for the statistics.  The main process then only decides
which rows are duplicates (a Bloom-filter lookup in stream order), takes the kept rows and
writes them, so it stays far from being the bottleneck.
"""

from __future__ import annotations

import gc
import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import pyarrow as pa

from arena.export.cleaning import CleanerConfig, CleanUnit, cleaner_for
from arena.export.dedup import DedupKeyMaker, DedupKeys
from arena.export.release import Anonymizer
from arena.export.source import SourceUnit

if TYPE_CHECKING:
    from arena.export.pipeline import DatasetSpec


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to prepare batches (hashable: workers cache what they build from it)."""

    dataset: str
    cleaner: CleanerConfig
    release_key: bytes
    time_granularity: str
    min_turns: int
    dedup_enabled: bool
    dedup_threshold: float


class RowInfo(NamedTuple):
    """What the statistics need about one candidate row."""

    models: tuple[str, ...]
    language: str
    turn: int
    winner: str | None
    redacted: bool
    pii_counts: dict[str, int]
    moderation_categories: tuple[str, ...]
    timestamp: str


@dataclass
class PreparedBatch:
    read: int
    last_id: str
    table: pa.Table
    json_lines: list[bytes]
    keys: DedupKeys | None
    info: list[RowInfo]
    moderation_fallbacks: int


@lru_cache(maxsize=4)
def dataset_spec(name: str) -> DatasetSpec:
    """The dataset's spec, from ``arena.export.<name>`` (imported lazily: it imports the pipeline)."""
    module = importlib.import_module(f"arena.export.{name}")
    return module.SPEC  # type: ignore[no-any-return]


@lru_cache(maxsize=2)
def _key_maker(threshold: float) -> DedupKeyMaker:
    return DedupKeyMaker(threshold)


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def prompt_of(clean: CleanUnit, unit: SourceUnit) -> str:
    """The dedup key: the user messages of the first side, after redaction."""
    roles = unit.sides[0][0]
    return "\n".join(text for role, text in zip(roles, clean.contents[0], strict=True) if role == "user")


def prepare_batch(config: WorkerConfig, units: list[SourceUnit]) -> PreparedBatch:
    """Filter by turns, clean, build rows, serialise them and make their dedup keys."""
    from arena.export.pipeline import RowContext

    spec = dataset_spec(config.dataset)
    eligible = [unit for unit in units if unit.turns >= config.min_turns]
    cleaned, report = cleaner_for(config.cleaner).clean([unit.sides for unit in eligible])
    context = RowContext(Anonymizer(config.release_key), config.time_granularity)
    rows = [spec.build_row(unit, clean, context) for unit, clean in zip(eligible, cleaned, strict=True)]
    table = pa.Table.from_pylist(rows, schema=spec.schema)
    json_lines = [orjson.dumps(row, default=_json_default, option=orjson.OPT_APPEND_NEWLINE) for row in rows]
    keys = None
    if config.dedup_enabled:
        prompts = [prompt_of(clean, unit) for unit, clean in zip(eligible, cleaned, strict=True)]
        keys = _key_maker(config.dedup_threshold).keys(
            prompts, [unit.meta.get("battle_id") for unit in eligible]
        )
    info = [_row_info(spec, row, clean) for row, clean in zip(rows, cleaned, strict=True)]
    return PreparedBatch(
        len(units), units[-1].source_id, table, json_lines, keys, info, report.moderation_fallbacks
    )


def _row_info(spec: DatasetSpec, row: dict[str, Any], clean: CleanUnit) -> RowInfo:
    categories = (
        {c for side in clean.moderation for tags in side for c in tags} if clean.any_flagged else set()
    )
    return RowInfo(
        models=tuple(spec.models_of_row(row)),
        language=row["language"],
        turn=row["turn"],
        winner=row.get("winner"),
        redacted=clean.redacted,
        pii_counts=clean.pii_counts,
        moderation_categories=tuple(sorted(categories)),
        timestamp=row["timestamp"].isoformat(),
    )


def init_worker() -> None:
    """Worker processes: objects live one batch, so a rarer cyclic GC only saves time."""
    tune_gc()


def tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
