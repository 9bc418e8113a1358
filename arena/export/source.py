"""Streaming the arena database in batches for export, through the ``arena.db`` models.

Rows come through a server-side cursor (``stream_results`` + ``yield_per``; on PostgreSQL a
named psycopg cursor), ordered by conversation or battle id so that an interrupted export can
resume after the last id it finished.  Messages are joined in SQL and grouped here, so memory
holds one batch at a time whatever the table sizes.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine, Select, exists, func, select

from arena.db import Battle, Conversation, Flag, FlagKind, Message, Model, Visitor, Vote
from arena.db.models import LIVE_SOURCE
from arena.export.cleaning import Side
from arena.export.release import ExportFilters, ReleasePolicy, releasable_models

EXPORTED_ROLES = ("user", "assistant")
FETCH_ROWS = 10_000


class SourceUnit(NamedTuple):
    """One exportable thing (a conversation, or a battle with its two sides) as read from the DB.

    A named tuple rather than a dataclass: batches of these are pickled to worker processes,
    and tuples unpickle about 7x faster.
    """

    source_id: str
    sides: list[Side]
    meta: dict[str, Any]

    @property
    def turns(self) -> int:
        """User turns of the first side (battles: both sides share the prompts)."""
        roles = self.sides[0][0] if self.sides else []
        return sum(1 for role in roles if role == "user")


def model_catalog(engine: Engine) -> list[tuple[str, str, list[str]]]:
    """``(name, license, tags)`` of every model the database knows."""
    with engine.connect() as conn:
        rows = conn.execute(select(Model.name, Model.license, Model.tags).order_by(Model.name)).all()
    return [(name, license_name or "", list(tags or [])) for name, license_name, tags in rows]


def allowed_models(engine: Engine, policy: ReleasePolicy, wanted: Sequence[str]) -> list[str]:
    return releasable_models(model_catalog(engine), policy, wanted)


def _in_range(column: Any, filters: ExportFilters) -> list[Any]:
    conditions = []
    if filters.start is not None:
        conditions.append(column >= filters.start)
    if filters.end is not None:
        conditions.append(column < filters.end)
    return conditions


def _grouped_rows(engine: Engine, query: Select) -> Iterator[tuple[str, list[Any]]]:
    """``(id, rows)`` for each exported thing, streamed through a server-side cursor.

    ``query`` must select that id first and order by it, so each thing's rows arrive together.
    """
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(query)
        rows = itertools.chain.from_iterable(result.partitions())
        for source_id, group in itertools.groupby(rows, key=operator.itemgetter(0)):
            yield source_id, list(group)


def _batched(units: Iterator[SourceUnit], batch_size: int) -> Iterator[list[SourceUnit]]:
    """``units`` in lists of ``batch_size`` (the last one may be shorter)."""
    batch: list[SourceUnit] = []
    for unit in units:
        batch.append(unit)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


class _IdOrderedSource:
    """What both sources share: the database, the filters, the releasable models, and queries
    restricted to ids after a resume point."""

    def __init__(self, engine: Engine, filters: ExportFilters, models: Sequence[str]):
        self.engine = engine
        self.filters = filters
        self.models = list(models)

    def _id_column(self) -> Any:
        """The exported thing's id column, the export's order (a method: an ORM attribute read
        through an instance would be looked up on that instance)."""
        raise NotImplementedError

    def _count_query(self) -> Select:
        raise NotImplementedError

    def _after(self, query: Select, after_id: str | None) -> Select:
        return query if after_id is None else query.where(self._id_column() > after_id)

    def count(self, after_id: str | None = None) -> int:
        """How many things the export will write after ``after_id``."""
        with self.engine.connect() as conn:
            return int(conn.execute(self._after(self._count_query(), after_id)).scalar_one())


class ConversationSource(_IdOrderedSource):
    """Conversations (direct chats and each side of a battle) with their messages."""

    def _id_column(self) -> Any:
        return Conversation.id

    def _conditions(self) -> list[Any]:
        return [Conversation.model_name.in_(self.models), *_in_range(Conversation.created_at, self.filters)]

    def _count_query(self) -> Select:
        # Only conversations with a message to export: a battle created but never played has two
        # empty conversations, which the reading query (a join on messages) never yields.
        has_message = exists().where(Message.conversation_id == Conversation.id, Message.role.in_(EXPORTED_ROLES),
                                     Message.content != "")
        return select(func.count(Conversation.id)).where(*self._conditions(), has_message)

    def _query(self, after_id: str | None) -> Select:
        query: Select = (
            select(
                Conversation.id,
                Conversation.visitor_id,
                Conversation.model_name,
                Conversation.created_at,
                Conversation.battle_id,
                Message.role,
                Message.content,
            )
            .join(Message, Message.conversation_id == Conversation.id)
            .where(*self._conditions(), Message.role.in_(EXPORTED_ROLES), Message.content != "")
            .order_by(Conversation.id, Message.position)
        )
        return self._after(query, after_id)

    def batches(self, after_id: str | None, batch_size: int) -> Iterator[list[SourceUnit]]:
        """Conversations after ``after_id`` in id order, ``batch_size`` at a time."""
        yield from _batched(self._units(after_id), batch_size)

    def _units(self, after_id: str | None) -> Iterator[SourceUnit]:
        for conv_id, rows in _grouped_rows(self.engine, self._query(after_id)):
            _, visitor_id, model, created_at, battle_id, _, _ = rows[0]
            meta = {"visitor_id": visitor_id, "model": model, "created_at": created_at, "battle_id": battle_id}
            yield SourceUnit(conv_id, [([row[5] for row in rows], [row[6] for row in rows])], meta)


class BattleSource(_IdOrderedSource):
    """Voted battles with both conversations, the vote, the voter's anomaly mark and flags."""

    def _id_column(self) -> Any:
        return Battle.id

    def _conditions(self) -> list[Any]:
        return [
            Battle.source == LIVE_SOURCE,  # imported battle logs are someone else's release, not ours
            Battle.model_a.in_(self.models),
            Battle.model_b.in_(self.models),
            *_in_range(Battle.created_at, self.filters),
        ]

    def _count_query(self) -> Select:
        return select(func.count(Battle.id)).join(Vote, Vote.battle_id == Battle.id).where(*self._conditions())

    def _query(self, after_id: str | None) -> Select:
        query: Select = (
            select(
                Battle.id,
                Battle.model_a,
                Battle.model_b,
                Battle.anonymous,
                Battle.tags,
                Battle.created_at,
                Vote.choice,
                Vote.visitor_id,
                Visitor.anomalous,
                Conversation.side,
                Message.role,
                Message.content,
            )
            .join(Vote, Vote.battle_id == Battle.id)
            .join(Conversation, Conversation.battle_id == Battle.id)
            .join(Message, Message.conversation_id == Conversation.id)
            .outerjoin(Visitor, Visitor.id == Vote.visitor_id)
            .where(
                *self._conditions(),
                Conversation.side.in_(("a", "b")),
                Message.role.in_(EXPORTED_ROLES),
                Message.content != "",
            )
            .order_by(Battle.id, Conversation.side, Message.position)
        )
        return self._after(query, after_id)

    def batches(self, after_id: str | None, batch_size: int) -> Iterator[list[SourceUnit]]:
        """Voted battles after ``after_id`` in id order, ``batch_size`` at a time, with their flags."""
        for batch in _batched(self._units(after_id), batch_size):
            yield self._with_flags(batch)

    def _units(self, after_id: str | None) -> Iterator[SourceUnit]:
        for battle_id, rows in _grouped_rows(self.engine, self._query(after_id)):
            _, model_a, model_b, anonymous, tags, created_at, choice, voter, anomalous, _, _, _ = rows[0]
            meta = {
                "model_a": model_a,
                "model_b": model_b,
                "anonymous": bool(anonymous),
                "tags": tags,
                "created_at": created_at,
                "choice": choice,
                "visitor_id": voter,
                "anomalous_voter": bool(anomalous),
            }
            sides: list[Side] = [([], []), ([], [])]
            for *_, side, role, content in rows:
                roles, contents = sides[0 if side == "a" else 1]
                roles.append(role)
                contents.append(content)
            yield SourceUnit(battle_id, sides, meta)

    def _with_flags(self, batch: list[SourceUnit]) -> list[SourceUnit]:
        """Attach each battle's flag kinds (one query per batch, on its own connection)."""
        ids = [unit.source_id for unit in batch]
        kinds: dict[str, set[str]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Flag.battle_id, Flag.kind).where(
                    Flag.battle_id.in_(ids),
                    Flag.kind.in_(
                        [FlagKind.IDENTITY_REVEALED, FlagKind.ANOMALOUS_VOTER, FlagKind.MODERATION]
                    ),
                )
            )
            for battle_id, kind in rows:
                if battle_id is not None:
                    kinds.setdefault(battle_id, set()).add(str(kind))
        for unit in batch:
            unit.meta["flags"] = kinds.get(unit.source_id, set())
        return batch


def as_datetime(value: datetime | str) -> datetime:
    """SQLite may hand back ISO strings for timestamps in raw joins; PostgreSQL datetimes."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
