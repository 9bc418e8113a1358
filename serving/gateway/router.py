"""The model multiplexer: send a query to the small model when it is predicted to answer as well as the large one.

Features are the query's MiniLM embedding; the model is scikit-learn's logistic regression on labels
"the small model's answer is as good as the large one's" (from arena votes, judge scores or, in tests,
synthetic labels; see :mod:`serving.gateway.labels`). A query goes to the small model when the
predicted probability reaches ``threshold``. The threshold sets the cost/quality trade-off: it is chosen
on held-out calibration data as the lowest one (most traffic to the small model) whose quality is still
at least ``target_quality`` times the all-large quality. (RouteLLM's matrix-factorisation router is the
same shape: a learned win probability and a threshold calibrated for a cost target.)

A trained router is saved as plain JSON (coefficients, threshold, model names), never as a pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RouterQuality:
    """What routing at one threshold gives on labelled data."""

    threshold: float
    small_share: float  # share of queries sent to the small model
    quality_ratio: float  # routed quality / all-large quality
    cost_ratio: float  # all-large cost / routed cost (higher is cheaper)


@dataclass
class Router:
    """Two tiers: ``small`` when P(small is as good) >= ``threshold``, else ``large``."""

    small: str
    large: str
    coef: np.ndarray
    intercept: float
    threshold: float
    small_cost: float = 1.0
    large_cost: float = 10.0
    embedding_model: str = "all-MiniLM-L6-v2"

    def probability_small_ok(self, features: np.ndarray) -> np.ndarray:
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if features.shape[1] != self.coef.shape[0]:
            raise ValueError(f"router expects {self.coef.shape[0]}-dimensional features, got {features.shape[1]}")
        return 1.0 / (1.0 + np.exp(-(features @ self.coef + self.intercept)))

    def choose(self, features: np.ndarray) -> list[str]:
        """The model for each row of ``features``."""
        return [self.small if p >= self.threshold else self.large for p in self.probability_small_ok(features)]

    # -- training ------------------------------------------------------------------------------
    @classmethod
    def fit(cls, features: np.ndarray, small_quality: np.ndarray, large_quality: np.ndarray, *, small: str,
            large: str, target_quality: float = 0.98, small_cost: float = 1.0, large_cost: float = 10.0,
            calibration_share: float = 0.3, regularization: float = 1.0, seed: int = 0) -> Router:
        """Train on part of the data, choose the threshold on the rest (``calibration_share``)."""
        from sklearn.linear_model import LogisticRegression

        features = np.asarray(features, dtype=np.float64)
        small_quality, large_quality = np.asarray(small_quality, float), np.asarray(large_quality, float)
        labels = small_quality >= large_quality
        if len(labels) < 20 or labels.all() or not labels.any():
            raise ValueError("the router needs at least 20 labelled queries with both outcomes present")
        order = np.random.default_rng(seed).permutation(len(labels))
        n_cal = max(10, int(len(labels) * calibration_share))
        calibration, train = order[:n_cal], order[n_cal:]
        classifier = LogisticRegression(C=regularization, max_iter=2000, class_weight="balanced")
        classifier.fit(features[train], labels[train])
        router = cls(small=small, large=large, coef=classifier.coef_[0].astype(np.float64),
                     intercept=float(classifier.intercept_[0]), threshold=1.0,
                     small_cost=small_cost, large_cost=large_cost)
        router.threshold = router.calibrate(features[calibration], small_quality[calibration],
                                            large_quality[calibration], target_quality)
        return router

    def calibrate(self, features: np.ndarray, small_quality: np.ndarray, large_quality: np.ndarray,
                  target_quality: float) -> float:
        """The lowest threshold whose quality ratio on this data is at least ``target_quality``."""
        candidates = np.unique(np.concatenate([self.probability_small_ok(features), [1.0 + 1e-9]]))
        best = float(candidates[-1])
        for threshold in candidates[::-1]:  # from most conservative to most aggressive
            if self.evaluate(features, small_quality, large_quality, float(threshold)).quality_ratio < target_quality:
                break
            best = float(threshold)
        return best

    def evaluate(self, features: np.ndarray, small_quality: np.ndarray, large_quality: np.ndarray,
                 threshold: float | None = None) -> RouterQuality:
        """Quality and cost of routing these labelled queries at ``threshold`` (default: the router's)."""
        threshold = self.threshold if threshold is None else threshold
        to_small = self.probability_small_ok(features) >= threshold
        routed = np.where(to_small, small_quality, large_quality).sum()
        reference = max(float(np.sum(large_quality)), 1e-12)
        share = float(to_small.mean())
        cost = share * self.small_cost + (1 - share) * self.large_cost
        return RouterQuality(threshold, share, float(routed / reference), self.large_cost / cost)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        data = {"small": self.small, "large": self.large, "coef": self.coef.tolist(), "intercept": self.intercept,
                "threshold": self.threshold, "small_cost": self.small_cost, "large_cost": self.large_cost,
                "embedding_model": self.embedding_model}
        Path(path).write_text(json.dumps(data), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Router:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(small=data["small"], large=data["large"], coef=np.asarray(data["coef"], dtype=np.float64),
                       intercept=float(data["intercept"]), threshold=float(data["threshold"]),
                       small_cost=float(data.get("small_cost", 1.0)), large_cost=float(data.get("large_cost", 10.0)),
                       embedding_model=str(data.get("embedding_model", "all-MiniLM-L6-v2")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a router file ({error})") from None
