"""Constrained choice decoding: the answer is exactly one of the given strings.

Each choice is scored as a continuation of the prompt: its tokens (the choice tokenized on its
own, without special tokens, appended to the prompt's tokens, so the prompt's tokenization never
changes with the choice) are run through the model as one scoring request per choice, and the
choice with the highest mean log-probability per token wins (SGLang's default ``select``
method, token-length-normalized so longer choices are not penalised for their length). Ties go
to the earliest choice in the list. The prompt's KV is computed once and shared by all the
scoring requests through the prefix cache; choices sharing leading tokens share those too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from serving.prefix_cache import ExtraKey
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest


class ChoiceError(ValueError):
    """Choices that cannot be scored (none given, or one that tokenizes to nothing)."""


def tokenize_choices(tokenizer: PreTrainedTokenizerBase, choices: Sequence[str]) -> list[list[int]]:
    """Token ids of each choice, tokenized on its own; ChoiceError for an empty list or choice."""
    if not choices:
        raise ChoiceError("choices must name at least one string")
    token_ids = [tokenizer.encode(choice, add_special_tokens=False, verbose=False) for choice in choices]
    for choice, ids in zip(choices, token_ids, strict=True):
        if not ids:
            raise ChoiceError(f"choice {choice!r} has no tokens")
    return token_ids


def scoring_requests(
    request_id: str, prompt_ids: list[int], choice_ids: list[list[int]], extra_key: ExtraKey = None
) -> list[GenerationRequest]:
    """One scoring request per choice: prompt + choice, scored from the choice's first token."""
    params = SamplingParams(temperature=0.0, max_tokens=1)
    return [
        GenerationRequest(f"{request_id}-choice{index}", prompt_ids + ids, params, extra_key, len(prompt_ids))
        for index, ids in enumerate(choice_ids)
    ]


def best_choice(choice_logprobs: Sequence[Sequence[float]]) -> int:
    """Index of the choice with the highest mean token log-probability (first one on ties)."""
    best, best_score = 0, -math.inf
    for index, logprobs in enumerate(choice_logprobs):
        score = sum(logprobs) / len(logprobs)
        if score > best_score:
            best, best_score = index, score
    return best
