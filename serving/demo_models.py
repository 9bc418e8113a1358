"""Tiny random-weight demo models in Hugging Face format, built offline in a few seconds.

``python -m serving.demo_models --out data/demo_models`` writes ``demo-llama-tiny``,
``demo-qwen-tiny`` and ``demo-mistral-tiny``: real architectures (Llama 3, Qwen3 with q/k
norms, Mistral with one KV head) at hidden size 128, with a byte-level BPE
tokenizer trained here on Python's own standard-library sources and a chat template in each
family's style. Their text is nonsense; the pipeline around them is real.

Random weights would almost never produce end-of-sequence, so answers would always run to
``max_tokens``. Each model therefore gets one constant "bias" feature: dimension 0 of every
token embedding is a constant and no layer writes to it, so after the final norm it is always
positive; the EOS rows of the LM head read it with a positive weight, the other special tokens
(chat markup) with a large negative one so that answers never contain them. Its weight is calibrated (bisection on
teacher-forced random text) so that EOS has about a 1-in-``MEAN_ANSWER_TOKENS`` chance per
token when sampling at temperature 1. Everything is seeded: the same Python version builds the
same files.
"""

from __future__ import annotations

import argparse
import json
import logging
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
)

logger = logging.getLogger(__name__)

VOCAB_SIZE = 2048
# Context window: room for the arena's longest message (8,000 characters, at most one token per
# byte) plus a few turns and answers. ``arena demo`` serves them with ``--max-context`` this size.
DEMO_CONTEXT = 16384
MEAN_ANSWER_TOKENS = 48
BIAS_FEATURE_VALUE = 0.5
SUPPRESSED_WEIGHT = -50.0
LOGIT_STD = 2.0
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
]
# Standard-library modules present in every CPython 3.x; their source is the tokenizer's corpus.
CORPUS_FILES = [
    "textwrap.py",
    "argparse.py",
    "difflib.py",
    "string.py",
    "dataclasses.py",
    "functools.py",
    "shutil.py",
    "heapq.py",
    "bisect.py",
    "fractions.py",
    "statistics.py",
    "calendar.py",
    "json/decoder.py",
    "json/encoder.py",
]

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class DemoSpec:
    """One demo model: name, architecture config, tokenizer roles and chat template."""

    name: str
    config_cls: type[PretrainedConfig]
    config_kwargs: dict
    bos_token: str
    eos_tokens: tuple[str, ...]  # first one is the tokenizer's eos_token
    chat_template: str
    seed: int


DEMO_SPECS = [
    DemoSpec(
        "demo-llama-tiny",
        LlamaConfig,
        {
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 344,
            "rope_theta": 500000.0,
        },
        "<|begin_of_text|>",
        ("<|eot_id|>", "<|end_of_text|>"),
        LLAMA3_TEMPLATE,
        seed=1,
    ),
    DemoSpec(
        "demo-qwen-tiny",
        Qwen3Config,
        {
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "intermediate_size": 384,
            "rope_theta": 1000000.0,
        },
        "<|im_start|>",
        ("<|im_end|>",),
        CHATML_TEMPLATE,
        seed=2,
    ),
    DemoSpec(
        "demo-mistral-tiny",
        MistralConfig,
        {
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "intermediate_size": 320,
            "sliding_window": None,
        },
        "<s>",
        ("</s>",),
        MISTRAL_TEMPLATE,
        seed=3,
    ),
]
DEMO_NAMES = [spec.name for spec in DEMO_SPECS]


def corpus_texts() -> list[str]:
    """The tokenizer's training text: a fixed list of standard-library source files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [
        (stdlib / name).read_text(encoding="utf-8") for name in CORPUS_FILES if (stdlib / name).is_file()
    ]
    if not texts:
        raise RuntimeError(f"no corpus files found under {stdlib}")
    return texts


def train_tokenizer(texts: list[str]) -> Tokenizer:
    """Byte-level BPE with every demo family's special tokens (the same vocabulary for all)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _make_tokenizer(base: Tokenizer, spec: DemoSpec) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(base.to_str()),
        bos_token=spec.bos_token,
        eos_token=spec.eos_tokens[0],
        pad_token=spec.eos_tokens[0],
        chat_template=spec.chat_template,
        model_max_length=DEMO_CONTEXT,
    )


def _make_config(spec: DemoSpec, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in spec.eos_tokens]
    return spec.config_cls(
        vocab_size=len(tokenizer),
        hidden_size=128,
        max_position_embeddings=DEMO_CONTEXT,
        bos_token_id=tokenizer.convert_tokens_to_ids(spec.bos_token),
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        pad_token_id=eos_ids[0],
        initializer_range=0.05,
        **spec.config_kwargs,
    )


def _add_bias_feature(model: torch.nn.Module, suppressed_ids: list[int]) -> None:
    """Make embedding dimension 0 a constant that no layer overwrites (see module docstring), and
    use it to keep the special tokens other than EOS (chat markup) out of the answers."""
    inner = model.model
    inner.embed_tokens.weight.data[:, 0] = BIAS_FEATURE_VALUE
    for layer in inner.layers:
        layer.self_attn.o_proj.weight.data[0, :] = 0.0
        layer.mlp.down_proj.weight.data[0, :] = 0.0
    model.lm_head.weight.data[:, 0] = 0.0
    model.lm_head.weight.data[suppressed_ids, 0] = SUPPRESSED_WEIGHT


