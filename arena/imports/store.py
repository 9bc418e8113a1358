"""Writing validated imported battles: one transaction, new battles only, missing models created.

Imported models are created inactive (no endpoint), so the arena never samples them for battles;
a model that is also in the registry keeps its registry row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from arena.db.models import Battle, BattleMode, BattleStatus, Model, Vote, new_id
from arena.imports.battles import ImportedBattle, ParsedFile

KEY_BATCH = 500  # source keys per IN (...) lookup; far below every database's parameter limit


@dataclass(frozen=True)
class ImportResult:
    """What an import did."""

    source: str
    rows: int
    added: int
    already_imported: int
    duplicates_in_file: int
    models_created: list[str]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _known_keys(session: Session, keys: list[str]) -> set[str]:
    known: set[str] = set()
    for chunk in _chunks(keys, KEY_BATCH):
        known.update(k for k in session.scalars(select(Battle.source_key).where(Battle.source_key.in_(chunk))) if k)
    return known


def _create_models(session: Session, battles: list[ImportedBattle]) -> list[str]:
    names = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    existing: set[str] = set()
    for chunk in _chunks(names, KEY_BATCH):
        existing.update(session.scalars(select(Model.name).where(Model.name.in_(chunk))))
    missing = [name for name in names if name not in existing]
    session.add_all(Model(name=name, model_id=name, base_url="", active=False, weight=0.0) for name in missing)
    session.flush()
    return missing


def _battle_row(battle: ImportedBattle, battle_id: str, source: str) -> dict[str, object]:
    return {
        "id": battle_id, "model_a": battle.model_a, "model_b": battle.model_b,
        "mode": BattleMode.ANONYMOUS if battle.anonymous else BattleMode.NAMED, "anonymous": battle.anonymous,
        "status": BattleStatus.VOTED, "sampling_policy": "imported", "sampling_weights": {},
        "turn_count": battle.turns, "tags": battle.tags, "style": battle.style, "source": source,
        "source_key": battle.source_key, "prompt_hash": battle.prompt_hash,
        "prompt_downsampled": battle.prompt_downsampled, "created_at": battle.voted_at,
        "updated_at": battle.voted_at,
    }


def store_battles(sessions: sessionmaker[Session], parsed: ParsedFile, source: str) -> ImportResult:
    """Insert the battles not imported before, with their votes, in one transaction."""
    with sessions.begin() as session:
        known = _known_keys(session, [b.source_key for b in parsed.battles])
        new = [b for b in parsed.battles if b.source_key not in known]
        created = _create_models(session, new) if new else []
        ids = [new_id() for _ in new]
        if new:
            session.execute(insert(Battle), [_battle_row(b, i, source) for b, i in zip(new, ids, strict=True)])
            session.execute(insert(Vote), [
                {"battle_id": i, "choice": b.choice.value, "turn_count": b.turns, "visitor_id": None,
                 "created_at": b.voted_at} for b, i in zip(new, ids, strict=True)
            ])
    return ImportResult(source=source, rows=parsed.rows, added=len(new), already_imported=len(known),
                        duplicates_in_file=parsed.duplicates, models_created=created)
