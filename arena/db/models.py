"""The arena's relational schema (SQLAlchemy 2 typed ORM).

Every schema change is an Alembic migration in ``migrations/``; a test checks that the
migrations produce exactly this metadata.  Privacy: no raw IP, cookie or user id is
stored; visitors are known only by a keyed HMAC of their cookie id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Constraint names must be deterministic so that migrations and models agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


LIVE_SOURCE = "live"  # Battle.source of battles fought on this server
IMPORT_SOURCE_PREFIX = "import:"  # Battle.source of imported ones: import:<label>


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}


class VoteChoice(StrEnum):
    """What a visitor can say about a battle."""

    A = "a"
    B = "b"
    TIE = "tie"
    BOTH_BAD = "both_bad"


class BattleStatus(StrEnum):
    """Open before the first turn, streaming while answers arrive, ready to vote when both answered,
    failed when one side could not answer (kept, never voted on), voted once judged."""

    OPEN = "open"
    STREAMING = "streaming"
    READY = "ready"
    FAILED = "failed"
    VOTED = "voted"


class BattleMode(StrEnum):
    ANONYMOUS = "anonymous"
    NAMED = "named"


class FlagKind(StrEnum):
    MODERATION = "moderation"
    IDENTITY_REVEALED = "identity_revealed"
    ANOMALOUS_VOTER = "anomalous_voter"


class Model(Base):
    """Mirror of the model registry, so battles and the leaderboard can refer to models."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200))
    base_url: Mapped[str] = mapped_column(String(500))
    organization: Mapped[str] = mapped_column(String(200), default="")
    license: Mapped[str] = mapped_column(String(200), default="")
    tags: Mapped[list[Any]] = mapped_column(default=list)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Visitor(Base):
    """A visitor, known only by the keyed HMAC of their signed-cookie id."""

    __tablename__ = "visitors"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    anomalous: Mapped[bool] = mapped_column(Boolean, default=False)


class Conversation(Base):
    """One model's side of a chat: a battle has two, a direct chat one."""

    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    visitor_id: Mapped[str | None] = mapped_column(ForeignKey("visitors.id"), index=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    battle_id: Mapped[str | None] = mapped_column(ForeignKey("battles.id"), index=True)
    side: Mapped[str | None] = mapped_column(String(1))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation", order_by="Message.position", cascade="all, delete-orphan"
    )


class Message(Base):
    """One message; assistant messages carry what the model cost and how it ended."""

    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("conversation_id", "position", name="uq_messages_conversation_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    turn: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    model_name: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Battle(Base):
    """Two models answering the same prompts; anonymous until voted."""

    __tablename__ = "battles"
    __table_args__ = (CheckConstraint("model_a <> model_b", name="distinct_models"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    mode: Mapped[str] = mapped_column(String(16), default=BattleMode.ANONYMOUS)
    anonymous: Mapped[bool] = mapped_column(Boolean, default=True)
    model_a: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    model_b: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    visitor_id: Mapped[str | None] = mapped_column(ForeignKey("visitors.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=BattleStatus.OPEN, index=True)
    sampling_policy: Mapped[str] = mapped_column(String(32), default="weighted")
    sampling_weights: Mapped[dict[str, Any]] = mapped_column(default=dict)
    turn_count: Mapped[int] = mapped_column(Integer, default=0)
    # Category tags and style features, computed once per battle by arena.ranking.
    tags: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    style: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Where the battle happened: ``live`` on this server, or ``import:<label>`` for a public battle
    # log read by ``arena import battles``; ``source_key`` identifies an imported row (re-imports skip it).
    source: Mapped[str] = mapped_column(String(100), default=LIVE_SOURCE, server_default=LIVE_SOURCE, index=True)
    source_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Hash of the first prompt (for lmarena's prompt de-duplication) and whether the newest
    # leaderboard run down-sampled this battle away as one of a too often repeated prompt.
    prompt_hash: Mapped[str | None] = mapped_column(String(32), index=True)
    prompt_downsampled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    conversations: Mapped[list[Conversation]] = relationship(
        foreign_keys=[Conversation.battle_id], order_by=Conversation.side, viewonly=True
    )
    vote: Mapped[Vote | None] = relationship(back_populates="battle", uselist=False)


class Vote(Base):
    """A visitor's verdict on a battle: a write-once fact, one per battle."""

    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("battle_id", name="uq_votes_battle_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    battle_id: Mapped[str] = mapped_column(ForeignKey("battles.id"))
    choice: Mapped[str] = mapped_column(String(16))
    turn_count: Mapped[int] = mapped_column(Integer)
    visitor_id: Mapped[str | None] = mapped_column(ForeignKey("visitors.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)

    battle: Mapped[Battle] = relationship(back_populates="vote")


class Flag(Base):
    """Something noteworthy about a battle, conversation or visitor (moderation, identity leak...)."""

    __tablename__ = "flags"
    __table_args__ = (Index("ix_flags_kind_battle", "kind", "battle_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    battle_id: Mapped[str | None] = mapped_column(ForeignKey("battles.id"), index=True)
    conversation_id: Mapped[str | None] = mapped_column(ForeignKey("conversations.id"))
    visitor_id: Mapped[str | None] = mapped_column(ForeignKey("visitors.id"))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


OVERALL_CATEGORY = "overall"  # the leaderboard category holding every counted vote


class LeaderboardSnapshot(Base):
    """A computed leaderboard, stored so that pages never recompute per request."""

    __tablename__ = "leaderboard_snapshots"
    __table_args__ = (Index("ix_leaderboard_snapshots_lookup", "category", "style_control", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    category: Mapped[str] = mapped_column(String(64), default=OVERALL_CATEGORY)
    style_control: Mapped[bool] = mapped_column(Boolean, default=False)
    vote_count: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)


class MTBenchScore(Base):
    """A model's MT-bench result from ``arena-judge mt-bench`` (single-answer grading), one row per
    (model, judge), replaced by each newer run; the leaderboard page reads its column from here."""

    __tablename__ = "mt_bench_scores"
    __table_args__ = (UniqueConstraint("model", "judge", name="uq_mt_bench_scores_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200))
    judge: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)
    turn_1: Mapped[float | None] = mapped_column(Float)
    turn_2: Mapped[float | None] = mapped_column(Float)
    judged_turns: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
