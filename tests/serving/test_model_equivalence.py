"""Our engine vs transformers ``generate``: greedy decoding must give exactly the same tokens.

Prompts of different lengths arrive at different steps, long prompts are prefilled in chunks
(small token budget), and one variant has a KV pool too small for all requests so that
sequences are preempted and recomputed; none of this may change a single token.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from serving.config import EngineConfig
from serving.engine import Engine
from tests.serving.staggered import assert_no_slot_leaked, engine_greedy

NEW_TOKENS = 64
PROMPT_LENGTHS = (3, 17, 45, 70)
ARRIVAL_STEPS = (0, 0, 2, 5)  # request i joins before engine step ARRIVAL_STEPS[i]


def random_prompts(vocab_size: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(20, vocab_size, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def transformers_greedy(path, prompts: list[list[int]]) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    outputs = []
    for prompt in prompts:
        generated = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        outputs.append(generated[0, len(prompt) :].tolist())
    return outputs


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen2", "mistral"])
def test_greedy_tokens_match_transformers(tiny_checkpoint, family):
    path = tiny_checkpoint(family)
    engine = Engine(EngineConfig(str(path), max_running=4, max_batch_tokens=32))
    prompts = random_prompts(len(engine.tokenizer))
    ours = engine_greedy(engine, prompts, ARRIVAL_STEPS, NEW_TOKENS)
    assert ours == transformers_greedy(path, prompts)
    assert_no_slot_leaked(engine)


def test_preemption_and_recompute_keep_greedy_tokens(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    # 200 slots cannot hold the four requests' 4 * 64 new tokens + 135 prompt tokens at once.
    engine = Engine(EngineConfig(str(path), max_running=4, max_batch_tokens=32, kv_slots=200))
    prompts = random_prompts(len(engine.tokenizer), seed=1)
    ours = engine_greedy(engine, prompts, ARRIVAL_STEPS, NEW_TOKENS)
    assert engine.scheduler.num_preemptions > 0
    assert ours == transformers_greedy(path, prompts)
    assert_no_slot_leaked(engine)
