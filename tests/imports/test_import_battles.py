"""`arena import battles`: FastChat clean_battle JSON and the lmarena Parquet/JSON Lines layouts,
row-numbered validation (all or nothing), de-duplication on re-import, source marking, and the
leaderboard computed on imported battles alone or together with live votes.

The FastChat-layout example file the README points to is written by these tests to
test-artifacts/clean_battle_example.json.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from arena.cli import app
from arena.db.models import Battle, Model, Vote
from arena.db.session import get_engine, session_factory
from arena.imports.battles import ImportFileError, parse_file
from arena.imports.store import store_battles
from arena.leaderboard.job import LeaderboardOptions, compute_leaderboards
from arena.leaderboard.view import latest_view
from arena.ranking.dedup import downsampled_battles
from arena.ranking.simulate import win_probability
from tests.conftest import migrate
from tests.leaderboard.seed import seed_votes

TRUTH = {"gpt-4-turbo": 1250.0, "claude-3-opus": 1230.0, "llama-3-70b-instruct": 1180.0,
         "mixtral-8x7b-instruct-v0.1": 1114.0, "vicuna-13b": 1000.0}
runner = CliRunner()


def clean_battle_rows(n: int, seed: int = 0, prompts: list[str] | None = None) -> list[dict]:
    """Battles in FastChat's clean_battle layout, outcomes drawn from TRUTH."""
    rng = np.random.default_rng(seed)
    names = list(TRUTH)
    rows = []
    for i in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        p = float(win_probability(np.array([TRUTH[names[a]]]), np.array([TRUTH[names[b]]]))[0])
        draw = rng.random()
        winner = "tie" if draw < 0.1 else "tie (bothbad)" if draw < 0.15 else (
            "model_a" if rng.random() < p else "model_b")
        tokens = rng.integers(50, 900, 2)
        row = {
            "question_id": f"q{seed}-{i:05d}", "model_a": names[a], "model_b": names[b], "winner": winner,
            "judge": f"arena_user_{i % 97}", "turn": int(1 + (i % 7 == 0)), "anony": bool(i % 5),
            "language": ["English", "Chinese", "German", "unknown"][i % 4], "tstamp": 1_710_000_000.0 + 60 * i,
            "is_code": i % 3 == 0,
            "conv_metadata": {
                "sum_assistant_a_tokens": int(tokens[0]), "sum_assistant_b_tokens": int(tokens[1]),
                "header_count_a": {"h1": int(i % 2), "h2": 0}, "header_count_b": {"h1": 0, "h2": 1},
                "list_count_a": {"ordered": int(i % 4), "unordered": 1}, "list_count_b": {"ordered": 0, "unordered": 0},
                "bold_count_a": {"**": 2, "__": 0}, "bold_count_b": {"**": int(i % 3), "__": 0},
            },
        }
        if prompts is not None:
            row["conversation_a"] = [{"role": "user", "content": prompts[i]}, {"role": "assistant", "content": "…"}]
        rows.append(row)
    return rows


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    migrate(url)
    yield url
    get_engine(url).dispose()


def invoke(*args: str, expect: int = 0) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


def battle_count(url: str) -> int:
    with session_factory(get_engine(url))() as session:
        return int(session.scalar(select(func.count(Battle.id))) or 0)


def test_example_file_imports_ranks_and_reimports_as_a_no_op(database: str, tmp_path: Path, artifacts_dir: Path):
    example = artifacts_dir / "clean_battle_example.json"
    example.write_text(json.dumps(clean_battle_rows(3000), indent=1))
    output = invoke("import", "battles", str(example), "--database-url", database)
    assert "import:clean_battle_example: 3000 rows, 3000 battles added" in output and "5 new models" in output
    again = invoke("import", "battles", str(example), "--database-url", database)
    assert "0 battles added, 3000 imported before" in again
    assert battle_count(database) == 3000
    sessions = session_factory(get_engine(database))
    with sessions() as session:
        battle = session.scalars(select(Battle)).first()
        assert battle is not None and battle.source == "import:clean_battle_example" and battle.style is not None
        assert set(battle.style["a"]) == {"tokens", "headers", "lists", "bold"}
        assert not any(m.active for m in session.scalars(select(Model))), "imported models are never sampled"
        assert session.scalar(select(func.count(Vote.id)).where(Vote.choice == "both_bad")) > 0
    assert "unknown source 'elsewhere'" in invoke("leaderboard", "compute", "--source", "elsewhere", "--url",
                                                  database, expect=2)
    invoke("leaderboard", "compute", "--rounds", "20", "--source", "imported", "--url", database)
    shown = json.loads(invoke("leaderboard", "show", "--output", "json", "--url", database))
    assert shown["vote_count"] == 3000
    order = [row["model"] for row in shown["rows"]]
    assert order[0] == "gpt-4-turbo" and order[-1] == "vicuna-13b"
    anchor = next(r for r in shown["rows"] if r["model"] == "mixtral-8x7b-instruct-v0.1")
    assert anchor["rating"] == 1114.0
    with sessions() as session:
        german = latest_view(session, "language:de")
        assert german.vote_count == 750 and not latest_view(session, style_control=True).empty


