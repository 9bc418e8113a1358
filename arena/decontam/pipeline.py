"""A whole scan: read the benchmark, stream the corpus through the offline stages, judge the survivors, report.

Resumable: each finished chunk is written to ``<out>/state/chunks/NNNNNN.json`` (atomically, so the file is
its own finished-marker) and judge answers go to ``<out>/state/judge_cache.sqlite``. A rerun with the same
inputs and settings skips finished chunks and cached pairs; changed settings are refused unless ``restart``.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from arena.decontam.executors import run_local, run_processes, run_ray
from arena.decontam.llm_judge import PROMPT_VERSION, JudgeCache, JudgeRequest, Verdict, cache_key, judge_pairs
from arena.decontam.ranking import DEFAULT_WEIGHTS_PATH, Ranker
from arena.decontam.records import (
    InputError,
    OnError,
    ReadStats,
    Record,
    expand_paths,
    iter_chunks,
    iter_records,
)
from arena.decontam.scanner import BenchmarkPayload, ChunkResult, PairEvidence, StageConfig
from arena.progress import ProgressBar, progress_bar

logger = logging.getLogger(__name__)

Executor = Literal["local", "ray"]
VerdictLabel = Literal["contaminated", "suspected", "clean"]


class ResumeError(RuntimeError):
    """The state directory belongs to a scan with other inputs or settings."""


@dataclass(frozen=True)
class JudgeSettings:
    """The OpenAI-compatible endpoint that judges candidate pairs."""

    base_url: str
    model_id: str
    api_key: str = "EMPTY"
    concurrency: int = 8
    timeout_s: float = 120.0


@dataclass
class ScanOptions:
    """Everything one scan needs; the CLI builds it from flags."""

    benchmark: list[Path]
    benchmark_fields: list[str]
    corpus: list[Path]
    corpus_fields: list[str]
    out_dir: Path
    stages: StageConfig = field(default_factory=StageConfig)
    judge: JudgeSettings | None = None
    chunk_size: int = 1000
    workers: int = 1
    executor: Executor = "local"
    ray_address: str | None = None
    on_error: OnError = "skip"
    max_judge_per_item: int = 5
    judge_min_probability: float | None = None
    """Candidates the ranker scores below this are reported as suspected, not judged (None: the ranker's own)."""
    ranker_path: Path = DEFAULT_WEIGHTS_PATH
    id_field: str | None = "auto"
    """The benchmark field holding each item's id; "auto": the first of ID_FIELDS present; None: ``file:line``."""
    columns: list[str] | None = None
    """Column names for header-less benchmark CSV files (MMLU's original format)."""
    corpus_columns: list[str] | None = None
    """Column names for header-less corpus CSV files."""
    restart: bool = False
    progress: bool = True
    embedder: Any = None
    """An already loaded :class:`~arena.decontam.embedding.Embedder` to reuse (in-process runs only)."""

    @property
    def state_dir(self) -> Path:
        return self.out_dir / "state"


@dataclass
class Match:
    """One candidate pair with its evidence and final verdict (a line of matches.jsonl)."""

    benchmark: str
    item_id: str
    item_index: int
    item_text: str
    doc_id: str
    doc_text: str
    found_by: list[str]
    verdict: VerdictLabel
    decided_by: str | None
    ngram_shared: int
    ngram_ratio: float
    minhash_jaccard: float | None
    embed_cosine: float | None
    anchor_shared: int = 0
    anchor_share: float = 0.0
    embed_margin: float | None = None
    numbers_kept: bool | None = None
    ngram_gap: int | None = None
    item_rank: int = 0
    """How many of the item's candidate documents have a larger embedding margin (0: this is its best)."""
    item_candidates: int = 1
    """How many corpus documents are candidates for the item (the ranker's view from the item's side)."""
    rank_probability: float | None = None
    """The ranker's probability that the judge says "same" (the order in which candidates are judged)."""
    judge_same: bool | None = None
    judge_reason: str | None = None
    judge_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScanResult:
    """What a scan produced: the matches and the summary written to summary.json."""

    matches: list[Match]
    summary: dict[str, Any]


def run_scan(options: ScanOptions) -> ScanResult:
    """Run (or resume) a scan and write report.html, matches.jsonl and summary.json to ``options.out_dir``."""
    from arena.decontam.report import write_outputs

    bench_stats = ReadStats()
    items = list(iter_records(options.benchmark, options.benchmark_fields, on_error=options.on_error,
                              stats=bench_stats, id_field=options.id_field, columns=options.columns))
    if not items:
        raise ValueError("the benchmark has no items with text in the given field(s)")
    _prepare_state(options)
    corpus_stats = ReadStats()
    chunk_results = _scan_corpus(options, items, corpus_stats)
    matches, judge_stats = _decide(options, items, chunk_results)
    summary = _summarize(options, items, chunk_results, matches, judge_stats, bench_stats, corpus_stats)
    write_outputs(options.out_dir, matches, summary)
    return ScanResult(matches, summary)


STATE_FORMAT = 2
"""Version of what a chunk file holds (2: pairs carry ``ngram_gap``); a state of another format is not resumed,
since its finished chunks would skip checks this version makes."""


def _fingerprint(options: ScanOptions) -> dict[str, Any]:
    def describe(paths: list[Path]) -> list[list[Any]]:
        return [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in expand_paths(paths)]

    return {
        "state_format": STATE_FORMAT,
        "benchmark": describe(options.benchmark),
        "benchmark_fields": options.benchmark_fields,
        "corpus": describe(options.corpus),
        "corpus_fields": options.corpus_fields,
        "chunk_size": options.chunk_size,
        "stages": options.stages.to_dict(),
        "on_error": options.on_error,
        "id_field": options.id_field,
        "columns": options.columns,
        "corpus_columns": options.corpus_columns,
    }


def _prepare_state(options: ScanOptions) -> None:
    """Create the state directory, or check that the one there belongs to this same scan."""
    manifest_path = options.state_dir / "manifest.json"
    fingerprint = _fingerprint(options)
    if options.restart and options.state_dir.exists():
        shutil.rmtree(options.state_dir / "chunks", ignore_errors=True)
        manifest_path.unlink(missing_ok=True)
        (options.state_dir / "item_vectors.npy").unlink(missing_ok=True)
    if manifest_path.exists():
        previous = _read_state_json(manifest_path)
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise ResumeError(
                f"{options.state_dir} holds a scan with other {', '.join(changed)}; "
                "use another --out, or --restart to discard it"
            )
        logger.info("resuming the scan in %s", options.state_dir)
    (options.state_dir / "chunks").mkdir(parents=True, exist_ok=True)
    _atomic_write(manifest_path, json.dumps(fingerprint, indent=1))


def _read_state_json(path: Path) -> Any:
    """A JSON file of the state directory; a damaged one is an error naming it and the way out."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{path}: damaged state file ({exc}); rerun with --restart to discard the state") from exc


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _chunk_path(options: ScanOptions, index: int) -> Path:
    return options.state_dir / "chunks" / f"{index:06d}.json"


def _scan_corpus(options: ScanOptions, items: list[Record], stats: ReadStats) -> list[ChunkResult]:
    """Scan the chunks not finished yet, then load every chunk's result from the state directory."""
    done = {int(p.stem) for p in (options.state_dir / "chunks").glob("*.json")}
    stage_pairs: dict[str, int] = defaultdict(int)
    payload, embedder = _payload(options, items)
    with progress_bar("offline stages (documents)", enabled=options.progress) as bar:

        def pending_chunks() -> Iterator[tuple[int, list[Record]]]:
            records = iter_records(options.corpus, options.corpus_fields, on_error=options.on_error, stats=stats,
                                   columns=options.corpus_columns)
            for index, chunk in enumerate(iter_chunks(records, options.chunk_size)):
                if index in done:
                    bar.advance(len(chunk))
                else:
                    yield index, chunk

        def on_result(result: ChunkResult) -> None:
            _atomic_write(_chunk_path(options, result.index), json.dumps(result.to_dict()))
            for stage, count in result.stage_pairs.items():
                stage_pairs[stage] += count
            bar.advance(result.docs)
            pairs = ", ".join(f"{stage} {count}" for stage, count in stage_pairs.items())
            bar.describe(f"offline stages (documents; pairs: {pairs})")

        if options.executor == "ray":
            run_ray(payload, pending_chunks(), on_result, options.workers, options.ray_address)
        elif options.workers > 1:
            run_processes(payload, pending_chunks(), on_result, options.workers)
        else:
            run_local(payload, pending_chunks(), on_result, embedder)
    paths = sorted((options.state_dir / "chunks").glob("*.json"))
    results = []
    for path in paths:
        try:
            results.append(ChunkResult.from_dict(_read_state_json(path)))
        except (KeyError, TypeError) as exc:
            raise ResumeError(f"{path}: damaged state file (missing {exc}); rerun with --restart") from exc
    return results


def _payload(options: ScanOptions, items: list[Record]) -> tuple[BenchmarkPayload, Any]:
    """The benchmark side for the workers, with item embeddings computed once here rather than in each worker.

    The embeddings are kept in the state directory, so a resumed scan does not embed the benchmark again.
    Returns the payload and the embedder loaded here, if any, for in-process scans to reuse.
    """
    texts = [item.text for item in items]
    threads = max(1, (os.cpu_count() or 1) // max(1, options.workers)) if options.workers > 1 else None
    vectors = None
    embedder = options.embedder
    if options.stages.embedding:
        vectors_path = options.state_dir / "item_vectors.npy"
        if vectors_path.exists():
            try:
                vectors = np.load(vectors_path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise ResumeError(f"{vectors_path}: damaged state file ({exc}); rerun with --restart") from exc
            if vectors.shape[0] != len(texts):
                raise ResumeError(f"{vectors_path}: holds {vectors.shape[0]} vectors for {len(texts)} items; "
                                  "rerun with --restart")
        else:
            from arena.decontam.embedding import Embedder

            embedder = embedder or Embedder(options.stages.embed_model, options.stages.embed_batch_size,
                                            device=options.stages.embed_device)
            vectors = embedder.encode(texts)
            np.save(vectors_path, vectors)
    return BenchmarkPayload(texts, options.stages, vectors, threads), embedder


def _load_ranker(options: ScanOptions) -> Ranker:
    try:
        return Ranker.load(options.ranker_path)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _decide(
    options: ScanOptions, items: list[Record], chunk_results: list[ChunkResult]
) -> tuple[list[Match], dict[str, int]]:
    """Confirm near-verbatim copies, then judge the rest in ranked rounds, and label every pair.

    Every undecided candidate gets the ranker's probability. Round r asks the judge about each item's r-th
    best candidate, for items the judge has not yet called contaminated, while its probability reaches the
    cut and r stays within ``max_judge_per_item``: an item whose best candidate was a look-alike gives its
    next candidate a turn; an item already found is not judged again (its other candidates stay suspected).
    """
    ranker = _load_ranker(options)
    cut = ranker.min_probability if options.judge_min_probability is None else options.judge_min_probability
    matches: list[Match] = []
    to_judge: dict[int, list[Match]] = defaultdict(list)
    for result in chunk_results:
        for doc in result.hits:
            for pair in doc.pairs:
                matches.append(_match_of(items[pair.item], pair, doc.doc_id, doc.text, options.stages))
    set_item_context(matches)
    for match in matches:
        if match.decided_by is None:
            match.rank_probability = round(ranker.probability(match), 4)
            to_judge[match.item_index].append(match)
    judge_stats = {"candidates": sum(len(v) for v in to_judge.values()), "calls": 0, "cached": 0,
                   "same": 0, "not_same": 0, "errors": 0, "capped": 0, "below_cut": 0, "rounds": 0}
    for candidates in to_judge.values():
        candidates.sort(key=lambda m: m.rank_probability or 0.0, reverse=True)
        judge_stats["below_cut"] += sum(1 for m in candidates if (m.rank_probability or 0.0) < cut)
    if options.judge is None:
        return matches, judge_stats
    queues = {item: [m for m in ms if (m.rank_probability or 0.0) >= cut] for item, ms in to_judge.items()}
    for round_index in range(options.max_judge_per_item):
        batch = [queue[round_index] for queue in queues.values() if round_index < len(queue)]
        if not batch:
            break
        judge_stats["rounds"] += 1
        verdicts = _run_judge(options, options.judge, batch)
        for match in batch:
            verdict = verdicts[cache_key(options.judge.model_id, match.item_text, match.doc_text)]
            judge_stats["cached" if verdict.cached else "calls"] += 1
            _apply_verdict(match, verdict, judge_stats)
            if match.judge_same:
                del queues[match.item_index]
    judge_stats["capped"] = sum(max(0, len(q) - options.max_judge_per_item) for q in queues.values())
    return matches, judge_stats


def set_item_context(matches: list[Match]) -> None:
    """Give every pair its item's view: how many documents reached the item, and this pair's margin rank."""
    by_item: dict[int, list[Match]] = defaultdict(list)
    for match in matches:
        by_item[match.item_index].append(match)
    for pairs in by_item.values():
        margins = sorted(m.embed_margin for m in pairs if m.embed_margin is not None)
        for match in pairs:
            match.item_candidates = len(pairs)
            match.item_rank = len(margins) - (0 if match.embed_margin is None
                                              else bisect.bisect_right(margins, match.embed_margin))


def _match_of(item: Record, pair: PairEvidence, doc_id: str, doc_text: str, stages: StageConfig) -> Match:
    confirmed = pair.confirmed_by(stages)
    return Match(
        benchmark=item.source,
        item_id=item.doc_id,
        item_index=pair.item,
        item_text=item.text,
        doc_id=doc_id,
        doc_text=doc_text,
        found_by=pair.found_by(),
        verdict="contaminated" if confirmed else "suspected",
        decided_by=confirmed,
        ngram_shared=pair.ngram_shared,
        ngram_ratio=round(pair.ngram_ratio, 4),
        minhash_jaccard=None if pair.minhash_jaccard is None else round(pair.minhash_jaccard, 4),
        embed_cosine=None if pair.embed_cosine is None else round(pair.embed_cosine, 4),
        anchor_shared=pair.anchor_shared,
        anchor_share=pair.anchor_share,
        embed_margin=pair.embed_margin,
        numbers_kept=pair.numbers_kept,
        ngram_gap=pair.ngram_gap,
    )


def _apply_verdict(match: Match, verdict: Verdict, stats: dict[str, int]) -> None:
    if verdict.error is not None:
        stats["errors"] += 1
        match.judge_error = verdict.error
        return
    match.judge_same, match.judge_reason = verdict.same, verdict.reason
    match.decided_by = "llm_judge"
    match.verdict = "contaminated" if verdict.same else "clean"
    stats["same" if verdict.same else "not_same"] += 1


def _run_judge(options: ScanOptions, settings: JudgeSettings, selected: list[Match]) -> dict[str, Verdict]:
    from arena.providers.client import ChatClient

    requests: dict[str, JudgeRequest] = {}
    for match in selected:
        key = cache_key(settings.model_id, match.item_text, match.doc_text)
        requests[key] = JudgeRequest(key, match.item_text, match.doc_text)
    cache = JudgeCache(options.state_dir / "judge_cache.sqlite")

    async def run(bar: ProgressBar) -> dict[str, Verdict]:
        client = ChatClient(settings.base_url, settings.model_id, settings.api_key, timeout_s=settings.timeout_s)
        try:
            return await judge_pairs(
                list(requests.values()), client, cache, concurrency=settings.concurrency,
                on_done=lambda _verdict: bar.advance(),
            )
        finally:
            await client.close()

    try:
        with progress_bar("llm judge (pairs)", len(requests), options.progress) as bar:
            return asyncio.run(run(bar))
    finally:
        cache.close()


def _summarize(
    options: ScanOptions,
    items: list[Record],
    chunk_results: list[ChunkResult],
    matches: list[Match],
    judge_stats: dict[str, int],
    bench_stats: ReadStats,
    corpus_stats: ReadStats,
) -> dict[str, Any]:
    """Rates per benchmark file and overall, and what each stage did."""
    worst: dict[int, str] = {}
    rank = {"clean": 0, "suspected": 1, "contaminated": 2}
    for match in matches:
        if rank[match.verdict] > rank.get(worst.get(match.item_index, "clean"), 0):
            worst[match.item_index] = match.verdict
    per_benchmark: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(items):
        entry = per_benchmark.setdefault(item.source, {"items": 0, "contaminated": 0, "suspected": 0})
        entry["items"] += 1
        label = worst.get(index)
        if label in ("contaminated", "suspected"):
            entry[label] += 1
    for entry in per_benchmark.values():
        entry["contaminated_rate"] = entry["contaminated"] / entry["items"]
        entry["suspected_rate"] = entry["suspected"] / entry["items"]
    contaminated = sum(1 for v in worst.values() if v == "contaminated")
    suspected = sum(1 for v in worst.values() if v == "suspected")
    return {
        "items": len(items),
        "contaminated_items": contaminated,
        "contaminated_rate": contaminated / len(items),
        "suspected_items": suspected,
        "suspected_rate": suspected / len(items),
        "benchmarks": per_benchmark,
        "corpus_docs": sum(r.docs for r in chunk_results),
        "contaminated_docs": len({m.doc_id for m in matches if m.verdict == "contaminated"}),
        "chunks": len(chunk_results),
        "stages_run": _stages_run(options),
        "stages": _stage_counts(options, chunk_results, matches, judge_stats),
        "skipped_records": {"benchmark": bench_stats.skipped, "corpus": corpus_stats.skipped},
        "settings": {
            "stages": options.stages.to_dict(),
            "judge_model": options.judge.model_id if options.judge else None,
            "judge_prompt_version": PROMPT_VERSION if options.judge else None,
            "chunk_size": options.chunk_size,
            "workers": options.workers,
            "executor": options.executor,
            "max_judge_per_item": options.max_judge_per_item,
            "judge_min_probability": options.judge_min_probability,
        },
    }


def _stages_run(options: ScanOptions) -> list[str]:
    enabled = {"ngram": options.stages.ngram, "anchors": options.stages.anchors, "minhash": options.stages.minhash,
               "embedding": options.stages.embedding, "llm_judge": options.judge is not None}
    return [stage for stage, on in enabled.items() if on]


def _stage_counts(
    options: ScanOptions, chunk_results: list[ChunkResult], matches: list[Match], judge_stats: dict[str, int]
) -> dict[str, dict[str, Any]]:
    counts: dict[str, dict[str, Any]] = {}
    for stage in ("ngram", "anchors", "minhash", "embedding"):
        if stage not in _stages_run(options):
            continue
        docs = sum(r.stage_docs.get(stage, 0) for r in chunk_results)
        seconds = sum(r.stage_seconds.get(stage, 0.0) for r in chunk_results)
        counts[stage] = {
            "docs_scanned": docs,
            "pairs_found": sum(r.stage_pairs.get(stage, 0) for r in chunk_results),
            "items_reached": len({m.item_index for m in matches if stage in m.found_by}),
            "pairs_confirmed": sum(1 for m in matches if m.decided_by == stage),
            "seconds": round(seconds, 3),
            "docs_per_s": round(docs / seconds, 1) if seconds > 0 else None,
        }
    if options.judge is not None:
        counts["llm_judge"] = dict(judge_stats)
    else:
        counts["unjudged_candidates"] = {"pairs": judge_stats["candidates"]}
    return counts
