"""The public leaderboard: an HTML page at ``/leaderboard``, JSON/CSV at ``/api/v1/leaderboard``
and the Gradio tab's content.

Everything here reads stored snapshots (:func:`arena.leaderboard.view.latest_view`); computing happens
in ``arena leaderboard compute`` or in the refresh task (:mod:`arena.leaderboard.refresher`), never
per request.
"""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from arena.db.models import OVERALL_CATEGORY
from arena.leaderboard.display import (
    NUMERIC_COLUMNS,
    PROVISIONAL,
    PROVISIONAL_MIN_VOTES,
    columns,
    display_frame,
    display_rows,
    is_provisional,
)
from arena.leaderboard.refresher import votes_since
from arena.leaderboard.view import LeaderboardView, latest_view, mt_bench_scores

logger = logging.getLogger(__name__)

router = APIRouter()

EXCLUSION_LABELS = {
    "moderation": "moderation",
    "identity_revealed": "model identity revealed",
    "anomalous_voter": "anomalous voters",
    "prompt_dedup": "repeated prompts (top 0.1% down-sampled)",
}


def _sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.service.sessions  # type: ignore[no-any-return]


def read_view(sessions: sessionmaker[Session], category: str, style_control: bool) -> LeaderboardView:
    """The newest snapshot, with each model's MT-bench score (stored by ``arena-judge``) where one exists."""
    with sessions() as session:
        view = latest_view(session, category, style_control)
        scores = mt_bench_scores(session)
    if scores:
        view.rows = [{**row, "mt_bench": scores.get(row["model"])} for row in view.rows]
    return view


def pending_votes(sessions: sessionmaker[Session], view: LeaderboardView) -> int:
    """Votes cast after the snapshot was computed: the refresher counts them within seconds."""
    with sessions() as session:
        return votes_since(session, view.updated_at)


def computed_at(view: LeaderboardView) -> str:
    return view.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC") if view.updated_at else "never"


def freshness(view: LeaderboardView, pending: int) -> str:
    """When the ratings were computed, and what is not in them yet."""
    text = f"Computed at {computed_at(view)}"
    if pending:
        text += (f"; {pending} newer vote{'s' if pending != 1 else ''} will be counted in the next update "
                 "(a few seconds after voting pauses)")
    return text


# ----------------------------------------------------------------------------- figures


def rating_figure(view: LeaderboardView) -> go.Figure:
    """Ratings with their 95% intervals as whiskers, best on the left; provisional models in grey,
    without whiskers (their intervals say little yet)."""
    rows = [r for r in view.rows if r.get("rating") is not None]
    firm = [r for r in rows if not is_provisional(r)]
    shaky = [r for r in rows if is_provisional(r)]
    figure = go.Figure()
    figure.add_trace(go.Scatter(
        x=[r["model"] for r in firm], y=[r["rating"] for r in firm], mode="markers", name="rating",
        marker={"color": ACCENT, "size": 9},
        error_y={"type": "data", "symmetric": False, "color": ACCENT,
                 "array": [r["ci_upper"] - r["rating"] for r in firm],
                 "arrayminus": [r["rating"] - r["ci_lower"] for r in firm]},
    ))
    if shaky:
        figure.add_trace(go.Scatter(x=[r["model"] for r in shaky], y=[r["rating"] for r in shaky], mode="markers",
                                    name=PROVISIONAL, marker={"color": "#9ca3af", "size": 9, "symbol": "circle-open"}))
    figure.update_layout(title="Rating with 95% confidence interval", yaxis_title="rating", height=420,
                         margin={"t": 50, "b": 120, "l": 50, "r": 20}, showlegend=bool(shaky),
                         xaxis={"categoryorder": "array", "categoryarray": [r["model"] for r in rows]})
    return figure


