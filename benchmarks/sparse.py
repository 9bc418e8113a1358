"""Sparse decode attention (Double Sparsity, H2O) against dense, in one run on the same inputs.

Sections (``--sections``, all by default):

- ``kernels``: decode attention time of one layer at 4k/16k/32k/64k context, batch 1 and 16,
  Llama-3-8B's attention shape (32 query heads, 8 KV heads, head dim 128, bf16): our dense
  split-KV Triton kernel; Double Sparsity with 16 and 8 of 128 label channels and 1/16 of the
  tokens (at least 256, plus 16 sink and 64 recent), total and per stage (label scores, top-k,
  gathered attention); H2O at a 20% budget (attention over the kept fifth, plus its mass
  accumulation). Random K/V scattered over a token-slot pool, as in the engine.
- ``memory``: KV bytes per sequence at 32k for each mode, from the real pool tensors and side
  tables the backends allocate, and how many 32k sequences fit in the same KV memory.
- ``e2e``: end-to-end decode steps of a random-weight Llama-3.1-8B-shaped model at 32k context
  (batch ``--e2e-batch``) through our model code and each backend, the KV cache filled with random
  entries instead of a 32k prefill (decode cost does not depend on the values). Dense and H2O
  replay a CUDA graph of the step, as the engine does; Double Sparsity runs eagerly (its top-k
  size follows the context, so the engine does not capture it).
- ``quality``: no real weights can be downloaded here, so the benchmark trains a small Llama
  (4 layers, head dim 128) for ``--train-s`` seconds on two tasks and measures what sparse attention
  costs it: (a) synthetic key-value retrieval - ``--context`` tokens of (2-token key, value)
  pairs, then queries asking a key's value - accuracy of the greedy answer; (b) byte-level
  language modelling of natural English (GSM8K and MMLU questions from ``../shared/data``) -
  perplexity of the second half of held-out windows given the first. Answers and the second
  halves are produced by decode steps, so every sparse setting applies to them.

Usage (GPU): ``python benchmarks/sparse.py`` (about 5 minutes on an H100; ``--budget-s`` caps the
run, sections left over are skipped and say so). CPU smoke test:
``python benchmarks/sparse.py --quick`` (tiny shapes, PyTorch references; writes
``benchmarks/results/sparse_cpu.json``, not a measurement of anything).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, write_result  # noqa: E402
from serving import kernels  # noqa: E402
from serving.attention import DenseAttentionBackend, ForwardBatch, ForwardMode  # noqa: E402
from serving.kernels.testing import make_paged_batch  # noqa: E402
from serving.memory import KVPool, ReqToTokenPool  # noqa: E402
from serving.models import build_model, load_named_tensors  # noqa: E402
from serving.models.llama import head_dim_of  # noqa: E402
from serving.sparse.calibration import rank_channels  # noqa: E402
from serving.sparse.double_sparsity import DoubleSparsityBackend, DoubleSparsityConfig  # noqa: E402
from serving.sparse.h2o import H2OBackend, H2OConfig  # noqa: E402
from serving.sparse.offline import OfflineDecoder  # noqa: E402

PACKAGES = ("torch", "triton", "transformers")
logger = logging.getLogger("benchmarks.sparse")
ATTENTION_SHAPE = (32, 8, 128)  # Llama-3-8B: query heads, KV heads, head dim
DS_SETTINGS = {"ds-1/8ch": 16, "ds-1/16ch": 8}  # label channels of 128
TOKEN_FRACTION, MIN_TOKENS, SINK, RECENT = 1 / 16, 256, 16, 64
H2O_FRACTION = 0.2


@dataclass
class Plan:
    """Sizes of one run: the GPU defaults, or ``--quick``'s tiny CPU ones."""

    device: str
    dtype: torch.dtype
    contexts: tuple[int, ...]
    batches: tuple[int, ...]
    e2e_context: int
    e2e_batch: int
    e2e_layers: int
    quality_context: int
    train_s: float
    quick: bool


def gpu_plan(args) -> Plan:
    return Plan("cuda", torch.bfloat16, (4096, 16384, 32768, 65536), (1, 16), 32768, args.e2e_batch, 32,
                args.context, args.train_s, False)  # fmt: skip


