"""A request's state inside the engine, and what the engine reports back for it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from serving.prefix_cache import EMPTY_MATCH, ExtraKey, PrefixMatch
from serving.sampling import SamplingParams, TokenLogprobs


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted: owns no KV
    RUNNING = "running"  # owns a slot-table row and the KV slots in kv_slots
    FINISHED = "finished"


@dataclass
class GenerationRequest:
    """A tokenized prompt with its sampling parameters; ``request_id`` must be unique in flight.

    ``extra_key`` namespaces the prefix cache: KV is shared only between requests with the same
    key (e.g. the LoRA adapter they run under); ``None`` for the base model.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    extra_key: ExtraKey = None
    # Scoring instead of generating: report the log-probability of each prompt token from this
    # index on, given the tokens before it (constrained ``choices`` use it); nothing is sampled.
    score_from: int | None = None


@dataclass
class RequestOutput:
    """What one engine step produced for one request (a streaming delta)."""

    request_id: str
    new_token_ids: list[int]
    text: str  # new text since the previous output
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[float] = field(default_factory=list)  # a scoring request's, when done


class Sequence:
    """Prompt + generated tokens, KV bookkeeping and stop state of one request.

    Two numbers that only coincide for dense attention without sharing are kept apart:

    * ``num_computed``: tokens of ``token_ids`` already run through the model (or taken from a
      prefix-cache hit), i.e. the position of the next token to compute (its RoPE position);
    * ``num_kv`` = ``len(kv_slots)``: KV entries the sequence holds, in the order of its
      slot-table row. A sparse backend that drops entries (H2O) makes it smaller.

    ``kv_slots`` is the host copy of the sequence's slot ids, so releasing them needs no device
    read-back. Its first ``prefix.length`` entries belong to the prefix cache (locked by
    ``prefix``); the rest are the sequence's own. ``table_len`` counts the entries already
    recorded in the device slot table row (``req_pool_idx``); the next forward records the rest.
    """

    def __init__(
        self, request: GenerationRequest, max_total_tokens: int, generator: torch.Generator | None
    ) -> None:
        self.request_id = request.request_id
        self.params = request.params
        self.extra_key = request.extra_key
        self.score_from = request.score_from
        self.scores: list[float] = []  # a scoring sequence's prompt logprobs so far
        self.token_ids = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.max_total_tokens = max_total_tokens  # prompt + max_tokens, capped by the context
        self.generator = generator
        self.arrival = 0  # set when queued: admission order, preemption evicts the latest
        self.status = SequenceStatus.WAITING
        self.num_computed = 0
        self.kv_slots: list[int] = []
        self.prefix: PrefixMatch = EMPTY_MATCH
        self.table_len = 0
        self.req_pool_idx: int | None = None
        self.cached_tokens = 0  # prompt tokens taken from the prefix cache at first admission
        self.admitted = False
        self.skips = 0  # times a later arrival was admitted before it (lpm's fairness bound)
        self.finish_reason: str | None = None

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_kv(self) -> int:
        """KV entries this sequence holds (shared prefix included)."""
        return len(self.kv_slots)

    @property
    def num_to_compute(self) -> int:
        """Tokens still to run through the model before the next sample."""
        return len(self.token_ids) - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
