"""Fixtures for arena-judge tests: the shared MT-bench data and a local endpoint that plays
three models and the judge deterministically, over real HTTP.

The models answer ``"<MODEL> answers question <id> turn <n>."`` padded to a model-specific
length. The judge grades alpha 8, gamma 6 and beta 4 and prefers alpha > gamma > beta in
pairwise prompts, except for gamma-vs-beta where it always picks the first position
(a position bias that the swap turns into ties). Some judge calls misbehave on purpose:

* question 82, beta, single: first reply has no verdict; the format reminder fixes it;
* question 92, beta, single: the judge refuses every time (unparseable) unless the request
  constrains it with ``guided_choice``;
* question 121, alpha, single, turn 1: the first request is rate limited (429);
* question 81, alpha, answer turn 1: the first request hangs longer than the client timeout.

A second judge, ``judge-fair``, has no position bias: gamma beats beta in both orders.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.environment import SHARED_DATA, unavailable
from tests.fake_openai import ChatRequest, FakeOpenAI, Reply

MODELS = ("alpha", "beta", "gamma")
SCORES = {"ALPHA": 8, "GAMMA": 6, "BETA": 4}
PADDING = {"alpha": 30, "beta": 5, "gamma": 60}
REFUSAL = "I'm sorry, but I can't help with evaluating this."
ANSWER_PATTERN = re.compile(r"([A-Z]+) answers question (\d+) turn (\d+)")


@pytest.fixture(autouse=True)
def no_default_arena_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point ARENA_DATABASE_URL at a database that does not exist, so no test writes MT-bench
    scores into a real arena database by default; tests that want one pass --database-url."""
    from arena.config import get_settings

    monkeypatch.setenv("ARENA_DATABASE_URL", f"sqlite:///{tmp_path / 'no-arena-here.db'}")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def mt_bench_dir() -> Path:
    folder = SHARED_DATA / "mt_bench"
    if not (folder / "question.jsonl").is_file():
        unavailable(f"MT-bench test data not found at {folder} (set ARENA_SHARED_DATA)")
    return folder


