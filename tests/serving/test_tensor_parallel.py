"""Tensor parallelism on the CPU: a TP=2 engine (two gloo processes: this one drives, a spawned
worker follows) must give the same greedy tokens as TP=1, and each rank must load only its shard.

The GPU path (NCCL, CUDA graphs capturing the all-reduce) runs the same code; see
``benchmarks/tensor_parallel.py``.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from serving.config import EngineConfig
from serving.engine import Engine
from serving.layers.checkpoint_slice import CheckpointSlice
from serving.layers.vocab import padded_vocab_size
from serving.models import build_model, load_config, load_model
from serving.parallel import TensorParallel
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest
from serving.tp_worker import TensorParallelError, WorkerLostError, check_tensor_parallel

PROMPTS = (
    "def main(args):\n    return",
    "The capital of France is",
    "def main(args):\n    print(args)",  # shares a prefix with the first: the radix cache serves it
    "Once upon a time, in a land far away, there lived a very old and very wise",
)


def _requests(engine: Engine, max_tokens: int = 12) -> list[GenerationRequest]:
    greedy = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [
        GenerationRequest(f"r{i}", engine.tokenizer.encode(text, add_special_tokens=False), greedy)
        for i, text in enumerate(PROMPTS)
    ]


def _greedy(config: EngineConfig) -> dict[str, list[int]]:
    engine = Engine(config)
    try:
        return engine.generate(_requests(engine))
    finally:
        engine.close()


@pytest.mark.parametrize(("family", "overlap"), [("llama", True), ("qwen3", False), ("qwen2", True)])
def test_two_gloo_ranks_generate_the_same_greedy_tokens_as_one(tiny_checkpoint, family: str, overlap: bool) -> None:
    """Llama (GQA: one KV head per rank) with steps scheduled ahead (the unread tokens go to the
    worker by broadcast), Qwen3 (tied, vocabulary-parallel embedding and head; q/k norms); a
    small token budget splits the prompts into chunks; Qwen2 (q/k/v biases: each rank adds its
    part, o_proj none)."""
    path = str(tiny_checkpoint(family))
    common = {"max_running": 4, "max_batch_tokens": 16, "overlap": overlap}
    single = _greedy(EngineConfig(path, **common))
    split = _greedy(EngineConfig(path, tensor_parallel=2, **common))
    assert split == single
    assert all(len(tokens) == 12 for tokens in split.values())


def test_an_engine_closes_its_workers(tiny_checkpoint) -> None:
    engine = Engine(EngineConfig(str(tiny_checkpoint("llama")), tensor_parallel=2, max_running=2))
    workers = engine.workers
    assert workers is not None and all(p.is_alive() for p in workers.processes)
    engine.close()
    assert not any(p.is_alive() for p in workers.processes)
    assert all(p.exitcode == 0 for p in workers.processes)
    engine.close()  # twice is harmless


def test_a_lost_worker_fails_the_next_step_with_a_clear_error(tiny_checkpoint) -> None:
    engine = Engine(EngineConfig(str(tiny_checkpoint("llama")), tensor_parallel=2, max_running=2))
    try:
        assert engine.workers is not None
        worker = engine.workers.processes[0]
        worker.kill()
        worker.join(10)
        with pytest.raises(WorkerLostError, match=r"tp-rank-1 exited \(exit code -9\).*restart the server"):
            engine.generate(_requests(engine, max_tokens=2))
    finally:
        engine.close()  # does not hang on the dead worker


def test_a_driver_that_fails_to_start_stops_its_workers(tiny_checkpoint, tmp_path) -> None:
    """A bad adapter fails the driver after its worker started: the worker must not wait on."""
    import multiprocessing

    from serving.lora.adapter import AdapterError

    config = EngineConfig(str(tiny_checkpoint("llama")), tensor_parallel=2, lora_adapters={"bad": str(tmp_path)})
    with pytest.raises(AdapterError):
        Engine(config)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("tp-rank-")]
    ok = Engine(EngineConfig(str(tiny_checkpoint("llama")), tensor_parallel=2, max_running=2))  # can start again
    ok.close()


def test_each_rank_reads_only_its_shard_of_the_checkpoint(tiny_checkpoint) -> None:
    """Rank r of 2 holds rows (column-parallel, vocabulary) or columns (row-parallel) r of the
    HF tensors; the embedding's padding rows are zero. No process group is needed to load."""
    path = tiny_checkpoint("llama")
    config = load_config(path)
    full = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as reader:
            full.update({name: reader.get_tensor(name) for name in reader.keys()})  # noqa: SIM118
    vocab, hidden, heads = config.vocab_size, config.hidden_size, config.num_attention_heads
    head_dim = hidden // heads
    rows = padded_vocab_size(vocab, 2) // 2
    for rank in (0, 1):
        model = load_model(path, "cpu", torch.float32, 64, config, TensorParallel(rank, 2))
        layer = model.model.layers[0]
        q = full["model.layers.0.self_attn.q_proj.weight"]
        q_rows = heads // 2 * head_dim
        assert torch.equal(layer.self_attn.qkv_proj.weight[:q_rows], q[rank * q_rows : (rank + 1) * q_rows])
        o = full["model.layers.0.self_attn.o_proj.weight"]
        assert torch.equal(layer.self_attn.o_proj.weight, o[:, rank * q_rows : (rank + 1) * q_rows])
        down = full["model.layers.0.mlp.down_proj.weight"]
        half = config.intermediate_size // 2
        assert torch.equal(layer.mlp.down_proj.weight, down[:, rank * half : (rank + 1) * half])
        embed = model.model.embed_tokens.weight
        real = min(rows, vocab - rank * rows)
        assert embed.shape == (rows, hidden)
        assert torch.equal(embed[:real], full["model.embed_tokens.weight"][rank * rows : rank * rows + real])
        assert not embed[real:].any()
        assert torch.equal(model.lm_head.weight[:real], full["lm_head.weight"][rank * rows : rank * rows + real])
        assert layer.self_attn.num_heads == heads // 2 and layer.self_attn.num_kv_heads == 1


