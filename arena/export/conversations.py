"""The conversation dataset: one row per conversation (LMSYS-Chat-1M-like)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from arena.export.cleaning import CleanUnit
from arena.export.datasets import DATASET_DESCRIPTIONS
from arena.export.pipeline import DatasetSpec, RowContext
from arena.export.release import coarsen
from arena.export.source import ConversationSource, SourceUnit, as_datetime

MESSAGE = pa.struct(
    [pa.field("role", pa.string(), nullable=False), pa.field("content", pa.string(), nullable=False)]
)
MODERATION = pa.struct(
    [
        pa.field("flagged", pa.bool_(), nullable=False),
        pa.field("categories", pa.list_(pa.string()), nullable=False),
    ]
)

SCHEMA = pa.schema(
    [
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("conversation", pa.list_(MESSAGE), nullable=False),
        pa.field("turn", pa.int32(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("visitor_id", pa.string(), nullable=True),
        pa.field("moderation", pa.list_(MODERATION), nullable=False),
        pa.field("redacted", pa.bool_(), nullable=False),
    ],
    metadata={"dataset": "arena conversations"},
)

FIELD_DOCS = {
    "conversation_id": "anonymous id (keyed BLAKE2b hash of the database id, key rotated per release)",
    "model": "the model that answered",
    "conversation": "the messages, in order: `{role: user|assistant, content}`, PII redacted",
    "turn": "number of user turns",
    "language": "language of the first user message (lingua), e.g. `English`, or `unknown`",
    "timestamp": "creation time, cut to the day or hour (UTC)",
    "visitor_id": "anonymous visitor id (keyed hash, key rotated per release; null if unknown)",
    "moderation": "per message: `flagged` and the moderation `categories` it hit",
    "redacted": "true if any PII placeholder was put into this conversation",
}


def moderation_entries(tags: list[list[str]]) -> list[dict[str, Any]]:
    return [{"flagged": bool(categories), "categories": categories} for categories in tags]


def messages(roles: list[str], contents: list[str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in zip(roles, contents, strict=True)]


def build_row(unit: SourceUnit, clean: CleanUnit, context: RowContext) -> dict[str, Any]:
    return {
        "conversation_id": context.anonymizer.pseudonym("conversation", unit.source_id),
        "model": unit.meta["model"],
        "conversation": messages(unit.sides[0][0], clean.contents[0]),
        "turn": unit.turns,
        "language": clean.language,
        "timestamp": coarsen(as_datetime(unit.meta["created_at"]), context.time_granularity),
        "visitor_id": context.anonymizer.pseudonym("visitor", unit.meta["visitor_id"]),
        "moderation": moderation_entries(clean.moderation[0]),
        "redacted": clean.redacted,
    }



CONVERSATIONS = DatasetSpec(
    name="conversations",
    title="Arena conversations",
    schema=SCHEMA,
    make_source=ConversationSource,
    build_row=build_row,
    models_of_row=lambda row: [row["model"]],
    field_docs=FIELD_DOCS,
    description=DATASET_DESCRIPTIONS["conversations"],
)
SPEC = CONVERSATIONS
