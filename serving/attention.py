"""The attention-backend protocol, the per-step batch it reads, and the dense backend.

A model never touches KV memory. Each attention layer projects q/k/v and calls
``backend.forward(layer, q, k, v, batch)``; the backend applies rotary (and Qwen3's q/k norms)
to q and k, stores k and v at the new tokens' slots, and attends over each request's KV. The
backend is thus the only code that reads or writes K/V, the slot table ``req_to_token`` and
any per-slot side table, so another attention scheme is another backend and nothing else:

* **Double Sparsity** stores a label cache (a few channels of each key) at the same slots as
  K/V, in ``forward``, and attends over the top-k tokens its labels select.
* **H2O** keeps accumulated attention mass per slot and evicts low-mass slots from a request's
  row: the request's KV length (``seq_lens``) then falls below its position (``positions``),
  which the batch keeps apart. (It must also drop the slots from ``Sequence.kv_slots`` and free
  them to the pool; such sequences are never inserted into the prefix cache.)

The protocol (:class:`AttentionBackend`):

``forward(layer, q, k, v, batch)``
    q ``[T, Hq, D]``, k/v ``[T, Hkv, D]`` of the step's new tokens, before rotary; returns the
    attention output ``[T, Hq, D]``. ``layer`` (:class:`AttentionLayer`) gives the layer index,
    softmax scale and rotary inputs. The dense backend keeps rotary, q/k norm and the KV write
    in one fused kernel (:func:`rotary_and_store`), which a sparse backend can reuse.
``prepare(batch)``
    Per-step metadata, called once before the model's layers run. It must be device work on
    the batch's tensors only: for decode batches on CUDA it is captured into the decode graph
    and replayed with the graph's static inputs. The dense backend records the step's slots in
    ``req_to_token`` here.
``begin_step(batch)``
    Host-side, once per step before ``prepare`` (graph replays included), with the
    :class:`~serving.scheduler.ScheduledBatch`: what a backend decides from host numbers (the
    step's longest context, which requests opted out of sparse attention) without reading the
    device. It returns that decision as a small picklable plan (None: nothing decided), which a
    tensor-parallel driver sends to its workers, whose backends take it in ``follow_step(plan)``.
    The dense backend needs nothing. ``supports_cuda_graphs`` / ``supports_overlap`` /
    ``supports_prefix_cache`` say whether the runner may capture its decode steps, the engine
    may schedule ahead, and the engine may share KV through the prefix cache (not when the
    backend evicts entries: the cache owns a running sequence's prefilled slots).
``eviction_plan(batch)`` / ``evict(row, kv_len, length, protected)``
    Host-side, after a step is queued: ``(sequence, evict arguments)`` for each sequence of the
    step whose KV the backend will shrink (H2O), then ``evict`` compacts one request row on the
    device and returns the kept entry indices (under tensor parallelism every rank evicts the
    same entries: the ranks' attention mass is summed first). The engine then drops the other
    entries from ``Sequence.kv_slots`` and frees their slots (``ModelRunner.evictions``). Dense:
    no plan.
``init_graph_state(max_batch)`` / ``prepare_replay(batch, size)``
    CUDA-graph hooks: allocate any static buffers the backend's captured work reads, once
    before capture; fill them on the host side before each replay of a graph of ``size``
    entries (``batch`` is the :class:`~serving.scheduler.ScheduledBatch`). The dense backend
    needs neither.

The model runner picks the backend class by name from :data:`ATTENTION_BACKENDS`
(``EngineConfig.attention_backend``: ``dense``, ``double-sparsity``, ``h2o``) and builds it with
``(kv_pool, req_pool, model_config, options, tp)``, the options being the backend's settings
(``EngineConfig.sparse_options()``) and ``tp`` the rank whose KV heads the pool holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

import torch

from serving import kernels
from serving.lora.batch import LoraBatch
from serving.memory import KVPool, ReqToTokenPool
from serving.parallel import SINGLE, TensorParallel

if TYPE_CHECKING:
    from serving.scheduler import ScheduledBatch
    from serving.sequence import Sequence


class ForwardMode(Enum):
    """Decode: exactly one new token per request, whose slot goes at the end of its row.
    Extend: any number (prefill, chunks, decodes), with explicit slot-table entries."""

    EXTEND = "extend"
    DECODE = "decode"


@dataclass
class ForwardBatch:
    """One model step over ``T`` new tokens belonging to ``B`` requests.

    Tensors live on the model's device. Request ``b``'s new tokens are rows
    ``q_start[b] : q_start[b] + extend_lens[b]``; ``positions`` are their sequence positions
    (RoPE), ``out_cache_loc`` their KV slots. ``seq_lens[b]`` counts request ``b``'s KV entries
    after this step (what attention reads through row ``req_pool_indices[b]`` of the slot table;
    the new tokens are its last ``extend_lens[b]`` entries). ``logits_indices`` picks the rows
    whose next-token logits are needed (the last new token of each request that samples).

    In extend mode, ``table_rows/table_cols/table_slots`` list the slot-table entries to record
    before attention: the new tokens', and after a prefix-cache hit the shared prefix's too. In
    decode mode they are None: each new token goes at column ``seq_lens[b] - 1``.
    """

    mode: ForwardMode
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    out_cache_loc: torch.Tensor  # [T] int64, KV slot of each new token
    req_pool_indices: torch.Tensor  # [B] int64
    seq_lens: torch.Tensor  # [B] int64
    extend_lens: torch.Tensor  # [B] int64
    q_start: torch.Tensor  # [B] int64
    logits_indices: torch.Tensor  # [N] int64
    table_rows: torch.Tensor | None = None  # [W] int64
    table_cols: torch.Tensor | None = None  # [W] int64
    table_slots: torch.Tensor | None = None  # [W] int64
    lora: LoraBatch | None = None  # adapter slot of each row; None: no adapters in this step


class AttentionLayer(Protocol):
    """What a backend needs to know about the layer calling it (``LlamaAttention`` is one)."""

    layer_id: int
    scale: float
    cos_sin_cache: torch.Tensor  # fp32 [max_positions, head_dim]: cos | sin
    is_neox: bool

    def qk_norm(self) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        """Per-head q/k RMSNorm weights and eps applied before rotary (Qwen3), or Nones."""
        ...


class AttentionBackend(Protocol):
    """The single owner of K/V reads and writes (see the module docstring)."""

    kv_pool: KVPool
    supports_cuda_graphs: bool
    supports_overlap: bool
    supports_prefix_cache: bool

    def begin_step(self, batch: ScheduledBatch) -> object: ...

    def follow_step(self, plan: object) -> None: ...

    def prepare(self, batch: ForwardBatch) -> None: ...

    def forward(
        self, layer: AttentionLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor: ...

    def init_graph_state(self, max_batch: int) -> None: ...

    def prepare_replay(self, batch: ScheduledBatch, size: int) -> None: ...

    def eviction_plan(self, batch: ScheduledBatch) -> list[tuple[Sequence, tuple[int, int, int, int]]]: ...

    def evict(self, row: int, kv_len: int, length: int, protected: int = 0) -> list[int]: ...


def rotary_and_store(
    layer: AttentionLayer,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: ForwardBatch,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """(q/k norm,) rotary on q and k, k and v written at ``batch.out_cache_loc``: one launch.
    Returns the rotated q."""
    return kernels.rotary_store_kv(
        q, k, v, batch.positions, layer.cos_sin_cache, k_cache, v_cache, batch.out_cache_loc,
        layer.is_neox, *layer.qk_norm(),
    )  # fmt: skip


class DenseAttentionBackend:
    """Full paged attention over a :class:`KVPool` through the ``req_to_token`` slot table."""

    supports_cuda_graphs = True
    supports_overlap = True
    supports_prefix_cache = True

    def __init__(
        self,
        kv_pool: KVPool,
        req_pool: ReqToTokenPool,
        model_config: object = None,
        options: object = None,
        tp: TensorParallel = SINGLE,
    ) -> None:
        self.kv_pool = kv_pool
        self.req_to_token = req_pool.req_to_token
        self.tp = tp

    def begin_step(self, batch: ScheduledBatch) -> object:
        return None  # dense attention decides nothing on the host

    def follow_step(self, plan: object) -> None:
        return None

    def prepare(self, batch: ForwardBatch) -> None:
        """Record the step's slots in the slot table (inside the decode graph on CUDA)."""
        if batch.mode is ForwardMode.DECODE:
            self.req_to_token[batch.req_pool_indices, batch.seq_lens - 1] = batch.out_cache_loc.to(
                torch.int32
            )
            return
        assert batch.table_rows is not None and batch.table_cols is not None and batch.table_slots is not None
        self.req_to_token[batch.table_rows, batch.table_cols] = batch.table_slots.to(torch.int32)

    def forward(
        self, layer: AttentionLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        k_cache, v_cache = self.kv_pool.k[layer.layer_id], self.kv_pool.v[layer.layer_id]
        q = rotary_and_store(layer, q, k, v, batch, k_cache, v_cache)
        if batch.mode is ForwardMode.DECODE:
            return kernels.decode_attention(
                q, k_cache, v_cache, self.req_to_token, batch.req_pool_indices, batch.seq_lens, layer.scale
            )
        return kernels.extend_attention(
            q,
            k_cache,
            v_cache,
            self.req_to_token,
            batch.req_pool_indices,
            batch.seq_lens,
            batch.extend_lens,
            batch.q_start,
            layer.scale,
        )

    def init_graph_state(self, max_batch: int) -> None:
        return None  # the graph's shared static inputs are all it reads

    def prepare_replay(self, batch: ScheduledBatch, size: int) -> None:
        return None

    def eviction_plan(self, batch: ScheduledBatch) -> list[tuple[Sequence, tuple[int, int, int, int]]]:
        return []  # dense attention keeps every entry

    def evict(self, row: int, kv_len: int, length: int, protected: int = 0) -> list[int]:
        raise RuntimeError("dense attention never evicts")


ATTENTION_BACKENDS: dict[str, Callable[..., AttentionBackend]] = {"dense": DenseAttentionBackend}


def _register_sparse_backends() -> None:
    """Add Double Sparsity and H2O (``serving/sparse``) to the registry."""
    from serving.sparse.double_sparsity import DoubleSparsityBackend
    from serving.sparse.h2o import H2OBackend

    ATTENTION_BACKENDS.setdefault("double-sparsity", DoubleSparsityBackend)
    ATTENTION_BACKENDS.setdefault("h2o", H2OBackend)


def make_attention_backend(
    name: str,
    kv_pool: KVPool,
    req_pool: ReqToTokenPool,
    model_config: object,
    options: object = None,
    tp: TensorParallel = SINGLE,
) -> AttentionBackend:
    """Build the backend registered under ``name`` (with its ``options``, e.g. a
    ``DoubleSparsityConfig``); ValueError naming the known ones otherwise."""
    _register_sparse_backends()
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}; known: {', '.join(sorted(ATTENTION_BACKENDS))}"
        )
    return ATTENTION_BACKENDS[name](kv_pool, req_pool, model_config, options, tp)
