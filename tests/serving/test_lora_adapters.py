"""PEFT adapter loading and validation, and the adapter pool's paging and LRU eviction."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from serving.lora.adapter import AdapterError, load_adapter
from serving.lora.pool import AdapterInUseError, AdapterPool
from serving.models import load_config, load_model

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def base(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    return path, load_config(path)


def _copy(src, tmp_path, name="adapter"):
    out = tmp_path / name
    shutil.copytree(src, out)
    return out


def test_peft_adapter_loads_with_its_scaling(base, lora_adapters):
    path, config = base
    adapter = load_adapter("a", lora_adapters["all-r8"], config, torch.float32)
    assert adapter.rank == 8 and len(adapter.weights) == 2 * 7  # two layers, seven projections
    raw = load_file(lora_adapters["all-r8"] / "adapter_model.safetensors")
    a, b = adapter.weights[(0, "k_proj")]
    torch.testing.assert_close(a, raw["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"])
    torch.testing.assert_close(b, raw["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"] * 2.0)
    patterned = load_adapter("p", lora_adapters["patterns"], config, torch.float32)
    assert set(patterned.weights) == {(1, "q_proj"), (1, "o_proj"), (1, "down_proj")}
    assert patterned.weights[(1, "o_proj")][0].shape[0] == 2  # rank_pattern
    rslora = load_adapter("r", lora_adapters["mlp-r16-rslora"], config, torch.float32)
    raw = load_file(lora_adapters["mlp-r16-rslora"] / "adapter_model.safetensors")
    torch.testing.assert_close(
        rslora.weights[(1, "up_proj")][1], raw["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"] * 8 / 4
    )


def test_missing_files_are_named(base, lora_adapters, tmp_path):
    _, config = base
    with pytest.raises(AdapterError, match="not a directory"):
        load_adapter("a", tmp_path / "nope", config, torch.float32)
    no_config = _copy(lora_adapters["qv-r4"], tmp_path, "no-config")
    (no_config / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match=r"no-config/adapter_config.json: missing"):
        load_adapter("a", no_config, config, torch.float32)
    no_weights = _copy(lora_adapters["qv-r4"], tmp_path, "no-weights")
    (no_weights / "adapter_model.safetensors").rename(no_weights / "adapter_model.bin")
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors: missing \(adapter_model.bin is there"):
        load_adapter("a", no_weights, config, torch.float32)
    broken = _copy(lora_adapters["qv-r4"], tmp_path, "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match="adapter_model.safetensors: not a readable safetensors"):
        load_adapter("a", broken, config, torch.float32)


def test_wrong_base_shapes_and_unsupported_features_are_refused(base, lora_adapters, tmp_path):
    _, config = base
    wrong = _copy(lora_adapters["qv-r4"], tmp_path, "wrong-shape")
    file = wrong / "adapter_model.safetensors"
    tensors = load_file(file)
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    tensors[key] = torch.zeros(48, 4)  # the base model's v_proj has 32 outputs
    save_file(tensors, file)
    with pytest.raises(AdapterError, match=r"wrong-shape/adapter_model.safetensors: layers.0.v_proj.*32"):
        load_adapter("a", wrong, config, torch.float32)

    embed = _copy(lora_adapters["qv-r4"], tmp_path, "embed")
    tensors = load_file(embed / "adapter_model.safetensors")
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.zeros(4, 8)
    save_file(tensors, embed / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="unsupported tensor"):
        load_adapter("a", embed, config, torch.float32)

    for key, value, message in [("use_dora", True, "DoRA"), ("bias", "all", "biases"), ("peft_type", "IA3", "LORA")]:
        changed = _copy(lora_adapters["qv-r4"], tmp_path, f"cfg-{key}")
        settings = json.loads((changed / "adapter_config.json").read_text())
        settings[key] = value
        (changed / "adapter_config.json").write_text(json.dumps(settings))
        with pytest.raises(AdapterError, match=message):
            load_adapter("a", changed, config, torch.float32)


def test_pool_pages_adapters_and_evicts_the_least_recently_used(base, lora_adapters):
    path, config = base
    model = load_model(path, "cpu", torch.float32)
    pool = AdapterPool(model, config, num_slots=2, max_rank=16)
    for name in ("all-r8", "qv-r4", "mlp-r16-rslora"):
        pool.register(name, lora_adapters[name])
    first = pool.acquire("all-r8")
    second = pool.acquire("qv-r4")
    assert {first, second} == {0, 1}
    assert pool.acquire("mlp-r16-rslora") is None  # both slots busy: the request waits
    pool.release("all-r8")
    pool.release("qv-r4")  # now qv-r4 is the most recently used
    assert pool.acquire("mlp-r16-rslora") == first  # all-r8 was idle longest: evicted
    assert not pool.is_resident("all-r8") and pool.is_resident("qv-r4")
    assert pool.acquire("qv-r4") == second and pool.num_loads == 3  # still resident: no reload
    # The slot now really holds mlp-r16-rslora's weights, with all-r8's attention deltas cleared.
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert qkv.lora_a[first].abs().sum() == 0
    a, b = pool.adapters["mlp-r16-rslora"].weights[(0, "gate_proj")]
    gate_up = model.model.layers[0].mlp.gate_up_proj
    torch.testing.assert_close(gate_up.lora_a[first, :16], a)
    torch.testing.assert_close(gate_up.lora_b[first, :128, :16], b)
    with pytest.raises(AdapterInUseError):
        pool.unregister("qv-r4")
    with pytest.raises(AdapterError, match="already registered"):
        pool.register("qv-r4", lora_adapters["qv-r4"])
    with pytest.raises(AdapterError, match="bad adapter name"):
        pool.register("a:b", lora_adapters["qv-r4"])


def test_adapter_rank_above_the_pool_maximum_is_refused(base, lora_adapters):
    path, config = base
    pool = AdapterPool(load_model(path, "cpu", torch.float32), config, num_slots=1, max_rank=8)
    with pytest.raises(AdapterError, match="rank 16 exceeds .* maximum LoRA rank 8"):
        pool.register("big", lora_adapters["mlp-r16-rslora"])


def test_targets_limit_the_device_slots_and_the_adapters(base, lora_adapters):
    path, config = base
    model = load_model(path, "cpu", torch.float32)
    pool = AdapterPool(model, config, num_slots=3, max_rank=8, targets=("q_proj", "v_proj"))
    # Only q|k|v has slots: A [3, 3 * 8, 64] and B [3, 64 + 32 + 32, 8] per layer, fp32.
    assert pool.device_bytes == 2 * 3 * (3 * 8 * 64 + 128 * 8) * 4
    assert model.model.layers[0].mlp.down_proj.lora_a is None
    pool.register("qv", lora_adapters["qv-r4"])
    with pytest.raises(AdapterError, match=r"adapts \['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'up_proj'\], but"):
        pool.register("all", lora_adapters["all-r8"])
    with pytest.raises(ValueError, match="LoRA targets"):
        AdapterPool(model, config, num_slots=1, max_rank=8, targets=("lm_head",))
