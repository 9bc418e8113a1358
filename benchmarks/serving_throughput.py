"""Throughput of our engine vs transformers, decode step time vs the memory roofline, KV waste.

Dummy (random) weights in real configurations (Qwen3-0.6B, Llama-3.1-8B), bf16, random prompts
of 128-1024 tokens; every peer runs in the same process on the same inputs:

* ``ours``: serving.engine (paged KV, continuous batching, Triton kernels, CUDA graphs);
* ``hf-dynamic``: transformers ``generate`` with its default dynamic cache;
* ``hf-static``: ``generate(cache_implementation="static")``, which transformers compiles;
* ``hf-batch``: transformers' own continuous batching, ``generate_batch``.

The compiled static cache and ``generate_batch`` are timed on their second identical call (the
first compiles, sizes caches and captures CUDA graphs); our engine captures its graphs at start
and runs the same prompts for a few tokens before each timed run (Triton's JIT compilation).

Throughput is output tokens per second over the whole run (prefill included), every request
producing exactly ``--output-len`` tokens. The roofline of a decode step is (weight bytes + KV
bytes read) / HBM bandwidth, the bandwidth measured in this run by a large device copy; the
figure reported is roofline time / measured time over pure decode steps of our engine. KV waste
is measured on a mixed workload (outputs of 128-512 tokens, more requests than fit at once):
allocated-but-unused KV slots of our pool, next to what 16-token pages and a static
per-request reservation (as with a static cache) would waste on the same trace.

Run (one model per call fits the device tool's 10 minutes)::

    python benchmarks/serving_throughput.py --model qwen3-0.6b --out $OUT
    python benchmarks/serving_throughput.py --model llama-3.1-8b --out $OUT

``--smoke`` runs tiny shapes on the CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import logging
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen3Config

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from serving import kernels  # noqa: E402
from serving.config import EngineConfig  # noqa: E402
from serving.demo_models import build_demo_models  # noqa: E402
from serving.engine import Engine  # noqa: E402
from serving.models import build_model, load_named_tensors  # noqa: E402
from serving.sampling import SamplingParams  # noqa: E402
from serving.sequence import GenerationRequest  # noqa: E402

logger = logging.getLogger("serving_throughput")

CONFIGS = {
    # Qwen/Qwen3-0.6B config.json
    "qwen3-0.6b": lambda: Qwen3Config(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
    # meta-llama/Llama-3.1-8B config.json
    "llama-3.1-8b": lambda: LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=False,
    ),
    # --smoke: CPU check of the script
    "smoke": lambda: Qwen3Config(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
}


class Deadline:
    """Skips measurements once the run's time budget is spent (the device tool kills at 10 min)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_bandwidth(device: str) -> float:
    """HBM bandwidth in bytes/s from a 4 GiB device-to-device copy (bytes read + written)."""
    if not device.startswith("cuda"):
        return float("nan")
    source = torch.empty(2**31, dtype=torch.int16, device=device).random_()
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        target.copy_(source)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del source, target
    torch.cuda.empty_cache()
    return 2 * 2**32 / sorted(times)[len(times) // 2]


def make_prompts(count: int, vocab: int, low: int, high: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (count,), generator=generator).tolist()
    return [torch.randint(100, vocab, (n,), generator=generator).tolist() for n in lengths]


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    """Bytes of weights a decode step reads: all but the input embedding (only B rows read),
    unless it is tied to the LM head."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not model.config.tie_word_embeddings:
        embed = model.model.embed_tokens.weight
        total -= embed.numel() * embed.element_size()
    return total


# ----- our engine ---------------------------------------------------------------------------


def make_checkpoint_dir(config, workdir: Path) -> Path:
    """config.json + a tokenizer: what Engine reads from disk (weights come from memory)."""
    path = workdir / "model"
    path.mkdir(exist_ok=True)
    config.save_pretrained(path)
    demo = build_demo_models(workdir / "demo", names=["demo-llama-tiny"])[0]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / name, path / name)
    return path


def run_ours(
    engine: Engine,
    prompts: list[list[int]],
    output_lens: list[int],
    weight_bytes: int,
    bandwidth: float,
    trace_kv: bool = False,
) -> dict:
    """Generate, timing everything and, separately, the pure-decode steps (for the roofline)."""
    for index, (prompt, out_len) in enumerate(zip(prompts, output_lens, strict=True)):
        params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
        engine.add_request(GenerationRequest(f"r{index}", prompt, params))
    scheduler, kv_pool = engine.scheduler, engine.runner.kv_pool
    slot_bytes = kv_pool.bytes_per_slot()
    produced = decode_steps = 0
    decode_time = roofline_time = 0.0
    waste = {"ours": [0, 0], "pages16": [0, 0], "static": [0, 0]}  # [unused, allocated] summed over steps
    start = time.perf_counter()
    while engine.has_work:
        pure_decode = not scheduler.waiting and all(s.num_to_compute <= 1 for s in scheduler.running)
        kv_tokens = sum(len(s.token_ids) for s in scheduler.running)
        step_start = time.perf_counter()
        outputs = engine.step()
        step_time = time.perf_counter() - step_start
        produced += sum(len(o.new_token_ids) for o in outputs)
        if pure_decode and scheduler.running:
            decode_steps += 1
            decode_time += step_time
            roofline_time += (weight_bytes + kv_tokens * slot_bytes) / bandwidth
        if trace_kv and scheduler.running:
            record_kv_waste(waste, scheduler, kv_pool)
    elapsed = time.perf_counter() - start
    result = {
        "output_tokens": produced,
        "seconds": elapsed,
        "tokens_per_s": produced / elapsed,
        "decode_steps": decode_steps,
        "decode_step_ms": 1000 * decode_time / max(decode_steps, 1),
        "roofline_step_ms": 1000 * roofline_time / max(decode_steps, 1),
        "fraction_of_roofline": roofline_time / decode_time if decode_time else float("nan"),
        "preemptions": scheduler.num_preemptions,
    }
    if trace_kv:
        result["kv_waste"] = {k: (u / a if a else 0.0) for k, (u, a) in waste.items()}
    return result


def warm_up(engine: Engine, prompts: list[list[int]]) -> None:
    """Run the prompts for a few tokens, untimed: Triton compiles a kernel per specialisation
    (argument values divisible by 16 or equal to 1) on first use, which a timed run must not pay."""
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    engine.generate([GenerationRequest(f"warm-up-{i}", prompt, params) for i, prompt in enumerate(prompts)])


def profile_decode(engine: Engine, prompts: list[list[int]], steps: int = 20) -> dict:
    """GPU kernel time vs wall time of pure decode steps (torch.profiler), top kernels printed."""
    params = SamplingParams(temperature=0, max_tokens=2 * steps + 20, ignore_eos=True)
    for index, prompt in enumerate(prompts):
        engine.add_request(GenerationRequest(f"p{index}", prompt, params))
    scheduler = engine.scheduler
    while scheduler.waiting or any(s.num_to_compute > 1 for s in scheduler.running):
        engine.step()
    for _ in range(3):
        engine.step()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        wall = (time.perf_counter() - start) / steps
    split = step_time_split(engine, len(prompts), steps)
    while engine.has_work:
        engine.step()
    events = profiler.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events) / steps
    print(
        f"\nprofile at batch {len(prompts)}: wall {1000 * wall:.2f} ms/step, GPU busy {gpu_us / 1000:.2f} ms/step; "
        f"without the profiler: engine step {split['engine_ms_per_step']:.3f} ms, its decode graph replayed "
        f"back to back {split['graph_ms_per_step']:.3f} ms (above it: host time the GPU waits for), "
        f"its {split['linear_launches']} projections alone {split['linear_chain_ms_per_step']:.3f} ms"
    )
    print(events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))
    return {"batch": len(prompts), "wall_ms_per_step": 1000 * wall, "gpu_ms_per_step": gpu_us / 1000, **split}


def step_time_split(engine: Engine, batch: int, steps: int) -> dict:
    """Engine step time vs the same decode graph replayed back to back (GPU-bound): an engine
    step above the graph's time is host work between steps that the GPU waits for. (With
    overlap the timed steps start with one step already in flight, so the engine's figure
    can come out a little below the graph's.)"""
    synchronize("cuda")
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    engine_ms = 1000 * (time.perf_counter() - start) / steps
    graphs = engine.runner.graphs
    graph = graphs.graphs[next(b for b in graphs.buckets if b >= batch)]
    synchronize("cuda")
    start = time.perf_counter()
    for _ in range(steps):  # rewrites the last step's KV slots with the same values: harmless
        graph.replay()
    synchronize("cuda")
    graph_ms = 1000 * (time.perf_counter() - start) / steps
    return {"engine_ms_per_step": engine_ms, "graph_ms_per_step": graph_ms, **linear_chain_time(engine, batch, steps)}


# GEMV launch configs (BLOCK_N, BLOCK_K, warps) timed over the model's projection chain.
CHAIN_GEMV_CONFIGS = ((8, 2048, 4), (4, 2048, 4), (16, 1024, 4), (8, 4096, 8), (16, 2048, 8), (4, 4096, 4))


@torch.inference_mode()
def linear_chain_time(engine: Engine, batch: int, steps: int) -> dict:
    """Every projection of the model (and the LM head) on ``batch`` rows, in one CUDA graph and
    nothing else: what the step's weight streaming costs without the kernels between. At one or
    two rows, also per GEMV launch config (in the model's setting, unlike the isolated sweep)."""
    from serving.kernels.gemv import linear_triton

    model = engine.runner.model
    calls = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            silu_mul = name.endswith("down_proj")
            width = module.in_features * (2 if silu_mul else 1)
            calls.append((torch.randn(batch, width, dtype=module.weight.dtype, device="cuda"), module, silu_mul))

    def timed(config) -> float:
        def chain() -> None:
            for x, module, silu_mul in calls:
                if config is None:
                    kernels.linear(x, module.weight, module.bias, silu_mul_input=silu_mul)
                else:
                    linear_triton(x, module.weight, module.bias, silu_mul, config=config)

        chain()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            chain()
        synchronize("cuda")
        start = time.perf_counter()
        for _ in range(steps):
            graph.replay()
        synchronize("cuda")
        return 1000 * (time.perf_counter() - start) / steps

    result = {"linear_chain_ms_per_step": timed(None), "linear_launches": len(calls)}
    if batch <= kernels.GEMV_MAX_ROWS:
        result["gemv_configs_ms_per_step"] = {str(c): timed(c) for c in CHAIN_GEMV_CONFIGS}
        print("GEMV chain by (BLOCK_N, BLOCK_K, warps):", result["gemv_configs_ms_per_step"])
    return result


def record_kv_waste(waste: dict, scheduler, kv_pool) -> None:
    """Add this step's unused/allocated slots: our pool, 16-token pages, static reservations."""
    stored = [s.num_kv for s in scheduler.running]
    allocated = kv_pool.capacity - kv_pool.num_free
    waste["ours"][0] += allocated - sum(stored)
    waste["ours"][1] += allocated
    paged = sum(math.ceil(n / 16) * 16 for n in stored)
    waste["pages16"][0] += paged - sum(stored)
    waste["pages16"][1] += paged
    reserved = sum(s.max_total_tokens for s in scheduler.running)
    waste["static"][0] += reserved - sum(stored)
    waste["static"][1] += reserved


# ----- transformers peers ---------------------------------------------------------------------


def left_padded(prompts: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def run_hf_generate(model, prompts: list[list[int]], output_len: int, device: str, static: bool) -> dict:
    ids, mask = left_padded(prompts, device)
    kwargs = {
        "max_new_tokens": output_len,
        "min_new_tokens": output_len,
        "do_sample": False,
        "pad_token_id": 0,
    }
    if static:
        kwargs["cache_implementation"] = "static"
        model.generate(ids, attention_mask=mask, **kwargs)  # compiles for these shapes; timed: the 2nd run
    synchronize(device)
    start = time.perf_counter()
    output = model.generate(ids, attention_mask=mask, **kwargs)
    synchronize(device)
    elapsed = time.perf_counter() - start
    produced = (output.shape[1] - ids.shape[1]) * len(prompts)
    return {"output_tokens": produced, "seconds": elapsed, "tokens_per_s": produced / elapsed}


def run_hf_generate_batch(model, prompts: list[list[int]], output_len: int, device: str) -> dict:
    config = GenerationConfig(max_new_tokens=output_len, do_sample=False, eos_token_id=None, pad_token_id=0)
    accepted = inspect.signature(model.generate_batch).parameters
    extra = {k: v for k, v in {"progress_bar": False, "persistent_manager": True}.items() if k in accepted}
    # The first call sizes the paged cache for this workload and captures its CUDA graphs; with a
    # persistent manager the timed second call reuses them.
    model.generate_batch(inputs=prompts, generation_config=config, **extra)
    synchronize(device)
    start = time.perf_counter()
    outputs = model.generate_batch(inputs=prompts, generation_config=config, **extra)
    synchronize(device)
    elapsed = time.perf_counter() - start
    if hasattr(model, "destroy_cached_continuous_batching_manager"):
        model.destroy_cached_continuous_batching_manager()
    produced = sum(len(o.generated_tokens) for o in outputs.values())
    return {"output_tokens": produced, "seconds": elapsed, "tokens_per_s": produced / elapsed}


# ----- driver -----------------------------------------------------------------------------------


def measure(results: list, name: str, batch: int, deadline: Deadline, minimum_s: float, run, save) -> None:
    """Run one measurement unless the budget is spent; record an error instead of crashing."""
    row = {"system": name, "batch": batch}
    if deadline.left() < minimum_s:
        row["skipped"] = f"time budget left {deadline.left():.0f}s < {minimum_s:.0f}s"
    else:
        try:
            row |= run()
        except torch.OutOfMemoryError:
            row["error"] = "out of GPU memory"
        except Exception as error:  # noqa: BLE001 - a peer failing must not lose the other rows
            logger.exception("%s at batch %d failed", name, batch)
            row["error"] = f"{type(error).__name__}: {error}"[:300]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    logger.info("%s", row)
    results.append(row)
    save()


# Self-contained on purpose, not benchmarks/common.py: this runs on the GPU machine, whose Python lacks some packages.
def machine_info(device: str) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }
    if device.startswith("cuda"):
        import triton

        info |= {
            "gpu": torch.cuda.get_device_name(),
            "cuda": torch.version.cuda,
            "triton": triton.__version__,
        }
    return info


def print_table(report: dict) -> None:
    rows = report["throughput"]
    ours = {r["batch"]: r.get("tokens_per_s") for r in rows if r["system"] == "ours"}
    print(
        f"\n{report['model']} (bf16, dummy weights), prompts {report['prompt_range']}, "
        f"output {report['output_len']} tokens; HBM {report['hbm_bandwidth_gbs']:.0f} GB/s"
    )
    print(
        f"{'system':<11} {'batch':>5} {'tok/s':>9} {'ours/x':>7} {'step ms':>8} {'roofline ms':>11} {'% roof':>7}"
    )
    for r in rows:
        tps = r.get("tokens_per_s")
        if tps is None:
            print(f"{r['system']:<11} {r['batch']:>5} {r.get('error') or r.get('skipped')}")
            continue
        ratio = (ours.get(r["batch"]) or float("nan")) / tps if tps else float("nan")
        step = (
            f"{r['decode_step_ms']:8.2f} {r['roofline_step_ms']:11.2f} {100 * r['fraction_of_roofline']:6.1f}%"
            if r["system"] == "ours"
            else ""
        )
        print(f"{r['system']:<11} {r['batch']:>5} {tps:9.1f} {ratio:7.2f} {step}")
    if "kv_waste" in report:
        waste = report["kv_waste"]
        print(
            "KV waste, mixed workload: "
            + ", ".join(f"{k} {100 * v:.2f}%" for k, v in waste["kv_waste"].items())
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="qwen3-0.6b")
    parser.add_argument("--batches", default="1,16,64,256")
    parser.add_argument("--peers", default="ours,hf-dynamic,hf-static,hf-batch")
    parser.add_argument("--static-batches", default="1,16,64", help="hf-static compiles per batch: costly")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--prompt-min", type=int, default=128)
    parser.add_argument("--prompt-max", type=int, default=1024)
    parser.add_argument("--kv-waste-requests", type=int, default=256)
    parser.add_argument("--kv-memory-gb", type=float, default=24.0)
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting measurements after this")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    parser.add_argument(
        "--profile-batches", default="", help="torch.profiler of decode steps at these batches"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (checks the script)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.WARNING)
    deadline = Deadline(args.budget_s)
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    model_name = "smoke" if args.smoke else args.model
    batches = [int(b) for b in args.batches.split(",")]
    peers = args.peers.split(",")

    config = CONFIGS[model_name]()
    bandwidth = measure_bandwidth(device) if not args.smoke else 50e9
    torch.manual_seed(0)
    with torch.device(device):
        hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    hf_model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "model": model_name,
        "machine": machine_info(device),
        "hbm_bandwidth_gbs": bandwidth / 1e9,
        "prompt_range": [args.prompt_min, args.prompt_max],
        "output_len": args.output_len,
        "throughput": [],
    }
    out_file = out_dir / f"serving_throughput_{report['model']}.json"

    def save() -> None:
        out_file.write_text(json.dumps(report, indent=2))

    max_context = args.prompt_max + max(args.output_len, 512) + 8
    with tempfile.TemporaryDirectory() as workdir:
        if "ours" in peers:
            path = make_checkpoint_dir(config, Path(workdir))
            model = build_model(config, device, dtype, max_context)
            load_named_tensors(model, hf_model.named_parameters(), source="transformers model")
            weight_bytes = weight_bytes_per_step(model)
            report["weight_bytes_per_step"] = weight_bytes
            engine_config = EngineConfig(
                str(path),
                device=device,
                dtype=str(dtype).removeprefix("torch."),
                max_context=max_context,
                max_running=max(batches),
                max_batch_tokens=8192,
                kv_memory_gb=min(args.kv_memory_gb, 0.25) if args.smoke else args.kv_memory_gb,
                detokenize=False,
                prefix_cache=False,  # warm_up runs the timed prompts first: no reuse against the peers
            )
            engine = Engine(engine_config, model=model)
            report["kv_bytes_per_token"] = engine.runner.kv_pool.bytes_per_slot()
            for batch in batches:
                prompts = make_prompts(batch, config.vocab_size, args.prompt_min, args.prompt_max, seed=batch)
                measure(
                    report["throughput"],
                    "ours",
                    batch,
                    deadline,
                    5,
                    lambda p=prompts: (warm_up(engine, p), run_ours(
                        engine, p, [args.output_len] * len(p), weight_bytes, bandwidth
                    ))[1],
                    save,
                )
            if args.kv_waste_requests:
                report["kv_waste"] = kv_waste_run(engine, args, config, weight_bytes, bandwidth)
                save()
            for batch in [int(b) for b in args.profile_batches.split(",") if b]:
                prompts = make_prompts(batch, config.vocab_size, args.prompt_min, args.prompt_max, seed=batch)
                report.setdefault("profiles", []).append(profile_decode(engine, prompts))
                save()
            del engine, model
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        peer_runs = {
            "hf-dynamic": lambda p: run_hf_generate(hf_model, p, args.output_len, device, static=False),
            "hf-static": lambda p: run_hf_generate(hf_model, p, args.output_len, device, static=True),
            "hf-batch": lambda p: run_hf_generate_batch(hf_model, p, args.output_len, device),
        }
        static_batches = {int(b) for b in args.static_batches.split(",")}
        for peer in [p for p in peers if p in peer_runs]:
            for batch in batches:
                if peer == "hf-static" and batch not in static_batches:
                    continue
                prompts = make_prompts(batch, config.vocab_size, args.prompt_min, args.prompt_max, seed=batch)
                measure(
                    report["throughput"],
                    peer,
                    batch,
                    deadline,
                    30,
                    lambda p=prompts, run=peer_runs[peer]: run(p),
                    save,
                )
    save()
    print_table(report)
    print(f"\nwrote {out_file}")


def kv_waste_run(engine: Engine, args, config, weight_bytes: int, bandwidth: float) -> dict:
    """Mixed workload on our engine: 128-1024 token prompts, 128-512 token outputs."""
    count = args.kv_waste_requests
    prompts = make_prompts(count, config.vocab_size, args.prompt_min, args.prompt_max, seed=99)
    generator = torch.Generator().manual_seed(98)
    outputs = torch.randint(128, 513, (count,), generator=generator).tolist()
    if args.smoke:
        outputs = [max(4, n // 32) for n in outputs]
    result = run_ours(engine, prompts, outputs, weight_bytes, bandwidth, trace_kv=True)
    return {"requests": count, "output_range": [128, 512], **result}


if __name__ == "__main__":
    main()
