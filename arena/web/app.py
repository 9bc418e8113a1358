"""The arena web application: FastAPI with the JSON API, health check and the Gradio page at ``/``."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import unquote_to_bytes

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from arena.battles import ArenaError, ArenaService
from arena.config import Settings, get_settings
from arena.db.session import get_engine, session_factory
from arena.identity import VisitorIdentity
from arena.leaderboard.refresher import LeaderboardRefresher
from arena.moderation import build_moderator
from arena.providers.client import discover_context_windows
from arena.providers.registry import load_registry
from arena.web.api import error_json, error_response, errors_documented
from arena.web.api import router as api_router
from arena.web.arena_ui import ARENA_CSS, ARENA_THEME, build_arena_ui
from arena.web.leaderboard import leaderboard_tab
from arena.web.leaderboard import router as leaderboard_router
from arena.web.visitors import VisitorCookieMiddleware

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("arena.access")

# Errors that mean "the database is not reachable now": answered 503 with Retry-After.
DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeoutError)
DATABASE_RETRY_AFTER_S = 5


def build_service(settings: Settings) -> ArenaService:
    """The battle service wired to the configured database, registry and moderator.

    Models whose registry entry gives no ``context_tokens`` take the context window their
    endpoint reports, so the page's message limit fits every model."""
    registry = load_registry(settings.models_file)
    registry = registry.with_context_windows(discover_context_windows(list(registry.values())))
    return ArenaService(
        session_factory(get_engine(settings.database_url)),
        registry,
        build_moderator(settings.moderation_wordlist, settings.openai_api_key),
        settings,
    )


def create_app(settings: Settings | None = None, service: ArenaService | None = None) -> FastAPI:
    """The whole arena app; the database must already be migrated (``arena db upgrade``)."""
    settings = settings or get_settings()
    service = service or build_service(settings)
    identity = VisitorIdentity(settings.secret_key)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.sync_models()
        service.start_reaper()  # fails turns left by crashed servers, now and periodically
        refresher = LeaderboardRefresher.from_settings(service.sessions, settings)
        refresher.start()
        yield
        await refresher.stop()
        await service.aclose()  # stops open turns after a bounded wait, storing what they received

    # Swagger UI from files shipped in the fastapi-offline package: the docs work offline. (Not
    # its ReDoc page: ReDoc's sidebar loads a logo from its CDN.)
    app = FastAPIOffline(
        title="Arena",
        description="Chat with two anonymous models, vote, and see the leaderboard.",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        static_url="/api/v1/docs-static",
    )
    app.state.service = service
    app.state.settings = settings
    app.add_middleware(VisitorCookieMiddleware, identity=identity)
    app.add_middleware(RefuseNulMiddleware)
    if settings.access_log:
        app.add_middleware(AccessLogMiddleware)
    _add_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, object]:  # answered on the event loop, which never waits on the database
        return {"status": "ok", "models": len(service.registry)}

    app.include_router(api_router, prefix="/api/v1", tags=["arena"])
    # The leaderboard API answers JSON, or CSV with ?format=csv; its errors use the same shape.
    leaderboard_responses = {200: {"content": {"application/json": {}, "text/csv": {}}}, **errors_documented(400, 404)}
    app.include_router(leaderboard_router, responses=leaderboard_responses)
    blocks = build_arena_ui(service, identity, leaderboard_tab=leaderboard_tab(service.sessions))
    return gr.mount_gradio_app(app, blocks, path="/", footer_links=["api"], css=ARENA_CSS, theme=ARENA_THEME)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in the API's one shape: ``{"error": {"code", "message"}}``."""

    @app.exception_handler(ArenaError)
    async def arena_error(_: Request, exc: ArenaError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        response = error_json(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        # A NUL byte is bad input (400) like anywhere else; any other malformed body is a 422.
        nul_only = all("NUL character" in str(error.get("msg", "")) for error in exc.errors())
        return error_json(400 if nul_only else 422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        if isinstance(exc, DATABASE_DOWN):
            logger.warning("database unavailable for %s %s: %s", request.method, request.url.path,
                           str(exc.orig or exc).splitlines()[0])
            return error_json(503, "database_unavailable", "The database is unavailable; please retry shortly.",
                              retry_after_s=DATABASE_RETRY_AFTER_S)
        logger.exception("database error for %s %s", request.method, request.url.path)
        return error_json(500, "internal", "Something went wrong on the server; it was logged.")

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        return error_json(500, "internal", "Something went wrong on the server; it was logged.")


def _describe_validation(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one readable sentence: ``body.prompt: Field required; ...``."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is malformed"


class RefuseNulMiddleware:
    """A NUL byte in the path or query cannot reach the database: refuse it with a 400."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope.get("path", "").encode()
            if b"\x00" in unquote_to_bytes(raw) or b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
                response = error_json(400, "invalid_request", "the URL cannot contain a NUL character (%00)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AccessLogMiddleware:
    """One log line per request, without the client's address: the arena stores and logs no IP."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            access_logger.info('"%s %s" %d %.0f ms', scope["method"], scope["path"], status,
                               (time.perf_counter() - started) * 1000)
