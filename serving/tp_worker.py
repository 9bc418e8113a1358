"""The worker ranks of a tensor-parallel engine (``EngineConfig.tensor_parallel > 1``).

The :class:`~serving.engine.Engine` is rank 0: it starts ranks 1..N-1 with
:class:`Workers` (one spawned process each), then every rank joins the process group,
loads its shard of the checkpoint and receives the memory plan the driver computed
(:func:`share_plan`). A worker then builds the same :class:`ModelRunner` as the driver, on its
shards, and follows the driver's steps until :meth:`ModelRunner.stop_workers`.
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch

from serving.config import EngineConfig
from serving.lora.pool import ALL_TARGETS, AdapterPool
from serving.model_runner import MemoryPlan, ModelRunner
from serving.models import build_model, init_dummy_weights, load_config, load_model
from serving.parallel import (
    StepChannel,
    TensorParallel,
    free_local_port,
    init_tensor_parallel,
    leave_tensor_parallel,
    rank_device,
)

logger = logging.getLogger(__name__)

WORKER_JOIN_TIMEOUT_S = 30.0
LOAD_FORMATS = ("safetensors", "dummy")


class TensorParallelError(ValueError):
    """A configuration that tensor parallelism cannot serve (the message says why)."""


def check_tensor_parallel(config: EngineConfig, model_config) -> None:
    """Refuse what the ranks cannot split (the message says why)."""
    size = config.tensor_parallel
    if size == 1:
        return
    if size < 1:
        raise TensorParallelError(f"tensor_parallel must be at least 1, got {size}")
    if torch.distributed.is_initialized():
        raise TensorParallelError("this process already drives a tensor-parallel engine; start one per process")
    if config.device not in ("cpu", "cuda"):
        raise TensorParallelError(f"with tensor parallelism the device is 'cuda' (rank r uses cuda:r) or 'cpu', not {config.device!r}")
    if config.device == "cuda" and torch.cuda.device_count() < size:
        raise TensorParallelError(f"tensor_parallel={size} needs {size} GPUs; this host has {torch.cuda.device_count()}")
    for what, count in (("attention heads", model_config.num_attention_heads),
                        ("KV heads", model_config.num_key_value_heads),
                        ("intermediate size", model_config.intermediate_size)):  # fmt: skip
        if count % size:
            raise TensorParallelError(f"the model's {what} ({count}) cannot be split evenly over {size} ranks")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to build its shard of the engine."""

    config: EngineConfig
    max_context: int
    init_method: str


class WorkerLostError(RuntimeError):
    """A worker rank exited: its shards are gone, so the engine can run no more steps."""


class Workers:
    """The worker processes of one tensor-parallel engine."""

    def __init__(self, config: EngineConfig, max_context: int) -> None:
        self.init_method = f"tcp://127.0.0.1:{free_local_port()}"
        spec = WorkerSpec(config, max_context, self.init_method)
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        pipes = [context.Pipe(duplex=False) for _ in range(1, config.tensor_parallel)]
        self.channel = StepChannel([send for _, send in pipes])
        self.processes = [
            context.Process(target=worker_main, args=(rank, spec, receive), name=f"tp-rank-{rank}", daemon=True)
            for rank, (receive, _) in enumerate(pipes, start=1)
        ]
        for process in self.processes:
            process.start()
        for receive, _ in pipes:
            receive.close()  # the worker holds it now: its end of file is the driver's exit

    def check_alive(self) -> None:
        """Raise :class:`WorkerLostError` if a worker has exited (checked before every step)."""
        for process in self.processes:
            if not process.is_alive():
                raise WorkerLostError(
                    f"tensor-parallel {process.name} exited (exit code {process.exitcode}); this engine "
                    "cannot run steps without its shards: restart the server"
                )

    def terminate(self) -> None:
        """Stop the workers at once (the driver failed to start: they wait for it in a collective)."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(WORKER_JOIN_TIMEOUT_S)

    def join(self, timeout_s: float = WORKER_JOIN_TIMEOUT_S) -> None:
        """Wait for the workers to exit (after the driver's stop), killing any that hang."""
        for process in self.processes:
            process.join(timeout_s)
            if process.is_alive():
                logger.error("tensor-parallel %s did not stop; terminating it", process.name)
                process.terminate()
                process.join(timeout_s)


def build_rank_model(config: EngineConfig, model_config, max_context: int, tp: TensorParallel):
    """This rank's shard of the model on this rank's device: the checkpoint's weights, or random
    ones with ``load_format="dummy"`` (benchmarks of configurations without a checkpoint)."""
    if config.load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load format {config.load_format!r}; use one of {', '.join(LOAD_FORMATS)}")
    device = rank_device(config.device, tp)
    dtype = config.torch_dtype()
    if config.load_format == "dummy":
        model = build_model(model_config, device, dtype, max_context, tp)
        init_dummy_weights(model, seed=tp.rank)
        return model
    return load_model(config.model_path, device, dtype, max_context, model_config, tp)


def share_plan(tp: TensorParallel, plan: MemoryPlan | None, device: torch.device) -> MemoryPlan:
    """The driver's memory plan on every rank (workers pass None), so all KV pools match."""
    values = [plan.num_slots, plan.max_running, plan.max_context] if plan is not None else [0, 0, 0]
    shared = tp.broadcast(torch.tensor(values, dtype=torch.int64, device=device)).tolist()
    return MemoryPlan(*shared)


def worker_main(rank: int, spec: WorkerSpec, receive: Connection) -> None:
    """A worker process: join, load the shard, build the runner, follow the driver's steps."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s")
    config = spec.config
    tp = init_tensor_parallel(rank, config.tensor_parallel, config.device, spec.init_method)
    try:
        model_config = load_config(config.model_path)
        model = build_rank_model(config, model_config, spec.max_context, tp)
        adapters = None
        if config.lora_enabled:  # the same slots as the driver's pool; the adapters come from it
            targets = config.lora_targets or ALL_TARGETS
            adapters = AdapterPool(model, model_config, config.max_loras, config.max_lora_rank, targets)
        plan = share_plan(tp, None, next(model.parameters()).device)
        runner = ModelRunner(model, plan, config.use_cuda_graphs, config.attention_backend,
                             config.sparse_options(), adapters, StepChannel([receive]))
        runner.follow()
    finally:
        leave_tensor_parallel()
