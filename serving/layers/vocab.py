"""The vocabulary split across tensor-parallel ranks: input embedding and LM head.

The vocabulary is padded to a multiple of ``tp.size`` (:data:`VOCAB_PADDING` more, for aligned
shards); rank ``r`` owns rows ``[r * V_r, (r + 1) * V_r)`` of the padded table.

* :class:`VocabParallelEmbedding` looks up the ids it owns, zeroes the others, and sums the
  ranks' rows with one all-reduce (each id is owned by exactly one rank).
* :class:`ParallelLMHead` computes its shard of the logits and all-gathers them, dropping the
  padding columns. With tied embeddings it shares the embedding's (equally sharded) weight.

Both load the full HF ``[vocab, hidden]`` tensor through ``weight_loader``, reading only this
rank's rows (the padding rows stay zero).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from serving import kernels
from serving.layers.checkpoint_slice import materialize
from serving.layers.linear import ShardError
from serving.parallel import SINGLE, TensorParallel

VOCAB_PADDING = 64  # padded vocabulary rows per rank are a multiple of this


def padded_vocab_size(vocab_size: int, tp_size: int) -> int:
    """The vocabulary rounded up so each of ``tp_size`` shards has a multiple of VOCAB_PADDING rows."""
    step = VOCAB_PADDING * tp_size
    return -(-vocab_size // step) * step if tp_size > 1 else vocab_size


class VocabShard(nn.Module):
    """A ``[padded_vocab / tp, hidden]`` weight holding this rank's rows of the vocabulary."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.rows_per_rank = padded_vocab_size(vocab_size, tp.size) // tp.size
        self.vocab_start = tp.rank * self.rows_per_rank
        # Rows of real tokens in this shard (the rest, if any, is padding).
        self.real_rows = max(min(self.rows_per_rank, vocab_size - self.vocab_start), 0)
        self.weight = nn.Parameter(torch.empty(self.rows_per_rank, hidden_size))

    def weight_loader(self, param: nn.Parameter, loaded, shard_id: str | int | None = None) -> None:
        """Copy this rank's rows of the full HF ``[vocab, hidden]`` tensor (padding rows: zero)."""
        if shard_id is not None:
            raise ShardError(f"{type(self).__name__} has no part {shard_id!r}")
        expected = (self.vocab_size, self.hidden_size)
        if tuple(loaded.shape) != expected:
            raise ShardError(f"weight has shape {tuple(loaded.shape)}, expected {expected}")
        param.data.zero_()
        if self.real_rows:
            param.data[: self.real_rows].copy_(materialize(loaded.narrow(0, self.vocab_start, self.real_rows)))


class VocabParallelEmbedding(VocabShard):
    """Token embedding with the vocabulary split across ranks."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.tp.enabled:
            return F.embedding(input_ids, self.weight)
        owned = (input_ids >= self.vocab_start) & (input_ids < self.vocab_start + self.rows_per_rank)
        local = torch.where(owned, input_ids - self.vocab_start, torch.zeros_like(input_ids))
        rows = F.embedding(local, self.weight)
        rows.mul_(owned.unsqueeze(-1).to(rows.dtype))
        return self.tp.all_reduce(rows)


class ParallelLMHead(VocabShard):
    """LM head: this rank's logits columns, all-gathered into the full (unpadded) vocabulary."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = kernels.linear(hidden, self.weight)
        if not self.tp.enabled:
            return logits
        return self.tp.all_gather_last_dim(logits)[..., : self.vocab_size]
