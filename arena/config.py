"""Settings for the whole arena, read once from the environment (prefix ``ARENA_``).

Tests override settings through the environment and ``get_settings.cache_clear()``,
never by editing module globals.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SECRET_KEY = "dev-insecure-secret-change-me"  # `arena serve` warns loudly while it is used


class Settings(BaseSettings):
    """Every knob of the arena platform, with embedded defaults that work offline."""

    model_config = SettingsConfigDict(env_prefix="ARENA_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{REPO_ROOT / 'data' / 'arena.db'}",
        description="SQLAlchemy URL: sqlite:///path (default) or postgresql+psycopg://user@host/db",
    )
    models_file: Path = Field(default=REPO_ROOT / "data" / "models.toml", description="Model registry (TOML)")
    secret_key: str = Field(
        default=DEFAULT_SECRET_KEY,
        description="Key for visitor-id HMACs and the signed visitor cookie; set a long random value in production",
    )
    host: str = "127.0.0.1"
    port: int = 7860

    # Battle behaviour.
    max_prompt_chars: int = 8000
    max_turns: int = 8
    request_timeout_s: float = 120.0
    provider_max_retries: int = 2
    sampling_policy: str = Field(default="weighted", description="Pair sampling: 'weighted' or 'active'")
    temperature: float = 0.7

    # Moderation: OpenAI's moderation endpoint when a key is set, else the local word list.
    openai_api_key: str | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    moderation_wordlist: Path = Field(default=REPO_ROOT / "data" / "moderation_words.txt")

    # Robustness of turns: live turns store their partial answers and touch their battle every
    # `turn_heartbeat_s`; a streaming battle silent for `stale_turn_s` (its server died) is failed
    # by the reaper, which looks every `reap_interval_s`.  A whole turn ends after `turn_timeout_s`.
    turn_heartbeat_s: float = Field(default=2.0, gt=0)
    stale_turn_s: float = Field(default=30.0, gt=0)
    reap_interval_s: float = Field(default=10.0, gt=0)
    turn_timeout_s: float = Field(default=600.0, gt=0)
    # Answers are kept in memory and their writes retried through database outages this long.
    store_retry_s: float = Field(default=120.0, ge=0)
    # On SIGTERM open streams get this long; then they are stopped, stored and failed.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Threads for database work on the async paths (the event loop never waits on the database).
    db_threads: int = Field(default=32, ge=1)

    # Per-visitor rate limits: at most `rate_limit_turns` turns and `rate_limit_creations` new
    # battles or chats in `rate_limit_window_s` seconds.  In-process unless a Redis URL is set
    # (`redis://127.0.0.1:6379/0`), which several server processes then share.
    rate_limit_turns: int = 30
    rate_limit_creations: int = 30
    rate_limit_window_s: float = 60.0
    rate_limit_redis_url: str | None = None

    # Web server: log each request without the client's address (privacy); off with False.
    access_log: bool = True

    # Leaderboard.
    # Recompute once votes have been quiet for `leaderboard_debounce_s`, and at most
    # `leaderboard_refresh_s` after a vote while votes keep coming (0: never; compute by hand).
    leaderboard_debounce_s: float = 5.0
    leaderboard_refresh_s: float = 60.0
    exclude_anomalous_voters: bool = True

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
