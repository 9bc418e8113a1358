"""Alembic environment: migrates the database named by the arena settings (or -x url=...)."""

from __future__ import annotations

from alembic import context

from arena.config import get_settings
from arena.db.models import Base
from arena.db.session import get_engine

target_metadata = Base.metadata


def _database_url() -> str:
    configured = context.config.attributes.get("database_url") or context.get_x_argument(as_dictionary=True).get("url")
    return configured or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with get_engine(_database_url()).connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
