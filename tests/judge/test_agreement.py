"""`arena-judge mt-bench agreement`: judge vs judge, judge vs human votes in a real (SQLite)
arena database, position-swap consistency and length bias."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.orm import Session

from arena.db.models import Battle, Conversation, Message, Model, Vote
from arena.db.session import get_engine
from arena.judge.agreement import length_bias_single, outcome_key, outcomes_from_scores
from tests.conftest import fresh_postgres_database, migrate
from tests.fake_openai import FakeOpenAI
from tests.judge.cli_helpers import data_args, invoke, out_dir_of
from tests.judge.conftest import Scenario, make_run_args, question_ids, write_registry

TRAVEL_BLOG = (
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences "
    "and must-see attractions."
)
# (model_a, model_b, choice, turn_count, first prompt)
VOTES = [
    ("alpha", "beta", "a", 1, TRAVEL_BLOG),  # judge-x: alpha -> agree
    ("gamma", "beta", "a", 2, TRAVEL_BLOG),  # judge-x turn 2: tie (position bias) -> disagree with ties
    ("beta", "alpha", "a", 1, TRAVEL_BLOG),  # humans pick beta, judge alpha -> disagree
    ("alpha", "gamma", "tie", 1, TRAVEL_BLOG),  # humans tie, judge alpha -> disagree with ties
    ("alpha", "gamma", "b", 1, "Hello there, who are you?"),  # not an MT-bench question: pair level only
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def arena_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh arena database of its own (built by the migrations) holding the votes above."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'arena.db'}"
        migrate(url)
        _add_votes(url)
        yield url
        return
    with fresh_postgres_database("arena_judge_test") as url:
        _add_votes(url)
        yield url


def _add_votes(url: str) -> None:
    with Session(get_engine(url)) as session:
        session.add_all(
            Model(name=name, model_id=name, base_url="http://x/v1") for name in ("alpha", "beta", "gamma")
        )
        session.flush()
        for model_a, model_b, choice, turns, prompt in VOTES:
            battle = Battle(model_a=model_a, model_b=model_b, status="voted", turn_count=turns)
            session.add(battle)
            session.flush()
            for side, model in (("a", model_a), ("b", model_b)):
                conversation = Conversation(model_name=model, battle_id=battle.id, side=side)
                session.add(conversation)
                session.flush()
                session.add(
                    Message(conversation_id=conversation.id, position=0, turn=1, role="user", content=prompt)
                )
            session.add(Vote(battle_id=battle.id, choice=choice, turn_count=turns))
        session.commit()


@pytest.fixture(scope="module")
def judged_args(
    answers_dir: Path, mt_bench_dir: Path, small_questions: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    """A run folder with pairwise-all judgments by judge-x and judge-fair (made once per module)."""
    folder = tmp_path_factory.mktemp("judged")
    with FakeOpenAI(Scenario(question_ids(mt_bench_dir)), models=["judge", "judge-fair"]) as endpoint:
        args = make_run_args(write_registry(folder / "models.toml", endpoint.base_url), mt_bench_dir,
                             small_questions, folder / "run")  # fmt: skip
        shutil.copytree(answers_dir, folder / "run" / "model_answer")
        for judge in ("judge-x", "judge-fair"):
            invoke("judge", "--judge", judge, "--mode", "pairwise-all", *args)
    return data_args(args)


def test_agreement_with_judge_and_humans(judged_args: list[str], arena_db: str) -> None:
    output = invoke(
        "agreement", "--judge", "judge-x", "--mode", "pairwise-all", "--other-judge", "judge-fair",
        "--human", "--database-url", arena_db, *judged_args,
    )  # fmt: skip
    report = json.loads(
        (out_dir_of(judged_args) / "results" / "pairwise-all__judge-x__agreement.json").read_text()
    )

    swap = report["position_consistency"]
    assert swap == {
        "n_swapped": 96, "consistency": 0.6667, "inconsistent_favoring_first": 32, "inconsistent_favoring_second": 0,
    }  # fmt: skip
    assert report["length_bias"] == {"n_decisive": 64, "longer_answer_win_rate": 0.5}

    other = report["vs_judge"]
    assert (other["n_with_ties"], other["agreement_with_ties"]) == (96, 0.6667)
    assert (other["n_without_ties"], other["agreement_without_ties"]) == (64, 1.0)

    human = report["vs_human"]
    assert human["votes"] == 5
    assert human["question_level"] == {
        "n_with_ties": 4, "agreement_with_ties": 0.25, "n_without_ties": 2, "agreement_without_ties": 0.5,
    }  # fmt: skip
    pair = human["pair_level"]
    assert pair["expected_agreement_with_ties"] == 0.2
    assert pair["expected_agreement_without_ties"] == 0.3333
    assert pair["preferred_model_agreement"] == 0.0 and pair["n_pairs_compared"] == 3
    assert "position-swap consistency" in output and "vs humans" in output


def test_length_bias_of_single_grades() -> None:
    scores = pd.DataFrame(
        {"score": [2.0, 4.0, 6.0, 8.0, None], "answer_chars": [10, 20, 30, 40, 50], "model": ["m"] * 5}
    )
    assert length_bias_single(scores) == {"n_scored": 4, "length_score_spearman": 1.0}
    assert length_bias_single(scores.head(2))["length_score_spearman"] is None


def test_single_grades_become_pairwise_outcomes() -> None:
    scores = pd.DataFrame(
        {
            "model": ["a", "b", "c", "a", "b", "c"],
            "question_id": [1, 1, 1, 2, 2, 2],
            "turn": [1, 1, 1, 1, 1, 1],
            "score": [8.0, 5.0, 8.0, 3.0, None, 9.0],
        }
    )
    outcomes = outcomes_from_scores(scores)
    assert outcomes[outcome_key(1, 1, ("a", "b"))] == "a"
    assert outcomes[outcome_key(1, 1, ("a", "c"))] == "tie"
    assert outcomes[outcome_key(2, 1, ("c", "a"))] == "c"
    assert outcome_key(2, 1, ("a", "b")) not in outcomes, "an unparseable grade gives no outcome"
