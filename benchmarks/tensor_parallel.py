"""Tensor parallelism: greedy tokens against TP=1, then throughput and per-token latency at each TP.

* **Equality:** a random-weight checkpoint of a configuration that fits one GPU (Qwen3-0.6B's
  shape), written as safetensors and loaded shard by shard, fp32, greedy: the tokens of every
  request at TP=N against TP=1 (fraction of requests identical, and of tokens up to the first
  difference).
* **Speed:** dummy weights (``load_format="dummy"``) in the Llama-3.1-8B and Llama-3.1-70B
  configurations, bf16, CUDA graphs: output tokens per second for ``--requests`` requests of
  ``--prompt-len`` + ``--output-len`` tokens, and the inter-token latency of one request
  decoding alone. A configuration whose weights take more than 80% of a GPU at some TP is
  reported as not fitting.

Run on a multi-GPU kind (one call per model fits the device tool's 10 minutes)::

    python benchmarks/tensor_parallel.py --tp 1,2,4 --models llama-3.1-8b --out $OUT
    python benchmarks/tensor_parallel.py --tp 2,4 --models llama-3.1-70b --skip-equality --out $OUT

``--smoke`` runs tiny shapes on the CPU (gloo ranks) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.serving_throughput import CONFIGS, make_checkpoint_dir, make_prompts  # noqa: E402
from serving.config import EngineConfig  # noqa: E402
from serving.engine import Engine  # noqa: E402
from serving.models import build_model  # noqa: E402
from serving.sampling import SamplingParams  # noqa: E402
from serving.sequence import GenerationRequest  # noqa: E402

logger = logging.getLogger("benchmarks.tensor_parallel")



def llama_70b_config():
    """meta-llama/Llama-3.1-70B's config.json: the 8B one's, wider and deeper (head size 128 in both)."""
    config = CONFIGS["llama-3.1-8b"]()
    config.update({"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                   "num_attention_heads": 64, "head_dim": 128})  # fmt: skip
    return config


CONFIGS = {**CONFIGS, "llama-3.1-70b": llama_70b_config}
EQUALITY_MODEL = "qwen3-0.6b"


def _fresh(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def parameter_bytes(config, dtype: torch.dtype) -> int:
    """Bytes of the whole model's weights in ``dtype`` (built on the meta device: nothing allocated)."""
    model = build_model(config, "meta", dtype, 64)
    return sum(p.numel() for p in model.parameters()) * torch.finfo(dtype).bits // 8


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def equality(args, workdir: Path) -> dict:
    """Greedy tokens of a real (random, saved) checkpoint at each TP against TP=1, fp32."""
    config = CONFIGS["smoke" if args.smoke else EQUALITY_MODEL]()
    path = make_checkpoint_dir(config, _fresh(workdir / "equality"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)  # HF names, safetensors
    prompts = make_prompts(args.equality_requests, config.vocab_size, 16, 96, seed=3)
    outputs = {}
    for tp in args.tp:
        engine = Engine(_engine_config(args, path, tp, dtype="float32", load_format="safetensors"))
        try:
            requests = [GenerationRequest(f"r{i}", p, greedy(args.equality_tokens)) for i, p in enumerate(prompts)]
            outputs[tp] = engine.generate(requests)
        finally:
            engine.close()
    reference = outputs[args.tp[0]]
    rows = []
    for tp, got in outputs.items():
        same_requests = sum(got[r] == reference[r] for r in reference)
        agreeing = sum(_common_prefix(got[r], reference[r]) for r in reference)
        total = sum(len(tokens) for tokens in reference.values())
        rows.append({"tp": tp, "identical_requests": same_requests, "requests": len(reference),
                     "tokens_before_first_difference": agreeing, "tokens": total})  # fmt: skip
    return {"model": "smoke" if args.smoke else EQUALITY_MODEL, "dtype": "float32", "against_tp": args.tp[0],
            "rows": rows}  # fmt: skip


def _common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def _engine_config(args, path: Path, tp: int, dtype: str, load_format: str) -> EngineConfig:
    return EngineConfig(
        str(path),
        device=args.device,
        dtype=dtype,
        max_context=args.prompt_len + args.output_len + 64,
        max_running=args.requests,
        max_batch_tokens=args.max_batch_tokens,
        kv_memory_gb=args.kv_memory_gb,
        detokenize=False,
        tensor_parallel=tp,
        load_format=load_format,
    )


def speed(args, model_name: str, workdir: Path) -> list[dict]:
    """Throughput and inter-token latency of dummy weights at each TP."""
    config = CONFIGS["smoke" if args.smoke else model_name]()
    path = make_checkpoint_dir(config, _fresh(workdir / model_name))
    dtype = torch.float32 if args.smoke else torch.bfloat16
    weights = parameter_bytes(config, dtype)
    gpu_bytes = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    prompts = make_prompts(args.requests, config.vocab_size, args.prompt_len, args.prompt_len + 1, seed=1)
    rows = []
    for tp in args.tp:
        row = {"model": model_name, "tp": tp, "weight_gib_per_rank": round(weights / tp / 2**30, 2)}
        if gpu_bytes is not None and weights / tp > 0.8 * gpu_bytes:
            rows.append(row | {"fits": False})
            continue
        engine = Engine(_engine_config(args, path, tp, str(dtype).removeprefix("torch."), "dummy"))
        try:
            engine.generate([GenerationRequest(f"warm{i}", p, greedy(8)) for i, p in enumerate(prompts[:4])])
            row |= {"fits": True, **throughput(engine, prompts, args.output_len, args.device)}
            row |= {"inter_token_ms": inter_token_ms(engine, prompts[0], args.output_len, args.device)}
        finally:
            engine.close()
        logger.info("%s", row)
        rows.append(row)
    return rows


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(engine: Engine, prompts: list[list[int]], output_len: int, device: str) -> dict:
    requests = [GenerationRequest(f"t{i}", p, greedy(output_len)) for i, p in enumerate(prompts)]
    synchronize(device)
    start = time.perf_counter()
    outputs = engine.generate(requests)
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = sum(len(t) for t in outputs.values())
    return {"requests": len(prompts), "output_tokens": tokens, "seconds": round(seconds, 3),
            "output_tokens_per_s": round(tokens / seconds, 1)}  # fmt: skip


def inter_token_ms(engine: Engine, prompt: list[int], output_len: int, device: str) -> float:
    """Mean time between a lone request's tokens, after its first (the prefill) one."""
    engine.add_request(GenerationRequest("lone", prompt, greedy(output_len)))
    stamps = []
    while engine.has_work:
        if engine.step():
            stamps.append(time.perf_counter())
    synchronize(device)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return round(1000 * sum(gaps) / max(len(gaps), 1), 3)


def print_tables(report: dict) -> None:
    if "equality" in report:
        print(f"\nGreedy tokens against TP={report['equality']['against_tp']} ({report['equality']['model']}, fp32)")
        print(f"{'TP':>3} {'identical requests':>19} {'tokens before a difference':>27}")
        for row in report["equality"]["rows"]:
            print(f"{row['tp']:>3} {row['identical_requests']:>10}/{row['requests']:<8} "
                  f"{row['tokens_before_first_difference']:>18}/{row['tokens']:<8}")  # fmt: skip
    print(f"\n{'model':<15} {'TP':>3} {'GiB/rank':>9} {'out tok/s':>10} {'ms/token (alone)':>17}")
    for row in report["speed"]:
        if not row.get("fits"):
            print(f"{row['model']:<15} {row['tp']:>3} {row['weight_gib_per_rank']:>9} {'does not fit':>28}")
            continue
        print(f"{row['model']:<15} {row['tp']:>3} {row['weight_gib_per_rank']:>9} "
              f"{row['output_tokens_per_s']:>10} {row['inter_token_ms']:>17}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", default="1,2,4", help="comma-separated tensor-parallel sizes")
    parser.add_argument("--models", default="llama-3.1-8b,llama-3.1-70b")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--kv-memory-gb", type=float, default=8.0, help="KV pool per rank")
    parser.add_argument("--equality-requests", type=int, default=8)
    parser.add_argument("--equality-tokens", type=int, default=32)
    parser.add_argument("--skip-equality", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (gloo)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (a directory)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.tp = [int(t) for t in args.tp.split(",")]
    args.device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.requests, args.prompt_len, args.output_len, args.kv_memory_gb = 4, 32, 8, 0.05
        args.max_batch_tokens, args.equality_requests, args.equality_tokens = 256, 3, 8
    report: dict = {"tp": args.tp, "prompt_len": args.prompt_len, "output_len": args.output_len}
    with tempfile.TemporaryDirectory() as workdir:
        if not args.skip_equality:
            report["equality"] = equality(args, Path(workdir))
        report["speed"] = [row for name in args.models.split(",") for row in speed(args, name, Path(workdir))]
    print_tables(report)
    name = "tensor_parallel_smoke" if args.smoke else "tensor_parallel"
    path = write_result(name, report, packages=("torch", "triton", "transformers"))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / path.name).write_text(json.dumps(json.loads(path.read_text()), indent=2) + "\n")


if __name__ == "__main__":
    main()
