"""How a leaderboard row is shown: one formatter for the /leaderboard page, the Gradio tab and
``arena leaderboard show``, so the three never disagree.

Ratings are whole points; the 95% interval is "+12 / -15" around the rating. A model with few
votes, or an interval wider than a few hundred points, is "provisional": its interval says
little yet, so it is marked instead of printed as a 650-point spread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

PROVISIONAL_MIN_VOTES = 20
PROVISIONAL_MAX_INTERVAL = 300.0  # rating points between the interval's ends
PROVISIONAL = "provisional"


def is_provisional(row: Mapping[str, Any]) -> bool:
    lower, upper = row.get("ci_lower"), row.get("ci_upper")
    if row.get("rating") is None or lower is None or upper is None:
        return True
    return int(row.get("votes") or 0) < PROVISIONAL_MIN_VOTES or float(upper) - float(lower) > PROVISIONAL_MAX_INTERVAL


def rating_text(row: Mapping[str, Any]) -> str:
    return "unrated" if row.get("rating") is None else f"{float(row['rating']):.0f}"


def interval_text(row: Mapping[str, Any]) -> str:
    if is_provisional(row):
        return PROVISIONAL
    rating = float(row["rating"])
    return f"+{float(row['ci_upper']) - rating:.0f} / -{rating - float(row['ci_lower']):.0f}"


def mt_bench_text(score: float | None) -> str:
    return "-" if score is None else f"{score:.2f}"


def has_mt_bench(rows: list[dict[str, Any]]) -> bool:
    return any("mt_bench" in row for row in rows)


def display_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Each row as the strings every view shows, under the column names of :func:`columns`."""
    with_mt_bench = has_mt_bench(rows)
    shown = []
    for row in rows:
        cells = {
            "Rank": str(row["rank"]),
            "Model": str(row["model"]),
            "Rating": rating_text(row),
            "95% CI": interval_text(row),
            "Votes": f"{int(row['votes']):,}",
        }
        if with_mt_bench:
            cells["MT-bench"] = mt_bench_text(row.get("mt_bench"))
        cells["Organization"] = str(row.get("organization") or "")
        cells["License"] = str(row.get("license") or "")
        shown.append(cells)
    return shown


def columns(rows: list[dict[str, Any]]) -> list[str]:
    return ["Rank", "Model", "Rating", "95% CI", "Votes", *(["MT-bench"] if has_mt_bench(rows) else []),
            "Organization", "License"]


NUMERIC_COLUMNS = {"Rank", "Rating", "95% CI", "Votes", "MT-bench"}


def display_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The shown table as a DataFrame (the Gradio tab's Dataframe)."""
    return pd.DataFrame(display_rows(rows), columns=columns(rows))
