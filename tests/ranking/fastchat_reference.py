"""A compact re-statement of FastChat's rating code (fastchat/serve/monitor/rating_systems.py @ 0e6d3e4).

Written from reading that file, for parity tests and the leaderboard benchmark: the same data
preparation (unique matchup/outcome rows with counts; per-battle style features as
``(a - b) / (a + b + 1)`` standardized), the same objectives and the same optimizer settings
(L-BFGS-B, maxiter 100, gtol 1e-6, ridge 0.5 for style control), the same multinomial or row
resampling and a process pool for bootstrap rounds. Ratings are ``r * 400 + 1000`` with the anchor
model pinned at 1114 when present.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from functools import partial

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

ANCHOR, ANCHOR_RATING = "mixtral-8x7b-instruct-v0.1", 1114.0
STYLE_KEYS = ("tokens", "headers", "lists", "bold")
_A_POINTS = {"model_a": 2, "a": 2, "model_b": 0, "b": 0}  # anything else is a tie (1)


def _indices(df: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    codes, names = pd.factorize(pd.concat([df["model_a"], df["model_b"]]))
    return np.column_stack([codes[: len(df)], codes[len(df):]]), list(names)


def _outcome_codes(df: pd.DataFrame) -> np.ndarray:
    return df["winner"].map(_A_POINTS).fillna(1).to_numpy(np.int32)


def unique_matchups(df: pd.DataFrame):
    """Unique (a, b, outcome) rows with their counts; outcome 1, 0.5 or 0 for model a."""
    pairs, models = _indices(df)
    rows, counts = np.unique(np.column_stack([pairs, _outcome_codes(df)]), axis=0, return_counts=True)
    return rows[:, :2], rows[:, 2] / 2.0, models, counts.astype(float)


def _loss_grad(r, pairs, y, w, alpha):
    p = expit(alpha * (r[pairs[:, 0]] - r[pairs[:, 1]]))
    loss = -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum()
    g = -alpha * w * (y - p)
    grad = np.zeros_like(r)
    np.add.at(grad, pairs, g[:, None] * np.array([1.0, -1.0]))
    return loss, grad


# FastChat's settings; CONVERGED runs the same estimator until its gradient is negligible, which
# sparse data needs (FastChat's 100 iterations stop short there).
FASTCHAT_OPTIONS = {"maxiter": 100, "gtol": 1e-6}
CONVERGED = {"maxiter": 20_000, "gtol": 1e-9, "ftol": 1e-15}


def lbfgs_bt(pairs, y, n_models, alpha, weights, options=None):
    res = minimize(_loss_grad, np.zeros(n_models), args=(pairs, y, weights, alpha), jac=True,
                   method="L-BFGS-B", options=options or FASTCHAT_OPTIONS)
    return res.x


def to_points(r: np.ndarray, models: list[str]) -> np.ndarray:
    points = r * 400.0 + 1000.0
    if ANCHOR in models:
        points = points + ANCHOR_RATING - points[..., [models.index(ANCHOR)]]
    return points


def reference_bt(df: pd.DataFrame, options=None) -> pd.Series:
    pairs, y, models, w = unique_matchups(df)
    return pd.Series(to_points(lbfgs_bt(pairs, y, len(models), math.log(10), w, options), models), index=models)


def reference_bt_weights(df: pd.DataFrame, rounds: int, seed: int = 0):
    """The matchups and FastChat's multinomial bootstrap weights (rounds, unique rows), normalized."""
    pairs, y, models, w = unique_matchups(df)
    draws = np.random.default_rng(seed).multinomial(len(df), w / w.sum(), size=rounds)
    return pairs, y, models, draws / len(df)


def reference_bootstrap_bt(df: pd.DataFrame, rounds: int, processes: int = 2, seed: int = 0) -> pd.DataFrame:
    pairs, y, models, boot = reference_bt_weights(df, rounds, seed)
    fit = partial(lbfgs_bt, pairs, y, len(models), math.log(10))
    with mp.Pool(processes) as pool:
        thetas = np.array(pool.map(fit, boot))
    return pd.DataFrame(to_points(thetas, models), columns=models)


def style_inputs(df: pd.DataFrame):
    """Per-battle pairs, standardized style features and outcomes, as FastChat prepares them."""
    pairs, models = _indices(df)
    y = _outcome_codes(df) / 2.0
    a = np.stack([df[f"{key}_a"].to_numpy(float) for key in STYLE_KEYS])
    b = np.stack([df[f"{key}_b"].to_numpy(float) for key in STYLE_KEYS])
    ratio = (a - b) / (a + b + 1.0)
    features = ((ratio - ratio.mean(axis=1, keepdims=True)) / ratio.std(axis=1, keepdims=True)).T
    return pairs, features, y, models


def _style_loss_grad(params, n_models, pairs, x, y, alpha, reg):
    r, beta = params[:n_models], params[n_models:]
    p = expit(alpha * (r[pairs[:, 0]] - r[pairs[:, 1]]) + x @ beta)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum() + reg / 2 * params @ params
    grad = reg * params
    np.add.at(grad[:n_models], pairs, (-alpha * (y - p))[:, None] * np.array([1.0, -1.0]))
    grad[n_models:] -= x.T @ (y - p)
    return loss, grad


def lbfgs_style(pairs, x, y, n_models, rows=None, alpha=math.log(10), reg=0.5, options=None):
    if rows is not None:
        pairs, x, y = pairs[rows], x[rows], y[rows]
    res = minimize(_style_loss_grad, np.zeros(n_models + x.shape[1]), args=(n_models, pairs, x, y, alpha, reg),
                   jac=True, method="L-BFGS-B", options=options or FASTCHAT_OPTIONS)
    return res.x


def reference_style(df: pd.DataFrame, options=None) -> tuple[pd.Series, np.ndarray]:
    pairs, x, y, models = style_inputs(df)
    params = lbfgs_style(pairs, x, y, len(models), options=options)
    return pd.Series(to_points(params[: len(models)], models), index=models), params[len(models):]


def reference_bootstrap_style(df: pd.DataFrame, rounds: int, processes: int = 2, seed: int = 0):
    pairs, x, y, models = style_inputs(df)
    rows = np.random.default_rng(seed).integers(0, len(df), size=(rounds, len(df)))
    fit = partial(lbfgs_style, pairs, x, y, len(models))
    with mp.Pool(processes) as pool:
        params = np.array(pool.map(fit, rows))
    return pd.DataFrame(to_points(params[:, : len(models)], models), columns=models)
