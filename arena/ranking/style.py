"""Style control: Bradley-Terry with covariates for the answers' style differences.

Features per answer (summed over a conversation's assistant turns): length in tokens, markdown
headers, list items and bold spans. Per battle each feature becomes ``(a - b) / (a + b + 1)``,
then is standardized over the table, as in FastChat's ``compute_style_control``. The fit minimizes
``-loglik + reg/2 * (|r|^2 + |beta|^2)`` where ``r`` are ratings in log-``base`` units (FastChat's
parametrization, so ``reg=0.5`` matches its default) and ``beta`` the style coefficients.

Sufficient statistics: the rating part of the gradient and Hessian only needs per-pair sums, so
battles are sorted by pair and reduced with ``np.add.reduceat``; the Hessian is assembled from
per-pair Laplacian weights, per-pair feature sums and a K x K feature Gram matrix. The per-battle
feature values are continuous, so the logistic terms themselves cannot be aggregated further.
Bootstrap rounds are batched, warm-started at the point fit, and fitted by Newton steps together.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from arena.ranking.battles import normalize_winner
from arena.ranking.bradley_terry import (
    capped_newton_step,
    one_blas_thread,
    pair_laplacian,
    scatter_pairs,
)
from arena.ranking.scale import RatingScale

STYLE_FEATURES = ("tokens", "headers", "lists", "bold")

_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.DOTALL)
_TOKEN = re.compile(r"\w+|[^\w\s]")
_HEADER = re.compile(r"^#{1,6}\s", re.MULTILINE)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")

# Work arrays of one Newton batch hold at most this many (round, battle) numbers each: 8 MB arrays
# stay in the malloc heap, larger ones are mmapped and page-faulted afresh on every step (4x slower).
BATCH_ELEMENTS = 1_000_000


def answer_style(text: str) -> dict[str, int]:
    """Style counts of one answer. Tokens are words and punctuation marks (a tokenizer-free proxy);
    markdown elements are counted outside fenced code blocks, which would otherwise add false ones."""
    prose = _CODE_BLOCK.sub("", text)
    return {
        "tokens": len(_TOKEN.findall(text)),
        "headers": len(_HEADER.findall(prose)),
        "lists": len(_LIST_ITEM.findall(prose)),
        "bold": len(_BOLD.findall(prose)),
    }


def battle_style(answers_a: list[str], answers_b: list[str]) -> dict[str, dict[str, int]]:
    """Style of both sides of a battle, summed over their assistant turns; store it with the battle."""

    def total(answers: list[str]) -> dict[str, int]:
        styles = [answer_style(text) for text in answers]
        return {feature: sum(style[feature] for style in styles) for feature in STYLE_FEATURES}

    return {"a": total(answers_a), "b": total(answers_b)}


def style_columns() -> list[str]:
    """Columns a style-annotated battles table must have: ``<feature>_a`` and ``<feature>_b``."""
    return [f"{feature}_{side}" for side in ("a", "b") for feature in STYLE_FEATURES]


def normalized_style_differences(battles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardized ``(a - b) / (a + b + 1)`` per feature: (features (N, K), mean, std) in a's favour."""
    missing = [c for c in style_columns() if c not in battles.columns]
    if missing:
        raise ValueError(f"battles table lacks style columns {missing}")
    a = battles[[f"{f}_a" for f in STYLE_FEATURES]].to_numpy(float)
    b = battles[[f"{f}_b" for f in STYLE_FEATURES]].to_numpy(float)
    if (a < 0).any() or (b < 0).any():
        raise ValueError("style counts must be non-negative")
    ratio = (a - b) / (a + b + 1.0)
    mean, std = ratio.mean(axis=0), ratio.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (ratio - mean) / std, mean, std


@dataclass(frozen=True)
class StyleConfig:
    """Options of the style-controlled fit (``reg`` as in FastChat; both_bad counted as a tie or dropped)."""

    reg: float = 0.5
    both_bad_as_tie: bool = True
    max_iter: int = 100
    # Newton converges quadratically: once a step is below 1e-5 (0.002 points) the rest is ~1e-10.
    tol: float = 1e-5


@dataclass(frozen=True)
class StyleData:
    """Battles prepared for fitting: sorted by pair, oriented so the first model has the smaller index."""

    models: list[str]
    first: np.ndarray  # per pair
    second: np.ndarray  # per pair
    pair_starts: np.ndarray  # start of each pair's run of battles
    pair_of_battle: np.ndarray  # per sorted battle
    outcome: np.ndarray  # points of the first model per sorted battle: 1, 0.5, 0
    features: np.ndarray  # (N, K) float32, oriented toward the first model
    features_t: np.ndarray  # the same, transposed (K, N) and contiguous
    order: np.ndarray  # sorted position -> original row of the kept battles
    n_rows: int  # rows of the original table

    @property
    def n_models(self) -> int:
        return len(self.models)


