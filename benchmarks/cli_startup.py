"""Start-up time of the ``arena`` and ``arena-serve`` commands: every call pays it, ``--help`` included.

Runs each command ``--repeat`` times in a fresh interpreter (the venv's console script) and
reports the median wall time, next to the cumulative import time of ``arena.cli`` from
``python -X importtime``; ``--baseline DIR`` measures another checkout of the repository the
same way (put first on ``PYTHONPATH``), for a before/after. Prints a table and writes
benchmarks/results/cli_startup.json.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/cli_startup.py --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import write_result  # noqa: E402

COMMANDS = (["arena", "--help"], ["arena", "export", "conversations", "--help"],
            ["arena", "leaderboard", "show", "--help"], ["arena-serve", "--help"])


def environment(tree: Path | None) -> dict[str, str]:
    """This process's environment, with ``tree`` (a checkout) first on the import path."""
    if tree is None:
        return dict(os.environ)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}


def median_wall_s(argv: list[str], repeat: int, tree: Path | None) -> float:
    """Median wall time of ``<script> <args>`` (the venv's console script) over ``repeat`` runs (each must exit 0)."""
    script = Path(sys.executable).with_name(argv[0])
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([str(script), *argv[1:]], check=True, capture_output=True, env=environment(tree))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_time_s(tree: Path | None) -> float:
    """Cumulative import time of ``arena.cli`` as ``-X importtime`` reports it."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import arena.cli"],
        check=True, capture_output=True, text=True, env=environment(tree), cwd=tree or REPO_ROOT,
    )  # fmt: skip  (cwd: ``-c`` puts the working directory first on sys.path)
    line = next(line for line in run.stderr.splitlines() if line.rstrip().endswith("| arena.cli"))
    return int(line.split("|")[1]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--baseline", type=Path, help="another checkout to measure the same way")
    args = parser.parse_args()
    trees = {"this tree": None, **({f"baseline {args.baseline}": args.baseline} if args.baseline else {})}
    results = {
        label: {
            "median_wall_s": {" ".join(argv): median_wall_s(argv, args.repeat, tree) for argv in COMMANDS},
            "import_arena_cli_s": import_time_s(tree),
            "commit": subprocess.run(
                ["git", "-C", str(tree or REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
        }
        for label, tree in trees.items()
    }
    print(f"{'command':<36}" + "".join(f" {label[:24]:>24}" for label in results))
    for argv in COMMANDS:
        command = " ".join(argv)
        print(f"{command:<36}" + "".join(f" {r['median_wall_s'][command]:>22.3f} s" for r in results.values()))
    print(f"{'import arena.cli (-X importtime)':<36}" + "".join(f" {r['import_arena_cli_s']:>22.3f} s" for r in results.values()))
    load = os.getloadavg()
    print(f"load average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    path = write_result("cli_startup", {"repeat": args.repeat, "trees": results, "load_average": load},
                        packages=("typer", "rich", "sqlalchemy"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
