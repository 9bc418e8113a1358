"""``arena import battles FILE``: import a public battle log (FastChat clean_battle JSON, lmarena
Parquet/JSON Lines) into the arena database, all or nothing."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from arena.config import get_settings
from arena.progress import print_error

app = typer.Typer(help="Import battles that happened elsewhere (public battle logs).", no_args_is_help=True)


@app.command("battles")
def battles_command(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                help="clean_battle_*.json (FastChat), or .parquet / .jsonl (lmarena layout)"),
    source: str | None = typer.Option(None, help="Label stored as import:<label> (default: the file name stem)"),
    url: str | None = typer.Option(None, "--database-url", help="Database URL (default: ARENA_DATABASE_URL)"),
) -> None:
    """Validate every row, then store the new battles with their votes, marked with their source.

    A file with any bad row is refused whole (each bad row is listed with its line or row
    number). Battles imported before are skipped, so importing a file again adds nothing.
    Then `arena leaderboard compute` ranks them (`--source` picks imported, live or both).
    """
    from sqlalchemy.exc import SQLAlchemyError  # the database stack loads only when a command runs

    from arena.db.session import get_engine, session_factory
    from arena.imports.battles import ImportFileError, parse_file, source_name
    from arena.imports.store import store_battles

    console = Console()
    try:
        label = source_name(source or file.stem)
        with console.status(f"reading and checking {file} ..."):
            parsed = parse_file(file)
        with console.status(f"storing {len(parsed.battles)} battles ..."):
            result = store_battles(session_factory(get_engine(url or get_settings().database_url)), parsed, label)
    except (ImportFileError, ValueError) as exc:
        print_error(console, str(exc))
        raise typer.Exit(2) from exc
    except SQLAlchemyError as exc:
        print_error(console, f"the database refused the import, nothing was stored ({exc.__class__.__name__}: "
                     f"{str(exc).splitlines()[0]}); is it migrated (`arena db upgrade`)?")
        raise typer.Exit(2) from exc
    console.print(
        f"{result.source}: {result.rows} rows, {result.added} battles added, {result.already_imported} imported "
        f"before, {result.duplicates_in_file} duplicate rows in the file; "
        f"{len(result.models_created)} new models" + (f" ({', '.join(result.models_created[:8])}"
                                                      f"{' ...' if len(result.models_created) > 8 else ''})"
                                                      if result.models_created else ""),
        soft_wrap=True, markup=False, highlight=False,
    )

