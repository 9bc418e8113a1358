"""Linear layers that load their own weights, carry LoRA slots, and shard for tensor parallelism.

Every projection of a model is one of these. Each layer has a ``weight_loader(param,
tensor, shard_id)`` that copies a Hugging Face checkpoint tensor into the rows or columns this
rank owns, so the model loader never needs to know about fusion or sharding:

* :class:`ColumnParallelLinear` splits the output features across ranks (no communication);
  :class:`MergedColumnParallelLinear` fuses several of them (gate|up, shard ids 0, 1) and
  :class:`QKVParallelLinear` fuses q|k|v by heads (shard ids ``"q"``, ``"k"``, ``"v"``; GQA's
  KV heads split across ranks like the query heads).
* :class:`RowParallelLinear` splits the input features; the partial outputs are summed with
  one all-reduce (``torch.distributed``) when ``tp_size > 1``, the bias added once after it.

LoRA: :meth:`LinearBase.create_lora_slots` allocates ``lora_a[S, n_sub * R, K]`` and
``lora_b[S, N, R]`` (S adapter slots of rank at most R, one A block per sub-projection) and
:meth:`LinearBase.load_lora` fills one slot from an adapter's PEFT ``lora_A`` / ``lora_B``
through the same sharding as the weight: a column-parallel layer keeps A whole and takes its
rows of B, a row-parallel one takes its columns of A and keeps B whole (the low-rank partial
products add up in the same all-reduce as the base output). Forward with a
:class:`~serving.lora.batch.LoraBatch` adds each row's adapter delta with one shrink over all
sub-projections and one expand per sub-projection.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from serving import kernels
from serving.layers.checkpoint_slice import materialize
from serving.lora.batch import LoraBatch


class ShardError(ValueError):
    """A checkpoint or adapter tensor whose shape does not fit the layer."""


def _expect_shape(tensor: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ShardError(f"{what} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")


def _divide(size: int, parts: int, what: str) -> int:
    if size % parts:
        raise ShardError(f"{what} ({size}) is not divisible by the tensor-parallel size {parts}")
    return size // parts


class LinearBase(nn.Module):
    """``y = x W^T (+ b)`` over this rank's shard, plus per-row LoRA deltas.

    ``sub_sizes`` are the full (unsharded) output sizes of the fused sub-projections, in order,
    and ``shard_ids`` their names in checkpoints (``None`` for a plain projection).
    """

    tp_dim: int | None = None  # 0: output features split, 1: input features split, None: replicated

    def __init__(
        self,
        input_size: int,
        sub_sizes: list[int],
        bias: bool,
        shard_ids: list[str | int | None],
        tp_rank: int = 0,
        tp_size: int = 1,
    ) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.shard_ids = list(shard_ids)
        self.full_sub_sizes = list(sub_sizes)
        self.full_input_size = input_size
        split_out = self.tp_dim == 0
        self.sub_sizes = [_divide(s, tp_size, "output size") if split_out else s for s in sub_sizes]
        self.input_size = _divide(input_size, tp_size, "input size") if self.tp_dim == 1 else input_size
        self.output_size = sum(self.sub_sizes)
        self.weight = nn.Parameter(torch.empty(self.output_size, self.input_size))
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(self.output_size))
        else:
            self.register_parameter("bias", None)
        self.lora_a: torch.Tensor | None = None
        self.lora_b: torch.Tensor | None = None
        self.lora_rank = 0

    # ----- weights ------------------------------------------------------------------------

    def sub_index(self, shard_id: str | int | None) -> int:
        """Position of a checkpoint part (``"k"``, ``1``, ``None``) among the fused sub-projections."""
        if shard_id not in self.shard_ids:
            raise ShardError(f"{type(self).__name__} has no part {shard_id!r} (parts: {self.shard_ids})")
        return self.shard_ids.index(shard_id)

    def sub_rows(self, index: int) -> slice:
        """This rank's output rows of sub-projection ``index`` within the fused weight."""
        start = sum(self.sub_sizes[:index])
        return slice(start, start + self.sub_sizes[index])

    def rank_part(self, tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
        """This rank's ``size``-wide chunk of ``tensor`` along ``dim``."""
        return tensor.narrow(dim, self.tp_rank * size, size)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id: str | int | None = None) -> None:
        """Copy a checkpoint tensor (the full, unsharded HF weight or bias, a tensor or a lazy
        :class:`~serving.layers.checkpoint_slice.CheckpointSlice`) into this rank's part."""
        index = self.sub_index(shard_id)
        is_bias = param.dim() == 1
        full_shape: tuple[int, ...] = (self.full_sub_sizes[index],)
        if not is_bias:
            full_shape = (self.full_sub_sizes[index], self.full_input_size)
        _expect_shape(loaded, full_shape, "bias" if is_bias else "weight")
        if self.tp_dim == 0:
            loaded = self.rank_part(loaded, 0, self.sub_sizes[index])
        elif self.tp_dim == 1 and not is_bias:
            loaded = self.rank_part(loaded, 1, self.input_size)
        param.data[self.sub_rows(index)].copy_(materialize(loaded))

    # ----- LoRA ---------------------------------------------------------------------------

    def create_lora_slots(self, num_slots: int, max_rank: int) -> int:
        """Allocate zeroed LoRA weights for ``num_slots`` adapters of rank <= ``max_rank``; bytes used."""
        like = self.weight
        subs = len(self.sub_sizes)
        self.lora_a = torch.zeros((num_slots, subs * max_rank, self.input_size), dtype=like.dtype, device=like.device)
        self.lora_b = torch.zeros((num_slots, self.output_size, max_rank), dtype=like.dtype, device=like.device)
        self.lora_rank = max_rank
        return (self.lora_a.numel() + self.lora_b.numel()) * like.element_size()

    def clear_lora(self, slot: int) -> None:
        """Zero slot ``slot`` (an adapter that does not target this layer adds nothing here)."""
        if self.lora_a is not None and self.lora_b is not None:
            self.lora_a[slot].zero_()
            self.lora_b[slot].zero_()

    def load_lora(self, slot: int, shard_id: str | int | None, a: torch.Tensor, b: torch.Tensor) -> None:
        """Fill ``slot`` for one sub-projection from PEFT's full ``lora_A [r, K]`` and scaled
        ``lora_B [N_sub, r]``; call :meth:`clear_lora` first when the slot is reused."""
        if self.lora_a is None or self.lora_b is None:
            raise RuntimeError("create_lora_slots() before load_lora()")
        index = self.sub_index(shard_id)
        rank = a.shape[0]
        if rank > self.lora_rank:
            raise ShardError(f"adapter rank {rank} exceeds the pool's maximum rank {self.lora_rank}")
        _expect_shape(a, (rank, self.full_input_size), "lora_A")
        _expect_shape(b, (self.full_sub_sizes[index], rank), "lora_B")
        if self.tp_dim == 1:
            a = self.rank_part(a, 1, self.input_size)
        if self.tp_dim == 0:
            b = self.rank_part(b, 0, self.sub_sizes[index])
        rows = slice(index * self.lora_rank, index * self.lora_rank + rank)
        self.lora_a[slot, rows].copy_(a, non_blocking=True)
        self.lora_b[slot, self.sub_rows(index), :rank].copy_(b, non_blocking=True)

    def add_lora(self, out: torch.Tensor, x: torch.Tensor, lora: LoraBatch) -> torch.Tensor:
        """Add each row's adapter delta to ``out`` in place: one shrink, one expand per part."""
        assert self.lora_a is not None and self.lora_b is not None
        t = lora.shrink(x, self.lora_a)
        rank = self.lora_rank
        for index in range(len(self.sub_sizes)):
            rows = self.sub_rows(index)
            lora.expand(out[:, rows], t[:, index * rank : (index + 1) * rank], self.lora_b[:, rows])
        return out

    # ----- forward ------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, lora: LoraBatch | None = None, silu_mul_input: bool = False
    ) -> torch.Tensor:
        """Project ``x`` (gate|up activations with ``silu_mul_input``), adding LoRA deltas."""
        with_lora = lora is not None and self.lora_a is not None
        if with_lora and silu_mul_input:
            x, silu_mul_input = kernels.silu_and_mul(x), False  # the adapter needs the activation too
        reduce = self.tp_dim == 1 and self.tp_size > 1  # partial sums: the bias goes after the reduce
        out = kernels.linear(x, self.weight, None if reduce else self.bias, silu_mul_input)
        if with_lora:
            assert lora is not None
            self.add_lora(out, x, lora)
        if reduce:
            dist.all_reduce(out)
            if self.bias is not None:
                out += self.bias
        return out


