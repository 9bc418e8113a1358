"""Turn stored judgments into MT-bench results: scores, win rates, tables, plots and files.

Results are computed from the *current* plan (today's questions, answers and prompts)
looked up in the judgment store, so stale judgments of changed answers never leak in.
Single-mode scores also go to the arena database (:mod:`arena.judge.arena_db`), where the
leaderboard page reads its "MT-bench" column.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from arena.judge.judging import OK, UNPARSEABLE, JudgeTask, Mode, TaskPlan
from arena.judge.store import JsonlStore, safe_name

RESULTS_DIR = "results"
TIE = "tie"


def results_stem(out_dir: Path, mode: Mode, judge: str) -> Path:
    """``<out>/results/<mode>__<judge>``; add .json, .csv or .png."""
    return Path(out_dir) / RESULTS_DIR / f"{mode.value}__{safe_name(judge)}"


def single_scores(plan: TaskPlan, store: JsonlStore) -> pd.DataFrame:
    """One row per judged answer turn: model, question, category, turn, score (NaN if unparseable)."""
    rows = []
    for task in plan.tasks:
        record = store.get(task.key)
        if record is None:
            continue
        rows.append(
            {
                "model": task.models[0],
                "question_id": task.question.question_id,
                "category": task.question.category,
                "turn": task.turn,
                "score": record["verdict"] if record["status"] == OK else None,
                "status": record["status"],
                "answer_chars": record["answer_chars"][0],
            }
        )
    columns = ["model", "question_id", "category", "turn", "score", "status", "answer_chars"]
    return pd.DataFrame(rows, columns=columns)


def _winner(verdict: str | None, first: str, second: str) -> str | None:
    """The model a verdict picks, given which model was shown as A."""
    if verdict is None:
        return None
    return {"A": first, "B": second}.get(verdict, TIE)


def pairwise_outcomes(plan: TaskPlan, store: JsonlStore) -> pd.DataFrame:
    """One row per (question, turn, pair) with both orders combined.

    When both orders were judged and disagree, the outcome is a tie (``consistent`` False).
    Rows whose verdicts are unparseable have ``winner`` None and are left out of win rates.
    """
    grouped: dict[tuple[Any, int, frozenset[str]], list[tuple[JudgeTask, dict[str, Any]]]] = defaultdict(list)
    for task in plan.tasks:
        record = store.get(task.key)
        if record is not None:
            grouped[(task.question.question_id, task.turn, frozenset(task.models))].append((task, record))
    rows = [_combine(judged) for judged in grouped.values()]
    columns = [
        "model_1", "model_2", "question_id", "category", "turn", "verdict_1", "verdict_2",
        "winner", "consistent", "chars_1", "chars_2",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _combine(judged: list[tuple[JudgeTask, dict[str, Any]]]) -> dict[str, Any]:
    first_task, first = judged[0]
    model_1, model_2 = first_task.models
    winners = []
    verdicts = []
    for task, record in judged:
        verdict = record["verdict"] if record["status"] == OK else None
        verdicts.append(verdict)
        winners.append(_winner(verdict, *task.models))
    consistent = None
    if any(w is None for w in winners):
        winner = None
    elif len(winners) == 1:
        winner = winners[0]
    else:
        consistent = winners[0] == winners[1]
        winner = winners[0] if consistent else TIE
    return {
        "model_1": model_1,
        "model_2": model_2,
        "question_id": first_task.question.question_id,
        "category": first_task.question.category,
        "turn": first_task.turn,
        "verdict_1": verdicts[0],
        "verdict_2": verdicts[1] if len(verdicts) > 1 else None,
        "winner": winner,
        "consistent": consistent,
        "chars_1": first["answer_chars"][0],
        "chars_2": first["answer_chars"][1],
    }


def summarize_single(scores: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per model: average score overall, per turn and per category, and unparseable counts."""
    summary: dict[str, dict[str, Any]] = {}
    for model, rows in scores.groupby("model", sort=False):
        scored = rows.dropna(subset=["score"])
        summary[str(model)] = {
            "score": _mean(scored["score"]),
            "turns": {f"turn_{int(t)}": _mean(g["score"]) for t, g in scored.groupby("turn")},
            "categories": {str(c): _mean(g["score"]) for c, g in scored.groupby("category")},
            "judged": len(scored),
            "unparseable": int((rows["status"] == UNPARSEABLE).sum()),
        }
    return dict(sorted(summary.items(), key=lambda item: -(item[1]["score"] or 0)))


