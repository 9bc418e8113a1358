"""Each offline stage on real benchmark text: what it must catch and what it must leave alone."""

from __future__ import annotations

from pathlib import Path

from arena.decontam.minhash import MinHashIndex
from arena.decontam.ngram import NgramIndex
from arena.decontam.records import Record
from arena.decontam.scanner import BenchmarkPayload, Scanner, StageConfig
from arena.decontam.text import tokens
from tests.decontam.helpers import read_texts


def _gsm8k(data_dir: Path, limit: int) -> list[str]:
    return read_texts(data_dir / "benchmarks/gsm8k/test.jsonl", limit, field="question")


def _rephrased_gsm8k(data_dir: Path, limit: int) -> list[str]:
    return read_texts(data_dir / "llm-decontaminator/data/rephrase/rephrase_gsm8k.jsonl", limit)


def test_tokens_normalize_case_punctuation_and_split_cjk():
    assert tokens("Hello,  WORLD!  x^5") == ["hello", "world", "x", "5"]
    assert tokens("找出Q的次数") == ["找", "出", "q", "的", "次", "数"]


def test_ngram_finds_an_exact_copy_inside_a_long_document(data_dir: Path):
    items = _gsm8k(data_dir, 50)
    index = NgramIndex([tokens(t) for t in items], n=13)
    filler = " ".join(_gsm8k(data_dir, 200)[100:140])
    document = f"{filler} Here is a practice problem. {items[7]} Show your work. {filler}"
    found = index.match(tokens(document))
    assert found[7][1] == 1.0
    assert all(ratio < 0.5 for item, (_, ratio) in found.items() if item != 7)


def test_ngram_misses_rephrases_as_the_paper_reports(data_dir: Path):
    items = _gsm8k(data_dir, 100)
    index = NgramIndex([tokens(t) for t in items], n=13)
    hits = [index.match(tokens(doc)) for doc in _rephrased_gsm8k(data_dir, 100)]
    assert sum(1 for found in hits if found) == 0


def test_ngram_indexes_items_shorter_than_n_whole(data_dir: Path):
    index = NgramIndex([tokens("What is 2 + 2?"), tokens("a much longer question " * 5)], n=13)
    assert index.match(tokens("Quiz: what is 2 + 2? Answer below."))[0] == (1, 1.0)


def test_minhash_catches_light_edits_but_not_other_items(data_dir: Path):
    items = _gsm8k(data_dir, 100)
    index = MinHashIndex([tokens(t) for t in items], threshold=0.5)
    edited = items[3].replace("$", "USD ").replace(".", ";", 1).upper()
    words = edited.split()
    words.insert(len(words) // 2, "please")
    found = index.match(tokens(" ".join(words)))
    assert 3 in found and found[3] > 0.6
    assert set(found) == {3}


def test_embedding_ranks_each_rephrase_first_for_its_original(data_dir: Path, embedder):
    from arena.decontam.embedding import EmbeddingIndex

    items = _gsm8k(data_dir, 40)
    index = EmbeddingIndex(embedder.encode(items), embedder, threshold=0.75, top_k=1)
    found = index.match(_rephrased_gsm8k(data_dir, 40))
    caught = sum(1 for position, hits in enumerate(found) if position in hits)
    wrong = sum(1 for position, hits in enumerate(found) for item in hits if item != position)
    assert caught >= 38 and wrong <= 1


def test_long_documents_are_embedded_in_windows(data_dir: Path, embedder):
    from arena.decontam.embedding import EmbeddingIndex, windows
    from arena.decontam.scanner import window_size_for

    items = _gsm8k(data_dir, 30)
    rephrase = _rephrased_gsm8k(data_dir, 30)[12]
    filler = " ".join(f"Unrelated sentence number {i} about gardening and weather." for i in range(80))
    document = f"{filler} {rephrase} {filler}"
    assert len(windows(document, window_size_for(items), window_size_for(items) // 2)) > 3
    index = EmbeddingIndex(embedder.encode(items), embedder, threshold=0.7, top_k=1, window_words=window_size_for(items))
    assert 12 in index.match([document])[0]


def test_scanner_skips_embedding_for_documents_confirmed_by_cheap_stages(data_dir: Path, embedder):
    items = _gsm8k(data_dir, 30)
    payload = BenchmarkPayload(items, StageConfig(embed_threshold=0.75, embed_top_k=1))
    scanner = Scanner(payload, embedder=embedder)
    docs = [items[0], _rephrased_gsm8k(data_dir, 30)[5], "A recipe for banana bread with walnuts."]
    records = [Record(f"c:{i}", "c", i, text, {}) for i, text in enumerate(docs)]
    result = scanner.scan(0, records)
    by_doc = {hit.doc_id: hit for hit in result.hits}
    assert set(by_doc) == {"c:0", "c:1"}
    assert by_doc["c:0"].pairs[0].confirmed_by(payload.config) == "ngram"
    assert by_doc["c:0"].pairs[0].embed_cosine is None  # never embedded: confirmed by the n-gram stage
    assert by_doc["c:1"].pairs[0].item == 5 and by_doc["c:1"].pairs[0].confirmed_by(payload.config) is None
    assert result.stage_docs == {"ngram": 3, "anchors": 3, "minhash": 3, "embedding": 2}
