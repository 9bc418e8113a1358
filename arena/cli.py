"""The ``arena`` command: serve the platform, migrate the database, run the offline demo.

Sub-commands of other parts (``arena export``, ``arena import``, ``arena leaderboard``) are mounted here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import typer

from arena.config import REPO_ROOT, get_settings
from arena.export.cli import app as export_app
from arena.imports.cli import app as import_app
from arena.leaderboard.cli import app as leaderboard_app
from arena.progress import configure_cli_logging

app = typer.Typer(help="Arena: chat with two anonymous models, vote, rank them.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(export_app, name="export", help="Export the public datasets (conversations, battles).")
app.add_typer(leaderboard_app, name="leaderboard")
app.add_typer(import_app, name="import")

logger = logging.getLogger("arena")

DEMO_MODELS = ("demo-llama-tiny", "demo-qwen-tiny", "demo-mistral-tiny")
DEMO_SERVING_PORT = 8100
# The demo models' context window (serving/demo_models.py builds them with it): the page's
# 8,000-character limit fits, so a long prompt never fails both sides.
DEMO_CONTEXT_TOKENS = 16384


def _alembic_config(url: str | None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.attributes["database_url"] = url or get_settings().database_url
    return config


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head", help="Target revision"),
    url: str | None = typer.Option(None, help="Database URL (default: ARENA_DATABASE_URL)"),
) -> None:
    """Create or update the schema to the latest migration."""
    from alembic import command

    command.upgrade(_alembic_config(url), revision)
    typer.echo(f"database at {_redact(url or get_settings().database_url)} is at {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base"),
    url: str | None = typer.Option(None, help="Database URL (default: ARENA_DATABASE_URL)"),
) -> None:
    """Step the schema back (destroys the data of dropped tables)."""
    from alembic import command

    command.downgrade(_alembic_config(url), revision)


@db_app.command("current")
def db_current(url: str | None = typer.Option(None, help="Database URL")) -> None:
    """Print the database's migration revision."""
    from alembic import command

    command.current(_alembic_config(url), verbose=False)


@app.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default: ARENA_HOST or 127.0.0.1)"),
    port: int = typer.Option(None, help="Port (default: ARENA_PORT or 7860)"),
    migrate: bool = typer.Option(True, help="Run database migrations first"),
    announce: str = typer.Option("", hidden=True, help="Extra text printed after the URL once it answers"),
) -> None:
    """Serve the arena page, the leaderboard and the JSON API."""
    from arena.config import DEFAULT_SECRET_KEY
    from arena.providers.registry import RegistryError
    from arena.web.app import create_app

    _configure_logging()
    settings = get_settings()
    if settings.secret_key == DEFAULT_SECRET_KEY:
        logger.warning("!" * 78)
        logger.warning("ARENA_SECRET_KEY is the built-in default: visitor ids and cookies can be forged.")
        logger.warning("Set ARENA_SECRET_KEY to a long random value before serving anyone but yourself.")
        logger.warning("!" * 78)
    if migrate:
        db_upgrade("head", None)
    try:
        app = create_app(settings)
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    host, port = host or settings.host, port or settings.port
    # uvicorn's own access log records client addresses; the app logs requests without them.
    config = {"access_log": False, "timeout_graceful_shutdown": max(1, round(settings.shutdown_grace_s))}
    run_server(app, host, port, f"Arena: http://{host}:{port}{announce}", **config)


def run_server(app: object, host: str, port: int, ready_line: str, **uvicorn_options: object) -> None:
    """Serve ``app`` with uvicorn; print ``ready_line`` once the port accepts connections (not before:
    start-up migrates, loads the registry and asks the endpoints for their context windows)."""
    import asyncio

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info",  # type: ignore[arg-type]
                                           **uvicorn_options))  # type: ignore[arg-type]

    async def serve_and_announce() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            typer.echo(ready_line)
        await serving

    asyncio.run(serve_and_announce())


@app.command()
def demo(
    port: int = typer.Option(7860, help="Arena port"),
    serving_port: int = typer.Option(DEMO_SERVING_PORT, help="Port of the demo model server"),
) -> None:
    """Offline demo: build tiny random-weight models, serve them with our engine, start the arena.

    The models' text is nonsense (random weights); the pipeline is the real one.
    """
    _configure_logging()
    models_dir = REPO_ROOT / "data" / "demo_models"
    build_demo_models(models_dir)
    server = start_demo_model_server(models_dir, serving_port)
    try:
        os.environ.setdefault("ARENA_MODELS_FILE", str(REPO_ROOT / "data" / "models.toml"))
        get_settings.cache_clear()
        serve(host="127.0.0.1", port=port, migrate=True,
              announce=f"  (models served at http://127.0.0.1:{serving_port}/v1)")
    finally:
        server.terminate()
        server.wait(timeout=30)


def build_demo_models(models_dir: Path) -> None:
    """Build the demo checkpoints once (a few seconds); later runs reuse them."""
    missing = [name for name in DEMO_MODELS if _demo_context(models_dir / name) < DEMO_CONTEXT_TOKENS]
    if missing:
        logger.info("building demo models %s in %s", missing, models_dir)
        subprocess.run([sys.executable, "-m", "serving.demo_models", "--out", str(models_dir)], check=True)


def _demo_context(model_dir: Path) -> int:
    """The built checkpoint's context window (0 when not built yet)."""
    config = model_dir / "config.json"
    return int(json.loads(config.read_text()).get("max_position_embeddings", 0)) if config.exists() else 0


def start_demo_model_server(models_dir: Path, port: int, timeout_s: float = 120.0) -> subprocess.Popen[bytes]:
    """Start our OpenAI-compatible engine on the demo models and wait until it answers."""
    import httpx  # here, not at the top: `arena --help` should not pay for it
    command = [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--max-context", str(DEMO_CONTEXT_TOKENS)]
    for name in DEMO_MODELS:
        command += ["--model", f"{name}={models_dir / name}"]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise typer.Exit(f"the demo model server exited with code {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise typer.Exit("the demo model server did not start in time")


def _configure_logging() -> None:
    configure_cli_logging()


def _redact(url: str) -> str:
    """The URL without its password, for printing."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def main() -> None:
    app()


if __name__ == "__main__":
    main()
