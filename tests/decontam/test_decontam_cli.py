"""The ``arena-decontam`` command end to end, as a user runs it: scan, --fail-above, filter, bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arena.decontam.cli import normalize_argv
from tests.decontam.fake_judge import FakeJudgeServer
from tests.decontam.helpers import read_texts, write_jsonl

CLI = Path(sys.executable).parent / "arena-decontam"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    command = [str(CLI)] if CLI.exists() else [sys.executable, "-c", "from arena.decontam.cli import app; app()"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_field_flags_bind_to_the_input_before_them():
    argv = ["scan", "--benchmark", "b.jsonl", "--field", "question", "--field", "choices",
            "--corpus", "a.parquet", "b.parquet", "--field", "text", "--out", "r/", "--no-ngram"]
    assert normalize_argv(argv) == [
        "scan", "--benchmark", "b.jsonl", "--benchmark-field", "question", "--benchmark-field", "choices",
        "--corpus", "a.parquet", "--corpus", "b.parquet", "--corpus-field", "text", "--out", "r/", "--no-ngram",
    ]


@pytest.fixture(scope="module")
def files(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A HumanEval benchmark (the real gzip file) and a two-file corpus holding 3 leaks and 20 clean docs."""
    root = tmp_path_factory.mktemp("cli")
    with gzip.open(data_dir / "benchmarks/humaneval/HumanEval.jsonl.gz", "rt") as handle:
        humaneval = [json.loads(line) for line in handle]
    rewritten = read_texts(data_dir / "llm-decontaminator/data/rephrase/humaneval_python.jsonl", 5)
    alpaca = json.loads((data_dir / "corpora/codealpaca/code_alpaca_2k.json").read_text(encoding="utf-8"))
    leaks = [
        {"text": "Solve this:\n" + humaneval[2]["prompt"] + humaneval[2]["canonical_solution"]},
        {"text": rewritten[4]},  # HumanEval/4 rewritten with new names and docstring
        {"text": humaneval[1]["prompt"].replace("    ", "\t") + "# solve it yourself"},
    ]
    corpus_a = write_jsonl(root / "corpus_a.jsonl", leaks + [{"text": r["output"]} for r in alpaca[:10]])
    with gzip.open(root / "corpus_b.jsonl.gz", "wt", encoding="utf-8") as handle:
        for row in alpaca[10:20]:
            handle.write(json.dumps({"text": row["instruction"] + "\n" + row["output"]}) + "\n")
        handle.write('{"text": "unterminated\n')
    leaked = {1, 2, 4}
    prompts = {h["prompt"] + "\n" + h["canonical_solution"]: int(h["task_id"].split("/")[1]) for h in humaneval[:20]}
    leak_texts = {leak["text"]: index for leak, index in zip(leaks, (2, 4, 1), strict=True)}

    def decide(item: str, doc: str) -> bool:
        return prompts.get(item) in leaked and leak_texts.get(doc) == prompts.get(item)

    bench = root / "humaneval10.jsonl"
    write_jsonl(bench, humaneval[:10])
    return {"root": root, "bench": bench, "corpus": [corpus_a, root / "corpus_b.jsonl.gz"], "decide": decide}


def test_scan_fail_above_and_filter_end_to_end(files: dict):
    out = files["root"] / "report"
    with FakeJudgeServer(files["decide"]) as server:
        common = ["scan", "--benchmark", files["bench"], "--field", "prompt", "--field", "canonical_solution",
                  "--corpus", *files["corpus"], "--field", "text", "--out", out, "--embed-threshold", "0.6",
                  "--judge-base-url", server.base_url, "--judge-model", "oracle", "--chunk-size", "8",
                  "--no-progress"]
        passed = run_cli(*common, "--fail-above", "0.5")
        assert passed.returncode == 0, passed.stderr
        failed = run_cli(*common, "--fail-above", "0.1")  # resumed: nothing rescanned, answers cached
        calls = server.calls
    assert failed.returncode == 1 and "FAIL: 30.0% of items contaminated > 10.0%" in failed.stderr
    assert "corpus_b.jsonl.gz:11: invalid JSON" in passed.stderr  # the bad record, named and skipped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["contaminated_items"] == 3 and summary["corpus_docs"] == 23
    assert summary["stages"]["llm_judge"]["calls"] == 0 and summary["stages"]["llm_judge"]["cached"] == calls
    matches = [json.loads(line) for line in (out / "matches.jsonl").read_text().splitlines()]
    contaminated = {(m["item_id"], m["decided_by"]) for m in matches if m["verdict"] == "contaminated"}
    assert {item for item, _ in contaminated} == {"HumanEval/1", "HumanEval/2", "HumanEval/4"}  # their task_id
    assert (out / "report.html").exists()

    clean = files["root"] / "clean.jsonl.gz"
    filtered = run_cli("filter", "--corpus", *files["corpus"], "--field", "text", "--matches", out, "--out", clean)
    assert filtered.returncode == 0, filtered.stderr
    assert json.loads(filtered.stdout.strip().splitlines()[-1])["dropped"] == 3
    with gzip.open(clean, "rt") as handle:
        kept = [json.loads(line)["text"] for line in handle]
    assert len(kept) == 20 and not any("Solve this:" in text for text in kept)


