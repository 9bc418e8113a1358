"""Many LoRA adapters on one GPU: our batched multi-adapter engine vs PEFT vs merging one at a time.

A Llama-3.1-8B-shaped base with random bf16 weights; 10, 100 and 1,000 random adapters of
ranks 8-64 on q/k/v/o (S-LoRA's setting); requests spread over the adapters by a power law
(Zipf, exponent ``--zipf``: a few adapters are popular, most are rare). All requests of a
scenario arrive at once; every request feeds a random prompt of ``--prompt-min``-``--prompt-max``
tokens and produces exactly ``--output-len`` tokens. In one run, on the same requests:

* ``ours-base``: our engine, base model alone (no adapters): the throughput ceiling;
* ``ours-lora``: our engine serving every adapter at once: ``--max-loras`` device slots paged
  from host memory (LRU), batches mixing adapters through the SGMV/BGMV kernels, CUDA graphs;
* ``ours-merged``: our engine with one adapter merged into the base weights at a time
  (``W += B A``): the requests of each adapter run as one batch, then the weights are restored;
* ``peft``: transformers + PEFT, one request at a time, ``set_adapter`` per request (an
  adapter is added to the PEFT model the first time it is needed, which is part of switching).

Throughput is output tokens per second of wall time (prefill included). Latency is each
request's completion time since the scenario started (all requests arrive at t = 0): mean and
p90. The sequential peers (merged, PEFT) stop after their share of ``--budget-s``; their figures
cover the requests they completed (counted in the table).

The 1,000 adapters' host weights come from a bank of random matrices (4 variants per rank), so
host memory stays ~1 GB; each adapter is still paged into its own device slot when used.

Run on an H100 (about 6-7 minutes)::

    python benchmarks/lora.py --budget-s 360

``--quick`` runs tiny shapes on the CPU to check the script itself (a minute).
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.serving_throughput import CONFIGS, make_checkpoint_dir  # noqa: E402
from serving.config import EngineConfig  # noqa: E402
from serving.engine import Engine  # noqa: E402
from serving.lora.adapter import LoraAdapter, projection_shapes  # noqa: E402
from serving.models import build_model, load_named_tensors  # noqa: E402
from serving.sampling import SamplingParams  # noqa: E402
from serving.sequence import GenerationRequest  # noqa: E402

logger = logging.getLogger("lora_benchmark")

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RANKS = (8, 16, 32, 64)
BANK_VARIANTS = 4
QUICK_CONFIG = LlamaConfig(
    vocab_size=2048,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


@dataclass
class Request:
    request_id: str
    prompt: list[int]
    adapter: str | None


class Deadline:
    """Time left of one peer's share of the budget."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.end


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----- workload ----------------------------------------------------------------------------


