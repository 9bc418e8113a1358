"""``arena leaderboard``: recompute the snapshots from the database, or print the newest one."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from arena.config import get_settings
from arena.progress import configure_cli_logging

if TYPE_CHECKING:  # the job and views (pandas, scipy, lingua) are imported by the commands that run
    from arena.leaderboard.view import LeaderboardView

app = typer.Typer(help="The leaderboard: compute snapshots from the votes, show them.", no_args_is_help=True)


# arena.db.models.OVERALL_CATEGORY, spelled out: importing the models (SQLAlchemy) would slow
# down every `arena --help` (tests check that the two agree).
OVERALL_CATEGORY = "overall"


def _sessions(url: str | None):  # type: ignore[no-untyped-def]
    from arena.db.session import get_engine, session_factory

    return session_factory(get_engine(url or get_settings().database_url))


@app.command()
def compute(
    rounds: int = typer.Option(100, min=10, help="Bootstrap rounds for the confidence intervals"),
    include_flagged: bool = typer.Option(False, help="Count battles flagged for moderation or identity leaks"),
    include_anomalous: bool = typer.Option(
        None, help="Count votes of anomalous visitors (default: the opposite of ARENA_EXCLUDE_ANOMALOUS_VOTERS)"),
    detect_anomalies: bool = typer.Option(True, help="Run anomalous-voter detection first"),
    dedup_prompts: bool = typer.Option(True, help="Down-sample the top 0.1% most repeated prompts (lmarena)"),
    source: list[str] = typer.Option(
        [], "--source", help="Count only these battles (repeat): live, imported, or import:<label> (default: all)"),
    url: str | None = typer.Option(None, help="Database URL (default: ARENA_DATABASE_URL)"),
) -> None:
    """Recompute every category's leaderboard (plain and style-controlled) and store snapshots."""
    from arena.leaderboard.job import LeaderboardOptions, compute_leaderboards
    from arena.leaderboard.votes import check_sources

    try:
        sources = check_sources(tuple(source))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--source") from exc

    configure_cli_logging()
    exclude_anomalous = (
        get_settings().exclude_anomalous_voters if include_anomalous is None else not include_anomalous
    )
    options = LeaderboardOptions(rounds=rounds, exclude_flagged=not include_flagged,
                                 exclude_anomalous_voters=exclude_anomalous, detect_anomalies=detect_anomalies,
                                 dedup_prompts=dedup_prompts, sources=sources)
    console = Console()
    with console.status("computing leaderboards (tags, anomalies, Bradley-Terry, bootstrap)..."):
        snapshots = compute_leaderboards(_sessions(url), options)
    overall = snapshots[0] if snapshots else None
    console.print(f"stored {len(snapshots)} snapshots; {overall.vote_count if overall else 0} votes counted overall; "
                  f"categories: {', '.join(sorted({s.category for s in snapshots}))}")


def _table(view: LeaderboardView) -> Table:
    """The same cells as the page and the Gradio tab (:mod:`arena.leaderboard.display`)."""
    from arena.leaderboard.display import NUMERIC_COLUMNS, columns, display_rows

    title = f"Leaderboard · {view.category}{' · style control' if view.style_control else ''}"
    table = Table(title=title, caption=_caption(view))
    for column in columns(view.rows):
        # Model names are never cut or wrapped: other columns give way first.
        table.add_column(column, justify="right" if column in NUMERIC_COLUMNS else "left",
                         no_wrap=column in ("Model", *NUMERIC_COLUMNS))
    for row in display_rows(view.rows):
        table.add_row(*row.values())
    return table


def _print_table(table: Table) -> None:
    """In a terminal, its width; piped or redirected, as wide as the table (rich would use 80
    columns and cut long model names)."""
    console = Console()
    if not console.is_terminal:
        needed = console.measure(table, options=console.options.update_width(10_000)).maximum
        console = Console(width=max(console.width, needed))
    console.print(table)


def _caption(view: LeaderboardView) -> str:
    updated = view.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC") if view.updated_at else "never"
    excluded = ", ".join(f"{n} {kind}" for kind, n in view.exclusions.items() if n) or "none"
    sources = ", ".join(f"{n} {source}" for source, n in view.sources.items()) or "none"
    return f"{view.vote_count} votes ({sources}) · computed at {updated} · excluded: {excluded}"


@app.command()
def show(
    category: str = typer.Option(OVERALL_CATEGORY, help="Category, e.g. overall, coding, language:en"),
    style_control: bool = typer.Option(False, help="Show the style-controlled ratings"),
    output: str = typer.Option("table", help="table, json or csv"),
    url: str | None = typer.Option(None, help="Database URL (default: ARENA_DATABASE_URL)"),
) -> None:
    """Print the newest stored leaderboard."""
    from arena.leaderboard.view import latest_view

    if output not in ("table", "json", "csv"):
        raise typer.BadParameter("use table, json or csv", param_hint="--output")
    with _sessions(url)() as session:
        view = latest_view(session, category, style_control)
        computed = view.updated_at is not None or latest_view(session).updated_at is not None
    if computed and view.updated_at is None and category not in view.categories:
        typer.echo(f"No category {category!r} in the leaderboard; known: {', '.join(view.categories)}.", err=True)
        raise typer.Exit(1)
    if view.empty:
        reason = ("No ratings yet: vote in some battles, then run `arena leaderboard compute` "
                  "(a running `arena serve` recomputes a few seconds after votes)."
                  if not computed else
                  f"No counted votes in {category!r}{' with style information' if style_control else ''} yet.")
        typer.echo(reason, err=output != "table")
        if output == "table":
            return
    if output == "json":
        typer.echo(json.dumps({"category": view.category, "style_control": view.style_control,
                               "vote_count": view.vote_count, "rows": view.rows}, indent=2))
    elif output == "csv":
        typer.echo(view.as_frame().to_csv(index=False), nl=False)
    else:
        _print_table(_table(view))
