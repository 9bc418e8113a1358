"""A local OpenAI-compatible server for tests, run over real HTTP.

Tests that would otherwise need OpenAI (or any model endpoint) start a :class:`FakeOpenAI`
with a *responder*: a function that receives each chat request and says what to answer.
The official ``openai`` client (and so ``arena.providers.ChatClient``) talks to it exactly
as it would to a real endpoint: non-streaming and SSE-streaming chat completions,
``/v1/models``, error statuses with OpenAI-shaped bodies, and slow replies for timeouts.

    def responder(request: ChatRequest) -> Reply | str:
        return "Hello from " + request.model

    with FakeOpenAI(responder) as server:
        client = ChatClient(server.base_url, "any-model")

Every request is recorded in ``server.requests`` (thread-safe) so tests can count calls.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass
class ChatRequest:
    """One chat-completions request as the server received it."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    body: dict[str, Any]

    @property
    def temperature(self) -> float | None:
        return self.body.get("temperature")

    @property
    def last_user_message(self) -> str:
        users = [m.get("content") or "" for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""

    @property
    def system_message(self) -> str:
        systems = [m.get("content") or "" for m in self.messages if m.get("role") == "system"]
        return systems[0] if systems else ""


@dataclass
class Reply:
    """What the fake endpoint answers: text, or an HTTP error, optionally after a delay."""

    text: str = ""
    finish_reason: str | None = "stop"  # None: the stream ends without one (a truncated answer)
    delay_s: float = 0.0
    word_delay_s: float = 0.0  # pause before each streamed word after the first (a slow model)
    status: int = 200
    error_message: str = "fake error"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[ChatRequest], "Reply | str | Awaitable[Reply | str]"]


def _count_tokens(text: str) -> int:
    """A crude, deterministic token count (whitespace words) for usage fields."""
    return max(1, len(text.split()))


class FakeOpenAI:
    """An OpenAI-compatible server on a free local port, in a background thread."""

    def __init__(self, responder: Responder, *, models: list[str] | None = None):
        self.responder = responder
        self.models = models or ["fake-model"]
        self.requests: list[ChatRequest] = []
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the fake server is not running")
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            self._build_app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- inspection --------------------------------------------------------------------------
    def calls(self, model: str | None = None) -> list[ChatRequest]:
        """Requests received so far, optionally only those for one model id."""
        with self._lock:
            return [r for r in self.requests if model is None or r.model == model]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- the app -----------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def list_models() -> dict[str, Any]:
            return {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models],
            }

        @app.post("/v1/chat/completions")
        async def chat_completions(http_request: Request) -> Any:
            body = await http_request.json()
            request = ChatRequest(
                model=body.get("model", ""),
                messages=body.get("messages", []),
                stream=bool(body.get("stream")),
                body=body,
            )
            with self._lock:
                self.requests.append(request)
            reply = await self._reply_for(request)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            if reply.status != 200:
                return JSONResponse(
                    status_code=reply.status,
                    content={
                        "error": {"message": reply.error_message, "type": "fake_error", "code": reply.status}
                    },
                    headers=reply.headers,
                )
            if request.stream:
                return StreamingResponse(self._sse(request, reply), media_type="text/event-stream")
            return JSONResponse(_completion_body(request, reply))

        return app

    async def _reply_for(self, request: ChatRequest) -> Reply:
        outcome = self.responder(request)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        return Reply(text=outcome) if isinstance(outcome, str) else outcome

    async def _sse(self, request: ChatRequest, reply: Reply):  # type: ignore[no-untyped-def]
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        words = reply.text.split(" ")
        for index, word in enumerate(words):
            piece = word if index == 0 else " " + word
            if index and reply.word_delay_s:
                await asyncio.sleep(reply.word_delay_s)
            yield _sse_event(_chunk(completion_id, request.model, {"content": piece}, None))
        yield _sse_event(_chunk(completion_id, request.model, {}, reply.finish_reason))
        if (request.body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = _chunk(completion_id, request.model, None, None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = _usage(request, reply)
            yield _sse_event(usage_chunk)
        yield "data: [DONE]\n\n"


def _usage(request: ChatRequest, reply: Reply) -> dict[str, int]:
    prompt = reply.prompt_tokens
    if prompt is None:
        prompt = sum(_count_tokens(str(m.get("content") or "")) for m in request.messages)
    completion = reply.completion_tokens if reply.completion_tokens is not None else _count_tokens(reply.text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion_body(request: ChatRequest, reply: Reply) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": _usage(request, reply),
    }


def _chunk(
    completion_id: str, model: str, delta: dict[str, Any] | None, finish: str | None
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


def _sse_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
