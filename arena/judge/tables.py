"""The human-readable tables that ``arena-judge mt-bench`` prints (rich), one per report."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from arena.judge.answers import AnswerStats
from arena.judge.judging import JudgeStats, Mode
from arena.judge.questions import Question

JUDGE_STAT_LABELS = {
    "planned": "planned",
    "cached": "from cache",
    "judged": "newly judged",
    "judge_calls": "judge calls",
    "parse_retries": "re-asks for format",
    "unparseable": "unparseable (not scored)",
    "errors": "failed calls",
    "missing_answers": "skipped: missing answers",
}


def fmt(value: Any) -> str:
    """Floats with two decimals, None as a dash."""
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def questions_table(questions: list[Question], source: str) -> Table:
    rows = []
    for category in sorted({q.category for q in questions}):
        in_category = [q for q in questions if q.category == category]
        guided = sum(q.needs_reference and q.reference is not None for q in in_category)
        rows.append([category, str(len(in_category)), str(guided), str(in_category[0].temperature)])
    columns = ["category", "questions", "reference-guided", "temperature"]
    return _table(f"MT-bench questions from {source}", columns, rows)


def answers_table(stats: list[AnswerStats]) -> Table:
    rows = [[row.model, str(row.generated), str(row.skipped), str(row.failed)] for row in stats]
    return _table("Answers", ["model", "new", "already there", "failed"], rows)


def usage_table(rows: list[dict[str, object]]) -> Table:
    columns = ["model", "calls", "prompt tokens", "completion tokens", "est. cost $", "note"]
    cells = [
        [str(r["model"]), str(r["calls"]), str(r["prompt_tokens"]), str(r["completion_tokens"]),
         f"{r['cost_usd']:.4f}", str(r["note"])]
        for r in rows
    ]  # fmt: skip
    return _table("Model calls this run (cost estimated from the price table)", columns, cells)


def judge_stats_table(stats: JudgeStats) -> Table:
    rows = [[label, str(getattr(stats, key))] for key, label in JUDGE_STAT_LABELS.items()]
    return _table("Judgments", ["what", "count"], rows)


def single_table(summary: dict[str, dict[str, Any]], judge: str) -> Table:
    categories = sorted({c for row in summary.values() for c in row["categories"]})
    rows = [
        [model, fmt(row["score"]), fmt(row["turns"].get("turn_1")), fmt(row["turns"].get("turn_2")),
         *(fmt(row["categories"].get(c)) for c in categories), str(row["judged"]), str(row["unparseable"])]
        for model, row in summary.items()
    ]  # fmt: skip
    columns = ["model", "score", "turn 1", "turn 2", *categories, "judged", "unparseable"]
    return _table(f"MT-bench single-answer grading (judge: {judge})", columns, rows)


def pairwise_table(summary: dict[str, dict[str, Any]], judge: str, mode: Mode, baseline: str | None) -> Table:
    against = f" against {baseline}" if mode is Mode.PAIRWISE_BASELINE else ""
    rows = [
        [model, str(row["wins"]), str(row["losses"]), str(row["ties"]), fmt(row["win_rate"]),
         fmt(row["loss_rate"]), fmt(row["win_rate_adjusted"]), str(row["unparseable"])]
        for model, row in summary.items()
    ]  # fmt: skip
    columns = ["model", "wins", "losses", "ties", "win rate", "loss rate", "adjusted win rate", "unparseable"]
    title = f"MT-bench {mode.value}{against} (judge: {judge}; inconsistent swaps count as ties)"
    return _table(title, columns, rows)


def agreement_table(report: dict[str, Any]) -> Table:
    rows: list[list[str]] = []
    if "position_consistency" in report:
        swap = report["position_consistency"]
        rows.append(["position-swap consistency", fmt(swap["consistency"]), str(swap["n_swapped"])])
        rows.append(["  inconsistent, first position won both", str(swap["inconsistent_favoring_first"]), ""])
        rows.append(
            ["  inconsistent, second position won both", str(swap["inconsistent_favoring_second"]), ""]
        )
    bias = report["length_bias"]
    if "longer_answer_win_rate" in bias:
        rows.append(
            [
                "longer answer wins (0.5 = no bias)",
                fmt(bias["longer_answer_win_rate"]),
                str(bias["n_decisive"]),
            ]
        )
    else:
        rows.append(["length-score Spearman rho", fmt(bias["length_score_spearman"]), str(bias["n_scored"])])
    if "vs_judge" in report:
        other = report["vs_judge"]
        label = f"vs judge {other['other_judge']}"
        rows.append([f"{label}: with ties", fmt(other["agreement_with_ties"]), str(other["n_with_ties"])])
        rows.append(
            [f"{label}: without ties", fmt(other["agreement_without_ties"]), str(other["n_without_ties"])]
        )
    if "vs_human" in report:
        rows.extend(_human_rows(report["vs_human"]))
    return _table(f"Judge {report['judge']} ({report['mode']})", ["measure", "value", "n"], rows)


def _human_rows(human: dict[str, Any]) -> list[list[str]]:
    question, pair = human["question_level"], human["pair_level"]
    return [
        ["vs humans (same question): with ties", fmt(question["agreement_with_ties"]), str(question["n_with_ties"])],
        ["vs humans (same question): without ties", fmt(question["agreement_without_ties"]),
         str(question["n_without_ties"])],
        ["vs humans (same pair, expected): with ties", fmt(pair["expected_agreement_with_ties"]), str(human["votes"])],
        ["vs humans (same pair, expected): without ties", fmt(pair["expected_agreement_without_ties"]), ""],
        ["vs humans: same preferred model", fmt(pair["preferred_model_agreement"]), str(pair["n_pairs_compared"])],
    ]  # fmt: skip
