"""Greedy decoding with requests joining the running batch at chosen engine steps."""

from __future__ import annotations

from collections.abc import Sequence

from serving.engine import Engine
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest, RequestOutput


def staggered_outputs(
    engine: Engine, prompts: list[list[int]], arrival_steps: Sequence[int], params: SamplingParams
) -> list[list[RequestOutput]]:
    """Add prompt i before step ``arrival_steps[i]``, step until every request finishes, and
    return each request's outputs in order."""
    outputs: dict[str, list[RequestOutput]] = {str(i): [] for i in range(len(prompts))}
    step = 0
    while step <= max(arrival_steps) or engine.has_work:
        for index, arrival in enumerate(arrival_steps):
            if arrival == step:
                engine.add_request(GenerationRequest(str(index), prompts[index], params))
        for output in engine.step():
            outputs[output.request_id].append(output)
        step += 1
    return [outputs[str(i)] for i in range(len(prompts))]


def engine_greedy(
    engine: Engine, prompts: list[list[int]], arrival_steps: Sequence[int], max_tokens: int
) -> list[list[int]]:
    """Greedy output tokens of each prompt, the prompts joining at ``arrival_steps``."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    results = staggered_outputs(engine, prompts, arrival_steps, params)
    return [[token for output in outputs for token in output.new_token_ids] for outputs in results]


def assert_no_slot_leaked(engine: Engine) -> None:
    """Every KV slot is free or held, unlocked, by the prefix cache (nothing runs any more)."""
    pool, cache = engine.runner.kv_pool, engine.scheduler.prefix_cache
    assert pool.num_free + cache.total_size() == pool.capacity
    assert cache.evictable_size() == cache.total_size()  # no lock left behind
