"""Bradley-Terry maximum likelihood on aggregated pair counts, fitted by batched Newton steps.

The log-likelihood of a pair (i, j) with ``n`` votes and ``s`` points for i (a win is 1, a tie
0.5) is ``s * log p + (n - s) * log(1 - p)`` with ``p = sigmoid(theta_i - theta_j)``, the
"ties count half a win each way" form FastChat uses. Its Hessian is a weighted graph Laplacian,
so one Newton step for ``R`` independent weightings (bootstrap rounds) is ``R`` small dense
solves of size ``n_models``: the whole bootstrap is fitted at once.

The unpenalized MLE exists (is finite) exactly when the *comparison graph* is strongly connected:
an edge i -> j wherever i took a point from j (a win, or half a tie). A model that only won, or
only lost, against the rest has no finite strength. :func:`rated_models` finds the largest
strongly connected component; the fit rates those models and leaves the others unrated (NaN),
per bootstrap round as well, so one rare model can never drag everyone else's ratings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import expit
from threadpoolctl import threadpool_limits

from arena.ranking.battles import BOTH_BAD, FIRST_WINS, SECOND_WINS, TIE, PairCounts
from arena.ranking.scale import RatingScale

logger = logging.getLogger(__name__)

MAX_NEWTON_STEP = 4.0  # natural log-odds; keeps the first steps sane on nearly separable data


@dataclass(frozen=True)
class BTConfig:
    """Options of the Bradley-Terry fit.

    ``both_bad_as_tie``: count "both bad" votes as ties (FastChat) or drop them.
    ``l2``: ridge penalty ``l2/2 * |theta|^2`` in natural units; 0 is the plain MLE.
    """

    both_bad_as_tie: bool = True
    l2: float = 0.0
    max_iter: int = 100
    tol: float = 1e-9


@dataclass(frozen=True)
class BTFit:
    """A point fit: natural strengths, Elo-scale ratings, and convergence facts.

    ``rated`` marks the models with a finite MLE; the others have NaN ``theta`` and rating.
    """

    models: list[str]
    theta: np.ndarray
    ratings: pd.Series
    converged: bool
    iterations: int
    rated: np.ndarray

    @property
    def unrated(self) -> list[str]:
        """Models whose strength the votes do not determine (only wins, only losses, or no votes)."""
        return [m for m, ok in zip(self.models, self.rated, strict=True) if not ok]


def cell_points(config: BTConfig) -> np.ndarray:
    """Points for the first model of a pair per outcome column; NaN marks dropped outcomes."""
    points = np.empty(4)
    points[FIRST_WINS], points[SECOND_WINS], points[TIE] = 1.0, 0.0, 0.5
    points[BOTH_BAD] = 0.5 if config.both_bad_as_tie else np.nan
    return points


def pair_totals(cells: np.ndarray, config: BTConfig) -> tuple[np.ndarray, np.ndarray]:
    """Votes ``n`` and points ``s`` per pair from outcome cells of shape (..., n_pairs, 4)."""
    points = cell_points(config)
    kept = ~np.isnan(points)
    n = cells[..., kept].sum(axis=-1)
    s = cells[..., kept] @ points[kept]
    return n, s


def scatter_pairs(values: np.ndarray, first: np.ndarray, second: np.ndarray, n_models: int) -> np.ndarray:
    """Per-model sums of pair values: +value to the first model, -value to the second; (R, P) -> (R, M)."""
    rounds = values.shape[0]
    offsets = (np.arange(rounds) * n_models)[:, None]
    total = np.bincount((first + offsets).ravel(), values.ravel(), rounds * n_models)
    total -= np.bincount((second + offsets).ravel(), values.ravel(), rounds * n_models)
    return total.reshape(rounds, n_models)


def pair_laplacian(weights: np.ndarray, first: np.ndarray, second: np.ndarray, n_models: int) -> np.ndarray:
    """Weighted graph Laplacians, shape (R, M, M), from per-pair weights (R, P); pairs must be unique."""
    rounds = weights.shape[0]
    flat = np.zeros((rounds, n_models * n_models))
    flat[:, first * n_models + second] = -weights
    flat[:, second * n_models + first] = -weights
    laplacian = flat.reshape(rounds, n_models, n_models)
    diagonal = -laplacian.sum(axis=2)
    laplacian[:, np.arange(n_models), np.arange(n_models)] = diagonal
    return laplacian


def solve_small(matrices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Solve a stack of small systems (R, n, n) x = (R, n); call it under :func:`one_blas_thread`."""
    return np.linalg.solve(matrices, vectors[..., None])[..., 0]


