"""Parity with FastChat's estimator (run to convergence) on skewed and sparse data, and the
handling of models whose Bradley-Terry MLE is infinite (only wins or only losses)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena.ranking import bootstrap_bt, fit_bt, fit_style_bt, pair_counts
from arena.ranking.bootstrap import confidence_intervals
from arena.ranking.simulate import STYLE_FEATURES, true_ratings, win_probability

from . import fastchat_reference as ref

N_MODELS = 120


def skewed_pairs(n_models: int, n_battles: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs drawn with Zipf-like model popularity: a few models get most votes, many get a handful."""
    popularity = 1.0 / np.arange(1, n_models + 1) ** 1.6
    popularity /= popularity.sum()
    a = rng.choice(n_models, n_battles, p=popularity)
    b = rng.choice(n_models, n_battles, p=popularity)
    same = a == b
    b[same] = (a[same] + rng.integers(1, n_models, int(same.sum()))) % n_models
    return a, b


def sparse_battles(rng: np.random.Generator, n_battles: int = 12_000, style: bool = False,
                   rare_models: int = 8, rare_votes: int = 6) -> pd.DataFrame:
    """Zipf-popular pairs among ``N_MODELS`` models, the last ``rare_models`` of which play only
    ``rare_votes`` battles each, against the popular ones."""
    truth = true_ratings(N_MODELS, rng)
    names, values = truth.index.to_numpy(), truth.to_numpy()
    a, b = skewed_pairs(N_MODELS - rare_models, n_battles - rare_models * rare_votes, rng)
    rare = np.repeat(np.arange(N_MODELS - rare_models, N_MODELS), rare_votes)
    a, b = np.concatenate([a, rare]), np.concatenate([b, rng.integers(0, 5, len(rare))])
    n_battles = len(a)
    frame = {"model_a": names[a], "model_b": names[b]}
    logit = (values[a] - values[b]) * np.log(10) / 400
    if style:
        length = rng.uniform(150, 900, N_MODELS)
        for side, idx in (("a", a), ("b", b)):
            frame[f"tokens_{side}"] = rng.poisson(length[idx])
            for feature in STYLE_FEATURES[1:]:
                frame[f"{feature}_{side}"] = rng.poisson(2.0, n_battles)
        ratio = (frame["tokens_a"] - frame["tokens_b"]) / (frame["tokens_a"] + frame["tokens_b"] + 1.0)
        logit = logit + 0.3 * (ratio - ratio.mean()) / ratio.std()
    a_wins = rng.random(n_battles) < 1.0 / (1.0 + np.exp(-logit))
    winner = np.where(a_wins, "model_a", "model_b").astype(object)
    winner[rng.random(n_battles) < 0.15] = "tie"
    winner[rng.random(n_battles) < 0.05] = "tie (bothbad)"
    return pd.DataFrame({**frame, "winner": winner})


@pytest.fixture(scope="module")
def sparse() -> pd.DataFrame:
    battles = sparse_battles(np.random.default_rng(11))
    counts = pair_counts(battles)
    fit = fit_bt(counts)
    # Keep the test about the well-posed case: drop models the data leaves unrated (checked below).
    return battles[battles["model_a"].isin(fit.ratings.dropna().index) & battles["model_b"].isin(
        fit.ratings.dropna().index)]


def test_sparse_data_is_skewed(sparse):
    votes = pd.concat([sparse["model_a"], sparse["model_b"]]).value_counts()
    assert votes.iloc[0] > 50 * votes.iloc[-1]  # the most-voted model has 50x the votes of the rarest
    assert votes.min() <= 6


def test_bt_matches_fastchat_run_to_convergence_on_sparse_skewed_data(sparse):
    fit = fit_bt(pair_counts(sparse))
    assert fit.converged and not fit.unrated
    theirs = ref.reference_bt(sparse, ref.CONVERGED)
    assert (fit.ratings - theirs[fit.ratings.index]).abs().max() < 1.0


def test_fastchat_default_iterations_stop_short_on_sparse_data(sparse):
    """Why the comparison runs FastChat's estimator to convergence: its 100 L-BFGS steps are not enough."""
    converged = ref.reference_bt(sparse, ref.CONVERGED)
    default = ref.reference_bt(sparse)
    assert (converged - default).abs().max() > (fit_bt(pair_counts(sparse)).ratings - converged).abs().max()


def test_style_control_matches_fastchat_run_to_convergence_on_sparse_data():
    battles = sparse_battles(np.random.default_rng(12), n_battles=15_000, style=True)
    ours = fit_style_bt(battles)
    theirs, coefficients = ref.reference_style(battles, ref.CONVERGED)
    assert (ours.ratings - theirs[ours.ratings.index]).abs().max() < 2.0
    np.testing.assert_allclose(ours.coefficients.to_numpy(), coefficients, atol=1e-3)


def unbeaten_newcomer(battles: pd.DataFrame, wins: int = 3) -> pd.DataFrame:
    """``battles`` plus a model that won each of its few battles: its MLE is +infinity."""
    opponents = battles["model_a"].value_counts().index[:wins]
    extra = pd.DataFrame({"model_a": ["newcomer"] * wins, "model_b": list(opponents), "winner": ["model_a"] * wins})
    return pd.concat([battles[["model_a", "model_b", "winner"]], extra], ignore_index=True)


def test_a_model_with_only_wins_is_unrated_and_moves_nobody(sparse):
    plain = fit_bt(pair_counts(sparse))
    fit = fit_bt(pair_counts(unbeaten_newcomer(sparse)))
    assert fit.unrated == ["newcomer"] and np.isnan(fit.ratings["newcomer"])
    # The others' MLE is the limit as the newcomer's strength goes to infinity: the fit without it.
    assert (fit.ratings.drop("newcomer") - plain.ratings).abs().max() < 1e-6


def test_bootstrap_rounds_that_cut_a_rare_model_off_leave_the_others_intervals_alone(sparse):
    """A rare model that sometimes keeps only its wins in a resample must not widen everyone's interval."""
    votes = pd.concat([sparse["model_a"], sparse["model_b"]]).value_counts()
    top = votes.index[0]
    counts = pair_counts(sparse)
    samples = bootstrap_bt(counts, rounds=200, seed=3)
    unrated_share = samples[votes.index[votes <= 6]].isna().mean()
    assert 0 < unrated_share.max() < 1  # some rounds do leave a rare model without a finite MLE
    rare = unrated_share.idxmax()
    assert np.isfinite(samples.drop(columns=rare).to_numpy()).mean() > 0.9
    intervals = confidence_intervals(samples)
    width = intervals.loc[top, "upper"] - intervals.loc[top, "lower"]
    se = 1.96 * 2 * samples[top].std()
    assert width < 1.5 * se and width < 60  # no heavy tail from diverged rounds
    assert samples.abs().max().max() < 5000  # nothing diverged


def test_no_model_is_left_out_when_the_graph_is_strongly_connected(sparse):
    fit = fit_bt(pair_counts(sparse))
    assert fit.rated.all()
    assert fit.ratings.mean() == pytest.approx(1000.0)


def test_win_probability_helper_is_the_bt_curve():
    assert win_probability(np.array([1400.0]), np.array([1000.0]))[0] == pytest.approx(10 / 11)
