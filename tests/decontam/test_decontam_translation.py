"""Translated leaks, boilerplate stems, perturbed look-alikes, the candidate ranker and ranked judge rounds.

The translations are our own (tests/decontam/data/gsm8k_translations.jsonl: six GSM8K test questions written
by hand in eight languages); everything else is the real shared data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from arena.decontam.anchors import AnchorIndex, anchors, numbers_kept
from arena.decontam.ngram import NgramIndex
from arena.decontam.pipeline import JudgeSettings, ScanOptions, run_scan, set_item_context
from arena.decontam.ranking import DEFAULT_WEIGHTS_PATH, Ranker, fit_ranker
from arena.decontam.records import Record
from arena.decontam.scanner import BenchmarkPayload, PairEvidence, Scanner, StageConfig
from arena.decontam.text import tokens
from tests.decontam.fake_judge import FakeJudgeServer
from tests.decontam.helpers import read_texts, write_jsonl

TRANSLATIONS = Path(__file__).parent / "data" / "gsm8k_translations.jsonl"


def _translations() -> list[dict]:
    return [json.loads(line) for line in TRANSLATIONS.read_text(encoding="utf-8").splitlines()]


def _gsm8k(data_dir: Path) -> list[str]:
    return read_texts(data_dir / "benchmarks/gsm8k/test.jsonl", field="question")


def test_anchors_read_numbers_in_any_script_and_identifiers_in_any_style():
    assert anchors("পিয়ারসন ২৭৮ পয়েন্ট") == anchors("Pierson 278 points") == {"#278": 1}
    assert set(anchors("1,000 and 3,5 and ３")) == {"#1000", "#3.5", "#3"}
    assert set(anchors("def max_fill(grid): pass")) == set(anchors("function maxFill(grid) {}")) == {"@maxfill"}
    assert numbers_kept("Janet has 3 ducks and 16 eggs", "Janet hat 16 Eier und 3 Enten")
    assert not numbers_kept("Janet has 3 ducks and 16 eggs", "Janet has 4 ducks and 16 eggs")


def test_anchor_stage_finds_translated_math_problems_that_keep_their_numbers(data_dir: Path):
    questions = _gsm8k(data_dir)
    index = AnchorIndex(questions)
    rows = _translations()
    found = [row for row in rows if row["gsm8k_index"] in index.match(row["text"])]
    # Rare numbers carry the signal in every language: 800 (278, 11) and 1100 (30, 2, 15, 5). The others keep
    # only numbers that hundreds of GSM8K items share (400: 8, 2, 3) or write them as words (1000, 1200): the
    # multilingual embedding has to find those.
    assert {row["gsm8k_index"] for row in found} == {800, 1100} and len(found) == 16
    rephrased = [text.split("\nAnswer:")[0] for text in
                 read_texts(data_dir / "llm-decontaminator/data/rephrase/rephrase_gsm8k.jsonl", 40)]
    hits = [index.match(text) for text in rephrased]
    assert sum(i in hit for i, hit in enumerate(hits)) >= 25  # measured: 27 of 40 English rephrases
    assert sum(len(set(hit) - {i}) for i, hit in enumerate(hits)) <= 40  # measured: 32 other items among 1,319


@pytest.fixture(scope="module")
def e5():
    from arena.decontam.embedding import Embedder

    return Embedder("multilingual-e5-small", batch_size=16, threads=1)


def test_multilingual_embedder_puts_each_translation_next_to_its_original(data_dir: Path, e5):
    from arena.decontam.embedding import EmbeddingIndex, default_threshold

    questions = _gsm8k(data_dir)
    rows = _translations()
    wanted = sorted({row["gsm8k_index"] for row in rows})
    items = questions[:40] + [questions[i] for i in wanted]
    position = {index: 40 + n for n, index in enumerate(wanted)}
    index = EmbeddingIndex(e5.encode(items), e5, threshold=default_threshold("multilingual-e5-small"), min_margin=1.0)
    hits = index.match([row["text"] for row in rows])
    found = [row for row, hit in zip(rows, hits, strict=True) if position[row["gsm8k_index"]] in hit]
    assert len(found) >= 0.9 * len(rows)
    languages = {row["language"] for row in found}
    assert languages == {"fr", "de", "es", "it", "pt", "ru", "ja", "zh"}


def test_boilerplate_stems_make_no_candidates_but_copies_still_do(data_dir: Path):
    import csv

    path = data_dir / "benchmarks/mmlu/test_official_14042_mirror/moral_scenarios_test.csv"
    with open(path, encoding="utf-8", newline="") as handle:
        questions = [row["question"] for row in csv.DictReader(handle)]
    items, others = questions[:50], questions[50:80]
    index = NgramIndex([tokens(q) for q in items], 13, max_item_df=3)
    assert index.boilerplate_grams > 0
    shared = [index.match(tokens(other)) for other in others]  # same template, different scenarios
    # MMLU reuses a few scenario sentences across questions: those few pairs are real partial overlaps, far
    # from a copy; the stem itself pairs nothing.
    assert sum(1 for hit in shared if hit) <= 3
    assert all(ratio < 0.5 for hit in shared for _, ratio in hit.values())
    assert 7 in index.match(tokens("Homework: " + items[7]))
    plain = NgramIndex([tokens(q) for q in items], 13, max_item_df=len(items))
    assert sum(1 for other in others if plain.match(tokens(other))) == len(others)  # the old behaviour


def test_copies_with_changed_numbers_go_to_the_judge(data_dir: Path):
    questions = _gsm8k(data_dir)[:30]
    scanner = Scanner(BenchmarkPayload(questions, StageConfig(embedding=False)))
    changed = re.sub(r"\d+", lambda m: str(int(m.group(0)) + 1), questions[3])
    assert changed != questions[3]
    docs = [questions[3], changed, "Homework sheet.\n" + questions[5] + "\nShow your work."]
    result = scanner.scan(0, [Record(f"c:{i}", "c", i, text, {}) for i, text in enumerate(docs)])
    by_doc = {hit.doc_id: {p.item: p for p in hit.pairs} for hit in result.hits}
    config = scanner.config
    assert by_doc["c:0"][3].confirmed_by(config) == "ngram"
    changed_pair = by_doc.get("c:1", {}).get(3)  # shares most words, but it is another problem
    assert changed_pair is None or changed_pair.confirmed_by(config) is None
    assert by_doc["c:2"][5].confirmed_by(config) == "ngram" and by_doc["c:2"][5].numbers_kept is True
    near_copy = PairEvidence(3, ngram_shared=40, ngram_ratio=0.95, minhash_jaccard=0.93, numbers_kept=False)
    assert near_copy.near_verbatim(config) and near_copy.confirmed_by(config) is None
    assert PairEvidence(3, ngram_shared=20, ngram_ratio=0.6).confirmed_by(config) is None  # 0.5 used to accept


@dataclass
class Pair:
    """A candidate pair's evidence as the ranker reads it (a Match carries the same fields)."""

    ngram_ratio: float = 0.0
    minhash_jaccard: float | None = None
    anchor_share: float = 0.0
    embed_margin: float | None = None
    numbers_kept: bool | None = None
    item_rank: int = 0
    item_candidates: int = 1