def heatmap_figure(matrix: dict[str, Any], title: str, value_format: str, colorscale: str = "RdBu") -> go.Figure:
    """A model x model heatmap (row model vs column model); the diagonal stays blank."""
    models = matrix.get("models", [])
    values = [[None if i == j else v for j, v in enumerate(row)] for i, row in enumerate(matrix.get("values", []))]
    figure = go.Figure(go.Heatmap(z=values, x=models, y=models, colorscale=colorscale,
                                  texttemplate=value_format, hoverongaps=False))
    figure.update_layout(title=title, xaxis_title="opponent", yaxis_title="model",
                         yaxis_autorange="reversed", height=480, margin={"t": 50, "b": 120})
    return figure


def history_figure(history: dict[str, Any]) -> go.Figure:
    """Each model's rating from the votes up to each day, on the table's scale (dates on the axis)."""
    times = history.get("times", [])
    figure = go.Figure()
    for model, values in history.get("series", {}).items():
        figure.add_trace(go.Scatter(x=times, y=values, mode="lines+markers", name=model))
    xaxis: dict[str, Any] = {"type": "date", "tickformat": "%b %d", "tickangle": 0, "nticks": 10}
    if len(times) <= 14:  # a tick a day, and room around a single day
        xaxis["dtick"] = 86_400_000
    if len(times) == 1:
        day = pd.Timestamp(times[0])
        xaxis["range"] = [(day - pd.Timedelta(days=1)).isoformat(), (day + pd.Timedelta(days=1)).isoformat()]
    figure.update_layout(title="Rating over time (from the votes up to each day, on the table's scale)",
                         yaxis_title="rating", height=420, margin={"t": 50, "l": 50, "r": 20}, xaxis=xaxis,
                         legend={"orientation": "h", "y": -0.15})
    return figure


def figures(view: LeaderboardView) -> dict[str, go.Figure]:
    """The page's four plots, keyed by their element ids."""
    payload = view.payload
    return {
        "plot-ratings": rating_figure(view),
        "plot-win-rate": heatmap_figure(payload.get("win_rate", {}), "Win rate (row beats column)", "%{z:.2f}"),
        "plot-battle-counts": heatmap_figure(payload.get("battle_counts", {}), "Battle counts", "%{z:.0f}", "Blues"),
        "plot-history": history_figure(payload.get("history", {})),
    }


# ----------------------------------------------------------------------------- the page


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js from the installed plotly package, so the page works offline."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


@router.get("/leaderboard/plotly.min.js", include_in_schema=False)
def plotly_script() -> Response:
    return Response(plotly_js(), media_type="application/javascript",
                    headers={"Cache-Control": "public, max-age=86400"})


STYLESHEET = Path(__file__).with_name("static") / "leaderboard.css"
ACCENT = "#ea580c"


@router.get("/leaderboard/style.css", include_in_schema=False)
def leaderboard_stylesheet() -> Response:
    return Response(STYLESHEET.read_text(encoding="utf-8"), media_type="text/css",
                    headers={"Cache-Control": "public, max-age=3600"})


def _controls(view: LeaderboardView) -> str:
    options = "".join(
        f'<option value="{html.escape(c)}"{" selected" if c == view.category else ""}>{html.escape(c)}</option>'
        for c in (view.categories if view.category in view.categories else [view.category, *view.categories])
    )
    checked = " checked" if view.style_control else ""
    return (
        '<form class="controls" method="get" action="/leaderboard" id="leaderboard-controls">'
        f'<label>Category <select name="category" id="category-select" onchange="this.form.submit()">{options}'
        "</select></label>"
        '<input type="hidden" name="style_control" value="false">'
        f'<label><input type="checkbox" name="style_control" value="true" id="style-control-toggle"{checked} '
        'onchange="this.form.submit()"> Style control (length and markdown held constant)</label>'
        '<noscript><button type="submit">Show</button></noscript></form>'
    )


def _source_label(source: str) -> str:
    return "live" if source == "live" else f"imported from {source.split(':', 1)[-1]}"


