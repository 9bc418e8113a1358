"""How long a message may be: the configured cap, and what the models' context windows allow.

A model endpoint refuses a conversation longer than its context window (a 400 error), and then
the battle can't be voted on. The arena prevents that instead: it bounds the tokens a
conversation can take and refuses, with a message, a turn that would not fit.

The bound needs no tokenizer: byte-level BPE tokenizers (GPT-2/4, Llama 3, Qwen, the demo
models) and SentencePiece with byte fallback (Llama 2, Mistral) make at most one token per UTF-8
byte, and a chat template adds a few tokens of markup per message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from arena.providers.registry import ModelSpec

# Chat-template markup: role headers and separators per message, and the generation prompt.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS = 16


def token_bound(messages: Iterable[Mapping[str, str]]) -> int:
    """At most how many tokens these chat messages take, template included."""
    return TEMPLATE_TOKENS + sum(
        len(m["content"].encode("utf-8")) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages
    )


def prompt_budget(spec: ModelSpec) -> int | None:
    """The longest first message (in UTF-8 bytes) that fits ``spec``'s context with room for
    its answer; None when the model's context window is unknown."""
    if spec.context_tokens is None:
        return None
    return spec.context_tokens - spec.max_tokens - TEMPLATE_TOKENS - TEMPLATE_TOKENS_PER_MESSAGE


@dataclass(frozen=True)
class PromptLimits:
    """The per-message character limit and the per-conversation context check."""

    max_chars: int  # ARENA_MAX_PROMPT_CHARS
    models: Mapping[str, ModelSpec]

    def message_limit(self) -> int:
        """The limit shown on the page: the configured cap, lowered where a model's context is
        smaller (an ASCII character is one byte, so at most one token)."""
        budgets = [b for b in (prompt_budget(spec) for spec in self.models.values()) if b is not None]
        return max(1, min([self.max_chars, *budgets]))

    def limited_by_context(self) -> ModelSpec | None:
        """The model whose context sets the message limit, if it is lower than the configured cap."""
        known = [(budget, spec) for spec in self.models.values() if (budget := prompt_budget(spec)) is not None]
        budget, spec = min(known, key=lambda item: item[0], default=(self.max_chars, None))
        return spec if budget < self.max_chars else None

    def too_long(self, prompt: str) -> str | None:
        """Why ``prompt`` alone is too long, or None."""
        limit = self.message_limit()
        if len(prompt) <= limit:
            return None
        reason = ""
        narrow = self.limited_by_context()
        if narrow is not None:
            reason = f" (what the models' {narrow.context_tokens:,}-token context window leaves room for)"
        return (f"Your message has {len(prompt):,} characters; the limit is {limit:,}{reason}. "
                "Shorten it and send again.")

    def overflow(self, model_names: Iterable[str], history: Sequence[Mapping[str, str]], prompt: str) -> str | None:
        """Why adding ``prompt`` to ``history`` would not fit one of the models, or None."""
        needed = token_bound([*history, {"role": "user", "content": prompt}])
        for name in model_names:
            spec = self.models[name]
            if spec.context_tokens is not None and needed + spec.max_tokens > spec.context_tokens:
                return (f"This conversation no longer fits the models' context window "
                        f"({spec.context_tokens:,} tokens with room for the answer), so the message was "
                        "not sent. Vote on what you have, or start a new round.")
        return None