def make_bank(config, ranks: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> dict:
    """``(rank, variant) -> {(layer, module): (A, B)}`` random LoRA weights in host memory."""
    generator = torch.Generator().manual_seed(seed)
    shapes = projection_shapes(config)
    pin = torch.cuda.is_available()
    bank = {}
    for rank in ranks:
        for variant in range(BANK_VARIANTS):
            weights = {}
            for layer in range(config.num_hidden_layers):
                for module in TARGETS:
                    fan_in, fan_out = shapes[module]
                    a = (torch.randn(rank, fan_in, generator=generator) / fan_in**0.5).to(dtype)
                    b = (torch.randn(fan_out, rank, generator=generator) * 0.05 / rank**0.5).to(dtype)
                    weights[(layer, module)] = (a.pin_memory(), b.pin_memory()) if pin else (a, b)
            bank[(rank, variant)] = weights
    return bank


def make_adapters(count: int, bank: dict, ranks: tuple[int, ...], seed: int) -> list[LoraAdapter]:
    """``count`` adapters named ``a0``.. with ranks drawn from ``ranks``, weights from the bank."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(ranks) * BANK_VARIANTS, (count,), generator=generator).tolist()
    adapters = []
    for index, pick in enumerate(picks):
        rank, variant = ranks[pick // BANK_VARIANTS], pick % BANK_VARIANTS
        adapters.append(LoraAdapter(f"a{index}", f"bank:r{rank}:v{variant}", bank[(rank, variant)]))
    return adapters


def make_requests(count: int, num_adapters: int, args, vocab: int, seed: int) -> list[Request]:
    """Random prompts; adapter ``k`` (0-based) is picked with probability ~ 1 / (k + 1)^zipf."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.tensor([1.0 / (k + 1) ** args.zipf for k in range(num_adapters)]) if num_adapters else None
    requests = []
    for index in range(count):
        length = int(torch.randint(args.prompt_min, args.prompt_max + 1, (1,), generator=generator))
        prompt = torch.randint(10, vocab, (length,), generator=generator).tolist()
        adapter = None
        if weights is not None:
            adapter = f"a{int(torch.multinomial(weights, 1, generator=generator))}"
        requests.append(Request(f"r{index}", prompt, adapter))
    return requests


def summary(name: str, adapters: int, requests: list[Request], finish: dict[str, float], seconds: float,
            output_len: int, **extra) -> dict:
    """One row of the report from the completion times (seconds since the scenario's start)."""
    done = sorted(finish.values())
    tokens = len(done) * output_len
    return {
        "peer": name,
        "adapters": adapters,
        "requests": len(requests),
        "completed": len(done),
        "output_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "latency_mean_s": statistics.fmean(done) if done else None,
        "latency_p90_s": done[int(0.9 * (len(done) - 1))] if done else None,
        **extra,
    }


# ----- our engine --------------------------------------------------------------------------


def run_engine(engine: Engine, requests: list[Request], output_len: int, device: str) -> tuple[dict, float]:
    """Submit every request at once, step to the end; (finish time per request, wall seconds)."""
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    synchronize(device)
    start = time.perf_counter()
    for request in requests:
        engine.add_request(GenerationRequest(request.request_id, request.prompt, params, adapter=request.adapter))
    finish: dict[str, float] = {}
    while engine.has_work:
        for output in engine.step():
            if output.finished:
                finish[output.request_id] = time.perf_counter() - start
    return finish, time.perf_counter() - start


def warm_up(engine: Engine, requests: list[Request], device: str) -> None:
    """A few short untimed requests (Triton compiles each kernel specialisation on first use);
    with adapters only when the engine serves them."""
    lora = engine.adapters is not None
    warm = [Request(f"warm-{r.request_id}", r.prompt, r.adapter if lora else None) for r in requests[:8]]
    run_engine(engine, warm, 4, device)


def merged_weights(model, adapter: LoraAdapter) -> list[tuple[torch.Tensor, slice, torch.Tensor]]:
    """``(weight, rows, delta)`` for merging ``adapter`` into our fused projections."""
    merges = []
    for (layer_id, module), (a, b) in adapter.weights.items():
        layer, part = model.lora_target(layer_id, module)
        rows = layer.sub_rows(layer.sub_index(part))
        device = layer.weight.device
        delta = b.to(device, torch.float32) @ a.to(device, torch.float32)
        merges.append((layer.weight, rows, delta))
    return merges


def run_merged(engine: Engine, requests: list[Request], adapters: dict[str, LoraAdapter], output_len: int,
               device: str, deadline: Deadline) -> tuple[dict, float]:
    """Group requests by adapter (most requested first); per group merge, run, restore."""
    model = engine.runner.model
    groups: dict[str, list[Request]] = defaultdict(list)
    for request in requests:
        groups[str(request.adapter)].append(request)
    order = sorted(groups, key=lambda name: -len(groups[name]))
    finish: dict[str, float] = {}
    synchronize(device)
    start = time.perf_counter()
    for name in order:
        if deadline.passed:
            break
        merges = merged_weights(model, adapters[name])
        saved = [weight[rows].clone() for weight, rows, _ in merges]
        with torch.no_grad():
            for weight, rows, delta in merges:
                weight[rows] = (weight[rows].float() + delta).to(weight.dtype)
        base = [Request(r.request_id, r.prompt, None) for r in groups[name]]
        offset = time.perf_counter() - start
        group_finish, _ = run_engine(engine, base, output_len, device)
        finish.update({rid: offset + t for rid, t in group_finish.items()})
        with torch.no_grad():
            for (weight, rows, _), original in zip(merges, saved, strict=True):
                weight[rows] = original
    synchronize(device)
    return finish, time.perf_counter() - start


# ----- PEFT ----------------------------------------------------------------------------------


class PeftPeer:
    """transformers + PEFT, one request at a time, adapters added on first use."""

    def __init__(self, hf_model, device: str) -> None:
        self.base = hf_model
        self.device = device
        self.model = None
        self.loaded: set[str] = set()

    def _add(self, adapter: LoraAdapter) -> None:
        from peft import LoraConfig, get_peft_model

        rank = adapter.rank
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(TARGETS), lora_dropout=0.0)
        if self.model is None:
            self.model = get_peft_model(self.base, config, adapter_name=adapter.name)
        else:
            self.model.add_adapter(adapter.name, config)
        layers = self.model.base_model.model.model.layers
        with torch.no_grad():
            for (layer_id, module), (a, b) in adapter.weights.items():
                target = getattr(layers[layer_id].self_attn, module)
                target.lora_A[adapter.name].weight.copy_(a)
                target.lora_B[adapter.name].weight.copy_(b)  # B is pre-scaled and alpha == r: scaling 1
        self.loaded.add(adapter.name)

    def run(self, requests: list[Request], adapters: dict[str, LoraAdapter], output_len: int,
            deadline: Deadline) -> tuple[dict, float]:
        finish: dict[str, float] = {}
        synchronize(self.device)
        start = time.perf_counter()
        for request in requests:
            if deadline.passed:
                break
            if request.adapter not in self.loaded:
                self._add(adapters[str(request.adapter)])
            assert self.model is not None
            self.model.set_adapter(request.adapter)
            ids = torch.tensor([request.prompt], device=self.device)
            with torch.inference_mode():
                self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=output_len,
                    min_new_tokens=output_len, do_sample=False,
                )  # fmt: skip
            synchronize(self.device)
            finish[request.request_id] = time.perf_counter() - start
        return finish, time.perf_counter() - start


