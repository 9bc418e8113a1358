"""Offline channel calibration for Double Sparsity: which q/k channels carry the attention scores.

For every layer and KV head, channel ``d``'s importance is the mean of ``|q[h, d] * k[d]|`` over
all causal (query, key) pairs of the calibration text and over the query heads ``h`` that share
the KV head (GQA: the label cache holds one channel set per KV head), with q and k taken after
rotary, exactly as attention sees them. The sum over pairs is exact and cheap:
``sum_{s <= t} |q_t| |k_s| = sum_t |q_t| * cumsum_t |k|``.

The result is a ranking of all ``D`` channels per (layer, KV head), saved as a small JSON file
next to the checkpoint (:data:`CHANNELS_FILE`), so the serving side can take the top 16 (1/8 of
128) or 8 (1/16) without recalibrating.

Usage: ``arena-serve calibrate --model DIR --text FILE [--max-tokens N] [--window N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from serving import kernels
from serving.attention import (
    AttentionLayer,
    DenseAttentionBackend,
    ForwardBatch,
    ForwardMode,
    rotary_and_store,
)
from serving.memory import KVPool, ReqToTokenPool
from serving.models.llama import head_dim_of

logger = logging.getLogger(__name__)

CHANNELS_FILE = "double_sparsity_channels.json"
FORMAT = "arena-double-sparsity-channels"
FORMAT_VERSION = 1


class CalibrationError(ValueError):
    """Calibration input or a channel file that cannot be used (empty text, wrong model)."""


@dataclass(frozen=True)
class ChannelRanking:
    """Channels of every (layer, KV head) ordered from most to least important."""

    ranking: torch.Tensor  # [num_layers, num_kv_heads, head_dim] int64
    num_tokens: int  # calibration tokens the ranking was measured on

    @property
    def shape(self) -> tuple[int, int, int]:
        layers, heads, dim = self.ranking.shape
        return layers, heads, dim

    def top(self, num_channels: int) -> torch.Tensor:
        """The ``num_channels`` heaviest channels, ``[num_layers, num_kv_heads, R]`` int32."""
        head_dim = self.ranking.shape[-1]
        if not 0 < num_channels <= head_dim:
            raise CalibrationError(f"heavy channels must be in 1..{head_dim}; got {num_channels}")
        return self.ranking[..., :num_channels].to(torch.int32).contiguous()

    def save(self, path: Path, model_dir: str | Path, source: str) -> None:
        """Write the ranking as JSON (a few hundred KB for an 8B model)."""
        layers, heads, dim = self.shape
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": str(model_dir),
            "num_layers": layers,
            "num_kv_heads": heads,
            "head_dim": dim,
            "calibration": {"source": source, "tokens": self.num_tokens},
            "ranking": self.ranking.tolist(),
        }
        path.write_text(json.dumps(document) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ChannelRanking:
        """Read a file written by :meth:`save`; a clear error when it is not one."""
        path = Path(path)
        if path.is_dir():
            path = path / CHANNELS_FILE
        if not path.is_file():
            raise CalibrationError(
                f"no channel file at {path}: run `arena-serve calibrate --model DIR --text FILE` first"
            )
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format") != FORMAT or document.get("version") != FORMAT_VERSION:
                raise CalibrationError(f"{path} is not a version-{FORMAT_VERSION} {FORMAT} file")
            ranking = torch.tensor(document["ranking"], dtype=torch.int64)
            expected = (document["num_layers"], document["num_kv_heads"], document["head_dim"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            if isinstance(error, CalibrationError):
                raise
            raise CalibrationError(f"{path}: unreadable channel file ({error})") from None
        if tuple(ranking.shape) != expected:
            raise CalibrationError(f"{path}: ranking shape {tuple(ranking.shape)} != header {expected}")
        return cls(ranking, int(document["calibration"]["tokens"]))

    def check_model(self, config) -> None:
        """Raise :class:`CalibrationError` unless the ranking fits the model ``config``."""
        want = (config.num_hidden_layers, config.num_key_value_heads, head_dim_of(config))
        if self.shape != want:
            raise CalibrationError(
                f"channel file is for (layers, kv heads, head dim) {self.shape}, the model has {want}"
            )


class _RecordingBackend(DenseAttentionBackend):
    """Dense prefill attention that also accumulates each layer's channel importance."""

    def __init__(self, kv_pool: KVPool, req_pool: ReqToTokenPool, importance: torch.Tensor) -> None:
        super().__init__(kv_pool, req_pool)
        self.importance = importance  # [L, Hkv, D] float64 sums over (pair, query head)

    def forward(
        self, layer: AttentionLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        k_cache, v_cache = self.kv_pool.k[layer.layer_id], self.kv_pool.v[layer.layer_id]
        q = rotary_and_store(layer, q, k, v, batch, k_cache, v_cache)  # as attention sees them
        self.importance[layer.layer_id] += causal_pair_importance(q, k_cache[batch.out_cache_loc])
        return kernels.extend_attention(
            q, k_cache, v_cache, self.req_to_token, batch.req_pool_indices, batch.seq_lens,
            batch.extend_lens, batch.q_start, layer.scale,
        )  # fmt: skip


def causal_pair_importance(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``[Hkv, D]`` float64: sum over causal pairs ``s <= t`` and the group's query heads ``h``
    of ``|q[t, h, d] * k[s, g, d]|``, for q ``[T, Hq, D]`` and k ``[T, Hkv, D]`` of one sequence."""
    tokens, num_kv_heads, head_dim = k.shape
    queries = q.double().abs().reshape(tokens, num_kv_heads, -1, head_dim).sum(2)  # [T, Hkv, D]
    causal_keys = k.double().abs().cumsum(0)  # sum over s <= t of |k_s|
    return (queries * causal_keys).sum(0)


def _windows(tokens: list[int], window: int) -> Iterator[list[int]]:
    for start in range(0, len(tokens), window):
        piece = tokens[start : start + window]
        if len(piece) > 1:
            yield piece


@torch.inference_mode()
def rank_channels(
    model, token_ids: list[int], window: int, progress: Callable[[int], None] | None = None
) -> ChannelRanking:
    """Run ``model`` (ours, any family) over ``token_ids`` in windows of ``window`` tokens and
    rank the channels of every (layer, KV head); ``progress(tokens_done)`` after each window."""
    if len(token_ids) < 2:
        raise CalibrationError("calibration needs at least 2 tokens of text")
    config = model.config
    param = next(model.parameters())
    layers, kv_heads, head_dim = config.num_hidden_layers, config.num_key_value_heads, head_dim_of(config)
    window = min(window, len(token_ids))
    pool = KVPool(layers, window + 1, kv_heads, head_dim, param.dtype, param.device)
    rows = ReqToTokenPool(1, window, param.device)
    importance = torch.zeros(layers, kv_heads, head_dim, dtype=torch.float64, device=param.device)
    backend = _RecordingBackend(pool, rows, importance)
    row = rows.alloc()
    pairs, done = 0, 0
    for piece in _windows(token_ids, window):
        count = len(piece)
        batch = _prefill_batch(piece, row, param.device)
        backend.prepare(batch)
        model(batch, backend)
        pairs += count * (count + 1) // 2
        done += count
        if progress is not None:
            progress(done)
    group = config.num_attention_heads // kv_heads
    mean = importance / (pairs * group)
    ranking = mean.argsort(dim=-1, descending=True, stable=True).cpu()
    return ChannelRanking(ranking, done)


def _prefill_batch(token_ids: list[int], row: int, device: torch.device) -> ForwardBatch:
    """One request prefilling ``token_ids`` into slots ``1..T`` of slot-table row ``row``."""
    count = len(token_ids)

    def ints(values) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.int64, device=device)

    slots = torch.arange(1, count + 1, device=device)
    return ForwardBatch(
        mode=ForwardMode.EXTEND,
        input_ids=ints(token_ids),
        positions=torch.arange(count, device=device),
        out_cache_loc=slots,
        req_pool_indices=ints([row]),
        seq_lens=ints([count]),
        extend_lens=ints([count]),
        q_start=ints([0]),
        logits_indices=ints([count - 1]),
        table_rows=ints([row] * count),
        table_cols=torch.arange(count, device=device),
        table_slots=slots,
    )


def read_calibration_tokens(tokenizer, text_files: list[Path], max_tokens: int) -> list[int]:
    """Tokenize the calibration files (concatenated), keeping the first ``max_tokens`` tokens."""
    tokens: list[int] = []
    for path in text_files:
        if not path.is_file():
            raise CalibrationError(f"calibration text {path} does not exist")
        text = path.read_text(encoding="utf-8", errors="replace")
        tokens.extend(tokenizer.encode(text, add_special_tokens=False))
        if len(tokens) >= max_tokens:
            break
    if len(tokens) < 2:
        raise CalibrationError(f"the calibration text has {len(tokens)} tokens; give more text")
    return tokens[:max_tokens]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arena-serve calibrate",
        description="Rank q/k channels per layer and KV head for Double Sparsity (saved next to the model).",
    )
    parser.add_argument("--model", required=True, type=Path, help="local Hugging Face-format model directory")
    parser.add_argument("--text", required=True, type=Path, action="append", help="calibration text (repeat)")
    parser.add_argument("--max-tokens", type=int, default=65536, help="calibration tokens to use")
    parser.add_argument("--window", type=int, default=2048, help="tokens per forward pass (causal window)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: by device)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output file (default: MODEL/{CHANNELS_FILE})"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """The ``arena-serve calibrate`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_tokens < 2 or args.window < 2:
        raise SystemExit("arena-serve calibrate: --max-tokens and --window must be at least 2")
    from rich.progress import Progress  # the CLI's bar only; the library path needs no rich
    from transformers import AutoTokenizer

    from serving.models import CheckpointError, load_model

    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        tokens = read_calibration_tokens(tokenizer, args.text, args.max_tokens)
        model = load_model(args.model, args.device, getattr(torch, dtype_name), max_positions=args.window)
    except (OSError, CheckpointError, CalibrationError) as error:
        raise SystemExit(f"arena-serve calibrate: {error}") from None
    with Progress() as bar:
        task = bar.add_task("calibrating", total=len(tokens))
        ranking = rank_channels(model, tokens, args.window, lambda done: bar.update(task, completed=done))
    out = args.out or args.model / CHANNELS_FILE
    ranking.save(out, args.model, source=", ".join(str(p) for p in args.text))
    logger.info(
        "ranked channels of %d layers x %d KV heads on %d tokens -> %s", *ranking.shape[:2], len(tokens), out
    )
