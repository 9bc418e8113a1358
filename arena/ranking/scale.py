"""From natural log-odds to the familiar Elo scale.

Internally a rating ``theta`` is a natural log-odds strength: P(i beats j) = sigmoid(theta_i - theta_j).
On the Elo scale a difference of ``scale`` points means odds of ``base`` to one. The level is set
either by a fixed mean (``init_rating``) or, when the anchor model is present, by pinning that
model's rating (FastChat pins mixtral-8x7b-instruct-v0.1 at 1114).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FASTCHAT_ANCHOR_MODEL = "mixtral-8x7b-instruct-v0.1"
FASTCHAT_ANCHOR_RATING = 1114.0


@dataclass(frozen=True)
class RatingScale:
    """How natural log-odds strengths become Elo-scale points."""

    base: float = 10.0
    scale: float = 400.0
    init_rating: float = 1000.0
    anchor_model: str | None = FASTCHAT_ANCHOR_MODEL
    anchor_rating: float = FASTCHAT_ANCHOR_RATING

    @property
    def points_per_logit(self) -> float:
        """Elo points per unit of natural log-odds."""
        return self.scale / math.log(self.base)

    def anchor_index(self, models: list[str]) -> int | None:
        """Index of the anchor model in ``models``, or None when it is absent (then the mean is fixed)."""
        if self.anchor_model is not None and self.anchor_model in models:
            return models.index(self.anchor_model)
        return None

    def to_points(self, theta: np.ndarray, models: list[str], reference: np.ndarray | None = None) -> np.ndarray:
        """Convert strengths of shape (..., n_models) to Elo points, anchoring each row separately.

        NaN marks an unrated model: it stays NaN and is left out of the centring. A row whose
        anchor is unrated is aligned to ``reference`` (the point fit's ratings) over the models
        both rate, when given, so that leaving a model out never shifts the others.
        """
        theta = np.asarray(theta, dtype=float)
        rated = np.isfinite(theta)
        counts = np.maximum(rated.sum(axis=-1, keepdims=True), 1)
        mean = np.where(rated, theta, 0.0).sum(axis=-1, keepdims=True) / counts
        points = (theta - mean) * self.points_per_logit + self.init_rating
        anchor = self.anchor_index(models)
        pinned = np.zeros(points.shape[:-1] + (1,), bool)
        if anchor is not None:
            pinned = np.isfinite(points[..., [anchor]])
            points = np.where(pinned, points + (self.anchor_rating - points[..., [anchor]]), points)
        if reference is not None:
            gap = np.asarray(reference, dtype=float) - points
            common = np.isfinite(gap)
            shift = np.where(common, gap, 0.0).sum(axis=-1, keepdims=True) / np.maximum(
                common.sum(axis=-1, keepdims=True), 1)
            points = np.where(pinned, points, points + shift)
        return points

    def gauge_matrix(self, models: list[str]) -> np.ndarray:
        """Linear map from strengths to (unshifted) points, used to carry covariances over."""
        n = len(models)
        anchor = self.anchor_index(models)
        if anchor is None:
            gauge = np.eye(n) - np.full((n, n), 1.0 / n)
        else:
            gauge = np.eye(n)
            gauge[:, anchor] -= 1.0
        return gauge * self.points_per_logit
