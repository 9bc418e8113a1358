"""Bootstrap confidence intervals and the ranks that respect them.

Resampling battles with replacement is the same as drawing multinomial counts over the
(pair, outcome) cells, so a bootstrap round costs ``n_pairs`` numbers, not ``n_votes``; every
round is then fitted in the same batched Newton iterations, warm-started at the point fit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from arena.ranking.battles import PairCounts
from arena.ranking.bradley_terry import BTConfig, BTFit, fit_bt, newton_bt, pair_totals, rated_models
from arena.ranking.scale import RatingScale

# Rounds fitted together; bounds the (rounds, models, models) Hessian stack to a few hundred MB.
MAX_ROUNDS_PER_BATCH = 256


def multinomial_cells(counts: PairCounts, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap counts of shape (rounds, n_pairs, 4): the same number of votes, drawn from the cells."""
    flat = counts.counts.ravel()
    total = int(flat.sum())
    if total == 0:
        raise ValueError("no votes to resample")
    draws = rng.multinomial(total, flat / total, size=rounds)
    return draws.reshape(rounds, counts.n_pairs, 4).astype(float)


def fit_bt_rounds(
    counts: PairCounts,
    cells: np.ndarray,
    config: BTConfig | None = None,
    scale: RatingScale | None = None,
    warm_start: BTFit | None = None,
) -> pd.DataFrame:
    """Fit every round of resampled cells (rounds, n_pairs, 4); ratings (rounds x models) in Elo points.

    Without a ridge, a round rates only the largest strongly connected part of its comparison
    graph (within the point fit's rated models, when ``warm_start`` is given); the others are NaN
    in that round, and the round is aligned to the point fit over the models it does rate.
    """
    config = config or BTConfig()
    scale = scale or RatingScale()
    theta0 = None if warm_start is None else warm_start.theta
    within = None if warm_start is None else warm_start.rated
    results = []
    for start in range(0, cells.shape[0], MAX_ROUNDS_PER_BATCH):
        n, s = pair_totals(cells[start : start + MAX_ROUNDS_PER_BATCH], config)
        rated = rated_models(counts.first, counts.second, n, s, counts.n_models, within) if config.l2 == 0 else None
        theta, _, _ = newton_bt(counts.first, counts.second, n, s, counts.n_models, config, theta0, rated)
        results.append(theta)
    reference = None if warm_start is None else warm_start.ratings.to_numpy()
    points = scale.to_points(np.concatenate(results), counts.models, reference)
    return pd.DataFrame(points, columns=counts.models)


def bootstrap_bt(
    counts: PairCounts,
    rounds: int = 100,
    seed: int | None = 0,
    config: BTConfig | None = None,
    scale: RatingScale | None = None,
    point: BTFit | None = None,
) -> pd.DataFrame:
    """Bootstrap Bradley-Terry ratings: a (rounds x models) DataFrame in Elo points.

    Pass the ``point`` fit when you have it, to skip refitting (it warm-starts every round).
    """
    point = point or fit_bt(counts, config, scale)
    cells = multinomial_cells(counts, rounds, np.random.default_rng(seed))
    return fit_bt_rounds(counts, cells, config, scale, warm_start=point)


def confidence_intervals(samples: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Percentile intervals per model: columns ``lower`` and ``upper``."""
    tail = (1.0 - level) / 2.0
    return pd.DataFrame(
        {"lower": samples.quantile(tail), "upper": samples.quantile(1.0 - tail)}, index=samples.columns
    )


def ci_ranks(lower: pd.Series, upper: pd.Series) -> pd.Series:
    """Rank = 1 + number of models whose lower bound lies above this model's upper bound.

    Models whose intervals overlap share a rank, so the ranking never claims more than the data shows.
    """
    lows = lower.to_numpy()
    ups = upper.to_numpy()
    better = (lows[None, :] > ups[:, None]).sum(axis=1)
    return pd.Series(1 + better, index=lower.index, name="rank")


def leaderboard_table(
    ratings: pd.Series,
    samples: pd.DataFrame | None = None,
    votes: pd.Series | None = None,
    se: pd.Series | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per rated model, best first: rank, rating, CI bounds (bootstrap, else rating +- z*se),
    votes, se. Unrated models (NaN rating: no finite MLE) are left out; a model unrated in every
    bootstrap round gets its rating as both bounds."""
    ratings = ratings.dropna()
    table = pd.DataFrame({"rating": ratings})
    if samples is not None:
        table = table.join(confidence_intervals(samples[ratings.index], level))
        table["lower"] = table["lower"].fillna(table["rating"])
        table["upper"] = table["upper"].fillna(table["rating"])
    elif se is not None:
        from scipy.stats import norm

        z = norm.ppf(0.5 + level / 2.0)
        table["lower"], table["upper"] = ratings - z * se, ratings + z * se
    else:
        table["lower"], table["upper"] = ratings, ratings
    if se is not None:
        table["se"] = se
    if votes is not None:
        table["votes"] = votes.reindex(table.index).fillna(0).astype(np.int64)
    table["rank"] = ci_ranks(table["lower"], table["upper"])
    table = table.sort_values(["rank", "rating"], ascending=[True, False])
    table.index.name = "model"
    return table.reset_index()[["rank", "model", *[c for c in table.columns if c != "rank"]]]
