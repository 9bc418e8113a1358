"""The export loop shared by both datasets: stream → prepare → dedup → shard → checkpoint.

Batches of units stream from the database in id order.  Worker processes prepare them (turn
filter, redaction, language, moderation, rows as Arrow and JSON, dedup keys: see
:mod:`arena.export.batch`) while the main process reads the next batches; the main process then
decides duplicates in stream order, writes the kept rows to the current shard and, every
``shard_size`` rows, closes the shard and saves the resume state.  A re-run with the same
options skips finished shards and goes on after the last saved id; different options are
refused (``--restart`` starts over).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
from sqlalchemy import Engine

from arena.export.batch import PreparedBatch, RowInfo, WorkerConfig, init_worker, prepare_batch, tune_gc
from arena.export.cleaning import CleanerConfig, CleanUnit
from arena.export.dedup import BloomFilter, DedupConfig, PromptDeduplicator
from arena.export.release import Anonymizer, ExportError, ExportFilters, ReleasePolicy
from arena.export.source import SourceUnit, allowed_models
from arena.export.writer import STATE_DIR, ExportState, ShardWriter, remove_partial_files, write_manifest
from arena.progress import progress_bar

logger = logging.getLogger(__name__)


class Source(Protocol):
    def count(self, after_id: str | None = None) -> int: ...

    def batches(self, after_id: str | None, batch_size: int) -> Iterator[list[SourceUnit]]: ...


@dataclass(frozen=True)
class RowContext:
    anonymizer: Anonymizer
    time_granularity: str


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between the conversation and the battle dataset."""

    name: str
    title: str
    schema: pa.Schema
    make_source: Callable[[Engine, ExportFilters, list[str]], Source]
    build_row: Callable[[SourceUnit, CleanUnit, RowContext], dict[str, Any]]
    models_of_row: Callable[[dict[str, Any]], list[str]]
    field_docs: dict[str, str]
    description: str


