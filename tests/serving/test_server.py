"""The OpenAI-compatible server over real HTTP, driven by the official ``openai`` client.

Two demo models are served by one app (uvicorn in a thread on a free port); ``python -m
serving`` itself is started as a subprocess once to check the command line end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import openai
import pytest

from serving.async_engine import AsyncEngine
from serving.config import EngineConfig
from serving.engine import Engine
from serving.server import create_app
from tests.servers import free_port, serve_app
from tests.serving.staggered import assert_no_slot_leaked

MODELS = ("demo-llama-tiny", "demo-qwen-tiny")
LONG = {"max_tokens": 1500, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def engines(demo_models_dir):
    built = {
        name: AsyncEngine(Engine(EngineConfig(str(demo_models_dir / name), max_running=8)), name)
        for name in MODELS
    }
    yield built
    for engine in built.values():
        engine.shutdown()


@pytest.fixture(scope="module")
def base_url(engines):
    with serve_app(create_app(engines)) as url:
        yield url


@pytest.fixture
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def wait_until_idle(engine: AsyncEngine, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not engine.engine.has_work:
            return True
        time.sleep(0.05)
    return False


def test_models_and_health(client, base_url):
    assert sorted(m.id for m in client.models.list()) == list(MODELS)
    assert httpx.get(f"{base_url}/health").json()["status"] == "ok"


def test_chat_completion_with_usage(client, engines):
    messages = [{"role": "user", "content": "Write a haiku about autumn."}]
    reply = client.chat.completions.create(model="demo-qwen-tiny", messages=messages, max_tokens=12, seed=5)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in {"stop", "length"}
    tokenizer = engines["demo-qwen-tiny"].tokenizer
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert reply.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
    assert 1 <= reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_chat_equals_the_unstreamed_answer(client):
    request = {
        "model": "demo-llama-tiny",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
        "max_tokens": 20,
        "temperature": 0.8,
        "seed": 11,
    }
    whole = client.chat.completions.create(**request)
    chunks = list(
        client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_streamed_and_not_with_logprobs(client):
    reply = client.completions.create(
        model="demo-llama-tiny",
        prompt="def add(a, b):",
        max_tokens=6,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    choice = reply.choices[0]
    assert reply.usage.completion_tokens == 6 and choice.finish_reason == "length"
    assert len(choice.logprobs.tokens) == 6 and all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    stream = client.completions.create(
        model="demo-llama-tiny",
        prompt="def add(a, b):",
        max_tokens=6,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert "".join(c.choices[0].text for c in stream) == choice.text


def test_chat_logprobs(client):
    reply = client.chat.completions.create(
        model="demo-qwen-tiny",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=3,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 3 and all(len(entry.top_logprobs) == 3 for entry in content)


def test_stop_strings(client):
    base = {"model": "demo-llama-tiny", "prompt": "class A:", "max_tokens": 20, "temperature": 0}
    text = client.completions.create(**base, extra_body={"ignore_eos": True}).choices[0].text
    stop = text[5:8]
    cut = client.completions.create(**base, stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert cut.text == text[: text.index(stop)] and cut.finish_reason == "stop"


def test_errors_use_openai_format_and_the_server_keeps_serving(client, base_url):
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["code"] == "model_not_found"

    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model="demo-llama-tiny", messages=[{"role": "user", "content": "x " * 20_000}]  # > any context here
        )
    assert too_long.value.body["code"] == "context_length_exceeded"
    assert "maximum context length" in too_long.value.body["message"]

    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="demo-llama-tiny", prompt="a", max_tokens=20_000)
    with pytest.raises(openai.BadRequestError) as bad_param:
        client.chat.completions.create(
            model="demo-llama-tiny", messages=[{"role": "user", "content": "a"}], top_p=0
        )
    assert bad_param.value.body["param"] == "top_p"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo-llama-tiny", messages=[])

    for body in (b"{not json", b"[1, 2]", b'{"model": "demo-llama-tiny"}'):
        response = httpx.post(
            f"{base_url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]

    reply = client.chat.completions.create(
        model="demo-llama-tiny", messages=[{"role": "user", "content": "still there?"}], max_tokens=3
    )
    assert reply.usage.completion_tokens >= 1


def test_disconnect_during_stream_aborts_the_request(base_url, engines):
    body = {
        "model": "demo-llama-tiny",
        "messages": [{"role": "user", "content": "go on"}],
        "stream": True,
        "max_tokens": 1500,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["object"] == "chat.completion.chunk"
    assert wait_until_idle(engines["demo-llama-tiny"])
    assert_no_slot_leaked(engines["demo-llama-tiny"].engine)


def test_disconnect_while_waiting_for_a_whole_answer_aborts_it(base_url, engines):
    body = {"model": "demo-qwen-tiny", "prompt": "x", "max_tokens": 1500, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{base_url}/v1/completions", json=body, timeout=0.5)
    assert wait_until_idle(engines["demo-qwen-tiny"])


def test_command_line_serves_several_models(demo_models_dir):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "serving",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    for name in MODELS:
        command += ["--model", f"{name}={demo_models_dir / name}"]
    process = subprocess.Popen(command)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "the server exited"
            try:
                assert sorted(m.id for m in client.models.list()) == list(MODELS)
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        for name in MODELS:
            reply = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert reply.model == name and reply.usage.completion_tokens >= 1
    finally:
        process.terminate()
        process.wait(timeout=20)


def transformers_choice(model_dir, prompt_ids: list[int], choices: list[str]) -> int:
    """The best choice by mean token logprob, computed with transformers on the full sequences."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    means = []
    for choice in choices:
        ids = tokenizer.encode(choice, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + ids])).logits[0].float()
        logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
        means.append(logprobs.gather(1, torch.tensor(ids)[:, None]).mean().item())
    return max(range(len(choices)), key=lambda i: (means[i], -i))