def test_a_checkpoint_slice_reads_only_the_block_asked_for(tiny_checkpoint) -> None:
    path = tiny_checkpoint("llama")
    name = "model.layers.1.mlp.gate_proj.weight"
    with safe_open(next(path.glob("*.safetensors")), framework="pt") as reader:
        whole = reader.get_tensor(name)
        lazy = CheckpointSlice.open(reader, name)
        assert lazy.shape == whole.shape
        block = lazy.narrow(0, 32, 64).narrow(1, 8, 16)
        assert block.shape == (64, 16)
        assert torch.equal(block.read(), whole[32:96, 8:24])
        with pytest.raises(IndexError):
            lazy.narrow(0, 100, 64)


def test_a_shard_holds_about_half_of_the_parameters(tiny_checkpoint) -> None:
    config = load_config(tiny_checkpoint("qwen3"))

    def count(tp: TensorParallel) -> int:
        model = build_model(config, "meta", torch.float32, 64, tp)
        return sum(p.numel() for p in model.parameters())  # tied: the embedding counted once

    whole, shard = count(TensorParallel()), count(TensorParallel(1, 2))
    norms = sum(p.numel() for n, p in build_model(config, "meta", torch.float32, 64).named_parameters() if "norm" in n)
    assert shard - norms / 2 <= whole / 2 + 64 * config.hidden_size  # replicated norms, vocabulary padding


@pytest.mark.parametrize(
    ("family", "change", "message"),
    [
        ("mistral", {}, r"KV heads \(1\) cannot be split evenly over 2 ranks"),
        ("llama", {"device": "cuda:1"}, "the device is 'cuda'"),
    ],
)
def test_what_tensor_parallelism_cannot_serve_is_refused(tiny_checkpoint, family, change, message) -> None:
    path = str(tiny_checkpoint(family))
    config = EngineConfig(path, tensor_parallel=2, **change)
    with pytest.raises(TensorParallelError, match=message):
        check_tensor_parallel(config, load_config(path))


def test_arena_serve_with_tensor_parallel_answers_over_http_as_one_rank_does(demo_models_dir) -> None:
    """``arena-serve --tensor-parallel 2`` (the server drives, a gloo worker follows) answers a
    greedy completion with the same text as a one-rank server."""
    import httpx

    from tests.servers import demo_model_server

    name = "demo-llama-tiny"
    body = {"model": name, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}
    texts = []
    for extra in ((), ("--tensor-parallel", "2")):
        with demo_model_server(demo_models_dir, names=(name,), extra_args=extra) as url:
            response = httpx.post(f"{url}/completions", json=body, timeout=60)
            assert response.status_code == 200, response.text
            texts.append(response.json()["choices"][0]["text"])
    assert texts[0] and texts[1] == texts[0]


def test_arena_serve_refuses_tensor_parallel_for_several_models(demo_models_dir) -> None:
    from serving.__main__ import main

    models = [f"--model=m{i}={demo_models_dir / 'demo-llama-tiny'}" for i in range(2)]
    with pytest.raises(SystemExit, match="--tensor-parallel serves one model per server"):
        main([*models, "--tensor-parallel", "2"])
