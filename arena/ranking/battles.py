"""Battle tables in, aggregated pair/outcome counts out.

A *battles table* is a DataFrame with one row per vote: ``model_a``, ``model_b`` and ``winner``.
``winner`` accepts the short names (``a``, ``b``, ``tie``, ``both_bad``) and FastChat's
(``model_a``, ``model_b``, ``tie``, ``tie (bothbad)``).

Every Bradley-Terry fit here works on :class:`PairCounts`: for each unordered model pair the
number of wins of the first model, wins of the second, ties and "both bad" votes. That is all the
likelihood needs, so the cost of a fit grows with the number of pairs, not of votes, and the
grouping itself can run in the database (``GROUP BY model_a, model_b, winner``) and be handed over
through :func:`pair_counts_from_grouped`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

OUTCOMES = ("a", "b", "tie", "both_bad")
WINNER_ALIASES = {
    "a": "a",
    "model_a": "a",
    "b": "b",
    "model_b": "b",
    "tie": "tie",
    "both_bad": "both_bad",
    "bothbad": "both_bad",
    "tie (bothbad)": "both_bad",
}
# Column order of PairCounts.counts.
FIRST_WINS, SECOND_WINS, TIE, BOTH_BAD = range(4)


@dataclass(frozen=True)
class PairCounts:
    """Outcome counts per unordered model pair.

    ``first[p] < second[p]`` index into ``models``; ``counts[p]`` holds, in this order, wins of
    ``first``, wins of ``second``, ties and both-bad votes for pair ``p``. Pairs are unique and sorted.
    """

    models: list[str]
    first: np.ndarray
    second: np.ndarray
    counts: np.ndarray

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def n_pairs(self) -> int:
        return len(self.first)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def votes_per_model(self) -> pd.Series:
        """Number of battles each model took part in."""
        per_pair = self.counts.sum(axis=1)
        votes = np.bincount(self.first, per_pair, self.n_models) + np.bincount(
            self.second, per_pair, self.n_models
        )
        return pd.Series(votes.astype(np.int64), index=self.models, name="votes")

    def matrix(self, outcome: int | None = None) -> pd.DataFrame:
        """Model x model matrix of counts (all outcomes when ``outcome`` is None), symmetric for totals."""
        n = self.n_models
        out = np.zeros((n, n))
        if outcome is None:
            values = self.counts.sum(axis=1)
            out[self.first, self.second] = values
            out[self.second, self.first] = values
        else:
            swapped = {FIRST_WINS: SECOND_WINS, SECOND_WINS: FIRST_WINS}.get(outcome, outcome)
            out[self.first, self.second] = self.counts[:, outcome]
            out[self.second, self.first] = self.counts[:, swapped]
        return pd.DataFrame(out, index=self.models, columns=self.models)

    def subset(self, keep: np.ndarray) -> PairCounts:
        """The counts among the models where ``keep`` (n_models,) is true, in the same order."""
        new_index = np.cumsum(keep) - 1
        pairs = keep[self.first] & keep[self.second]
        return PairCounts(
            models=[m for m, k in zip(self.models, keep, strict=True) if k],
            first=new_index[self.first[pairs]].astype(np.int64),
            second=new_index[self.second[pairs]].astype(np.int64),
            counts=self.counts[pairs],
        )

    def win_rate_matrix(self, tie_weight: float = 0.5) -> pd.DataFrame:
        """Row model's empirical win rate against the column model (ties count ``tie_weight``); NaN if unseen."""
        wins = self.matrix(FIRST_WINS).to_numpy()
        ties = self.matrix(TIE).to_numpy() + self.matrix(BOTH_BAD).to_numpy()
        totals = self.matrix().to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = (wins + tie_weight * ties) / totals
        return pd.DataFrame(rate, index=self.models, columns=self.models)


def normalize_winner(winner: pd.Series) -> pd.Series:
    """Map winner labels to ``a``/``b``/``tie``/``both_bad``; raise naming the first bad row."""
    codes, labels = pd.factorize(winner)
    mapped = pd.Series(labels).astype("string").str.strip().str.lower().map(WINNER_ALIASES).to_numpy(object)
    normalized = pd.Series(np.where(codes >= 0, mapped[codes] if len(mapped) else None, None), index=winner.index)
    bad = normalized.isna()
    if bad.any():
        row = bad.to_numpy().nonzero()[0][0]
        raise ValueError(
            f"row {row}: unknown winner {winner.iloc[row]!r}; expected one of {sorted(WINNER_ALIASES)}"
        )
    return normalized