class ReplicatedLinear(LinearBase):
    """A projection every rank holds whole."""

    tp_dim = None

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__(input_size, [output_size], bias, [None])


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; each rank's output is its slice of the features."""

    tp_dim = 0

    def __init__(self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0, tp_size: int = 1):
        super().__init__(input_size, [output_size], bias, [None], tp_rank, tp_size)


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel projections of one input fused into one matmul (gate|up: ids 0, 1)."""

    tp_dim = 0

    def __init__(
        self, input_size: int, output_sizes: list[int], bias: bool = False, tp_rank: int = 0, tp_size: int = 1
    ) -> None:
        super().__init__(input_size, output_sizes, bias, list(range(len(output_sizes))), tp_rank, tp_size)


class QKVParallelLinear(LinearBase):
    """Fused q|k|v projection, heads split across ranks (query heads and KV heads alike)."""

    tp_dim = 0

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = False,
        tp_rank: int = 0,
        tp_size: int = 1,
    ) -> None:
        _divide(num_heads, tp_size, "number of attention heads")
        _divide(num_kv_heads, tp_size, "number of KV heads")
        sizes = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
        super().__init__(hidden_size, sizes, bias, ["q", "k", "v"], tp_rank, tp_size)
        self.num_heads = num_heads // tp_size
        self.num_kv_heads = num_kv_heads // tp_size


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs summed by one all-reduce."""

    tp_dim = 1

    def __init__(self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0, tp_size: int = 1):
        super().__init__(input_size, [output_size], bias, [None], tp_rank, tp_size)