def quick_plan(args) -> Plan:
    return Plan("cpu", torch.float32, (512, 1024), (1, 2), 1024, 2, 2, 256, min(args.train_s, 20.0), True)


# --- timing -------------------------------------------------------------------------------


def time_ms(fn: Callable[[], object], device: str) -> float:
    """Median time of ``fn``: triton's do_bench (CUDA events, L2 flushed) on CUDA, a wall clock on CPU."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"))
    fn()
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return sorted(runs)[1]


# --- section: kernels ---------------------------------------------------------------------


def channels_for(num_kv_heads: int, head_dim: int, count: int, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(count)
    rows = [torch.randperm(head_dim, generator=generator)[:count] for _ in range(num_kv_heads)]
    return torch.stack(rows).to(device=device, dtype=torch.int32)


def kernel_section(plan: Plan) -> list[dict]:
    """One layer's decode attention per mode, context and batch."""
    num_q, num_kv, head_dim = ATTENTION_SHAPE
    rows = []
    for context in plan.contexts:
        for batch_size in plan.batches:
            batch = make_paged_batch([context] * batch_size, num_q, num_kv, head_dim, plan.dtype, plan.device)
            args = batch.decode_args()
            row = {"context": context, "batch": batch_size}
            row["dense_ms"] = time_ms(lambda a=args: kernels.decode_attention(*a), plan.device)
            for name, num_channels in DS_SETTINGS.items():
                row.update(_double_sparsity_times(batch, name, num_channels, context, plan))
            kept = math.ceil(H2O_FRACTION * context)
            h2o = make_paged_batch([kept] * batch_size, num_q, num_kv, head_dim, plan.dtype, plan.device)
            mass = torch.zeros(h2o.k_cache.shape[0], dtype=torch.float32, device=plan.device)
            row["h2o_ms"] = time_ms(
                lambda h=h2o, m=mass: kernels.h2o_decode_attention(*h.decode_args(), m), plan.device
            )
            for name in (*DS_SETTINGS, "h2o"):
                row[f"{name}_speedup"] = row["dense_ms"] / row[f"{name}_ms"]
            rows.append(row)
            del batch, h2o
            if plan.device == "cuda":
                torch.cuda.empty_cache()
    return rows


def _double_sparsity_times(batch, name: str, num_channels: int, context: int, plan: Plan) -> dict:
    num_kv, head_dim = batch.k_cache.shape[1], batch.k_cache.shape[2]
    channels = channels_for(num_kv, head_dim, num_channels, plan.device)
    labels = torch.empty(batch.k_cache.shape[0], num_kv, num_channels, dtype=plan.dtype, device=plan.device)
    kernels.store_labels(
        batch.k_cache, labels, channels, torch.arange(batch.k_cache.shape[0], device=plan.device)
    )
    config = DoubleSparsityConfig(num_channels, TOKEN_FRACTION, MIN_TOKENS, SINK, RECENT, dense_below=0)
    k = config.selected_tokens(context)
    score_args = (batch.q, labels, channels, batch.req_to_token, batch.req_pool_indices, batch.seq_lens,
                  context, SINK, RECENT)  # fmt: skip
    scores = kernels.label_scores(*score_args)
    positions = kernels.select_tokens(scores, k)
    gather_args = (*batch.decode_args()[:-1], positions, batch.scale)

    def total() -> torch.Tensor:
        chosen = kernels.select_tokens(kernels.label_scores(*score_args), k)
        return kernels.gathered_decode_attention(*batch.decode_args()[:-1], chosen, batch.scale)

    return {
        f"{name}_ms": time_ms(total, plan.device),
        f"{name}_labels_ms": time_ms(lambda: kernels.label_scores(*score_args), plan.device),
        f"{name}_topk_ms": time_ms(lambda: kernels.select_tokens(scores, k), plan.device),
        f"{name}_gather_ms": time_ms(lambda: kernels.gathered_decode_attention(*gather_args), plan.device),
        f"{name}_tokens": k,
    }


