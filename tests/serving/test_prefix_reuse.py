"""The prefix cache in the engine: greedy outputs with it on equal those with it off, for
shared prefixes arriving at different steps, multi-turn conversations, a pool so small that
cached prefixes are evicted and requests preempted, and overlapped decode steps."""

from __future__ import annotations

import pytest
import torch

from serving.config import EngineConfig
from serving.engine import Engine
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest
from tests.serving.staggered import assert_no_slot_leaked, engine_greedy

NEW_TOKENS = 24


def make_engine(path, prefix_cache: bool, **overrides) -> Engine:
    settings = {"max_running": 4, "max_batch_tokens": 48, "prefix_cache": prefix_cache, **overrides}
    return Engine(EngineConfig(str(path), **settings))


def shared_prefix_prompts(vocab: int) -> list[list[int]]:
    """Three families of prompts: a 60-token system prompt, a 20-token one, and none."""
    generator = torch.Generator().manual_seed(7)

    def tokens(n: int) -> list[int]:
        return torch.randint(20, vocab, (n,), generator=generator).tolist()

    system, short = tokens(60), tokens(20)
    return [system + tokens(5), system + tokens(9), short + tokens(3), tokens(30), system + tokens(1),
            short + tokens(12), system[:45] + tokens(4)]  # fmt: skip


ARRIVALS = (0, 0, 1, 2, 4, 6, 9)


@pytest.mark.parametrize(
    ("family", "overlap"), [("llama", False), ("qwen3", True)], ids=["llama", "qwen3-overlap"]
)
def test_greedy_tokens_are_the_same_with_the_cache_on(tiny_checkpoint, family, overlap):
    path = tiny_checkpoint(family)
    off = make_engine(path, prefix_cache=False, overlap=overlap)
    prompts = shared_prefix_prompts(len(off.tokenizer))
    expected = engine_greedy(off, prompts, ARRIVALS, NEW_TOKENS)
    on = make_engine(path, prefix_cache=True, overlap=overlap)
    assert engine_greedy(on, prompts, ARRIVALS, NEW_TOKENS) == expected
    assert on.stats().cached_tokens > 150  # most of the system prompts came from the cache
    assert_no_slot_leaked(on)
    again = engine_greedy(on, prompts, [0] * len(prompts), NEW_TOKENS)  # all cached now, together
    assert again == expected
    assert_no_slot_leaked(on)


def conversation(engine: Engine, turns: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Each turn resends the history (previous prompts and answers) plus new tokens; returns
    the answers and the cached prompt tokens of each turn."""
    history: list[int] = []
    answers, cached = [], []
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    for index, user_tokens in enumerate(turns):
        history = history + user_tokens
        request_id = f"turn-{index}-{len(history)}"
        engine.add_request(GenerationRequest(request_id, history, params))
        answer: list[int] = []
        last = None
        while engine.has_work:
            for output in engine.step():
                answer.extend(output.new_token_ids)
                last = output
        assert last is not None and last.finished
        answers.append(answer)
        cached.append(last.num_cached_tokens)
        history = history + answer
    return answers, cached


def test_a_second_turn_reuses_the_first_turns_kv(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    turns = [list(range(30, 70)), list(range(100, 110)), list(range(200, 215))]
    expected, _ = conversation(make_engine(path, prefix_cache=False), turns)
    answers, cached = conversation(make_engine(path, prefix_cache=True), turns)
    assert answers == expected
    assert cached[0] == 0
    # Turn 2 finds turn 1's prompt and all of its answer but the last token (never computed).
    assert cached[1] == 40 + NEW_TOKENS - 1
    assert cached[2] == 40 + NEW_TOKENS + 10 + NEW_TOKENS - 1


def test_a_tiny_pool_evicts_and_preempts_without_changing_tokens(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    off = make_engine(path, prefix_cache=False)
    prompts = shared_prefix_prompts(len(off.tokenizer))
    expected = engine_greedy(off, prompts, ARRIVALS, NEW_TOKENS)
    on = make_engine(path, prefix_cache=True, kv_slots=160)  # < 4 requests at once
    evicted: list[int] = []
    cache = on.scheduler.prefix_cache
    original_evict = cache.evict

    def counted_evict(num_slots: int) -> int:
        evicted.append(original_evict(num_slots))
        return evicted[-1]

    cache.evict = counted_evict  # type: ignore[method-assign]
    assert engine_greedy(on, prompts, ARRIVALS, NEW_TOKENS) == expected
    assert on.scheduler.num_preemptions > 0 and sum(evicted) > 0
    assert_no_slot_leaked(on)


def test_scoring_requests_give_the_models_prompt_logprobs(tiny_checkpoint):
    """A scoring request (what ``choices`` runs) reports log p(token i | tokens before) from
    score_from on, across prefill chunks and with its prompt prefix taken from the cache."""
    from transformers import AutoModelForCausalLM

    path = tiny_checkpoint("qwen3")
    engine = make_engine(path, prefix_cache=True)
    generator = torch.Generator().manual_seed(3)
    prompt = torch.randint(20, len(engine.tokenizer), (70,), generator=generator).tolist()
    continuations = [torch.randint(20, len(engine.tokenizer), (n,), generator=generator).tolist() for n in (3, 60)]
    params = SamplingParams(temperature=0, max_tokens=1)
    for index, tokens in enumerate(continuations):
        engine.add_request(GenerationRequest(f"s{index}", prompt + tokens, params, score_from=len(prompt)))
    results = {}
    while engine.has_work:
        for output in engine.step():
            assert output.finished and not output.new_token_ids
            results[output.request_id] = output
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for index, tokens in enumerate(continuations):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens])).logits[0]
        expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1).gather(1, torch.tensor(tokens)[:, None])
        got = torch.tensor(results[f"s{index}"].prompt_logprobs)
        torch.testing.assert_close(got, expected.squeeze(1), atol=1e-4, rtol=1e-4)
    assert results["s1"].num_cached_tokens >= 48  # the second shares (a first chunk of) the prompt
    assert_no_slot_leaked(engine)


def test_the_command_line_turns_the_cache_off_and_picks_the_policy():
    from serving.__main__ import build_parser

    default = build_parser().parse_args(["--model", "m=/models/m"])
    assert not default.no_prefix_cache and default.schedule_policy == "lpm"
    off = build_parser().parse_args(["--model", "m=/models/m", "--no-prefix-cache", "--schedule-policy", "fcfs"])
    assert off.no_prefix_cache and off.schedule_policy == "fcfs"
