"""Ratings from pairwise votes: pure computation on pandas/NumPy/SciPy (no database, no web).

Typical use::

    counts = pair_counts(battles)                # or pair_counts_from_grouped(sql_group_by_rows)
    fit = fit_bt(counts)                         # Bradley-Terry MLE on the Elo scale
    samples = bootstrap_bt(counts, rounds=100)   # all rounds fitted at once
    table = leaderboard_table(fit.ratings, samples, counts.votes_per_model(), sandwich_se(counts, fit))
"""

from arena.ranking.battles import PairCounts, aggregate_battles, pair_counts, pair_counts_from_grouped
from arena.ranking.bootstrap import bootstrap_bt, ci_ranks, confidence_intervals, leaderboard_table
from arena.ranking.bradley_terry import BTConfig, BTFit, fit_bt, sandwich_covariance, sandwich_se
from arena.ranking.elo import elo_history, online_elo
from arena.ranking.scale import RatingScale
from arena.ranking.style import (
    STYLE_FEATURES,
    StyleConfig,
    StyleFit,
    answer_style,
    battle_style,
    bootstrap_style_bt,
    fit_style_bt,
)

__all__ = [
    "STYLE_FEATURES",
    "BTConfig",
    "BTFit",
    "PairCounts",
    "RatingScale",
    "StyleConfig",
    "StyleFit",
    "aggregate_battles",
    "answer_style",
    "battle_style",
    "bootstrap_bt",
    "bootstrap_style_bt",
    "ci_ranks",
    "confidence_intervals",
    "elo_history",
    "fit_bt",
    "fit_style_bt",
    "leaderboard_table",
    "online_elo",
    "pair_counts",
    "pair_counts_from_grouped",
    "sandwich_covariance",
    "sandwich_se",
]
