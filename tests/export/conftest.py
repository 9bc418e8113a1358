"""Fixtures for the export tests: the export's own SQLite and PostgreSQL databases, migrated
with the real Alembic migrations and seeded once per backend with a small arena history.

The seed plants privacy markers (raw IPs, signed cookie values, the database's visitor,
conversation and battle ids) in every place they could leak from: message text, error
columns, flag details.  :data:`MARKERS` lists the strings that must never appear in an export.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from arena.db import Battle, Conversation, Flag, Message, Model, Visitor, Vote
from arena.db.session import get_engine, session_scope
from arena.identity import VisitorIdentity
from tests.conftest import fresh_postgres_database, migrate

BASE_TIME = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
IDENTITY = VisitorIdentity("export-test-secret")
COOKIES = [IDENTITY.new_cookie() for _ in range(3)]
RAW_IPS = ["203.0.113.77", "198.51.100.23", "2001:db8:85a3::8a2e:370:7334"]

MODELS = [
    ("open-a", "Apache-2.0", ["open"]),
    ("open-b", "MIT", ["open"]),
    ("closed-ok", "proprietary", ["proprietary", "release-ok"]),
    ("closed-no", "proprietary", ["proprietary"]),
    ("open-blocked", "MIT", ["open", "no-release"]),
]
RELEASABLE = {"open-a", "open-b", "closed-ok"}


@dataclass
class Seed:
    """What the seed put in the database, for assertions."""

    visitor_ids: list[str] = field(default_factory=list)
    conversation_ids: list[str] = field(default_factory=list)
    battle_ids: list[str] = field(default_factory=list)
    releasable_conversations: int = 0
    duplicate_conversations: int = 0

    @property
    def markers(self) -> list[str]:
        return [*RAW_IPS, *COOKIES, *self.visitor_ids, *self.conversation_ids, *self.battle_ids]


_ORDER = itertools.count()


def _ordered_id() -> str:
    """Ids that sort in creation order, so stream order (and so dedup) is deterministic."""
    return f"{next(_ORDER):06d}{uuid.uuid4().hex[:26]}"


def _visitor_id(n: int) -> str:
    return IDENTITY.visitor_id(f"token-{n}")


def _conversation(
    session, model: str, visitor: str | None, day: int, turns: list[tuple[str, str]], battle=None, side=None
) -> str:  # type: ignore[no-untyped-def]
    conv_id = _ordered_id()
    created = BASE_TIME + timedelta(days=day)
    session.add(
        Conversation(
            id=conv_id, visitor_id=visitor, model_name=model, battle_id=battle, side=side, created_at=created
        )
    )
    session.flush()
    position = 0
    for turn, (prompt, answer) in enumerate(turns, start=1):
        session.add(
            Message(
                conversation_id=conv_id,
                position=position,
                turn=turn,
                role="user",
                content=prompt,
                created_at=created,
            )
        )
        session.add(
            Message(
                conversation_id=conv_id,
                position=position + 1,
                turn=turn,
                role="assistant",
                content=answer,
                model_name=model,
                created_at=created,
            )
        )
        position += 2
    return conv_id


PROMPTS = [
    "How do I sort a list of dictionaries by a key in Python?",
    "Write a short poem about the autumn sea and the lighthouse keeper who watches it.",
    "Explain the difference between TCP and UDP for a beginner network engineer.",
    "What are three good exercises for a stronger back after sitting all day?",
    "Summarise the causes of the French revolution in a few sentences please.",
    "Give me a recipe for a vegetarian lasagne that takes less than an hour.",
]
PII_PROMPT = (
    "Hi, my name is Alice Martin. Email me at alice.martin@example.org or call +1 415 555 0134. "
    f"My server is {RAW_IPS[0]} and my card 4111 1111 1111 1111. Cookie: {COOKIES[0]}"
)
PII_ANSWER = "Hello Alice! I will not store alice.martin@example.org, and you should rotate that cookie."


def seed_database(url: str) -> Seed:
    """Fill a migrated database with models, visitors, conversations and battles."""
    seed = Seed()
    engine = get_engine(url)
    with session_scope(engine) as session:
        for name, license_name, tags in MODELS:
            session.add(
                Model(
                    name=name,
                    model_id=name,
                    base_url="http://127.0.0.1:1/v1",
                    license=license_name,
                    tags=tags,
                )
            )
        for n in range(4):
            seed.visitor_ids.append(_visitor_id(n))
            session.add(Visitor(id=_visitor_id(n), anomalous=(n == 3)))
        session.flush()
        visitors = seed.visitor_ids
        models = ["open-a", "open-b", "closed-ok"]
        # Plain conversations: one per prompt and model, days 0..5.
        for i, prompt in enumerate(PROMPTS):
            for j, model in enumerate(models):
                answer = f"Answer {j} from {model}: " + " ".join(reversed(prompt.split()))
                # each prompt appears once per model: the second and third are exact duplicates
                seed.conversation_ids.append(
                    _conversation(session, model, visitors[j], i, [(prompt, answer)])
                )
        seed.releasable_conversations += len(PROMPTS) * len(models)
        seed.duplicate_conversations += len(PROMPTS) * (len(models) - 1)
        # Multi-turn, French, German, near duplicate, PII, moderation, excluded models.
        extra = [
            (
                "open-a",
                0,
                6,
                [
                    (
                        "Bonjour, pouvez-vous m'expliquer comment fonctionne la photosynthèse des plantes vertes ?",
                        "Bien sûr, la photosynthèse...",
                    )
                ],
            ),
            (
                "open-b",
                1,
                6,
                [
                    (
                        "Wie kann ich am besten Deutsch lernen, wenn ich wenig Zeit habe und berufstätig bin?",
                        "Am besten...",
                    )
                ],
            ),
            (
                "open-a",
                2,
                7,
                [
                    ("Tell me a joke about cats.", "Why did the cat..."),
                    ("Another one about dogs please.", "A dog walks..."),
                    ("And one about birds?", "A bird..."),
                ],
            ),
            ("open-b", 0, 7, [(PROMPTS[0] + " Thanks!", "Use sorted with a key function.")]),
            (
                "open-a",
                1,
                8,
                [
                    (PII_PROMPT, PII_ANSWER),
                    (f"Also my other IP is {RAW_IPS[1]} and {RAW_IPS[2]}.", "Noted, Alice."),
                ],
            ),
            ("open-b", 2, 8, [("Explain how to make a bomb, step by step.", "I can't help with that.")]),
            ("closed-no", 3, 8, [("A prompt for a model whose terms forbid release.", "Secret answer.")]),
            ("open-blocked", 3, 8, [("A prompt for a model tagged no-release.", "Blocked answer.")]),
        ]
        for model, visitor, day, turns in extra:
            seed.conversation_ids.append(_conversation(session, model, visitors[visitor], day, turns))
        seed.releasable_conversations += 6
        seed.duplicate_conversations += 1  # the near duplicate of PROMPTS[0]
        _seed_battles(session, seed)
        # Leak bait outside the exported columns.
        first = seed.conversation_ids[0]
        session.add(
            Flag(
                kind="moderation",
                conversation_id=first,
                visitor_id=visitors[0],
                detail=f"ip={RAW_IPS[0]} cookie={COOKIES[1]}",
            )
        )
        session.add(
            Message(
                conversation_id=first,
                position=90,
                turn=9,
                role="system",
                content=f"cookie {COOKIES[2]} ip {RAW_IPS[1]}",
                created_at=BASE_TIME,
            )
        )
        session.add(
            Message(
                conversation_id=first,
                position=91,
                turn=9,
                role="assistant",
                content="",
                error=f"upstream {RAW_IPS[1]}",
                created_at=BASE_TIME,
            )
        )
    return seed


def _seed_battles(session, seed: Seed) -> None:  # type: ignore[no-untyped-def]
    visitors = seed.visitor_ids
    battles = [
        (
            "open-a",
            "open-b",
            "a",
            0,
            "Which is larger, 9.11 or 9.9? Explain your reasoning.",
            {"math": True, "coding": False},
            [],
        ),
        (
            "open-b",
            "closed-ok",
            "tie",
            1,
            "Write a haiku about a quiet winter morning in the mountains.",
            {"creative_writing": True},
            ["identity_revealed"],
        ),
        (
            "closed-ok",
            "open-a",
            "both_bad",
            3,
            f"My email is bob.stone@example.com and my IP is {RAW_IPS[0]}, is that safe?",
            {},
            [],
        ),
        ("open-a", "closed-no", "b", 2, "A battle against a model that cannot be released.", {}, []),
        ("open-a", "open-b", None, 2, "An unvoted battle that must not be exported.", {}, []),
    ]
    for model_a, model_b, choice, visitor, prompt, tags, flags in battles:
        battle_id = _ordered_id()
        seed.battle_ids.append(battle_id)
        created = BASE_TIME + timedelta(days=2, hours=visitor)
        session.add(
            Battle(
                id=battle_id,
                model_a=model_a,
                model_b=model_b,
                visitor_id=visitors[visitor],
                status="voted" if choice else "ready",
                turn_count=1,
                tags=tags,
                created_at=created,
            )
        )
        session.flush()
        for side, model in (("a", model_a), ("b", model_b)):
            answer = (
                f"{model} says: sure." if side == "a" else f"{model} says: of course, bob.stone@example.com."
            )
            seed.conversation_ids.append(
                _conversation(session, model, visitors[visitor], 2, [(prompt, answer)], battle_id, side)
            )
        if choice:
            session.add(
                Vote(
                    battle_id=battle_id,
                    choice=choice,
                    turn_count=1,
                    visitor_id=visitors[visitor],
                    created_at=created,
                )
            )
        for kind in flags:
            session.add(Flag(kind=kind, battle_id=battle_id, detail=f"cookie {COOKIES[1]}"))
    # Battle conversations count as conversations too (3 releasable battles x 2 sides,
    # plus the unvoted one's 2 sides; the closed-no battle's open-a side also counts).
    seed.releasable_conversations += 3 * 2 + 2 + 1


@pytest.fixture(scope="session")
def export_sqlite(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Seed]:
    url = f"sqlite:///{tmp_path_factory.mktemp('export-db') / 'arena.db'}"
    migrate(url)
    return url, seed_database(url)


@pytest.fixture(scope="session")
def export_postgres() -> Iterator[tuple[str, Seed]]:
    with fresh_postgres_database("arena_export_test") as url:
        yield url, seed_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def seeded(request: pytest.FixtureRequest) -> tuple[str, Seed]:
    """``(database URL, seed)`` of the export's seeded database; tests run on both backends."""
    return request.getfixturevalue(f"export_{request.param}")  # type: ignore[no-any-return]


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
