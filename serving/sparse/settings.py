"""Settings of the sparse attention backends, apart from their torch code so that
``arena-serve --help`` (which shows their defaults) does not import torch."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DoubleSparsityConfig:
    """Sparsity settings (defaults: the paper's 1/8 channels of 128 and 1/16 of the tokens).

    ``channels_path``: the file ``arena-serve calibrate`` wrote (a model directory means the
    file in it)."""

    heavy_channels: int = 16
    token_fraction: float = 1 / 16
    min_tokens: int = 256
    sink: int = 16
    recent: int = 64
    dense_below: int = 2048  # decode steps whose longest context is shorter run dense
    channels_path: str | None = None

    def __post_init__(self) -> None:
        if self.heavy_channels < 1 or not 0 < self.token_fraction <= 1:
            raise ValueError("heavy_channels must be >= 1 and token_fraction in (0, 1]")
        if min(self.min_tokens, self.sink, self.recent, self.dense_below) < 0:
            raise ValueError("min_tokens, sink, recent and dense_below must be >= 0")

    def selected_tokens(self, context: int) -> int:
        """``K``: positions kept per KV head for a batch whose longest context is ``context``."""
        heavy = max(self.min_tokens, math.ceil(self.token_fraction * context))
        return min(context, self.sink + self.recent + heavy)

    def is_sparse(self, context: int) -> bool:
        """Whether a decode step with this longest context uses the sparse path."""
        return context >= self.dense_below and self.selected_tokens(context) < context


@dataclass(frozen=True)
class H2OConfig:
    """KV budget per sequence: ``budget_tokens`` if set, else ``budget_fraction`` of its length;
    ``recent_fraction`` of the budget is the recent window, the rest heavy hitters. Eviction runs
    when a sequence holds ``evict_slack`` entries more than its budget (amortising its cost)."""

    budget_fraction: float = 0.2
    budget_tokens: int | None = None
    recent_fraction: float = 0.5
    min_budget: int = 64
    evict_slack: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.budget_fraction <= 1 or not 0 <= self.recent_fraction <= 1:
            raise ValueError("budget_fraction must be in (0, 1] and recent_fraction in [0, 1]")
        if self.budget_tokens is not None and self.budget_tokens < 1:
            raise ValueError("budget_tokens must be >= 1")
        if self.min_budget < 1 or self.evict_slack < 0:
            raise ValueError("min_budget must be >= 1 and evict_slack >= 0")

    def budget(self, length: int) -> int:
        """KV entries a sequence of ``length`` tokens may keep."""
        if self.budget_tokens is not None:
            return self.budget_tokens
        return max(self.min_budget, math.ceil(self.budget_fraction * length))

    def recent(self, length: int) -> int:
        return math.ceil(self.recent_fraction * self.budget(length))
