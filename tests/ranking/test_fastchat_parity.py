"""Parity with FastChat's rating code, re-stated in fastchat_reference.py (same data, same resampling)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena.ranking import fit_bt, fit_style_bt, pair_counts
from arena.ranking.battles import pair_counts_from_grouped
from arena.ranking.bootstrap import fit_bt_rounds
from arena.ranking.simulate import simulate_battles, simulate_style_battles, true_ratings
from arena.ranking.style import fit_style_rounds, prepare_style_data

from . import fastchat_reference as ref


def named_truth(n_models: int, rng: np.random.Generator) -> pd.Series:
    """True ratings where one model is FastChat's anchor, so anchoring is exercised too."""
    truth = true_ratings(n_models, rng)
    truth.index = [*truth.index[:-1], ref.ANCHOR]
    return truth


@pytest.fixture(scope="module")
def battles() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return simulate_battles(named_truth(25, rng), 60_000, rng, tie_rate=0.2)


@pytest.fixture(scope="module")
def style_battles() -> pd.DataFrame:
    rng = np.random.default_rng(8)
    return simulate_style_battles(named_truth(15, rng), 30_000, rng)


def test_bt_matches_compute_bt_within_one_point(battles):
    ours = fit_bt(pair_counts(battles)).ratings
    theirs = ref.reference_bt(battles)
    assert ours[ref.ANCHOR] == pytest.approx(ref.ANCHOR_RATING)
    assert (ours - theirs[ours.index]).abs().max() < 1.0


def test_bootstrap_rounds_match_compute_bootstrap_bt_within_one_point(battles):
    pairs, y, models, boot = ref.reference_bt_weights(battles, rounds=4, seed=0)
    winner = np.select([y == 1.0, y == 0.0], ["a", "b"], "tie")
    names = np.asarray(models, dtype=object)
    cells = []
    for weights in boot:
        grouped = pd.DataFrame({"model_a": names[pairs[:, 0]], "model_b": names[pairs[:, 1]],
                                "winner": winner, "count": weights * len(battles)})
        cells.append(pair_counts_from_grouped(grouped, models=sorted(models)).counts)
    counts = pair_counts_from_grouped(grouped, models=sorted(models))
    ours = fit_bt_rounds(counts, np.stack(cells))
    for r, weights in enumerate(boot):
        theirs = ref.to_points(ref.lbfgs_bt(pairs, y, len(models), np.log(10), weights), models)
        theirs = pd.Series(theirs, index=models)[ours.columns]
        assert np.abs(ours.iloc[r].to_numpy() - theirs.to_numpy()).max() < 1.0


def test_style_control_matches_compute_style_control_within_two_points(style_battles):
    ours = fit_style_bt(style_battles)
    theirs, coefficients = ref.reference_style(style_battles)
    assert (ours.ratings - theirs[ours.ratings.index]).abs().max() < 2.0
    np.testing.assert_allclose(ours.coefficients.to_numpy(), coefficients, atol=1e-3)


def test_style_bootstrap_rounds_match_reference_within_two_points(style_battles):
    rows = np.random.default_rng(1).integers(0, len(style_battles), size=(3, len(style_battles)))
    weights = np.stack([np.bincount(r, minlength=len(style_battles)) for r in rows])
    data = prepare_style_data(style_battles)
    ours = fit_style_rounds(data, weights, warm_start=fit_style_bt(data))
    pairs, x, y, models = ref.style_inputs(style_battles)
    for r in range(len(rows)):
        params = ref.lbfgs_style(pairs, x, y, len(models), rows=rows[r])
        theirs = pd.Series(ref.to_points(params[: len(models)], models), index=models)[ours.columns]
        assert np.abs(ours.iloc[r].to_numpy() - theirs.to_numpy()).max() < 2.0