def test_choices_constrain_the_answer_on_both_endpoints(client, engines, demo_models_dir):
    choices = ["[[A]]", "[[B]]", "[[C]]", "tie"]
    tokenizer = engines["demo-llama-tiny"].tokenizer
    prompt = "Which assistant answered better? Verdict:"
    reply = client.completions.create(
        model="demo-llama-tiny", prompt=prompt, max_tokens=5, extra_body={"choices": choices}
    )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    expected = choices[transformers_choice(demo_models_dir / "demo-llama-tiny", prompt_ids, choices)]
    assert reply.choices[0].text == expected and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == len(tokenizer.encode(expected, add_special_tokens=False))

    messages = [{"role": "user", "content": "Pick one."}]
    chat = client.chat.completions.create(model="demo-qwen-tiny", messages=messages, extra_body={"choices": choices})
    assert chat.choices[0].message.content in choices
    streamed = client.chat.completions.create(
        model="demo-qwen-tiny", messages=messages, stream=True, extra_body={"choices": choices}
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == chat.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="demo-qwen-tiny", messages=messages, extra_body={"choices": [""]})
    assert empty.value.body["param"] == "choices"


def test_n_choices_share_the_prompt(client, engines):
    messages = [{"role": "user", "content": "Tell me a story about a dragon and a knight."}]
    reply = client.chat.completions.create(
        model="demo-llama-tiny", messages=messages, n=3, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) == 1  # greedy: the same answer three times
    assert reply.usage.completion_tokens == 24
    stream = client.completions.create(
        model="demo-llama-tiny", prompt="Once upon a time", n=2, max_tokens=5, seed=3, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    texts = ["", ""]
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1} and all(texts)


def test_metrics_count_prefix_cache_hits(client, base_url):
    system = "You are a careful assistant who answers in one short sentence. " * 3
    for question in ("What is the capital of France?", "What is two plus two?"):
        client.chat.completions.create(
            model="demo-qwen-tiny",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=2,
        )
    text = httpx.get(f"{base_url}/metrics").text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("serving_")
    }
    assert values['serving_prefix_cache_hit_tokens_total{model="demo-qwen-tiny"}'] > 20
    assert values['serving_prompt_tokens_total{model="demo-qwen-tiny"}'] > 40
    assert values['serving_kv_slots_total{model="demo-llama-tiny"}'] > 0
    for name in ("serving_kv_slots_used", "serving_requests_running", "serving_requests_waiting",
                 "serving_generation_tokens_total"):  # fmt: skip
        assert f'{name}{{model="demo-qwen-tiny"}}' in values


async def test_arena_judge_recognises_our_engine_and_its_guided_choice(base_url):
    """arena-judge turns constrained re-asks on for our engine: it asks /models who serves the
    judge, and sends vLLM's ``guided_choice``, which we take as ``choices``."""
    from arena.judge.cli import SERVING_OWNER
    from arena.judge.verdicts import PAIR_CHOICES, parse_pairwise
    from arena.providers import ChatClient

    client = ChatClient(f"{base_url}/v1", "demo-llama-tiny")
    try:
        assert await client.owned_by() == SERVING_OWNER
        messages = [{"role": "user", "content": "Which is better, A or B?"}]
        result = await client.chat(messages, extra_body={"guided_choice": PAIR_CHOICES})
        assert result.text in PAIR_CHOICES and parse_pairwise(result.text) is not None
    finally:
        await client.close()
