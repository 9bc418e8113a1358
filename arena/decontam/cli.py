"""``arena-decontam``: find benchmark items that leaked into a training corpus, and filter them out.

    arena-decontam scan --benchmark humaneval.jsonl --field prompt \\
                        --corpus train/*.parquet --field text --judge gpt-4o --out report/
    arena-decontam filter --corpus train/*.parquet --field text --matches report/ --out clean.parquet

``--field`` belongs to the ``--benchmark`` or ``--corpus`` flag before it, and a shell glob after ``--corpus``
may expand to many files; both are rewritten into the explicit ``--benchmark-field`` / ``--corpus-field`` and
repeated ``--corpus`` options before Typer parses them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from arena.decontam.records import BadRecordError, InputError
from arena.progress import configure_cli_logging

logger = logging.getLogger(__name__)

EXIT_CONTAMINATED = 1
EXIT_BAD_INPUT = 2

_GROUP_FLAGS = {"--benchmark": "--benchmark-field", "--corpus": "--corpus-field"}
_GROUP_COLUMNS = {"--benchmark": "--benchmark-columns", "--corpus": "--corpus-columns"}


def normalize_argv(args: list[str]) -> list[str]:
    """Bind each ``--field`` (and ``--columns``) to the ``--benchmark``/``--corpus`` flag before it, and repeat
    path flags per path."""
    out: list[str] = []
    group: str | None = None
    collecting = False
    position = 0
    while position < len(args):
        arg = args[position]
        has_value = position + 1 < len(args)
        if arg in _GROUP_FLAGS and has_value:
            group, collecting = arg, True
            out.extend([arg, args[position + 1]])
            position += 2
        elif arg in ("--field", "--columns") and group is not None and has_value:
            flags = _GROUP_FLAGS if arg == "--field" else _GROUP_COLUMNS
            out.extend([flags[group], args[position + 1]])
            collecting = False
            position += 2
        elif collecting and group is not None and not arg.startswith("-"):
            out.extend([group, arg])
            position += 1
        else:
            collecting = False
            out.append(arg)
            position += 1
    return out


class _DecontamTyper(typer.Typer):
    """A Typer app that rewrites ``sys.argv`` with :func:`normalize_argv` when run as a script."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args and "args" not in kwargs:
            kwargs["args"] = normalize_argv(sys.argv[1:])
        return super().__call__(*args, **kwargs)


app = _DecontamTyper(
    help="Find benchmark questions that leaked into training data, and remove them. "
    "'--field NAME' after --benchmark or --corpus is short for --benchmark-field / --corpus-field.",
    no_args_is_help=True,
)


def _judge_settings(
    judge: str | None, base_url: str | None, model: str | None, api_key_env: str | None,
    models_file: Path | None, concurrency: int,
) -> Any:
    from arena.decontam.pipeline import JudgeSettings

    if judge and (base_url or model):
        raise typer.BadParameter("give --judge NAME or --judge-base-url/--judge-model, not both")
    if judge:
        from arena.providers.registry import RegistryError, UnknownModelError, load_registry

        try:
            spec = load_registry(models_file)[judge]
        except (UnknownModelError, RegistryError) as exc:
            raise typer.BadParameter(f"{exc} (model registry)", param_hint="--judge") from exc
        return JudgeSettings(spec.base_url, spec.model_id, spec.api_key(), concurrency)
    if base_url or model:
        if not (base_url and model):
            raise typer.BadParameter("--judge-base-url and --judge-model go together")
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        return JudgeSettings(base_url, model, key or "EMPTY", concurrency)
    return None


