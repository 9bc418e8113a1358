"""On the GPU (bf16, Triton kernels, CUDA graphs): our engine vs transformers on larger configs.

bf16 rounding differs between any two implementations, so greedy paths may part once two
logits are nearly tied; the issue asks for identical tokens over the first 32 for most prompts
and logits within bf16 tolerance. A random model's logits are near-ties everywhere, so on random
weights the bar is vLLM's (paths part only at near-ties); the issue's own bar is asserted on the
same configs briefly trained on real text (``tests/serving/trained.py``), as confident as a real
checkpoint. The figures are printed (run with ``-s``) and saved in
``benchmarks/results/serving_gpu_tests.txt``.

Run through the device tool: ``pytest -s -m gpu tests/serving/test_gpu_models.py --confcutdir=tests/serving``
(the confcutdir keeps the database fixtures of tests/conftest.py out: the GPU machine has no
SQLAlchemy).
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen3Config

from serving.config import EngineConfig
from serving.engine import Engine
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest
from tests.serving.staggered import staggered_outputs
from tests.serving.trained import corpus_prompts, corpus_tokens, train_on_corpus

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)"
    ),
]

COMPARED_TOKENS = 32
PROMPT_LENGTHS = (7, 33, 64, 100, 129, 200, 257, 400, 12, 48, 90, 150, 180, 230, 300, 350)
ARRIVAL_STEPS = (0, 0, 0, 1, 2, 3, 5, 8, 8, 9, 9, 10, 12, 12, 15, 20)
# A random model's logits are nearly flat (std ~0.6). The LM head is scaled by LM_HEAD_SCALE
# (logit std ~5, the range of a trained model's), but the bf16 noise in the logits scales with
# it, so greedy paths still part at near-ties; what tells a rounding flip from a wrong
# computation is the near-tie check of test_bf16_greedy_tokens_match_transformers.
LM_HEAD_SCALE = 8.0
_SIZE = {"hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16, "vocab_size": 32000}
GPU_CONFIGS = {
    "llama": lambda: LlamaConfig(
        intermediate_size=2816,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
        **_SIZE,
    ),
    "qwen3": lambda: Qwen3Config(
        intermediate_size=3072,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        **_SIZE,
    ),
}


@pytest.fixture(scope="module")
def checkpoints(demo_models_dir, tmp_path_factory):
    """family -> (directory of a saved bf16 random model, the transformers model on the GPU)."""
    built = {}
    for family, make_config in GPU_CONFIGS.items():
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(make_config(), dtype=torch.bfloat16).eval()
        model.lm_head.weight.data *= LM_HEAD_SCALE
        path = tmp_path_factory.mktemp(f"gpu-{family}")
        model.save_pretrained(path)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(demo_models_dir / "demo-llama-tiny" / name, path / name)
        built[family] = (path, model)
    return built


TRAINING_STEPS = 400


@pytest.fixture(scope="module")
def trained_checkpoints(demo_models_dir, tmp_path_factory):
    """family -> (bf16 checkpoint dir, its transformers bf16 model, fp32 model, corpus prompts,
    last training loss): the GPU configs trained on the demo corpus (see tests/serving/trained.py)."""
    tokenizer_dir = demo_models_dir / "demo-llama-tiny"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokens = corpus_tokens(tokenizer)
    built = {}
    for family, make_config in GPU_CONFIGS.items():
        torch.manual_seed(0)
        config = make_config()
        config.vocab_size = len(tokenizer)
        with torch.device("cuda"):
            fp32_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        loss = train_on_corpus(fp32_model, tokens, TRAINING_STEPS)
        model = copy.deepcopy(fp32_model).to(torch.bfloat16).eval()
        path = tmp_path_factory.mktemp(f"gpu-trained-{family}")
        model.save_pretrained(path)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_dir / name, path / name)
        built[family] = (path, model, fp32_model, corpus_prompts(tokens, PROMPT_LENGTHS), loss)
    return built


def prompts(vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(100, vocab, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def make_engine(path, **overrides) -> Engine:
    settings = {"device": "cuda", "max_running": 16, "max_batch_tokens": 256, "detokenize": False}
    return Engine(EngineConfig(str(path), **(settings | overrides)))


TOP_K = 5  # alternatives compared where two greedy paths part


@torch.inference_mode()
def transformers_greedy(model, batch: list[list[int]]) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Greedy tokens of each prompt and, per step, the TOP_K best token ids."""
    tokens, tops = [], []
    for prompt in batch:
        generated = model.generate(
            torch.tensor([prompt], device="cuda"),
            max_new_tokens=COMPARED_TOKENS,
            min_new_tokens=COMPARED_TOKENS,
            do_sample=False,
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
        )
        tokens.append(generated.sequences[0, len(prompt) :].tolist())
        tops.append([scores[0].topk(TOP_K).indices.tolist() for scores in generated.scores])
    return tokens, tops


