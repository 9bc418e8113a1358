"""The JSON API under ``/api/v1``: models, battles, streamed turns, votes, direct chats.

Streamed endpoints answer ``text/event-stream``; each event is one JSON object:
``{"side": "a", "delta": "..."}`` while the models write, and a last
``{"done": true, "status": "...", "errors": {...}}``.  Errors are
``{"error": {"code": ..., "message": ...}}`` with a 4xx status (422 for a malformed body), or
503 with ``Retry-After`` while the database is unreachable; every route documents its own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, Field
from starlette.types import Send

from arena.battles import ArenaError, ArenaService, SideState, TurnUpdate
from arena.web.visitors import visitor_id_of

router = APIRouter()


def get_service(request: Request) -> ArenaService:
    return request.app.state.service  # type: ignore[no-any-return]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text cannot contain a NUL character (\\u0000)")
    return value


# Text from visitors: PostgreSQL cannot store a NUL byte, so it is refused at the door.
Text = Annotated[str, AfterValidator(_no_nul)]


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable: invalid_request, not_found, rate_limited, ...")
    message: str = Field(description="what went wrong, for people")


class ErrorOut(BaseModel):
    error: ErrorDetail


def errors_documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (each in the ``ErrorOut`` shape)."""
    descriptions = {400: "Bad request", 403: "Not this visitor's", 404: "Not found", 409: "Conflict with the state",
                    422: "Malformed body or refused by moderation", 429: "Rate limited (see Retry-After)",
                    503: "Database unavailable (see Retry-After)"}
    return {status: {"model": ErrorOut, "description": descriptions[status]} for status in (*statuses, 422, 503)}


class ModelOut(BaseModel):
    name: str
    organization: str
    license: str
    tags: list[str]


class BattleIn(BaseModel):
    mode: Literal["anonymous", "named"] = "anonymous"
    model_a: Text | None = None
    model_b: Text | None = None


class BattleOut(BaseModel):
    id: str
    mode: str
    status: str
    turn_count: int
    model_a: str | None = Field(description="hidden (null) until the vote in anonymous battles")
    model_b: str | None
    messages: dict[str, list[dict[str, str]]]
    vote: str | None


class TurnIn(BaseModel):
    prompt: Text


class VoteIn(BaseModel):
    choice: Literal["a", "b", "tie", "both_bad"]


class VoteOut(BaseModel):
    battle_id: str
    choice: str
    model_a: str
    model_b: str
    duplicate: bool


class ChatIn(BaseModel):
    model: Text


class ChatOut(BaseModel):
    conversation_id: str


def error_response(exc: ArenaError) -> JSONResponse:
    return error_json(exc.status_code, exc.code, str(exc), retry_after_s=getattr(exc, "retry_after_s", None))


def error_json(status: int, code: str, message: str, *, retry_after_s: float | None = None) -> JSONResponse:
    """The one error shape of the API; ``Retry-After`` (whole seconds) when trying later helps."""
    headers = {"Retry-After": str(max(1, round(retry_after_s)))} if retry_after_s is not None else None
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class EventStreamResponse(StreamingResponse):
    """An SSE response that always closes its event iterator, also when the client went away.

    Closing it stops the turn the events come from, which then stores what the models wrote.
    """

    media_type = "text/event-stream"

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


@router.get("/models", response_model=list[ModelOut], responses={503: errors_documented()[503]})
def list_models(service: ArenaService = Depends(get_service)) -> list[ModelOut]:
    return [
        ModelOut(name=s.name, organization=s.organization, license=s.license, tags=list(s.tags))
        for s in service.registry.values()
    ]


@router.post("/battles", response_model=BattleOut, status_code=201, responses=errors_documented(400, 404, 429))
def create_battle(body: BattleIn, request: Request, service: ArenaService = Depends(get_service)) -> BattleOut:
    view = service.create_battle(visitor_id_of(request), body.mode, body.model_a, body.model_b)
    return BattleOut(**asdict(view))