@app.command()
def scan(
    benchmark: Annotated[list[Path], typer.Option(help="Benchmark file(s) or directory: JSONL, JSON, Parquet, CSV, .gz")],
    benchmark_field: Annotated[list[str], typer.Option(help="Benchmark text field(s), joined by newlines")],
    corpus: Annotated[list[Path], typer.Option(help="Corpus file(s) or directory (streamed)")],
    corpus_field: Annotated[list[str], typer.Option(help="Corpus text field(s), joined by newlines")],
    out: Annotated[Path, typer.Option(help="Output directory: report.html, matches.jsonl, summary.json, state/")],
    ngram: Annotated[bool, typer.Option(help="Run the n-gram overlap stage")] = True,
    ngram_n: Annotated[int, typer.Option(help="n-gram size in words")] = 13,
    ngram_accept: Annotated[float, typer.Option(help="Share of the item's n-grams in a document that confirms a copy without the judge (numbers kept)")] = 0.9,
    minhash: Annotated[bool, typer.Option(help="Run the MinHash LSH stage")] = True,
    minhash_threshold: Annotated[float, typer.Option(help="Estimated Jaccard that makes a candidate")] = 0.5,
    minhash_accept: Annotated[float, typer.Option(help="Estimated Jaccard that confirms a copy without the judge (numbers kept)")] = 0.9,
    embedding: Annotated[bool, typer.Option(help="Run the embedding similarity stage")] = True,
    benchmark_columns: Annotated[str | None, typer.Option(help="Column names of a header-less benchmark CSV, comma-separated ('--columns' after --benchmark)")] = None,
    corpus_columns: Annotated[str | None, typer.Option(help="Column names of a header-less corpus CSV, comma-separated")] = None,
    id_field: Annotated[str, typer.Option(help="Benchmark field holding each item's id; 'auto': task_id, question_id, id or uid when present; 'none': file:line")] = "auto",
    ngram_max_item_df: Annotated[int, typer.Option(help="An n-gram in more benchmark items than this is boilerplate and ignored")] = 3,
    anchors: Annotated[bool, typer.Option(help="Run the language-independent anchor stage (numbers, code identifiers)")] = True,
    anchor_threshold: Annotated[float, typer.Option(help="Rarity-weighted share of the item's anchors that makes a candidate")] = 0.4,
    embed_model: Annotated[str | None, typer.Option(help="'multilingual-e5-small' (default, bundled), 'minilm' (bundled, English) or a local sentence-transformers directory")] = None,
    embed_device: Annotated[str, typer.Option(help="Device for a sentence-transformers model: cpu, cuda, cuda:N or auto")] = "cpu",
    embed_threshold: Annotated[float | None, typer.Option(help="Cosine that makes a candidate (default: 0.84 for E5, 0.7 for MiniLM)")] = None,
    embed_margin: Annotated[float, typer.Option(help="Margin (cosine over the neighbours' mean) that makes a candidate")] = 0.97,
    embed_accept: Annotated[float, typer.Option(help="Cosine that confirms a leak without the judge (>1: never)")] = 1.01,
    top_k: Annotated[int, typer.Option(help="Nearest benchmark items kept per corpus window")] = 1,
    embed_batch_size: Annotated[int, typer.Option(help="Embedding batch size")] = 64,
    judge: Annotated[str | None, typer.Option(help="Judge model: a name in the model registry")] = None,
    judge_base_url: Annotated[str | None, typer.Option(help="Judge endpoint (OpenAI-compatible /v1 URL)")] = None,
    judge_model: Annotated[str | None, typer.Option(help="Judge model id at --judge-base-url")] = None,
    judge_api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the judge's API key")] = None,
    judge_concurrency: Annotated[int, typer.Option(help="Judge calls in flight")] = 8,
    max_judge_per_item: Annotated[int, typer.Option(help="At most this many candidate documents judged per item")] = 5,
    judge_min_probability: Annotated[float | None, typer.Option(help="Judge only candidates the ranker scores at least this (default: the ranker's cut)")] = None,
    models_file: Annotated[Path | None, typer.Option(help="Model registry TOML (default: settings)")] = None,
    chunk_size: Annotated[int, typer.Option(help="Corpus documents per chunk (the unit of resume)")] = 1000,
    workers: Annotated[int, typer.Option(help="Worker processes (or Ray actors)")] = 1,
    executor: Annotated[str, typer.Option(help="'local' (processes on this machine) or 'ray'")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local one)")] = None,
    on_bad_record: Annotated[str, typer.Option(help="'skip' (log file:line and go on) or 'fail'")] = "skip",
    restart: Annotated[bool, typer.Option(help="Discard a previous scan's state in --out")] = False,
    fail_above: Annotated[float | None, typer.Option(help="Exit 1 if the contaminated share of items exceeds this rate")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars")] = True,
) -> None:
    """Scan a corpus for a benchmark's items, cheapest stage first, and write the report."""
    from arena.decontam.pipeline import ResumeError, ScanOptions, run_scan
    from arena.decontam.scanner import StageConfig

    configure_cli_logging("%(levelname)s %(name)s: %(message)s")
    if executor not in ("local", "ray"):
        raise typer.BadParameter("must be 'local' or 'ray'", param_hint="--executor")
    if on_bad_record not in ("skip", "fail"):
        raise typer.BadParameter("must be 'skip' or 'fail'", param_hint="--on-bad-record")
    stages = StageConfig(
        ngram=ngram, ngram_n=ngram_n, ngram_accept=ngram_accept, ngram_max_item_df=ngram_max_item_df,
        anchors=anchors, anchor_threshold=anchor_threshold, minhash=minhash,
        minhash_threshold=minhash_threshold, minhash_accept=minhash_accept, embedding=embedding,
        embed_model=embed_model, embed_threshold=embed_threshold, embed_margin=embed_margin,
        embed_accept=embed_accept, embed_top_k=top_k, embed_batch_size=embed_batch_size, embed_device=embed_device,
    )
    options = ScanOptions(
        benchmark=benchmark, benchmark_fields=benchmark_field, corpus=corpus, corpus_fields=corpus_field,
        out_dir=out, stages=stages,
        judge=_judge_settings(judge, judge_base_url, judge_model, judge_api_key_env, models_file, judge_concurrency),
        chunk_size=chunk_size, workers=workers, executor=executor,  # type: ignore[arg-type]
        ray_address=ray_address, on_error=on_bad_record,  # type: ignore[arg-type]
        max_judge_per_item=max_judge_per_item, judge_min_probability=judge_min_probability,
        id_field=None if id_field == "none" else id_field,
        columns=_column_list(benchmark_columns), corpus_columns=_column_list(corpus_columns),
        restart=restart, progress=progress,
    )
    try:
        result = run_scan(options)
    except (InputError, BadRecordError, ResumeError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from exc
    _print_summary(result.summary, out)
    if fail_above is not None and result.summary["contaminated_rate"] > fail_above:
        typer.echo(
            f"FAIL: {100 * result.summary['contaminated_rate']:.1f}% of items contaminated > {100 * fail_above:.1f}%",
            err=True,
        )
        raise typer.Exit(EXIT_CONTAMINATED)


def _column_list(value: str | None) -> list[str] | None:
    """``"question,choice0,answer"`` -> the column names; empty names are an error."""
    if value is None:
        return None
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise typer.BadParameter(f"empty column name in {value!r}", param_hint="--columns")
    return names


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"contamination ({', '.join(summary['stages_run'])})")
    for column in ("benchmark", "items", "contaminated", "rate", "suspected"):
        table.add_column(column)
    for name, entry in summary["benchmarks"].items():
        table.add_row(name, str(entry["items"]), str(entry["contaminated"]),
                      f"{100 * entry['contaminated_rate']:.1f}%", str(entry["suspected"]))
    console = Console()
    console.print(table)
    console.print(f"report: {out / 'report.html'}  matches: {out / 'matches.jsonl'}  summary: {out / 'summary.json'}")


@app.command("filter")
def filter_command(
    corpus: Annotated[list[Path], typer.Option(help="Corpus file(s) or directory, as scanned")],
    corpus_field: Annotated[list[str], typer.Option(help="Corpus text field(s), as scanned")],
    matches: Annotated[Path, typer.Option(help="A scan's matches.jsonl, or its --out directory")],
    out: Annotated[Path, typer.Option(help="Output file: .jsonl, .jsonl.gz or .parquet")],
    include_suspected: Annotated[bool, typer.Option(help="Also drop documents only suspected (unjudged)")] = False,
    on_bad_record: Annotated[str, typer.Option(help="'skip' or 'fail'")] = "skip",
) -> None:
    """Write the corpus without the documents a scan found contaminated."""
    from arena.decontam.filtering import filter_corpus

    configure_cli_logging("%(levelname)s %(name)s: %(message)s")
    try:
        result = filter_corpus(corpus, corpus_field, matches, out, include_suspected=include_suspected,
                               on_error=on_bad_record)  # type: ignore[arg-type]
    except (InputError, BadRecordError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from exc
    typer.echo(json.dumps({"kept": result.kept, "dropped": result.dropped, "out": str(out),
                           "skipped_records": len(result.skipped_records)}))
