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
    """Too many requests in the window; ``retry_after_s`` says when the next one is allowed."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RefusedError(ArenaError):
    """The prompt was refused by moderation (and the refusal recorded)."""

    status_code = 422
    code = "moderation"