@dataclass(frozen=True)
class StyleFit:
    """Style-controlled ratings (Elo points), style coefficients (per standardized feature), raw params."""

    ratings: pd.Series
    coefficients: pd.Series
    params: np.ndarray
    converged: bool


def prepare_style_data(battles: pd.DataFrame, config: StyleConfig | None = None,
                       models: list[str] | None = None) -> StyleData:
    """Sort, orient and featurize a style-annotated battles table once, for any number of fits."""
    config = config or StyleConfig()
    features, _, _ = normalized_style_differences(battles)
    winner = normalize_winner(battles["winner"]).to_numpy()
    points = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5 if config.both_bad_as_tie else np.nan}
    outcome = pd.Series(winner).map(points).to_numpy(float)
    models = models or sorted(set(pd.unique(battles["model_a"])) | set(pd.unique(battles["model_b"])))
    categories = pd.CategoricalDtype(models)
    ia = battles["model_a"].astype(categories).cat.codes.to_numpy(np.int64)
    ib = battles["model_b"].astype(categories).cat.codes.to_numpy(np.int64)
    if (ia < 0).any() or (ib < 0).any():
        raise ValueError("battles name models outside the given model list")
    keep = ~np.isnan(outcome) & (ia != ib)
    swap = ia > ib
    first, second = np.where(swap, ib, ia), np.where(swap, ia, ib)
    outcome = np.where(swap, 1.0 - outcome, outcome)
    features = np.where(swap[:, None], -features, features)
    rows = np.flatnonzero(keep)
    key = first[rows] * len(models) + second[rows]
    order = rows[np.argsort(key, kind="stable")]
    sorted_key = first[order] * len(models) + second[order]
    keys, starts, pair_of_battle = np.unique(sorted_key, return_index=True, return_inverse=True)
    return StyleData(
        models=list(models),
        first=keys // len(models),
        second=keys % len(models),
        pair_starts=starts,
        pair_of_battle=pair_of_battle,
        outcome=outcome[order].astype(np.float32),
        features=np.ascontiguousarray(features[order], dtype=np.float32),
        features_t=np.ascontiguousarray(features[order].T, dtype=np.float32),
        order=order,
        n_rows=len(battles),
    )


def _newton_step_parts(data: StyleData, theta: np.ndarray, beta: np.ndarray, weights: np.ndarray,
                       alpha: float, reg: float) -> tuple[np.ndarray, np.ndarray]:
    """Gradient (G, M+K) of the penalized log-likelihood and the negated Hessian (G, M+K, M+K).

    The per-battle passes run in float32 (half the memory traffic); sums that feed the Newton
    system are carried to float64, whose rounding error stays far below a hundredth of a point.
    """
    m, k = data.n_models, data.features.shape[1]
    diff = (theta[:, data.first] - theta[:, data.second]).astype(np.float32)
    logit = diff[:, data.pair_of_battle] + (beta.astype(np.float32) @ data.features_t)
    p = 0.5 + 0.5 * np.tanh(0.5 * logit)  # the logistic function with one transcendental call
    residual = weights * (data.outcome - p)
    curvature = weights * p * (1.0 - p)
    penalty_theta = reg / alpha**2  # the ridge is on r = theta / alpha
    gradient = np.empty((theta.shape[0], m + k))
    gradient[:, :m] = scatter_pairs(
        np.add.reduceat(residual, data.pair_starts, axis=1, dtype=np.float64), data.first, data.second, m
    ) - penalty_theta * theta
    gradient[:, m:] = (residual @ data.features).astype(np.float64) - reg * beta
    hessian = np.zeros((theta.shape[0], m + k, m + k))
    hessian[:, :m, :m] = pair_laplacian(
        np.add.reduceat(curvature, data.pair_starts, axis=1, dtype=np.float64), data.first, data.second, m
    ) + (penalty_theta + 1e-9) * np.eye(m)
    if reg == 0:
        hessian[:, :m, :m] += 1.0 / m
    for j in range(k):
        weighted = curvature * data.features_t[j]
        per_pair = np.add.reduceat(weighted, data.pair_starts, axis=1, dtype=np.float64)
        cross = scatter_pairs(per_pair, data.first, data.second, m)
        hessian[:, :m, m + j] = cross
        hessian[:, m + j, :m] = cross
        hessian[:, m + j, m:] = weighted @ data.features
    hessian[:, m:, m:] += reg * np.eye(k)
    return gradient, hessian


