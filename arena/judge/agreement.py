"""How far to trust a judge: agreement with another judge or with the arena's human votes,
its position-swap consistency and its length bias.

Outcomes are compared per (question, turn, model pair) as the MT-bench paper does: the
winning model or a tie. "Without ties" keeps only the cases where both sides picked a
winner. Human votes come from the arena database; a vote whose battle opened with an
MT-bench question is compared question by question, and all votes are also compared at
the level of model pairs (the chance that a random judge verdict and a random human vote
on that pair agree, and whether both prefer the same model).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from arena.db.models import Battle, Conversation, Message, Vote, VoteChoice
from arena.judge.questions import Question

TIE = "tie"
OutcomeKey = tuple[str, int, frozenset[str]]


def outcome_key(question_id: Any, turn: int, models: Iterable[str]) -> OutcomeKey:
    return (str(question_id), int(turn), frozenset(models))


def outcomes_from_pairwise(outcomes: pd.DataFrame) -> dict[OutcomeKey, str]:
    """Decided pairwise outcomes (winner model or 'tie'), keyed by question, turn and pair."""
    decided = outcomes.dropna(subset=["winner"])
    return {
        outcome_key(r.question_id, r.turn, (r.model_1, r.model_2)): str(r.winner)
        for r in decided.itertuples(index=False)
    }


def outcomes_from_scores(scores: pd.DataFrame) -> dict[OutcomeKey, str]:
    """Pairwise outcomes implied by single grades: the higher score wins, equal scores tie."""
    result: dict[OutcomeKey, str] = {}
    scored = scores.dropna(subset=["score"])
    for (question_id, turn), rows in scored.groupby(["question_id", "turn"]):
        by_model = dict(zip(rows["model"], rows["score"], strict=True))
        for first, second in combinations(sorted(by_model), 2):
            difference = by_model[first] - by_model[second]
            winner = TIE if difference == 0 else (first if difference > 0 else second)
            result[outcome_key(question_id, int(turn), (first, second))] = winner
    return result


def agreement(left: dict[OutcomeKey, str], right: dict[OutcomeKey, str]) -> dict[str, Any]:
    """Share of common cases where both give the same outcome, with and without ties."""
    common = [key for key in left if key in right]
    without_ties = [key for key in common if left[key] != TIE and right[key] != TIE]
    return {
        "n_with_ties": len(common),
        "agreement_with_ties": _share(sum(left[k] == right[k] for k in common), len(common)),
        "n_without_ties": len(without_ties),
        "agreement_without_ties": _share(sum(left[k] == right[k] for k in without_ties), len(without_ties)),
    }


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def position_consistency(outcomes: pd.DataFrame) -> dict[str, Any]:
    """How often both orders of a pair agree, and which position wins when they do not."""
    swapped = outcomes.dropna(subset=["consistent"])
    inconsistent = swapped[~swapped["consistent"].astype(bool)]
    return {
        "n_swapped": len(swapped),
        "consistency": _share(int(swapped["consistent"].astype(bool).sum()), len(swapped)),
        "inconsistent_favoring_first": int(
            ((inconsistent["verdict_1"] == "A") & (inconsistent["verdict_2"] == "A")).sum()
        ),
        "inconsistent_favoring_second": int(
            ((inconsistent["verdict_1"] == "B") & (inconsistent["verdict_2"] == "B")).sum()
        ),
    }


def length_bias_pairwise(outcomes: pd.DataFrame) -> dict[str, Any]:
    """Among decisive outcomes between answers of different length, how often the longer won."""
    decisive = outcomes.dropna(subset=["winner"])
    decisive = decisive[(decisive["winner"] != TIE) & (decisive["chars_1"] != decisive["chars_2"])]
    longer = decisive.apply(lambda r: r.model_1 if r.chars_1 > r.chars_2 else r.model_2, axis=1)
    longer_won = int((longer == decisive["winner"]).sum()) if len(decisive) else 0
    return {"n_decisive": len(decisive), "longer_answer_win_rate": _share(longer_won, len(decisive))}


def length_bias_single(scores: pd.DataFrame) -> dict[str, Any]:
    """Spearman correlation between answer length (characters) and the judge's score."""
    from scipy.stats import spearmanr  # imported here: scipy.stats costs ~1 s of CLI start-up

    scored = scores.dropna(subset=["score"])
    if len(scored) < 3 or scored["answer_chars"].nunique() < 2 or scored["score"].nunique() < 2:
        return {"n_scored": len(scored), "length_score_spearman": None}
    rho = spearmanr(scored["answer_chars"], scored["score"]).statistic
    return {"n_scored": len(scored), "length_score_spearman": round(float(rho), 4)}


@dataclass(frozen=True)
class HumanVote:
    """One arena vote reduced to what agreement needs."""

    model_a: str
    model_b: str
    winner: str
    first_prompt: str
    turn_count: int


