"""The engine's async front: the step loop in a background thread, an async iterator per request.

A web server's event loop never blocks on the model: :meth:`AsyncEngine.generate` validates the
request at once (so a bad one fails before any response is sent), queues it for the engine
thread, and yields its :class:`~serving.sequence.RequestOutput` deltas as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable

from transformers import PreTrainedTokenizerBase

from serving.engine import Engine, RequestError
from serving.lora.adapter import LoraAdapter
from serving.sequence import GenerationRequest, RequestOutput, Sequence

logger = logging.getLogger(__name__)


def _settle(future: asyncio.Future, result: object, error: Exception | None) -> None:
    """Complete ``future`` (on its loop) unless its caller already gave up."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class AsyncEngine:
    """Runs an :class:`Engine` in a daemon thread; ``generate`` streams outputs to asyncio callers."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._inbox: queue.Queue[tuple[str, object]] = queue.Queue()
        self._listeners: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.engine.tokenizer

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    def adapter_names(self) -> list[str]:
        """The registered LoRA adapters (a snapshot; safe from any thread)."""
        return self.engine.adapter_names()

    async def register_adapter(self, name: str, path: str) -> LoraAdapter:
        """Load an adapter off the event loop, then register it in the engine's thread."""
        adapter = await asyncio.to_thread(self.engine.load_adapter, name, path)
        await self._call(self.engine.add_adapter, adapter)
        return adapter

    async def unregister_adapter(self, name: str) -> None:
        """Unregister an adapter in the engine's thread (KeyError, AdapterInUseError)."""
        await self._call(self.engine.remove_adapter, name)

    async def _call(self, function: Callable[..., object], *args: object) -> object:
        """Run ``function(*args)`` between two engine steps, in its thread; return its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._inbox.put(("call", (function, args, loop, future)))
        return await future

    def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """Validate the request now (raising ``RequestError`` / ``InvalidParamsError``) and
        return an async iterator of its outputs; closing it early aborts the request."""
        seq = self.engine.new_sequence(request)
        return self._stream(seq)

    async def _stream(self, seq: Sequence) -> AsyncIterator[RequestOutput]:
        outputs: asyncio.Queue = asyncio.Queue()
        self._listeners[seq.request_id] = (asyncio.get_running_loop(), outputs)
        self._inbox.put(("add", seq))
        finished = False
        try:
            while not finished:
                item = await outputs.get()
                if isinstance(item, Exception):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._listeners.pop(seq.request_id, None)
            if not finished:
                self._inbox.put(("abort", seq.request_id))

    def shutdown(self) -> None:
        """Stop the loop thread (requests in flight are dropped)."""
        self._stopped.set()
        self._inbox.put(("wake", None))
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.engine.close()  # tensor-parallel workers stop with the loop that drives them

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._drain_inbox(block=not self.engine.has_work)
            if not self.engine.has_work:
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # noqa: BLE001 - a failed step must not kill the server
                logger.exception("engine %s step failed; failing its requests", self.name)
                self._fail_all(error)
                continue
            self._deliver_step(outputs)

    def _drain_inbox(self, block: bool) -> None:
        try:
            kind, payload = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(kind, payload)
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, kind: str, payload) -> None:
        if kind == "add":
            try:
                self.engine.add(payload)
            except RequestError as error:
                self._deliver(payload.request_id, error)
        elif kind == "abort":
            self.engine.abort(payload)
        elif kind == "call":
            function, args, loop, future = payload
            try:
                result = function(*args)
            except Exception as error:  # noqa: BLE001 - handed back to the caller
                loop.call_soon_threadsafe(_settle, future, None, error)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self._listeners):
            self.engine.abort(request_id)
            self._deliver(request_id, RuntimeError(f"engine failure: {error}"))

    def _deliver_step(self, outputs: list[RequestOutput]) -> None:
        """Hand a step's outputs over with one wake-up per event loop, not one per request
        (at 256 streams, per-request wake-ups cost the loop and the GIL more than the outputs)."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        for output in outputs:
            listener = self._listeners.get(output.request_id)
            if listener is not None:
                batches.setdefault(listener[0], []).append((listener[1], output))
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the callers' event loop is closed
                for _, output in items:
                    self._listeners.pop(output.request_id, None)

    def _deliver(self, request_id: str, item: RequestOutput | Exception) -> None:
        listener = self._listeners.get(request_id)
        if listener is None:
            return
        loop, outputs = listener
        try:
            loop.call_soon_threadsafe(outputs.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed
            self._listeners.pop(request_id, None)


def _put_all(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for outputs, output in items:
        outputs.put_nowait(output)
