"""``python -m serving`` / ``arena-serve``: host one or more models behind the OpenAI API.

Example (the arena demo)::

    python -m serving.demo_models --out data/demo_models
    python -m serving --model demo-llama-tiny=data/demo_models/demo-llama-tiny \\
        --model demo-qwen-tiny=data/demo_models/demo-qwen-tiny --port 8100 --device cpu

``arena-serve calibrate --model DIR --text FILE`` ranks a model's q/k channels for Double
Sparsity instead (``serving/sparse/calibration.py``).

With LoRA adapters (PEFT directories), requested as ``model="demo-llama-tiny:support"``::

    python -m serving --model demo-llama-tiny=data/demo_models/demo-llama-tiny \
        --lora support=adapters/support --lora demo-llama-tiny:legal=adapters/legal
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from serving.sparse.options import add_sparse_arguments, sparse_engine_fields  # torch-free

# serving.scheduler.SCHEDULE_POLICIES, spelled out: importing it loads torch, and `--help` should
# not (tests/test_cli_output.py checks that the two agree).
SCHEDULE_POLICIES = ("lpm", "fcfs")


logger = logging.getLogger("serving")


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (name, path); a bare PATH is served under its directory name."""
    name, sep, path = spec.partition("=")
    if not sep:
        path, name = spec, Path(spec).name
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {spec!r}")
    return name, path


def parse_lora_spec(spec: str) -> tuple[str | None, str, str]:
    """``[BASE:]NAME=DIR`` -> (base or None, adapter name, directory)."""
    target, sep, path = spec.partition("=")
    base, _, name = target.rpartition(":")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected [BASE:]NAME=DIR, got {spec!r}")
    return base or None, name, path


def adapters_by_model(specs: list[tuple[str | None, str, str]], names: list[str]) -> dict[str, dict[str, str]]:
    """Group ``--lora`` specs by served model (a spec without BASE needs exactly one model)."""
    grouped: dict[str, dict[str, str]] = {name: {} for name in names}
    for base, adapter, path in specs:
        if base is None:
            if len(names) != 1:
                raise SystemExit(f"--lora {adapter}={path}: name the base model as BASE:{adapter}=DIR")
            base = names[0]
        if base not in grouped:
            raise SystemExit(f"--lora {base}:{adapter}: no served model named {base!r}")
        if adapter in grouped[base]:
            raise SystemExit(f"--lora: adapter {adapter!r} given twice for {base!r}")
        grouped[base][adapter] = path
    return grouped


class _DefaultsHelp(argparse.HelpFormatter):
    """Shows each option's default where it has one (not for unset ones or flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    # torch, transformers and uvicorn are imported only once the arguments are parsed: --help is instant.
    parser = argparse.ArgumentParser(prog="arena-serve", description="OpenAI-compatible model server.",
                                     formatter_class=_DefaultsHelp)
    parser.add_argument(
        "--model",
        action="append",
        type=parse_model_spec,
        required=True,
        metavar="NAME=PATH",
        help="a served model: name and local Hugging Face-format directory (repeat for several)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address")
    parser.add_argument("--port", type=int, default=8100, help="port")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: by device)")
    parser.add_argument("--max-running", type=int, default=32, help="requests decoded together")
    parser.add_argument("--max-batch-tokens", type=int, default=512, help="token budget of one step")
    parser.add_argument("--max-context", type=int, default=None, help="longest prompt + output (default: the model's, at most 4096)")
    parser.add_argument("--kv-memory-gb", type=float, default=None, help="KV pool size per model (default: room for --max-running full contexts, at most 32k tokens)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="run decode eagerly on CUDA")
    parser.add_argument(
        "--no-prefix-cache", action="store_true", help="recompute every prompt (no radix prefix cache)"
    )
    parser.add_argument(
        "--schedule-policy",
        choices=SCHEDULE_POLICIES,
        default="lpm",
        help="lpm: longest cached prefix first, with a fairness bound; fcfs: first come first served",
    )
    parser.add_argument(
        "--lora",
        action="append",
        type=parse_lora_spec,
        default=[],
        metavar="[BASE:]NAME=DIR",
        help="a PEFT LoRA adapter directory served as BASE:NAME (repeat for several)",
    )
    parser.add_argument(
        "--enable-lora", action="store_true", help="accept adapters at run time (POST /v1/adapters)"
    )
    parser.add_argument("--max-loras", type=int, default=4, help="adapters held on the device at once")
    parser.add_argument("--max-lora-rank", type=int, default=64, help="largest adapter rank accepted")
    parser.add_argument(
        "--lora-targets",
        default=None,
        help="comma-separated projections that adapters may adapt (default: q_proj,k_proj,v_proj,"
        "o_proj,gate_proj,up_proj,down_proj); fewer targets, smaller GPU slots",
    )
    parser.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split the model across N ranks of this host (GPUs 0..N-1 with --device cuda; gloo processes on cpu)",
    )
    parser.add_argument(
        "--load-format",
        choices=("safetensors", "dummy"),
        default="safetensors",
        help="dummy: random weights in the checkpoint's config.json (benchmarks without the weights)",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    add_sparse_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:
        from serving.sparse.calibration import main as calibrate

        return calibrate(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    from serving.async_engine import AsyncEngine
    from serving.config import EngineConfig
    from serving.engine import Engine
    from serving.server import create_app  # the only FastAPI importer

    names = [name for name, _ in args.model]
    if len(set(names)) != len(names):
        raise SystemExit(f"model names must be unique: {names}")
    lora = adapters_by_model(args.lora, names)
    if args.tensor_parallel > 1 and len(names) > 1:
        raise SystemExit("arena-serve: --tensor-parallel serves one model per server; start one server per model")
    engines = {}
    for name, path in args.model:
        try:
            sparse = sparse_engine_fields(args, name)
        except ValueError as error:
            raise SystemExit(f"arena-serve: {error}") from None
        config = EngineConfig(
            model_path=path,
            device=args.device,
            dtype=args.dtype,
            max_context=args.max_context,
            max_running=args.max_running,
            max_batch_tokens=args.max_batch_tokens,
            kv_memory_gb=args.kv_memory_gb,
            cuda_graphs=False if args.no_cuda_graphs else None,
            prefix_cache=not args.no_prefix_cache,
            schedule_policy=args.schedule_policy,
            **sparse,
            lora_adapters=lora[name],
            enable_lora=args.enable_lora,
            max_loras=args.max_loras,
            max_lora_rank=args.max_lora_rank,
            lora_targets=tuple(args.lora_targets.split(",")) if args.lora_targets else None,
            tensor_parallel=args.tensor_parallel,
            load_format=args.load_format,
        )
        try:
            engine = Engine(config)
        except (OSError, ValueError) as error:  # missing/corrupt checkpoint, bad options
            raise SystemExit(f"arena-serve: cannot load model {name!r} from {path}: {error}") from None
        engines[name] = AsyncEngine(engine, name)
        logger.info("serving %s from %s on %s", name, path, args.device)
    try:
        uvicorn.run(create_app(engines), host=args.host, port=args.port, log_level=args.log_level.lower())
    finally:
        for served in engines.values():
            served.shutdown()  # stops tensor-parallel workers too


if __name__ == "__main__":
    main()
