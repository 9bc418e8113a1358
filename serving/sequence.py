"""A request's state inside the engine, and what the engine reports back for it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from serving.sampling import SamplingParams, TokenLogprobs


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted: owns no KV
    RUNNING = "running"  # owns a req_to_token row and KV slots for its first num_cached tokens
    FINISHED = "finished"


@dataclass
class GenerationRequest:
    """A tokenized prompt with its sampling parameters; ``request_id`` must be unique in flight."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass
class RequestOutput:
    """What one engine step produced for one request (a streaming delta)."""

    request_id: str
    new_token_ids: list[int]
    text: str  # new text since the previous output
    num_prompt_tokens: int
    num_output_tokens: int
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    logprobs: list[TokenLogprobs] = field(default_factory=list)


class Sequence:
    """Prompt + generated tokens, KV bookkeeping and stop state of one request."""

    def __init__(self, request: GenerationRequest, arrival: int, generator: torch.Generator | None) -> None:
        self.request_id = request.request_id
        self.params = request.params
        self.token_ids = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.arrival = arrival  # admission order; preemption evicts the latest
        self.generator = generator
        self.status = SequenceStatus.WAITING
        self.num_cached = 0  # tokens whose K/V sit in the pool (a prefix cache hit would set this)
        self.req_pool_idx: int | None = None
        self.finish_reason: str | None = None
        self.max_total_tokens = 0  # set by the scheduler: prompt + max_tokens, capped by context

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncached(self) -> int:
        """Tokens still to run through the model before the next sample."""
        return len(self.token_ids) - self.num_cached

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
