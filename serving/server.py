"""OpenAI-compatible HTTP API over one or more :class:`~serving.engine.AsyncEngine` s.

Routes: ``/v1/chat/completions``, ``/v1/completions`` (both with SSE streaming, usage, ``n``
choices and the ``choices`` constraint of :mod:`serving.choices`), ``/v1/models``, ``/health``
and ``/metrics`` (Prometheus text format, per model). Errors use OpenAI's shape ``{"error": {"message", "type",
"param", "code"}}`` with a 4xx status; a failed request never stops the server. When the client
disconnects, its request is aborted in the engine (streaming or not).

This is the only module of ``serving`` that imports FastAPI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.async_engine import AsyncEngine
from serving.choices import ChoiceError, best_choice, scoring_requests, tokenize_choices
from serving.engine import RequestError
from serving.sampling import InvalidParamsError, SamplingParams, TokenLogprobs
from serving.sequence import GenerationRequest, RequestOutput

logger = logging.getLogger(__name__)

DISCONNECT_POLL_SECONDS = 0.5


class OpenAIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        error_type = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": error_type, "param": self.param, "code": self.code}
        }


# ----- request bodies ---------------------------------------------------------------------


class _SamplingFields(BaseModel):
    """Fields shared by chat and completion requests (OpenAI names, plus vLLM's extras)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    stop_token_ids: list[int] = Field(default_factory=list)
    # Constrained: the answer is one of these (serving/choices.py); vLLM's name is accepted too.
    choices: list[str] | None = Field(default=None, max_length=64)
    guided_choice: list[str] | None = Field(default=None, max_length=64)

    @property
    def constraint(self) -> list[str] | None:
        return self.choices if self.choices is not None else self.guided_choice

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            seed=self.seed,
            max_tokens=max_tokens,
            stop=stop,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )

    @property
    def include_usage_in_stream(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict] | None = None

    def text(self) -> str:
        """The content as plain text (text parts of a multi-part content joined)."""
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str]
    logprobs: int | None = None
    echo: bool = False


# ----- generation plumbing ----------------------------------------------------------------


@dataclass
class Collected:
    """A whole (non-streamed) generation."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0

    def add(self, output: RequestOutput) -> None:
        self.text += output.text
        self.token_ids.extend(output.new_token_ids)
        self.logprobs.extend(output.logprobs)
        self.finish_reason = output.finish_reason
        self.num_prompt_tokens = output.num_prompt_tokens
        self.num_output_tokens = output.num_output_tokens
        self.num_cached_tokens = output.num_cached_tokens


def _usage(results: Sequence[Collected | RequestOutput]) -> dict:
    """OpenAI's usage object from the finished choices' token counts (the prompt counted once)."""
    prompt_tokens = results[0].num_prompt_tokens
    completion_tokens = sum(r.num_output_tokens for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": results[0].num_cached_tokens},
    }


def _envelope(
    request: GenerationRequest, object_name: str, created: int, model: str, choices: list[dict]
) -> dict:
    """The fields every response body and stream chunk of both endpoints shares."""
    return {
        "id": request.request_id,
        "object": object_name,
        "created": created,
        "model": model,
        "choices": choices,
    }


def _completion_response(
    object_name: str, request: GenerationRequest, model: str, choices: list[dict], results: list[Collected]
) -> dict:
    """The non-streaming response body: the choices plus token usage."""
    return _envelope(request, object_name, int(time.time()), model, choices) | {"usage": _usage(results)}


async def _collect(
    streams: list[AsyncIterator[RequestOutput]], request: GenerationRequest, http_request: Request
) -> list[Collected]:
    """Run every choice of a request to the end; abort them if the client disconnects first."""
    collected = [Collected() for _ in streams]

    async def drain() -> None:
        async for index, output in _merged(streams):
            collected[index].add(output)

    task = asyncio.create_task(drain())
    while not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
        if not task.done() and await http_request.is_disconnected():
            task.cancel()
            logger.info("client left; aborted %s", request.request_id)
            raise OpenAIError(499, "client closed the request")
    try:
        task.result()
    except (ValueError, RuntimeError) as error:
        raise _as_openai_error(error, request.request_id) from None
    return collected


async def _merged(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The outputs of several streams as they come, each with its stream's index. Closing
    this iterator (or a failure in one stream) closes them all, which aborts their requests."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for output in stream:
                await queue.put((index, output))
        except Exception as error:  # noqa: BLE001 - handed to the consumer below
            await queue.put((index, error))
        await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _as_openai_error(error: ValueError | RuntimeError, request_id: str) -> OpenAIError:
    """An engine failure as the client sees it: a bad request (400) or the engine's own (500)."""
    if isinstance(error, ValueError):
        return OpenAIError(400, str(error))
    logger.warning("request %s failed: %s", request_id, error)
    return OpenAIError(500, str(error))


