"""A judge run killed mid-way (SIGKILL, in a real subprocess) resumes without re-judging
anything it had stored and without losing anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from arena.judge.judging import open_judgments
from tests.fake_openai import ChatRequest, FakeOpenAI, Reply
from tests.judge.cli_helpers import invoke, out_dir_of
from tests.judge.conftest import ANSWER_PATTERN

REPO_ROOT = Path(__file__).resolve().parents[2]


def identity(request: ChatRequest) -> tuple[str, int, str]:
    """(question id, turn, model) of a single-grading judge request, read from its answers."""
    found = ANSWER_PATTERN.findall(request.messages[1]["content"])
    model, question_id, _ = found[0]
    return question_id, max(int(turn) for _, _, turn in found), model.lower()


def slowly(responder):  # type: ignore[no-untyped-def]
    """The same answers, each 50 ms late, so that the run is still going when it is killed."""

    def respond(request: ChatRequest) -> Reply:
        reply = responder(request)
        reply = Reply(text=reply) if isinstance(reply, str) else reply
        reply.delay_s = max(reply.delay_s, 0.05)
        return reply

    return respond


def stored_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_killed_judge_run_resumes_without_rejudging(server: FakeOpenAI, answered_args: list[str]) -> None:
    run_args = answered_args
    out_dir = out_dir_of(run_args)
    judgments = out_dir / "judgments.jsonl"
    fast = server.responder
    server.responder = slowly(fast)
    server.reset()
    command = [
        sys.executable,
        "-m",
        "arena.judge",
        "mt-bench",
        "judge",
        "--judge",
        "judge-x",
        "--concurrency",
        "2",
    ]
    process = subprocess.Popen(
        [*command, *run_args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while stored_lines(judgments) < 20 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert process.returncode != 0, "the run finished before it could be killed"

    before = {(str(r["question_id"]), r["turn"], r["models"][0]) for r in open_judgments(out_dir).values()}
    assert 20 <= len(before) < 96

    server.responder = fast
    server.reset()
    invoke("judge", "--judge", "judge-x", *run_args)
    asked_again = {identity(r) for r in server.calls("judge") if len(r.messages) == 2}
    assert not asked_again & before, "a stored judgment was judged again"
    assert len(asked_again) == 96 - len(before)

    stats = json.loads((out_dir / "results" / "single__judge-x.json").read_text())["run"]["stats"]
    assert stats["cached"] == len(before) and stats["judged"] == 96 - len(before)
    keys = [json.loads(line)["key"] for line in judgments.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 96