@dataclass(frozen=True)
class ExportOptions:
    """Everything that decides an export's content (the last five only decide how it runs)."""

    out: Path
    filters: ExportFilters = field(default_factory=ExportFilters)
    policy: ReleasePolicy = field(default_factory=ReleasePolicy)
    cleaner: CleanerConfig = field(default_factory=CleanerConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    release: str = "unnamed"
    time_granularity: str = "day"
    shard_size: int = 100_000
    batch_size: int = 5_000
    workers: int = 0
    progress: bool = True
    restart: bool = False
    max_batches: int | None = None  # stop early (tests of resume); the state stays resumable

    def fingerprint(self, anonymizer: Anonymizer, dataset: str) -> str:
        content = {
            "dataset": dataset,
            "filters": asdict(self.filters),
            "policy": asdict(self.policy),
            "languages": self.cleaner.languages,
            "language_chars": self.cleaner.language_chars,
            "moderation": self.cleaner.moderation,
            "dedup": asdict(self.dedup) | {"capacity": None},
            "release": self.release,
            "key": anonymizer.fingerprint(),
            "time_granularity": self.time_granularity,
            "shard_size": self.shard_size,
            "batch_size": self.batch_size,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ExportResult:
    out: Path
    rows_written: int
    rows_read: int
    shards: int
    complete: bool
    stats: dict[str, Any]


def new_stats() -> dict[str, Any]:
    return {
        "rows_read": 0,
        "rows_written": 0,
        "dropped": {"min_turns": 0, "exact_duplicate": 0, "near_duplicate": 0},
        "models": {},
        "languages": {},
        "turns": {},
        "winners": {},
        "redacted_rows": 0,
        "pii": {},
        "moderation_flagged_rows": 0,
        "moderation_categories": {},
        "moderation_fallbacks": 0,
        "first_timestamp": None,
        "last_timestamp": None,
    }


def _bump(counter: dict[str, int], key: str, by: int = 1) -> None:
    counter[key] = counter.get(key, 0) + by


def _record_row(stats: dict[str, Any], info: RowInfo) -> None:
    stats["rows_written"] += 1
    for model in info.models:
        _bump(stats["models"], model)
    _bump(stats["languages"], info.language)
    _bump(stats["turns"], str(info.turn))
    if info.winner is not None:
        _bump(stats["winners"], info.winner)
    if info.redacted:
        stats["redacted_rows"] += 1
        for kind, count in info.pii_counts.items():
            _bump(stats["pii"], kind, count)
    if info.moderation_categories:
        stats["moderation_flagged_rows"] += 1
        for category in info.moderation_categories:
            _bump(stats["moderation_categories"], category)
    if stats["first_timestamp"] is None or info.timestamp < stats["first_timestamp"]:
        stats["first_timestamp"] = info.timestamp
    if stats["last_timestamp"] is None or info.timestamp > stats["last_timestamp"]:
        stats["last_timestamp"] = info.timestamp


def _prepare_out(options: ExportOptions, dataset: str, fingerprint: str) -> ExportState | None:
    out = options.out
    if options.restart and out.exists():
        for child in ("data", "jsonl", "plots", STATE_DIR, "README.md", "manifest.json"):
            target = out / child
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    state = ExportState.load(out)
    if state is None:
        if any((out / child).exists() for child in ("data", "jsonl", "README.md")):
            raise ExportError(
                f"{out} already holds files but no export state; use an empty --out or --restart"
            )
        return None
    if state.dataset != dataset:
        raise ExportError(f"{out} holds a {state.dataset} export; use another --out for {dataset}")
    if state.fingerprint != fingerprint:
        raise ExportError(
            f"{out} holds an export made with different options (or release key); "
            "re-run with the same options to resume, or add --restart to start over"
        )
    remove_partial_files(out)
    return state


def _prepared_batches(
    batches: Iterator[list[SourceUnit]], config: WorkerConfig, workers: int
) -> Iterator[PreparedBatch]:
    """Prepare batches in stream order, in ``workers`` processes (0: in this process) that
    overlap with the database reads; at most ``workers + 1`` batches wait at a time."""
    if workers <= 0:
        for units in batches:
            yield prepare_batch(config, units)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker) as pool:
        pending: deque[Future[PreparedBatch]] = deque()
        for units in batches:
            pending.append(pool.submit(prepare_batch, config, units))
            if len(pending) > workers + 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def run_export(
    spec: DatasetSpec, engine: Engine, options: ExportOptions, anonymizer: Anonymizer
) -> ExportResult:
    """Export one dataset to ``options.out``, resuming a previous run of the same export."""
    if options.shard_size < 1 or options.batch_size < 1:
        raise ExportError("--shard-size and --batch-size must be positive")
    fingerprint = options.fingerprint(anonymizer, spec.name)
    state = _prepare_out(options, spec.name, fingerprint)
    models = allowed_models(engine, options.policy, options.filters.models)
    source = spec.make_source(engine, options.filters, models)
    total: int | None = None  # rows of a fresh export, counted once
    if state is None:
        state = ExportState(spec.name, fingerprint, stats=new_stats())
        total = source.count()
        state.dedup_capacity = max(total, 1)
    elif state.complete:
        logger.info("%s is already complete (%d rows); nothing to do", options.out, state.rows_written)
        return _result(options.out, state)
    if not models:
        logger.warning("no model passes the release policy (%s)", options.policy.describe())
    dedup = _load_dedup(options, state)
    remaining = (total if total is not None else source.count(state.cursor)) if models else 0
    logger.info("exporting %s to %s: %d %s to read", spec.name, options.out, remaining, spec.name)
    batches = source.batches(state.cursor, options.batch_size) if models else iter(())
    config = WorkerConfig(
        dataset=spec.name,
        cleaner=options.cleaner,
        release_key=anonymizer.key,
        time_granularity=options.time_granularity,
        min_turns=options.filters.min_turns,
        dedup_enabled=options.dedup.enabled,
        dedup_threshold=options.dedup.threshold,
    )
    thresholds = gc.get_threshold()
    tune_gc()
    try:
        finished = _export_batches(
            spec, options, state, dedup, _prepared_batches(batches, config, options.workers), remaining
        )
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    if finished:
        _finish(spec, options, state, models)
    return _result(options.out, state)


def _load_dedup(options: ExportOptions, state: ExportState) -> PromptDeduplicator:
    config = DedupConfig(
        enabled=options.dedup.enabled,
        threshold=options.dedup.threshold,
        capacity=state.dedup_capacity,
        false_positive_rate=options.dedup.false_positive_rate,
    )
    dedup = PromptDeduplicator(config)
    if state.dedup_file:
        dedup.bloom = BloomFilter.load(options.out / STATE_DIR / state.dedup_file, dedup.bloom.num_hashes)
    return dedup


def _export_batches(
    spec: DatasetSpec,
    options: ExportOptions,
    state: ExportState,
    dedup: PromptDeduplicator,
    prepared: Iterator[PreparedBatch],
    total: int,
) -> bool:
    """Write all batches; returns False when stopped early by ``max_batches``."""
    writer: ShardWriter | None = None
    cursor = state.cursor
    with progress_bar(f"export {spec.name} (rows)", total, options.progress) as bar:
        try:
            for done, batch in enumerate(prepared):
                if options.max_batches is not None and done >= options.max_batches:
                    return False
                table, lines = _kept_rows(state.stats, dedup, batch)
                if writer is None:
                    writer = ShardWriter(options.out, len(state.shards), spec.schema)
                writer.write(table, lines)
                cursor = batch.last_id
                bar.advance(batch.read)
                if writer.rows >= options.shard_size:
                    _checkpoint(options, state, dedup, writer, cursor)
                    writer = None
            if writer is not None and writer.rows:
                _checkpoint(options, state, dedup, writer, cursor)
                writer = None
            state.cursor = cursor
            return True
        finally:
            if hasattr(prepared, "close"):
                prepared.close()
            if writer is not None:
                writer.abort()


def _kept_rows(
    stats: dict[str, Any], dedup: PromptDeduplicator, batch: PreparedBatch
) -> tuple[pa.Table, list[bytes]]:
    """Decide duplicates in stream order; count everything; the kept rows' table and JSON lines."""
    stats["rows_read"] += batch.read
    stats["dropped"]["min_turns"] += batch.read - len(batch.info)
    stats["moderation_fallbacks"] += batch.moderation_fallbacks
    verdicts = dedup.decide(batch.keys) if batch.keys is not None else ["keep"] * len(batch.info)
    kept = []
    for index, verdict in enumerate(verdicts):
        if verdict == "keep":
            kept.append(index)
            _record_row(stats, batch.info[index])
        elif verdict == "exact":
            stats["dropped"]["exact_duplicate"] += 1
        else:
            stats["dropped"]["near_duplicate"] += 1
    if len(kept) == len(verdicts):
        return batch.table, batch.json_lines
    return batch.table.take(kept), [batch.json_lines[i] for i in kept]


def _checkpoint(
    options: ExportOptions,
    state: ExportState,
    dedup: PromptDeduplicator,
    writer: ShardWriter,
    cursor: str | None,
) -> None:
    """Close the shard, then save the dedup filter and the state that points at both."""
    files = writer.close()
    state.shards.append(
        {"index": writer.index, "rows": writer.rows, "files": files, "last_source_id": cursor}
    )
    dedup_name = f"dedup-{writer.index:05d}.npy"
    dedup.bloom.save(options.out / STATE_DIR / dedup_name)
    previous = state.dedup_file
    state.dedup_file = dedup_name
    state.cursor = cursor
    state.save(options.out)
    if previous and previous != dedup_name:
        (options.out / STATE_DIR / previous).unlink(missing_ok=True)
    logger.info("shard %d written (%d rows)", writer.index, writer.rows)


def _finish(spec: DatasetSpec, options: ExportOptions, state: ExportState, models: list[str]) -> None:
    from arena.export.card import write_card

    write_card(spec, options, state, models)
    write_manifest(
        options.out,
        {
            "dataset": spec.name,
            "release": options.release,
            "rows": state.rows_written,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    _forget_database_positions(options.out, state)
    state.complete = True
    state.save(options.out)


def _forget_database_positions(out: Path, state: ExportState) -> None:
    """A finished export needs no resume point: drop the database ids and the dedup filter
    from the state, so nothing in the output folder refers back to the database."""
    state.cursor = None
    for shard in state.shards:
        shard.pop("last_source_id", None)
    if state.dedup_file:
        (out / STATE_DIR / state.dedup_file).unlink(missing_ok=True)
        state.dedup_file = None


def _result(out: Path, state: ExportState) -> ExportResult:
    return ExportResult(
        out=out,
        rows_written=state.rows_written,
        rows_read=int(state.stats.get("rows_read", 0)),
        shards=len(state.shards),
        complete=state.complete,
        stats=state.stats,
    )
