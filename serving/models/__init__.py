"""Model families and loading of Hugging Face-format checkpoints from a local directory.

``load_model(path, device, dtype)`` reads ``config.json`` with transformers, picks our module
class from the config's ``architectures``, builds it without initialising memory, and copies the
safetensors weights in by name (fused q|k|v and gate|up filled from their HF parts by the
parameters' own weight loaders). Under tensor parallelism (``tp``) each rank builds only its
shard and reads only its rows or columns of each tensor from the files
(:class:`~serving.layers.checkpoint_slice.CheckpointSlice`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from serving.layers.checkpoint_slice import CheckpointSlice, materialize
from serving.layers.linear import LinearBase, ShardError
from serving.layers.vocab import VocabShard
from serving.models.llama import LlamaForCausalLM
from serving.models.qwen import Qwen2ForCausalLM, Qwen3ForCausalLM
from serving.parallel import SINGLE, TensorParallel

logger = logging.getLogger(__name__)

ARCHITECTURES: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be served (missing files, unknown architecture, bad weights)."""


def load_config(path: str | Path) -> PretrainedConfig:
    """Read ``config.json`` of a local checkpoint directory."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json (expected a Hugging Face-format model directory)")
    return AutoConfig.from_pretrained(path, local_files_only=True)


MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def model_class(config: PretrainedConfig) -> type[LlamaForCausalLM]:
    """Our module class for the config's architecture (or, when it names none, its model type)."""
    names = list(getattr(config, "architectures", None) or [])
    names.append(MODEL_TYPES.get(config.model_type, ""))
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise CheckpointError(
        f"unsupported architectures {config.architectures} (model type {config.model_type!r}); "
        f"supported: {sorted(ARCHITECTURES)}"
    )


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    config: PretrainedConfig,
    device: torch.device | str,
    dtype: torch.dtype,
    max_positions: int,
    tp: TensorParallel = SINGLE,
) -> LlamaForCausalLM:
    """Construct the module (this rank's shard of it) on ``device`` with uninitialised weights of ``dtype``."""
    cls = model_class(config)
    with _default_dtype(dtype), torch.device("meta"):
        model = cls(config, tp)
    model = model.to_empty(device=device)
    if getattr(config, "tie_word_embeddings", False):
        model.lm_head.weight = model.model.embed_tokens.weight
    model.init_rotary(max_positions, device)
    return model.eval()


@torch.inference_mode()
def init_dummy_weights(model: LlamaForCausalLM, seed: int = 0) -> None:
    """Random weights instead of a checkpoint's: normal with std 0.02, norm weights 1 (padding
    rows of a vocabulary shard zero), so activations stay in a realistic range."""
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02)
    for module in model.modules():
        if isinstance(module, VocabShard):
            module.weight[module.real_rows :].zero_()


def load_weights(model: LlamaForCausalLM, path: str | Path) -> None:
    """Copy every tensor of ``path/*.safetensors`` into the parameter of the same (or fused) name,
    reading from each tensor only the part this rank holds."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} has no *.safetensors files")

    def tensors() -> Iterator[tuple[str, CheckpointSlice]]:
        for file in files:
            with safe_open(file, framework="pt") as reader:
                for name in reader.keys():  # noqa: SIM118 - safe_open is not a mapping
                    yield name, CheckpointSlice.open(reader, name)

    load_named_tensors(model, tensors(), source=str(path))


def load_named_tensors(
    model: LlamaForCausalLM, tensors: Iterable[tuple[str, torch.Tensor | CheckpointSlice]], source: str
) -> None:
    """Copy HF-named tensors (a checkpoint, or a transformers model's ``named_parameters()``)
    into our parameters; raise :class:`CheckpointError` on unknown, misshapen or missing ones."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for name, tensor in tensors:
        if "rotary_emb" in name:
            continue
        loaded.add(_copy_tensor(model, params, name, tensor, source))
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = {n for n in params if n not in loaded and not (tied and n == "lm_head.weight")}
    if missing:
        raise CheckpointError(f"{source}: weights missing from the checkpoint: {sorted(missing)[:8]}")


def _copy_tensor(
    model, params: dict[str, torch.nn.Parameter], name: str, tensor: torch.Tensor | CheckpointSlice, source: str
) -> str:
    """Copy one checkpoint tensor into its parameter (through its layer's ``weight_loader``
    for projections, embedding and LM head: fused and sharded); return the parameter name it filled."""
    param_name, shard_id = model.checkpoint_target(name)
    if param_name not in params:
        raise CheckpointError(f"{source}: unexpected weight {name!r} for {type(model).__name__}")
    param = params[param_name]
    owner = model.get_submodule(param_name.rpartition(".")[0])
    if isinstance(owner, LinearBase | VocabShard):
        try:
            owner.weight_loader(param, tensor, shard_id)
        except ShardError as error:
            raise CheckpointError(f"{source}: {name}: {error}") from error
        return param_name
    if param.shape != tensor.shape:
        raise CheckpointError(
            f"{source}: {name} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}"
        )
    param.data.copy_(materialize(tensor))
    return param_name


def load_model(
    path: str | Path,
    device: torch.device | str,
    dtype: torch.dtype,
    max_positions: int | None = None,
    config=None,
    tp: TensorParallel = SINGLE,
) -> LlamaForCausalLM:
    """Load a local HF checkpoint directory into our modules on ``device`` in ``dtype``
    (``config``: its already-read config.json, else read here; ``tp``: this rank's shard only)."""
    config = config or load_config(path)
    positions = max_positions or config.max_position_embeddings
    model = build_model(config, device, dtype, positions, tp)
    load_weights(model, path)
    logger.info("loaded %s (%s) on %s as %s", path, type(model).__name__, device, dtype)
    return model
