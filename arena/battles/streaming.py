"""Streaming the sides of a turn: the fan-in that battles (two sides) and direct chats (one) share.

:class:`SideStreams` runs one task per side and merges their chunks into one queue, so the
caller sees each side's text grow and each side end on its own.  :class:`TurnRun` drives a
whole turn in its own task, apart from the request that started it: it stores each side as
it ends (and the partial text at every heartbeat), settles the turn, and publishes snapshots
to whoever watches.  A visitor who leaves only stops watching; the turn still reaches a
final state, and what the models had written is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field

from arena.db.models import BattleStatus
from arena.providers.client import ChatResult, ProviderError, StreamChunk

logger = logging.getLogger(__name__)

INTERRUPTED = "the answer was interrupted"
CUT_OFF = "the answer was cut off: the model's stream ended without a finish reason"


@dataclass
class SideState:
    """What the page shows for one side of a battle."""

    text: str = ""
    error: str | None = None
    done: bool = False
    result: ChatResult | None = field(default=None, repr=False)


@dataclass
class TurnUpdate:
    """A snapshot of a turn in progress: both sides' text so far."""

    sides: dict[str, SideState]
    done: bool = False
    status: str = BattleStatus.STREAMING


# One queue item: (side, new text or None when the side ended, the error it ended with).
_Event = tuple[str, str | None, BaseException | None]


class SideStreams:
    """Several model streams at once, merged into one sequence of "this side changed" events."""

    def __init__(self, streams: dict[str, Callable[[], AsyncGenerator[StreamChunk, None]]]):
        self.states = {side: SideState() for side in streams}
        self._queue: asyncio.Queue[_Event] = asyncio.Queue()
        self._tasks = {side: asyncio.create_task(self._pump(side, open_stream))
                       for side, open_stream in streams.items()}

    async def events(self, heartbeat_s: float) -> AsyncGenerator[str | None, None]:
        """Yield the side whose text grew or that ended; ``None`` when ``heartbeat_s`` passed quietly."""
        while not all(state.done for state in self.states.values()):
            try:
                side, delta, error = await asyncio.wait_for(self._queue.get(), heartbeat_s)
            except TimeoutError:
                yield None
                continue
            state = self.states[side]
            if state.done:  # stopped already; late chunks are dropped
                continue
            if delta is not None:
                state.text += delta
            else:
                state.done = True
                state.error = _describe_error(error) if error is not None else None
            yield side

    def stop(self, reason: str) -> list[str]:
        """End every unfinished side now with ``reason``; return those sides (safe to call from ``finally``)."""
        stopped = []
        for side, state in self.states.items():
            if not state.done:
                self._tasks[side].cancel()
                state.done, state.error = True, reason
                stopped.append(side)
                self._queue.put_nowait((side, None, None))  # wakes ``events`` so that it ends now
        return stopped

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _pump(self, side: str, open_stream: Callable[[], AsyncGenerator[StreamChunk, None]]) -> None:
        """Stream one model's answer into the queue; a stream without a finish reason is a failure."""
        try:
            async with aclosing(open_stream()) as stream:
                async for chunk in stream:
                    if chunk.result is not None:
                        self.states[side].result = chunk.result
                        if not chunk.result.finish_reason:
                            raise ProviderError(CUT_OFF)
                    elif chunk.delta:
                        await self._queue.put((side, chunk.delta, None))
        except asyncio.CancelledError:
            raise
        except ProviderError as exc:
            await self._queue.put((side, None, exc))
            return
        except Exception as exc:  # any endpoint failure stays on its own side
            logger.exception("side %s failed", side)
            await self._queue.put((side, None, exc))
            return
        await self._queue.put((side, None, None))


class TurnStore:
    """Where a running turn writes: partial answers, each side as it ends, and the turn's outcome."""

    save_progress: Callable[[dict[str, SideState]], Awaitable[None]]
    save_side: Callable[[str, SideState], Awaitable[None]]
    settle: Callable[[dict[str, SideState]], Awaitable[str]]

    def __init__(self, save_progress: Callable[[dict[str, SideState]], Awaitable[None]],
                 save_side: Callable[[str, SideState], Awaitable[None]],
                 settle: Callable[[dict[str, SideState]], Awaitable[str]]):
        self.save_progress, self.save_side, self.settle = save_progress, save_side, settle


class TurnRun:
    """One turn in its own task: streams the sides, stores them, settles, publishes snapshots."""

    def __init__(self, streams: SideStreams, store: TurnStore, *, heartbeat_s: float, deadline_s: float):
        self.streams = streams
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.deadline_s = deadline_s
        self.updates: asyncio.Queue[TurnUpdate] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    def stop(self, reason: str = INTERRUPTED) -> None:
        """Stop the models; the run stores what they wrote and settles the turn as failed."""
        self.streams.stop(reason)

    async def watch(self) -> AsyncIterator[TurnUpdate]:
        """Snapshots until the last one (``done``); leaving early stops the turn."""
        finished = False
        try:
            while not finished:
                update = await self.updates.get()
                finished = update.done
                yield update
        finally:
            if not finished:
                self.stop()

    async def _run(self) -> None:
        states = self.streams.states
        saved: set[str] = set()
        status: str = BattleStatus.FAILED
        try:
            status = await self._stream(states, saved)
        except Exception:
            logger.exception("a turn failed while storing its answers")
        finally:
            self.streams.stop(INTERRUPTED)
            await self.streams.aclose()
        self.updates.put_nowait(TurnUpdate(sides=states, done=True, status=status))

    async def _stream(self, states: dict[str, SideState], saved: set[str]) -> str:
        last_save = time.monotonic()
        try:
            async with asyncio.timeout(self.deadline_s), aclosing(self.streams.events(self.heartbeat_s)) as events:
                async for side in events:
                    if side is not None and states[side].done and side not in saved:
                        saved.add(side)
                        await self.store.save_side(side, states[side])
                    elif time.monotonic() - last_save >= self.heartbeat_s:
                        await self.store.save_progress(states)
                        last_save = time.monotonic()
                    self.updates.put_nowait(TurnUpdate(sides=dict(states)))
        except TimeoutError:
            self.streams.stop(f"the answer took longer than the turn limit of {self.deadline_s:.0f} s")
        self.streams.stop(INTERRUPTED)
        for side in states:  # sides stopped early (visitor left, deadline, shutdown)
            if side not in saved:
                saved.add(side)
                await self.store.save_side(side, states[side])
        return await self.store.settle(states)


async def wait_for_runs(runs: set[TurnRun], timeout_s: float) -> int:
    """Stop every run, give them ``timeout_s`` to store and settle; cancel the rest; return how many."""
    for run in runs:
        run.stop()
    tasks = [run.task for run in runs]
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    with suppress(Exception):
        await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


def _describe_error(error: BaseException) -> str:
    if isinstance(error, ProviderError) and error.status_code == 400 and "context length" in str(error):
        return ("the conversation is longer than this model's context window, so it could not answer; "
                "start a new round")
    if isinstance(error, ProviderError):
        return str(error)
    return f"the model failed: {type(error).__name__}: {error}"
