"""Reading every input format, gzip included, and bad records reported with file and line."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arena.decontam.records import BadRecordError, InputError, ReadStats, iter_chunks, iter_records
from tests.decontam.helpers import write_jsonl


def test_reads_real_humaneval_gzip(data_dir: Path):
    records = list(iter_records([data_dir / "benchmarks/humaneval/HumanEval.jsonl.gz"], ["prompt"]))
    assert len(records) == 164
    assert "def has_close_elements" in records[0].text
    assert records[0].doc_id.endswith("HumanEval.jsonl.gz:1")


def test_reads_real_mmlu_csv_with_several_fields_joined(data_dir: Path):
    path = data_dir / "benchmarks/mmlu/test_official_14042_mirror/abstract_algebra_test.csv"
    records = list(iter_records([path], ["question", "choice0", "choice1", "choice2", "choice3"]))
    assert len(records) == 100
    assert records[0].text.splitlines() == [
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.", "0", "4", "2", "6"
    ]
    assert records[0].line == 2  # line 1 is the header


def test_reads_real_json_array_with_element_lines(data_dir: Path):
    records = list(iter_records([data_dir / "corpora/codealpaca/code_alpaca_2k.json"], ["instruction", "input"]))
    assert len(records) == 2017
    assert records[0].line == 2 and records[1].line == 7  # each element's opening line in the file
    assert records[0].text.startswith("What are the distinct values from the given list?")


def test_reads_parquet_and_a_directory_of_mixed_files(tmp_path: Path):
    pq.write_table(pa.table({"text": ["alpha beta", "gamma delta"], "n": [1, 2]}), tmp_path / "a.parquet")
    write_jsonl(tmp_path / "b.jsonl", [{"text": "epsilon"}])
    with open(tmp_path / "b.jsonl", "rb") as src, gzip.open(tmp_path / "c.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (tmp_path / "notes.txt").write_text("ignored")
    records = list(iter_records([tmp_path], ["text"]))
    assert [r.text for r in records] == ["alpha beta", "gamma delta", "epsilon", "epsilon"]
    assert records[1].doc_id.endswith("a.parquet:2")


def test_bad_records_are_skipped_with_file_and_line(tmp_path: Path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "fine one"}\n{"text": broken\n\n{"other": 1}\n{"text": "fine two"}\n', encoding="utf-8")
    stats = ReadStats()
    records = list(iter_records([path], ["text"], stats=stats))
    assert [r.text for r in records] == ["fine one", "fine two"]
    assert records[1].line == 5
    assert len(stats.skipped) == 2
    assert stats.skipped[0].startswith(f"{path}:2: invalid JSON")
    assert stats.skipped[1].startswith(f"{path}:4: field 'text' is missing")


def test_bad_record_is_fatal_when_asked(tmp_path: Path):
    path = tmp_path / "corpus.csv"
    path.write_text('text,id\n"ok",1\n"too",many,columns\n', encoding="utf-8")
    with pytest.raises(BadRecordError, match=rf"{path}:3: expected 2 columns"):
        list(iter_records([path], ["text"], on_error="fail"))


def test_unknown_paths_and_formats_are_refused(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        list(iter_records([tmp_path / "missing.jsonl"], ["text"]))
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(InputError, match="unsupported format"):
        list(iter_records([tmp_path / "x.xml"], ["text"]))


def test_chunks_are_bounded_and_complete(tmp_path: Path):
    write_jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i}"} for i in range(25)])
    chunks = list(iter_chunks(iter_records([tmp_path / "c.jsonl"], ["text"]), 10))
    assert [len(c) for c in chunks] == [10, 10, 5]