def newton_style(data: StyleData, weights: np.ndarray, config: StyleConfig, alpha: float,
                 start: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Fit G weightings (G, N sorted battles) together; returns params (G, M+K): theta then beta."""
    m, k = data.n_models, data.features.shape[1]
    params = np.zeros((weights.shape[0], m + k)) if start is None else np.tile(start, (weights.shape[0], 1))
    with one_blas_thread():
        return _newton_style_loop(data, weights, config, alpha, params)


def _newton_style_loop(data: StyleData, weights: np.ndarray, config: StyleConfig, alpha: float,
                       params: np.ndarray) -> tuple[np.ndarray, bool]:
    m = data.n_models
    for _ in range(config.max_iter):
        gradient, hessian = _newton_step_parts(data, params[:, :m], params[:, m:], weights, alpha, config.reg)
        step, largest = capped_newton_step(hessian, gradient)
        params += step
        if largest < config.tol:
            return params, True
    return params, False


def fit_style_bt(battles: pd.DataFrame | StyleData, config: StyleConfig | None = None,
                 scale: RatingScale | None = None) -> StyleFit:
    """Style-controlled Bradley-Terry ratings on the Elo scale, plus the style coefficients."""
    config = config or StyleConfig()
    scale = scale or RatingScale()
    data = battles if isinstance(battles, StyleData) else prepare_style_data(battles, config)
    alpha = math.log(scale.base)
    params, converged = newton_style(data, np.ones((1, len(data.outcome)), np.float32), config, alpha)
    m = data.n_models
    return StyleFit(
        ratings=pd.Series(scale.to_points(params[0, :m], data.models), index=data.models, name="rating"),
        coefficients=pd.Series(params[0, m:], index=list(STYLE_FEATURES), name="coefficient"),
        params=params[0],
        converged=converged,
    )


def row_resample_weights(n_rows: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights (rounds, n_rows) float32: how often each battle is drawn when resampling rows."""
    weights = np.empty((rounds, n_rows), dtype=np.float32)
    for r in range(rounds):
        weights[r] = np.bincount(rng.integers(0, n_rows, n_rows), minlength=n_rows)
    return weights


def fit_style_rounds(data: StyleData, weights: np.ndarray | Callable[[int], np.ndarray], rounds: int | None = None,
                     config: StyleConfig | None = None, scale: RatingScale | None = None,
                     warm_start: StyleFit | None = None) -> pd.DataFrame:
    """Fit one style-controlled model per bootstrap weighting; ratings (rounds x models) in Elo points.

    ``weights`` is either an array (rounds, original rows) or a function giving the next ``g``
    rounds' weights, so that a large bootstrap never holds all its weights at once.
    """
    config = config or StyleConfig()
    scale = scale or RatingScale()
    alpha = math.log(scale.base)
    if isinstance(weights, np.ndarray):
        array, rounds = weights, weights.shape[0]

        def next_weights(g: int, start: int) -> np.ndarray:
            return array[start : start + g]
    else:
        if rounds is None:
            raise ValueError("rounds is required when weights come from a function")
        generate = weights

        def next_weights(g: int, start: int) -> np.ndarray:
            return generate(g)
    batch = max(1, BATCH_ELEMENTS // max(1, len(data.order)))
    start_params = None if warm_start is None else warm_start.params
    thetas = []
    for first in range(0, rounds, batch):
        g = min(batch, rounds - first)
        sorted_weights = np.ascontiguousarray(next_weights(g, first)[:, data.order], dtype=np.float32)
        params, _ = newton_style(data, sorted_weights, config, alpha, start_params)
        thetas.append(params[:, : data.n_models])
    return pd.DataFrame(scale.to_points(np.concatenate(thetas), data.models), columns=data.models)


def bootstrap_style_bt(battles: pd.DataFrame | StyleData, rounds: int = 100, seed: int | None = 0,
                       config: StyleConfig | None = None, scale: RatingScale | None = None,
                       point: StyleFit | None = None) -> pd.DataFrame:
    """Bootstrap style-controlled ratings (rounds x models), resampling battles with replacement.

    Pass prepared ``StyleData`` and the ``point`` fit when you have them, to skip redoing both.
    """
    config = config or StyleConfig()
    data = battles if isinstance(battles, StyleData) else prepare_style_data(battles, config)
    point = point or fit_style_bt(data, config, scale)
    rng = np.random.default_rng(seed)
    return fit_style_rounds(data, lambda g: row_resample_weights(data.n_rows, g, rng), rounds, config, scale,
                            warm_start=point)
