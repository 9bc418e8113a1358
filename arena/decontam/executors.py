"""Where chunks are scanned: in this process, in a pool of local processes, or on a Ray cluster.

Every executor takes an iterator of ``(chunk index, records)`` and calls ``on_result`` as chunks finish (in
any order). At most a few chunks per worker are in flight, so memory stays flat however long the corpus is:
the reader never runs far ahead of the workers.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from arena.decontam.embedding import Embedder
from arena.decontam.records import Record
from arena.decontam.scanner import BenchmarkPayload, ChunkResult, Scanner

logger = logging.getLogger(__name__)

ChunkIter = Iterator[tuple[int, list[Record]]]
OnResult = Callable[[ChunkResult], None]
IN_FLIGHT_PER_WORKER = 2

# Per-process worker state: the scanner that a pool worker builds once in its initializer. It lives in
# worker processes only (the main process never sets it) and holds no request state.
_WORKER_SCANNER: Scanner | None = None


def run_local(
    payload: BenchmarkPayload, chunks: ChunkIter, on_result: OnResult, embedder: Embedder | None = None
) -> None:
    """Scan every chunk in this process (one worker; also what tests and small runs use).

    The scanner is built on the first chunk that needs scanning, so a fully resumed scan loads no model.
    """
    scanner: Scanner | None = None
    for index, records in chunks:
        scanner = scanner or Scanner(payload, embedder=embedder)
        on_result(scanner.scan(index, records))


def _init_worker(payload: BenchmarkPayload) -> None:
    global _WORKER_SCANNER
    logging.basicConfig(level=logging.WARNING)
    _WORKER_SCANNER = Scanner(payload)


def _scan_in_worker(index: int, records: list[Record]) -> ChunkResult:
    assert _WORKER_SCANNER is not None, "worker was not initialized"
    return _WORKER_SCANNER.scan(index, records)


def run_processes(payload: BenchmarkPayload, chunks: ChunkIter, on_result: OnResult, workers: int) -> None:
    """Scan chunks in ``workers`` local processes (spawned, so torch and faiss start clean in each)."""
    context = multiprocessing.get_context("spawn")
    limit = workers * IN_FLIGHT_PER_WORKER
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(payload,)) as pool:
        pending: set[Future[ChunkResult]] = set()
        for index, records in chunks:
            pending.add(pool.submit(_scan_in_worker, index, records))
            if len(pending) >= limit:
                pending = _drain(pending, on_result, FIRST_COMPLETED)
        _drain(pending, on_result, "ALL_COMPLETED")


def _drain(pending: set[Future[ChunkResult]], on_result: OnResult, how: str) -> set[Future[ChunkResult]]:
    done, still_pending = wait(pending, return_when=how)
    for future in done:
        on_result(future.result())
    return set(still_pending)


def run_ray(
    payload: BenchmarkPayload, chunks: ChunkIter, on_result: OnResult, workers: int, address: str | None = None
) -> None:
    """Scan chunks on Ray actors (each builds the benchmark side once), ``address`` naming a running cluster.

    Without an address, an already initialized Ray is used, else a local instance is started.
    """
    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else workers, log_to_driver=False)
    actor_class: Any = ray.remote(num_cpus=1)(_RayScanActor)
    payload_ref = ray.put(payload)
    pool = ActorPool([actor_class.remote(payload_ref) for _ in range(workers)])
    limit = workers * IN_FLIGHT_PER_WORKER
    in_flight = 0
    for index, records in chunks:
        pool.submit(lambda actor, job: actor.scan.remote(*job), (index, records))
        in_flight += 1
        if in_flight >= limit:
            on_result(pool.get_next_unordered())
            in_flight -= 1
    while pool.has_next():
        on_result(pool.get_next_unordered())


class _RayScanActor:
    """A Ray actor holding one :class:`Scanner`."""

    def __init__(self, payload: BenchmarkPayload):
        self._scanner = Scanner(payload)

    def scan(self, index: int, records: list[Record]) -> ChunkResult:
        return self._scanner.scan(index, records)
