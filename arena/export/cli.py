"""``arena export``: write the public conversation and battle datasets.

    arena export conversations --out dist/conversations
    arena export battles --out dist/battles --since 2026-01-01 --min-turns 1

Re-running the same command resumes an interrupted export; ``--restart`` starts over.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from arena.config import get_settings
from arena.export.datasets import DATASET_DESCRIPTIONS
from arena.export.release import (
    DEFAULT_ALLOWED_LICENSES,
    INSECURE_DEFAULT_SECRET,
    Anonymizer,
    ExportError,
    ExportFilters,
    ReleasePolicy,
    derive_release_key,
)
from arena.progress import configure_cli_logging, print_error

if TYPE_CHECKING:
    from arena.export.pipeline import ExportResult

app = typer.Typer(help="Export the public datasets (conversations, battles) from the arena database.")
logger = logging.getLogger(__name__)
console = Console()

OutOption = typer.Option(..., "--out", help="Output directory (one dataset per directory)")
DatabaseOption = typer.Option(None, "--database-url", help="SQLAlchemy URL (default: ARENA_DATABASE_URL)")
SinceOption = typer.Option(None, help="First day to include (YYYY-MM-DD, UTC)", formats=["%Y-%m-%d"])
UntilOption = typer.Option(
    None, help="Last day to include (YYYY-MM-DD, UTC, inclusive)", formats=["%Y-%m-%d"]
)
ModelOption = typer.Option(None, "--model", help="Only these models (repeatable); battles need both")
MinTurnsOption = typer.Option(1, help="Minimum number of user turns")
LicenseOption = typer.Option(
    None,
    "--license-allow",
    help=f"Licenses whose models may be released (default: {', '.join(DEFAULT_ALLOWED_LICENSES)})",
)
AllLicensesOption = typer.Option(False, "--all-licenses", help="No license filter (internal exports only)")
ReleaseOption = typer.Option(None, help="Release name; ids are re-keyed per release (default: today's date)")
ReleaseKeyOption = typer.Option(
    None,
    envvar="ARENA_EXPORT_RELEASE_KEY",
    help="Explicit release key for the anonymous ids (default: derived from ARENA_SECRET_KEY and --release)",
)
GranularityOption = typer.Option("day", help="Timestamp resolution: day or hour")
LanguagesOption = typer.Option("common", help="Language set: common (fast), all, or off")
LanguageCharsOption = typer.Option(64, help="Characters of the first prompt given to the language detector")
ModerationOption = typer.Option(
    "auto", help="auto (OpenAI if OPENAI_API_KEY is set, else word list), openai, wordlist, off"
)
DedupOption = typer.Option(True, "--dedup/--no-dedup", help="Drop exact and near-duplicate prompts")
ThresholdOption = typer.Option(0.8, help="Near-duplicate Jaccard threshold")
ShardOption = typer.Option(100_000, help="Rows per shard")
BatchOption = typer.Option(5_000, help="Rows per batch")
WorkersOption = typer.Option(None, help="Cleaning processes (default: CPU count; 0: in-process)")
RestartOption = typer.Option(False, "--restart", help="Discard a previous export in --out and start over")
ProgressOption = typer.Option(True, "--progress/--no-progress")


def _moderation_mode(choice: str, api_key: str | None) -> str:
    if choice == "auto":
        return "openai" if api_key else "wordlist"
    if choice not in ("openai", "wordlist", "off"):
        raise ExportError(f"--moderation must be auto, openai, wordlist or off, got {choice!r}")
    return choice


def _as_date(value: datetime | None) -> date | None:
    return value.date() if value else None


def _run(dataset: str, **kwargs: object) -> None:
    from sqlalchemy.exc import SQLAlchemyError  # here: `arena --help` should not load SQLAlchemy

    configure_cli_logging("%(levelname)s %(name)s: %(message)s")
    try:
        result = _export(dataset, **kwargs)  # type: ignore[arg-type]
    except (ExportError, OSError, ValueError) as exc:
        print_error(console, str(exc))
        raise typer.Exit(code=2) from exc
    except SQLAlchemyError as exc:
        print_error(console, f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}", label="database error")
        raise typer.Exit(code=2) from exc
    _print_summary(dataset, result)


def _export(
    dataset: str,
    out: Path,
    database_url: str | None,
    since: datetime | None,
    until: datetime | None,
    model: list[str] | None,
    min_turns: int,
    license_allow: list[str] | None,
    all_licenses: bool,
    release: str | None,
    release_key: str | None,
    time_granularity: str,
    languages: str,
    language_chars: int,
    moderation: str,
    dedup: bool,
    near_dup_threshold: float,
    shard_size: int,
    batch_size: int,
    workers: int | None,
    restart: bool,
    progress: bool,
) -> ExportResult:
    # The pipeline is imported here, not at module level: it is slow to import (see datasets.py).
    from arena.db import get_engine
    from arena.export.batch import dataset_spec
    from arena.export.cleaning import CleanerConfig
    from arena.export.dedup import DedupConfig
    from arena.export.pipeline import ExportOptions, run_export

    settings = get_settings()
    release = release or datetime.now(UTC).date().isoformat()
    if release_key:
        key = release_key.encode()
    else:
        if settings.secret_key == INSECURE_DEFAULT_SECRET:
            logger.warning(
                "ARENA_SECRET_KEY is the insecure default: release ids are only as secret as it is"
            )
        key = derive_release_key(settings.secret_key, release)
    if time_granularity not in ("day", "hour"):
        raise ExportError(f"--time-granularity must be day or hour, got {time_granularity!r}")
    if not 0.0 < near_dup_threshold <= 1.0:
        raise ExportError(f"--near-dup-threshold must be in (0, 1], got {near_dup_threshold}")
    options = ExportOptions(
        out=out,
        filters=ExportFilters(_as_date(since), _as_date(until), tuple(model or ()), min_turns),
        policy=ReleasePolicy(
            tuple(license_allow) if license_allow else DEFAULT_ALLOWED_LICENSES, not all_licenses
        ),
        cleaner=CleanerConfig(
            languages=languages,
            language_chars=language_chars,
            moderation=_moderation_mode(moderation, settings.openai_api_key),
            wordlist=str(settings.moderation_wordlist),
            openai_api_key=settings.openai_api_key,
        ),
        dedup=DedupConfig(enabled=dedup, threshold=near_dup_threshold),
        release=release,
        time_granularity=time_granularity,
        shard_size=shard_size,
        batch_size=batch_size,
        workers=workers if workers is not None else (os.cpu_count() or 1),
        progress=progress,
        restart=restart,
    )
    if languages not in ("common", "all", "off"):
        raise ExportError(f"--languages must be common, all or off, got {languages!r}")
    if language_chars < 8:
        raise ExportError(f"--language-chars must be at least 8, got {language_chars}")
    engine = get_engine(database_url or settings.database_url)
    return run_export(dataset_spec(dataset), engine, options, Anonymizer(key))


def _print_summary(dataset: str, result: ExportResult) -> None:
    stats = result.stats
    table = Table(title=f"arena export {dataset} → {result.out}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("rows read", f"{result.rows_read:,}")
    table.add_row("rows written", f"{result.rows_written:,}")
    for reason, count in stats.get("dropped", {}).items():
        table.add_row(f"dropped: {reason}", f"{count:,}")
    table.add_row("rows redacted", f"{stats.get('redacted_rows', 0):,}")
    table.add_row("shards", str(result.shards))
    table.add_row("complete", "yes" if result.complete else "no (re-run to resume)")
    console.print(table)


def _command(dataset: str):  # type: ignore[no-untyped-def]
    def command(
        out: Path = OutOption,
        database_url: str | None = DatabaseOption,
        since: datetime | None = SinceOption,
        until: datetime | None = UntilOption,
        model: list[str] | None = ModelOption,
        min_turns: int = MinTurnsOption,
        license_allow: list[str] | None = LicenseOption,
        all_licenses: bool = AllLicensesOption,
        release: str | None = ReleaseOption,
        release_key: str | None = ReleaseKeyOption,
        time_granularity: str = GranularityOption,
        languages: str = LanguagesOption,
        language_chars: int = LanguageCharsOption,
        moderation: str = ModerationOption,
        dedup: bool = DedupOption,
        near_dup_threshold: float = ThresholdOption,
        shard_size: int = ShardOption,
        batch_size: int = BatchOption,
        workers: int | None = WorkersOption,
        restart: bool = RestartOption,
        progress: bool = ProgressOption,
    ) -> None:
        _run(dataset, **{k: v for k, v in locals().items() if k != "dataset"})

    command.__doc__ = f"Export the {dataset} dataset: {DATASET_DESCRIPTIONS[dataset]}"
    return command


for _dataset in DATASET_DESCRIPTIONS:
    app.command(_dataset)(_command(_dataset))
