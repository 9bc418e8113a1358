"""Double Sparsity attention backend: label cache + top-k tokens + exact attention over them.

Prefill (extend) attention is dense. Every forward also copies the heavy channels of the new
keys (rotary applied) into the label cache (``labels[L, S, Hkv, R]``, a side table of the KV
pool written at the same slots as K/V), so the labels of every cached token exist when decode
needs them. A decode step whose longest request is below ``dense_below`` tokens runs the dense
kernel (greedy output is then exactly dense attention's); above it, per layer:

1. label scores of every cached position from q's heavy channels (``kernels.label_scores``);
2. the ``K`` best positions per request and KV head (``kernels.select_tokens``), ``K`` = sink +
   recent + heavy tokens, heavy = ``max(min_tokens, token_fraction * longest)``;
3. exact attention over those positions only (``kernels.gathered_decode_attention``).

Requests that opted out (``SamplingParams.sparse_attention = False``) get dense attention in
the same step. The step's longest context and the opted-out rows are host numbers, taken in
:meth:`begin_step`; ``K`` changes with the context, so decode steps are not CUDA-graph captured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
from serving.parallel import SINGLE, TensorParallel
from serving.sparse.calibration import ChannelRanking
from serving.sparse.settings import DoubleSparsityConfig

if TYPE_CHECKING:
    from serving.scheduler import ScheduledBatch

LABELS_TABLE = "double_sparsity_labels"


@dataclass
class _StepPlan:
    longest: int
    dense_rows: torch.Tensor | None  # batch rows attending densely (opted out), None if none


class DoubleSparsityBackend(DenseAttentionBackend):
    """Paged attention with Double Sparsity at decode; channels ``[L, Hkv, R]`` from calibration."""

    supports_cuda_graphs = False

    def __init__(
        self,
        kv_pool: KVPool,
        req_pool: ReqToTokenPool,
        model_config: object = None,
        options: DoubleSparsityConfig | None = None,
        tp: TensorParallel = SINGLE,
        channels: torch.Tensor | None = None,
    ) -> None:
        super().__init__(kv_pool, req_pool, model_config, options, tp)
        self.config = options or DoubleSparsityConfig()
        if channels is None:
            channels = self._load_channels(model_config)
        if tp.enabled:  # this rank's KV heads of the model's ranking
            heads = channels.shape[1] // tp.size
            channels = channels[:, tp.rank * heads : (tp.rank + 1) * heads]
        num_layers, num_kv_heads, num_channels = channels.shape
        k0 = kv_pool.k[0]
        if (num_layers, num_kv_heads) != (len(kv_pool.k), k0.shape[1]) or num_channels > k0.shape[2]:
            raise ValueError(
                f"channels {tuple(channels.shape)} do not fit the KV pool "
                f"({len(kv_pool.k)} layers, {k0.shape[1]} KV heads, head dim {k0.shape[2]})"
            )
        self.channels = channels.to(device=kv_pool.device, dtype=torch.int32).contiguous()
        self.labels = kv_pool.add_side_table(LABELS_TABLE, (num_kv_heads, num_channels), k0.dtype)
        self._plan = _StepPlan(0, None)

    def _load_channels(self, model_config: object) -> torch.Tensor:
        if self.config.channels_path is None:
            raise ValueError("Double Sparsity needs a channel file: run `arena-serve calibrate` first")
        ranking = ChannelRanking.load(Path(self.config.channels_path))
        if model_config is not None:
            ranking.check_model(model_config)
        return ranking.top(self.config.heavy_channels)

    def begin_step(self, batch: ScheduledBatch) -> tuple[int, list[int]]:
        """Take the step's longest context and its opted-out rows from the host; return them."""
        dense = [i for i, seq in enumerate(batch.sequences) if not seq.params.sparse_attention]
        longest = max((seq.num_kv for seq in batch.sequences), default=0)
        self.plan(longest, dense)
        return longest, dense

    def follow_step(self, plan: object) -> None:
        """A worker rank: the driver's :meth:`begin_step` plan."""
        longest, dense = plan  # type: ignore[misc]
        self.plan(longest, dense)

    def plan(self, longest: int, dense_rows: list[int]) -> None:
        """Set the next step's longest KV length and the batch rows that attend densely."""
        rows = torch.tensor(dense_rows, dtype=torch.int64).to(self.kv_pool.device) if dense_rows else None
        self._plan = _StepPlan(longest, rows)

    def forward(
        self, layer: AttentionLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """Rotary + K/V store + labels of the new keys; dense (extend, short) or sparse attention."""
        layer_id = layer.layer_id
        k_cache, v_cache = self.kv_pool.k[layer_id], self.kv_pool.v[layer_id]
        q = rotary_and_store(layer, q, k, v, batch, k_cache, v_cache)
        labels, channels = self.labels[layer_id], self.channels[layer_id]
        kernels.store_labels(k_cache, labels, channels, batch.out_cache_loc)
        plan = self._plan
        if batch.mode is ForwardMode.EXTEND:
            return self._extend(q, k_cache, v_cache, batch, layer.scale)
        if not self.config.is_sparse(plan.longest):
            return kernels.decode_attention(
                q, k_cache, v_cache, self.req_to_token, batch.req_pool_indices, batch.seq_lens, layer.scale
            )
        scores = kernels.label_scores(
            q, labels, channels, self.req_to_token, batch.req_pool_indices, batch.seq_lens,
            plan.longest, self.config.sink, self.config.recent,
        )  # fmt: skip
        positions = kernels.select_tokens(scores, self.config.selected_tokens(plan.longest))
        out = kernels.gathered_decode_attention(
            q,
            k_cache,
            v_cache,
            self.req_to_token,
            batch.req_pool_indices,
            batch.seq_lens,
            positions,
            layer.scale,
        )
        if plan.dense_rows is not None:  # requests that opted out: dense, in the same step
            rows = plan.dense_rows
            out[rows] = kernels.decode_attention(
                q[rows], k_cache, v_cache, self.req_to_token, batch.req_pool_indices[rows],
                batch.seq_lens[rows], layer.scale,
            )  # fmt: skip
        return out

    def _extend(self, q, k_cache, v_cache, batch: ForwardBatch, scale: float) -> torch.Tensor:
        return kernels.extend_attention(
            q, k_cache, v_cache, self.req_to_token, batch.req_pool_indices, batch.seq_lens,
            batch.extend_lens, batch.q_start, scale,
        )  # fmt: skip
