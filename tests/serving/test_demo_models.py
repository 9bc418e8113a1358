"""The demo checkpoints: loadable by transformers, deterministic, and answers that end by themselves."""

from __future__ import annotations

from transformers import AutoConfig, AutoTokenizer

from serving.config import EngineConfig
from serving.demo_models import DEMO_NAMES, build_demo_models
from serving.engine import Engine
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest


def test_demo_models_are_real_hf_checkpoints_with_chat_templates(demo_models_dir):
    architectures = set()
    for name in DEMO_NAMES:
        config = AutoConfig.from_pretrained(demo_models_dir / name)
        architectures.update(config.architectures)
        tokenizer = AutoTokenizer.from_pretrained(demo_models_dir / name)
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
        )
        assert "hi" in text and text != "hi"
    assert architectures == {"LlamaForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"}


def test_building_again_gives_identical_files(demo_models_dir, tmp_path):
    rebuilt = build_demo_models(tmp_path, names=["demo-qwen-tiny"])[0]
    for file in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (rebuilt / file).read_bytes() == (demo_models_dir / "demo-qwen-tiny" / file).read_bytes(), file


def test_sampled_answers_mostly_end_with_eos_and_contain_no_chat_markup(demo_models_dir):
    path = demo_models_dir / "demo-llama-tiny"
    engine = Engine(EngineConfig(str(path), max_running=16, max_batch_tokens=1024))
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me a story."}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
    for seed in range(16):
        engine.add_request(
            GenerationRequest(str(seed), prompt_ids, SamplingParams(max_tokens=400, seed=seed))
        )
    reasons, texts = {}, {}
    while engine.has_work:
        for output in engine.step():
            texts[output.request_id] = texts.get(output.request_id, "") + output.text
            reasons[output.request_id] = output.finish_reason
    assert sum(reason == "stop" for reason in reasons.values()) >= 12
    assert all("<|" not in text for text in texts.values())
