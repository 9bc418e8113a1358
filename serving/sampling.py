"""Sampling parameters and the batched sampler (requests in one batch may all differ).

Order of logit processing, as in vLLM: penalties (repetition over prompt+output, frequency and
presence over output, OpenAI-style) -> temperature -> min-p -> top-k -> top-p -> draw. A request
with ``temperature == 0`` is greedy. Logprobs are those of the raw model distribution (before
penalties and temperature), like vLLM's default. A request with a ``seed`` draws from its own
``torch.Generator``, so its output depends only on its seed and its tokens, not on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch


class InvalidParamsError(ValueError):
    """A sampling parameter out of its allowed range (reported to the client as a 400)."""


MAX_TOP_LOGPROBS = 20


@dataclass
class SamplingParams:
    """What a request asks of the sampler and of the stop logic."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None  # None: up to the context limit
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; 0: chosen token only; n: also the top n
    # Use the model's sparse attention (Double Sparsity, H2O) if it has one; False: dense.
    sparse_attention: bool = True

    def validate(self) -> None:
        """Raise :class:`InvalidParamsError` naming the first bad field."""
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= -1, "top_k must be -1, 0 (disabled) or positive"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be >= 1"),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
                f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidParamsError(message)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


class SamplingRequest(Protocol):
    """What the sampler needs to know about each row: its params, tokens and generator."""

    params: SamplingParams
    token_ids: list[int]
    num_prompt_tokens: int
    generator: torch.Generator | None


@dataclass
class TokenLogprobs:
    """Logprob of the chosen token and the ``top`` alternatives (token id, logprob), best first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class SampleResult:
    """Chosen token ids, one per row, and logprobs for the rows that asked for them."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


