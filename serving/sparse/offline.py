"""Run a model over a fixed batch of sequences with any attention backend, outside the engine.

For measuring what sparse attention does to a model - greedy continuations, teacher-forced
log-likelihoods, decode step time - on exactly the same inputs for every backend. Each sequence
keeps two numbers, as the issue asks of the engine: its next *position* (tokens seen) and the
KV entries it *holds* (its ``req_to_token`` row length); they part when H2O evicts. Prefill is
one extend batch per sequence; decode steps batch all sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from serving.attention import AttentionBackend, ForwardBatch, ForwardMode
from serving.memory import KVPool, ReqToTokenPool
from serving.models.llama import head_dim_of
from serving.sparse.double_sparsity import DoubleSparsityBackend
from serving.sparse.h2o import H2OBackend

BackendFactory = Callable[[KVPool, ReqToTokenPool], AttentionBackend]


@dataclass
class _Sequence:
    row: int
    length: int = 0  # tokens seen: the next token's position
    slots: list[int] = field(default_factory=list)  # KV entries held (fewer than length once H2O evicts)


class OfflineDecoder:
    """A KV pool, a slot table and a backend for ``max_batch`` sequences of ``max_context`` tokens."""

    def __init__(self, model, make_backend: BackendFactory, max_batch: int, max_context: int) -> None:
        config = model.config
        param = next(model.parameters())
        self.model = model
        self.device = param.device
        self.pool = KVPool(
            config.num_hidden_layers, max_batch * max_context + 1, config.num_key_value_heads,
            head_dim_of(config), param.dtype, self.device,
        )  # fmt: skip
        self.rows = ReqToTokenPool(max_batch, max_context, self.device)
        self.backend = make_backend(self.pool, self.rows)
        self.sequences: list[_Sequence] = []

    def _ints(self, values) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.int64).to(self.device)

    def _run(self, batch: ForwardBatch) -> torch.Tensor:
        if isinstance(self.backend, DoubleSparsityBackend):
            self.backend.plan(int(max(len(seq.slots) for seq in self.sequences)), [])
        self.backend.prepare(batch)
        return self.model(batch, self.backend)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Start one sequence per prompt; return each prompt's last-token logits ``[B, V]``."""
        logits = []
        for prompt in prompts:
            seq = _Sequence(self.rows.alloc())
            self.sequences.append(seq)
            count = len(prompt)
            seq.slots = self.pool.alloc(count).tolist()
            slots = self._ints(seq.slots)
            batch = ForwardBatch(
                mode=ForwardMode.EXTEND,
                input_ids=self._ints(prompt),
                positions=torch.arange(count, device=self.device),
                out_cache_loc=slots,
                req_pool_indices=self._ints([seq.row]),
                seq_lens=self._ints([count]),
                extend_lens=self._ints([count]),
                q_start=self._ints([0]),
                logits_indices=self._ints([count - 1]),
                table_rows=self._ints([seq.row] * count),
                table_cols=torch.arange(count, device=self.device),
                table_slots=slots,
            )
            logits.append(self._run(batch))
            seq.length = count
            self._maybe_evict(seq)
        return torch.cat(logits)

    @torch.inference_mode()
    def decode(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token to every sequence (in prefill order); return next-token logits ``[B, V]``."""
        seqs = self.sequences
        new_slots = self.pool.alloc(len(seqs)).tolist()
        for seq, slot in zip(seqs, new_slots, strict=True):
            seq.slots.append(slot)
        batch = ForwardBatch(
            mode=ForwardMode.DECODE,
            input_ids=self._ints(tokens),
            positions=self._ints([seq.length for seq in seqs]),
            out_cache_loc=self._ints(new_slots),
            req_pool_indices=self._ints([seq.row for seq in seqs]),
            seq_lens=self._ints([len(seq.slots) for seq in seqs]),
            extend_lens=torch.ones(len(seqs), dtype=torch.int64, device=self.device),
            q_start=torch.arange(len(seqs), device=self.device),
            logits_indices=torch.arange(len(seqs), device=self.device),
        )
        logits = self._run(batch)
        for seq in seqs:
            seq.length += 1
            self._maybe_evict(seq)
        return logits

    def _maybe_evict(self, seq: _Sequence) -> None:
        backend = self.backend
        if isinstance(backend, H2OBackend) and backend.needs_eviction(len(seq.slots), seq.length):
            keep = backend.evict(seq.row, len(seq.slots), seq.length)
            kept = set(keep)
            self.pool.free([slot for i, slot in enumerate(seq.slots) if i not in kept])
            seq.slots = [seq.slots[i] for i in keep]

    def kv_entries(self) -> list[int]:
        """KV entries each sequence holds now."""
        return [len(seq.slots) for seq in self.sequences]


def greedy(
    model, make_backend: BackendFactory, prompts: list[list[int]], max_new_tokens: int
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (batched decode) under the backend."""
    context = max(len(p) for p in prompts) + max_new_tokens
    decoder = OfflineDecoder(model, make_backend, len(prompts), context)
    next_tokens = decoder.prefill(prompts).argmax(-1).tolist()
    outputs = [[token] for token in next_tokens]
    for _ in range(max_new_tokens - 1):
        next_tokens = decoder.decode(next_tokens).argmax(-1).tolist()
        for out, token in zip(outputs, next_tokens, strict=True):
            out.append(token)
    return outputs


def continuation_logprobs(
    model, make_backend: BackendFactory, prompts: list[list[int]], continuations: list[list[int]]
) -> torch.Tensor:
    """``[B, C]`` log-probabilities of each continuation token, teacher-forced through decode
    steps under the backend (continuations of one length ``C``)."""
    length = len(continuations[0])
    if any(len(c) != length for c in continuations):
        raise ValueError("continuations must share one length")
    context = max(len(p) for p in prompts) + length
    decoder = OfflineDecoder(model, make_backend, len(prompts), context)
    logits = decoder.prefill(prompts)
    columns = []
    for step in range(length):
        targets = torch.tensor([c[step] for c in continuations], device=logits.device)
        columns.append(torch.log_softmax(logits.float(), -1).gather(1, targets[:, None])[:, 0])
        if step + 1 < length:
            logits = decoder.decode([c[step] for c in continuations])
    return torch.stack(columns, dim=1).cpu()
