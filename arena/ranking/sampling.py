"""Pair sampling for the battle UI: uniform, or active (votes go where intervals shrink fastest).

Two active rules, both from the Chatbot Arena paper's idea (Chiang et al., 2024, section 5):

* :func:`paper_pair_weights`, the paper's rule: pick pair ``a`` with probability proportional to
  ``sqrt(var_a / n_a) - sqrt(var_a / (n_a + 1))``, the shrinkage of that pair's win-rate standard
  error from one more vote (``var_a = p_a (1 - p_a)`` under the current fit). It targets the
  win-rate matrix; in our simulations it barely narrows the *rating* intervals (about 1%).
* :func:`active_pair_weights`, used by the arena: the same principle applied to the rating
  intervals themselves. With ``C`` the ratings' covariance (inverse Fisher information) a vote on
  ``(i, j)`` with ``v = p (1 - p)`` lowers ``sum_m w_m Var_m`` by ``v x'CWCx / (1 + v x'Cx)``
  (Sherman-Morrison; ``x = e_i - e_j``, ``W = diag(Var_m ** focus)`` favours the widest intervals).
  Pairs are drawn with probability proportional to that gain to the power ``sharpness``, so
  the choice stays random for visitors while most votes go where they help most.

One pseudo-vote per pair keeps unseen pairs finite; a floor on ``v`` keeps every pair possible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit

from arena.ranking.battles import PairCounts
from arena.ranking.bradley_terry import BTConfig, fit_bt, pair_laplacian

MIN_VARIANCE = 0.01
PSEUDO_VOTES = 1.0


@dataclass(frozen=True)
class PairWeights:
    """Sampling probabilities over all unordered pairs ``(first[p], second[p])`` of ``models``."""

    models: list[str]
    first: np.ndarray
    second: np.ndarray
    probabilities: np.ndarray

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """Indices of sampled pairs."""
        return rng.choice(len(self.probabilities), size=size, p=self.probabilities)

    def as_series(self) -> pd.Series:
        """Probabilities indexed by (model_a, model_b) names."""
        names = np.asarray(self.models, dtype=object)
        index = pd.MultiIndex.from_arrays([names[self.first], names[self.second]], names=["model_a", "model_b"])
        return pd.Series(self.probabilities, index=index, name="probability")


def all_pairs(n_models: int) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair (i < j)."""
    first, second = np.triu_indices(n_models, k=1)
    return first.astype(np.int64), second.astype(np.int64)


def uniform_pair_weights(models: list[str]) -> PairWeights:
    """Every pair equally likely."""
    first, second = all_pairs(len(models))
    probabilities = np.full(len(first), 1.0 / len(first))
    return PairWeights(list(models), first, second, probabilities)


