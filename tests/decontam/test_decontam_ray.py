"""The Ray executor on a local one-CPU Ray instance gives the same matches as the local executor."""

from __future__ import annotations

import json
from pathlib import Path

from arena.decontam.pipeline import ScanOptions, run_scan
from arena.decontam.scanner import StageConfig
from tests.decontam.helpers import read_texts, write_jsonl
from tests.environment import unavailable

try:
    import ray
except ImportError:
    unavailable("ray is not installed (extra 'decontam')")


def test_ray_executor_matches_local(data_dir: Path, tmp_path: Path):
    questions = read_texts(data_dir / "benchmarks/gsm8k/test.jsonl", 40, field="question")
    alpaca = json.loads((data_dir / "corpora/codealpaca/code_alpaca_2k.json").read_text(encoding="utf-8"))
    corpus = [{"text": row["instruction"]} for row in alpaca[:30]]
    corpus[7] = {"text": "Copied: " + questions[3]}
    corpus[23] = {"text": questions[30].replace(".", "!").upper()}
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": q} for q in questions])
    corpus_path = write_jsonl(tmp_path / "corpus.jsonl", corpus)

    def options(out: str, executor: str) -> ScanOptions:
        return ScanOptions([bench], ["question"], [corpus_path], ["text"], tmp_path / out,
                           StageConfig(embedding=False), chunk_size=10, executor=executor, progress=False)

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_scan(options("ray", "ray"))
    finally:
        ray.shutdown()
    local = run_scan(options("local", "local"))
    assert on_ray.summary["chunks"] == 3 and on_ray.summary["corpus_docs"] == 30
    assert [m.to_dict() for m in on_ray.matches] == [m.to_dict() for m in local.matches]
    assert {(m.item_index, m.doc_id.rsplit(":", 1)[1]) for m in local.matches if m.verdict == "contaminated"} == {
        (3, "8"), (30, "24")
    }
