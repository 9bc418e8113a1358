"""The JSON API under ``/api/v1``: models, battles, streamed turns, votes, direct chats.

Streamed endpoints answer ``text/event-stream``; each event is one JSON object:
``{"side": "a", "delta": "..."}`` while the models write, and a last
``{"done": true, "status": "...", "errors": {...}}``.  Errors are
``{"error": {"code": ..., "message": ...}}`` with a 4xx status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from arena.battles import ArenaError, ArenaService, SideState, TurnUpdate
from arena.web.visitors import visitor_id_of

router = APIRouter()


def get_service(request: Request) -> ArenaService:
    return request.app.state.service  # type: ignore[no-any-return]


class ModelOut(BaseModel):
    name: str
    organization: str
    license: str
    tags: list[str]


class BattleIn(BaseModel):
    mode: Literal["anonymous", "named"] = "anonymous"
    model_a: str | None = None
    model_b: str | None = None


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
    prompt: str


class VoteIn(BaseModel):
    choice: Literal["a", "b", "tie", "both_bad"]


class VoteOut(BaseModel):
    battle_id: str
    choice: str
    model_a: str
    model_b: str
    duplicate: bool


class ChatIn(BaseModel):
    model: str


class ChatOut(BaseModel):
    conversation_id: str


def error_response(exc: ArenaError) -> JSONResponse:
    return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, status_code=exc.status_code)


@router.get("/models", response_model=list[ModelOut])
def list_models(service: ArenaService = Depends(get_service)) -> list[ModelOut]:
    return [
        ModelOut(name=s.name, organization=s.organization, license=s.license, tags=list(s.tags))
        for s in service.registry.values()
    ]


@router.post("/battles", response_model=BattleOut, status_code=201)
def create_battle(body: BattleIn, request: Request, service: ArenaService = Depends(get_service)) -> BattleOut:
    view = service.create_battle(visitor_id_of(request), body.mode, body.model_a, body.model_b)
    return BattleOut(**asdict(view))


@router.get("/battles/{battle_id}", response_model=BattleOut)
def get_battle(battle_id: str, service: ArenaService = Depends(get_service)) -> BattleOut:
    return BattleOut(**asdict(service.get_battle(battle_id)))


@router.post("/battles/{battle_id}/turns", responses={200: {"content": {"text/event-stream": {}}}})
async def post_turn(
    battle_id: str, body: TurnIn, request: Request, service: ArenaService = Depends(get_service)
) -> StreamingResponse:
    updates = service.play_turn(battle_id, visitor_id_of(request), body.prompt)
    return await _stream_battle(updates)


@router.post("/battles/{battle_id}/regenerate", responses={200: {"content": {"text/event-stream": {}}}})
async def regenerate(battle_id: str, request: Request, service: ArenaService = Depends(get_service)) -> StreamingResponse:
    return await _stream_battle(service.regenerate(battle_id, visitor_id_of(request)))


@router.post("/battles/{battle_id}/vote", response_model=VoteOut)
def vote(battle_id: str, body: VoteIn, request: Request, service: ArenaService = Depends(get_service)) -> VoteOut:
    return VoteOut(**asdict(service.vote(battle_id, visitor_id_of(request), body.choice)))


@router.post("/chats", response_model=ChatOut, status_code=201)
def create_chat(body: ChatIn, request: Request, service: ArenaService = Depends(get_service)) -> ChatOut:
    return ChatOut(conversation_id=service.create_chat(visitor_id_of(request), body.model))


@router.post("/chats/{conversation_id}/turns", responses={200: {"content": {"text/event-stream": {}}}})
async def post_chat_turn(
    conversation_id: str, body: TurnIn, request: Request, service: ArenaService = Depends(get_service)
) -> StreamingResponse:
    states = service.chat_turn(conversation_id, visitor_id_of(request), body.prompt)
    first = await anext(states)  # validation errors surface here, before the stream starts
    return StreamingResponse(_chat_events(first, states), media_type="text/event-stream")


async def _stream_battle(updates: AsyncIterator[TurnUpdate]) -> StreamingResponse:
    first = await anext(updates)  # validation errors surface here, before the stream starts
    return StreamingResponse(_battle_events(first, updates), media_type="text/event-stream")


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

    for event in events(first):
        yield event
    async for update in rest:
        for event in events(update):
            yield event


async def _chat_events(first: SideState, rest: AsyncIterator[SideState]) -> AsyncIterator[str]:
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
