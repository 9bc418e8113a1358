"""Judge calls of a full `arena-judge mt-bench` run, with and without the judgment cache.

Runs the real CLI on all 80 MT-bench questions against the local OpenAI-compatible test
server of the judge tests (tests/judge/conftest.py: three deterministic models ``alpha``,
``beta``, ``gamma`` and a judge with a position bias and a few malformed, refused and
rate-limited replies), counting the HTTP requests the judge endpoint receives:

1. single-answer grading, then the same command again (everything cached);
2. all pairs, then again;
3. pairwise against ``beta`` after all pairs (its judgments are shared with step 2).

    python benchmarks/judge_cache.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena.judge.cli import app  # noqa: E402
from benchmarks.common import write_result  # noqa: E402
from tests.environment import SHARED_DATA  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402
from tests.judge.conftest import MODELS, Scenario, question_ids, write_registry  # noqa: E402

STEPS = [
    ("single", ["--mode", "single"]),
    ("single, rerun", ["--mode", "single"]),
    ("pairwise-all", ["--mode", "pairwise-all"]),
    ("pairwise-all, rerun", ["--mode", "pairwise-all"]),
    ("pairwise-baseline (beta) after pairwise-all", ["--mode", "pairwise-baseline", "--baseline", "beta"]),
]


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, ["mt-bench", *args], catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"arena-judge {' '.join(args)} failed ({result.exit_code}):\n{result.output}")
    return result.output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = SHARED_DATA / "mt_bench"
    parser.add_argument("--data-dir", type=Path, default=default_data, help="MT-bench question/prompt files")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(
        Scenario(question_ids(args.data_dir)), models=[*MODELS, "judge"]
    ) as server:
        registry = write_registry(Path(tmp) / "models.toml", server.base_url)
        common = ["--models-file", str(registry), "--data-dir", str(args.data_dir), "--out-dir", str(Path(tmp) / "run"),
                  "--backoff", "0.01"]
        invoke("gen-answers", *[x for m in MODELS for x in ("-m", m)], "--timeout", "0.3", *common)
        for name, mode in STEPS:
            server.reset()
            invoke("judge", "--judge", "judge-x", *mode, *common)
            mode_name = mode[1]
            stem = Path(tmp) / "run" / "results" / f"{mode_name}__judge-x"
            stats = json.loads(stem.with_suffix(".json").read_text())["run"]["stats"]
            rows.append({"run": name, "planned": stats["planned"], "cached": stats["cached"],
                         "judge_calls": stats["judge_calls"], "http_requests": len(server.calls("judge")),
                         "unparseable": stats["unparseable"]})
        scores = json.loads((Path(tmp) / "run" / "results" / "single__judge-x.json").read_text())["models"]

    print("| run | planned | from cache | judge calls | HTTP requests | unparseable |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['run']} | {row['planned']} | {row['cached']} | {row['judge_calls']} | "
              f"{row['http_requests']} | {row['unparseable']} |")
    single = {model: row["score"] for model, row in scores.items()}
    print(f"single-mode scores: {single}")
    path = write_result("judge_cache", {"benchmark": "judge_cache", "questions": 80, "models": list(MODELS),
                                        "runs": rows, "single_scores": single})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