@router.get("/battles/{battle_id}", response_model=BattleOut, responses=errors_documented(400, 404))
def get_battle(battle_id: str, service: ArenaService = Depends(get_service)) -> BattleOut:
    return BattleOut(**asdict(service.get_battle(battle_id)))


@router.post("/battles/{battle_id}/turns",
             responses={200: {"content": {"text/event-stream": {}}}, **errors_documented(400, 403, 404, 409, 429)})
async def post_turn(
    battle_id: str, body: TurnIn, request: Request, service: ArenaService = Depends(get_service)
) -> StreamingResponse:
    updates = service.play_turn(battle_id, visitor_id_of(request), body.prompt)
    return await _stream_battle(updates)


@router.post("/battles/{battle_id}/regenerate",
             responses={200: {"content": {"text/event-stream": {}}}, **errors_documented(400, 403, 404, 409, 429)})
async def regenerate(battle_id: str, request: Request, service: ArenaService = Depends(get_service)) -> StreamingResponse:
    return await _stream_battle(service.regenerate(battle_id, visitor_id_of(request)))


@router.post("/battles/{battle_id}/vote", response_model=VoteOut, responses=errors_documented(400, 403, 404, 409))
def vote(battle_id: str, body: VoteIn, request: Request, service: ArenaService = Depends(get_service)) -> VoteOut:
    return VoteOut(**asdict(service.vote(battle_id, visitor_id_of(request), body.choice)))


@router.post("/chats", response_model=ChatOut, status_code=201, responses=errors_documented(400, 404, 429))
def create_chat(body: ChatIn, request: Request, service: ArenaService = Depends(get_service)) -> ChatOut:
    return ChatOut(conversation_id=service.create_chat(visitor_id_of(request), body.model))


@router.post("/chats/{conversation_id}/turns",
             responses={200: {"content": {"text/event-stream": {}}}, **errors_documented(400, 403, 404, 429)})
async def post_chat_turn(
    conversation_id: str, body: TurnIn, request: Request, service: ArenaService = Depends(get_service)
) -> StreamingResponse:
    states = service.chat_turn(conversation_id, visitor_id_of(request), body.prompt)
    first = await anext(states)  # validation errors surface here, before the stream starts
    return EventStreamResponse(_chat_events(first, states))


async def _stream_battle(updates: AsyncIterator[TurnUpdate]) -> StreamingResponse:
    first = await anext(updates)  # validation errors surface here, before the stream starts
    return EventStreamResponse(_battle_events(first, updates))


async def _battle_events(first: TurnUpdate, rest: AsyncIterator[TurnUpdate]) -> AsyncIterator[str]:
    sent = {"a": 0, "b": 0}

    def events(update: TurnUpdate) -> list[str]:
        out = []
        for side, state in update.sides.items():
            if len(state.text) > sent[side]:
                out.append(_sse({"side": side, "delta": state.text[sent[side]:]}))
                sent[side] = len(state.text)
        if update.done:
            errors = {side: s.error for side, s in update.sides.items() if s.error}
            out.append(_sse({"done": True, "status": update.status, "errors": errors}))
        return out

    try:
        for event in events(first):
            yield event
        async for update in rest:
            for event in events(update):
                yield event
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def _chat_events(first: SideState, rest: AsyncIterator[SideState]) -> AsyncIterator[str]:
    try:
        async for event in _chat_event_lines(first, rest):
            yield event
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def _chat_event_lines(first: SideState, rest: AsyncIterator[SideState]) -> AsyncIterator[str]:
    sent = 0
    state = first
    while True:
        if len(state.text) > sent:
            yield _sse({"delta": state.text[sent:]})
            sent = len(state.text)
        if state.done:
            async for _ in rest:  # let the service store the answer before the stream closes
                pass
            yield _sse({"done": True, "error": state.error})
            return
        try:
            state = await anext(rest)
        except StopAsyncIteration:
            return


def _sse(payload: dict[str, object]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
