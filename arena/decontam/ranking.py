"""One calibrated score for every candidate pair, so judge calls go where leaks are likely.

The stages' scores are not on one scale (a 13-gram share of 0.3 and a cosine of 0.3 mean very different
things), so candidates are ranked by a small logistic model over all the evidence of a pair: the probability
that the judge would call it the same question. The model is fitted on labelled pairs (``fit_ranker``; the
benchmark fits the shipped weights on its tuning split only) and saved as JSON beside this module.

The features use the embedding *margin*, not the raw cosine, so one set of weights serves more than one model.
Two features look across the corpus from the item's side: whether the pair has the item's best margin among all
the documents that reached it (a leak is usually its item's nearest document, a look-alike rarely), and how many
documents reached the item (a generic item - a short stem, a common code task - draws many look-alikes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

DEFAULT_WEIGHTS_PATH = Path(__file__).with_name("ranker_weights.json")
FEATURES = ("ngram_ratio", "minhash_jaccard", "anchor_share", "embed_margin", "has_embedding", "numbers_changed",
            "item_best", "item_candidates")


class Evidence(Protocol):
    """What a candidate pair carries from the offline stages (a :class:`~arena.decontam.pipeline.Match`)."""

    ngram_ratio: float
    minhash_jaccard: float | None
    anchor_share: float
    embed_margin: float | None
    numbers_kept: bool | None
    item_rank: int
    """How many of the item's candidate documents have a larger embedding margin (0: this is its best)."""
    item_candidates: int
    """How many corpus documents are candidates for the item."""


def features(pair: Evidence) -> list[float]:
    """The pair's feature vector, in the order of :data:`FEATURES`."""
    margin = pair.embed_margin
    return [
        float(pair.ngram_ratio),
        float(pair.minhash_jaccard or 0.0),
        float(pair.anchor_share),
        0.0 if margin is None else 10.0 * (float(margin) - 1.0),
        0.0 if margin is None else 1.0,
        1.0 if pair.numbers_kept is False else 0.0,
        1.0 if pair.item_rank == 0 else 0.0,
        math.log1p(pair.item_candidates),
    ]


@dataclass
class Ranker:
    """A logistic model: ``probability = sigmoid(bias + weights . features)``."""

    weights: list[float]
    bias: float
    min_probability: float = 0.05
    """Candidates below this probability are reported, not judged (chosen on the tuning split)."""
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def probability(self, pair: Evidence) -> float:
        z = self.bias + sum(w * x for w, x in zip(self.weights, features(pair), strict=True))
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "weights": self.weights, "bias": self.bias,
                "min_probability": self.min_probability, "fitted_on": self.fitted_on}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path = DEFAULT_WEIGHTS_PATH) -> Ranker:
        """Read a ranker written by :meth:`save`; a file that is not one is an error naming the file."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data["features"] != list(FEATURES):
                raise ValueError(f"features {data['features']} are not {list(FEATURES)}")
            return cls([float(w) for w in data["weights"]], float(data["bias"]), float(data["min_probability"]),
                       dict(data.get("fitted_on", {})))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a candidate ranker ({exc})") from exc


def fit_ranker(pairs: Sequence[Evidence], labels: Sequence[bool], *, target_recall: float = 0.98,
               fitted_on: dict[str, Any] | None = None) -> Ranker:
    """Fit the logistic model on labelled pairs and pick the lowest probability worth a judge call.

    ``min_probability`` is the largest cut that still keeps ``target_recall`` of the positive pairs, so on the
    pairs it was fitted on, skipping what falls below it loses at most ``1 - target_recall`` of the leaks.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    if len(set(labels)) < 2:
        raise ValueError("fitting the ranker needs positive and negative pairs")
    x = np.array([features(p) for p in pairs])
    y = np.array(labels, dtype=int)
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(x, y)
    ranker = Ranker([round(float(w), 5) for w in model.coef_[0]], round(float(model.intercept_[0]), 5),
                    fitted_on=fitted_on or {})
    positive = sorted(ranker.probability(p) for p, label in zip(pairs, labels, strict=True) if label)
    keep = max(1, math.ceil(target_recall * len(positive)))
    ranker.min_probability = round(positive[len(positive) - keep] * 0.999, 6)
    return ranker