def capped_newton_step(hessian: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, float]:
    """The Newton steps of a stack of systems, scaled so no coordinate moves more than
    ``MAX_NEWTON_STEP`` (a far-off start cannot overshoot), and the largest unscaled move (the
    convergence test). Call it under :func:`one_blas_thread`."""
    step = solve_small(hessian, gradient)
    largest = float(np.abs(step).max(initial=0.0))
    if largest > MAX_NEWTON_STEP:
        step *= MAX_NEWTON_STEP / largest
    return step, largest


def one_blas_thread() -> threadpool_limits:
    """Context limiting BLAS to one thread: threaded OpenBLAS on matrices this small spends its time
    waiting for its threads, and on a busy machine that wait grew a 30 ms batch of solves to seconds."""
    return threadpool_limits(limits=1, user_api="blas")


def rated_models(first: np.ndarray, second: np.ndarray, n: np.ndarray, s: np.ndarray, n_models: int,
                 within: np.ndarray | None = None) -> np.ndarray:
    """Per round (rows of ``n``, ``s``: (R, n_pairs)), the models of the largest strongly connected
    component of the comparison graph, where the MLE is finite: a (R, n_models) boolean mask.

    ``within`` (n_models,) restricts the choice to a set (the point fit's rated models), so a
    bootstrap round never rates a model the full data leaves unrated. Ties between equally large
    components go to the one with more votes.
    """
    rounds = n.shape[0]
    allowed = np.ones(n_models, bool) if within is None else within
    mask = np.zeros((rounds, n_models), bool)
    inside = allowed[first] & allowed[second]
    for r in range(rounds):
        forward = inside & (s[r] > 0)  # first took a point from second
        backward = inside & (n[r] - s[r] > 0)
        rows = np.concatenate([first[forward], second[backward]])
        cols = np.concatenate([second[forward], first[backward]])
        graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_models, n_models)).tocsr()
        _, labels = connected_components(graph, directed=True, connection="strong")
        labels = np.where(allowed, labels, -1)
        votes = np.bincount(first, n[r], n_models) + np.bincount(second, n[r], n_models)
        best, best_key = -1, (1, 0.0)  # a component must hold two models to rate anything
        for label in np.unique(labels[labels >= 0]):
            members = labels == label
            key = (int(members.sum()), float(votes[members].sum()))
            if key > best_key:
                best, best_key = label, key
        if best >= 0:
            mask[r] = labels == best
    return mask


def newton_bt(
    first: np.ndarray,
    second: np.ndarray,
    n: np.ndarray,
    s: np.ndarray,
    n_models: int,
    config: BTConfig,
    theta0: np.ndarray | None = None,
    rated: np.ndarray | None = None,
) -> tuple[np.ndarray, bool, int]:
    """Fit ``R`` Bradley-Terry problems at once; ``n``, ``s`` have shape (R, n_pairs).

    Returns strengths (R, n_models), whether every round converged, and the number of iterations.
    Without a ridge (``l2 == 0``) only the ``rated`` models (R, n_models) are fitted, on the votes
    among themselves, and the others come back NaN; by default :func:`rated_models` picks them.
    The Hessian is singular along the rated set's all-ones direction; adding ``u u^T / |C|``
    (``u`` its indicator) fixes that without moving the solution, and unrated models get a unit
    diagonal so their (zero) steps stay zero.
    """
    rounds = n.shape[0]
    theta = np.zeros((rounds, n_models)) if theta0 is None else np.nan_to_num(np.array(theta0, dtype=float))
    theta = np.broadcast_to(theta, (rounds, n_models)).copy()
    # A vanishing ridge keeps models without votes (in a round or a category) at zero.
    regularizer: np.ndarray = (config.l2 + 1e-9) * np.eye(n_models)[None]
    if config.l2 == 0:
        if rated is None:
            rated = rated_models(first, second, n, s, n_models)
        inside = rated[:, first] & rated[:, second]
        n, s = n * inside, s * inside
        u = rated.astype(float)
        size = np.maximum(u.sum(axis=1), 1.0)[:, None, None]
        regularizer = regularizer + u[:, :, None] * u[:, None, :] / size
        regularizer[:, np.arange(n_models), np.arange(n_models)] += 1.0 - u
    with one_blas_thread():
        theta, converged, iterations = _newton_bt_loop(first, second, n, s, n_models, config, theta, regularizer)
    if config.l2 == 0 and rated is not None:
        theta[~rated] = np.nan
    return theta, converged, iterations