def test_ranker_fits_saves_loads_and_refuses_a_damaged_file(tmp_path: Path):
    positives = [Pair(ngram_ratio=0.2, anchor_share=0.9, embed_margin=1.08)] * 5
    negatives = [Pair(embed_margin=1.0, item_rank=2, item_candidates=9)] * 20
    ranker = fit_ranker(positives + negatives, [True] * 5 + [False] * 20, target_recall=1.0)
    assert ranker.probability(positives[0]) > 0.5 > ranker.probability(negatives[0])
    assert ranker.min_probability <= ranker.probability(positives[0])
    ranker.save(tmp_path / "r.json")
    assert Ranker.load(tmp_path / "r.json").weights == ranker.weights
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a candidate ranker"):
        Ranker.load(tmp_path / "bad.json")
    assert Ranker.load(DEFAULT_WEIGHTS_PATH).weights  # the shipped weights load


def test_judge_rounds_give_the_next_candidate_a_turn_and_stop_at_a_leak(data_dir: Path, tmp_path: Path):
    questions = _gsm8k(data_dir)[:20]
    rephrases = read_texts(data_dir / "llm-decontaminator/data/rephrase/rephrase_gsm8k.jsonl", 20)
    look_alike = re.sub(r"\d+", lambda m: str(int(m.group(0)) + 1), questions[2])  # another problem
    leak = rephrases[2]
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": q} for q in questions])
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": look_alike}, {"text": leak}, {"text": leak + " "}])
    stages = StageConfig(embedding=False, minhash_threshold=0.2, anchor_threshold=0.3)

    def scan(decide, out: str):
        with FakeJudgeServer(decide) as server:
            options = ScanOptions([bench], ["question"], [corpus], ["text"], tmp_path / out, stages,
                                  judge=JudgeSettings(server.base_url, "oracle"), progress=False,
                                  judge_min_probability=0.0)
            return run_scan(options), server.calls

    result, calls = scan(lambda item, doc: doc.strip() == leak.strip(), "rounds")
    item2 = [m for m in result.matches if m.item_index == 2]
    assert len(item2) == 3 and all(m.rank_probability is not None for m in item2)
    assert [m.verdict for m in item2].count("contaminated") == 1  # found once, then the item is not judged again
    assert result.summary["stages"]["llm_judge"]["rounds"] >= 1 and calls <= 3
    everything, calls_all_yes = scan(lambda item, doc: True, "yes")
    assert calls_all_yes == len({m.item_index for m in everything.matches})  # one call per item: stop at "yes"


