"""The HTML report opens in a real browser (Debian chromium through Playwright) and shows the matches."""

from __future__ import annotations

from pathlib import Path

import pytest

from arena.decontam.pipeline import JudgeSettings, ScanOptions, run_scan
from arena.decontam.report import shared_spans
from arena.decontam.scanner import StageConfig
from tests.decontam.fake_judge import FakeJudgeServer
from tests.decontam.helpers import read_texts, write_jsonl


def test_shared_spans_mark_the_common_word_runs():
    left, right = shared_spans("The cat sat on the mat today.", "Yesterday the cat sat on a mat.")
    assert left == [(0, 14)] and right == [(10, 24)]


@pytest.mark.browser
def test_report_renders_in_chromium_and_is_screenshotted(
    request: pytest.FixtureRequest, data_dir: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    questions = read_texts(data_dir / "benchmarks/gsm8k/test.jsonl", 20, field="question")
    corpus = [
        {"text": "Worksheet 3.\n" + questions[2] + "\nShow all steps."},
        {"text": questions[5].replace("$", "USD ").replace(" each ", " every ")},
        {"text": " ".join(questions[9].split()[:14]) + " and then she gave the rest to charity."},
    ]
    bench = write_jsonl(tmp_path / "gsm8k_slice.jsonl", [{"question": q} for q in questions])
    corpus_path = write_jsonl(tmp_path / "corpus.jsonl", corpus)
    with FakeJudgeServer(lambda item, doc: False) as server:  # the 14-word overlap is not a leak
        options = ScanOptions([bench], ["question"], [corpus_path], ["text"], tmp_path / "report",
                              StageConfig(embedding=False, minhash_accept=0.6),
                              judge=JudgeSettings(server.base_url, "oracle"), progress=False)
        result = run_scan(options)
    assert result.summary["contaminated_items"] == 2

    # Only now: sync Playwright keeps an event loop running, and the scan above uses asyncio.run.
    browser = request.getfixturevalue("browser")
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto((tmp_path / "report" / "report.html").as_uri())
    assert page.title() == "Contamination report"
    assert "2 of 20 benchmark items contaminated" in page.locator(".headline").inner_text()
    assert page.locator("section.match.contaminated").count() == 2
    assert page.locator("section.match.contaminated mark").count() >= 2
    screenshot = artifacts_dir / "decontam_report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    assert screenshot.stat().st_size > 10_000
