"""The battle dataset: one row per voted battle (Chatbot-Arena-conversations-like)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from arena.db import FlagKind, VoteChoice
from arena.export.cleaning import CleanUnit
from arena.export.conversations import MESSAGE, MODERATION, messages, moderation_entries
from arena.export.datasets import DATASET_DESCRIPTIONS
from arena.export.pipeline import DatasetSpec, RowContext
from arena.export.release import coarsen
from arena.export.source import BattleSource, SourceUnit, as_datetime

WINNERS = {
    VoteChoice.A: "model_a",
    VoteChoice.B: "model_b",
    VoteChoice.TIE: "tie",
    VoteChoice.BOTH_BAD: "tie (bothbad)",
}
FLAGS = pa.struct(
    [
        pa.field("identity_revealed", pa.bool_(), nullable=False),
        pa.field("anomalous_voter", pa.bool_(), nullable=False),
        pa.field("moderation", pa.bool_(), nullable=False),
    ]
)

SCHEMA = pa.schema(
    [
        pa.field("battle_id", pa.string(), nullable=False),
        pa.field("model_a", pa.string(), nullable=False),
        pa.field("model_b", pa.string(), nullable=False),
        pa.field("winner", pa.string(), nullable=False),
        pa.field("judge", pa.string(), nullable=True),
        pa.field("conversation_a", pa.list_(MESSAGE), nullable=False),
        pa.field("conversation_b", pa.list_(MESSAGE), nullable=False),
        pa.field("turn", pa.int32(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("anonymous", pa.bool_(), nullable=False),
        pa.field("tags", pa.list_(pa.string()), nullable=False),
        pa.field("flags", FLAGS, nullable=False),
        pa.field("moderation_a", pa.list_(MODERATION), nullable=False),
        pa.field("moderation_b", pa.list_(MODERATION), nullable=False),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("redacted", pa.bool_(), nullable=False),
    ],
    metadata={"dataset": "arena battles"},
)

FIELD_DOCS = {
    "battle_id": "anonymous id (keyed BLAKE2b hash of the database id, key rotated per release)",
    "model_a / model_b": "the two models (sides as shown to the voter)",
    "winner": "`model_a`, `model_b`, `tie` or `tie (bothbad)`",
    "judge": "anonymous id of the voter (keyed hash, key rotated per release)",
    "conversation_a / conversation_b": "each side's messages `{role, content}`, PII redacted consistently across both",
    "turn": "number of user turns",
    "language": "language of the first user message (lingua)",
    "anonymous": "whether the battle was blind (model names hidden until the vote)",
    "tags": "category flags set on the battle (e.g. `coding`, `math`, dotted for nested groups)",
    "flags": "`identity_revealed` (a model named itself), `anomalous_voter`, `moderation` (any message flagged)",
    "moderation_a / moderation_b": "per message: `flagged` and `categories`",
    "timestamp": "battle time, cut to the day or hour (UTC)",
    "redacted": "true if any PII placeholder was put into the battle",
}


def flatten_tags(tags: Any, prefix: str = "") -> list[str]:
    """Category names whose flag is true; nested groups become dotted names."""
    if isinstance(tags, dict):
        names: list[str] = []
        for key, value in tags.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict | list):
                names.extend(flatten_tags(value, name + "."))
            elif value:
                names.append(name)
        return sorted(names)
    if isinstance(tags, list):
        return sorted(f"{prefix}{item}" for item in tags if isinstance(item, str))
    return []


def build_row(unit: SourceUnit, clean: CleanUnit, context: RowContext) -> dict[str, Any]:
    meta = unit.meta
    flags = meta.get("flags", set())
    flagged_by_moderation = any(tags for side in clean.moderation for tags in side)
    return {
        "battle_id": context.anonymizer.pseudonym("battle", unit.source_id),
        "model_a": meta["model_a"],
        "model_b": meta["model_b"],
        "winner": WINNERS.get(meta["choice"], str(meta["choice"])),
        "judge": context.anonymizer.pseudonym("visitor", meta["visitor_id"]),
        "conversation_a": messages(unit.sides[0][0], clean.contents[0]),
        "conversation_b": messages(unit.sides[1][0], clean.contents[1]),
        "turn": unit.turns,
        "language": clean.language,
        "anonymous": meta["anonymous"],
        "tags": flatten_tags(meta.get("tags")),
        "flags": {
            "identity_revealed": FlagKind.IDENTITY_REVEALED in flags,
            "anomalous_voter": meta["anomalous_voter"] or FlagKind.ANOMALOUS_VOTER in flags,
            "moderation": flagged_by_moderation or FlagKind.MODERATION in flags,
        },
        "moderation_a": moderation_entries(clean.moderation[0]),
        "moderation_b": moderation_entries(clean.moderation[1]),
        "timestamp": coarsen(as_datetime(meta["created_at"]), context.time_granularity),
        "redacted": clean.redacted,
    }



BATTLES = DatasetSpec(
    name="battles",
    title="Arena battles",
    schema=SCHEMA,
    make_source=BattleSource,
    build_row=build_row,
    models_of_row=lambda row: [row["model_a"], row["model_b"]],
    field_docs=FIELD_DOCS,
    description=DATASET_DESCRIPTIONS["battles"],
)
SPEC = BATTLES