# ----- report --------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    base = {r["adapters"]: r for r in rows if r["peer"] == "ours-base"}
    base_tps = next(iter(base.values()))["tokens_per_s"] if base else None
    by_scenario = {(r["peer"], r["adapters"]): r for r in rows}
    print(f"\n{'peer':<12} {'adapters':>8} {'done':>9} {'tok/s':>10} {'lat mean':>9} {'lat p90':>8} "
          f"{'vs peft':>8} {'vs base':>8}")
    for row in rows:
        peft = by_scenario.get(("peft", row["adapters"]))
        vs_peft = row["tokens_per_s"] / peft["tokens_per_s"] if peft and peft["tokens_per_s"] else None
        vs_base = row["tokens_per_s"] / base_tps if base_tps else None
        print(
            f"{row['peer']:<12} {row['adapters']:>8} {row['completed']:>4}/{row['requests']:<4} "
            f"{row['tokens_per_s']:>10.1f} {row['latency_mean_s'] or 0:>9.2f} {row['latency_p90_s'] or 0:>8.2f} "
            f"{f'{vs_peft:.2f}x' if vs_peft else '-':>8} {f'{vs_base:.2f}' if vs_base else '-':>8}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", default="10,100,1000", help="scenarios: numbers of adapters")
    parser.add_argument("--requests", type=int, default=256, help="requests per scenario")
    parser.add_argument("--prompt-min", type=int, default=64)
    parser.add_argument("--prompt-max", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--zipf", type=float, default=1.0, help="power-law exponent of adapter popularity")
    parser.add_argument("--max-loras", type=int, default=32, help="device slots of our engine")
    parser.add_argument("--max-running", type=int, default=128)
    parser.add_argument("--kv-memory-gb", type=float, default=16.0)
    parser.add_argument("--peers", default="ours-base,ours-lora,ours-merged,peft")
    parser.add_argument("--budget-s", type=float, default=360.0, help="whole run; sequential peers get a share")
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (checks the script)")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/lora[_cpu].json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.monotonic()
    device = "cpu" if args.quick else "cuda"
    dtype = torch.float32 if args.quick else torch.bfloat16
    if args.quick:
        args.requests, args.output_len, args.prompt_min, args.prompt_max = 12, 8, 8, 24
        args.max_running, args.max_loras, args.kv_memory_gb = 8, 4, 0.05
    scenarios = [int(n) for n in args.adapters.split(",")]
    peers = args.peers.split(",")
    ranks = (2, 4, 8) if args.quick else RANKS
    config = QUICK_CONFIG if args.quick else CONFIGS["llama-3.1-8b"]()
    # Sequential peers (merged, PEFT) get this share of the budget per scenario each; the rest
    # is for building the models, CUDA graphs, Triton compilation and our engine's runs.
    share = args.budget_s * 0.11 if not args.quick else 30.0

    torch.manual_seed(0)
    with torch.device(device):
        hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    hf_model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0)
    bank = make_bank(config, ranks, dtype)
    adapters = make_adapters(max(scenarios), bank, ranks, seed=1)
    by_name = {a.name: a for a in adapters}
    workloads = {n: make_requests(args.requests, n, args, config.vocab_size, seed=n) for n in scenarios}
    max_context = args.prompt_max + args.output_len + 8
    rows: list[dict] = []
    report = {"model": "tiny-llama" if args.quick else "llama-3.1-8b", "device": device, "args": vars(args),
              "targets": TARGETS, "ranks": ranks, "rows": rows}
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / ("lora_cpu.json" if args.quick else "lora.json")

    def save() -> None:
        write_result("lora", report, packages=("torch", "triton", "transformers", "peft"), path=out)

    with tempfile.TemporaryDirectory() as workdir:
        path = make_checkpoint_dir(config, Path(workdir))
        model = build_model(config, device, dtype, max_context)
        load_named_tensors(model, hf_model.named_parameters(), source="transformers model")

        def engine(lora: bool, model=model) -> Engine:
            engine_config = EngineConfig(
                str(path), device=device, dtype=str(dtype).removeprefix("torch."), max_context=max_context,
                max_running=args.max_running, max_batch_tokens=4096, kv_memory_gb=args.kv_memory_gb,
                detokenize=False, enable_lora=lora, max_loras=args.max_loras, max_lora_rank=max(ranks),
                lora_targets=TARGETS,
                prefix_cache=False,  # PEFT has none, and merged runs must not share KV across adapters
            )  # fmt: skip
            return Engine(engine_config, model=model)

        if "ours-base" in peers or "ours-merged" in peers:
            base_engine = engine(lora=False)
            warm_up(base_engine, workloads[scenarios[0]], device)
            if "ours-base" in peers:  # the first scenario's prompts, every request on the base model
                base_requests = [Request(r.request_id, r.prompt, None) for r in workloads[scenarios[0]]]
                finish, seconds = run_engine(base_engine, base_requests, args.output_len, device)
                rows.append(summary("ours-base", 0, base_requests, finish, seconds, args.output_len))
                save()
            for count in scenarios if "ours-merged" in peers else []:
                finish, seconds = run_merged(base_engine, workloads[count], by_name, args.output_len, device,
                                             Deadline(share))
                rows.append(summary("ours-merged", count, workloads[count], finish, seconds, args.output_len))
                save()
            del base_engine
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        if "ours-lora" in peers:
            lora_engine = engine(lora=True)
            for adapter in adapters:
                lora_engine.add_adapter(adapter)
            warm_up(lora_engine, workloads[scenarios[0]], device)
            pool = lora_engine.adapters
            assert pool is not None
            for count in scenarios:
                loads = pool.num_loads
                finish, seconds = run_engine(lora_engine, workloads[count], args.output_len, device)
                rows.append(summary("ours-lora", count, workloads[count], finish, seconds, args.output_len,
                                    adapter_loads=pool.num_loads - loads, max_loras=args.max_loras))
                save()
            del lora_engine
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        del model
        if "peft" in peers:
            peer = PeftPeer(hf_model, device)
            for count in scenarios:
                finish, seconds = peer.run(workloads[count], by_name, args.output_len, Deadline(share))
                rows.append(summary("peft", count, workloads[count], finish, seconds, args.output_len,
                                    adapters_added=len(peer.loaded)))
                save()
    report["wall_s"] = time.monotonic() - started
    save()
    print_table(rows)
    print(f"\nwrote {out} in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