def summarize_pairwise(outcomes: pd.DataFrame, baseline: str | None = None) -> dict[str, dict[str, Any]]:
    """Per model: wins, losses, ties and win rates (ties count half in the adjusted rate)."""
    tallies: dict[str, dict[str, Any]] = {}
    decided = outcomes.dropna(subset=["winner"])
    for row in decided.itertuples(index=False):
        for model in (row.model_1, row.model_2):
            if model == baseline:
                continue
            tally = tallies.setdefault(model, {"wins": 0, "losses": 0, "ties": 0, "by_category": {}})
            outcome = "ties" if row.winner == TIE else ("wins" if row.winner == model else "losses")
            tally[outcome] += 1
            category = tally["by_category"].setdefault(row.category, {"wins": 0, "losses": 0, "ties": 0})
            category[outcome] += 1
    summary = {model: _rates(tally) for model, tally in tallies.items()}
    for model, tally in tallies.items():
        summary[model]["categories"] = {
            c: _rates(t)["win_rate_adjusted"] for c, t in tally["by_category"].items()
        }
        summary[model]["unparseable"] = int(
            outcomes[
                (outcomes["winner"].isna())
                & ((outcomes["model_1"] == model) | (outcomes["model_2"] == model))
            ].shape[0]
        )
    return dict(sorted(summary.items(), key=lambda item: -item[1]["win_rate_adjusted"]))


def _rates(tally: dict[str, Any]) -> dict[str, Any]:
    total = tally["wins"] + tally["losses"] + tally["ties"]
    share = (lambda n: round(n / total, 4)) if total else (lambda n: 0.0)
    return {
        "wins": tally["wins"],
        "losses": tally["losses"],
        "ties": tally["ties"],
        "win_rate": share(tally["wins"]),
        "loss_rate": share(tally["losses"]),
        "tie_rate": share(tally["ties"]),
        "win_rate_adjusted": share(tally["wins"] + 0.5 * tally["ties"]),
    }


def _mean(values: pd.Series) -> float | None:
    return round(float(values.mean()), 4) if len(values) else None


def write_results(
    out_dir: Path,
    mode: Mode,
    judge: str,
    summary: dict[str, dict[str, Any]],
    rows: pd.DataFrame,
    run_info: dict[str, Any] | None,
) -> dict[str, Path]:
    """Write the summary (JSON), the per-judgment rows (CSV) and a plot (PNG).

    ``run_info`` (the judge run's statistics) None keeps those of the file being replaced:
    ``show`` re-renders results without having run anything.
    """
    stem = results_stem(out_dir, mode, judge)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if run_info is None:
        previous = stem.with_suffix(".json")
        run_info = json.loads(previous.read_text(encoding="utf-8")).get("run", {}) if previous.is_file() else {}
    payload = {
        "mode": mode.value,
        "judge": judge,
        "created_at": datetime.now(UTC).isoformat(),
        "models": summary,
        "run": run_info,
    }
    paths = {
        "json": stem.with_suffix(".json"),
        "csv": stem.with_suffix(".csv"),
        "png": stem.with_suffix(".png"),
    }
    paths["json"].write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
    rows.to_csv(paths["csv"], index=False)
    from arena.judge.plots import plot_pairwise, plot_single

    if mode is Mode.SINGLE:
        plot_single(summary, paths["png"], title=f"MT-bench ({judge} as judge)")
    else:
        plot_pairwise(summary, paths["png"], title=f"MT-bench {mode.value} ({judge} as judge)")
    return paths
