"""What a release may contain and how its identifiers are anonymised.

*Anonymous ids.*  Every identifier that leaves the database (conversation, battle and visitor
ids) is replaced by a keyed hash, ``BLAKE2b(kind + ":" + id, key=release_key)``, 128 bits as
32 hex characters.
The release key is rotated per release: by default it is derived from the deployment's secret
and the release name (``HMAC(secret_key, "arena-export-release:" + release)``), so two releases
with different names cannot be joined on visitor ids, nobody without the secret can link a
released id to the database, and an interrupted export resumes with the same key without
storing it anywhere.  ``ARENA_EXPORT_RELEASE_KEY`` / ``--release-key`` sets it explicitly.

*Release policy (license filter).*  A model's outputs are released only if the model's registry
entry (mirrored in the ``models`` table) allows it: its tags contain ``release-ok``, or its
license is one of :data:`DEFAULT_ALLOWED_LICENSES` (permissive open licenses) and its tags do
not contain ``no-release``.  Proprietary models therefore need an explicit ``release-ok`` tag
once their terms have been checked.  ``--license-allow`` replaces the license list.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

RELEASE_OK_TAG = "release-ok"
NO_RELEASE_TAG = "no-release"
DEFAULT_ALLOWED_LICENSES: tuple[str, ...] = (
    "Apache-2.0",
    "MIT",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "CC0-1.0",
    "CC-BY-4.0",
    "CC-BY-SA-4.0",
)
INSECURE_DEFAULT_SECRET = "dev-insecure-secret-change-me"


class ExportError(RuntimeError):
    """The export cannot go on as asked; the message says why and what to do."""


def derive_release_key(secret_key: str, release: str) -> bytes:
    """The per-release key for the id hashes, derived from the deployment secret and the release name."""
    if not release.strip():
        raise ExportError("the release name must not be empty")
    return hmac.new(secret_key.encode(), f"arena-export-release:{release}".encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class Anonymizer:
    """Keyed, per-release pseudonyms for database identifiers."""

    key: bytes

    def pseudonym(self, kind: str, value: str | None) -> str | None:
        """Keyed BLAKE2b (a MAC in its own right, and ~10x faster than HMAC-SHA256 here)."""
        if value is None:
            return None
        return hashlib.blake2b(f"{kind}:{value}".encode(), key=self._mac_key, digest_size=16).hexdigest()

    @property
    def _mac_key(self) -> bytes:
        return hashlib.sha256(self.key).digest() if len(self.key) > 64 else self.key

    def fingerprint(self) -> str:
        """A value that changes with the key but reveals nothing about it (checked on resume)."""
        return hmac.new(self.key, b"arena-export-key-fingerprint", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class ReleasePolicy:
    """Which models' outputs a release may contain (see the module docstring)."""

    allowed_licenses: tuple[str, ...] = DEFAULT_ALLOWED_LICENSES
    enforce: bool = True

    def allows(self, license_name: str, tags: Iterable[str]) -> bool:
        if not self.enforce:
            return True
        tag_set = {str(tag).lower() for tag in tags or ()}
        if RELEASE_OK_TAG in tag_set:
            return True
        if NO_RELEASE_TAG in tag_set:
            return False
        allowed = {name.lower() for name in self.allowed_licenses}
        return license_name.strip().lower() in allowed

    def describe(self) -> str:
        if not self.enforce:
            return "no license filter (all models)"
        return (
            f"models tagged `{RELEASE_OK_TAG}`, or licensed {', '.join(self.allowed_licenses)} "
            f"and not tagged `{NO_RELEASE_TAG}`"
        )


@dataclass(frozen=True)
class ExportFilters:
    """Row filters: creation date range (UTC, ``until`` inclusive), models, minimum user turns."""

    since: date | None = None
    until: date | None = None
    models: tuple[str, ...] = field(default_factory=tuple)
    min_turns: int = 1

    def __post_init__(self) -> None:
        if self.min_turns < 0:
            raise ExportError(f"--min-turns must be >= 0, got {self.min_turns}")
        if self.since and self.until and self.since > self.until:
            raise ExportError(f"--since {self.since} is after --until {self.until}")

    @property
    def start(self) -> datetime | None:
        return datetime(self.since.year, self.since.month, self.since.day, tzinfo=UTC) if self.since else None

    @property
    def end(self) -> datetime | None:
        """Exclusive upper bound: midnight after ``until``."""
        if not self.until:
            return None
        return datetime(self.until.year, self.until.month, self.until.day, tzinfo=UTC) + timedelta(days=1)


def releasable_models(
    models: Sequence[tuple[str, str, Iterable[str]]], policy: ReleasePolicy, wanted: Sequence[str] = ()
) -> list[str]:
    """Names of the ``(name, license, tags)`` models that the policy and ``--model`` filter allow."""
    known = {name for name, _, _ in models}
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise ExportError(f"--model names unknown model(s): {', '.join(unknown)}")
    return sorted(
        name
        for name, license_name, tags in models
        if policy.allows(license_name, tags) and (not wanted or name in wanted)
    )


def coarsen(moment: datetime, granularity: str) -> datetime:
    """The timestamp cut to the hour or the day (UTC), so visits cannot be timed precisely."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    if granularity == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    raise ExportError(f"time granularity must be 'day' or 'hour', got {granularity!r}")