def engine_greedy_with_tops(
    engine: Engine, batch: list[list[int]]
) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Our greedy tokens (prompts joining at ARRIVAL_STEPS) and the TOP_K best ids per step."""
    params = SamplingParams(temperature=0.0, max_tokens=COMPARED_TOKENS, ignore_eos=True, logprobs=TOP_K)
    results = staggered_outputs(engine, batch, ARRIVAL_STEPS, params)
    tokens = [[t for output in outputs for t in output.new_token_ids] for outputs in results]
    tops = [[[i for i, _ in lp.top] for output in outputs for lp in output.logprobs] for outputs in results]
    return tokens, tops


def parts_at_near_tie(
    ours: list[int], theirs: list[int], our_tops: list[list[int]], their_tops: list[list[int]]
) -> bool:
    """Identical, or where the paths part each side's token is in the other's TOP_K (vLLM's
    criterion for comparing two half-precision implementations)."""
    step = matching_prefix(ours, theirs)
    if step == COMPARED_TOKENS:
        return True
    return ours[step] in their_tops[step] and theirs[step] in our_tops[step]


def matching_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("family", list(GPU_CONFIGS))
def test_bf16_greedy_tokens_match_transformers(checkpoints, family):
    """Greedy tokens vs transformers' bf16 ``generate`` and vs its fp32 ``generate``.

    bf16 logits are quantised to 8 significant bits (steps of 0.125 near 25), so wherever the
    top two logits are that close, any two bf16 implementations may pick differently and then
    diverge. The fair bar is therefore: we follow the fp32 path at least as far as transformers'
    own bf16 does, and wherever we part from transformers' bf16 path, each side's token is in the
    other's top 5 (a near-tie, not a wrong computation).
    """
    path, model = checkpoints[family]
    batch = prompts(model.config.vocab_size)
    engine = make_engine(path)
    assert engine.runner.graphs is not None and engine.overlap  # CUDA graphs, steps overlapped
    (ours, our_tops), (theirs, their_tops) = (
        engine_greedy_with_tops(engine, batch),
        transformers_greedy(model, batch),
    )
    reference_model = copy.deepcopy(model).float()
    reference, _ = transformers_greedy(reference_model, batch)
    del reference_model
    near_ties = [parts_at_near_tie(*args) for args in zip(ours, theirs, our_tops, their_tops, strict=True)]

    def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[int, list[int]]:
        prefixes = [matching_prefix(x, y) for x, y in zip(a, b, strict=True)]
        return sum(p == COMPARED_TOKENS for p in prefixes), prefixes

    ours_hf, ours_hf_prefixes = agreement(ours, theirs)
    ours_fp32, ours_fp32_prefixes = agreement(ours, reference)
    hf_fp32, hf_fp32_prefixes = agreement(theirs, reference)
    print(
        f"\n[{family}] identical first {COMPARED_TOKENS} greedy tokens over {len(batch)} prompts: "
        f"ours vs transformers bf16 {ours_hf} (prefixes {ours_hf_prefixes}); ours vs transformers fp32 "
        f"{ours_fp32} (prefixes {ours_fp32_prefixes}); transformers bf16 vs its fp32 {hf_fp32} "
        f"(prefixes {hf_fp32_prefixes}); ours vs transformers bf16 identical or parting where each "
        f"side's token is in the other's top {TOP_K}: {sum(near_ties)}/{len(batch)}"
    )
    assert all(near_ties), "a path parted from transformers' where the other's choice was not a near-tie"
    assert sum(ours_fp32_prefixes) >= 0.7 * sum(hf_fp32_prefixes)
    assert ours_fp32 >= hf_fp32 - 2


@pytest.mark.parametrize("family", list(GPU_CONFIGS))
def test_bf16_greedy_tokens_match_transformers_on_trained_weights(trained_checkpoints, family):
    """The issue's bar, on weights as confident as a real checkpoint's: our first 32 greedy
    tokens equal transformers' bf16 ones on most prompts (corpus text, staggered arrivals, CUDA
    graphs, overlapped steps), and wherever they part it is at a near-tie."""
    path, model, fp32_model, batch, loss = trained_checkpoints[family]
    engine = make_engine(path)
    (ours, our_tops), (theirs, their_tops) = (
        engine_greedy_with_tops(engine, batch),
        transformers_greedy(model, batch),
    )
    reference, _ = transformers_greedy(fp32_model, batch)
    ours_hf = [matching_prefix(a, b) for a, b in zip(ours, theirs, strict=True)]
    hf_fp32 = [matching_prefix(a, b) for a, b in zip(theirs, reference, strict=True)]
    near_ties = [parts_at_near_tie(*args) for args in zip(ours, theirs, our_tops, their_tops, strict=True)]
    identical = sum(p == COMPARED_TOKENS for p in ours_hf)
    print(
        f"\n[{family}, trained {TRAINING_STEPS} steps, last loss {loss:.2f}] identical first {COMPARED_TOKENS} "
        f"greedy tokens over {len(batch)} corpus prompts: ours vs transformers bf16 {identical} (prefixes "
        f"{ours_hf}); transformers bf16 vs its fp32 {sum(p == COMPARED_TOKENS for p in hf_fp32)} (prefixes "
        f"{hf_fp32}); parting only at near-ties: {sum(near_ties)}/{len(batch)}"
    )
    assert identical > len(batch) // 2
    assert all(near_ties)


def relative_error(values: torch.Tensor, reference: torch.Tensor) -> list[float]:
    return ((values - reference).norm(dim=-1) / reference.norm(dim=-1)).tolist()


@pytest.mark.parametrize("family", list(GPU_CONFIGS))
@torch.inference_mode()
def test_bf16_prefill_logits_within_tolerance(checkpoints, family):
    """Our bf16 logits are as close to an fp32 reference as transformers' own bf16 logits."""
    path, model = checkpoints[family]
    batch = prompts(model.config.vocab_size)
    engine = make_engine(path, max_batch_tokens=4096)
    for index, prompt in enumerate(batch):
        engine.add_request(GenerationRequest(str(index), prompt, SamplingParams(max_tokens=1)))
    scheduled = engine.scheduler.schedule()
    assert scheduled is not None and len(scheduled.sequences) == len(batch)
    ours = engine.runner.forward(scheduled)
    theirs = torch.stack([model(torch.tensor([p], device="cuda")).logits[0, -1].float() for p in batch])
    reference_model = copy.deepcopy(model).float()
    reference = torch.stack([reference_model(torch.tensor([p], device="cuda")).logits[0, -1] for p in batch])
    del reference_model
    ours_error, theirs_error = relative_error(ours, reference), relative_error(theirs, reference)
    top1 = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    print(
        f"\n[{family}] last-token logits, relative L2 error vs fp32: ours (bf16) mean "
        f"{sum(ours_error) / len(batch):.4f} max {max(ours_error):.4f}; transformers (bf16) mean "
        f"{sum(theirs_error) / len(batch):.4f} max {max(theirs_error):.4f}; ours vs transformers bf16 "
        f"max {max(relative_error(ours, theirs)):.4f}; top-1 agreement {top1:.2f}"
    )
    assert max(ours_error) <= 2 * max(theirs_error) + 1e-3
    assert top1 >= 0.75


