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
from typing import Any
from urllib.parse import urlencode

import gradio as gr
import plotly.graph_objects as go
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from arena.db.models import OVERALL_CATEGORY
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


# ----------------------------------------------------------------------------- figures


def rating_figure(view: LeaderboardView) -> go.Figure:
    """Ratings with their 95% intervals as whiskers, best on the left."""
    rows = view.rows
    figure = go.Figure(go.Scatter(
        x=[r["model"] for r in rows],
        y=[r["rating"] for r in rows],
        mode="markers",
        error_y={"type": "data", "symmetric": False,
                 "array": [r["ci_upper"] - r["rating"] for r in rows],
                 "arrayminus": [r["rating"] - r["ci_lower"] for r in rows]},
    ))
    figure.update_layout(title="Rating with 95% confidence interval", yaxis_title="rating",
                         margin={"t": 50, "b": 120}, height=420)
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
    """Online Elo per model at the end of each period."""
    figure = go.Figure()
    for model, values in history.get("series", {}).items():
        figure.add_trace(go.Scatter(x=history.get("times", []), y=values, mode="lines+markers", name=model))
    figure.update_layout(title="Rating over time (online Elo)", yaxis_title="Elo", height=420,
                         margin={"t": 50})
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


PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
th, td { padding: .35rem .6rem; border-bottom: 1px solid #ddd; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.controls { display: flex; gap: 1.5rem; align-items: center; flex-wrap: wrap; }
.meta { color: #555; font-size: .9rem; }
.empty { padding: 2rem; background: #f6f6f6; border-radius: 8px; }
.plots { display: grid; grid-template-columns: 1fr; gap: 1rem; }
"""


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


def _meta(view: LeaderboardView) -> str:
    query = urlencode({"category": view.category, "style_control": str(view.style_control).lower()})
    updated = view.updated_at.strftime("%Y-%m-%d %H:%M UTC") if view.updated_at else "never"
    excluded = ", ".join(
        f"{n} {EXCLUSION_LABELS.get(kind, kind)}" for kind, n in view.exclusions.items() if n
    ) or "none"
    sources = ", ".join(f"{n} {_source_label(source)}" for source, n in view.sources.items())
    sources_html = f' (<span id="vote-sources">{html.escape(sources)}</span>)' if sources else ""
    return (
        f'<p class="meta" id="leaderboard-meta">Last updated: <span id="last-updated">{updated}</span> · '
        f"{view.vote_count} votes counted{sources_html} · "
        f'excluded votes: <span id="excluded-votes">{html.escape(excluded)}</span> · '
        f'<a href="/api/v1/leaderboard?{query}&format=csv" id="csv-download">CSV</a> · '
        f'<a href="/api/v1/leaderboard?{query}">JSON</a></p>'
    )


def _table(view: LeaderboardView) -> str:
    with_mt_bench = any("mt_bench" in r for r in view.rows)
    headers = ["Rank", "Model", "Rating", "95% CI", "Votes", *(["MT-bench"] if with_mt_bench else []),
               "Organization", "License"]
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>"
        f'<td class="num">{r["rank"]}</td><td>{html.escape(r["model"])}</td>'
        f'<td class="num">{r["rating"]:.0f}</td>'
        f'<td class="num">+{r["ci_upper"] - r["rating"]:.0f} / -{r["rating"] - r["ci_lower"]:.0f}</td>'
        f'<td class="num">{r["votes"]}</td>'
        + (f'<td class="num mt-bench">{_score(r.get("mt_bench"))}</td>' if with_mt_bench else "")
        + f'<td>{html.escape(r["organization"])}</td><td>{html.escape(r["license"])}</td></tr>'
        for r in view.rows
    )
    return f'<table id="leaderboard-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _unrated(view: LeaderboardView) -> str:
    """The models left out of the table because their votes do not pin a rating down yet."""
    if not view.unrated:
        return ""
    names = ", ".join(f"{html.escape(m['model'])} ({m['votes']} votes)" for m in view.unrated)
    return ('<p class="meta" id="unrated-models">Not rated yet, because so far they only won or only lost '
            f"against the rated models (the maximum-likelihood rating is infinite): {names}</p>")


def _score(score: float | None) -> str:
    return "–" if score is None else f"{score:.2f}"


def _empty_state(view: LeaderboardView) -> str:
    if view.updated_at is None:
        reason = "The leaderboard has not been computed yet. It appears after the first votes are counted."
    elif view.style_control:
        reason = "No votes with style information in this category yet."
    else:
        reason = "No votes counted in this category yet. Vote in a few battles and check back."
    return (f'<div class="empty" id="leaderboard-empty"><h2>No ratings yet</h2><p>{reason}</p>'
            '<p><a href="/">Go to the arena and vote</a></p></div>')


def _plots(view: LeaderboardView) -> str:
    parts = [figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id)
             for div_id, figure in figures(view).items()]
    return '<script src="/leaderboard/plotly.min.js"></script><div class="plots">' + "".join(parts) + "</div>"


def render_page(view: LeaderboardView) -> str:
    """The whole leaderboard page as HTML."""
    title = "Style-controlled leaderboard" if view.style_control else "Leaderboard"
    content = _empty_state(view) + _unrated(view) if view.empty else _table(view) + _unrated(view) + _plots(view)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Arena {title}</title><style>{PAGE_CSS}</style></head><body>"
        f'<p><a href="/">← Arena</a></p><h1>🏆 Arena {title}</h1>'
        "<p>Bradley-Terry ratings from anonymous pairwise votes, with 95% bootstrap intervals. "
        "A model's rank is 1 + the number of models that are better with confidence. "
        "MT-bench: the average 1-10 grade from the newest single-answer run of "
        "<code>arena-judge mt-bench</code>, when there is one.</p>"
        f"{_controls(view)}{_meta(view)}{content}</body></html>"
    )


@router.get("/leaderboard", response_class=HTMLResponse, include_in_schema=False)
def leaderboard_page(request: Request, category: str = OVERALL_CATEGORY, style_control: bool = False) -> HTMLResponse:
    return HTMLResponse(render_page(read_view(_sessions(request), category, style_control)))


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
            if view.empty:
                note = "### No ratings yet\nVote in a few battles; the leaderboard is recomputed periodically."
            else:
                updated = view.updated_at.strftime("%Y-%m-%d %H:%M UTC") if view.updated_at else "never"
                note = f"{view.vote_count} votes · last updated {updated} · [full page](/leaderboard)"
            # Only the choices change, never the value: a value change would re-trigger this handler.
            return gr.update(choices=view.categories), note, view.as_frame(), rating_figure(view)

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
