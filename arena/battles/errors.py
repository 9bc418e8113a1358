"""What a visitor action can run into; each error carries its HTTP status and a short code."""

from __future__ import annotations


class ArenaError(Exception):
    """A visitor action that cannot be done; ``status_code`` maps it to HTTP."""

    status_code = 400
    code = "invalid_request"


class NotFoundError(ArenaError):
    status_code = 404
    code = "not_found"


class ForbiddenError(ArenaError):
    status_code = 403
    code = "forbidden"


class ConflictError(ArenaError):
    status_code = 409
    code = "conflict"


class RateLimitedError(ArenaError):
    status_code = 429
    code = "rate_limited"


class RefusedError(ArenaError):
    """The prompt was refused by moderation (and the refusal recorded)."""

    status_code = 422
    code = "moderation"
