"""Bradley-Terry, bootstrap and sandwich errors on synthetic battles with known true ratings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from arena.ranking import (
    BTConfig,
    RatingScale,
    bootstrap_bt,
    ci_ranks,
    fit_bt,
    leaderboard_table,
    pair_counts,
    pair_counts_from_grouped,
    sandwich_se,
)
from arena.ranking.battles import PairCounts
from arena.ranking.bootstrap import confidence_intervals, fit_bt_rounds, multinomial_cells
from arena.ranking.sampling import all_pairs
from arena.ranking.simulate import simulate_battles, true_ratings, win_probability

UNANCHORED = RatingScale(anchor_model=None)


def simulated_counts(truth: pd.Series, n_battles: int, rng: np.random.Generator) -> PairCounts:
    """Pair counts of uniformly paired battles, drawn per pair (binomial) rather than per battle."""
    first, second = all_pairs(len(truth))
    per_pair = rng.multinomial(n_battles, np.full(len(first), 1.0 / len(first)))
    values = truth.to_numpy()
    wins = rng.binomial(per_pair, win_probability(values[first], values[second]))
    cells = np.zeros((len(first), 4))
    cells[:, 0], cells[:, 1] = wins, per_pair - wins
    return PairCounts(list(truth.index), first, second, cells)


def test_recovers_true_ranking_50_models_200k_battles():
    rng = np.random.default_rng(11)
    truth = true_ratings(50, rng)
    battles = simulate_battles(truth, 200_000, rng, tie_rate=0.15)
    fit = fit_bt(pair_counts(battles), scale=UNANCHORED)
    assert fit.converged
    rho = spearmanr(fit.ratings[truth.index], truth).statistic
    assert rho >= 0.99


def test_bootstrap_intervals_cover_truth_90_to_98_percent():
    rng = np.random.default_rng(5)
    covered, total = 0, 0
    for _ in range(25):
        truth = true_ratings(40, rng)
        centered = truth - truth.mean() + UNANCHORED.init_rating
        counts = simulated_counts(truth, 40_000, rng)
        samples = bootstrap_bt(counts, rounds=100, seed=int(rng.integers(1 << 30)), scale=UNANCHORED)
        bounds = confidence_intervals(samples)
        inside = (bounds["lower"] <= centered) & (centered <= bounds["upper"])
        covered += int(inside.sum())
        total += len(inside)
    assert 0.90 <= covered / total <= 0.98


def test_sandwich_se_agrees_with_bootstrap_spread():
    rng = np.random.default_rng(3)
    truth = true_ratings(15, rng)
    counts = pair_counts(simulate_battles(truth, 60_000, rng, tie_rate=0.2))
    fit = fit_bt(counts, scale=UNANCHORED)
    se = sandwich_se(counts, fit, scale=UNANCHORED)
    spread = bootstrap_bt(counts, rounds=400, seed=1, scale=UNANCHORED).std()
    ratio = se / spread[se.index]
    assert ratio.between(0.85, 1.15).all(), ratio


def test_anchor_model_is_pinned_and_fixed_mean_otherwise():
    battles = pd.DataFrame({
        "model_a": ["x", "x", "mixtral-8x7b-instruct-v0.1", "y", "y"],
        "model_b": ["mixtral-8x7b-instruct-v0.1", "y", "y", "x", "mixtral-8x7b-instruct-v0.1"],
        "winner": ["a", "b", "tie", "a", "b"],
    })
    anchored = fit_bt(pair_counts(battles)).ratings
    assert anchored["mixtral-8x7b-instruct-v0.1"] == pytest.approx(1114.0)
    free = fit_bt(pair_counts(battles), scale=UNANCHORED).ratings
    assert free.mean() == pytest.approx(1000.0)
    # The gauge only shifts: differences agree.
    assert (anchored["x"] - anchored["y"]) == pytest.approx(free["x"] - free["y"])


def test_ties_count_half_and_both_bad_is_configurable():
    # a beats b once, b beats a once, two both-bad votes: equal either way.
    battles = pd.DataFrame({"model_a": ["a", "b", "a", "a"], "model_b": ["b", "a", "b", "b"],
                            "winner": ["model_a", "model_a", "both_bad", "tie (bothbad)"]})
    ratings = fit_bt(pair_counts(battles), scale=UNANCHORED).ratings
    assert ratings["a"] == pytest.approx(ratings["b"], abs=1e-6)
    # Three wins and one tie: a scores 3.5 of 4, odds 7 to 1 -> 400 * log10(7) points apart.
    battles = pd.DataFrame({"model_a": ["a"] * 4, "model_b": ["b"] * 4, "winner": ["a", "a", "a", "tie"]})
    ratings = fit_bt(pair_counts(battles), scale=UNANCHORED).ratings
    assert ratings["a"] - ratings["b"] == pytest.approx(400 * np.log10(7), abs=1e-4)
    battles.loc[3, "winner"] = "both_bad"
    dropped = fit_bt(pair_counts(battles), BTConfig(both_bad_as_tie=False, l2=0.5), UNANCHORED).ratings
    kept = fit_bt(pair_counts(battles), BTConfig(l2=0.5), UNANCHORED).ratings
    assert dropped["a"] - dropped["b"] > kept["a"] - kept["b"]


def test_grouped_counts_equal_per_battle_counts_and_orientation_is_kept():
    rng = np.random.default_rng(0)
    battles = simulate_battles(true_ratings(6, rng), 3000, rng, tie_rate=0.2)
    grouped = battles.groupby(["model_a", "model_b", "winner"]).size().reset_index(name="count")
    direct, via_sql_shape = pair_counts(battles), pair_counts_from_grouped(grouped)
    np.testing.assert_array_equal(direct.counts, via_sql_shape.counts)
    counts = pair_counts_from_grouped(pd.DataFrame(
        {"model_a": ["z", "a"], "model_b": ["a", "z"], "winner": ["model_a", "b"], "count": [3, 2]}))
    assert counts.models == ["a", "z"]
    assert counts.counts[0].tolist() == [0.0, 5.0, 0.0, 0.0]  # z won all five
    assert counts.votes_per_model().to_dict() == {"a": 5, "z": 5}


def test_bad_input_names_the_row():
    battles = pd.DataFrame({"model_a": ["a", "b"], "model_b": ["b", "a"], "winner": ["a", "draw"]})
    with pytest.raises(ValueError, match="row 1: unknown winner 'draw'"):
        pair_counts(battles)
    with pytest.raises(ValueError, match="lacks columns"):
        pair_counts(battles.drop(columns="winner"))


def test_unbeaten_model_stays_finite_with_ridge():
    battles = pd.DataFrame({"model_a": ["a", "a", "b"], "model_b": ["b", "c", "c"], "winner": ["a", "a", "tie"]})
    ratings = fit_bt(pair_counts(battles), BTConfig(l2=0.1), UNANCHORED).ratings
    assert np.isfinite(ratings).all()
    assert ratings.idxmax() == "a"


def test_batched_rounds_equal_separate_fits():
    rng = np.random.default_rng(2)
    counts = pair_counts(simulate_battles(true_ratings(8, rng), 5000, rng, tie_rate=0.1))
    cells = multinomial_cells(counts, 5, rng)
    batched = fit_bt_rounds(counts, cells, scale=UNANCHORED)
    for r in range(5):
        single = fit_bt(PairCounts(counts.models, counts.first, counts.second, cells[r]), scale=UNANCHORED)
        np.testing.assert_allclose(batched.iloc[r].to_numpy(), single.ratings.to_numpy(), atol=1e-6)


def test_ranks_respect_intervals():
    lower = pd.Series([1300, 1290, 1200, 1100], index=list("abcd"))
    upper = pd.Series([1320, 1310, 1295, 1150], index=list("abcd"))
    assert ci_ranks(lower, upper).tolist() == [1, 1, 2, 4]
    table = leaderboard_table(pd.Series([1310, 1300, 1250, 1120], index=list("abcd")),
                              se=pd.Series([5.0, 5.0, 24.0, 12.0], index=list("abcd")))
    assert table["model"].tolist() == list("abcd")
    assert table["rank"].tolist() == [1, 1, 2, 4]  # c: 1250 +- 47 ends below a's lower bound 1300.2
