"""Our engine with LoRA adapters vs PEFT on the same inputs.

One batch mixes requests for four adapters (ranks 2-16, attention and MLP targets, rsLoRA,
rank/alpha patterns, some layers only) and for the base model, joining at different steps,
with chunked prefill and the prefix cache on (one prompt repeated under its adapter and on
the base model: KV is shared only under the same adapter). Tolerance: fp32 greedy tokens identical to PEFT's ``generate`` for
every request, and per-layer outputs within 1e-5 (absolute) of PEFT's LoRA layers.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from serving.config import EngineConfig
from serving.engine import Engine
from serving.lora.pool import AdapterInUseError
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest
from tests.serving.staggered import assert_no_slot_leaked, staggered_outputs

peft = pytest.importorskip("peft")

NEW_TOKENS = 24
# (adapter or None, prompt length, arrival step)
REQUESTS = [
    ("all-r8", 9, 0),
    (None, 30, 0),
    ("qv-r4", 14, 0),
    ("mlp-r16-rslora", 40, 1),
    ("patterns", 5, 2),
    ("all-r8", 21, 3),
    ("qv-r4", 3, 3),
    (None, 9, 6),  # request 0's prompt again, on the base model: no KV from the adapter's run
    ("all-r8", 9, 7),  # and under request 0's adapter: the prefix cache may share its KV
]
REPEATS_OF_FIRST = (7, 8)


def _prompts(vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    prompts = [torch.randint(20, vocab, (n,), generator=generator).tolist() for _, n, _ in REQUESTS]
    for index in REPEATS_OF_FIRST:
        prompts[index] = prompts[0]
    return prompts


def peft_greedy(base_dir, adapters: dict, adapter: str | None, prompt: list[int]) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter is not None:
        model = peft.PeftModel.from_pretrained(model, adapters[adapter])
    out = model.generate(
        input_ids=torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


def run_mixed(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    add = engine.add_request
    adapters = {str(i): adapter for i, (adapter, _, _) in enumerate(REQUESTS)}

    def add_with_adapter(request: GenerationRequest) -> None:
        request.adapter = adapters[request.request_id]
        add(request)

    engine.add_request = add_with_adapter  # type: ignore[method-assign]
    results = staggered_outputs(engine, prompts, [arrival for _, _, arrival in REQUESTS], params)
    return [[t for output in outputs for t in output.new_token_ids] for outputs in results]


@pytest.fixture(scope="module")
def peft_outputs(tiny_checkpoint, lora_adapters) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts, PEFT's greedy tokens for each of REQUESTS)."""
    base_dir = tiny_checkpoint("llama")
    vocab = AutoModelForCausalLM.from_pretrained(base_dir).config.vocab_size
    prompts = _prompts(vocab)
    expected = [peft_greedy(base_dir, lora_adapters, adapter, p) for (adapter, _, _), p in zip(REQUESTS, prompts, strict=True)]
    return prompts, expected


@pytest.mark.parametrize("max_loras", [4, 2], ids=["all-resident", "paging"])
def test_mixed_adapter_batch_matches_peft(tiny_checkpoint, lora_adapters, peft_outputs, max_loras):
    """With 2 slots for 4 adapters, requests wait for slots and adapters are paged and evicted."""
    base_dir = tiny_checkpoint("llama")
    config = EngineConfig(
        str(base_dir),
        max_running=8,
        max_batch_tokens=24,
        lora_adapters={name: str(path) for name, path in lora_adapters.items()},
        max_loras=max_loras,
        max_lora_rank=16,
    )
    engine = Engine(config)
    prompts, expected = peft_outputs
    ours = run_mixed(engine, prompts)
    assert ours == expected
    base_tokens = peft_greedy(base_dir, lora_adapters, None, prompts[0])
    assert expected[0] != base_tokens  # the adapters really change the output
    pool = engine.adapters
    assert pool is not None and not pool._users  # every slot released
    if max_loras == 2:
        assert pool.num_evictions > 0
    assert_no_slot_leaked(engine)


