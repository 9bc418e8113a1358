"""Double Sparsity and H2O in the engine, from the command-line flags to the HTTP request field."""

from __future__ import annotations

import shutil
from pathlib import Path

import openai
import pytest
import torch

from serving.__main__ import build_parser
from serving.async_engine import AsyncEngine
from serving.config import EngineConfig
from serving.engine import Engine
from serving.models import load_model
from serving.prefix_cache import NoPrefixCache
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest
from serving.server import CompletionRequest, create_app
from serving.sparse.calibration import CHANNELS_FILE, rank_channels
from serving.sparse.double_sparsity import DoubleSparsityConfig
from serving.sparse.h2o import H2OConfig
from serving.sparse.options import sparse_engine_fields
from tests.servers import serve_app

SPARSE = DoubleSparsityConfig(
    heavy_channels=8, token_fraction=1 / 8, min_tokens=4, sink=2, recent=4, dense_below=0
)


@pytest.fixture(scope="module")
def model_dir(demo_models_dir, tmp_path_factory) -> Path:
    """The demo Llama with its channel file (a copy: calibration writes into the directory)."""
    path = tmp_path_factory.mktemp("calibrated") / "llama"
    shutil.copytree(demo_models_dir / "demo-llama-tiny", path)
    model = load_model(path, "cpu", torch.float32, max_positions=256)
    rank_channels(model, list(range(10, 400)), window=128).save(path / CHANNELS_FILE, path, "test")
    return path


def prompts(engine: Engine) -> list[list[int]]:
    texts = ["def main(args):\n    return", "class Point:\n    def __init__(self, x, y):", "import os\n" * 8]
    return [engine.tokenizer.encode(text, add_special_tokens=False) for text in texts]


def generate(engine: Engine, prompt_ids: list[list[int]], max_tokens: int, sparse=None) -> list[list[int]]:
    """Greedy outputs of several requests decoded together (``sparse[i]``: request i's field)."""
    outputs: dict[str, list[int]] = {}
    for i, ids in enumerate(prompt_ids):
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        params.sparse_attention = True if sparse is None else sparse[i]
        engine.add_request(GenerationRequest(f"r{i}", ids, params))
        outputs[f"r{i}"] = []
    while engine.has_work:
        for out in engine.step():
            outputs[out.request_id] += out.new_token_ids
    return [outputs[f"r{i}"] for i in range(len(prompt_ids))]


def test_double_sparsity_under_the_threshold_equals_dense(model_dir) -> None:
    dense = Engine(EngineConfig(str(model_dir), max_running=4))
    sparse = Engine(EngineConfig(str(model_dir), max_running=4, attention_backend="double-sparsity"))
    assert sparse.runner.attention.config.dense_below == 2048  # the default threshold
    ids = prompts(dense)
    assert generate(sparse, ids, 32) == generate(dense, ids, 32)


def test_double_sparsity_sparse_path_and_the_per_request_opt_out(model_dir) -> None:
    dense = Engine(EngineConfig(str(model_dir), max_running=4))
    sparse = Engine(
        EngineConfig(
            str(model_dir), max_running=4, attention_backend="double-sparsity", double_sparsity=SPARSE
        )
    )
    ids = prompts(dense)
    want = generate(dense, ids, 40)
    got = generate(sparse, ids, 40, sparse=[True, False, True])
    assert got[1] == want[1]  # opted out: dense attention in the same batches
    assert all(len(tokens) == 40 for tokens in got)


def test_double_sparsity_without_a_channel_file_says_how_to_make_one(demo_models_dir) -> None:
    with pytest.raises(ValueError, match="arena-serve calibrate"):
        Engine(EngineConfig(str(demo_models_dir / "demo-llama-tiny"), attention_backend="double-sparsity"))


def test_h2o_with_a_budget_above_the_length_equals_dense(model_dir) -> None:
    dense = Engine(EngineConfig(str(model_dir), max_running=4))
    h2o = Engine(
        EngineConfig(
            str(model_dir), max_running=4, attention_backend="h2o", h2o=H2OConfig(budget_tokens=4096)
        )
    )
    ids = prompts(dense)
    assert generate(h2o, ids, 24) == generate(dense, ids, 24)


