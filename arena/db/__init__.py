"""Database access for the arena: models, engine and sessions, migrations."""

from arena.db.models import (
    Base,
    Battle,
    BattleMode,
    BattleStatus,
    Conversation,
    Flag,
    FlagKind,
    LeaderboardSnapshot,
    Message,
    Model,
    Visitor,
    Vote,
    VoteChoice,
)
from arena.db.session import get_engine, session_factory, session_scope

__all__ = [
    "Base",
    "Battle",
    "BattleMode",
    "BattleStatus",
    "Conversation",
    "Flag",
    "FlagKind",
    "LeaderboardSnapshot",
    "Message",
    "Model",
    "Visitor",
    "Vote",
    "VoteChoice",
    "get_engine",
    "session_factory",
    "session_scope",
]
