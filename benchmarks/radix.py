"""The radix prefix cache on vs off, on the workloads of the arena (serving/radix_cache.py).

Dummy (random) weights in real configurations (Llama-3.1-8B, Qwen3-0.6B), bf16, one engine with
the cache and one without on the same weights and the same prompts, in one run:

* ``judge``: a 1,500-token shared instruction followed by 80 different questions (MT-bench
  judging repeats its long instruction for every question);
* ``multi-turn``: 64 conversations x 4 turns, each turn resending the history (the previous
  prompts and answers) plus a new user message, the next turn sent when the answer is in;
* ``few-shot``: 8 shared examples (1,200 tokens) followed by 200 different questions;
* ``no-sharing``: random prompts of 256-1024 tokens (the cache should cost nothing).

Every request of a workload is queued at the start (``multi-turn``: each conversation's first
turn), like a burst of battles. Reported per workload: output tokens/s over the whole run
(prefill included), TTFT p50/p99 from queueing to the first token, and the cache hit rate
(prompt tokens taken from the cache / prompt tokens). Each engine runs a different warm-up
workload first (Triton compiles on first use), and its cache is emptied before timing.

Run (one model per call fits the device tool's 10 minutes)::

    python benchmarks/radix.py --model llama-3.1-8b --out $OUT
    python benchmarks/radix.py --model qwen3-0.6b --out $OUT

``--quick`` runs tiny shapes on the CPU to check the script (results named ``radix_cpu.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.serving_throughput import CONFIGS, Deadline, machine_info, make_checkpoint_dir  # noqa: E402
from serving.config import EngineConfig  # noqa: E402
from serving.engine import Engine  # noqa: E402
from serving.models import build_model, init_dummy_weights  # noqa: E402
from serving.sampling import SamplingParams  # noqa: E402
from serving.sequence import GenerationRequest  # noqa: E402

logger = logging.getLogger("radix")


@dataclass(frozen=True)
class Sizes:
    """Token counts of the workloads (full size on the GPU, scaled down by --quick)."""

    instruction: int = 1500
    questions: int = 80
    question_len: tuple[int, int] = (50, 150)
    judge_output: int = 64
    conversations: int = 64
    turns: int = 4
    system_len: int = 200
    user_len: tuple[int, int] = (30, 90)
    chat_output: int = 64
    shots: int = 8
    shot_len: int = 150
    fewshot_questions: int = 200
    fewshot_question_len: tuple[int, int] = (20, 60)
    fewshot_output: int = 16
    random_requests: int = 128
    random_len: tuple[int, int] = (256, 1024)
    random_output: int = 64


QUICK = Sizes(
    instruction=120, questions=6, question_len=(5, 15), judge_output=4, conversations=4, turns=3,
    system_len=30, user_len=(5, 10), chat_output=4, shots=4, shot_len=20, fewshot_questions=8,
    fewshot_question_len=(5, 10), fewshot_output=3, random_requests=6, random_len=(20, 60), random_output=4,
)  # fmt: skip


class Tokens:
    """Random token ids from one seeded generator (ids >= 100 keep clear of special tokens)."""

    def __init__(self, vocab: int, seed: int) -> None:
        self.vocab = vocab
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, length: int | tuple[int, int]) -> list[int]:
        if isinstance(length, tuple):
            length = int(torch.randint(length[0], length[1] + 1, (1,), generator=self.generator))
        return torch.randint(100, self.vocab, (length,), generator=self.generator).tolist()


@dataclass
class Conversation:
    """A chain of requests: each turn's prompt is the history plus the next user message."""

    turns: list[list[int]]  # user messages (the first one with the shared system prompt)
    output_len: int
    history: list[int] = field(default_factory=list)
    done: int = 0


