"""Fill a database with models, battles, conversations and votes drawn from known true ratings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from arena.db.models import (
    Battle,
    BattleStatus,
    Conversation,
    Flag,
    FlagKind,
    Message,
    Model,
    Visitor,
    Vote,
    new_id,
)

TRUE_RATINGS = {"alpha-70b": 1250.0, "beta-8b": 1100.0, "gamma-2b": 950.0, "delta-1b": 900.0}
PROMPTS = [
    ("Write a Python function that reverses a linked list.", "## Solution\n- step one\n- step two\n**done**"),
    ("Quelle est la capitale de l'Australie ?", "Canberra."),
    ("Explain why the sky is blue in two sentences.", "Rayleigh scattering makes short wavelengths scatter more."),
]


def seed_votes(sessions: sessionmaker[Session], n_votes: int, seed: int = 0, flagged: int = 0,
               start: datetime | None = None, adversary_votes: int = 0) -> None:
    """``n_votes`` voted battles over three days among four models; ``flagged`` of them carry a moderation
    flag; the last ``adversary_votes`` come from visitor ``adversary-<seed>``, who always picks the weaker model."""
    rng = np.random.default_rng(seed)
    names = list(TRUE_RATINGS)
    start = start or datetime(2026, 11, 20, tzinfo=UTC)
    with sessions.begin() as session:
        for name in names:
            if session.get(Model, name) is None:
                session.add(Model(name=name, model_id=name, base_url="http://127.0.0.1:9/v1",
                                  organization=f"{name.split('-')[0].title()} Labs", license="Apache-2.0"))
        for visitor in range(min(25, n_votes)):
            if session.get(Visitor, f"visitor-{seed}-{visitor}") is None:
                session.add(Visitor(id=f"visitor-{seed}-{visitor}"))
        session.flush()
        if adversary_votes:
            session.add(Visitor(id=f"adversary-{seed}"))
            session.flush()
        for i in range(n_votes + adversary_votes):
            adversary = i >= n_votes
            visitor_id = f"adversary-{seed}" if adversary else f"visitor-{seed}-{i % 25}"
            a, b = rng.choice(len(names), 2, replace=False)
            p = 1 / (1 + 10 ** ((TRUE_RATINGS[names[b]] - TRUE_RATINGS[names[a]]) / 400))
            choice = "a" if rng.random() < p else "b"
            if rng.random() < 0.1:
                choice = "tie"
            if adversary:
                choice = "a" if TRUE_RATINGS[names[a]] < TRUE_RATINGS[names[b]] else "b"
            when = start + timedelta(hours=int(i * 72 / max(n_votes, 1)))
            battle = Battle(id=new_id(), model_a=names[a], model_b=names[b], visitor_id=visitor_id,
                            status=BattleStatus.VOTED, turn_count=1, created_at=when)
            session.add(battle)
            prompt, answer = PROMPTS[i % len(PROMPTS)]
            for side, name in (("a", names[a]), ("b", names[b])):
                conversation = Conversation(id=new_id(), visitor_id=visitor_id, model_name=name,
                                            battle_id=battle.id, side=side)
                session.add(conversation)
                session.add(Message(conversation_id=conversation.id, position=0, turn=1, role="user", content=prompt))
                text = answer if side == "a" else answer.split("\n")[0]
                session.add(Message(conversation_id=conversation.id, position=1, turn=1, role="assistant",
                                    content=text, model_name=name))
            session.add(Vote(battle_id=battle.id, choice=choice, turn_count=1, visitor_id=visitor_id,
                             created_at=when))
            if i < flagged:
                session.add(Flag(kind=FlagKind.MODERATION, battle_id=battle.id, detail="test"))
