"""Online Elo: the sequential rating update, for comparison and the "rating over time" plot.

Unlike Bradley-Terry it depends on the order of battles and weighs recent votes more; it is not
used for ranking, only shown beside it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from arena.ranking.battles import normalize_winner

_POINTS = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


def _elo_pass(a: np.ndarray, b: np.ndarray, score: np.ndarray, ratings: np.ndarray, k: float,
              alpha: float) -> None:
    """Update ``ratings`` in place with battles in order (a plain loop: each step needs the last)."""
    for i, j, s in zip(a.tolist(), b.tolist(), score.tolist(), strict=True):
        expected = 1.0 / (1.0 + math.exp(alpha * (ratings[j] - ratings[i])))
        delta = k * (s - expected)
        ratings[i] += delta
        ratings[j] -= delta


def _prepare(battles: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    codes, names = pd.factorize(pd.concat([battles["model_a"], battles["model_b"]]))
    n = len(battles)
    score = normalize_winner(battles["winner"]).map(_POINTS).to_numpy(float)
    return list(names), codes[:n], codes[n:], score


def online_elo(battles: pd.DataFrame, k: float = 4.0, base: float = 10.0, scale: float = 400.0,
               init_rating: float = 1000.0) -> pd.Series:
    """Final online Elo ratings after playing ``battles`` in table order, best first."""
    models, a, b, score = _prepare(battles)
    ratings = np.full(len(models), init_rating)
    _elo_pass(a, b, score, ratings, k, math.log(base) / scale)
    return pd.Series(ratings, index=models, name="elo").sort_values(ascending=False)


def elo_history(battles: pd.DataFrame, time_column: str = "timestamp", freq: str = "D", k: float = 4.0,
                base: float = 10.0, scale: float = 400.0, init_rating: float = 1000.0) -> pd.DataFrame:
    """Online Elo at the end of each period (rows: period end, columns: models seen so far, NaN before)."""
    if time_column not in battles.columns:
        raise ValueError(f"battles table lacks the time column {time_column!r}")
    ordered = battles.sort_values(time_column, kind="stable")
    models, a, b, score = _prepare(ordered)
    periods = pd.to_datetime(ordered[time_column]).dt.floor(freq).to_numpy()
    ratings = np.full(len(models), init_rating)
    seen = np.zeros(len(models), dtype=bool)
    boundaries = np.flatnonzero(np.r_[periods[1:] != periods[:-1], len(periods) > 0]) + 1
    rows, start = [], 0
    for end in boundaries.tolist():
        _elo_pass(a[start:end], b[start:end], score[start:end], ratings, k, math.log(base) / scale)
        seen[a[start:end]] = True
        seen[b[start:end]] = True
        rows.append(np.where(seen, ratings, np.nan))
        start = end
    index = pd.DatetimeIndex(periods[boundaries - 1], name=time_column) if len(boundaries) else None
    return pd.DataFrame(rows, index=index, columns=models)
