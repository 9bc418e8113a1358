"""Visitor cookies for every request: an ASGI middleware and lookups for routes and Gradio events."""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from arena.identity import COOKIE_MAX_AGE_S, COOKIE_NAME, VisitorIdentity


class VisitorCookieMiddleware:
    """Gives every browser a signed visitor cookie and exposes the visitor id in ``scope['state']``."""

    def __init__(self, app: ASGIApp, identity: VisitorIdentity):
        self.app = app
        self.identity = identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = _cookie_from_headers(scope.get("headers", []))
        token = self.identity.token_from_cookie(cookie)
        new_cookie = None
        if token is None:
            new_cookie = self.identity.new_cookie()
            token = self.identity.token_from_cookie(new_cookie)
        assert token is not None
        scope.setdefault("state", {})["visitor_id"] = self.identity.visitor_id(token)

        secure = "; Secure" if scope.get("scheme") == "https" else ""  # served over HTTPS (or behind a TLS proxy)

        async def send_with_cookie(message: Message) -> None:
            if new_cookie is not None and message["type"] == "http.response.start":
                header = (
                    f"{COOKIE_NAME}={new_cookie}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Lax{secure}"
                )
                message.setdefault("headers", []).append((b"set-cookie", header.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _cookie_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            jar.load(value.decode("latin-1"))
            if COOKIE_NAME in jar:
                return jar[COOKIE_NAME].value
    return None


def visitor_id_of(request: Request) -> str:
    """The visitor id that the middleware attached to this request."""
    return str(request.state.visitor_id)


def visitor_id_of_gradio(request: Any, identity: VisitorIdentity) -> str:
    """The visitor id for a Gradio event: from its cookie, else from the middleware's state."""
    cookies = getattr(request, "cookies", None) or {}
    visitor = identity.visitor_id_from_cookie(cookies.get(COOKIE_NAME))
    if visitor:
        return visitor
    inner = getattr(request, "request", None)
    state = getattr(inner, "state", None)
    if state is not None and getattr(state, "visitor_id", None):
        return str(state.visitor_id)
    raise PermissionError("no visitor cookie: reload the page")