def test_lmarena_parquet_and_jsonl_layouts_share_battle_identity(database: str, tmp_path: Path):
    rows = clean_battle_rows(400, seed=1)
    for row in rows:  # the lmarena datasets carry the conversations and an ISO language code
        row["conversation_a"] = [{"role": "user", "content": f"prompt {row['question_id']}"}]
        row["language"] = "en"
    parquet = tmp_path / "arena-human-preference.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    assert "400 battles added" in invoke("import", "battles", str(parquet), "--database-url", database)
    jsonl = tmp_path / "arena-human-preference.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows[:100] + clean_battle_rows(50, seed=2)))
    output = invoke("import", "battles", str(jsonl), "--source", "hp-jsonl", "--database-url", database)
    assert "50 battles added, 100 imported before" in output
    with session_factory(get_engine(database))() as session:
        sources = dict(session.execute(select(Battle.source, func.count()).group_by(Battle.source)).all())
        assert sources == {"import:arena-human-preference": 400, "import:hp-jsonl": 50}
        hashed = session.scalar(select(func.count()).where(Battle.prompt_hash.is_not(None)))
        assert hashed == 400


def test_bad_rows_are_reported_by_line_and_nothing_is_written(database: str, tmp_path: Path):
    rows = clean_battle_rows(6)
    rows[2]["winner"] = "model_c"
    del rows[4]["tstamp"]
    lines = [json.dumps(r) for r in rows]
    lines.insert(1, "{not json")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    output = invoke("import", "battles", str(bad), "--database-url", database, expect=2)
    assert "3 bad rows in 7 rows, nothing imported" in output
    assert "line 2: invalid JSON" in output and "line 4: winner must be" in output and "line 6: tstamp" in output
    assert battle_count(database) == 0
    array = tmp_path / "bad.json"
    rows = clean_battle_rows(3)
    rows[1]["model_b"] = rows[1]["model_a"]
    array.write_text(json.dumps(rows))
    assert "row 2: model_a and model_b are the same" in invoke(
        "import", "battles", str(array), "--database-url", database, expect=2)
    csv_file = tmp_path / "battles.csv"
    csv_file.write_text("model_a,model_b\n")
    assert "unknown file type '.csv'" in invoke("import", "battles", str(csv_file), "--database-url", database,
                                                expect=2)


def test_conv_metadata_and_timestamps_are_validated(tmp_path: Path):
    good = clean_battle_rows(1)[0]
    for field, value, message in (
        ("tstamp", "yesterday", "not an ISO 8601 time"),
        ("tstamp", -5, "plausible Unix time"),
        ("turn", 0, "positive whole number"),
        ("anony", "yes", "true or false"),
        ("conv_metadata", {"sum_assistant_a_tokens": -3}, "non-negative count"),
    ):
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps([{**good, field: value}]))
        with pytest.raises(ImportFileError, match=message):
            parse_file(path)
    path = tmp_path / "iso.json"
    path.write_text(json.dumps([{**good, "tstamp": "2024-03-09T10:00:00Z"}]))
    assert parse_file(path).battles[0].voted_at == datetime(2024, 3, 9, 10, tzinfo=UTC)


def test_live_and_imported_votes_alone_or_together(db_sessions, tmp_path: Path):
    seed_votes(db_sessions, 60, seed=4)
    example = tmp_path / "clean_battle_small.json"
    example.write_text(json.dumps(clean_battle_rows(200)))
    result = store_battles(db_sessions, parse_file(example), "import:small")
    assert result.added == 200
    options = {"rounds": 10, "anomaly_min_votes": 1000}
    compute_leaderboards(db_sessions, LeaderboardOptions(**options, sources=("live",)))
    with db_sessions() as session:
        live = latest_view(session)
    assert live.vote_count == 60 and live.sources == {"live": 60}
    assert not {"gpt-4-turbo"} & {r["model"] for r in live.rows}
    compute_leaderboards(db_sessions, LeaderboardOptions(**options, sources=("imported",)))
    with db_sessions() as session:
        imported = latest_view(session)
    assert imported.vote_count == 200 and imported.sources == {"import:small": 200}
    compute_leaderboards(db_sessions, LeaderboardOptions(**options))
    with db_sessions() as session:
        both = latest_view(session)
    assert both.vote_count == 260 and both.sources == {"live": 60, "import:small": 200}


def test_top_prompts_are_downsampled_to_the_999th_percentile_count():
    prompts = pd.Series({f"b{i}": f"p{i}" for i in range(2000)}
                        | {f"hi{i}": "hi" for i in range(500)} | {f"t{i}": "test" for i in range(100)})
    dropped = downsampled_battles(prompts)
    assert len(dropped) == 499 + 99  # both kept at the 99.9th-percentile count, here 1
    assert dropped == downsampled_battles(prompts.sample(frac=1.0, random_state=3)), "the same on every run"
    assert not downsampled_battles(prompts.iloc[:900]), "too few distinct prompts for a top 0.1%"


def test_prompt_dedup_is_on_by_default_and_reported(db_sessions, tmp_path: Path):
    prompts = [f"question number {i}" for i in range(1100)] + ["hello"] * 300
    rows = clean_battle_rows(1400, seed=5, prompts=prompts)
    path = tmp_path / "repeated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store_battles(db_sessions, parse_file(path), "import:repeated")
    compute_leaderboards(db_sessions, LeaderboardOptions(rounds=10, anomaly_min_votes=1000))
    with db_sessions() as session:
        view = latest_view(session)
    assert view.exclusions["prompt_dedup"] == 299 and view.vote_count == 1101
    compute_leaderboards(db_sessions, LeaderboardOptions(rounds=10, anomaly_min_votes=1000, dedup_prompts=False))
    with db_sessions() as session:
        view = latest_view(session)
    assert view.exclusions["prompt_dedup"] == 0 and view.vote_count == 1400