def _meta(view: LeaderboardView, pending: int) -> str:
    query = urlencode({"category": view.category, "style_control": str(view.style_control).lower()})
    excluded = ", ".join(
        f"{n} {EXCLUSION_LABELS.get(kind, kind)}" for kind, n in view.exclusions.items() if n
    ) or "none"
    sources = ", ".join(f"{n} {_source_label(source)}" for source, n in view.sources.items())
    sources_html = f' (<span id="vote-sources">{html.escape(sources)}</span>)' if sources else ""
    return (
        f'<p class="meta" id="leaderboard-meta"><span id="last-updated">{html.escape(freshness(view, pending))}</span>'
        f" · {view.vote_count:,} votes counted{sources_html} · "
        f'excluded votes: <span id="excluded-votes">{html.escape(excluded)}</span> · '
        f'<a href="/api/v1/leaderboard?{query}&format=csv" id="csv-download">CSV</a> · '
        f'<a href="/api/v1/leaderboard?{query}">JSON</a></p>'
    )


def _table(view: LeaderboardView) -> str:
    headers = columns(view.rows)
    narrow = {"Organization", "License"}  # hidden on a phone

    def cell_class(column: str, value: str) -> str:
        classes = [c for c, on in (("num", column in NUMERIC_COLUMNS), ("model", column == "Model"),
                                   ("hide-narrow", column in narrow), ("mt-bench", column == "MT-bench"),
                                   ("provisional", value == PROVISIONAL)) if on]
        return f' class="{" ".join(classes)}"' if classes else ""

    head = "".join(f"<th{cell_class(h, '')}>{h}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{cell_class(h, row[h])}>{html.escape(row[h])}</td>" for h in headers) + "</tr>"
        for row in display_rows(view.rows)
    )
    return (f'<div class="card table-wrap"><table id="leaderboard-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _unrated(view: LeaderboardView) -> str:
    """The models left out of the table because their votes do not pin a rating down yet."""
    if not view.unrated:
        return ""
    names = ", ".join(f"{html.escape(m['model'])} ({m['votes']} votes)" for m in view.unrated)
    return ('<p class="meta" id="unrated-models">Not rated yet, because so far they only won or only lost '
            f"against the rated models (the maximum-likelihood rating is infinite): {names}</p>")


def _empty_state(view: LeaderboardView, pending: int) -> str:
    if pending:
        reason = (f"{pending} vote{'s are' if pending != 1 else ' is'} waiting to be counted: the ratings are "
                  "recomputed a few seconds after voting pauses. Reload in a moment.")
    elif view.updated_at is None:
        reason = "The leaderboard has not been computed yet. It appears a few seconds after the first votes."
    elif view.style_control:
        reason = "No votes with style information in this category yet."
    else:
        reason = "No votes counted in this category yet. Vote in a few battles and check back."
    return (f'<div class="card empty" id="leaderboard-empty"><h2>No ratings yet</h2><p>{reason}</p>'
            '<p><a class="button" href="/">Go to the arena and vote</a></p></div>')


def _plots(view: LeaderboardView) -> str:
    parts = [figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                            config={"responsive": True, "displaylogo": False})
             for div_id, figure in figures(view).items()]
    return ('<script src="/leaderboard/plotly.min.js"></script><div class="plots">'
            + "".join(f'<div class="card">{part}</div>' for part in parts) + "</div>")


def render_page(view: LeaderboardView, pending: int = 0) -> str:
    """The whole leaderboard page as HTML."""
    title = "Style-controlled leaderboard" if view.style_control else "Leaderboard"
    content = (_empty_state(view, pending) + _unrated(view) if view.empty
               else _table(view) + _unrated(view) + _plots(view))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>Arena {title}</title><link rel="stylesheet" href="/leaderboard/style.css"></head><body>'
        '<nav class="tabs" id="leaderboard-nav"><a href="/">Arena</a>'
        '<a class="current" href="/leaderboard">Leaderboard</a><a href="/api/v1/docs">API</a></nav>'
        f"<h1>Arena {title}</h1>"
        '<p class="lead">Bradley-Terry ratings from anonymous pairwise votes, with 95% bootstrap intervals. '
        "A model's rank is 1 + the number of models that are better with confidence; a model with few "
        f"votes (under {PROVISIONAL_MIN_VOTES}) or a very wide interval is marked provisional. "
        "MT-bench: the average 1-10 grade from the newest single-answer run of "
        "<code>arena-judge mt-bench</code>, when there is one.</p>"
        f'<div class="card">{_controls(view)}{_meta(view, pending)}</div>{content}</body></html>'
    )


