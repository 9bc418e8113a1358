"""The engine over HTTP (the way the arena reaches it) vs the same engine in process.

One engine with dummy (random) weights in a real configuration (Qwen3-0.6B by default,
Llama-3.1-8B), bf16, detokenizing, prefix cache off (both sides run the same prompts). For each
concurrency C (1, 16, 64, 256) and the same prompts (256-512 tokens, 128 output tokens each,
2 x C requests, EOS ignored):

* ``in-process``: C asyncio tasks in this process, each running its requests one after the
  other through ``AsyncEngine.generate`` (what the server calls);
* ``http``: the OpenAI server of ``serving/server.py`` (uvicorn, in this process, as
  ``arena-serve`` runs it) and C streaming clients (``/v1/completions``, SSE) spread over
  separate client processes (``benchmarks/http_clients.py``, at most ``--client-processes``),
  each client running its requests one after the other.

Reported: output tokens/s (all tokens over first request start to last request end), TTFT and
inter-token latency (between content chunks) p50/p99, and HTTP / in-process throughput.

Run (needs fastapi, uvicorn and prometheus_client, as the server does, and httpx for the
clients)::

    python benchmarks/serving_http.py --model qwen3-0.6b --out $OUT

``--quick`` runs tiny shapes on the CPU to check the script (results ``serving_http_cpu.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.radix import dummy_model, percentile  # noqa: E402
from benchmarks.serving_throughput import CONFIGS, Deadline, machine_info, make_checkpoint_dir, make_prompts  # noqa: E402
from serving.async_engine import AsyncEngine  # noqa: E402
from serving.config import EngineConfig  # noqa: E402
from serving.engine import Engine  # noqa: E402
from serving.sampling import SamplingParams  # noqa: E402
from serving.sequence import GenerationRequest  # noqa: E402

logger = logging.getLogger("serving_http")
MODEL_NAME = "bench"


def summarize(records: list[dict]) -> dict:
    """Throughput and latency percentiles of per-request records (times in seconds)."""
    start = min(r["start"] for r in records)
    end = max(r["end"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    ttft = [1000 * (r["first"] - r["start"]) for r in records]
    itl = [1000 * gap for r in records for gap in r["itl"]]
    return {
        "requests": len(records),
        "output_tokens": tokens,
        "seconds": end - start,
        "output_tokens_per_s": tokens / (end - start),
        "ttft_p50_ms": percentile(ttft, 0.5),
        "ttft_p99_ms": percentile(ttft, 0.99),
        "itl_p50_ms": percentile(itl, 0.5),
        "itl_p99_ms": percentile(itl, 0.99),
    }


async def in_process(engine: AsyncEngine, prompts: list[list[int]], concurrency: int, max_tokens: int) -> list[dict]:
    """``concurrency`` tasks each running requests one after the other through the async engine."""
    pending = list(prompts)
    records: list[dict] = []
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)

    async def worker(worker_id: int) -> None:
        count = 0
        while pending:
            prompt = pending.pop()
            request = GenerationRequest(f"w{worker_id}-{count}", prompt, params)
            count += 1
            start, first, chunk_times, tokens = time.time(), None, [], 0
            async for output in engine.generate(request):
                tokens = output.num_output_tokens
                if output.text:
                    now = time.time()
                    first = first or now
                    chunk_times.append(now)
            end = time.time()
            gaps = [b - a for a, b in zip(chunk_times, chunk_times[1:], strict=False)]
            records.append({"start": start, "first": first or end, "end": end, "itl": gaps, "tokens": tokens})

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return records


def over_http(base_url: str, prompts: list[list[int]], concurrency: int, max_tokens: int, processes: int,
              workdir: Path) -> list[dict]:  # fmt: skip
    """Spread ``concurrency`` streaming clients over client processes; collect their records."""
    processes = max(1, min(processes, concurrency))
    start_at = time.time() + 3.0  # every process has imported httpx and connected by then
    commands = []
    for index in range(processes):
        share = concurrency // processes + (index < concurrency % processes)
        job = {
            "base_url": base_url,
            "model": MODEL_NAME,
            "start_at": start_at,
            "concurrency": share,
            "max_tokens": max_tokens,
            "prompts": prompts[index::processes],
        }
        job_file = workdir / f"clients-{concurrency}-{index}.json"
        job_file.write_text(json.dumps(job))
        commands.append([sys.executable, str(REPO_ROOT / "benchmarks" / "http_clients.py"), str(job_file)])
    running = [subprocess.Popen(c, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
               for c in commands]  # fmt: skip
    records: list[dict] = []
    for process in running:
        out, _ = process.communicate(timeout=900)
        if process.returncode != 0:
            raise RuntimeError(f"a client process failed with code {process.returncode}")
        records += json.loads(out)
    return records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """The FastAPI app of serving/server.py under uvicorn in a thread (as arena-serve runs it)."""

    def __init__(self, engine: AsyncEngine) -> None:
        import uvicorn

        from serving.server import create_app  # fastapi, pydantic, prometheus_client: the server's own needs

        self.port = free_port()
        config = uvicorn.Config(create_app({MODEL_NAME: engine}), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def print_table(report: dict) -> None:
    rows = report["results"]
    local = {r["concurrency"]: r for r in rows if r["side"] == "in-process" and "output_tokens_per_s" in r}
    print(f"\n{report['model']}, prompts {report['prompt_range']}, {report['output_len']} output tokens")
    print(f"{'C':>4} {'side':<10} {'req':>4} {'out tok/s':>10} {'http/in':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'ITL p50':>8} {'ITL p99':>8}  (ms)")  # fmt: skip
    for r in rows:
        if "output_tokens_per_s" not in r:
            print(f"{r['concurrency']:>4} {r['side']:<10} {r.get('skipped') or r.get('error')}")
            continue
        base = local.get(r["concurrency"], {}).get("output_tokens_per_s")
        ratio = f"{r['output_tokens_per_s'] / base:7.3f}" if base and r["side"] == "http" else f"{'':>7}"
        print(f"{r['concurrency']:>4} {r['side']:<10} {r['requests']:>4} {r['output_tokens_per_s']:10.1f} {ratio} "
              f"{r['ttft_p50_ms']:9.1f} {r['ttft_p99_ms']:9.1f} {r['itl_p50_ms']:8.2f} {r['itl_p99_ms']:8.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["qwen3-0.6b", "llama-3.1-8b"], default="qwen3-0.6b")
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--prompt-min", type=int, default=256)
    parser.add_argument("--prompt-max", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--client-processes", type=int, default=8)
    parser.add_argument("--kv-memory-gb", type=float, default=24.0)
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting measurements after this")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (checks the script)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    deadline = Deadline(args.budget_s)
    device = "cpu" if args.quick else "cuda"
    dtype = torch.float32 if args.quick else torch.bfloat16
    model_name = "smoke" if args.quick else args.model
    levels = [1, 4] if args.quick else [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        args.prompt_min, args.prompt_max, args.output_len, args.client_processes = 16, 48, 8, 2
    config = CONFIGS[model_name]()
    max_context = args.prompt_max + args.output_len + 8
    report: dict = {
        "model": model_name,
        "machine": machine_info(device),
        "prompt_range": [args.prompt_min, args.prompt_max],
        "output_len": args.output_len,
        "results": [],
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / ("serving_http_cpu.json" if args.quick else f"serving_http_{model_name}.json")

    def save() -> None:
        out_file.write_text(json.dumps(report, indent=2))

    with tempfile.TemporaryDirectory() as workdir:
        path = make_checkpoint_dir(config, Path(workdir))
        engine_config = EngineConfig(
            str(path),
            device=device,
            dtype=str(dtype).removeprefix("torch."),
            max_context=max_context,
            max_running=max(levels),
            max_batch_tokens=8192,
            kv_memory_gb=0.25 if args.quick else args.kv_memory_gb,
            prefix_cache=False,  # both sides run the same prompts
        )
        engine = AsyncEngine(Engine(engine_config, model=dummy_model(config, device, dtype, max_context)), MODEL_NAME)
        try:
            warm = make_prompts(8, config.vocab_size, args.prompt_min, args.prompt_max, seed=0)
            asyncio.run(in_process(engine, warm, 8, 4))  # Triton compiles on first use
            with ServerThread(engine) as base_url:
                for concurrency in levels:
                    count = max(args.requests_per_client * concurrency, 4)
                    prompts = make_prompts(count, config.vocab_size, args.prompt_min, args.prompt_max, seed=concurrency)
                    for side in ("in-process", "http"):
                        row: dict = {"concurrency": concurrency, "side": side}
                        if deadline.left() < 15:
                            row["skipped"] = f"time budget left {deadline.left():.0f}s"
                        elif side == "in-process":
                            row |= summarize(asyncio.run(in_process(engine, prompts, concurrency, args.output_len)))
                        else:
                            records = over_http(base_url, prompts, concurrency, args.output_len,
                                                args.client_processes, Path(workdir))  # fmt: skip
                            row |= summarize(records)
                        logger.info("%s", row)
                        report["results"].append(row)
                        save()
        finally:
            engine.shutdown()
    save()
    print_table(report)
    print(f"\nwrote {out_file}")


if __name__ == "__main__":
    main()
