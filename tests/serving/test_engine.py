"""The engine's stop logic, detokenization, cancellation and its async front."""

from __future__ import annotations

import asyncio

import pytest
from transformers import AutoTokenizer

from serving.async_engine import AsyncEngine
from serving.config import EngineConfig
from serving.detokenizer import TextStream
from serving.engine import Engine, RequestError
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest
from tests.serving.staggered import assert_no_slot_leaked


@pytest.fixture(scope="module")
def llama_path(demo_models_dir):
    return str(demo_models_dir / "demo-llama-tiny")


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "overlap"])
def engine(llama_path, request):
    """The stop logic must hold with and without overlapped decode steps (see test_overlap.py)."""
    return Engine(EngineConfig(llama_path, max_running=4, max_batch_tokens=64, overlap=request.param))


def run(engine: Engine, request: GenerationRequest):
    outputs = []
    engine.add_request(request)
    while engine.has_work:
        outputs += engine.step()
    return outputs


def prompt(engine: Engine) -> list[int]:
    return engine.tokenizer.encode("def main(args):\n    return", add_special_tokens=False)


def test_text_stream_decodes_incrementally_and_stops_at_a_stop_string(llama_path):
    tokenizer = AutoTokenizer.from_pretrained(llama_path)
    ids = tokenizer.encode("import os\nprint('hello') # done", add_special_tokens=False)
    stream = TextStream(tokenizer, stop=[])
    text = "".join(stream.push([t]) for t in ids) + stream.flush()
    assert text == tokenizer.decode(ids)

    stream = TextStream(tokenizer, stop=["hello"])
    pieces = []
    for t in ids:
        pieces.append(stream.push([t]))
        if stream.stopped:
            break
    assert "".join(pieces) + stream.flush() == "import os\nprint('"
    assert stream.stopped


def test_text_stream_never_splits_a_multibyte_character(llama_path):
    tokenizer = AutoTokenizer.from_pretrained(llama_path)
    ids = tokenizer.encode("naïve café ✓", add_special_tokens=False)
    stream = TextStream(tokenizer, stop=[])
    pieces = [stream.push([t]) for t in ids] + [stream.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == "naïve café ✓"


def test_max_tokens_finishes_with_length(engine):
    outputs = run(
        engine, GenerationRequest("len", prompt(engine), SamplingParams(max_tokens=5, ignore_eos=True))
    )
    assert sum(len(o.new_token_ids) for o in outputs) == 5
    assert outputs[-1].finished and outputs[-1].finish_reason == "length"
    assert outputs[-1].num_output_tokens == 5 and outputs[-1].num_prompt_tokens == len(prompt(engine))


def test_eos_and_stop_token_ids_finish_with_stop(engine):
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    tokens = [t for o in run(engine, GenerationRequest("g", prompt(engine), greedy)) for t in o.new_token_ids]
    stop_at = tokens[3]
    params = SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[stop_at])
    outputs = run(engine, GenerationRequest("s", prompt(engine), params))
    produced = [t for o in outputs for t in o.new_token_ids]
    assert produced == tokens[: tokens.index(stop_at) + 1] and outputs[-1].finish_reason == "stop"

    engine.eos_token_ids.add(stop_at)
    try:
        outputs = run(
            engine, GenerationRequest("e", prompt(engine), SamplingParams(temperature=0, max_tokens=8))
        )
    finally:
        engine.eos_token_ids.discard(stop_at)
    assert outputs[-1].finish_reason == "stop" and outputs[-1].new_token_ids == [stop_at]


def test_stop_string_truncates_the_text(engine):
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    text = "".join(o.text for o in run(engine, GenerationRequest("t", prompt(engine), greedy)))
    stop = text[4:7]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop])
    outputs = run(engine, GenerationRequest("u", prompt(engine), params))
    assert "".join(o.text for o in outputs) == text[: text.index(stop)]
    assert outputs[-1].finish_reason == "stop"


def test_abort_frees_the_request(engine):
    engine.add_request(GenerationRequest("a", prompt(engine), SamplingParams(max_tokens=50, ignore_eos=True)))
    engine.step()
    final = engine.abort("a")
    assert final is not None and final.finished and final.finish_reason == "abort"
    assert not engine.has_work
    assert_no_slot_leaked(engine)
    assert engine.abort("unknown") is None


def test_requests_that_cannot_fit_are_refused(engine):
    def check(prompt: list[int], params: SamplingParams) -> None:
        engine.new_sequence(GenerationRequest("refused", prompt, params))

    with pytest.raises(RequestError, match="maximum context length"):
        check([5] * engine.max_context, SamplingParams())
    with pytest.raises(RequestError, match="maximum context length"):
        check([5] * 10, SamplingParams(max_tokens=engine.max_context))
    with pytest.raises(RequestError, match="empty"):
        check([], SamplingParams())
    assert not engine.has_work


async def test_async_engine_streams_concurrent_requests_and_cancels_on_close(llama_path):
    async_engine = AsyncEngine(Engine(EngineConfig(llama_path, max_running=4)), "demo")
    try:
        params = SamplingParams(max_tokens=6, ignore_eos=True, seed=3)

        async def collect(request_id: str) -> list[int]:
            request = GenerationRequest(request_id, [1, 2, 3, 4], params)
            return [t async for o in async_engine.generate(request) for t in o.new_token_ids]

        first, second = await asyncio.gather(collect("x"), collect("y"))
        assert len(first) == 6 and first == second  # same seed, same tokens

        long_request = GenerationRequest("z", [1, 2, 3], SamplingParams(max_tokens=1000, ignore_eos=True))
        stream = async_engine.generate(long_request)
        await anext(stream)
        await stream.aclose()  # the client went away
        for _ in range(100):
            if not async_engine.engine.has_work:
                break
            await asyncio.sleep(0.05)
        assert not async_engine.engine.has_work
        assert_no_slot_leaked(async_engine.engine)
    finally:
        async_engine.shutdown()


def test_a_failed_step_leaks_no_slots(engine, monkeypatch):
    engine.add_request(GenerationRequest("f", prompt(engine), SamplingParams(max_tokens=5)))

    def broken_forward(batch, unread_tokens=None):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.runner, "forward", broken_forward)
    with pytest.raises(RuntimeError, match="device lost"):
        engine.step()
    engine.abort("f")
    assert not engine.has_work
    assert_no_slot_leaked(engine)