def _sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def _decode_token(engine: AsyncEngine, token_id: int) -> str:
    return str(engine.tokenizer.decode([token_id]))


def _chat_logprobs(engine: AsyncEngine, entries: list[TokenLogprobs]) -> dict:
    def item(token_id: int, logprob: float) -> dict:
        token = _decode_token(engine, token_id)
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries
        ]
    }


def _completion_logprobs(engine: AsyncEngine, entries: list[TokenLogprobs], offset: int) -> dict:
    tokens = [_decode_token(engine, e.token_id) for e in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_decode_token(engine, t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


# ----- the app ----------------------------------------------------------------------------


def create_app(engines: dict[str, AsyncEngine]) -> FastAPI:
    """Build the FastAPI app serving ``engines`` (model name -> engine)."""
    app = FastAPI(title="Arena serving", version="0.1.0")
    app.state.engines = engines
    app.state.created = int(time.time())

    @app.exception_handler(OpenAIError)
    async def openai_error(_: Request, error: OpenAIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": sorted(engines)}

    @app.get("/v1/models")
    async def list_models() -> dict:
        data = [
            {
                "id": name,
                "object": "model",
                "created": app.state.created,
                "owned_by": "arena-serving",
                "max_model_len": engine.max_context,
            }
            for name, engine in sorted(engines.items())
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(http_request: Request):
        body = await _parse(http_request, ChatCompletionRequest)
        engine = _engine(engines, body.model)
        prompt_ids = _chat_prompt(engine, body.messages)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = body.sampling_params(body.max_completion_tokens or body.max_tokens, logprobs)
        request = GenerationRequest(f"chatcmpl-{uuid.uuid4().hex}", prompt_ids, params)
        streams = _start(engine, request, body)
        if body.stream:
            return StreamingResponse(
                _stream_chat(engine, request, streams, body), media_type="text/event-stream"
            )
        results = await _collect(streams, request, http_request)
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": _chat_logprobs(engine, result.logprobs) if logprobs is not None else None,
                "finish_reason": result.finish_reason,
            }
            for index, result in enumerate(results)
        ]
        return _completion_response("chat.completion", request, body.model, choices, results)

    @app.post("/v1/completions")
    async def completions(http_request: Request):
        body = await _parse(http_request, CompletionRequest)
        engine = _engine(engines, body.model)
        prompt_ids = _completion_prompt(engine, body.prompt)
        params = body.sampling_params(body.max_tokens or 16, body.logprobs)
        request = GenerationRequest(f"cmpl-{uuid.uuid4().hex}", prompt_ids, params)
        streams = _start(engine, request, body)
        prefix = str(engine.tokenizer.decode(prompt_ids)) if body.echo else ""
        if body.stream:
            return StreamingResponse(
                _stream_completion(engine, request, streams, body, prefix), media_type="text/event-stream"
            )
        results = await _collect(streams, request, http_request)
        choices = [
            {
                "index": index,
                "text": prefix + result.text,
                "logprobs": _completion_logprobs(engine, result.logprobs, len(prefix))
                if body.logprobs is not None
                else None,
                "finish_reason": result.finish_reason,
            }
            for index, result in enumerate(results)
        ]
        return _completion_response("text_completion", request, body.model, choices, results)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics_registry = CollectorRegistry()
    app.state.metrics_registry.register(EngineMetrics(engines))
    return app


async def _parse(http_request: Request, schema: type[BaseModel]):
    """Parse and validate a JSON body into ``schema``; OpenAIError 400 when it is not valid."""
    raw = await http_request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OpenAIError(400, f"request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        raise OpenAIError(400, f"invalid request: {param}: {first['msg']}", param=param) from None


def _engine(engines: dict[str, AsyncEngine], model: str) -> AsyncEngine:
    if model not in engines:
        raise OpenAIError(
            404,
            f"The model `{model}` does not exist. Available models: {', '.join(sorted(engines))}",
            code="model_not_found",
            param="model",
        )
    return engines[model]


def _chat_prompt(engine: AsyncEngine, messages: list[ChatMessage]) -> list[int]:
    """Render the conversation with the model's chat template and tokenize it."""
    conversation = [{"role": m.role, "content": m.text()} for m in messages]
    try:
        text = engine.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    except Exception as error:  # noqa: BLE001 - template errors (bad roles/order) are the client's
        raise OpenAIError(400, f"cannot apply the chat template: {error}", param="messages") from None
    return engine.tokenizer.encode(text, add_special_tokens=False, verbose=False)


def _completion_prompt(engine: AsyncEngine, prompt: str | list[int] | list[str]) -> list[int]:
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise OpenAIError(400, "only one prompt per request is supported", param="prompt")
        prompt = str(prompt[0])
    if isinstance(prompt, str):
        return engine.tokenizer.encode(prompt, add_special_tokens=False, verbose=False)
    token_ids = [t for t in prompt if isinstance(t, int)]
    vocab = len(engine.tokenizer)
    if len(token_ids) != len(prompt) or any(not 0 <= t < vocab for t in token_ids):
        raise OpenAIError(400, f"prompt token ids must be integers in [0, {vocab})", param="prompt")
    return token_ids


MAX_N = 16


def _start(
    engine: AsyncEngine, request: GenerationRequest, body: _SamplingFields
) -> list[AsyncIterator[RequestOutput]]:
    """Hand the request to the engine, which validates it: ``n`` sibling requests (the prompt's
    KV shared through the prefix cache; with a seed, sibling ``i`` draws with ``seed + i``), or
    one constrained choice. OpenAIError 400 when it cannot be served."""
    if not 1 <= body.n <= MAX_N:
        raise OpenAIError(400, f"n must be in [1, {MAX_N}]", param="n")
    choices = body.constraint
    if choices is not None and body.n != 1:
        raise OpenAIError(400, "choices returns one answer: use n=1", param="n")
    try:
        if choices is not None:
            return [_choose(engine, request, choices)]
        if body.n == 1:
            return [engine.generate(request)]
        return [engine.generate(sibling) for sibling in _siblings(request, body.n)]
    except InvalidParamsError as error:
        raise OpenAIError(400, str(error)) from None
    except ChoiceError as error:
        raise OpenAIError(400, str(error), param="choices") from None
    except RequestError as error:
        code = "context_length_exceeded" if "context length" in str(error) else None
        raise OpenAIError(400, str(error), code=code, param="messages" if code else None) from None


def _siblings(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    params = request.params
    return [
        GenerationRequest(
            f"{request.request_id}-{index}",
            request.prompt_token_ids,
            replace(params, seed=None if params.seed is None else params.seed + index),
            request.extra_key,
        )
        for index in range(n)
    ]


def _choose(
    engine: AsyncEngine, request: GenerationRequest, choices: list[str]
) -> AsyncIterator[RequestOutput]:
    """Score every choice (validated now) and stream the best one as a single final output."""
    choice_ids = tokenize_choices(engine.tokenizer, choices)
    scoring = scoring_requests(request.request_id, request.prompt_token_ids, choice_ids, request.extra_key)
    streams = [engine.generate(r) for r in scoring]
    return _chosen(request, choices, choice_ids, streams)


async def _chosen(
    request: GenerationRequest,
    choices: list[str],
    choice_ids: list[list[int]],
    streams: list[AsyncIterator[RequestOutput]],
) -> AsyncIterator[RequestOutput]:
    scores: list[list[float]] = [[] for _ in streams]
    cached = 0
    async for index, output in _merged(streams):
        scores[index].extend(output.prompt_logprobs)
        if index == 0:
            cached = output.num_cached_tokens
    best = best_choice(scores)
    yield RequestOutput(
        request_id=request.request_id,
        new_token_ids=choice_ids[best],
        text=choices[best],
        num_prompt_tokens=len(request.prompt_token_ids),
        num_output_tokens=len(choice_ids[best]),
        num_cached_tokens=cached,
        finished=True,
        finish_reason="stop",
    )


async def _stream_chat(
    engine: AsyncEngine,
    request: GenerationRequest,
    streams: list[AsyncIterator[RequestOutput]],
    body: ChatCompletionRequest,
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(
        index: int, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None
    ) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return _envelope(request, "chat.completion.chunk", created, body.model, [choice])

    for index in range(len(streams)):
        yield _sse(chunk(index, {"role": "assistant", "content": ""}))
    last: dict[int, RequestOutput] = {}
    async for index, output in _outputs(streams, request):
        if isinstance(output, OpenAIError):
            yield _sse(output.body())
            break
        last[index] = output
        logprobs = _chat_logprobs(engine, output.logprobs) if request.params.logprobs is not None else None
        if output.text or logprobs:
            yield _sse(chunk(index, {"content": output.text}, logprobs=logprobs))
        if output.finished:
            yield _sse(chunk(index, {}, output.finish_reason))
    if last and body.include_usage_in_stream:
        yield _sse(chunk(0, {}) | {"choices": [], "usage": _usage(list(last.values()))})
    yield _sse("[DONE]")


async def _stream_completion(
    engine: AsyncEngine,
    request: GenerationRequest,
    streams: list[AsyncIterator[RequestOutput]],
    body: CompletionRequest,
    prefix: str,
) -> AsyncIterator[str]:
    created = int(time.time())
    offsets = [len(prefix)] * len(streams)

    def chunk(index: int, text: str, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        return _envelope(request, "text_completion", created, body.model, [choice])

    if prefix:
        for index in range(len(streams)):
            yield _sse(chunk(index, prefix))
    last: dict[int, RequestOutput] = {}
    async for index, output in _outputs(streams, request):
        if isinstance(output, OpenAIError):
            yield _sse(output.body())
            break
        last[index] = output
        logprobs = None
        if body.logprobs is not None:
            logprobs = _completion_logprobs(engine, output.logprobs, offsets[index])
        offsets[index] += len(output.text)
        if output.text or logprobs or output.finished:
            yield _sse(chunk(index, output.text, output.finish_reason, logprobs))
    if last and body.include_usage_in_stream:
        yield _sse(chunk(0, "") | {"choices": [], "usage": _usage(list(last.values()))})
    yield _sse("[DONE]")


async def _outputs(
    streams: list[AsyncIterator[RequestOutput]], request: GenerationRequest
) -> AsyncIterator[tuple[int, RequestOutput | OpenAIError]]:
    """The engine's outputs, a failure turned into a final OpenAI error (the headers are already
    sent, so it goes into the stream). A client disconnect cancels the response task, which
    closes the engine iterators and so aborts the requests."""
    try:
        async for index, output in _merged(streams):
            yield index, output
    except (ValueError, RuntimeError) as error:
        yield 0, _as_openai_error(error, request.request_id)


class EngineMetrics:
    """A Prometheus collector reading every engine's counters and gauges at scrape time."""

    COUNTERS = (
        (
            "serving_prefix_cache_hit_tokens",
            "Prompt tokens whose KV came from the prefix cache",
            "cached_tokens",
        ),
        ("serving_prompt_tokens", "Prompt tokens of admitted requests", "prompt_tokens"),
        ("serving_generation_tokens", "Output tokens generated", "generation_tokens"),
    )
    GAUGES = (
        ("serving_kv_slots_used", "KV token slots in use (cached prefixes included)", "kv_slots_used"),
        ("serving_kv_slots_total", "KV token slots of the pool", "kv_slots_total"),
        ("serving_requests_running", "Requests being decoded or prefilled", "requests_running"),
        ("serving_requests_waiting", "Requests queued", "requests_waiting"),
    )

    def __init__(self, engines: dict[str, AsyncEngine]) -> None:
        self.engines = engines

    def collect(self) -> Iterator[Metric]:
        stats = {name: engine.engine.stats() for name, engine in sorted(self.engines.items())}
        for family, kinds in ((CounterMetricFamily, self.COUNTERS), (GaugeMetricFamily, self.GAUGES)):
            for metric_name, documentation, field_name in kinds:
                metric = family(metric_name, documentation, labels=["model"])
                for model, snapshot in stats.items():
                    metric.add_metric([model], getattr(snapshot, field_name))
                yield metric
