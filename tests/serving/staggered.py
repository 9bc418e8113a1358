"""Greedy decoding with requests joining the running batch at chosen engine steps."""

from __future__ import annotations

from collections.abc import Sequence

from serving.engine import Engine
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest


def engine_greedy(
    engine: Engine, prompts: list[list[int]], arrival_steps: Sequence[int], max_tokens: int
) -> list[list[int]]:
    """Add prompt i before step ``arrival_steps[i]`` and step until every request finishes."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outputs: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    step = 0
    while step <= max(arrival_steps) or engine.has_work:
        for index, arrival in enumerate(arrival_steps):
            if arrival == step:
                engine.add_request(GenerationRequest(str(index), prompts[index], params))
        for output in engine.step():
            outputs[output.request_id].extend(output.new_token_ids)
        step += 1
    return [outputs[str(i)] for i in range(len(prompts))]