def _set_eos_weight(model: torch.nn.Module, eos_ids: list[int], weight: float) -> None:
    """Give the EOS rows of the LM head ``weight`` on the bias feature."""
    model.lm_head.weight.data[eos_ids, 0] = weight


@torch.no_grad()
def _shape_logits(model: torch.nn.Module, sample: torch.Tensor) -> None:
    """Make the random LM head give varied, moderately peaked distributions.

    Hidden states of a random model share a common direction, so a few tokens aligned with it
    would win everywhere (``lineslineslines``): that direction is projected out of the head.
    The remaining logits are scaled to a spread of LOGIT_STD; a flat distribution would make
    any boosted EOS the greedy choice at the very first step.
    """
    hidden = model.model(input_ids=sample).last_hidden_state.float().reshape(-1, model.config.hidden_size)
    common = hidden[:, 1:].mean(dim=0)
    common /= common.norm()
    head = model.lm_head.weight.data
    head[:, 1:] -= (head[:, 1:].float() @ common)[:, None] * common[None, :]
    ordinary = model(input_ids=sample).logits.float()[..., len(SPECIAL_TOKENS) :]  # specials come first
    head[:, 1:] *= LOGIT_STD / ordinary.std(dim=-1).mean().item()


@torch.no_grad()
def _mean_eos_probability(model: torch.nn.Module, eos_ids: list[int], sample: torch.Tensor) -> float:
    probs = torch.softmax(model(input_ids=sample).logits.float(), dim=-1)
    return probs[..., eos_ids].sum(dim=-1).mean().item()


def _calibrate_eos(model: torch.nn.Module, eos_ids: list[int], sample: torch.Tensor) -> float:
    """Bisect the EOS weight so the mean EOS probability is about 1 / MEAN_ANSWER_TOKENS."""
    target = 1.0 / MEAN_ANSWER_TOKENS
    low, high = 0.0, 64.0
    for _ in range(20):
        middle = (low + high) / 2
        _set_eos_weight(model, eos_ids, middle)
        if _mean_eos_probability(model, eos_ids, sample) < target:
            low = middle
        else:
            high = middle
    _set_eos_weight(model, eos_ids, high)
    return _mean_eos_probability(model, eos_ids, sample)


def build_demo_model(spec: DemoSpec, base_tokenizer: Tokenizer, out_dir: Path) -> Path:
    """Write one demo model (config, safetensors, tokenizer, generation config) to ``out_dir/name``."""
    target = out_dir / spec.name
    tokenizer = _make_tokenizer(base_tokenizer, spec)
    config = _make_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in spec.eos_tokens]
    special_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    _add_bias_feature(model, [i for i in special_ids if i not in eos_ids])
    generator = torch.Generator().manual_seed(spec.seed)
    sample = torch.randint(len(SPECIAL_TOKENS), config.vocab_size, (4, 64), generator=generator)
    _shape_logits(model, sample)
    eos_probability = _calibrate_eos(model, eos_ids, sample)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos_ids, pad_token_id=eos_ids[0]
    )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    logger.info("built %s (mean EOS probability %.3f) in %s", spec.name, eos_probability, target)
    return target


def build_demo_models(out_dir: str | Path, names: list[str] | None = None, force: bool = False) -> list[Path]:
    """Build the requested demo models (all by default); existing ones are kept unless ``force``."""
    out_dir = Path(out_dir)
    specs = [s for s in DEMO_SPECS if names is None or s.name in names]
    unknown = set(names or []) - {s.name for s in specs}
    if unknown:
        raise ValueError(f"unknown demo models {sorted(unknown)}; known: {DEMO_NAMES}")
    todo = [s for s in specs if force or not _is_current(out_dir / s.name)]
    if todo:
        base_tokenizer = train_tokenizer(corpus_texts())
        for spec in todo:
            build_demo_model(spec, base_tokenizer, out_dir)
    return [out_dir / s.name for s in specs]


def _is_current(model_dir: Path) -> bool:
    """Built, and with today's context window (older builds had 2,048 tokens)."""
    config = model_dir / "config.json"
    if not (model_dir / "model.safetensors").is_file() or not config.is_file():
        return False
    return bool(json.loads(config.read_text()).get("max_position_embeddings", 0) >= DEMO_CONTEXT)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m serving.demo_models --out data/demo_models [--force] [--name NAME ...]``."""
    parser = argparse.ArgumentParser(description="Build tiny random-weight demo models (HF format).")
    parser.add_argument("--out", default="data/demo_models", help="output directory")
    parser.add_argument("--name", action="append", choices=DEMO_NAMES, help="build only this model")
    parser.add_argument("--force", action="store_true", help="rebuild models that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in build_demo_models(args.out, args.name, args.force):
        print(path)


if __name__ == "__main__":
    main()