def test_bad_record_is_fatal_with_its_file_and_line_when_asked(files: dict):
    result = run_cli("scan", "--benchmark", files["bench"], "--field", "prompt", "--corpus", *files["corpus"],
                     "--field", "text", "--out", files["root"] / "strict", "--no-embedding", "--no-progress",
                     "--on-bad-record", "fail")
    assert result.returncode == 2
    assert "corpus_b.jsonl.gz:11: invalid JSON" in result.stderr


def test_unknown_field_is_reported_per_record(files: dict):
    result = run_cli("scan", "--benchmark", files["bench"], "--field", "question", "--corpus", *files["corpus"],
                     "--field", "text", "--out", files["root"] / "nofield", "--no-embedding", "--no-progress")
    assert result.returncode == 2
    assert "the benchmark has no items" in result.stderr


def test_judge_named_in_the_model_registry(files: dict, data_dir: Path):
    humaneval = [json.loads(line) for line in files["bench"].read_text().splitlines()]
    partial = " ".join(humaneval[7]["prompt"].split()[:16]) + "\n# and something else entirely"
    corpus = write_jsonl(files["root"] / "partial.jsonl", [{"text": partial}])
    registry = files["root"] / "models.toml"
    with FakeJudgeServer(lambda item, doc: True) as server:
        registry.write_text(f'[[models]]\nname = "judge-x"\nbase_url = "{server.base_url}"\nmodel_id = "oracle"\n')
        result = run_cli("scan", "--benchmark", files["bench"], "--field", "prompt", "--corpus", corpus,
                         "--field", "text", "--out", files["root"] / "registry", "--no-embedding", "--no-progress",
                         "--judge", "judge-x", "--models-file", registry, "--judge-min-probability", "0")
        assert result.returncode == 0, result.stderr
        assert server.calls == 1  # a 16-word partial copy: below the ranker's cut, judged because asked
    matches = [json.loads(line) for line in (files["root"] / "registry/matches.jsonl").read_text().splitlines()]
    assert [(m["item_id"], m["decided_by"], m["judge_same"]) for m in matches] == [("HumanEval/7", "llm_judge", True)]
    unknown = run_cli("scan", "--benchmark", files["bench"], "--field", "prompt", "--corpus", corpus, "--field", "text",
                      "--out", files["root"] / "registry2", "--no-embedding", "--judge", "nope", "--models-file", registry)
    assert unknown.returncode == 2 and "unknown model 'nope'" in unknown.stderr


def test_filter_writes_parquet_without_contaminated_documents(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from arena.decontam.filtering import filter_corpus

    rows = [{"text": "leaked question text", "id": 0}, {"text": "clean", "id": 1}, {"text": "maybe", "id": 2}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "corpus.parquet")
    matches = [{"doc_text": "leaked question text", "verdict": "contaminated"}, {"doc_text": "maybe", "verdict": "suspected"}]
    write_jsonl(tmp_path / "matches.jsonl", matches)
    result = filter_corpus([tmp_path / "corpus.parquet"], ["text"], tmp_path / "matches.jsonl", tmp_path / "clean.parquet")
    assert (result.kept, result.dropped) == (2, 1)
    assert pq.read_table(tmp_path / "clean.parquet").to_pylist() == rows[1:]
    strict = filter_corpus([tmp_path / "corpus.parquet"], ["text"], tmp_path, tmp_path / "strict.parquet",
                           include_suspected=True)
    assert (strict.kept, strict.dropped) == (1, 2)
