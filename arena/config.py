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


class Settings(BaseSettings):
    """Every knob of the arena platform, with embedded defaults that work offline."""

    model_config = SettingsConfigDict(env_prefix="ARENA_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{REPO_ROOT / 'data' / 'arena.db'}",
        description="SQLAlchemy URL: sqlite:///path (default) or postgresql+psycopg://user@host/db",
    )
    models_file: Path = Field(default=REPO_ROOT / "data" / "models.toml", description="Model registry (TOML)")
    secret_key: str = Field(
        default="dev-insecure-secret-change-me",
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

    # Per-visitor rate limit: at most `rate_limit_turns` turns in `rate_limit_window_s` seconds.
    rate_limit_turns: int = 30
    rate_limit_window_s: float = 60.0

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
