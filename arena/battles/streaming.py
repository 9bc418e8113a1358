"""What a streamed turn looks like while it runs: each side's text so far, and how it ended."""

from __future__ import annotations

from dataclasses import dataclass

from arena.db.models import BattleStatus


class SideState:
    """What the page shows for one side of a battle."""

    text: str = ""
    error: str | None = None
    done: bool = False


@dataclass
class TurnUpdate:
    """A snapshot of a turn in progress: both sides' text so far."""

    sides: dict[str, SideState]
    done: bool = False
    status: str = BattleStatus.STREAMING