def _check_columns(frame: pd.DataFrame, needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"battles table lacks columns {missing}; has {list(frame.columns)}")


def aggregate_battles(battles: pd.DataFrame) -> pd.DataFrame:
    """Group a battles table into ``model_a, model_b, winner, count`` rows (what SQL GROUP BY returns).

    Factorizes the three columns and counts combined integer keys with ``np.bincount``: about three
    times faster than ``DataFrame.groupby`` on string columns.
    """
    _check_columns(battles, ("model_a", "model_b", "winner"))
    codes_a, names_a = pd.factorize(battles["model_a"])
    codes_b, names_b = pd.factorize(battles["model_b"])
    codes_w, names_w = pd.factorize(battles["winner"])
    if (codes_a < 0).any() or (codes_b < 0).any() or (codes_w < 0).any():
        row = int(np.flatnonzero((codes_a < 0) | (codes_b < 0) | (codes_w < 0))[0])
        raise ValueError(f"row {row}: missing model or winner")
    key = (codes_a.astype(np.int64) * len(names_b) + codes_b) * len(names_w) + codes_w
    counts = np.bincount(key, minlength=len(names_a) * len(names_b) * len(names_w))
    present = np.flatnonzero(counts)
    a, rest = np.divmod(present, len(names_b) * len(names_w))
    b, w = np.divmod(rest, len(names_w))
    return pd.DataFrame({
        "model_a": np.asarray(names_a)[a],
        "model_b": np.asarray(names_b)[b],
        "winner": np.asarray(names_w)[w],
        "count": counts[present],
    })


def pair_counts_from_grouped(grouped: pd.DataFrame, models: list[str] | None = None) -> PairCounts:
    """Build :class:`PairCounts` from already grouped ``model_a, model_b, winner, count`` rows.

    ``models`` fixes the model order (and may list models without votes); by default the sorted
    names that appear. Self-battles (model_a == model_b) carry no information and are dropped.
    """
    _check_columns(grouped, ("model_a", "model_b", "winner", "count"))
    grouped = grouped[grouped["model_a"] != grouped["model_b"]]
    winner = normalize_winner(grouped["winner"])
    counts_col = pd.to_numeric(grouped["count"], errors="raise").to_numpy()
    if (counts_col < 0).any():
        raise ValueError("negative count in grouped battles")
    if models is None:
        models = sorted(set(grouped["model_a"]) | set(grouped["model_b"]))
    index = {name: i for i, name in enumerate(models)}
    unknown = (set(grouped["model_a"]) | set(grouped["model_b"])) - index.keys()
    if unknown:
        raise ValueError(f"models not in the given model list: {sorted(unknown)[:5]}")
    ia = grouped["model_a"].map(index).to_numpy(np.int64)
    ib = grouped["model_b"].map(index).to_numpy(np.int64)
    outcome = winner.map({name: k for k, name in enumerate(OUTCOMES)}).to_numpy(np.int64)
    swap = ia > ib
    # Orient every row so that the first model has the smaller index; a and b wins swap with it.
    first, second = np.where(swap, ib, ia), np.where(swap, ia, ib)
    outcome = np.where(swap & (outcome < 2), 1 - outcome, outcome)
    pair_key = first * len(models) + second
    keys, pair_index = np.unique(pair_key, return_inverse=True)
    counts = np.zeros((len(keys), 4))
    np.add.at(counts, (pair_index, outcome), counts_col)
    return PairCounts(
        models=list(models),
        first=(keys // len(models)).astype(np.int64),
        second=(keys % len(models)).astype(np.int64),
        counts=counts,
    )


def pair_counts(battles: pd.DataFrame, models: list[str] | None = None) -> PairCounts:
    """Aggregate a battles table (one row per vote) into :class:`PairCounts`."""
    return pair_counts_from_grouped(aggregate_battles(battles), models)
