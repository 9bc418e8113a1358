"""Whole scans on real slices: the stages together, the judge over real HTTP, caching and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arena.decontam import scanner as scanner_module
from arena.decontam.pipeline import JudgeSettings, ResumeError, ScanOptions, run_scan
from arena.decontam.scanner import StageConfig
from tests.decontam.fake_judge import FakeJudgeServer
from tests.decontam.helpers import read_texts, write_jsonl

N_ITEMS = 30


@pytest.fixture(scope="module")
def case(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, embedder) -> dict:
    """30 GSM8K questions; a corpus with 8 of them rephrased, one copied in a long page, and look-alikes."""
    root = tmp_path_factory.mktemp("pipeline")
    questions = read_texts(data_dir / "benchmarks/gsm8k/test.jsonl", 120, field="question")
    rephrases = read_texts(data_dir / "llm-decontaminator/data/rephrase/rephrase_gsm8k.jsonl", 120)
    alpaca = json.loads((data_dir / "corpora/codealpaca/code_alpaca_2k.json").read_text(encoding="utf-8"))
    corpus = [{"text": rephrases[i]} for i in range(8)]
    corpus.append({"text": f"Homework sheet. {' '.join(questions[60:70])} {questions[20]} Good luck!"})
    corpus += [{"text": rephrases[i]} for i in range(100, 110)]  # same kind of problem, not in the benchmark
    corpus += [{"text": row["instruction"]} for row in alpaca[:20]]
    benchmark = write_jsonl(root / "gsm8k_slice.jsonl", [{"question": q} for q in questions[:N_ITEMS]])
    corpus_path = write_jsonl(root / "corpus.jsonl", corpus)
    aligned = {rephrases[i]: i for i in range(8)}
    index_of = {q: i for i, q in enumerate(questions[:N_ITEMS])}

    def decide(item: str, doc: str) -> bool:
        return aligned.get(doc) is not None and aligned[doc] == index_of.get(item)

    return {"root": root, "benchmark": benchmark, "corpus": corpus_path, "decide": decide, "embedder": embedder}


def _options(case: dict, out: Path, judge: JudgeSettings | None = None, **kwargs) -> ScanOptions:
    return ScanOptions(
        benchmark=[case["benchmark"]], benchmark_fields=["question"], corpus=[case["corpus"]],
        corpus_fields=["text"], out_dir=out, stages=StageConfig(embed_threshold=0.7), judge=judge,
        chunk_size=10, progress=False, embedder=case["embedder"], **kwargs,
    )


def test_scan_with_judge_finds_every_leak_and_clears_look_alikes(case: dict, tmp_path: Path):
    with FakeJudgeServer(case["decide"]) as server:
        judge = JudgeSettings(server.base_url, "oracle-judge", concurrency=4)
        result = run_scan(_options(case, tmp_path / "out", judge))
        first_calls = server.calls
        again = run_scan(_options(case, tmp_path / "out", judge))
        assert server.calls == first_calls  # every answer came from the cache
    summary = result.summary
    contaminated = {m.item_index for m in result.matches if m.verdict == "contaminated"}
    assert contaminated == set(range(8)) | {20}
    assert summary["contaminated_items"] == 9 and summary["contaminated_rate"] == pytest.approx(9 / N_ITEMS)
    copy = next(m for m in result.matches if m.item_index == 20)
    assert copy.decided_by == "ngram" and copy.ngram_ratio == 1.0 and copy.judge_same is None
    rephrased = [m for m in result.matches if m.item_index < 8 and m.verdict == "contaminated"]
    assert {m.item_index for m in rephrased} == set(range(8)) and {m.decided_by for m in rephrased} == {"llm_judge"}
    assert summary["stages"]["llm_judge"]["calls"] == first_calls > 0
    assert again.summary["stages"]["llm_judge"]["cached"] == first_calls
    assert summary["stages_run"] == ["ngram", "anchors", "minhash", "embedding", "llm_judge"]
    assert (tmp_path / "out/report.html").read_text().count('class="match contaminated"') == 9
    lines = (tmp_path / "out/matches.jsonl").read_text().splitlines()
    assert len(lines) == len(result.matches)


def test_without_judge_candidates_stay_suspected(case: dict, tmp_path: Path):
    result = run_scan(_options(case, tmp_path / "out"))
    assert result.summary["contaminated_items"] == 1  # only the verbatim copy is certain without a judge
    assert result.summary["suspected_items"] >= 8
    assert "llm_judge" not in result.summary["stages_run"]


def test_judge_failures_stay_suspected_and_are_retried_on_rerun(case: dict, tmp_path: Path):
    options_stages = StageConfig(ngram=False, minhash=False, embed_threshold=0.7)
    with FakeJudgeServer(case["decide"], fail_first=3) as server:
        judge = JudgeSettings(server.base_url, "oracle-judge", concurrency=1)
        options = _options(case, tmp_path / "out", judge)
        options.stages = options_stages
        first = run_scan(options)
        assert first.summary["stages"]["llm_judge"]["errors"] == 3
        assert sum(1 for m in first.matches if m.judge_error) == 3
        second = run_scan(options)
    judged = second.summary["stages"]["llm_judge"]
    assert judged["errors"] == 0 and judged["calls"] == 3  # only the failed pairs were asked again
    assert {m.item_index for m in second.matches if m.verdict == "contaminated"} >= set(range(8))


def test_interrupted_scan_resumes_without_redoing_finished_chunks(case: dict, tmp_path: Path, monkeypatch):
    stages = StageConfig(embedding=False)
    options = _options(case, tmp_path / "out")
    options.stages = stages
    real_scan = scanner_module.Scanner.scan
    scanned: list[int] = []

    def crash_on_third_chunk(self, index, records):
        if index == 2:
            raise KeyboardInterrupt("simulated Ctrl-C")
        scanned.append(index)
        return real_scan(self, index, records)

    monkeypatch.setattr(scanner_module.Scanner, "scan", crash_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_scan(options)
    assert sorted(p.name for p in (tmp_path / "out/state/chunks").glob("*.json")) == ["000000.json", "000001.json"]

    def record_scan(self, index, records):
        scanned.append(index)
        return real_scan(self, index, records)

    monkeypatch.setattr(scanner_module.Scanner, "scan", record_scan)
    resumed = run_scan(options)
    assert scanned == [0, 1, 2, 3]  # chunks 0 and 1 were not scanned again
    fresh_options = _options(case, tmp_path / "fresh")
    fresh_options.stages = stages
    fresh = run_scan(fresh_options)
    assert [m.to_dict() for m in resumed.matches] == [m.to_dict() for m in fresh.matches]
    assert resumed.summary["corpus_docs"] == 39

    changed = _options(case, tmp_path / "out")
    changed.stages = StageConfig(embedding=False, ngram_n=8)
    with pytest.raises(ResumeError, match="other stages"):
        run_scan(changed)
    manifest = tmp_path / "out/state/manifest.json"  # a state written before chunks carried ngram_gap
    old_format = json.loads(manifest.read_text())
    del old_format["state_format"]
    manifest.write_text(json.dumps(old_format))
    with pytest.raises(ResumeError, match="other state_format"):
        run_scan(options)


def test_process_pool_gives_the_same_matches_as_one_process(case: dict, tmp_path: Path):
    def options(out: str, workers: int) -> ScanOptions:
        chosen = _options(case, tmp_path / out, workers=workers)
        chosen.stages = StageConfig(embedding=False)
        return chosen

    pooled = run_scan(options("pool", 2))
    single = run_scan(options("single", 1))
    assert pooled.summary["chunks"] == 4
    assert [m.to_dict() for m in pooled.matches] == [m.to_dict() for m in single.matches]