def test_mixed_adapter_batch_under_two_ranks_matches_peft(tiny_checkpoint, lora_adapters, peft_outputs):
    """Tensor parallelism (TP=2, a gloo worker): each rank holds its shard of every adapter
    slot. The driver's pool pages adapters (2 slots for 4) and tells the worker; one adapter is
    registered at run time."""
    names = sorted(lora_adapters)
    late = names[-1]
    config = EngineConfig(
        str(tiny_checkpoint("llama")),
        max_running=8,
        max_batch_tokens=24,
        lora_adapters={name: str(lora_adapters[name]) for name in names if name != late},
        max_loras=2,
        max_lora_rank=16,
        tensor_parallel=2,
    )
    engine = Engine(config)
    try:
        engine.add_adapter(engine.load_adapter(late, lora_adapters[late]))
        prompts, expected = peft_outputs
        assert run_mixed(engine, prompts) == expected
        assert engine.adapters is not None and engine.adapters.num_evictions > 0
    finally:
        engine.close()


def test_layer_outputs_match_peft_lora_layers(tiny_checkpoint, lora_adapters):
    """Each adapted projection's output (base + delta) equals PEFT's LoRA layer within 1e-5."""
    base_dir = tiny_checkpoint("llama")
    engine = Engine(EngineConfig(str(base_dir), lora_adapters={"all-r8": str(lora_adapters["all-r8"])}, max_lora_rank=16))
    model = engine.runner.model
    slot = engine.adapters.acquire("all-r8")
    reference = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), lora_adapters["all-r8"]
    )
    from serving.lora.batch import LoraBatch

    x = torch.randn(5, 64)
    lora = LoraBatch.build([slot, -1], [3, 2], "cpu")
    qkv = model.model.layers[1].self_attn.qkv_proj(x, lora)
    hf_attn = reference.base_model.model.model.layers[1].self_attn
    with torch.no_grad():
        expected = torch.cat([hf_attn.q_proj(x[:3]), hf_attn.k_proj(x[:3]), hf_attn.v_proj(x[:3])], dim=-1)
        base = torch.cat([hf_attn.q_proj.base_layer(x[3:]), hf_attn.k_proj.base_layer(x[3:]), hf_attn.v_proj.base_layer(x[3:])], dim=-1)
    torch.testing.assert_close(qkv[:3], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(qkv[3:], base, atol=1e-5, rtol=0)


def test_adapters_register_and_unregister_at_run_time(tiny_checkpoint, lora_adapters):
    engine = Engine(EngineConfig(str(tiny_checkpoint("llama")), enable_lora=True, max_loras=1, max_lora_rank=16))
    assert engine.adapter_names() == []
    engine.add_adapter(engine.load_adapter("late", lora_adapters["qv-r4"]))
    assert engine.adapter_names() == ["late"]
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    engine.add_request(GenerationRequest("r", [30, 31, 32], params, adapter="late"))
    engine.step()
    with pytest.raises(AdapterInUseError, match="in use"):
        engine.remove_adapter("late")
    while engine.has_work:
        engine.step()
    first_key = engine.new_sequence(GenerationRequest("k1", [30, 31], params, adapter="late")).extra_key
    engine.remove_adapter("late")
    assert engine.adapter_names() == []
    # The prefix cache keys on the adapter's registration: a new adapter under the same name
    # shares no KV computed under the old one, nor with the base model (key None).
    engine.add_adapter(engine.load_adapter("late", lora_adapters["all-r8"]))
    second_key = engine.new_sequence(GenerationRequest("k2", [30, 31], params, adapter="late")).extra_key
    assert first_key is not None and first_key != second_key
    assert engine.new_sequence(GenerationRequest("k3", [30, 31], params)).extra_key is None
    engine.remove_adapter("late")
    from serving.engine import RequestError

    with pytest.raises(RequestError, match="unknown adapter"):
        engine.add_request(GenerationRequest("s", [30, 31], params, adapter="late"))
