"""Overlapped decode steps (``EngineConfig.overlap``): the next decode step is launched before
the host reads this step's tokens. On the CPU nothing runs concurrently, but the bookkeeping is
the GPU's: these tests check that overlap changes no output, really runs ahead, and that a
sequence stopping or aborted under a step already launched leaks no KV slot or request row."""

from __future__ import annotations

import pytest

from serving.config import EngineConfig
from serving.engine import Engine
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest
from tests.serving.staggered import assert_no_slot_leaked, staggered_outputs

ARRIVALS = (0, 0, 1, 3, 6, 6, 9)


@pytest.fixture(scope="module")
def llama_path(demo_models_dir):
    return str(demo_models_dir / "demo-llama-tiny")


def make_engine(path: str, overlap: bool) -> Engine:
    return Engine(EngineConfig(path, max_running=4, max_batch_tokens=64, overlap=overlap))


def count_run_ahead(engine: Engine, monkeypatch) -> list[bool]:
    """Record, per attempt, whether the scheduler let a step run ahead."""
    attempts: list[bool] = []
    original = engine.scheduler.schedule_ahead

    def counted(launched):
        batch = original(launched)
        attempts.append(batch is not None)
        return batch

    monkeypatch.setattr(engine.scheduler, "schedule_ahead", counted)
    return attempts


def assert_everything_freed(engine: Engine) -> None:
    assert not engine.has_work
    assert_no_slot_leaked(engine)
    assert engine.runner.req_pool.num_free == engine.config.max_running  # all but the padding row


def mixed_requests(engine: Engine) -> tuple[list[list[int]], list[SamplingParams]]:
    """Prompts of several lengths with every way to stop, seeded sampling, logprobs, penalties."""
    texts = ["def main(args):\n    return", "import os", "class A:\n", "x = 1\ny =", "print(", "# a", "if x:"]
    prompts = [engine.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    probe = staggered_outputs(engine, prompts[:1], (0,), greedy)[0]
    tokens = [t for output in probe for t in output.new_token_ids]
    text = "".join(output.text for output in probe)
    later_text = text[len("".join(output.text for output in probe[:6])) :]
    params = [
        SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=40),  # the demo model ends at EOS now and then
        SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=30, logprobs=3),
        SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop_token_ids=[tokens[5]]),
        SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=[later_text[:3]]),
        SamplingParams(temperature=0, max_tokens=20, repetition_penalty=1.3),  # never runs ahead
        SamplingParams(temperature=0.7, seed=11, max_tokens=17, ignore_eos=True),
    ]
    prompts[3] = prompts[0]  # the stop token and the stop string are met on the probed path
    prompts[4] = prompts[0]
    return prompts, params


def summary(outputs):
    """Per request: tokens, text, finish reason, and logprobs rounded against batch-shape noise."""
    return [
        (
            [t for o in request for t in o.new_token_ids],
            "".join(o.text for o in request),
            request[-1].finish_reason,
            [(lp.token_id, round(lp.logprob, 4), [i for i, _ in lp.top]) for o in request for lp in o.logprobs],
        )
        for request in outputs
    ]


def test_overlap_changes_no_output_and_frees_every_slot(llama_path, monkeypatch):
    plain = make_engine(llama_path, overlap=False)
    prompts, params = mixed_requests(plain)
    expected = [staggered_outputs(plain, [p], (0,), q)[0] for p, q in zip(prompts, params, strict=True)]

    overlapped = make_engine(llama_path, overlap=True)
    attempts = count_run_ahead(overlapped, monkeypatch)
    alone = [staggered_outputs(overlapped, [p], (0,), q)[0] for p, q in zip(prompts, params, strict=True)]
    assert summary(alone) == summary(expected)
    assert_everything_freed(overlapped)
    assert sum(attempts) > 50  # most decode steps ran ahead

    together = staggered_outputs(overlapped, prompts, ARRIVALS, params[0])
    plain_together = staggered_outputs(plain, prompts, ARRIVALS, params[0])
    assert summary(together) == summary(plain_together)
    assert_everything_freed(overlapped)

    stopped = [tokens for tokens, _, reason, _ in summary(alone) if reason == "stop"]
    assert len(stopped) >= 2 and all(len(tokens) > 2 for tokens in stopped)  # in steady decode,
    # where the step after the stop had already been launched


def test_abort_under_a_launched_step_frees_its_slot(llama_path, monkeypatch):
    engine = make_engine(llama_path, overlap=True)
    attempts = count_run_ahead(engine, monkeypatch)
    tokens = engine.tokenizer.encode("def main(args):\n    return", add_special_tokens=False)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    engine.add_request(GenerationRequest("kept", tokens, params))
    engine.add_request(GenerationRequest("aborted", tokens[:4], params))
    for _ in range(5):
        engine.step()
    assert attempts and attempts[-1]  # the next step is already launched
    final = engine.abort("aborted")
    assert final is not None and final.finished and final.finish_reason == "abort"
    later = []
    while engine.has_work:
        later += engine.step()
    assert {o.request_id for o in later} == {"kept"}
    assert later[-1].finished and later[-1].num_output_tokens == 30
    assert_everything_freed(engine)


def test_a_failed_launch_ahead_keeps_the_launched_step(llama_path, monkeypatch):
    """If launching the step ahead fails, the step already launched is still read on the next
    call and no slot leaks."""
    engine = make_engine(llama_path, overlap=True)
    tokens = engine.tokenizer.encode("def main(args):\n    return", add_special_tokens=False)
    engine.add_request(GenerationRequest("r", tokens, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)))
    produced = [t for _ in range(3) for o in engine.step() for t in o.new_token_ids]
    working_forward = engine.runner.forward

    def broken_forward(batch, unread_tokens=None):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.runner, "forward", broken_forward)
    with pytest.raises(RuntimeError, match="device lost"):
        engine.step()
    monkeypatch.setattr(engine.runner, "forward", working_forward)
    while engine.has_work:
        produced += [t for o in engine.step() for t in o.new_token_ids]
    plain = make_engine(llama_path, overlap=False)
    expected = staggered_outputs(plain, [tokens], (0,), SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    assert produced == [t for o in expected[0] for t in o.new_token_ids]
    assert_everything_freed(engine)
