"""Input handling: header-less CSV with --columns, item ids from the benchmark's id field, and one clear
line naming the file for a truncated or non-gzip .gz, a non-UTF-8 file, garbage Parquet and a damaged state."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from arena.decontam.records import InputError, iter_records
from tests.decontam.helpers import write_jsonl
from tests.decontam.test_decontam_cli import run_cli

MMLU_ORIGINAL = "llm-decontaminator/data/rephrase/abstract_algebra_test.csv"  # header-less, as MMLU ships


def test_headerless_csv_reads_with_columns(data_dir: Path):
    records = list(iter_records([data_dir / MMLU_ORIGINAL], ["question", "A"], columns=["question", "A", "B", "C", "D", "answer"]))
    assert len(records) == 100 and records[0].line == 1  # the first line is an item, not a header
    assert records[0].text.splitlines() == [
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.", "0"
    ]


def test_headerless_csv_without_columns_says_what_to_do(data_dir: Path):
    with pytest.raises(InputError, match=r"abstract_algebra_test.csv: the first line has none of the fields.*--columns"):
        list(iter_records([data_dir / MMLU_ORIGINAL], ["question"]))


def test_item_ids_come_from_the_benchmarks_own_id_field(data_dir: Path):
    path = data_dir / "benchmarks/humaneval/HumanEval.jsonl.gz"
    auto = list(iter_records([path], ["prompt"], id_field="auto"))
    assert [r.doc_id for r in auto[:2]] == ["HumanEval/0", "HumanEval/1"]
    named = list(iter_records([path], ["prompt"], id_field="entry_point"))
    assert named[0].doc_id == "has_close_elements"
    assert list(iter_records([path], ["prompt"]))[0].doc_id.endswith("HumanEval.jsonl.gz:1")  # no id field: file:line


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "bench.jsonl", [{"text": f"question number {i} about ducks and eggs"} for i in range(3)])


def _scan(bench: Path, corpus: Path, out: Path, *extra: str):
    return run_cli("scan", "--benchmark", bench, "--field", "text", "--corpus", corpus, "--field", "text",
                   "--out", out, "--no-embedding", "--no-progress", *extra)


def _one_error_line(result, path: Path, reason: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0] and reason in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "Aborted" not in result.stderr


def test_truncated_gzip_is_one_line_naming_the_file(bench: Path, tmp_path: Path, data_dir: Path):
    whole = (data_dir / "benchmarks/humaneval/HumanEval.jsonl.gz").read_bytes()
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    _one_error_line(_scan(bench, truncated, tmp_path / "out"), truncated, "truncated or damaged gzip")


def test_plain_text_named_gz_is_one_line_naming_the_file(bench: Path, tmp_path: Path):
    fake = tmp_path / "plain.jsonl.gz"
    fake.write_text('{"text": "not compressed"}\n')
    _one_error_line(_scan(bench, fake, tmp_path / "out"), fake, "not a gzip file")


def test_non_utf8_file_is_one_line_naming_the_file(bench: Path, tmp_path: Path):
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"text": "caf\u00e9 cr\u00e8me"}\n'.encode("latin-1"))
    _one_error_line(_scan(bench, latin, tmp_path / "out"), latin, "not UTF-8")


def test_garbage_parquet_is_one_line_naming_the_file(bench: Path, tmp_path: Path):
    garbage = tmp_path / "broken.parquet"
    garbage.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    _one_error_line(_scan(bench, garbage, tmp_path / "out"), garbage, "not a readable Parquet file")


def test_damaged_state_file_is_one_line_with_the_way_out(bench: Path, tmp_path: Path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "question number 1 about ducks and eggs"}])
    out = tmp_path / "out"
    assert _scan(bench, corpus, out).returncode == 0
    chunk = next((out / "state/chunks").glob("*.json"))
    chunk.write_text(chunk.read_text()[:20])
    result = _scan(bench, corpus, out)
    _one_error_line(result, chunk, "damaged state file")
    assert "--restart" in result.stderr
    assert _scan(bench, corpus, out, "--restart").returncode == 0  # the way out works
    manifest = out / "state/manifest.json"
    manifest.write_text("{not json")
    _one_error_line(_scan(bench, corpus, out), manifest, "damaged state file")


def test_cli_columns_bind_to_the_benchmark(data_dir: Path, tmp_path: Path):
    bench = tmp_path / "mmlu"
    bench.mkdir()
    shutil.copy(data_dir / MMLU_ORIGINAL, bench / "abstract_algebra_test.csv")
    first = (data_dir / MMLU_ORIGINAL).read_text(encoding="utf-8").splitlines()[0]
    question = first.split('",')[0].strip('"')
    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": f"Exercise 3. {question}\n0\n4\n2\n6"}) + "\n")
    result = run_cli("scan", "--benchmark", bench, "--columns", "question,A,B,C,D,answer", "--field", "question",
                     "--field", "A", "--field", "B", "--field", "C", "--field", "D", "--corpus", corpus,
                     "--field", "text", "--out", tmp_path / "out", "--no-embedding", "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["items"] == 100 and summary["contaminated_items"] == 1