def test_h2o_eviction_frees_slots_so_more_sequences_fit(model_dir) -> None:
    """Four 60 + 60-token requests in a 300-slot pool: dense must preempt, H2O at 25% never does."""
    ids = [list(range(20 + i, 80 + i)) for i in range(4)]
    dense = Engine(EngineConfig(str(model_dir), max_running=4, kv_slots=300))
    budget = H2OConfig(budget_fraction=0.25, min_budget=8, evict_slack=4)
    h2o = Engine(
        EngineConfig(str(model_dir), max_running=4, kv_slots=300, attention_backend="h2o", h2o=budget)
    )
    peak = 0
    for i, prompt in enumerate(ids):
        h2o.add_request(GenerationRequest(f"r{i}", prompt, SamplingParams(max_tokens=60, ignore_eos=True)))
    lengths = dict.fromkeys(range(4), 0)
    while h2o.has_work:
        for out in h2o.step():
            lengths[int(out.request_id[1:])] = out.num_output_tokens
        for seq in h2o.scheduler.running:
            assert seq.num_kv <= budget.budget(seq.num_computed) + budget.evict_slack + 1
        peak = max(peak, h2o.runner.kv_pool.capacity - h2o.runner.kv_pool.num_free)
    assert all(count == 60 for count in lengths.values())
    assert h2o.scheduler.num_preemptions == 0 and peak <= 4 * 60 + 4
    assert h2o.runner.kv_pool.num_free == h2o.runner.kv_pool.capacity  # nothing leaked
    assert isinstance(h2o.scheduler.prefix_cache, NoPrefixCache)  # it would own the prompts' slots
    generate(dense, ids, 60)
    assert dense.scheduler.num_preemptions > 0


@pytest.mark.parametrize("backend", ["double-sparsity", "h2o"])
def test_sparse_attention_under_two_ranks_gives_one_ranks_tokens(model_dir, backend) -> None:
    """Tensor parallelism (TP=2, a gloo worker): Double Sparsity ranks each rank's KV heads with
    its part of the channel file, the step's plan (longest context, opted-out rows) goes to the
    worker; H2O sums the ranks' attention mass, so both ranks evict the same entries."""
    fields = {"max_running": 4, "attention_backend": backend, "double_sparsity": SPARSE,
              "h2o": H2OConfig(budget_fraction=0.25, min_budget=8, evict_slack=4)}  # fmt: skip
    single = Engine(EngineConfig(str(model_dir), **fields))
    ids = prompts(single)
    ids[2] = ids[2] * 3  # long enough to evict under H2O's budget
    want = generate(single, ids, 40, sparse=[True, False, True])
    split = Engine(EngineConfig(str(model_dir), tensor_parallel=2, **fields))
    try:
        assert generate(split, ids, 40, sparse=[True, False, True]) == want
    finally:
        split.close()


def test_flags_choose_the_mode_per_model_and_tune_it() -> None:
    args = build_parser().parse_args(
        ["--model", "a=/m/a", "--model", "b=/m/b", "--sparse-attention", "h2o", "--sparse-attention",
         "b=double-sparsity", "--ds-heavy-channels", "8", "--ds-dense-below", "4096", "--h2o-budget", "512"]
    )  # fmt: skip
    fields_a, fields_b = sparse_engine_fields(args, "a"), sparse_engine_fields(args, "b")
    assert fields_a["attention_backend"] == "h2o" and fields_a["h2o"].budget_tokens == 512
    assert fields_b["attention_backend"] == "double-sparsity"
    assert fields_b["double_sparsity"].heavy_channels == 8 and fields_b["double_sparsity"].dense_below == 4096
    assert EngineConfig("/m/b", **fields_b).sparse_options().channels_path == f"/m/b/{CHANNELS_FILE}"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "a=/m/a", "--sparse-attention", "quest"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "a=/m/a", "--h2o-budget", "2.5"])
    assert (
        sparse_engine_fields(build_parser().parse_args(["--model", "a"]), "a")["attention_backend"] == "dense"
    )


def test_request_field_over_http(model_dir) -> None:
    """``sparse_attention: false`` (an extension field, ``extra_body``) reaches the engine."""
    config = EngineConfig(
        str(model_dir), max_running=4, attention_backend="double-sparsity", double_sparsity=SPARSE
    )
    engines = {"llama": AsyncEngine(Engine(config), "llama")}
    dense = Engine(EngineConfig(str(model_dir), max_running=4))
    want = dense.tokenizer.decode(generate(dense, prompts(dense)[:1], 24)[0])
    assert (
        CompletionRequest(model="x", prompt="y", sparse_attention=False)
        .sampling_params(4, None)
        .sparse_attention
        is False
    )
    try:
        with serve_app(create_app(engines)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
            body = {"ignore_eos": True, "sparse_attention": False}
            reply = client.completions.create(
                model="llama",
                prompt="def main(args):\n    return",
                max_tokens=24,
                temperature=0,
                extra_body=body,
            )
            assert reply.choices[0].text == want
            sparse_reply = client.completions.create(
                model="llama", prompt="def main(args):\n    return", max_tokens=24, temperature=0,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            assert sparse_reply.usage.completion_tokens == 24
    finally:
        engines["llama"].shutdown()
