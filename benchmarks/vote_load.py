"""Vote latency under load: N concurrent visitors voting against the running app on PostgreSQL.

The app runs in its own process (uvicorn, as in production); this process plays the visitors
over real HTTP.  Each visitor owns finished battles (seeded straight into the database, so the
figure is the vote path, not model latency) and votes on them one after another with a think
time between votes (exponential, mean ``--think-s``); one vote in five is double-clicked (two
identical requests at once).  Before the clock starts every visitor has its connection open and
the server's database pool is warm (one unmeasured read per visitor), as in a running site.
Afterwards the database is checked: a vote acknowledged with 200 but absent is *lost*, a battle
with more than one vote row is *duplicated*.

    python benchmarks/vote_load.py --visitors 200 --votes-per-visitor 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena.cli import _alembic_config  # noqa: E402
from arena.db.models import Battle, BattleStatus, Model, Visitor, Vote  # noqa: E402
from arena.db.session import session_factory  # noqa: E402
from arena.identity import COOKIE_NAME, VisitorIdentity  # noqa: E402
from benchmarks.common import write_result  # noqa: E402

SECRET = "vote-load-benchmark"
MODELS = ("model-x", "model-y")


def fresh_database(admin_url: str, name: str) -> str:
    from alembic import command

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    command.upgrade(_alembic_config(url), "head")
    return url


def seed(url: str, visitors: int, battles_each: int) -> list[tuple[str, list[str]]]:
    """Visitors (cookie, battle ids), each with finished battles ready for a vote."""
    identity = VisitorIdentity(SECRET)
    engine = create_engine(url)
    plan = []
    with session_factory(engine).begin() as session:
        session.add_all(Model(name=m, model_id=m, base_url="http://unused/v1") for m in MODELS)
        cookies = [identity.new_cookie() for _ in range(visitors)]
        ids = [identity.visitor_id_from_cookie(c) or "" for c in cookies]
        session.add_all(Visitor(id=v) for v in ids)
        session.flush()
        for cookie, visitor in zip(cookies, ids, strict=True):
            battles = [Battle(model_a=MODELS[0], model_b=MODELS[1], visitor_id=visitor,
                              status=BattleStatus.READY, turn_count=1) for _ in range(battles_each)]
            session.add_all(battles)
            session.flush()
            plan.append((cookie, [b.id for b in battles]))
    engine.dispose()
    return plan


def start_app(url: str, port: int, registry: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ARENA_DATABASE_URL": url, "ARENA_MODELS_FILE": str(registry), "ARENA_SECRET_KEY": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "arena.web.app:create_app", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the app did not start")


async def visitor(base: str, cookie: str, battles: list[str], think_s: float, rng: random.Random,
                  latencies: list[float], acks: dict[str, str], errors: list[str], ready: asyncio.Barrier) -> None:
    limits = httpx.Limits(max_connections=4)
    async with httpx.AsyncClient(base_url=base, cookies={COOKIE_NAME: cookie}, timeout=30, limits=limits) as client:
        # Warm-up, not measured: the visitor has the page open (its connection exists) and the
        # server's database pool is filled, as in a running deployment.
        await client.get(f"/api/v1/battles/{battles[0]}")
        await ready.wait()
        await asyncio.sleep(rng.uniform(0, think_s))  # visitors vote at their own pace
        for battle_id in battles:
            choice = rng.choice(["a", "b", "tie", "both_bad"])
            clicks = 2 if rng.random() < 0.2 else 1  # a double click sends the same vote twice
            responses = await asyncio.gather(*(timed_vote(client, battle_id, choice, latencies) for _ in range(clicks)))
            for response in responses:
                if response.status_code == 200:
                    acks[battle_id] = response.json()["choice"]
                else:
                    errors.append(f"{response.status_code}: {response.text[:100]}")
            await asyncio.sleep(rng.expovariate(1 / think_s))


async def timed_vote(client: httpx.AsyncClient, battle_id: str, choice: str, latencies: list[float]) -> httpx.Response:
    started = time.perf_counter()
    response = await client.post(f"/api/v1/battles/{battle_id}/vote", json={"choice": choice})
    latencies.append((time.perf_counter() - started) * 1000)
    return response


def check(url: str, acks: dict[str, str], all_battles: list[str]) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as connection:
        stored = dict(connection.execute(select(Vote.battle_id, Vote.choice)).all())
        duplicated = connection.execute(
            select(func.count()).select_from(
                select(Vote.battle_id).group_by(Vote.battle_id).having(func.count() > 1).subquery()
            )
        ).scalar_one()
    engine.dispose()
    lost = sum(1 for battle, choice in acks.items() if stored.get(battle) != choice)
    return {"battles": len(all_battles), "acknowledged": len(acks), "stored": len(stored), "lost": lost,
            "duplicated": int(duplicated)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=200)
    parser.add_argument("--votes-per-visitor", type=int, default=10)
    parser.add_argument("--think-s", type=float, default=1.0, help="mean pause between a visitor's votes")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--result-name", default="vote_load", help="benchmarks/results/<name>.json")
    args = parser.parse_args()

    url = fresh_database(args.admin_url, "arena_bench_votes")
    plan = seed(url, args.visitors, args.votes_per_visitor)
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "models.toml"
        registry.write_text("".join(f'[[models]]\nname = "{m}"\nbase_url = "http://unused/v1"\n\n' for m in MODELS))
        app = start_app(url, args.port, registry)
        latencies: list[float] = []
        acks: dict[str, str] = {}
        errors: list[str] = []
        rng = random.Random(0)
        started = time.perf_counter()
        try:
            asyncio.run(run_visitors(f"http://127.0.0.1:{args.port}", plan, args.think_s, rng, latencies, acks, errors))
        finally:
            elapsed = time.perf_counter() - started
            app.terminate()
            app.wait(timeout=30)
    integrity = check(url, acks, [b for _, battles in plan for b in battles])
    quantiles = statistics.quantiles(latencies, n=100)
    summary = {
        "visitors": args.visitors, "votes_per_visitor": args.votes_per_visitor, "think_s": args.think_s,
        "requests": len(latencies), "elapsed_s": round(elapsed, 2), "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantiles[49], 2), "p95_ms": round(quantiles[94], 2), "p99_ms": round(quantiles[98], 2),
        "max_ms": round(max(latencies), 2), "http_errors": len(errors), **integrity,
    }
    print("| visitors | requests | req/s | p50 ms | p95 ms | p99 ms | lost | duplicated | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.visitors} | {summary['requests']} | {summary['requests_per_s']} | {summary['p50_ms']} | "
          f"{summary['p95_ms']} | {summary['p99_ms']} | {summary['lost']} | {summary['duplicated']} | {len(errors)} |")
    print(f"goal: p95 < 50 ms, 0 lost, 0 duplicated -> "
          f"{'met' if summary['p95_ms'] < 50 and not summary['lost'] and not summary['duplicated'] else 'NOT met'}")
    path = write_result(args.result_name, {"benchmark": "vote_load", "database": "postgresql", "summary": summary,
                                      "error_samples": errors[:5]})
    print(f"wrote {path}")


async def run_visitors(base: str, plan: list[tuple[str, list[str]]], think_s: float, rng: random.Random,
                       latencies: list[float], acks: dict[str, str], errors: list[str]) -> None:
    ready = asyncio.Barrier(len(plan))
    await asyncio.gather(*(visitor(base, cookie, battles, think_s, random.Random(rng.random()), latencies, acks,
                                   errors, ready) for cookie, battles in plan))


if __name__ == "__main__":
    main()
