"""Anomalous voters: visitors whose votes are improbable under the fitted model.

As in the Chatbot Arena paper, each vote gets a p-value under the model fitted on all votes, and
a visitor's p-values are combined with Fisher's method (``-2 sum log p`` is chi-square with ``2k``
degrees of freedom for ``k`` independent uniform p-values). The outcome of a vote on (a, b) is one
of: a wins, b wins, tie (both-bad counts as a tie), with probabilities ``(1 - tau) p``,
``(1 - tau) (1 - p)`` and ``tau`` (``p`` from Bradley-Terry, ``tau`` the overall tie share). A vote's
p-value is one-sided, the probability of a result at least as bad for the model-favoured side,
randomized within the observed outcome so that honest votes give exactly uniform p-values and the
false-positive rate of the combined test is the chosen ``alpha``. (A two-sided "rarest outcome"
p-value was tried first: ties, being rare, then look more suspicious than upsets, and power collapses.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import chi2

from arena.ranking.battles import normalize_winner, pair_counts
from arena.ranking.bradley_terry import BTConfig, fit_bt


def vote_p_values(votes: pd.DataFrame, theta: pd.Series, tie_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Randomized one-sided p-value of each vote: how likely a result at least as bad for the favourite is.

    Under the model the favoured side (higher strength) scores 1 with probability ``(1 - tau) q``,
    0.5 (tie) with ``tau`` and 0 with ``(1 - tau)(1 - q)``, ``q = max(p, 1 - p)``. The p-value is
    ``P(score < s) + U * P(score = s)`` for the observed score ``s``: uniform for honest votes, small
    for votes against the favourite.
    """
    winner = normalize_winner(votes["winner"]).map({"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5})
    a_score = winner.to_numpy(float)
    p = expit(theta.reindex(votes["model_a"]).to_numpy() - theta.reindex(votes["model_b"]).to_numpy())
    a_favoured = p >= 0.5
    favourite_score = np.where(a_favoured, a_score, 1.0 - a_score)
    q = np.where(a_favoured, p, 1.0 - p)
    lose, tie, win = (1 - tie_rate) * (1 - q), np.full_like(q, tie_rate), (1 - tie_rate) * q
    below = np.select([favourite_score == 1.0, favourite_score == 0.5], [lose + tie, lose], 0.0)
    equal = np.select([favourite_score == 1.0, favourite_score == 0.5], [win, tie], lose)
    return np.clip(below + rng.random(len(q)) * equal, 1e-300, 1.0)


def flag_anomalous_voters(votes: pd.DataFrame, alpha: float = 0.01, min_votes: int = 5,
                          visitor_column: str = "visitor", seed: int | None = 0) -> pd.DataFrame:
    """Per visitor: votes, Fisher statistic, combined p-value and ``flagged`` (p < alpha, >= min_votes).

    ``votes`` needs ``model_a``, ``model_b``, ``winner`` and the visitor column.
    """
    if visitor_column not in votes.columns:
        raise ValueError(f"votes lack the {visitor_column!r} column")
    if votes.empty:
        return pd.DataFrame(columns=["visitor", "votes", "statistic", "p_value", "flagged"])
    counts = pair_counts(votes)
    theta = pd.Series(fit_bt(counts, BTConfig(l2=1.0)).theta, index=counts.models)
    tie_rate = float(counts.counts[:, 2:].sum() / max(counts.total, 1))
    p_values = vote_p_values(votes, theta, tie_rate, np.random.default_rng(seed))
    per_visitor = (
        pd.DataFrame({"visitor": votes[visitor_column].to_numpy(), "log_p": np.log(p_values)})
        .groupby("visitor", sort=False)["log_p"]
        .agg(["size", "sum"])
    )
    statistic = -2.0 * per_visitor["sum"]
    combined = chi2.sf(statistic, 2 * per_visitor["size"])
    return pd.DataFrame(
        {
            "visitor": per_visitor.index,
            "votes": per_visitor["size"].to_numpy(),
            "statistic": statistic.to_numpy(),
            "p_value": combined,
            "flagged": (combined < alpha) & (per_visitor["size"].to_numpy() >= min_votes),
        }
    ).reset_index(drop=True)


ADVERSARY_KINDS = ("underdog", "random", "promoter")


def simulate_voters(true_points: pd.Series, honest: int, adversaries: int, votes_each: int, kind: str,
                    rng: np.random.Generator, tie_rate: float = 0.1) -> pd.DataFrame:
    """Votes of honest visitors (Bradley-Terry with ties) and injected adversaries.

    Adversary kinds: ``underdog`` always votes for the lower-rated model; ``random`` picks a side at
    random; ``promoter`` always votes for one target model (present in every one of its battles,
    against random opponents) and honestly otherwise.
    """
    if kind not in ADVERSARY_KINDS:
        raise ValueError(f"unknown adversary kind {kind!r}; expected one of {ADVERSARY_KINDS}")
    names = true_points.index.to_numpy()
    strength = true_points.to_numpy() * np.log(10) / 400
    total = (honest + adversaries) * votes_each
    a = rng.integers(0, len(names), total)
    b = (a + rng.integers(1, len(names), total)) % len(names)
    visitor = np.repeat(np.arange(honest + adversaries), votes_each)
    bad = visitor >= honest
    if kind == "promoter":
        target = int(np.argsort(strength)[len(names) // 4])  # a weak-ish model to push up
        a[bad] = target
        b[bad] = (target + rng.integers(1, len(names), int(bad.sum()))) % len(names)
    honest_a = rng.random(total) < expit(strength[a] - strength[b])
    winner = np.where(honest_a, "a", "b").astype(object)
    winner[rng.random(total) < tie_rate] = "tie"
    if kind == "underdog":
        winner[bad] = np.where(strength[a[bad]] < strength[b[bad]], "a", "b")
    elif kind == "random":
        winner[bad] = np.where(rng.random(int(bad.sum())) < 0.5, "a", "b")
    else:
        winner[bad] = "a"
    return pd.DataFrame({
        "visitor": np.where(bad, "adversary-", "honest-").astype(object) + visitor.astype(str),
        "model_a": names[a], "model_b": names[b], "winner": winner, "adversary": bad,
    })


def detection_rates(votes: pd.DataFrame, alpha: float = 0.01) -> dict[str, float]:
    """Share of adversaries flagged and of honest visitors flagged (false positives)."""
    flags = flag_anomalous_voters(votes, alpha=alpha)
    truth = votes.groupby("visitor", sort=False)["adversary"].first().reindex(flags["visitor"]).to_numpy(bool)
    return {
        "detection_rate": float(flags["flagged"][truth].mean()) if truth.any() else float("nan"),
        "false_positive_rate": float(flags["flagged"][~truth].mean()) if (~truth).any() else float("nan"),
    }