def print_kernel_table(rows: list[dict]) -> None:
    print("\nDecode attention, one layer (32q/8kv heads, d128), ms and speedup over dense")
    header = f"{'context':>8} {'batch':>5} {'dense':>8} " + " ".join(
        f"{n:>16}" for n in (*DS_SETTINGS, "h2o-20%")
    )
    print(header)
    for row in rows:
        cells = [f"{row[f'{n}_ms']:7.3f} {row[f'{n}_speedup']:6.1f}x" for n in DS_SETTINGS]
        cells.append(f"{row['h2o_ms']:7.3f} {row['h2o_speedup']:6.1f}x")
        print(
            f"{row['context']:>8} {row['batch']:>5} {row['dense_ms']:8.3f} "
            + " ".join(f"{c:>16}" for c in cells)
        )
    print("Double Sparsity stages (1/8 channels), ms: labels / top-k / gathered attention")
    for row in rows:
        print(f"{row['context']:>8} {row['batch']:>5}   {row['ds-1/8ch_labels_ms']:.3f} / "
              f"{row['ds-1/8ch_topk_ms']:.3f} / {row['ds-1/8ch_gather_ms']:.3f}  (K = {row['ds-1/8ch_tokens']})")  # fmt: skip


# --- section: memory ----------------------------------------------------------------------


def llama8b_config(layers: int = 32):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )  # fmt: skip


def _pool_bytes_per_slot(pool: KVPool) -> int:
    side = sum(t[:, 0].numel() * t.element_size() for t in pool.side_tables.values())
    return pool.bytes_per_slot() + side


