"""Benchmark of the serving engine's Triton kernels against their peers, on one CUDA GPU.

Claims measured, all in one run on the same inputs:

- paged decode attention (split-KV, GQA): time and achieved bandwidth (KV bytes + slot-table
  bytes read per call / time) against the HBM bandwidth measured by a large device copy in
  the same run; peers: the PyTorch reference, gather-then-SDPA over the paged pool (what an
  engine without a paged kernel does) and SDPA over a dense, contiguous KV cache (no paging);
- extend/prefill attention: TFLOP/s against SDPA (causal flash over dense tensors);
- fused small ops (RMSNorm, add+RMSNorm, rotary + KV store, SiLU-mul): GB/s against eager PyTorch;
- a sweep of the decode and extend launch parameters, to justify the defaults;
- the small-batch GEMV (``--sections gemv``): weight GB/s against cuBLAS (``F.linear``) at the
  projection shapes of Llama-3.1-8B and Qwen3-0.6B for 1-8 rows, and a launch-parameter sweep.

Usage (device tool): ``python benchmarks/serving_kernels.py --out benchmarks/results/serving_kernels.json``
(``--sections gemv --out benchmarks/results/serving_gemv.json`` for the GEMV part alone).
Prints tables; writes JSON with the machine, versions and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serving.kernels as kernels  # noqa: E402
from serving.kernels.paged_decode import decode_attention_triton  # noqa: E402
from serving.kernels.paged_extend import LAUNCH_VARIANTS, extend_attention_triton  # noqa: E402
from serving.kernels.testing import PagedBatch, make_paged_batch  # noqa: E402

MODEL_SHAPES = {"llama3-8b": (32, 8, 128), "qwen3-0.6b": (16, 8, 128)}
DTYPE = torch.bfloat16
DEVICE = "cuda"
CONTEXT = 4096
DECODE_BATCHES = (1, 16, 64, 256)
SWEEP_BATCHES = (1, 16, 64)
EXTEND_CASES = (  # label, batch, seq_len, extend_len
    ("prefill 4x1024", 4, 1024, 1024),
    ("prefill 1x4096", 1, 4096, 4096),
    ("extend 8x512 after 1536 prefix", 8, 2048, 512),
)
ELEMENTWISE_TOKENS = (256, 4096)
HIDDEN, INTERMEDIATE = 4096, 14336  # Llama-3.1-8B


def bench_ms(fn: Callable[[], object]) -> float:
    """Median time of ``fn`` in ms (triton's do_bench: CUDA events, L2 flushed between runs)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def bench_graph_ms(fn: Callable[[], object]) -> float:
    """Median time of ``fn`` replayed from a CUDA graph: kernel time without launch overhead.

    This is how the engine runs decode steps, and it keeps the CPU cost of Python launches
    out of the small cases.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # compile and warm up outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench_ms(graph.replay)


def copy_bandwidth_gbs() -> float:
    """HBM bandwidth from a 2 GiB device-to-device copy, counting bytes read plus written."""
    source = torch.empty(2**30, dtype=torch.bfloat16, device=DEVICE).normal_()
    target = torch.empty_like(source)
    ms = bench_ms(lambda: target.copy_(source))
    return 2 * source.numel() * source.element_size() / ms / 1e6


def decode_bytes(batch: PagedBatch) -> int:
    """Fewest bytes a decode call must move: each request's K/V rows and slot ids, q and out."""
    tokens = int(batch.seq_lens.sum())
    kv_row = batch.k_cache.shape[1] * batch.k_cache.shape[2] * batch.k_cache.element_size()
    return tokens * (2 * kv_row + 4) + 2 * batch.q.numel() * batch.q.element_size()


def dense_kv(batch: PagedBatch, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's K/V gathered into dense ``[B, Hkv, L, D]`` tensors (uniform lengths only).

    ``length`` comes from the host so that the gather can be captured in a CUDA graph.
    """
    slots = batch.req_to_token[batch.req_pool_indices, :length].long()
    return batch.k_cache[slots].transpose(1, 2).contiguous(), batch.v_cache[slots].transpose(
        1, 2
    ).contiguous()


def gather_then_sdpa(batch: PagedBatch, length: int) -> torch.Tensor:
    """Decode the way an engine without a paged kernel would: gather K/V, then SDPA."""
    keys, values = dense_kv(batch, length)
    return F.scaled_dot_product_attention(
        batch.q[:, :, None], keys, values, scale=batch.scale, enable_gqa=True
    )


def decode_rows(bandwidth: float) -> list[dict]:
    """Decode attention per model shape and batch size at a 4k context.

    Triton and the SDPA peers are timed as CUDA-graph replays (as the engine runs decode);
    ``triton_eager_ms`` adds the Python launch cost; the reference syncs, so it runs eagerly.
    """
    rows = []
    for model, (heads, kv_heads, head_dim) in MODEL_SHAPES.items():
        for batch_size in DECODE_BATCHES:
            batch = make_paged_batch([CONTEXT] * batch_size, heads, kv_heads, head_dim, DTYPE, DEVICE)
            keys, values = dense_kv(batch, CONTEXT)
            query = batch.q[:, :, None].contiguous()
            row = {"model": model, "batch": batch_size, "context": CONTEXT, "bytes": decode_bytes(batch)}
            row["triton_eager_ms"] = bench_ms(lambda b=batch: decode_attention_triton(*b.decode_args()))
            row["triton_ms"] = bench_graph_ms(lambda b=batch: decode_attention_triton(*b.decode_args()))
            row["sdpa_dense_ms"] = bench_graph_ms(
                lambda q=query, k=keys, v=values, s=batch.scale: F.scaled_dot_product_attention(
                    q, k, v, scale=s, enable_gqa=True
                )
            )
            row["gather_sdpa_ms"] = bench_graph_ms(lambda b=batch: gather_then_sdpa(b, CONTEXT))
            if batch_size <= 64:
                row["reference_ms"] = bench_ms(lambda b=batch: kernels.decode_attention_ref(*b.decode_args()))
            row["triton_gbs"] = row["bytes"] / row["triton_ms"] / 1e6
            row["fraction_of_copy_bw"] = row["triton_gbs"] / bandwidth
            rows.append(row)
            del batch, keys, values, query
            torch.cuda.empty_cache()
    return rows


def decode_sweep() -> list[dict]:
    """Time decode launch parameters on the 8B shape (the defaults should sit near the best)."""
    rows = []
    heads, kv_heads, head_dim = MODEL_SHAPES["llama3-8b"]
    for batch_size in SWEEP_BATCHES:
        batch = make_paged_batch([CONTEXT] * batch_size, heads, kv_heads, head_dim, DTYPE, DEVICE)
        for splits in (1, 2, 4, 8, 16, 32):
            for block_n, warps in ((32, 4), (64, 4), (128, 4), (128, 8)):
                ms = bench_graph_ms(
                    lambda b=batch, s=splits, n=block_n, w=warps: decode_attention_triton(
                        *b.decode_args(), num_splits=s, block_n=n, num_warps=w
                    )
                )
                rows.append(
                    {"batch": batch_size, "splits": splits, "block_n": block_n, "warps": warps, "ms": ms}
                )
        rows.append(
            {
                "batch": batch_size,
                "splits": "default",
                "ms": bench_graph_ms(lambda b=batch: decode_attention_triton(*b.decode_args())),
            }
        )
    return rows


def causal_flops(seq_lens: list[int], extend_lens: list[int], heads: int, head_dim: int) -> float:
    """Multiply-adds x2 of QK^T and PV over the visible (causal) keys of every new token."""
    visible = sum(sum(s - e + i + 1 for i in range(e)) for s, e in zip(seq_lens, extend_lens, strict=True))
    return 4.0 * heads * head_dim * visible


def dense_extend_peer(batch: PagedBatch, seq_len: int, extend_len: int) -> Callable[[], object]:
    """SDPA over dense tensors of the same uniform batch (causal flash when there is no prefix)."""
    keys, values = dense_kv(batch, seq_len)
    batch_size, heads = batch.req_pool_indices.shape[0], batch.q.shape[1]
    query = (
        batch.q.reshape(batch_size, extend_len + 1, heads, -1)[:, :extend_len].transpose(1, 2).contiguous()
    )
    if seq_len == extend_len:
        return lambda: F.scaled_dot_product_attention(
            query, keys, values, is_causal=True, scale=batch.scale, enable_gqa=True
        )
    prefix = seq_len - extend_len
    mask = (
        torch.arange(seq_len, device=DEVICE)[None, :]
        <= prefix + torch.arange(extend_len, device=DEVICE)[:, None]
    )
    return lambda: F.scaled_dot_product_attention(
        query, keys, values, attn_mask=mask, scale=batch.scale, enable_gqa=True
    )


def extend_rows() -> list[dict]:
    """Prefill and prefix-hit extends at the 8B shape."""
    heads, kv_heads, head_dim = MODEL_SHAPES["llama3-8b"]
    rows = []
    for label, batch_size, seq_len, extend_len in EXTEND_CASES:
        batch = make_paged_batch(
            [seq_len] * batch_size,
            heads,
            kv_heads,
            head_dim,
            DTYPE,
            DEVICE,
            extend_lens=[extend_len] * batch_size,
        )
        flops = causal_flops([seq_len] * batch_size, [extend_len] * batch_size, heads, head_dim)
        row = {"case": label, "tflop": flops / 1e12}
        row["triton_ms"] = bench_ms(lambda b=batch: extend_attention_triton(*b.extend_args()))
        row["sdpa_dense_ms"] = bench_ms(dense_extend_peer(batch, seq_len, extend_len))
        row["reference_ms"] = bench_ms(lambda b=batch: kernels.extend_attention_ref(*b.extend_args()))
        for block_m, block_n, warps, stages in LAUNCH_VARIANTS:
            row[f"variant_m{block_m}_n{block_n}_w{warps}_s{stages}_ms"] = bench_ms(
                lambda b=batch, m=block_m, n=block_n, w=warps, st=stages: extend_attention_triton(
                    *b.extend_args(), block_m=m, block_n=n, num_warps=w, num_stages=st
                )
            )
        row["triton_tflops"] = flops / row["triton_ms"] / 1e9
        row["sdpa_tflops"] = flops / row["sdpa_dense_ms"] / 1e9
        rows.append(row)
    return rows


def elementwise_rows(bandwidth: float) -> list[dict]:
    """Fused small ops at 8B shapes for a 256-token step and a 4096-token prefill.

    Both sides are replayed from CUDA graphs; ``eager`` is the unfused PyTorch reference.
    """
    rows = []
    for tokens in ELEMENTWISE_TOKENS:
        x = torch.randn(tokens, HIDDEN, dtype=DTYPE, device=DEVICE)
        residual, weight = torch.randn_like(x), torch.rand(HIDDEN, dtype=DTYPE, device=DEVICE)
        qkv = torch.randn(tokens, 48, 128, dtype=DTYPE, device=DEVICE)
        q, k, v = qkv[:, :32], qkv[:, 32:40], qkv[:, 40:]
        k_cache = torch.zeros(2 * tokens, 8, 128, dtype=DTYPE, device=DEVICE)
        v_cache = torch.zeros_like(k_cache)
        slots = torch.randperm(2 * tokens, device=DEVICE)[:tokens]
        positions = torch.randint(0, 8192, (tokens,), device=DEVICE)
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, device=DEVICE).float() / 128))
        cache = kernels.rotary_cos_sin_cache(inv_freq, 8192)
        gate_up = torch.randn(tokens, 2 * INTERMEDIATE, dtype=DTYPE, device=DEVICE)
        cases = {
            "rms_norm": (2 * x.nbytes, kernels.rms_norm_triton, kernels.rms_norm_ref, (x, weight, 1e-5)),
            "fused_add_rms_norm": (
                4 * x.nbytes,
                kernels.fused_add_rms_norm_triton,
                kernels.fused_add_rms_norm_ref,
                (x, residual, weight, 1e-5),
            ),
            "rotary_store_kv": (  # reads q, k, v; writes q and the K/V cache slots
                2 * qkv.nbytes,
                kernels.rotary_store_kv_triton,
                kernels.rotary_store_kv_ref,
                (q, k, v, positions, cache, k_cache, v_cache, slots),
            ),
            "silu_and_mul": (
                gate_up.nbytes * 3 // 2,
                kernels.silu_and_mul_triton,
                kernels.silu_and_mul_ref,
                (gate_up,),
            ),
        }
        for name, (nbytes, triton_op, ref_op, args) in cases.items():
            triton_ms = bench_graph_ms(lambda op=triton_op, a=args: op(*a))
            eager_ms = bench_graph_ms(lambda op=ref_op, a=args: op(*a))
            rows.append(
                {
                    "op": name,
                    "tokens": tokens,
                    "triton_ms": triton_ms,
                    "eager_ms": eager_ms,
                    "speedup": eager_ms / triton_ms,
                    "triton_gbs": nbytes / triton_ms / 1e6,
                    "fraction_of_copy_bw": nbytes / triton_ms / 1e6 / bandwidth,
                }
            )
    return rows


GEMV_SHAPES = (  # label, out_features, in_features, input is gate|up (SwiGLU applied in the kernel)
    ("llama8b qkv", 6144, 4096, False),
    ("llama8b o_proj", 4096, 4096, False),
    ("llama8b gate_up", 28672, 4096, False),
    ("llama8b down", 4096, 14336, True),
    ("llama8b lm_head", 128256, 4096, False),
    ("qwen3 qkv", 4096, 1024, False),
    ("qwen3 o_proj", 1024, 2048, False),
    ("qwen3 gate_up", 6144, 1024, False),
    ("qwen3 down", 1024, 3072, True),
)
GEMV_ROWS = (1, 2, 4, 8)
GEMV_SWEEP = [(n, k, w) for n in (2, 4, 8, 16) for k in (512, 1024, 2048) for w in (4, 8)]


def gemv_inputs(rows: int, out_features: int, in_features: int, swiglu: bool) -> tuple:
    weight = torch.randn(out_features, in_features, dtype=DTYPE, device=DEVICE) / in_features**0.5
    x = torch.randn(rows, 2 * in_features if swiglu else in_features, dtype=DTYPE, device=DEVICE)
    return x, weight


def gemv_rows(bandwidth: float) -> list[dict]:
    """Triton GEMV vs cuBLAS (after the SiLU-mul kernel for the down projection), in CUDA graphs."""
    from serving.kernels.gemv import linear_triton

    rows = []
    for label, out_features, in_features, swiglu in GEMV_SHAPES:
        for count in GEMV_ROWS:
            x, weight = gemv_inputs(count, out_features, in_features, swiglu)
            triton_ms = bench_graph_ms(lambda x=x, w=weight, s=swiglu: linear_triton(x, w, None, s))
            cublas_ms = bench_graph_ms(
                lambda x=x, w=weight, s=swiglu: F.linear(kernels.silu_and_mul_triton(x) if s else x, w)
            )
            rows.append(
                {
                    "shape": label,
                    "rows": count,
                    "triton_ms": triton_ms,
                    "cublas_ms": cublas_ms,
                    "cublas_over_triton": cublas_ms / triton_ms,
                    "triton_weight_gbs": weight.nbytes / triton_ms / 1e6,
                    "triton_fraction_of_copy_bw": weight.nbytes / triton_ms / 1e6 / bandwidth,
                    "cublas_fraction_of_copy_bw": weight.nbytes / cublas_ms / 1e6 / bandwidth,
                }
            )
    return rows


def gemv_sweep() -> list[dict]:
    """(BLOCK_N, BLOCK_K, warps) sweep at 1 and 2 rows, to choose ``gemv_launch_config``."""
    from serving.kernels.gemv import gemv_launch_config, linear_triton

    rows = []
    swept = ("llama8b o_proj", "llama8b gate_up", "llama8b down", "llama8b lm_head")
    for label, out_features, in_features, swiglu in [s for s in GEMV_SHAPES if s[0] in swept]:
        for count in (1, 2):
            x, weight = gemv_inputs(count, out_features, in_features, swiglu)
            default = gemv_launch_config(in_features)
            for config in [*GEMV_SWEEP, "default"]:
                launch = default if config == "default" else config
                ms = bench_graph_ms(lambda x=x, w=weight, s=swiglu, c=launch: linear_triton(x, w, None, s, c))
                rows.append({"shape": label, "rows": count, "config": str(config), "ms": ms})
    return rows


# Self-contained on purpose, not benchmarks/common.py: this runs on the GPU machine, whose Python lacks some packages.
def machine_info() -> dict:
    """The machine, versions and date the numbers belong to."""
    import triton

    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name,
        "multiprocessors": props.multi_processor_count,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dtype": str(DTYPE),
    }


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """A plain fixed-width table of the chosen columns."""
    print(f"\n== {title}")
    print(" | ".join(f"{c:>14}" for c in columns))
    for row in rows:
        cells = [row.get(c, "") for c in columns]
        print(" | ".join(f"{c:>14.4g}" if isinstance(c, float) else f"{c!s:>14}" for c in cells))


def print_report(results: dict) -> None:
    """Print every section measured; the ratio columns carry the claims."""
    print(f"machine: {results['machine']}")
    print(f"copy bandwidth (read+write): {results['copy_bandwidth_gbs']:.0f} GB/s")
    if "attention" in results["sections"]:
        print_attention_report(results)
    if "elementwise" in results["sections"]:
        print_table(
            "fused small ops",
            results["elementwise"],
            ["op", "tokens", "triton_ms", "eager_ms", "speedup", "triton_gbs", "fraction_of_copy_bw"],
        )
    if "gemv" in results["sections"]:
        print_gemv_report(results)


def print_gemv_report(results: dict) -> None:
    """GEMV vs cuBLAS per shape and row count, then the sweep's best launch vs the default."""
    print_table(
        "small-batch GEMV vs cuBLAS, in CUDA graphs, L2 flushed (cublas_over_triton > 1: Triton faster)",
        results["gemv"],
        [
            "shape",
            "rows",
            "triton_ms",
            "cublas_ms",
            "cublas_over_triton",
            "triton_fraction_of_copy_bw",
            "cublas_fraction_of_copy_bw",
        ],
    )
    best: dict[tuple, dict] = {}
    for row in results["gemv_sweep"]:
        key = (row["shape"], row["rows"])
        if row["config"] != "default" and (key not in best or row["ms"] < best[key]["ms"]):
            best[key] = row
    defaults = {(r["shape"], r["rows"]): r["ms"] for r in results["gemv_sweep"] if r["config"] == "default"}
    table = [
        {**row, "default_ms": defaults[key], "default_over_best": defaults[key] / row["ms"]}
        for key, row in best.items()
    ]
    print_table(
        "GEMV sweep: best (BLOCK_N, BLOCK_K, warps) vs the default",
        table,
        ["shape", "rows", "config", "ms", "default_ms", "default_over_best"],
    )


def print_attention_report(results: dict) -> None:
    """Decode attention vs its peers, the decode sweep, extend attention vs SDPA."""
    for row in results["decode"]:
        row["sdpa_dense_over_triton"] = row["sdpa_dense_ms"] / row["triton_ms"]
        row["gather_sdpa_over_triton"] = row["gather_sdpa_ms"] / row["triton_ms"]
    print_table(
        f"decode attention, context {CONTEXT}, bf16 (ratios > 1: Triton faster)",
        results["decode"],
        [
            "model",
            "batch",
            "triton_ms",
            "triton_eager_ms",
            "triton_gbs",
            "fraction_of_copy_bw",
            "sdpa_dense_over_triton",
            "gather_sdpa_over_triton",
            "reference_ms",
        ],
    )
    best = {}
    for row in results["decode_sweep"]:
        if row["splits"] != "default" and (row["batch"] not in best or row["ms"] < best[row["batch"]]["ms"]):
            best[row["batch"]] = row
    defaults = [r for r in results["decode_sweep"] if r["splits"] == "default"]
    print_table(
        "decode sweep: best vs default (llama3-8b shape)",
        list(best.values()) + defaults,
        ["batch", "splits", "block_n", "warps", "ms"],
    )
    for row in results["extend"]:
        variants = {k: v for k, v in row.items() if k.startswith("variant_")}
        row["best_variant"] = min(variants, key=variants.__getitem__).removeprefix("variant_")
        row["best_variant_ms"] = variants[min(variants, key=variants.__getitem__)]
        row["sdpa_over_triton"] = row["sdpa_dense_ms"] / row["triton_ms"]
    print_table(
        "extend attention, llama3-8b shape (sdpa_over_triton < 1: SDPA flash faster)",
        results["extend"],
        [
            "case",
            "triton_ms",
            "triton_tflops",
            "sdpa_tflops",
            "sdpa_over_triton",
            "best_variant",
            "best_variant_ms",
            "reference_ms",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving_kernels.json"))
    parser.add_argument(
        "--sections", default="attention,elementwise,gemv", help="comma-separated: attention, elementwise, gemv"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("serving_kernels benchmark needs a CUDA GPU (run it through the device tool)")
    sections = args.sections.split(",")
    bandwidth = copy_bandwidth_gbs()
    results = {"machine": machine_info(), "copy_bandwidth_gbs": bandwidth, "sections": sections}
    if "attention" in sections:
        results["decode"] = decode_rows(bandwidth)
        results["decode_sweep"] = decode_sweep()
        results["extend"] = extend_rows()
    if "elementwise" in sections:
        results["elementwise"] = elementwise_rows(bandwidth)
    if "gemv" in sections:
        results["gemv"] = gemv_rows(bandwidth)
        results["gemv_sweep"] = gemv_sweep()
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
