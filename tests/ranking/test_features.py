"""Online Elo, style features, categories, active sampling and anomalous voters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena.ranking import (
    BTConfig,
    answer_style,
    battle_style,
    elo_history,
    fit_bt,
    online_elo,
    pair_counts,
    sandwich_se,
)
from arena.ranking.anomalies import detection_rates, flag_anomalous_voters, simulate_voters
from arena.ranking.categories import in_category, tag_battle
from arena.ranking.sampling import (
    active_pair_weights,
    paper_pair_weights,
    policy_weights,
    simulate_policy,
    votes_to_reach,
)
from arena.ranking.simulate import simulate_battles, true_ratings


def test_online_elo_single_update_and_history():
    battles = pd.DataFrame({"model_a": ["x"], "model_b": ["y"], "winner": ["a"]})
    ratings = online_elo(battles, k=32)
    assert ratings["x"] == pytest.approx(1016.0) and ratings["y"] == pytest.approx(984.0)
    battles = pd.DataFrame({
        "model_a": ["x", "x", "z"], "model_b": ["y", "y", "x"], "winner": ["a", "tie", "b"],
        "timestamp": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 12:00", "2026-01-02 09:00"]),
    })
    history = elo_history(battles, k=32)
    assert len(history) == 2 and np.isnan(history.iloc[0]["z"])
    assert history.iloc[-1]["x"] == pytest.approx(online_elo(battles, k=32)["x"])


def test_answer_style_counts_markdown_outside_code():
    text = "# Title\n\nSome **bold** words and __more__.\n\n- one\n- two\n1. three\n```\n# not a header\n- no\n```"
    style = answer_style(text)
    assert style["headers"] == 1 and style["lists"] == 3 and style["bold"] == 2
    assert style["tokens"] > 10
    both = battle_style(["## a\n- x", "**b**"], ["plain"])
    assert both["a"]["headers"] == 1 and both["a"]["bold"] == 1 and both["b"]["lists"] == 0


@pytest.fixture(scope="module")
def detector():
    """The job's per-process detector: lingua's model loading (seconds) is then paid once per run."""
    from arena.leaderboard.job import language_detector

    return language_detector()


def test_tag_battle_categories(detector):
    tags = tag_battle(["Écris une fonction Python qui inverse une liste, s'il te plaît."], detector)
    assert tags["language"] == "fr" and tags["coding"] and "language:fr" in tags["categories"]
    hard = tag_battle([
        "Prove that for every integer n >= 1 the sum 1 + 2 + ... + n equals n(n+1)/2. You must use induction, "
        "state the hypothesis exactly, and explain why the base case matters?",
        "Now derive the closed form for the sum of squares.",
    ], detector)
    assert hard["hard_prompts"] and hard["multi_turn"] and not hard["long_query"]
    long_query = tag_battle(["word " * 600], detector)
    assert long_query["long_query"] and not long_query["coding"]
    battles = pd.DataFrame({"model_a": ["a", "b"], "model_b": ["b", "a"], "winner": ["a", "b"],
                            "categories": [tags["categories"], hard["categories"]]})
    assert len(in_category(battles, "coding")) == 1 and len(in_category(battles, "overall")) == 2


def test_active_weights_prefer_uncertain_close_pairs():
    truth = pd.Series([1400.0, 1000.0, 1010.0, 600.0], index=list("abcd"))
    rng = np.random.default_rng(0)
    counts = pair_counts(simulate_battles(truth, 400, rng), models=list("abcd"))
    for weights in (active_pair_weights(counts), paper_pair_weights(counts)):
        assert weights.probabilities.sum() == pytest.approx(1.0)
        assert (weights.probabilities > 0).all()
    # The paper's rule: the close pair is worth more than the lopsided one.
    by_pair = paper_pair_weights(counts).as_series()
    assert by_pair[("b", "c")] > by_pair[("a", "d")]
    # The rating rule: votes go to the models with the widest intervals (the extremes, a and d).
    fit = fit_bt(counts, BTConfig(l2=1.0))
    widest = sandwich_se(counts, fit).idxmax()
    by_pair = active_pair_weights(counts, fit.theta).as_series()
    involving = by_pair[[widest in pair for pair in by_pair.index]].sum()
    assert involving > 0.5  # uniform would give it 3 of 6 pairs
    with pytest.raises(ValueError, match="unknown sampling policy"):
        policy_weights("greedy", counts)


def test_active_policy_needs_fewer_votes_for_the_widest_interval():
    rng = np.random.default_rng(4)
    truth = true_ratings(12, rng, spread=200.0)
    uniform = simulate_policy(truth, "uniform", 8000, rng, batch=250, report_every=1000)
    active = simulate_policy(truth, "active", 8000, rng, batch=250, report_every=1000)
    target = uniform["max_ci_width"].iloc[-1]
    assert votes_to_reach(active, target) < 0.85 * 8000


def test_underdog_voters_are_flagged_and_honest_ones_rarely():
    rng = np.random.default_rng(0)
    votes = simulate_voters(true_ratings(20, rng), honest=400, adversaries=20, votes_each=25,
                            kind="underdog", rng=rng)
    rates = detection_rates(votes, alpha=0.01)
    assert rates["detection_rate"] >= 0.9 and rates["false_positive_rate"] <= 0.02
    flags = flag_anomalous_voters(votes.iloc[:0])
    assert flags.empty
