"""Helpers to drive `arena-judge mt-bench` in-process with Typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from arena.judge.cli import app

runner = CliRunner()


def invoke(*args: str, expect: int = 0) -> str:
    result = runner.invoke(app, ["mt-bench", *args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


def data_args(run_args: list[str]) -> list[str]:
    """The same options without --models-file and the call knobs (for `show`)."""
    keep = {"--data-dir", "--questions", "--out-dir"}
    return [x for i in range(0, len(run_args), 2) if run_args[i] in keep for x in run_args[i : i + 2]]


def out_dir_of(run_args: list[str]) -> Path:
    return Path(run_args[run_args.index("--out-dir") + 1])


def generate(run_args: list[str]) -> str:
    return invoke(
        "gen-answers",
        "-m",
        "alpha",
        "-m",
        "beta",
        "-m",
        "gamma",
        "--timeout",
        "0.3",
        "--concurrency",
        "4",
        *run_args,
    )
