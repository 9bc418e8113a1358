"""What the commands print: help with defaults and no heavy imports, logs without library
chatter, the arena's URL only once it answers, and packaging metadata that builds without
deprecation warnings."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT, migrate
from tests.servers import free_port, registry_toml


def test_arena_serve_help_shows_defaults_without_loading_torch() -> None:
    probe = ("import sys, contextlib, io\n"
             "from serving.__main__ import build_parser\n"
             "out = io.StringIO()\n"
             "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
             "    build_parser().parse_args(['--help'])\n"
             "print(out.getvalue()); print('torch loaded:', 'torch' in sys.modules, 'uvicorn loaded:', 'uvicorn' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert "(default: 8100)" in run.stdout and "(default: 32)" in run.stdout and "(default: cpu)" in run.stdout
    assert "(default: None)" not in run.stdout
    assert "torch loaded: False uvicorn loaded: False" in run.stdout


def test_cli_logging_leaves_out_library_info_lines() -> None:
    probe = ("import logging\nfrom arena.progress import configure_cli_logging\nconfigure_cli_logging()\n"
             "logging.getLogger('matplotlib.font_manager').info('generated new fontManager')\n"
             "logging.getLogger('httpx').info('HTTP Request: GET http://x')\n"
             "logging.getLogger('arena.export').info('exporting conversations')\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert "exporting conversations" in run.stderr
    assert "fontManager" not in run.stderr and "HTTP Request" not in run.stderr


def test_arena_serve_prints_its_url_only_once_the_port_answers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    migrate(url)
    registry = tmp_path / "models.toml"
    registry.write_text(registry_toml("http://127.0.0.1:9/v1", ("m-one", "m-two")))
    port = free_port()
    env = {**os.environ, "ARENA_DATABASE_URL": url, "ARENA_MODELS_FILE": str(registry),
           "ARENA_LEADERBOARD_REFRESH_S": "0", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "arena.cli", "serve", "--port", str(port), "--no-migrate"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO_ROOT)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the command prints its first line
        assert line.strip() == f"Arena: http://127.0.0.1:{port}"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["models"] == 2
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_license_is_an_spdx_expression() -> None:
    """The ``{text = ...}`` table is deprecated (PEP 639); setuptools >= 77 reads the string."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_arena_help_loads_neither_sqlalchemy_nor_httpx() -> None:
    """What `arena --help` imports is what every call pays (benchmarks/cli_startup.py measures it)."""
    from arena.db.models import OVERALL_CATEGORY
    from arena.leaderboard import cli as leaderboard_cli

    assert leaderboard_cli.OVERALL_CATEGORY == OVERALL_CATEGORY
    probe = "import sys, arena.cli; print(sorted(m for m in ('sqlalchemy', 'httpx', 'pandas') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert run.stdout.strip() == "[]"


def test_arena_serve_lists_the_schedulers_policies() -> None:
    from serving.__main__ import SCHEDULE_POLICIES
    from serving.scheduler import SCHEDULE_POLICIES as SCHEDULER_POLICIES

    assert SCHEDULE_POLICIES == SCHEDULER_POLICIES