def memory_section(context: int = 32768, budget_gib: float = 40.0) -> dict:
    """Bytes per 32k sequence and sequences per KV budget, from the backends' real allocations."""
    layers, kv_heads, head_dim = 32, 8, 128
    results = {}
    h2o_config = H2OConfig(budget_fraction=H2O_FRACTION)
    for mode in ("dense", "ds-1/8ch", "ds-1/16ch", "h2o-20%"):
        pool = KVPool(layers, 4, kv_heads, head_dim, torch.bfloat16, "cpu")
        rows = ReqToTokenPool(1, 4, "cpu")
        if mode.startswith("ds"):
            count = DS_SETTINGS[mode]
            DoubleSparsityBackend(
                pool, rows, None, DoubleSparsityConfig(count), channels=torch.zeros(layers, kv_heads, count)
            )
            entries = context
        elif mode.startswith("h2o"):
            H2OBackend(pool, rows, None, h2o_config)
            entries = h2o_config.budget(context) + h2o_config.evict_slack  # the most it holds
        else:
            entries = context
        per_sequence = entries * _pool_bytes_per_slot(pool)
        results[mode] = {
            "kv_entries": entries,
            "bytes_per_slot": _pool_bytes_per_slot(pool),
            "mib_per_sequence": per_sequence / 2**20,
            "sequences_in_budget": int(budget_gib * 2**30 // per_sequence),
        }
    dense = results["dense"]["sequences_in_budget"]
    for value in results.values():
        value["sequences_vs_dense"] = value["sequences_in_budget"] / dense
    return {"context": context, "budget_gib": budget_gib, "modes": results}


def print_memory_table(memory: dict) -> None:
    print(f"\nKV memory per {memory['context']}-token sequence (Llama-3-8B shape, bf16), "
          f"sequences in {memory['budget_gib']:.0f} GiB")  # fmt: skip
    for mode, value in memory["modes"].items():
        print(f"  {mode:>10}: {value['kv_entries']:>6} entries x {value['bytes_per_slot']} B = "
              f"{value['mib_per_sequence']:8.1f} MiB -> {value['sequences_in_budget']:>4} sequences "
              f"({value['sequences_vs_dense']:.2f}x dense)")  # fmt: skip


# --- section: e2e -------------------------------------------------------------------------


def random_model(config, plan: Plan, max_positions: int):
    torch.manual_seed(0)
    model = build_model(config, plan.device, plan.dtype, max_positions)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
    return model


def _filled_decoder(model, make_backend, batch: int, context: int, kv_len: int, plan: Plan):
    """Pool + rows + backend with ``batch`` sequences at position ``context`` holding ``kv_len``
    random KV entries each (labels stored for Double Sparsity); returns (backend, rows, slots)."""
    config = model.config
    pool = KVPool(config.num_hidden_layers, batch * (kv_len + 1) + 1, config.num_key_value_heads,
                  head_dim_of(config), plan.dtype, plan.device)  # fmt: skip
    rows = ReqToTokenPool(batch, kv_len + 1, plan.device)
    backend = make_backend(pool, rows)
    slots = pool.alloc(batch * kv_len).to(plan.device)
    for layer in range(config.num_hidden_layers):
        pool.k[layer][slots] = torch.randn(slots.numel(), *pool.k[layer].shape[1:], device=plan.device).to(
            plan.dtype
        )
        pool.v[layer][slots] = torch.randn(slots.numel(), *pool.v[layer].shape[1:], device=plan.device).to(
            plan.dtype
        )
        if isinstance(backend, DoubleSparsityBackend):
            kernels.store_labels(pool.k[layer], backend.labels[layer], backend.channels[layer], slots)
    row_ids = [rows.alloc() for _ in range(batch)]
    rows.req_to_token[torch.tensor(row_ids, device=plan.device)[:, None].expand(batch, kv_len),
                      torch.arange(kv_len, device=plan.device)] = slots.view(batch, kv_len).to(torch.int32)  # fmt: skip
    step = ForwardBatch(
        mode=ForwardMode.DECODE,
        input_ids=torch.randint(0, 1000, (batch,), device=plan.device),
        positions=torch.full((batch,), context, device=plan.device),
        out_cache_loc=pool.alloc(batch).to(plan.device),
        req_pool_indices=torch.tensor(row_ids, device=plan.device),
        seq_lens=torch.full((batch,), kv_len + 1, device=plan.device),
        extend_lens=torch.ones(batch, dtype=torch.int64, device=plan.device),
        q_start=torch.arange(batch, device=plan.device),
        logits_indices=torch.arange(batch, device=plan.device),
    )
    if isinstance(backend, DoubleSparsityBackend):
        backend.plan(kv_len + 1, [])
    return backend, step, pool


def _step_ms(model, backend, step: ForwardBatch, use_graph: bool, plan: Plan) -> float:
    def run() -> torch.Tensor:
        backend.prepare(step)
        return model(step, backend)

    with torch.inference_mode():
        if not (use_graph and plan.device == "cuda"):
            return time_ms(run, plan.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        return time_ms(graph.replay, plan.device)


def e2e_section(plan: Plan) -> dict:
    config = llama8b_config(plan.e2e_layers)
    if plan.quick:
        config.hidden_size, config.intermediate_size, config.vocab_size = 256, 512, 1000
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 1, 128
    context, batch = plan.e2e_context, plan.e2e_batch
    model = random_model(config, plan, context + 8)
    kv_heads, layers = config.num_key_value_heads, config.num_hidden_layers
    h2o_config = H2OConfig(budget_fraction=H2O_FRACTION)
    modes = {
        "dense": (lambda p, r: DenseAttentionBackend(p, r), context, True),
        "dense-eager": (lambda p, r: DenseAttentionBackend(p, r), context, False),
        "h2o-20%": (lambda p, r: H2OBackend(p, r, None, h2o_config), h2o_config.budget(context), True),
    }
    for name, count in DS_SETTINGS.items():
        ds_config = DoubleSparsityConfig(count, TOKEN_FRACTION, MIN_TOKENS, SINK, RECENT, dense_below=2048)
        channels = torch.stack([channels_for(kv_heads, 128, count, plan.device) for _ in range(layers)])
        modes[name] = (
            (lambda p, r, c=ds_config, ch=channels: DoubleSparsityBackend(p, r, None, c, ch)),
            context,
            False,
        )
    results = {}
    for name, (make_backend, kv_len, use_graph) in modes.items():
        backend, step, pool = _filled_decoder(model, make_backend, batch, context, kv_len, plan)
        ms = _step_ms(model, backend, step, use_graph, plan)
        results[name] = {"step_ms": ms, "tokens_per_s": batch * 1e3 / ms, "cuda_graph": use_graph and plan.device == "cuda",
                         "kv_entries_per_sequence": kv_len}  # fmt: skip
        del backend, step, pool
        if plan.device == "cuda":
            torch.cuda.empty_cache()
    for value in results.values():
        value["speedup_vs_dense"] = results["dense"]["step_ms"] / value["step_ms"]
    return {"context": context, "batch": batch, "layers": layers, "modes": results}


def print_e2e_table(e2e: dict) -> None:
    print(f"\nEnd-to-end decode step, {e2e['layers']}-layer Llama-3.1-8B shape (random weights), "
          f"{e2e['context']} context, batch {e2e['batch']}")  # fmt: skip
    for name, value in e2e["modes"].items():
        graph = "graph" if value["cuda_graph"] else "eager"
        print(f"  {name:>12}: {value['step_ms']:8.2f} ms/step ({graph}) {value['tokens_per_s']:9.1f} tok/s "
              f"{value['speedup_vs_dense']:5.2f}x dense")  # fmt: skip


# --- section: quality ---------------------------------------------------------------------

PAIR_SYMBOLS = 120  # key tokens 256..375, value tokens 376..495
KEY_BASE, VALUE_BASE, QUERY, VOCAB = 256, 376, 500, 512
QUERIES_PER_SEQUENCE = 16
WARMUP_SHARE = 0.4  # of the training time, on windows a quarter as long (more steps, same task)


def text_corpus(text_dir: Path | None) -> tuple[bytes, str]:
    """Natural English for the perplexity task: GSM8K and MMLU questions from ``../shared/data``
    (falls back to the demo corpus of Python sources when the data is absent, and says so)."""
    root = Path(__file__).resolve().parents[1]
    candidates = (
        [text_dir]
        if text_dir
        else [root.parent / "shared/data/decontam/benchmarks", root / "shared/data/decontam/benchmarks"]
    )
    for base in candidates:
        if base is not None and (base / "gsm8k/test.jsonl").is_file():
            parts = [json.loads(line)["question"] + "\n" + json.loads(line)["answer"]
                     for line in (base / "gsm8k/test.jsonl").read_text().splitlines() if line.strip()]  # fmt: skip
            for path in sorted((base / "mmlu/test_official_14042_mirror").glob("*.csv")):
                with path.open(newline="", encoding="utf-8") as handle:
                    parts += [" ".join(row[:5]) for row in csv.reader(handle)][1:]
            return "\n\n".join(parts).encode("utf-8"), f"{base} (GSM8K test + MMLU test questions)"
    from serving.demo_models import corpus_texts

    return "\n".join(corpus_texts()).encode("utf-8"), "Python standard-library sources (shared data absent)"


def retrieval_sequence(
    context: int, generator: torch.Generator
) -> tuple[list[int], list[tuple[int, int, int]]]:
    """(2-token key, value) triples filling ``context`` tokens, and queries on some of them."""
    pairs = context // 3
    keys = torch.randperm(PAIR_SYMBOLS * PAIR_SYMBOLS, generator=generator)[:pairs]
    values = torch.randint(0, PAIR_SYMBOLS, (pairs,), generator=generator)
    tokens: list[int] = []
    triples = []
    for key, value in zip(keys.tolist(), values.tolist(), strict=True):
        triple = (KEY_BASE + key // PAIR_SYMBOLS, KEY_BASE + key % PAIR_SYMBOLS, VALUE_BASE + value)
        triples.append(triple)
        tokens += triple
    asked = torch.randperm(pairs, generator=generator)[:QUERIES_PER_SEQUENCE].tolist()
    return tokens, [triples[i] for i in asked]


def retrieval_batch(
    context: int, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows: pairs then queries ``[QUERY k1 k2 v]``; loss only on the values."""
    inputs, labels = [], []
    for _ in range(batch):
        tokens, asked = retrieval_sequence(context - 4 * QUERIES_PER_SEQUENCE, generator)
        target = [-100] * len(tokens)
        for k1, k2, v in asked:
            tokens += [QUERY, k1, k2, v]
            target += [-100, -100, -100, v]
        inputs.append(tokens)
        labels.append(target)
    return torch.tensor(inputs, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64)


def small_llama_config(context: int, quick: bool):
    from transformers import LlamaConfig

    hidden, layers = (128, 2) if quick else (512, 4)
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2 if quick else 4, num_key_value_heads=1 if quick else 2, head_dim=64 if quick else 128,
        max_position_embeddings=2 * context + 64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
    )  # fmt: skip


def train_small_llama(plan: Plan, text: bytes, log: list[str]):
    """Train on alternating retrieval and text batches for ``plan.train_s`` seconds (AdamW, bf16
    autocast on CUDA; the first 40% of the time on quarter-length windows, which gives many more
    steps to learn the retrieval rule); return the transformers model."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    context = plan.quality_context
    config = small_llama_config(context, plan.quick)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(plan.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    generator = torch.Generator().manual_seed(1)
    train_text = torch.frombuffer(bytearray(text[: int(len(text) * 0.9)]), dtype=torch.uint8).long()
    batch = 4 if plan.quick else 16
    start, step = time.monotonic(), 0
    model.train()
    while time.monotonic() - start < plan.train_s:
        warming = time.monotonic() - start < WARMUP_SHARE * plan.train_s
        short = max(context // 4, 12 * QUERIES_PER_SEQUENCE)
        length, rows = (short, max(1, context // short) * batch) if warming else (context, batch)
        if step % 2 == 0:
            inputs, labels = retrieval_batch(length, rows, generator)
        else:
            starts = torch.randint(0, len(train_text) - length - 1, (rows,), generator=generator)
            inputs = torch.stack([train_text[s : s + length] for s in starts.tolist()])
            labels = inputs
        lr = 1e-3 * min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(plan.device, dtype=torch.bfloat16, enabled=plan.device == "cuda"):
            loss = model(inputs.to(plan.device), labels=labels.to(plan.device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 < 2:
            task = "retrieval" if step % 2 == 0 else "text"
            log.append(f"step {step}: {task} loss {loss.item():.3f} at length {length}")
            logger.info(log[-1])
        step += 1
    model.eval()
    log.append(f"trained {step} steps in {time.monotonic() - start:.0f} s")
    return model


def quality_backends(model, channels_by_count: dict[int, torch.Tensor], context: int) -> dict[str, Callable]:
    """The settings compared: dense, Double Sparsity at 1/8 and 1/16 of the channels with 1/16
    of the tokens (sink 4, recent 16: small windows, so the 1/16 is what is tested), H2O 20%."""
    modes: dict[str, Callable] = {"dense": lambda p, r: DenseAttentionBackend(p, r)}
    head_dim = model.config.head_dim
    for name, fraction in (("ds-1/8ch", 8), ("ds-1/16ch", 16)):
        count = max(1, head_dim // fraction)
        config = DoubleSparsityConfig(count, TOKEN_FRACTION, 0, 4, 16, dense_below=0)
        modes[name] = lambda p, r, c=config, ch=channels_by_count[count]: DoubleSparsityBackend(
            p, r, None, c, ch
        )
    h2o = H2OConfig(budget_fraction=H2O_FRACTION, min_budget=16, evict_slack=16)
    modes["h2o-20%"] = lambda p, r: H2OBackend(p, r, None, h2o)
    return modes


@torch.inference_mode()
def retrieval_accuracy(model, make_backend, sequences) -> float:
    """Greedy answers to each sequence's queries, asked one after another by decode steps."""
    decoder = OfflineDecoder(
        model, make_backend, len(sequences), max(len(s[0]) for s in sequences) + 4 * QUERIES_PER_SEQUENCE + 2
    )
    decoder.prefill([tokens for tokens, _ in sequences])
    correct = total = 0
    for q in range(QUERIES_PER_SEQUENCE):
        decoder.decode([QUERY] * len(sequences))
        decoder.decode([asked[q][0] for _, asked in sequences])
        logits = decoder.decode([asked[q][1] for _, asked in sequences])
        answers = logits.argmax(-1).tolist()
        correct += sum(int(a == asked[q][2]) for a, (_, asked) in zip(answers, sequences, strict=True))
        total += len(sequences)
        decoder.decode([asked[q][2] for _, asked in sequences])  # the true answer, as in training
    return correct / total


@torch.inference_mode()
def perplexity(model, make_backend, windows: list[list[int]]) -> float:
    """exp(mean NLL) of each window's second half, fed by decode steps after a prefill of the first."""
    half = len(windows[0]) // 2
    decoder = OfflineDecoder(model, make_backend, len(windows), len(windows[0]) + 2)
    logits = decoder.prefill([w[:half] for w in windows])
    nll, count = 0.0, 0
    for position in range(half, len(windows[0])):
        targets = torch.tensor([w[position] for w in windows], device=logits.device)
        nll -= torch.log_softmax(logits.float(), -1).gather(1, targets[:, None]).sum().item()
        count += len(windows)
        if position + 1 < len(windows[0]):
            logits = decoder.decode(targets.tolist())
    return math.exp(nll / count)


def quality_section(plan: Plan, text_dir: Path | None, log: list[str]) -> dict:
    text, source = text_corpus(text_dir)
    hf_model = train_small_llama(plan, text, log)
    context = plan.quality_context
    model = build_model(hf_model.config, plan.device, plan.dtype, 2 * context + 64)
    load_named_tensors(model, hf_model.named_parameters(), source="trained")
    del hf_model
    generator = torch.Generator().manual_seed(99)
    calibration = retrieval_sequence(context, generator)[0] + list(text[-4 * context :])
    ranking = rank_channels(model, calibration, window=context)
    head_dim = model.config.head_dim
    channels = {max(1, head_dim // f): ranking.top(max(1, head_dim // f)) for f in (8, 16)}
    count = 8 if plan.quick else 32
    sequences = [retrieval_sequence(context - 4 * QUERIES_PER_SEQUENCE - 4, generator) for _ in range(count)]
    held_out = text[int(len(text) * 0.9) :]
    stride = max(1, (len(held_out) - context) // count)
    windows = [list(held_out[i * stride : i * stride + context]) for i in range(count)]
    results = {}
    for name, make_backend in quality_backends(model, channels, context).items():
        results[name] = {
            "retrieval_accuracy": retrieval_accuracy(model, make_backend, sequences),
            "perplexity": perplexity(model, make_backend, windows),
        }
        log.append(f"{name}: {results[name]}")
    return {"context": context, "text_source": source, "eval_sequences": count, "modes": results,
            "model": {"layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
                      "head_dim": head_dim, "train_s": plan.train_s}}  # fmt: skip


def print_quality_table(quality: dict) -> None:
    print(f"\nQuality of a briefly trained small Llama at {quality['context']} context "
          f"({quality['eval_sequences']} sequences per task; text: {quality['text_source']})")  # fmt: skip
    dense = quality["modes"]["dense"]
    for name, value in quality["modes"].items():
        print(f"  {name:>10}: retrieval {100 * value['retrieval_accuracy']:5.1f}% "
              f"({100 * (value['retrieval_accuracy'] - dense['retrieval_accuracy']):+5.1f} pts)  "
              f"perplexity {value['perplexity']:7.3f} ({value['perplexity'] - dense['perplexity']:+.3f})")  # fmt: skip


# --- driver -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="kernels,memory,e2e,quality")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="skip sections that would start after this"
    )
    parser.add_argument("--train-s", type=float, default=150.0, help="training time of the quality model")
    parser.add_argument("--context", type=int, default=2048, help="context of the quality tasks")
    parser.add_argument("--e2e-batch", type=int, default=8)
    parser.add_argument(
        "--text-dir",
        type=Path,
        default=None,
        help="folder with gsm8k/ and mmlu/ (default: ../shared/data/...)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run (not a measurement)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.quick and not torch.cuda.is_available():
        raise SystemExit("sparse.py measures on a CUDA GPU; use --quick for the CPU smoke run")
    plan = quick_plan(args) if args.quick else gpu_plan(args)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    started = time.monotonic()
    payload: dict = {"quick": plan.quick, "device": plan.device, "skipped": [], "log": []}
    for section in sections:
        if time.monotonic() - started > args.budget_s:
            payload["skipped"].append(section)
            print(f"\n[{section}: skipped, the {args.budget_s:.0f} s budget is spent]")
            continue
        if section == "kernels":
            payload["kernels"] = kernel_section(plan)
            print_kernel_table(payload["kernels"])
        elif section == "memory":
            payload["memory"] = memory_section()
            print_memory_table(payload["memory"])
        elif section == "e2e":
            payload["e2e"] = e2e_section(plan)
            print_e2e_table(payload["e2e"])
        elif section == "quality":
            payload["quality"] = quality_section(plan, args.text_dir, payload["log"])
            print_quality_table(payload["quality"])
        else:
            raise SystemExit(f"unknown section {section!r}")
    payload["elapsed_s"] = time.monotonic() - started
    out = args.out or RESULTS_DIR / ("sparse_cpu.json" if plan.quick else "sparse.json")
    print(f"\nwrote {write_result('sparse', payload, packages=PACKAGES, path=out)}")


if __name__ == "__main__":
    main()