PASSAGE = (
    "This question refers to the following information. The pair of excerpts below was written by an explorer "
    "and a bishop who saw the same voyages from opposite sides of the ocean and disagreed about nearly everything "
    "they described, from the trade in cotton and glass beads to the treatment of the people they met on the "
    "islands, and each wrote for a king who wanted gold more than he wanted the truth about any of it. The "
    "explorer praised the harbours, the rivers and the gentle manners of the people, and promised spices, "
    "slaves and gold in return for ships and men; the bishop counted the dead in every village the soldiers "
    "had passed through and begged the court to stop the killing before nobody was left to convert."
)


def test_the_same_passage_under_another_question_goes_to_the_judge():
    item = PASSAGE + " Which of the following motives is the bishop most likely to think is most important?"
    other_question = PASSAGE + " Which of the following motives does the bishop seem to be criticizing?"
    one_word_edited = item.replace("opposite sides", "opposite shores")
    scanner = Scanner(BenchmarkPayload([item], StageConfig(embedding=False)))
    docs = [f"Study guide.\n{item}\nAnswer: B", other_question, one_word_edited]
    result = scanner.scan(0, [Record(f"c:{i}", "c", i, text, {}) for i, text in enumerate(docs)])
    pairs = {hit.doc_id: hit.pairs[0] for hit in result.hits}
    assert pairs["c:0"].confirmed_by(scanner.config) == "ngram" and pairs["c:0"].ngram_gap == 0
    assert pairs["c:2"].confirmed_by(scanner.config) is not None  # one edited word costs 13 grams: still a copy
    replaced = pairs["c:1"]
    assert replaced.ngram_ratio >= 0.9 and replaced.near_verbatim(scanner.config)  # shares almost every gram...
    assert replaced.part_replaced(scanner.config) and replaced.confirmed_by(scanner.config) is None  # ...not the ending


def test_item_context_ranks_each_pair_among_its_items_candidates():
    matches = [Pair(embed_margin=1.02), Pair(embed_margin=1.10), Pair(ngram_ratio=0.4), Pair(embed_margin=0.99)]
    for match, item in zip(matches, (7, 7, 7, 8), strict=True):
        match.item_index = item  # type: ignore[attr-defined]
    set_item_context(matches)  # type: ignore[arg-type]
    assert [m.item_rank for m in matches] == [1, 0, 2, 0]
    assert [m.item_candidates for m in matches] == [3, 3, 3, 1]
