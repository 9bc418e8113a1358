"""The gateway's OpenAI-compatible HTTP API: ``/v1/chat/completions`` (whole or SSE), ``/v1/models``,
``/health`` and ``/metrics`` (Prometheus). The only module of ``serving.gateway`` that imports FastAPI.

Answers carry ``x-gateway-cache`` (``hit``, ``similar`` or ``miss``) and ``x-gateway-model`` (the real
endpoint that produced the answer) headers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from serving.gateway.service import Gateway
from serving.gateway.upstream import GatewayError

logger = logging.getLogger(__name__)
CACHE_HEADER = {"cache": "hit", "similar": "similar", "upstream": "miss"}


def create_app(gateway: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await gateway.close()

    app = FastAPI(title="Arena gateway", version="0.1.0", lifespan=lifespan)
    created = int(time.time())

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, error: GatewayError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": gateway.model_names()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        virtual = set(gateway.config.virtual_models)
        data = [{"id": name, "object": "model", "created": created,
                 "owned_by": "arena-gateway" if name in virtual else "arena-gateway-endpoint"}
                for name in gateway.model_names()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _json_body(request)
        if body.get("stream"):
            source, model, chunks = await gateway.chat_stream(body)
            return StreamingResponse(_sse(chunks), media_type="text/event-stream",
                                     headers=_headers(source, model))
        answer = await gateway.chat(body)
        return JSONResponse(answer.body, headers=_headers(answer.source, answer.model))

    return app


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as error:
        raise GatewayError(400, f"request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object", code="invalid_json")
    return body


def _headers(source: str, model: str) -> dict[str, str]:
    return {"x-gateway-cache": CACHE_HEADER[source], "x-gateway-model": model}


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Server-sent events; a failure after the headers went out becomes a final error event."""
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except GatewayError as error:
        yield f"data: {json.dumps(error.body())}\n\n"
    yield "data: [DONE]\n\n"