@router.get("/leaderboard", response_class=HTMLResponse, include_in_schema=False)
def leaderboard_page(request: Request, category: str = OVERALL_CATEGORY, style_control: bool = False) -> HTMLResponse:
    view = read_view(_sessions(request), category, style_control)
    return HTMLResponse(render_page(view, pending_votes(_sessions(request), view)))


# ----------------------------------------------------------------------------- the API


def view_json(view: LeaderboardView) -> dict[str, Any]:
    return {
        "category": view.category,
        "style_control": view.style_control,
        "updated_at": view.updated_at.isoformat() if view.updated_at else None,
        "vote_count": view.vote_count,
        "excluded_votes": view.exclusions,
        "sources": view.sources,
        "unrated": view.unrated,
        "categories": view.categories,
        "style_coefficients": view.payload.get("style_coefficients"),
        "rows": view.rows,
    }


@router.get("/api/v1/leaderboard", tags=["leaderboard"])
def leaderboard_api(
    request: Request,
    category: str = OVERALL_CATEGORY,
    style_control: bool = False,
    format: str = Query("json", pattern="^(json|csv)$", description="json or csv"),
) -> Response:
    """The newest leaderboard snapshot for a category, as JSON or as a CSV download."""
    view = read_view(_sessions(request), category, style_control)
    if category not in view.categories:
        return JSONResponse(status_code=404, content={"error": {
            "code": "not_found", "message": f"no category {category!r}; known: {', '.join(view.categories)}"}})
    if format == "csv":
        buffer = io.StringIO()
        view.as_frame().to_csv(buffer, index=False)
        name = f"leaderboard-{category.replace(':', '-')}{'-style' if style_control else ''}.csv"
        return Response(buffer.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
    return JSONResponse(view_json(view))


# ----------------------------------------------------------------------------- Gradio tab


def leaderboard_tab(sessions: sessionmaker[Session]) -> Callable[[], None]:
    """A builder for the Gradio Leaderboard tab over the stored snapshots."""

    def build() -> None:
        def render(category: str, style_control: bool) -> tuple[Any, ...]:
            view = read_view(sessions, category or OVERALL_CATEGORY, bool(style_control))
            pending = pending_votes(sessions, view)
            if view.empty:
                note = ("### No ratings yet\nThe ratings are recomputed a few seconds after votes arrive; "
                        f"press Refresh then. {freshness(view, pending)}.")
            else:
                note = f"{view.vote_count:,} votes counted · {freshness(view, pending)} · [full page](/leaderboard)"
            # Only the choices change, never the value: a value change would re-trigger this handler.
            return gr.update(choices=view.categories), note, display_frame(view.rows), rating_figure(view)

        with gr.Row():
            category = gr.Dropdown([OVERALL_CATEGORY], value=OVERALL_CATEGORY, label="Category", elem_id="gr-leaderboard-category")
            style = gr.Checkbox(False, label="Style control", elem_id="gr-leaderboard-style")
        note = gr.Markdown(elem_id="gr-leaderboard-note")
        table = gr.Dataframe(interactive=False, elem_id="gr-leaderboard-table")
        plot = gr.Plot(elem_id="gr-leaderboard-plot")
        outputs = [category, note, table, plot]
        refresh = gr.Button("Refresh", elem_id="gr-leaderboard-refresh")
        gr.on(triggers=None, fn=render, inputs=[category, style], outputs=outputs)  # page load + changes
        refresh.click(render, [category, style], outputs)

    return build
