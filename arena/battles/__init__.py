"""The battle domain, used by the web layer and the API; it knows nothing about the web.

* :mod:`~arena.battles.errors`: what a visitor action can run into, with its HTTP status.
* :mod:`~arena.battles.sampling`: which two models meet (weighted or active).
* :mod:`~arena.battles.streaming`: the sides of a turn while they stream (shared by battles and
  direct chats), each turn in its own task.
* :mod:`~arena.battles.recording`: writing running turns to the database; failing stale ones.
* :mod:`~arena.battles.rate_limit`: atomic per-visitor limits (in-process or Redis).
* :mod:`~arena.battles.service`: battles, turns, direct chats and votes over the database.
"""

from arena.battles.errors import (
    ArenaError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    RefusedError,
)
from arena.battles.sampling import ActivePairSampler, PairSampler, WeightedPairSampler, make_pair_sampler
from arena.battles.service import SIDES, ArenaService, BattleView, VoteOutcome
from arena.battles.streaming import SideState, TurnUpdate

__all__ = [
    "SIDES",
    "ActivePairSampler",
    "ArenaError",
    "ArenaService",
    "BattleView",
    "ConflictError",
    "ForbiddenError",
    "NotFoundError",
    "PairSampler",
    "RateLimitedError",
    "RefusedError",
    "SideState",
    "TurnUpdate",
    "VoteOutcome",
    "WeightedPairSampler",
    "make_pair_sampler",
]