def workloads(sizes: Sizes, vocab: int, seed: int) -> dict[str, list[Conversation]]:
    """Every workload as conversations (single-turn ones have one turn each)."""
    tokens = Tokens(vocab, seed)
    instruction = tokens(sizes.instruction)
    judge = [Conversation([instruction + tokens(sizes.question_len)], sizes.judge_output) for _ in range(sizes.questions)]
    system = tokens(sizes.system_len)
    chats = [
        Conversation([system + tokens(sizes.user_len)] + [tokens(sizes.user_len) for _ in range(sizes.turns - 1)],
                     sizes.chat_output)
        for _ in range(sizes.conversations)
    ]  # fmt: skip
    examples = [t for _ in range(sizes.shots) for t in tokens(sizes.shot_len)]
    fewshot = [
        Conversation([examples + tokens(sizes.fewshot_question_len)], sizes.fewshot_output)
        for _ in range(sizes.fewshot_questions)
    ]
    random_prompts = [Conversation([tokens(sizes.random_len)], sizes.random_output) for _ in range(sizes.random_requests)]
    return {"judge": judge, "multi-turn": chats, "few-shot": fewshot, "no-sharing": random_prompts}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def run_workload(engine: Engine, conversations: list[Conversation], device: str) -> dict:
    """Queue every conversation's first turn, run to the end (next turns sent as answers land)."""
    conversations = [Conversation(c.turns, c.output_len) for c in conversations]  # fresh state
    before = engine.stats()
    queued: dict[str, float] = {}
    first_token: dict[str, float] = {}
    owner: dict[str, Conversation] = {}
    answers: dict[str, list[int]] = {}

    def submit(conversation: Conversation) -> None:
        request_id = f"c{id(conversation)}-t{conversation.done}"
        conversation.history = conversation.history + conversation.turns[conversation.done]
        params = SamplingParams(temperature=0.0, max_tokens=conversation.output_len, ignore_eos=True)
        engine.add_request(GenerationRequest(request_id, conversation.history, params))
        queued[request_id], owner[request_id], answers[request_id] = time.perf_counter(), conversation, []

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for conversation in conversations:
        submit(conversation)
    produced = 0
    while engine.has_work:
        for output in engine.step():
            now = time.perf_counter()
            first_token.setdefault(output.request_id, now)
            answers[output.request_id].extend(output.new_token_ids)
            produced += len(output.new_token_ids)
            if output.finished:
                conversation = owner[output.request_id]
                conversation.history = conversation.history + answers[output.request_id]
                conversation.done += 1
                if conversation.done < len(conversation.turns):
                    submit(conversation)
    elapsed = time.perf_counter() - start
    after = engine.stats()
    ttft = [1000 * (first_token[r] - queued[r]) for r in queued]
    prompt_tokens = after.prompt_tokens - before.prompt_tokens
    cached = after.cached_tokens - before.cached_tokens
    return {
        "requests": len(queued),
        "prompt_tokens": prompt_tokens,
        "output_tokens": produced,
        "seconds": elapsed,
        "output_tokens_per_s": produced / elapsed,
        "ttft_p50_ms": percentile(ttft, 0.5),
        "ttft_p99_ms": percentile(ttft, 0.99),
        "hit_rate": cached / prompt_tokens if prompt_tokens else 0.0,
        "preemptions": engine.scheduler.num_preemptions,
    }


def empty_cache(engine: Engine) -> None:
    """Drop every cached prefix (nothing runs), so a timed run starts cold."""
    engine.scheduler.prefix_cache.evict(engine.runner.kv_pool.capacity)


@torch.inference_mode()
def dummy_model(config, device: str, dtype: torch.dtype, max_context: int):
    """Our model with random weights (normal, std 0.02; norm weights 1) - no checkpoint read."""
    model = build_model(config, device, dtype, max_context)
    init_dummy_weights(model, seed=0)
    return model