def pair_votes(counts: PairCounts, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Vote counts of the pairs ``(first, second)`` (zero where never played)."""
    m = counts.n_models
    lookup = np.zeros(m * m)
    lookup[counts.first * m + counts.second] = counts.counts.sum(axis=1)
    return lookup[first * m + second]


def _current_strengths(counts: PairCounts, theta: np.ndarray | None) -> np.ndarray:
    """``theta`` if given, else a lightly ridged Bradley-Terry fit (finite even for unbeaten models)."""
    if counts.n_models < 2:
        raise ValueError("active sampling needs at least two models")
    if theta is not None:
        return theta
    return fit_bt(counts, BTConfig(l2=1.0)).theta if counts.n_pairs else np.zeros(counts.n_models)


def active_pair_weights(counts: PairCounts, theta: np.ndarray | None = None, focus: float = 2.0,
                        sharpness: float = 3.0) -> PairWeights:
    """Probabilities proportional to (expected shrinkage of the rating variances) ** ``sharpness``."""
    theta = _current_strengths(counts, theta)
    m = counts.n_models
    first, second = all_pairs(m)
    variance = np.maximum(expit(theta[first] - theta[second]) * expit(theta[second] - theta[first]), MIN_VARIANCE)
    played = expit(theta[counts.first] - theta[counts.second])
    info = pair_laplacian((counts.counts.sum(axis=1) * played * (1 - played))[None], counts.first,
                          counts.second, m)[0]
    info += pair_laplacian((PSEUDO_VOTES * variance)[None], first, second, m)[0]
    covariance = np.linalg.pinv(info, hermitian=True)
    weighted = covariance @ np.diag(np.clip(np.diag(covariance), 0, None) ** focus) @ covariance
    spread = covariance[first, first] + covariance[second, second] - 2 * covariance[first, second]
    weighted_spread = weighted[first, first] + weighted[second, second] - 2 * weighted[first, second]
    gain = np.maximum(variance * weighted_spread / (1.0 + variance * spread), 0.0)
    scores = (gain / max(gain.max(), 1e-300)) ** sharpness + 1e-12
    return PairWeights(counts.models, first, second, scores / scores.sum())


def paper_pair_weights(counts: PairCounts, theta: np.ndarray | None = None) -> PairWeights:
    """The paper's win-rate standard-error-reduction rule over all pairs of ``counts.models``."""
    theta = _current_strengths(counts, theta)
    first, second = all_pairs(counts.n_models)
    p = expit(theta[first] - theta[second])
    variance = np.maximum(p * (1.0 - p), MIN_VARIANCE)
    n = pair_votes(counts, first, second) + PSEUDO_VOTES
    gain = np.sqrt(variance / n) - np.sqrt(variance / (n + 1.0))
    return PairWeights(counts.models, first, second, gain / gain.sum())


def policy_weights(policy: str, counts: PairCounts) -> PairWeights:
    """Pair probabilities of a named policy: ``uniform``, ``active`` or ``paper``."""
    if policy == "uniform":
        return uniform_pair_weights(counts.models)
    if policy == "active":
        return active_pair_weights(counts)
    if policy == "paper":
        return paper_pair_weights(counts)
    raise ValueError(f"unknown sampling policy {policy!r}; expected uniform, active or paper")


def simulate_policy(true_points: pd.Series, policy: str, n_votes: int, rng: np.random.Generator,
                    batch: int = 200, report_every: int = 2000) -> pd.DataFrame:
    """Collect ``n_votes`` votes with known true ratings (Elo points), re-planning every ``batch`` votes.

    Returns, every ``report_every`` votes, the mean and the largest 95% interval width of the ratings
    (from sandwich standard errors, which track the bootstrap closely and cost far less).
    """
    from arena.ranking.bradley_terry import sandwich_se
    from arena.ranking.scale import RatingScale

    models = list(true_points.index)
    first, second = all_pairs(len(models))
    cells = np.zeros((len(first), 4))
    strength = true_points.to_numpy() * np.log(10) / 400
    scale = RatingScale(anchor_model=None)
    weights = uniform_pair_weights(models)
    rows = []
    for done in range(batch, n_votes + 1, batch):
        picked = weights.sample(rng, batch)
        first_wins = rng.random(batch) < expit(strength[first[picked]] - strength[second[picked]])
        np.add.at(cells, (picked, np.where(first_wins, 0, 1)), 1)
        counts = PairCounts(models, first, second, cells)
        weights = policy_weights(policy, counts)
        if done % report_every == 0:
            fit = fit_bt(counts, BTConfig(l2=1e-3), scale)
            width = 2 * 1.959964 * sandwich_se(counts, fit, BTConfig(l2=1e-3), scale)
            rows.append({"votes": done, "mean_ci_width": width.mean(), "max_ci_width": width.max()})
    return pd.DataFrame(rows)


def votes_to_reach(curve: pd.DataFrame, width: float, column: str = "max_ci_width") -> float:
    """Votes a policy needed to bring ``column`` down to ``width`` (linear between reports; inf if never)."""
    reached = curve[curve[column] <= width]
    if reached.empty:
        return float("inf")
    i = reached.index[0]
    if i == curve.index[0]:
        return float(curve.loc[i, "votes"])
    before = curve.loc[i - 1]
    after = curve.loc[i]
    share = (before[column] - width) / (before[column] - after[column])
    return float(before["votes"] + share * (after["votes"] - before["votes"]))
