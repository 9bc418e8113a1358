"""Synthetic battles from known true ratings, for tests, benchmarks and policy simulations."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from arena.ranking.style import STYLE_FEATURES, normalized_style_differences


def true_ratings(n_models: int, rng: np.random.Generator, spread: float = 150.0) -> pd.Series:
    """Ratings in Elo points, normal with sd ``spread`` around 1000, named ``model-000`` ..."""
    names = [f"model-{i:03d}" for i in range(n_models)]
    return pd.Series(1000.0 + spread * rng.standard_normal(n_models), index=names, name="true_rating")


def win_probability(rating_a: np.ndarray, rating_b: np.ndarray, scale: float = 400.0) -> np.ndarray:
    """P(a beats b) under Bradley-Terry on the Elo scale (base 10)."""
    return 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / scale))


def random_pairs(n_models: int, n_battles: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random ordered pairs of distinct models."""
    a = rng.integers(0, n_models, n_battles)
    b = (a + rng.integers(1, n_models, n_battles)) % n_models
    return a, b


def simulate_battles(
    ratings: pd.Series,
    n_battles: int,
    rng: np.random.Generator,
    tie_rate: float = 0.0,
    both_bad_share: float = 0.3,
) -> pd.DataFrame:
    """Battles between uniformly drawn pairs: a tie with probability ``tie_rate`` (a share of them
    labelled both_bad), otherwise a Bradley-Terry draw. With ``tie_rate = 0`` the BT-with-ties-as-half
    MLE is consistent for ``ratings``."""
    names = ratings.index.to_numpy()
    values = ratings.to_numpy()
    a, b = random_pairs(len(names), n_battles, rng)
    a_wins = rng.random(n_battles) < win_probability(values[a], values[b])
    winner = np.where(a_wins, "a", "b").astype(object)
    tie = rng.random(n_battles) < tie_rate
    winner[tie] = np.where(rng.random(int(tie.sum())) < both_bad_share, "both_bad", "tie")
    return pd.DataFrame({"model_a": names[a], "model_b": names[b], "winner": winner})


def simulate_style_battles(
    ratings: pd.Series,
    n_battles: int,
    rng: np.random.Generator,
    style_coefficients: tuple[float, ...] = (0.25, 0.05, 0.05, 0.05),
    tie_rate: float = 0.1,
) -> pd.DataFrame:
    """Battles whose outcome also depends on the answers' style.

    Each model has its own typical answer length and markdown habits; the true logit is the rating
    difference (natural units) plus ``style_coefficients`` times the normalized style differences.
    Columns: model_a, model_b, winner and ``<feature>_a`` / ``<feature>_b`` for every style feature.
    """
    names = ratings.index.to_numpy()
    n = len(names)
    a, b = random_pairs(n, n_battles, rng)
    typical_length = rng.uniform(150, 900, n)
    markdown_habit = rng.uniform(0.0, 4.0, (n, 3))
    frame = {"model_a": names[a], "model_b": names[b]}
    for side, idx in (("a", a), ("b", b)):
        frame[f"tokens_{side}"] = rng.poisson(typical_length[idx])
        for k, feature in enumerate(STYLE_FEATURES[1:]):
            frame[f"{feature}_{side}"] = rng.poisson(markdown_habit[idx, k])
    battles = pd.DataFrame(frame)
    features = normalized_style_differences(battles)[0]
    logit = (ratings.to_numpy()[a] - ratings.to_numpy()[b]) * np.log(10) / 400 + features @ np.array(
        style_coefficients
    )
    a_wins = rng.random(n_battles) < expit(logit)
    winner = np.where(a_wins, "a", "b").astype(object)
    winner[rng.random(n_battles) < tie_rate] = "tie"
    battles.insert(2, "winner", winner)
    return battles