class PendingSample:
    """A batch's sampled tokens while they travel to the host.

    ``tokens`` (on the model's device) can feed the next decode step before the host has read
    them; :meth:`result` waits for this batch's sampling only, not for work queued after it
    (the copies to the host are asynchronous, behind an event).
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        logprob_rows: list[int],
        logprob_tensors: tuple[torch.Tensor, ...],
        params: list[SamplingParams],
    ) -> None:
        self.tokens = tokens
        self._params = params
        self._rows = logprob_rows
        self._host = [t.to("cpu", non_blocking=True) for t in (tokens, *logprob_tensors)]
        self._ready: torch.cuda.Event | None = None
        if tokens.is_cuda:
            self._ready = torch.cuda.Event()
            self._ready.record()

    def result(self) -> SampleResult:
        """Token ids and logprobs as Python values (blocks until this batch's sampling is done)."""
        if self._ready is not None:
            self._ready.synchronize()
        chosen, *logprob_parts = (t.tolist() for t in self._host)
        logprobs: list[TokenLogprobs | None] = [None] * len(self._params)
        if self._rows:
            chosen_lp, top_values, top_ids = logprob_parts
            for k, row in enumerate(self._rows):
                n = self._params[row].logprobs or 0
                top = list(zip(top_ids[k][:n], top_values[k][:n], strict=True))
                logprobs[row] = TokenLogprobs(chosen[row], chosen_lp[k], top)
        return SampleResult(chosen, logprobs)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax (the first index of the maximum, as ``torch.argmax``).

    For a few long rows it reduces in two stages, the maximum of each of up to 256 chunks and
    then the best chunk: a single reduction kernel per row leaves most of the GPU idle (one row
    of Llama-3's 128k vocabulary: 28 us on an H100, about 0.5% of a batch-1 step of the 8B).
    """
    rows, vocab = logits.shape
    chunks = next((c for c in (256, 128, 64, 32) if vocab % c == 0 and vocab // c >= 64), 1)
    if rows > 8 or chunks == 1:
        return logits.argmax(dim=-1)
    values, within = logits.reshape(rows, chunks, vocab // chunks).max(dim=-1)
    best_chunk = values.argmax(dim=-1, keepdim=True)
    return (best_chunk * (vocab // chunks) + within.gather(1, best_chunk)).squeeze(1)


class Sampler:
    """Turns a ``[N, V]`` logits batch into one token per row, honouring each row's params."""

    def __call__(self, logits: torch.Tensor, requests: Sequence[SamplingRequest]) -> SampleResult:
        return self.launch(logits, requests).result()

    def launch(self, logits: torch.Tensor, requests: Sequence[SamplingRequest]) -> PendingSample:
        """Queue the sampling of ``logits`` on their device; read the result from the return value."""
        params = [r.params for r in requests]
        raw_logits = logits
        if all(p.is_greedy and not p.has_penalties for p in params):
            chosen = argmax_rows(logits)
        else:
            logits = logits.clone()
            if any(p.has_penalties for p in params):
                self._apply_penalties(logits, requests)
            chosen = self._sample(logits, requests)
        rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        return PendingSample(chosen, rows, self._logprob_tensors(raw_logits, chosen, rows, params), params)

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, requests: Sequence[SamplingRequest]) -> None:
        """Repetition (HF-style, prompt+output) and frequency/presence (OpenAI, output) in place."""
        vocab = logits.shape[1]
        for row, request in enumerate(requests):
            p = request.params
            if not p.has_penalties:
                continue
            ids = torch.tensor(request.token_ids, dtype=torch.int64, device=logits.device).clamp_(
                0, vocab - 1
            )
            if p.repetition_penalty != 1.0:
                seen = logits[row, ids]
                logits[row, ids] = torch.where(
                    seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty
                )
            if p.frequency_penalty or p.presence_penalty:
                output_ids = ids[request.num_prompt_tokens :]
                counts = torch.zeros(vocab, dtype=logits.dtype, device=logits.device)
                counts.scatter_add_(0, output_ids, torch.ones_like(output_ids, dtype=logits.dtype))
                logits[row] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(
                    logits.dtype
                )

    def _sample(self, logits: torch.Tensor, requests: Sequence[SamplingRequest]) -> torch.Tensor:
        """Greedy rows take the argmax; the others are filtered and drawn."""
        params = [r.params for r in requests]
        device = logits.device
        greedy = torch.tensor([p.is_greedy for p in params], device=device)
        temperature = torch.tensor(
            [p.temperature if p.temperature > 0 else 1.0 for p in params], device=device
        )
        probs = torch.softmax(logits / temperature[:, None], dim=-1)
        probs = self._filter(probs, params)
        noise = self._exponential_noise(probs, requests)
        drawn = (probs / noise).argmax(dim=-1)
        return torch.where(greedy, argmax_rows(logits), drawn)

    @staticmethod
    def _filter(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Zero out tokens removed by min-p, top-k and top-p (the kept mass is not renormalised:
        drawing with exponential noise only needs relative weights)."""
        device = probs.device
        if any(p.min_p > 0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=device)
            threshold = probs.max(dim=-1, keepdim=True).values * min_p[:, None]
            probs = probs.masked_fill(probs < threshold, 0.0)
        needs_sort = any(p.top_k > 0 for p in params) or any(p.top_p < 1 for p in params)
        if not needs_sort:
            return probs
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        vocab = probs.shape[1]
        top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=device)
        ranks = torch.arange(vocab, device=device)[None, :]
        drop = ranks >= top_k[:, None]
        top_p = torch.tensor([p.top_p for p in params], device=device)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        total = sorted_probs.sum(dim=-1, keepdim=True)
        drop |= mass_before > top_p[:, None] * total  # keep the smallest prefix reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        return torch.zeros_like(probs).scatter_(1, order, sorted_probs)

    @staticmethod
    def _exponential_noise(probs: torch.Tensor, requests: Sequence[SamplingRequest]) -> torch.Tensor:
        """Exp(1) noise per row; seeded rows draw theirs from their own generator (Gumbel-max trick)."""
        noise = torch.empty_like(probs).exponential_()
        for row, request in enumerate(requests):
            if request.generator is not None:
                noise[row] = (
                    torch.empty(probs.shape[1], device=request.generator.device, dtype=probs.dtype)
                    .exponential_(generator=request.generator)
                    .to(probs.device)
                )
        return noise

    @staticmethod
    def _logprob_tensors(
        logits: torch.Tensor, chosen: torch.Tensor, rows: list[int], params: list[SamplingParams]
    ) -> tuple[torch.Tensor, ...]:
        """(chosen token logprob, top values, top ids) of the rows asking for logprobs, on the device."""
        if not rows:
            return ()
        index = torch.tensor(rows, device=logits.device)
        logprobs = torch.log_softmax(logits[index].float(), dim=-1)
        chosen_lp = logprobs.gather(1, chosen[index][:, None]).squeeze(1)
        top_n = max(params[i].logprobs or 0 for i in rows)
        top_values, top_ids = logprobs.topk(max(top_n, 1), dim=-1)
        return chosen_lp, top_values, top_ids