def load_human_votes(engine: Engine) -> list[HumanVote]:
    """Every vote in the arena database with its models and the battle's first user prompt."""
    first_prompt = (
        select(Message.content)
        .join(Conversation, Message.conversation_id == Conversation.id)
        .where(Conversation.battle_id == Battle.id, Message.role == "user")
        .order_by(Conversation.side, Message.position)
        .limit(1)
        .scalar_subquery()
    )
    query = select(Battle.model_a, Battle.model_b, Vote.choice, Vote.turn_count, first_prompt).join(
        Vote, Vote.battle_id == Battle.id
    )
    with Session(engine) as session:
        rows = session.execute(query).all()
    votes = []
    for model_a, model_b, choice, turn_count, prompt in rows:
        winner = {VoteChoice.A.value: model_a, VoteChoice.B.value: model_b}.get(choice, TIE)
        votes.append(HumanVote(model_a, model_b, winner, prompt or "", int(turn_count or 1)))
    return votes


def human_agreement(
    judge_outcomes: dict[OutcomeKey, str], votes: list[HumanVote], questions: list[Question]
) -> dict[str, Any]:
    """Judge vs humans, question by question where the prompt matches and per model pair."""
    by_text = {q.turns[0].strip(): q for q in questions}
    question_level: list[tuple[str, str]] = []
    for vote in votes:
        question = by_text.get(vote.first_prompt.strip())
        if question is None:
            continue
        turn = 2 if vote.turn_count >= 2 and len(question.turns) >= 2 else 1
        judged = judge_outcomes.get(outcome_key(question.question_id, turn, (vote.model_a, vote.model_b)))
        if judged is not None:
            question_level.append((judged, vote.winner))
    return {
        "question_level": _pairs_agreement(question_level),
        "pair_level": _pair_level(judge_outcomes, votes),
        "votes": len(votes),
    }


def _pairs_agreement(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    without = [(a, b) for a, b in pairs if a != TIE and b != TIE]
    return {
        "n_with_ties": len(pairs),
        "agreement_with_ties": _share(sum(a == b for a, b in pairs), len(pairs)),
        "n_without_ties": len(without),
        "agreement_without_ties": _share(sum(a == b for a, b in without), len(without)),
    }


def _pair_level(judge_outcomes: dict[OutcomeKey, str], votes: list[HumanVote]) -> dict[str, Any]:
    judge_by_pair: dict[frozenset[str], Counter[str]] = defaultdict(Counter)
    for (_, _, pair), winner in judge_outcomes.items():
        judge_by_pair[pair][winner] += 1
    human_by_pair: dict[frozenset[str], Counter[str]] = defaultdict(Counter)
    for vote in votes:
        human_by_pair[frozenset((vote.model_a, vote.model_b))][vote.winner] += 1
    pairs = []
    expected_with = expected_without = weight_with = weight_without = 0.0
    preferred_agree = preferred_total = 0
    for pair, humans in sorted(human_by_pair.items(), key=lambda item: sorted(item[0])):
        judges = judge_by_pair.get(pair)
        if not judges:
            continue
        with_ties = _expected_match(judges, humans, keep_ties=True) or 0.0
        without_ties = _expected_match(judges, humans, keep_ties=False)
        votes_n = sum(humans.values())
        expected_with += with_ties * votes_n
        weight_with += votes_n
        if without_ties is not None:
            decisive = votes_n - humans[TIE]
            expected_without += without_ties * decisive
            weight_without += decisive
        judge_pick, human_pick = _preferred(judges, pair), _preferred(humans, pair)
        if judge_pick != TIE and human_pick != TIE:
            preferred_total += 1
            preferred_agree += judge_pick == human_pick
        pairs.append(
            {"models": sorted(pair), "human_votes": votes_n, "judge_outcomes": sum(judges.values()),
             "judge_prefers": judge_pick, "humans_prefer": human_pick, "expected_agreement_with_ties": round(with_ties, 4)}
        )  # fmt: skip
    return {
        "pairs": pairs,
        "expected_agreement_with_ties": round(expected_with / weight_with, 4) if weight_with else None,
        "expected_agreement_without_ties": round(expected_without / weight_without, 4)
        if weight_without
        else None,
        "preferred_model_agreement": _share(preferred_agree, preferred_total),
        "n_pairs_compared": len(pairs),
    }


def _expected_match(left: Counter[str], right: Counter[str], *, keep_ties: bool) -> float | None:
    """Probability that a random outcome from each side is the same."""
    outcomes = set(left) | set(right)
    if not keep_ties:
        outcomes.discard(TIE)
    left_total = sum(left[o] for o in outcomes)
    right_total = sum(right[o] for o in outcomes)
    if not left_total or not right_total:
        return None if not keep_ties else 0.0
    return sum(left[o] / left_total * right[o] / right_total for o in outcomes)


def _preferred(counts: Counter[str], pair: frozenset[str]) -> str:
    """The model with the higher adjusted win rate in ``counts``, or 'tie'."""
    first, second = sorted(pair)
    if counts[first] == counts[second]:
        return TIE
    return first if counts[first] > counts[second] else second
