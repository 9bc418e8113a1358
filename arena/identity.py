"""Visitor identity: a random token in a signed cookie, stored only as a keyed HMAC.

The cookie holds ``token.signature``; the database holds ``HMAC-SHA256(secret, token)``.
Neither the token nor the visitor's IP address is ever written to the database, so a
database dump cannot be joined with cookies or web-server logs without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from itsdangerous import BadSignature, URLSafeSerializer

COOKIE_NAME = "arena_visitor"
COOKIE_MAX_AGE_S = 365 * 24 * 3600


class VisitorIdentity:
    """Issues and verifies visitor cookies, and maps them to stored visitor ids."""

    def __init__(self, secret_key: str):
        self._secret = secret_key.encode()
        self._serializer = URLSafeSerializer(secret_key, salt="arena-visitor-cookie")

    def new_cookie(self) -> str:
        """A fresh signed cookie value for a new visitor."""
        return self._serializer.dumps(secrets.token_urlsafe(24))

    def token_from_cookie(self, cookie: str | None) -> str | None:
        """The visitor's token if the cookie is present and its signature is valid."""
        if not cookie:
            return None
        try:
            token = self._serializer.loads(cookie)
        except BadSignature:
            return None
        return token if isinstance(token, str) and token else None

    def visitor_id(self, token: str) -> str:
        """The id stored in the database: a keyed HMAC of the token."""
        return hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()

    def visitor_id_from_cookie(self, cookie: str | None) -> str | None:
        token = self.token_from_cookie(cookie)
        return self.visitor_id(token) if token else None
