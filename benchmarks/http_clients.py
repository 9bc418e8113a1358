"""Streaming clients of the OpenAI API in one process, for benchmarks/serving_http.py.

Run as a script so that it imports nothing but httpx (each client process starts in a second)::

    python benchmarks/http_clients.py JOBS.json

JOBS.json: ``{"base_url", "model", "start_at" (time.time() to begin at), "concurrency",
"max_tokens", "prompts": [[token ids], ...]}``. The process runs ``concurrency`` streams at a
time over its prompts (``/v1/completions`` with ``stream`` and usage) and prints one JSON list:
per request its start, first-token and end times (time.time()), the gaps between content
chunks, and the completion tokens from the usage chunk.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx


async def one_request(client: httpx.AsyncClient, job: dict, prompt: list[int]) -> dict:
    body = {
        "model": job["model"],
        "prompt": prompt,
        "max_tokens": job["max_tokens"],
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.time()
    first = None
    chunk_times: list[float] = []
    tokens = 0
    async with client.stream("POST", f"{job['base_url']}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            if payload.get("usage"):
                tokens = payload["usage"]["completion_tokens"]
            if payload["choices"] and payload["choices"][0]["text"]:
                now = time.time()
                first = first or now
                chunk_times.append(now)
    end = time.time()
    gaps = [b - a for a, b in zip(chunk_times, chunk_times[1:], strict=False)]
    return {"start": start, "first": first or end, "end": end, "itl": gaps, "tokens": tokens}


async def run(job: dict) -> list[dict]:
    prompts = list(job["prompts"])
    results: list[dict] = []
    limits = httpx.Limits(max_connections=job["concurrency"], max_keepalive_connections=job["concurrency"])
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            while prompts:
                results.append(await one_request(client, job, prompts.pop()))

        await asyncio.sleep(max(0.0, job["start_at"] - time.time()))
        await asyncio.gather(*(worker() for _ in range(job["concurrency"])))
    return results


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as jobs_file:
        job = json.load(jobs_file)
    json.dump(asyncio.run(run(job)), sys.stdout)