def _newton_bt_loop(first: np.ndarray, second: np.ndarray, n: np.ndarray, s: np.ndarray, n_models: int,
                    config: BTConfig, theta: np.ndarray, regularizer: np.ndarray
                    ) -> tuple[np.ndarray, bool, int]:
    largest = np.inf
    for iteration in range(1, config.max_iter + 1):
        p = expit(theta[:, first] - theta[:, second])
        gradient = scatter_pairs(s - n * p, first, second, n_models) - config.l2 * theta
        hessian = pair_laplacian(n * p * (1.0 - p), first, second, n_models) + regularizer
        step, largest = capped_newton_step(hessian, gradient)
        theta += step
        if largest < config.tol:
            return theta, True, iteration
    logger.warning("Bradley-Terry fit did not converge in %d Newton steps (last step %.2e)",
                   config.max_iter, largest)
    return theta, False, config.max_iter


def fit_bt(
    counts: PairCounts, config: BTConfig | None = None, scale: RatingScale | None = None
) -> BTFit:
    """Bradley-Terry MLE on the Elo scale. Without a ridge, models outside the largest strongly
    connected part of the comparison graph have no finite MLE: they are left unrated (NaN)."""
    config = config or BTConfig()
    scale = scale or RatingScale()
    n, s = pair_totals(counts.counts[None], config)
    if config.l2 == 0:
        rated = rated_models(counts.first, counts.second, n, s, counts.n_models)
    else:
        rated = np.ones((1, counts.n_models), bool)
    theta, converged, iterations = newton_bt(counts.first, counts.second, n, s, counts.n_models, config,
                                             rated=rated if config.l2 == 0 else None)
    if not rated.all():
        unrated = [m for m, ok in zip(counts.models, rated[0], strict=True) if not ok]
        logger.info("no finite Bradley-Terry MLE for %d models (only wins, only losses or no votes): %s",
                    len(unrated), ", ".join(unrated[:10]))
    points = scale.to_points(theta[0], counts.models)
    return BTFit(
        models=counts.models,
        theta=theta[0],
        ratings=pd.Series(points, index=counts.models, name="rating"),
        converged=converged,
        iterations=iterations,
        rated=rated[0],
    )


def sandwich_covariance(
    counts: PairCounts, fit: BTFit, config: BTConfig | None = None, scale: RatingScale | None = None
) -> pd.DataFrame:
    """Robust (sandwich) covariance of the Elo-scale ratings: ``H^+ B H^+`` carried to the rating gauge.

    ``H`` is the Fisher information (a Laplacian) and ``B`` the sum of squared per-vote scores,
    both exact from the pair/outcome cells. Computed over the rated models (NaN for the others).
    """
    config = config or BTConfig()
    scale = scale or RatingScale()
    if not fit.rated.all():
        rated = counts.subset(fit.rated)
        sub_fit = BTFit(rated.models, fit.theta[fit.rated], fit.ratings[rated.models], fit.converged,
                        fit.iterations, np.ones(rated.n_models, bool))
        covariance = sandwich_covariance(rated, sub_fit, config, scale)
        return covariance.reindex(index=counts.models, columns=counts.models)
    models, m = counts.models, counts.n_models
    points = cell_points(config)
    kept = ~np.isnan(points)
    p = expit(fit.theta[counts.first] - fit.theta[counts.second])
    n = counts.counts[:, kept].sum(axis=1)
    squared_scores = (counts.counts[:, kept] * (points[kept][None, :] - p[:, None]) ** 2).sum(axis=1)
    info = pair_laplacian((n * p * (1 - p))[None], counts.first, counts.second, m)[0]
    meat = pair_laplacian(squared_scores[None], counts.first, counts.second, m)[0]
    info += config.l2 * np.eye(m)
    bread = np.linalg.pinv(info, hermitian=True)
    covariance = bread @ meat @ bread
    gauge = scale.gauge_matrix(models)
    return pd.DataFrame(gauge @ covariance @ gauge.T, index=models, columns=models)


def sandwich_se(
    counts: PairCounts, fit: BTFit, config: BTConfig | None = None, scale: RatingScale | None = None
) -> pd.Series:
    """Robust standard errors of the Elo-scale ratings (0 for an anchor model, NaN for unrated ones)."""
    covariance = sandwich_covariance(counts, fit, config, scale).to_numpy()
    return pd.Series(np.sqrt(np.clip(np.diag(covariance), 0, None)), index=counts.models, name="se")
