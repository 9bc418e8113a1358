"""The router on the shipped MiniLM embeddings and synthetic labels; labels from arena votes and judge scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.gateway import labels
from serving.gateway.embedding import TextEmbedder
from serving.gateway.router import Router

EASY = ["Say hello to {}.", "Translate the word '{}' into French.", "What colour is a {}?",
        "Write a one-line greeting for {}.", "Give me a synonym for {}."]
HARD = ["Prove that there are infinitely many primes p with p = 4k+3, and relate it to {}.",
        "Derive the closed form of the integral of x^n e^(-x) and apply it to {}.",
        "Prove the Cauchy-Schwarz inequality for inner products, then generalise it to {}.",
        "Solve this recurrence exactly and prove your bound by induction: T(n) = 2T(n/2) + n log n, for {}.",
        "Show that every compact metric space is complete and totally bounded, using {}."]
TOPICS = ["apples", "a river", "Alice", "the moon", "a bicycle", "winter", "a teacher", "music", "coffee",
          "a dog", "the sea", "a garden"]


def synthetic_queries() -> tuple[list[str], np.ndarray]:
    """Easy prompts the small model answers as well as the large one (1), hard ones it does not (0)."""
    prompts = [t.format(topic) for topic in TOPICS for t in EASY + HARD]
    small_ok = np.array([1.0 if t in EASY else 0.0 for _ in TOPICS for t in EASY + HARD])
    return prompts, small_ok


@pytest.fixture(scope="session")
def embedder() -> TextEmbedder:
    return TextEmbedder()


def test_router_learns_synthetic_labels_and_meets_its_quality_target(embedder: TextEmbedder, tmp_path: Path) -> None:
    prompts, small_ok = synthetic_queries()
    features = embedder.encode(prompts)
    router = Router.fit(features, small_ok, np.ones(len(prompts)), small="small", large="large",
                        target_quality=0.98, seed=1)
    quality = router.evaluate(features, small_ok, np.ones(len(prompts)))
    assert quality.quality_ratio >= 0.98 and quality.small_share > 0.3
    unseen = embedder.encode(["Say hello to the baker.", "Prove Fermat's little theorem for a prime modulus p."])
    assert router.choose(unseen) == ["small", "large"]
    path = tmp_path / "router.json"
    router.save(path)
    loaded = Router.load(path)
    assert loaded.threshold == router.threshold and loaded.choose(unseen) == ["small", "large"]


def test_a_higher_quality_target_sends_more_to_the_large_model(embedder: TextEmbedder) -> None:
    prompts, small_ok = synthetic_queries()
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(len(small_ok)) < 0.15, 1 - small_ok, small_ok)  # labels disagree sometimes
    features = embedder.encode(prompts)
    shares = []
    for target in (0.85, 0.95, 1.0):
        router = Router.fit(features, noisy, np.ones(len(prompts)), small="s", large="l", target_quality=target)
        shares.append(router.evaluate(features, noisy, np.ones(len(prompts))).small_share)
    assert shares[0] >= shares[1] >= shares[2]


def test_router_refuses_unusable_labels_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both outcomes"):
        Router.fit(np.zeros((30, 4)), np.ones(30), np.ones(30), small="s", large="l")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a router file"):
        Router.load(tmp_path / "bad.json")


def test_labels_from_arena_votes_and_judge_scores() -> None:
    def battle(a: str, b: str, winner: str, prompt: str) -> dict:
        return {"model_a": a, "model_b": b, "winner": winner,
                "conversation_a": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "…"}]}

    battles = pd.DataFrame([battle("s", "l", "model_a", "p1"), battle("l", "s", "model_a", "p2"),
                            battle("s", "l", "tie", "p3"), battle("s", "other", "model_b", "p4"),
                            battle("l", "s", "tie (bothbad)", "p5")])
    votes = labels.from_battles(battles, small="s", large="l")
    assert votes.prompts == ["p1", "p2", "p3", "p5"]
    assert votes.small_ok.tolist() == [True, False, True, True]
    scores = pd.DataFrame({"prompt": ["q1", "q1", "q2", "q2", "q3"], "model": ["s", "l", "s", "l", "s"],
                           "score": [8, 7, 3, 9, 5]})
    judged = labels.from_scores(scores, small="s", large="l")
    assert judged.prompts == ["q1", "q2"] and judged.small_ok.tolist() == [True, False]
    with pytest.raises(ValueError, match="no voted battles"):
        labels.from_battles(battles, small="s", large="nobody")
    with pytest.raises(ValueError, match="lacks column"):
        labels.from_scores(pd.DataFrame({"prompt": ["x"]}), small="s", large="l")
