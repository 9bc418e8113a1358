"""The arena web application: FastAPI with the JSON API, health check and the Gradio page at ``/``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from arena.battles import ArenaError, ArenaService
from arena.config import Settings, get_settings
from arena.db.session import get_engine, session_factory
from arena.identity import VisitorIdentity
from arena.leaderboard.refresher import LeaderboardRefresher
from arena.moderation import build_moderator
from arena.providers.client import discover_context_windows
from arena.providers.registry import load_registry
from arena.web.api import error_response
from arena.web.api import router as api_router
from arena.web.arena_ui import ARENA_CSS, ARENA_THEME, build_arena_ui
from arena.web.leaderboard import leaderboard_tab
from arena.web.leaderboard import router as leaderboard_router
from arena.web.visitors import VisitorCookieMiddleware

logger = logging.getLogger(__name__)


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
        service.fail_abandoned_streams()
        refresher = LeaderboardRefresher.from_settings(service.sessions, settings)
        refresher.start()
        yield
        await refresher.stop()
        await service.aclose()

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

    @app.exception_handler(ArenaError)
    async def arena_error(_: Request, exc: ArenaError) -> JSONResponse:
        return error_response(exc)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, object]:
        return {"status": "ok", "models": len(service.registry)}

    app.include_router(api_router, prefix="/api/v1", tags=["arena"])
    app.include_router(leaderboard_router)
    blocks = build_arena_ui(service, identity, leaderboard_tab=leaderboard_tab(service.sessions))
    return gr.mount_gradio_app(app, blocks, path="/", footer_links=["api"], css=ARENA_CSS, theme=ARENA_THEME)
