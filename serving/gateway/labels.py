"""Training data for the router, from the platform's own records.

Every source becomes :class:`LabelledQueries`: the query text and the quality each of the two models
reached on it. ``small_quality >= large_quality`` is the router's label ("small is as good").

* **Arena votes** - the battles dataset (``arena export battles``: Parquet or JSONL, one row per voted
  battle) restricted to battles between the two models: a win scores 1 and a loss 0 for that side,
  ``tie`` 1/1, ``tie (bothbad)`` 0/0.
* **Judge scores** - a table with ``prompt``, ``model`` and ``score`` columns (e.g. MT-bench single
  grades joined with their questions): the two models' scores on the same prompt.
* **Plain labels** - ``prompt`` with ``small_quality`` and ``large_quality``, or a boolean ``small_ok``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

VOTE_SCORES = {"tie": (1.0, 1.0), "tie (bothbad)": (0.0, 0.0)}


@dataclass
class LabelledQueries:
    prompts: list[str]
    small_quality: np.ndarray
    large_quality: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.prompts) == len(self.small_quality) == len(self.large_quality)):
            raise ValueError("prompts and quality columns differ in length")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def small_ok(self) -> np.ndarray:
        return self.small_quality >= self.large_quality


def read_table(path: str | Path) -> pd.DataFrame:
    """A Parquet file or folder, a JSONL file or a CSV file as a DataFrame."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=path.suffix == ".jsonl")
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: expected Parquet, JSONL or CSV")


def from_battles(table: pd.DataFrame, small: str, large: str) -> LabelledQueries:
    """Votes between ``small`` and ``large`` from the exported battles dataset."""
    _require(table, ["model_a", "model_b", "winner", "conversation_a"], "battles")
    pair = table[((table.model_a == small) & (table.model_b == large)) | ((table.model_a == large) & (table.model_b == small))]
    prompts, small_scores, large_scores = [], [], []
    for row in pair.itertuples(index=False):
        winner = str(row.winner)
        if winner in VOTE_SCORES:
            small_score, large_score = VOTE_SCORES[winner]
        else:
            winning_model = row.model_a if winner == "model_a" else row.model_b
            small_score, large_score = (1.0, 0.0) if winning_model == small else (0.0, 1.0)
        prompts.append(_first_user_message(row.conversation_a))
        small_scores.append(small_score)
        large_scores.append(large_score)
    if not prompts:
        raise ValueError(f"no voted battles between {small!r} and {large!r}")
    return LabelledQueries(prompts, np.array(small_scores), np.array(large_scores))


def from_scores(table: pd.DataFrame, small: str, large: str) -> LabelledQueries:
    """Judge scores of the two models on the same prompts (prompts scored for only one are dropped)."""
    _require(table, ["prompt", "model", "score"], "judge scores")
    wide = table[table.model.isin([small, large])].pivot_table(index="prompt", columns="model", values="score",
                                                               aggfunc="mean").dropna()
    if small not in wide or large not in wide or wide.empty:
        raise ValueError(f"no prompt is scored for both {small!r} and {large!r}")
    return LabelledQueries(list(wide.index), wide[small].to_numpy(float), wide[large].to_numpy(float))


def from_labels(table: pd.DataFrame) -> LabelledQueries:
    """``prompt`` + ``small_quality``/``large_quality``, or ``prompt`` + boolean ``small_ok``."""
    if {"small_quality", "large_quality"} <= set(table.columns):
        return LabelledQueries(list(table.prompt.astype(str)), table.small_quality.to_numpy(float),
                               table.large_quality.to_numpy(float))
    _require(table, ["prompt", "small_ok"], "labels")
    ok = table.small_ok.astype(bool).to_numpy()
    return LabelledQueries(list(table.prompt.astype(str)), ok.astype(float), np.ones(len(ok)))


def _first_user_message(conversation: object) -> str:
    for message in list(conversation):  # type: ignore[call-overload]
        if message["role"] == "user":
            return str(message["content"])
    return ""


def _require(table: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} table lacks column(s) {missing}; it has {list(table.columns)}")