@pytest.fixture(scope="session")
def small_questions(mt_bench_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two questions of every category (16), as a question file of the MT-bench shape."""
    per_category: dict[str, int] = {}
    lines = []
    for line in (mt_bench_dir / "question.jsonl").read_text().splitlines():
        record = json.loads(line)
        if per_category.get(record["category"], 0) < 2:
            per_category[record["category"]] = per_category.get(record["category"], 0) + 1
            lines.append(line)
    path = tmp_path_factory.mktemp("questions") / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


class Scenario:
    """The deterministic behaviour of the models and the judge, with call bookkeeping."""

    def __init__(self, question_ids: dict[str, str]) -> None:
        self.question_ids = question_ids
        self.hung_once: set[tuple[str, str]] = set()
        self.rate_limited_once = False
        self.lock = threading.Lock()

    def __call__(self, request: ChatRequest) -> Reply | str:
        if request.model.startswith("judge"):
            return self.judge(request)
        return self.answer(request)

    def answer(self, request: ChatRequest) -> Reply | str:
        user_turns = [m["content"] for m in request.messages if m["role"] == "user"]
        turn = len(user_turns)
        question_id = self.question_ids[user_turns[0]]
        if request.model == "alpha" and question_id == "81" and turn == 1:
            with self.lock:
                first = ("alpha", question_id) not in self.hung_once
                self.hung_once.add(("alpha", question_id))
            if first:
                return Reply(text="too late", delay_s=1.5)
        text = f"{request.model.upper()} answers question {question_id} turn {turn}."
        return text + " more" * PADDING[request.model]

    def judge(self, request: ChatRequest) -> Reply | str:
        content = request.messages[1]["content"]
        reminded = len(request.messages) > 2
        guided = request.body.get("guided_choice")
        pairwise = "Assistant B" in content
        first, second = _split_answers(content) if pairwise else (content, "")
        model_a = _marker(first)
        question_id = ANSWER_PATTERN.search(first).group(2)  # type: ignore[union-attr]
        if not pairwise:
            if model_a == "ALPHA" and question_id == "121" and "turn 2" not in content:
                with self.lock:
                    first, self.rate_limited_once = not self.rate_limited_once, True
                if first:
                    return Reply(status=429, error_message="slow down", headers={"retry-after-ms": "10"})
            if model_a == "BETA" and question_id == "92":
                if guided:
                    return guided[3]  # constrained decoding can only produce a valid choice
                return REFUSAL
            if model_a == "BETA" and question_id == "82" and not reminded:
                return "The answer is fine but I will not say how fine."
            return f"Short explanation. Rating: [[{SCORES[model_a]}]]"
        model_b = _marker(second)
        if {model_a, model_b} == {"GAMMA", "BETA"} and request.model == "judge":
            return "Position bias at work. [[A]]"
        better = "A" if SCORES[model_a] > SCORES[model_b] else "B"
        return f"Comparing both answers. [[{better}]]"


def _marker(text: str) -> str:
    match = ANSWER_PATTERN.search(text)
    assert match, text
    return match.group(1)


def _split_answers(content: str) -> tuple[str, str]:
    for separator in (
        "[The Start of Assistant B's Answer]",
        "<|The Start of Assistant B's Conversation with User|>",
    ):
        if separator in content:
            first, second = content.split(separator, 1)
            return first, second
    raise AssertionError("not a pairwise prompt")


def question_ids(mt_bench_dir: Path) -> dict[str, str]:
    """First-turn text -> question id, so the fake models know which question they answer."""
    records = [json.loads(line) for line in (mt_bench_dir / "question.jsonl").read_text().splitlines()]
    return {record["turns"][0]: str(record["question_id"]) for record in records}


@pytest.fixture
def server(mt_bench_dir: Path) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(Scenario(question_ids(mt_bench_dir)), models=[*MODELS, "judge"]) as fake:
        yield fake


def write_registry(path: Path, base_url: str) -> Path:
    entries = [
        f'[[models]]\nname = "{name}"\nbase_url = "{base_url}"\nmodel_id = "{model_id}"\nmax_tokens = 256\n'
        for name, model_id in (
            ("alpha", "alpha"),
            ("beta", "beta"),
            ("gamma", "gamma"),
            ("judge-x", "judge"),
            ("judge-fair", "judge-fair"),
        )
    ]
    path.write_text("\n".join(entries))
    return path


@pytest.fixture
def registry_file(server: FakeOpenAI, tmp_path: Path) -> Path:
    return write_registry(tmp_path / "models.toml", server.base_url)


def make_run_args(registry: Path, mt_bench_dir: Path, questions: Path, out_dir: Path) -> list[str]:
    """CLI options for a run on the small question set against the fake endpoint."""
    return [
        "--models-file", str(registry), "--data-dir", str(mt_bench_dir),
        "--questions", str(questions), "--out-dir", str(out_dir), "--backoff", "0.01",
    ]  # fmt: skip


@pytest.fixture
def run_args(registry_file: Path, mt_bench_dir: Path, small_questions: Path, tmp_path: Path) -> list[str]:
    return make_run_args(registry_file, mt_bench_dir, small_questions, tmp_path / "run")


@pytest.fixture(scope="session")
def answers_dir(mt_bench_dir: Path, small_questions: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha, beta and gamma's answers to the small question set, generated once per session."""
    from tests.judge.cli_helpers import generate

    folder = tmp_path_factory.mktemp("answers")
    with FakeOpenAI(Scenario(question_ids(mt_bench_dir)), models=list(MODELS)) as endpoint:
        registry = write_registry(folder / "models.toml", endpoint.base_url)
        generate(make_run_args(registry, mt_bench_dir, small_questions, folder / "run"))
    return folder / "run" / "model_answer"


@pytest.fixture
def answered_args(run_args: list[str], answers_dir: Path) -> list[str]:
    """``run_args`` whose out-dir already holds the three models' answers."""
    out_dir = Path(run_args[run_args.index("--out-dir") + 1])
    shutil.copytree(answers_dir, out_dir / "model_answer")
    return run_args
