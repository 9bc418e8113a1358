"""Tensor parallelism: which shard this process holds, and the collectives between shards.

One process per rank, all on one host. Rank 0 (the *driver*) runs the whole engine: scheduler,
KV slot allocation, sampling, the HTTP server. Ranks 1..N-1 (*workers*, ``serving/tp_worker.py``)
hold their shard of every weight and of the KV cache and run each step the driver announces
(``ModelRunner.forward`` on the driver, ``ModelRunner.follow`` on a worker). The step's inputs
go over pipes (:class:`StepChannel`); the model's collectives go through ``torch.distributed``'s
default group: NCCL on CUDA (NVLink multicast off), gloo on the CPU, so the CPU tests run the
same code as the GPUs.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorParallel:
    """This process's place among the ranks: ``rank`` of ``size`` (``size == 1``: no parallelism)."""

    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"tensor-parallel rank {self.rank} of {self.size} is not a valid rank")

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (no-op on one rank)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` along its last dimension, in rank order."""
        if not self.enabled:
            return tensor
        tensor = tensor.contiguous()
        # One collective into a [size * rows, ...] buffer (NCCL and gloo both take it; capturable
        # in a CUDA graph), then the ranks' blocks side by side.
        gathered = tensor.new_empty((self.size * tensor.shape[0], *tensor.shape[1:]))
        _all_gather_single(gathered, tensor)
        blocks = gathered.view(self.size, *tensor.shape).movedim(0, -2)
        return blocks.reshape(*tensor.shape[:-1], self.size * tensor.shape[-1])

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` into every rank's ``tensor`` (same shape and dtype), in place."""
        if self.enabled:
            dist.broadcast(tensor, src=0)
        return tensor


SINGLE = TensorParallel()

# torch 2.13 renamed all_gather_into_tensor (deprecated there) to all_gather_single; 2.11 has only the old name.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class StepChannel:
    """Pipes from the driver to its workers: the driver sends each step to all, a worker
    receives from its one pipe (``multiprocessing`` connections; messages are pickled)."""

    def __init__(self, connections: list[Any]) -> None:
        self.connections = connections

    def send(self, message: object) -> None:
        for connection in self.connections:
            connection.send(message)

    def receive(self) -> Any:
        """The next message (EOFError once the driver is gone)."""
        return self.connections[0].recv()


def free_local_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the ranks' rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_tensor_parallel(rank: int, size: int, device: str, init_method: str) -> TensorParallel:
    """Join the ranks' process group (NCCL for CUDA devices, gloo for the CPU).

    On CUDA each rank uses ``cuda:<rank>``; the caller passes ``device="cuda"``.
    """
    tp = TensorParallel(rank, size)
    if not tp.enabled:
        return tp
    if device.startswith("cuda"):
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off (see KINDS.md of the device tool)
        torch.cuda.set_device(rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size)
    logger.info("tensor-parallel rank %d of %d joined (%s)", rank, size, backend)
    return tp


def rank_device(device: str, tp: TensorParallel) -> str:
    """The device this rank computes on: ``cuda:<rank>`` under CUDA tensor parallelism."""
    if tp.enabled and device.startswith("cuda"):
        return f"cuda:{tp.rank}"
    return device


def leave_tensor_parallel() -> None:
    """Leave the process group (when one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()