def bench_model(args, model_name: str, deadline: Deadline, report: dict, save: Callable[[], None]) -> None:
    device = "cpu" if args.quick else "cuda"
    dtype = torch.float32 if args.quick else torch.bfloat16
    sizes = QUICK if args.quick else Sizes()
    config = CONFIGS["smoke" if args.quick else model_name]()
    longest = max(sizes.instruction + sizes.question_len[1], sizes.shots * sizes.shot_len + 64,
                  sizes.system_len + sizes.turns * (sizes.user_len[1] + sizes.chat_output), sizes.random_len[1])  # fmt: skip
    max_context = longest + 256
    timed = workloads(sizes, config.vocab_size, seed=1)
    warm = {name: items[: max(2, len(items) // 8)] for name, items in workloads(sizes, config.vocab_size, seed=2).items()}
    model = dummy_model(config, device, dtype, max_context)
    with tempfile.TemporaryDirectory() as workdir:
        path = make_checkpoint_dir(config, Path(workdir))
        for cache_on in (True, False):
            engine_config = EngineConfig(
                str(path),
                device=device,
                dtype=str(dtype).removeprefix("torch."),
                max_context=max_context,
                max_running=args.max_running,
                max_batch_tokens=args.max_batch_tokens,
                kv_memory_gb=0.25 if args.quick else args.kv_memory_gb,
                detokenize=False,
                prefix_cache=cache_on,
            )
            engine = Engine(engine_config, model=model)
            for items in warm.values():
                run_workload(engine, items, device)
            for name, items in timed.items():
                row = {"model": model_name, "workload": name, "cache": "on" if cache_on else "off"}
                if deadline.left() < args.min_left_s:
                    row["skipped"] = f"time budget left {deadline.left():.0f}s"
                else:
                    empty_cache(engine)
                    row |= run_workload(engine, items, device)
                logger.info("%s", row)
                report["results"].append(row)
                save()
            del engine
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()


def print_table(report: dict) -> None:
    rows = report["results"]
    off = {(r["model"], r["workload"]): r for r in rows if r["cache"] == "off"}
    print(f"\n{'model':<13} {'workload':<11} {'cache':<5} {'req':>4} {'out tok/s':>10} {'on/off':>7} "
          f"{'TTFT p50 ms':>11} {'TTFT p99 ms':>11} {'hit rate':>8}")  # fmt: skip
    for r in rows:
        if "output_tokens_per_s" not in r:
            print(f"{r['model']:<13} {r['workload']:<11} {r['cache']:<5} {r.get('skipped', '')}")
            continue
        base = off.get((r["model"], r["workload"]), {}).get("output_tokens_per_s")
        ratio = f"{r['output_tokens_per_s'] / base:7.2f}" if base and r["cache"] == "on" else f"{'':>7}"
        print(f"{r['model']:<13} {r['workload']:<11} {r['cache']:<5} {r['requests']:>4} "
              f"{r['output_tokens_per_s']:10.1f} {ratio} {r['ttft_p50_ms']:11.1f} {r['ttft_p99_ms']:11.1f} "
              f"{100 * r['hit_rate']:7.1f}%")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", choices=["llama-3.1-8b", "qwen3-0.6b"],
                        help="repeat for several (default: both)")  # fmt: skip
    parser.add_argument("--max-running", type=int, default=128)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--kv-memory-gb", type=float, default=24.0)
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting workloads after this")
    parser.add_argument("--min-left-s", type=float, default=20.0, help="skip a workload with less time left")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (checks the script)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    deadline = Deadline(args.budget_s)
    models = args.model or ["llama-3.1-8b", "qwen3-0.6b"]
    if args.quick:
        models = ["smoke"]
    device = "cpu" if args.quick else "cuda"
    report: dict = {"machine": machine_info(device), "results": []}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "cpu" if args.quick else "_".join(models)
    out_file = out_dir / f"radix_{suffix}.json"

    def save() -> None:
        out_file.write_text(json.dumps(report, indent=2))

    for model_name in models:
        bench_model(args, model_name, deadline, report, save)
    save()
    print_table(report)
    print(f"\nwrote {out_file}")


if __name__ == "__main__":
    main()
