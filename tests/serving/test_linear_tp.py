"""The linear layers' tensor-parallel sharding, weights and LoRA alike, on the CPU: two gloo
processes each load the full HF tensors through the layers' own loaders (keeping their shard)
and must reproduce the unsharded layers' outputs (column-parallel outputs concatenated,
row-parallel outputs all-reduced)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from serving.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    ShardError,
)
from serving.lora.batch import LoraBatch

HIDDEN, HEAD_DIM, HEADS, KV_HEADS, INTER, RANK = 32, 8, 4, 2, 48, 4


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "q": (HEADS * HEAD_DIM, HIDDEN), "k": (KV_HEADS * HEAD_DIM, HIDDEN), "v": (KV_HEADS * HEAD_DIM, HIDDEN),
        "gate": (INTER, HIDDEN), "up": (INTER, HIDDEN), "down": (HIDDEN, INTER), "o": (HIDDEN, HEADS * HEAD_DIM),
    }  # fmt: skip
    tensors = {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}
    tensors["q_bias"] = torch.randn(HEADS * HEAD_DIM, generator=g)
    tensors["down_bias"] = torch.randn(HIDDEN, generator=g)
    for name, (fan_out, fan_in) in shapes.items():
        tensors[f"{name}_A"] = torch.randn(RANK, fan_in, generator=g)
        tensors[f"{name}_B"] = torch.randn(fan_out, RANK, generator=g)
    tensors["x"] = torch.randn(5, HIDDEN, generator=g)
    return tensors


def _outputs(tp_rank: int, tp_size: int) -> dict[str, torch.Tensor]:
    """q|k|v, gate|up (this rank's columns) and o, down (all-reduced) with LoRA on rows 0-2."""
    w = _tensors()
    qkv = QKVParallelLinear(HIDDEN, HEAD_DIM, HEADS, KV_HEADS, bias=True, tp_rank=tp_rank, tp_size=tp_size)
    gate_up = MergedColumnParallelLinear(HIDDEN, [INTER, INTER], tp_rank=tp_rank, tp_size=tp_size)
    o = RowParallelLinear(HEADS * HEAD_DIM, HIDDEN, tp_rank=tp_rank, tp_size=tp_size)
    down = RowParallelLinear(INTER, HIDDEN, bias=True, tp_rank=tp_rank, tp_size=tp_size)
    torch.nn.init.zeros_(qkv.bias)
    for part in ("q", "k", "v"):
        qkv.weight_loader(qkv.weight, w[part], part)
    qkv.weight_loader(qkv.bias, w["q_bias"], "q")
    gate_up.weight_loader(gate_up.weight, w["gate"], 0)
    gate_up.weight_loader(gate_up.weight, w["up"], 1)
    o.weight_loader(o.weight, w["o"])
    down.weight_loader(down.weight, w["down"])
    down.weight_loader(down.bias, w["down_bias"])
    for layer, parts in ((qkv, {"q": "q", "k": "k", "v": "v"}), (gate_up, {0: "gate", 1: "up"}),
                         (o, {None: "o"}), (down, {None: "down"})):  # fmt: skip
        layer.create_lora_slots(2, RANK)
        for part, name in parts.items():
            layer.load_lora(1, part, w[f"{name}_A"], w[f"{name}_B"])
    lora = LoraBatch.build([1, -1], [3, 2], "cpu")
    x = w["x"]
    with torch.no_grad():
        local_heads = qkv(x, lora)
        act = gate_up(x, lora)
        q_local = local_heads[:, : qkv.sub_sizes[0]]
        return {
            "q": q_local,
            "gate": act[:, : gate_up.sub_sizes[0]],
            "o": o(q_local, lora),
            "down": down(act, lora, silu_mul_input=True),
        }


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # numpy arrays travel by value (tensors would go through shared memory that dies with us)
        queue.put((rank, {name: out.numpy() for name, out in _outputs(rank, 2).items()}))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_reproduce_the_unsharded_layers():
    from tests.servers import free_port

    full = _outputs(0, 1)
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [context.Process(target=_worker, args=(rank, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = {
        rank: {name: torch.from_numpy(out) for name, out in outputs.items()}
        for rank, outputs in (queue.get(timeout=120) for _ in processes)
    }
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for name in ("q", "gate"):  # column-parallel: each rank holds its half of the features
        torch.testing.assert_close(torch.cat([results[0][name], results[1][name]], dim=-1), full[name])
    for name in ("o", "down"):  # row-parallel: every rank holds the all-reduced sum
        for rank in range(2):
            torch.testing.assert_close(results[rank][name], full[name], atol=1e-4, rtol=1e-4)


def test_shards_that_do_not_divide_are_refused():
    with pytest.raises(ShardError, match="KV heads"):
        QKVParallelLinear(HIDDEN, HEAD_DIM, 4, 1, tp_size=2)
    layer = RowParallelLinear(INTER, HIDDEN)
    with pytest.raises(ShardError, match=r"weight has shape \(32, 40\), expected \(32, 48\)"):
        layer.weight_loader(layer.weight, torch.zeros(HIDDEN, 40))
