"""End-to-end exports from the real SQLite and PostgreSQL databases seeded in conftest.py."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from arena.db.session import get_engine
from arena.export import battles, conversations
from arena.export.cleaning import CleanerConfig
from arena.export.cli import app
from arena.export.dedup import DedupConfig
from arena.export.pipeline import DatasetSpec, ExportOptions, ExportResult, run_export
from arena.export.release import Anonymizer, ExportError, ExportFilters, ReleasePolicy, derive_release_key
from arena.export.writer import STATE_DIR
from tests.conftest import REPO_ROOT
from tests.export.conftest import COOKIES, RAW_IPS, RELEASABLE, Seed

WORDLIST = str(REPO_ROOT / "data" / "moderation_words.txt")
KEY = derive_release_key("export-test-secret", "2026-test")


def export(url: str, spec: DatasetSpec, out: Path, key: bytes = KEY, **options: Any) -> ExportResult:
    options.setdefault("cleaner", CleanerConfig(moderation="wordlist", wordlist=WORDLIST))
    options.setdefault("progress", False)
    return run_export(spec, get_engine(url), ExportOptions(out=out, **options), Anonymizer(key))


def rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "data")


def contents(conversation: Any) -> str:
    return "\n".join(message["content"] for message in conversation)


def test_conversations_export_is_complete_clean_and_loadable(
    seeded: tuple[str, Seed], tmp_path: Path
) -> None:
    url, seed = seeded
    out = tmp_path / "conversations"
    result = export(url, conversations.CONVERSATIONS, out)
    assert result.complete
    table = pq.read_table(out / "data")
    assert table.schema.remove_metadata() == conversations.SCHEMA.remove_metadata()
    df = table.to_pandas()
    assert len(df) == seed.releasable_conversations - seed.duplicate_conversations == result.rows_written
    assert set(df.model) == RELEASABLE
    assert result.stats["dropped"] == {"min_turns": 0, "exact_duplicate": 12, "near_duplicate": 1}
    # JSONL holds the same rows.
    jsonl = [json.loads(line) for path in sorted((out / "jsonl").glob("*.jsonl")) for line in path.open()]
    assert sorted(r["conversation_id"] for r in jsonl) == sorted(df.conversation_id)
    # Redaction, language, moderation, coarse timestamps, anonymous visitors.
    texts = df.conversation.map(contents)
    pii_row = df[texts.str.contains("NAME_1")].iloc[0]
    assert pii_row.redacted and pii_row.turn == 2
    assert "EMAIL_1" in contents(pii_row.conversation) and "CARD_1" in contents(pii_row.conversation)
    assert "Alice" not in contents(pii_row.conversation)
    assert df[texts.str.contains("photosynthèse")].language.tolist() == ["French"]
    assert df[texts.str.contains("Deutsch")].language.tolist() == ["German"]
    bomb = df[texts.str.contains("bomb")].iloc[0]
    assert bomb.moderation[0]["flagged"] and "violence" in list(bomb.moderation[0]["categories"])
    assert (df.timestamp.dt.hour == 0).all() and (df.timestamp.dt.minute == 0).all()
    assert not set(df.visitor_id) & set(seed.visitor_ids)
    # Card, plots and manifest.
    card = (out / "README.md").read_text()
    assert "### Per model" in card and "### Per language" in card and "| open-a |" in card
    assert "closed-no" not in card and "open-blocked" not in card
    assert card.startswith("---\n") and "\n- en\n- fr\n" in card  # HF metadata: ISO language codes
    assert (out / "plots" / "models.png").stat().st_size > 1000
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} >= {
        "README.md",
        "data/train-00000.parquet",
        "plots/languages.png",
    }
    for entry in manifest["files"]:
        assert hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert not any(f["path"].startswith(STATE_DIR) for f in manifest["files"])


def test_battles_export(seeded: tuple[str, Seed], tmp_path: Path) -> None:
    url, seed = seeded
    out = tmp_path / "battles"
    export(url, battles.BATTLES, out)
    df = rows(out)
    assert (
        pq.read_schema(out / "data" / "train-00000.parquet").remove_metadata()
        == battles.SCHEMA.remove_metadata()
    )
    assert len(df) == 3  # closed-no battle and the unvoted one are not released
    by_winner = {row.winner: row for row in df.itertuples()}
    assert set(by_winner) == {"model_a", "tie", "tie (bothbad)"}
    assert (by_winner["model_a"].model_a, by_winner["model_a"].model_b) == ("open-a", "open-b")
    assert list(by_winner["model_a"].tags) == ["math"]
    assert by_winner["tie"].flags["identity_revealed"] and not by_winner["model_a"].flags["identity_revealed"]
    bothbad = by_winner["tie (bothbad)"]
    assert bothbad.flags["anomalous_voter"]  # visitor 3 is marked anomalous
    assert bothbad.redacted
    assert contents(bothbad.conversation_a).startswith("My email is EMAIL_1 and my IP is IP_1")
    assert "EMAIL_1" in contents(bothbad.conversation_b)  # same placeholder on both sides
    assert not set(df.judge) & set(seed.visitor_ids)
    assert "### Outcomes" in (out / "README.md").read_text()


def test_filters_date_model_license_and_min_turns(seeded: tuple[str, Seed], tmp_path: Path) -> None:
    url, _ = seeded
    no_dedup = {"dedup": DedupConfig(enabled=False)}
    dated = rows_of(
        export(
            url,
            conversations.CONVERSATIONS,
            tmp_path / "d",
            filters=ExportFilters(date(2026, 3, 2), date(2026, 3, 3)),
            **no_dedup,
        )
    )
    assert sorted(dated.timestamp.dt.day.unique()) == [2, 3]
    only_a = rows_of(
        export(
            url,
            conversations.CONVERSATIONS,
            tmp_path / "m",
            filters=ExportFilters(models=("open-a",)),
            **no_dedup,
        )
    )
    assert set(only_a.model) == {"open-a"}
    multi = rows_of(
        export(
            url, conversations.CONVERSATIONS, tmp_path / "t", filters=ExportFilters(min_turns=2), **no_dedup
        )
    )
    assert sorted(multi.turn) == [2, 3]
    mit = rows_of(
        export(url, conversations.CONVERSATIONS, tmp_path / "l", policy=ReleasePolicy(("MIT",)), **no_dedup)
    )
    # closed-ok is tagged release-ok; open-blocked is MIT but tagged no-release
    assert set(mit.model) == {"open-b", "closed-ok"}
    everything = rows_of(
        export(
            url,
            conversations.CONVERSATIONS,
            tmp_path / "all",
            policy=ReleasePolicy(enforce=False),
            **no_dedup,
        )
    )
    assert {"closed-no", "open-blocked"} <= set(everything.model)
    with pytest.raises(ExportError, match="unknown model"):
        export(url, conversations.CONVERSATIONS, tmp_path / "x", filters=ExportFilters(models=("nope",)))


def rows_of(result: ExportResult) -> pd.DataFrame:
    return rows(result.out)


def test_interrupted_export_resumes_to_the_same_result(seeded: tuple[str, Seed], tmp_path: Path) -> None:
    url, _ = seeded
    small = {"batch_size": 4, "shard_size": 4}
    reference = rows(export(url, conversations.CONVERSATIONS, tmp_path / "ref", **small).out)

    out = tmp_path / "resumed"
    first = export(url, conversations.CONVERSATIONS, out, max_batches=3, **small)
    assert not first.complete and first.shards >= 1
    finished_shards = sorted((out / "data").glob("*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in finished_shards}
    (out / "data" / "train-00099.parquet.tmp").write_bytes(b"partial shard from a crash")
    with pytest.raises(ExportError, match="different options"):
        export(url, conversations.CONVERSATIONS, out, filters=ExportFilters(min_turns=2), **small)
    with pytest.raises(ExportError, match="different options"):
        export(url, conversations.CONVERSATIONS, out, key=b"another key", **small)

    second = export(url, conversations.CONVERSATIONS, out, **small)
    assert second.complete
    assert all(p.stat().st_mtime_ns == stamps[p] for p in finished_shards)  # finished shards were skipped
    assert not list(out.rglob("*.tmp"))
    resumed = rows(out)
    key = ["conversation_id"]
    pd.testing.assert_frame_equal(
        resumed.sort_values(key).reset_index(drop=True), reference.sort_values(key).reset_index(drop=True)
    )
    assert export(url, conversations.CONVERSATIONS, out, **small).complete  # a third run has nothing to do


def test_release_keys_rotate_ids(seeded: tuple[str, Seed], tmp_path: Path) -> None:
    url, _ = seeded
    one = rows(export(url, conversations.CONVERSATIONS, tmp_path / "r1").out)
    again = rows(export(url, conversations.CONVERSATIONS, tmp_path / "r1b").out)
    other = rows(
        export(
            url,
            conversations.CONVERSATIONS,
            tmp_path / "r2",
            key=derive_release_key("export-test-secret", "next"),
        ).out
    )
    assert set(one.visitor_id) == set(again.visitor_id)
    assert not set(one.visitor_id.dropna()) & set(other.visitor_id.dropna())
    assert not set(one.conversation_id) & set(other.conversation_id)


def test_no_ip_cookie_or_database_id_appears_in_any_output_byte(
    seeded: tuple[str, Seed], tmp_path: Path
) -> None:
    url, seed = seeded
    outs = [
        export(url, conversations.CONVERSATIONS, tmp_path / "c", time_granularity="hour").out,
        export(url, battles.BATTLES, tmp_path / "b").out,
        export(url, conversations.CONVERSATIONS, tmp_path / "all", policy=ReleasePolicy(enforce=False)).out,
    ]
    markers = [m.encode() for m in seed.markers]
    assert len(markers) > 40 and any(m == RAW_IPS[0].encode() for m in markers) and COOKIES
    scanned = 0
    for out in outs:
        for path in out.rglob("*"):
            if not path.is_file():
                continue
            blobs = [path.read_bytes()]
            if path.suffix == ".parquet":  # compressed: scan the decoded values too
                blobs.append(pq.read_table(path).to_pandas().to_json(force_ascii=False).encode())
            for blob in blobs:
                scanned += len(blob)
                leaked = [m.decode() for m in markers if m in blob or m.lower() in blob.lower()]
                assert not leaked, f"{path} leaks {leaked}"
    assert scanned > 50_000
    text = rows(outs[2]).conversation.map(contents).str.cat()
    assert "Secret answer." in text and "IP_1" in text  # the scan looked at real content


def test_cli_exports_with_worker_processes(export_sqlite: tuple[str, Seed], tmp_path: Path) -> None:
    url, seed = export_sqlite
    runner = CliRunner()
    out = tmp_path / "cli"
    env = {"ARENA_MODERATION_WORDLIST": WORDLIST, "ARENA_SECRET_KEY": "cli-secret"}
    args = [
        "conversations",
        "--out",
        str(out),
        "--database-url",
        url,
        "--no-progress",
        "--workers",
        "1",
        "--release",
        "r1",
    ]
    from arena.config import get_settings

    get_settings.cache_clear()
    try:
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert "rows written" in result.output
        assert len(rows(out)) == seed.releasable_conversations - seed.duplicate_conversations
        bad = runner.invoke(
            app,
            [
                "battles",
                "--out",
                str(tmp_path / "bad"),
                "--database-url",
                url,
                "--since",
                "2026-03-05",
                "--until",
                "2026-03-01",
            ],
            env=env,
        )
        assert bad.exit_code == 2 and "after --until" in " ".join(bad.output.split())
        clash = runner.invoke(
            app, ["battles", "--out", str(out), "--database-url", url, "--no-progress"], env=env
        )
        assert clash.exit_code == 2 and "holds a conversations export" in " ".join(clash.output.split())
    finally:
        get_settings.cache_clear()


def test_the_count_announced_is_the_count_read(tmp_path: Path) -> None:
    """A battle created but never played has two empty conversations: they are neither read nor
    counted in "N conversations to read" (which said 21, then "rows read 18")."""
    from arena.db.models import Battle, Conversation, Message, Model
    from arena.db.session import session_factory
    from arena.export.source import ConversationSource
    from tests.conftest import migrate

    url = f"sqlite:///{tmp_path / 'count.db'}"
    migrate(url)
    engine = get_engine(url)
    with session_factory(engine).begin() as session:
        session.add_all([Model(name=n, model_id=n, base_url="http://x/v1") for n in ("m1", "m2")])
        session.flush()
        session.add(Battle(id="unplayed", model_a="m1", model_b="m2"))
        session.flush()
        session.add_all([Conversation(id=f"unplayed-{s}", model_name=m, battle_id="unplayed", side=s)
                         for s, m in (("a", "m1"), ("b", "m2"))])
        session.add(Conversation(id="chat", model_name="m1"))
        session.flush()
        session.add(Message(conversation_id="chat", position=0, turn=1, role="user", content="hello"))
    source = ConversationSource(engine, ExportFilters(), ["m1", "m2"])
    read = [unit for batch in source.batches(None, 10) for unit in batch]
    assert source.count() == len(read) == 1
