"""LoRA adapters through the OpenAI API over real HTTP: ``base:adapter`` models, run-time
registration (``POST /v1/adapters``, ``DELETE /v1/adapters/NAME``) and ``--lora`` on the
command line."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from serving.__main__ import adapters_by_model, parse_lora_spec
from serving.async_engine import AsyncEngine
from serving.config import EngineConfig
from serving.engine import Engine
from serving.server import create_app
from tests.servers import free_port, serve_app

peft = pytest.importorskip("peft")
PROMPT = [40, 41, 42, 43, 44, 45]
GREEDY = {"temperature": 0.0, "max_tokens": 8, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def served(tiny_checkpoint, lora_adapters):
    path = tiny_checkpoint("llama")
    config = EngineConfig(
        str(path), max_running=4, lora_adapters={"all": str(lora_adapters["all-r8"])}, max_loras=2, max_lora_rank=16
    )
    engine = AsyncEngine(Engine(config), "tiny")
    with serve_app(create_app({"tiny": engine})) as url:
        yield url, engine
    engine.shutdown()


def peft_text(base_dir, adapter_dir, tokenizer) -> str:
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    out = model.generate(input_ids=torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    return tokenizer.decode(out[0, len(PROMPT) :])


def test_base_adapter_models_are_listed_and_served(served, tiny_checkpoint, lora_adapters):
    url, engine = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    models = {m.id for m in client.models.list()}
    assert models == {"tiny", "tiny:all"}
    with_adapter = client.completions.create(model="tiny:all", prompt=PROMPT, **GREEDY)
    base = client.completions.create(model="tiny", prompt=PROMPT, **GREEDY)
    assert with_adapter.model == "tiny:all"
    expected = peft_text(tiny_checkpoint("llama"), lora_adapters["all-r8"], engine.tokenizer)
    assert with_adapter.choices[0].text == expected != base.choices[0].text
    with pytest.raises(openai.NotFoundError, match="tiny:other"):
        client.completions.create(model="tiny:other", prompt=PROMPT, **GREEDY)


def test_adapters_register_and_unregister_over_http(served, lora_adapters, tmp_path):
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    created = httpx.post(f"{url}/v1/adapters", json={"name": "qv", "path": str(lora_adapters["qv-r4"])})
    assert created.status_code == 201 and created.json()["id"] == "tiny:qv"
    reply = client.chat.completions.create(model="tiny:qv", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.usage.completion_tokens >= 1
    again = httpx.post(f"{url}/v1/adapters", json={"name": "qv", "path": str(lora_adapters["qv-r4"])})
    assert again.status_code == 400 and "already registered" in again.json()["error"]["message"]
    bad = httpx.post(f"{url}/v1/adapters", json={"name": "bad", "path": str(tmp_path)})
    assert bad.status_code == 400 and "adapter_config.json: missing" in bad.json()["error"]["message"]
    assert httpx.delete(f"{url}/v1/adapters/tiny:qv").json()["deleted"] is True
    assert "tiny:qv" not in {m.id for m in client.models.list()}
    assert httpx.delete(f"{url}/v1/adapters/qv").status_code == 404


def test_lora_specs_on_the_command_line():
    assert parse_lora_spec("support=/a/b") == (None, "support", "/a/b")
    assert parse_lora_spec("llama:8b:legal=/c") == ("llama:8b", "legal", "/c")
    assert adapters_by_model([(None, "x", "/x")], ["m"]) == {"m": {"x": "/x"}}
    with pytest.raises(SystemExit, match="name the base model"):
        adapters_by_model([(None, "x", "/x")], ["m", "n"])
    with pytest.raises(SystemExit, match="no served model"):
        adapters_by_model([("z", "x", "/x")], ["m"])


def test_command_line_serves_an_adapter(tiny_checkpoint, lora_adapters):
    port = free_port()
    command = [
        sys.executable, "-m", "serving", "--port", str(port), "--device", "cpu", "--log-level", "warning",
        "--model", f"tiny={tiny_checkpoint('llama')}", "--lora", f"qv={lora_adapters['qv-r4']}", "--max-lora-rank", "8",
    ]  # fmt: skip
    process = subprocess.Popen(command)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "the server exited"
            try:
                assert {m.id for m in client.models.list()} == {"tiny", "tiny:qv"}
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        reply = client.completions.create(model="tiny:qv", prompt=PROMPT, max_tokens=3)
        assert reply.model == "tiny:qv" and reply.usage.completion_tokens >= 1
    finally:
        process.terminate()
        process.wait(timeout=20)
