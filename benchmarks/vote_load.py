"""Vote latency under load: N concurrent visitors voting against the running app on PostgreSQL.

The app runs in its own process (uvicorn, as in production); this process plays the visitors
over real HTTP.  Each visitor owns finished battles (seeded straight into the database, so the
figure is the vote path, not model latency) and votes on them one after another with a think
time between votes (exponential, mean ``--think-s``); one vote in five is double-clicked (two
identical requests at once).  Before the clock starts every visitor has its connection open and
the server's database pool is warm (one unmeasured read per visitor), as in a running site.
Afterwards the database is checked: a vote acknowledged with 200 but absent is *lost*, a battle
with more than one vote row is *duplicated*.

With ``--outage-s`` the app reaches PostgreSQL through a TCP proxy that, ``--outage-at-s`` into
the load, drops every database connection and refuses new ones for that long (a database
restart, as the app sees it, without touching the shared server).  Visitors retry a refused
vote after its ``Retry-After`` (at most 1 s), as the page does.  Reported: errors during the
outage (and whether each was the documented 503), the time from the database's return to the
first acknowledged vote, and acknowledged votes against stored rows.  Last, one turn is sent
while another connection holds a lock on ``battles``, and ``/healthz`` latency is measured
while that turn waits (the event loop must stay free).

    python benchmarks/vote_load.py --visitors 200 --votes-per-visitor 10 --outage-s 8
    python benchmarks/vote_load.py --quick            # small CPU check, a few seconds of load
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
from tests.servers import TcpProxy  # noqa: E402

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


class Outage:
    """When the database was cut and restored (perf_counter seconds), and what visitors saw meanwhile."""

    def __init__(self) -> None:
        self.cut_at: float | None = None
        self.restored_at: float | None = None
        self.first_ack_after: float | None = None
        self.statuses: dict[str, int] = {}

    def note(self, response: httpx.Response | None, at: float) -> None:
        if self.cut_at is None or at < self.cut_at:
            return
        if response is not None and response.status_code == 200:
            if self.restored_at is not None and self.first_ack_after is None and at >= self.restored_at:
                self.first_ack_after = at
            return
        key = "connection error" if response is None else str(response.status_code)
        self.statuses[key] = self.statuses.get(key, 0) + 1


async def visitor(base: str, cookie: str, battles: list[str], think_s: float, rng: random.Random,
                  latencies: list[float], acks: dict[str, str], errors: list[str], ready: asyncio.Barrier,
                  outage: Outage) -> None:
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
            responses = await asyncio.gather(*(voted(client, battle_id, choice, latencies, errors, outage)
                                               for _ in range(clicks)))
            for response in responses:
                if response is not None:
                    acks[battle_id] = response.json()["choice"]
            await asyncio.sleep(rng.expovariate(1 / think_s))


async def voted(client: httpx.AsyncClient, battle_id: str, choice: str, latencies: list[float], errors: list[str],
                outage: Outage, attempts: int = 60) -> httpx.Response | None:
    """The vote, retried after a refusal (Retry-After, at most 1 s) as the page does; None if never acknowledged."""
    for _ in range(attempts):
        response: httpx.Response | None
        started = time.perf_counter()
        try:
            response = await client.post(f"/api/v1/battles/{battle_id}/vote", json={"choice": choice})
        except httpx.HTTPError as exc:
            response = None
            errors.append(f"connection: {type(exc).__name__}")
        finished = time.perf_counter()
        outage.note(response, finished)
        if response is not None and response.status_code == 200:
            latencies.append((finished - started) * 1000)
            return response
        if response is not None:
            errors.append(f"{response.status_code}: {response.text[:100]}")
            if response.status_code not in (503, 500):
                return None  # a refusal that a retry cannot change (409 ...)
        retry_after = float(response.headers.get("Retry-After", 1)) if response is not None else 1.0
        await asyncio.sleep(min(retry_after, 1.0))
    return None


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
    parser.add_argument("--outage-s", type=float, default=0.0, help="cut the database this long mid-load (0: none)")
    parser.add_argument("--outage-at-s", type=float, default=5.0, help="when the outage starts, after the clock")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop the load after this long")
    parser.add_argument("--quick", action="store_true", help="small CPU run: 20 visitors x 5 votes, 2 s outage")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--result-name", default="vote_load", help="benchmarks/results/<name>.json")
    args = parser.parse_args()
    if args.quick:
        args.visitors, args.votes_per_visitor, args.think_s = 20, 5, 0.5
        args.outage_s, args.outage_at_s = args.outage_s or 2.0, 1.0

    url = fresh_database(args.admin_url, "arena_bench_votes")
    plan = seed(url, args.visitors, args.votes_per_visitor)
    target = make_url(url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432) if args.outage_s else None
    app_url = target.set(port=proxy.port).render_as_string(hide_password=False) if proxy else url
    outage = Outage()
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "models.toml"
        registry.write_text("".join(f'[[models]]\nname = "{m}"\nbase_url = "http://unused/v1"\n\n' for m in MODELS))
        app = start_app(app_url, args.port, registry)
        latencies: list[float] = []
        acks: dict[str, str] = {}
        errors: list[str] = []
        rng = random.Random(0)
        started = time.perf_counter()
        try:
            asyncio.run(run_load(f"http://127.0.0.1:{args.port}", plan, args, rng, latencies, acks, errors,
                                 proxy, outage))
            elapsed = time.perf_counter() - started
            locked = asyncio.run(health_while_locked(f"http://127.0.0.1:{args.port}", url, plan[0]))
        finally:
            app.terminate()
            app.wait(timeout=30)
            if proxy:
                proxy.close()
    integrity = check(url, acks, [b for _, battles in plan for b in battles])
    summary = summarize(args, latencies, elapsed, errors, integrity, outage, locked)
    print_table(summary)
    path = write_result(args.result_name, {"benchmark": "vote_load", "database": "postgresql",
                                           "outage": "TCP proxy drops and refuses every database connection"
                                           if args.outage_s else None,
                                           "load_average_1m": round(os.getloadavg()[0], 1),  # a shared machine
                                           "summary": summary, "error_samples": sorted(set(errors))[:5]})
    print(f"wrote {path}")


def summarize(args: argparse.Namespace, latencies: list[float], elapsed: float, errors: list[str],
              integrity: dict[str, int], outage: Outage, locked: dict[str, float]) -> dict[str, object]:
    quantiles = statistics.quantiles(latencies, n=100)
    recovery = (round(outage.first_ack_after - outage.restored_at, 3)
                if outage.first_ack_after is not None and outage.restored_at is not None else None)
    return {
        "visitors": args.visitors, "votes_per_visitor": args.votes_per_visitor, "think_s": args.think_s,
        "requests": len(latencies), "elapsed_s": round(elapsed, 2), "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantiles[49], 2), "p95_ms": round(quantiles[94], 2), "p99_ms": round(quantiles[98], 2),
        "max_ms": round(max(latencies), 2), "http_errors": len(errors), **integrity,
        "outage_s": args.outage_s, "errors_during_outage": outage.statuses,
        "recovery_s": recovery, **locked,
    }


def print_table(summary: dict[str, object]) -> None:
    print("| visitors | acked | stored | lost | duplicated | p50 ms | p95 ms | outage s | errors in outage "
          "| recovery s | /healthz p50 / max ms while a turn waits on a lock |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    print(f"| {summary['visitors']} | {summary['acknowledged']} | {summary['stored']} | {summary['lost']} | "
          f"{summary['duplicated']} | {summary['p50_ms']} | {summary['p95_ms']} | {summary['outage_s']} | "
          f"{summary['errors_during_outage']} | {summary['recovery_s']} | "
          f"{summary['healthz_locked_p50_ms']} / {summary['healthz_locked_max_ms']} |")
    ok = not summary["lost"] and not summary["duplicated"] and summary["acknowledged"] == summary["battles"]
    print(f"every vote acknowledged once and stored, none duplicated -> {'met' if ok else 'NOT met'}")


async def run_load(base: str, plan: list[tuple[str, list[str]]], args: argparse.Namespace, rng: random.Random,
                   latencies: list[float], acks: dict[str, str], errors: list[str], proxy: TcpProxy | None,
                   outage: Outage) -> None:
    load = asyncio.ensure_future(run_visitors(base, plan, args.think_s, rng, latencies, acks, errors, outage))
    if proxy is not None:
        await asyncio.sleep(args.outage_at_s)
        outage.cut_at = time.perf_counter()
        proxy.cut()
        await asyncio.sleep(args.outage_s)
        proxy.restore()
        outage.restored_at = time.perf_counter()
    try:
        await asyncio.wait_for(load, timeout=args.budget_s)
    except TimeoutError:
        print(f"budget of {args.budget_s:.0f} s spent; the load was stopped")


async def health_while_locked(base: str, url: str, owner: tuple[str, list[str]], probes: int = 20) -> dict[str, float]:
    """``/healthz`` latency while one turn waits on a table lock held by another connection."""
    cookie, battles = owner
    locker = create_engine(url).connect()
    locker.begin()
    locker.execute(text("LOCK TABLE battles IN ACCESS EXCLUSIVE MODE"))
    async with httpx.AsyncClient(base_url=base, cookies={COOKIE_NAME: cookie}, timeout=120) as client:
        turn = asyncio.ensure_future(client.post(f"/api/v1/battles/{battles[-1]}/turns", json={"prompt": "hello"}))
        waiting = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        with create_engine(url).connect() as watcher:
            while watcher.execute(waiting).scalar_one() == 0:
                await asyncio.sleep(0.05)
        samples = []
        for _ in range(probes):
            started = time.perf_counter()
            await client.get("/healthz")
            samples.append((time.perf_counter() - started) * 1000)
        turn_waiting = not turn.done()
        locker.rollback()
        locker.close()
        await turn
    return {"healthz_locked_p50_ms": round(statistics.median(samples), 2),
            "healthz_locked_max_ms": round(max(samples), 2), "turn_still_waiting_while_probed": turn_waiting}


async def run_visitors(base: str, plan: list[tuple[str, list[str]]], think_s: float, rng: random.Random,
                       latencies: list[float], acks: dict[str, str], errors: list[str], outage: Outage) -> None:
    ready = asyncio.Barrier(len(plan))
    await asyncio.gather(*(visitor(base, cookie, battles, think_s, random.Random(rng.random()), latencies, acks,
                                   errors, ready, outage) for cookie, battles in plan))


if __name__ == "__main__":
    main()
