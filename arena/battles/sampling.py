"""Pair sampling: which two models meet in an anonymous battle.

``weighted`` follows the registry weights; ``active`` (``ARENA_SAMPLING_POLICY=active``) sends
votes where the rating intervals shrink fastest (see :mod:`arena.ranking.sampling`).  The active
sampler reads vote counts from the database with one GROUP BY and caches the plan for
``refresh_s`` seconds, so sampling a pair costs microseconds; the cache lives in the sampler
object, not in a global.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from arena.battles.errors import ArenaError
from arena.leaderboard.votes import grouped_pair_votes
from arena.providers.registry import ModelSpec
from arena.ranking import pair_counts_from_grouped
from arena.ranking.sampling import PairWeights, active_pair_weights


class PairSampler(Protocol):
    """Chooses the two models of a battle; returns them and the probabilities it used."""

    name: str

    def sample(self, models: Sequence[ModelSpec], rng: random.Random) -> tuple[str, str, dict[str, float]]: ...


class WeightedPairSampler:
    """Model A by registry weight, then model B by weight among the others: never a model twice."""

    name = "weighted"

    def sample(self, models: Sequence[ModelSpec], rng: random.Random) -> tuple[str, str, dict[str, float]]:
        candidates = [m for m in models if m.weight > 0]
        if len(candidates) < 2:
            raise ArenaError("the arena needs at least two models with a positive weight")
        total = sum(m.weight for m in candidates)
        probabilities = {m.name: m.weight / total for m in candidates}
        first = rng.choices(candidates, weights=[m.weight for m in candidates])[0]
        others = [m for m in candidates if m.name != first.name]
        second = rng.choices(others, weights=[m.weight for m in others])[0]
        if rng.random() < 0.5:
            first, second = second, first
        return first.name, second.name, probabilities


def make_pair_sampler(policy: str, sessions: sessionmaker[Session] | None = None) -> PairSampler:
    """The sampler named by ``ARENA_SAMPLING_POLICY``; ``active`` reads vote counts through ``sessions``."""
    if policy == "weighted":
        return WeightedPairSampler()
    if policy == "active":
        if sessions is None:
            raise ValueError("the active sampling policy needs a session factory to read vote counts")
        return ActivePairSampler(sessions)
    raise ValueError(f"unknown sampling policy {policy!r}; known: weighted, active")


class ActivePairSampler:
    """Samples the two models of a battle by the active policy; same interface as the weighted one."""

    name = "active"

    def __init__(self, sessions: sessionmaker[Session], refresh_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.sessions = sessions
        self.refresh_s = refresh_s
        self.clock = clock
        self._lock = threading.Lock()
        self._plan: tuple[float, tuple[str, ...], PairWeights] | None = None

    def plan(self, names: Sequence[str]) -> PairWeights:
        """Pair probabilities for ``names``, recomputed when older than ``refresh_s`` or the models changed."""
        key = tuple(sorted(names))
        with self._lock:  # held while refreshing, so concurrent requests refresh once, not each
            if self._plan and self._plan[1] == key and self.clock() - self._plan[0] < self.refresh_s:
                return self._plan[2]
            with self.sessions() as session:
                grouped = grouped_pair_votes(session)
            known = grouped["model_a"].isin(key) & grouped["model_b"].isin(key)
            weights = active_pair_weights(pair_counts_from_grouped(grouped[known.to_numpy(bool)], models=list(key)))
            self._plan = (self.clock(), key, weights)
            return weights

    def sample(self, models: Sequence[ModelSpec], rng: random.Random) -> tuple[str, str, dict[str, float]]:
        names = [m.name for m in models if m.weight > 0]
        if len(names) < 2:
            raise ArenaError("the arena needs at least two models with a positive weight")
        weights = self.plan(names)
        pair = rng.choices(range(len(weights.probabilities)), weights=weights.probabilities.tolist())[0]
        first, second = weights.models[weights.first[pair]], weights.models[weights.second[pair]]
        if rng.random() < 0.5:
            first, second = second, first
        share = np.bincount(weights.first, weights.probabilities, len(weights.models))
        share += np.bincount(weights.second, weights.probabilities, len(weights.models))
        return first, second, {m: round(float(s) / 2, 6) for m, s in zip(weights.models, share, strict=True)}