@pytest.mark.parametrize("family", list(GPU_CONFIGS))
def test_overlapped_decode_matches_plain_decode(checkpoints, family):
    """Overlap (on by default on CUDA) launches each decode step before the host has read the
    previous step's tokens, which reach the CUDA graph by a device copy. One prompt at a time
    (the same batch shapes either way), tokens and logprobs must be identical with it off."""
    path, model = checkpoints[family]
    batch = prompts(model.config.vocab_size)[:4]
    params = SamplingParams(temperature=0.0, max_tokens=COMPARED_TOKENS, ignore_eos=True, logprobs=TOP_K)
    runs = {}
    for overlap in (False, True):
        engine = make_engine(path, overlap=overlap)
        runs[overlap] = [
            [
                (token, lp.logprob, lp.top)
                for output in staggered_outputs(engine, [prompt], (0,), params)[0]
                for token, lp in zip(output.new_token_ids, output.logprobs, strict=True)
            ]
            for prompt in batch
        ]
        del engine
    assert runs[False] == runs[True]


@pytest.mark.parametrize("family", list(GPU_CONFIGS))
def test_prefix_cache_keeps_greedy_tokens_on_trained_weights(trained_checkpoints, family):
    """The radix cache on vs off (bf16, CUDA graphs, overlap): prompts sharing a 150-token
    prefix of corpus text, staggered, then the same prompts again (all cached). In bf16 a
    prefix computed in another batch shape may round differently, so the bar is the issue's:
    identical first 32 tokens on most prompts, and parting only at near-ties."""
    path, _, _, batch, _ = trained_checkpoints[family]
    shared = batch[7][:150]
    sharing = [shared + prompt[: 10 + 5 * i] for i, prompt in enumerate(batch)]
    runs = {}
    for cache in (False, True):
        engine = make_engine(path, prefix_cache=cache)
        runs[cache] = engine_greedy_with_tops(engine, sharing)
        if cache:
            again = engine_greedy_with_tops(engine, sharing)
            assert engine.stats().cached_tokens >= 150 * len(sharing)  # the second run at least
        del engine
    (off, off_tops), (on, on_tops) = runs[False], runs[True]
    identical = sum(matching_prefix(a, b) == COMPARED_TOKENS for a, b in zip(on, off, strict=True))
    repeated = sum(matching_prefix(a, b) == COMPARED_TOKENS for a, b in zip(again[0], off, strict=True))
    print(f"\n[{family}] prefix cache on vs off: identical first {COMPARED_TOKENS} tokens on "
          f"{identical}/{len(sharing)} prompts, {repeated}/{len(sharing)} when all cached")  # fmt: skip
    assert identical > len(sharing) // 2 and repeated > len(sharing) // 2
    assert all(parts_at_near_tie(*args) for args in zip(on, off, on_tops, off_tops, strict=True))
    assert all(parts_at_near_tie(*args) for args in zip(again[0], off, again[1], off_tops, strict=True))
