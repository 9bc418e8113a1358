"""The one client the arena uses to reach every model: OpenAI, vLLM, SGLang or our own ``serving/``.

Built on the official ``openai`` package (async), which already retries connection errors,
429 and 5xx responses with exponential backoff; this module adds a per-call timeout, a
uniform error type, latency measurement, and clean cancellation of streams (closing the
HTTP response when the consumer stops iterating, e.g. a visitor leaves the page).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, cast

import httpx
import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from arena.providers.registry import ModelSpec

logger = logging.getLogger(__name__)

Message = dict[str, str]


class ProviderError(RuntimeError):
    """A model endpoint failed (unreachable, timed out, refused or answered an error)."""

    def __init__(self, message: str, *, retryable: bool = False, status_code: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


@dataclass
class ChatResult:
    """A finished answer with what it cost."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    first_token_s: float | None = None


@dataclass
class StreamChunk:
    """One step of a streamed answer: new text, and on the last chunk the full result."""

    delta: str
    result: ChatResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


class ChatClient:
    """Chat completions against one model on one OpenAI-compatible endpoint."""

    def __init__(
        self,
        base_url: str,
        model_id: str,
        api_key: str = "EMPTY",
        *,
        timeout_s: float = 120.0,
        max_retries: int = 2,
    ):
        self.model_id = model_id
        self.base_url = base_url
        self._client = AsyncOpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )

    @classmethod
    def for_model(cls, spec: ModelSpec, *, timeout_s: float = 120.0, max_retries: int = 2) -> ChatClient:
        """A client for a registry entry."""
        return cls(spec.base_url, spec.model_id, spec.api_key(), timeout_s=timeout_s, max_retries=max_retries)

    async def close(self) -> None:
        await self._client.close()

    async def owned_by(self) -> str | None:
        """Who serves this model, as the endpoint's ``/models`` says (``"arena-serving"`` for
        our engine); None when the endpoint does not list it or cannot be asked."""
        try:
            models = await self._client.models.list()
        except openai.OpenAIError as exc:
            logger.info("could not list the models of %s: %s", self.base_url, exc)
            return None
        return next((m.owned_by for m in models.data if m.id == self.model_id), None)

    async def chat(
        self,
        messages: list[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> ChatResult:
        """One whole answer (no streaming)."""
        started = time.perf_counter()
        params = _sampling_params(temperature, max_tokens, top_p, seed, stop, extra_body)
        try:
            response = cast(
                ChatCompletion,
                await self._client.chat.completions.create(
                    model=self.model_id, messages=messages, stream=False, **params  # type: ignore[arg-type]
                ),
            )
        except openai.OpenAIError as exc:
            raise _as_provider_error(exc, self.model_id) from exc
        if not response.choices:
            raise ProviderError(f"{self.model_id}: the endpoint returned no choices")
        choice = response.choices[0]
        usage = response.usage
        return ChatResult(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_s=time.perf_counter() - started,
        )

    async def stream_chat(
        self,
        messages: list[Message],
        *,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> AsyncGenerator[StreamChunk, None]:
        """Stream an answer; the last chunk carries the :class:`ChatResult`.

        Stopping the iteration (or cancelling the task) closes the HTTP stream, so the
        endpoint stops generating.
        """
        started = time.perf_counter()
        params = _sampling_params(temperature, max_tokens, top_p, seed, stop, extra_body)
        params["stream_options"] = {"include_usage": True}
        parts: list[str] = []
        finish_reason: str | None = None
        prompt_tokens = completion_tokens = None
        first_token_s: float | None = None
        try:
            stream = cast(
                AsyncStream[ChatCompletionChunk],
                await self._client.chat.completions.create(
                    model=self.model_id, messages=messages, stream=True, **params  # type: ignore[arg-type]
                ),
            )
            try:
                async for event in stream:
                    if event.usage is not None:
                        prompt_tokens = event.usage.prompt_tokens
                        completion_tokens = event.usage.completion_tokens
                    for choice in event.choices:
                        delta = choice.delta.content or ""
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
                        if delta:
                            if first_token_s is None:
                                first_token_s = time.perf_counter() - started
                            parts.append(delta)
                            yield StreamChunk(delta)
            finally:
                await stream.close()
        except openai.OpenAIError as exc:
            raise _as_provider_error(exc, self.model_id) from exc
        yield StreamChunk(
            "",
            ChatResult(
                text="".join(parts),
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_s=time.perf_counter() - started,
                first_token_s=first_token_s,
            ),
        )


def _sampling_params(
    temperature: float,
    max_tokens: int | None,
    top_p: float | None,
    seed: int | None,
    stop: list[str] | None,
    extra_body: dict[str, Any] | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"temperature": temperature}
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if top_p is not None:
        params["top_p"] = top_p
    if seed is not None:
        params["seed"] = seed
    if stop:
        params["stop"] = stop
    if extra_body:
        params["extra_body"] = extra_body
    return params


def _as_provider_error(exc: openai.OpenAIError, model_id: str) -> ProviderError:
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(f"{model_id}: the endpoint timed out", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"{model_id}: cannot reach the endpoint ({exc})", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        retryable = exc.status_code == 429 or exc.status_code >= 500
        return ProviderError(
            f"{model_id}: the endpoint answered {exc.status_code}: {exc.message}",
            retryable=retryable,
            status_code=exc.status_code,
        )
    return ProviderError(f"{model_id}: {exc}")


# Where OpenAI-compatible servers report a model's context window in ``GET /models``:
# vLLM, SGLang and ``arena-serve`` say ``max_model_len``; others ``context_length`` or ``context_window``.
_CONTEXT_FIELDS = ("max_model_len", "context_length", "context_window")


def discover_context_windows(specs: list[ModelSpec], timeout_s: float = 3.0) -> dict[str, int]:
    """Ask each endpoint's ``GET /models`` for the context window of the models whose registry
    entry does not state ``context_tokens``; returns {model name: tokens} for those it reports.

    Best effort at start-up: an endpoint that is down or does not report one is logged and
    skipped (its models then have no context limit on the arena's side).
    """
    wanted = [spec for spec in specs if spec.context_tokens is None]
    found: dict[str, int] = {}
    listings: dict[tuple[str, str], dict[str, int]] = {}
    for spec in wanted:
        key = (spec.base_url, spec.api_key())
        if key not in listings:
            listings[key] = _listed_context_windows(spec, timeout_s)
        if spec.model_id in listings[key]:
            found[spec.name] = listings[key][spec.model_id]
    missing = sorted(spec.name for spec in wanted if spec.name not in found)
    if missing:
        logger.info("no context window known for %s (set context_tokens in the registry)", ", ".join(missing))
    return found


def _listed_context_windows(spec: ModelSpec, timeout_s: float) -> dict[str, int]:
    """{served model id: context window} as the endpoint of ``spec`` lists them."""
    try:
        response = httpx.get(f"{spec.base_url}/models", timeout=timeout_s,
                             headers={"Authorization": f"Bearer {spec.api_key()}"})
        response.raise_for_status()
        entries = response.json().get("data", [])
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        logger.info("could not list the models at %s: %s", spec.base_url, exc)
        return {}
    windows = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        value = next((entry[f] for f in _CONTEXT_FIELDS if entry.get(f)), None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            windows[str(entry.get("id"))] = value
    return windows
