"""Incremental detokenization with stop strings, one :class:`TextStream` per request.

Tokens are decoded in a small sliding window (the vLLM / TGI offsets trick), so each step costs
O(window), not O(output), and a multi-byte character split across tokens is only emitted once
complete. When the request has stop strings, the last ``len(longest stop) - 1`` characters are
held back so that a stop string is never streamed before it is recognised.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    """Turns a request's output tokens into text deltas and detects its stop strings."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None, stop: list[str]) -> None:
        """``tokenizer=None`` turns decoding off: the stream then only collects token ids."""
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""  # all decoded output text (truncated at a stop string once found)
        self.emitted = 0  # characters of self.text already returned
        self.stopped = False
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        assert self.tokenizer is not None
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, new_token_ids: list[int]) -> str:
        """Add tokens; return the text that can be released now (empty while held back)."""
        self.token_ids.extend(new_token_ids)
        if self.tokenizer is None:
            return ""
        prefix_text = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        window_text = self._decode(self.token_ids[self._prefix_offset :])
        if len(window_text) > len(prefix_text) and not window_text.endswith(REPLACEMENT_CHAR):
            self._append_text(window_text[len(prefix_text) :])
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.token_ids)
        return self._release(final=False)

    def flush(self) -> str:
        """At the end of the request: release everything left (incomplete characters included)."""
        if self.tokenizer is not None and not self.stopped and self._read_offset < len(self.token_ids):
            prefix_text = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
            window_text = self._decode(self.token_ids[self._prefix_offset :])
            self._append_text(window_text[len(prefix_text) :])
            self._read_offset = len(self.token_ids)
        return self._release(final=True)

    def _append_text(self, delta: str) -> None:
        if self.stopped:
            return
        search_from = max(0, len(self.text) - self.holdback)
        self.text += delta
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        end = len(self.text) if (final or self.stopped) else max(self.emitted, len(self.text) - self.holdback)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta
