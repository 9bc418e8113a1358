"""OpenAI-compatible HTTP API over one or more :class:`~serving.engine.AsyncEngine` s.

Routes: ``/v1/chat/completions``, ``/v1/completions`` (both with SSE streaming and usage),
``/v1/models`` and ``/health``. Errors use OpenAI's shape ``{"error": {"message", "type",
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.async_engine import AsyncEngine
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

    def add(self, output: RequestOutput) -> None:
        self.text += output.text
        self.token_ids.extend(output.new_token_ids)
        self.logprobs.extend(output.logprobs)
        self.finish_reason = output.finish_reason
        self.num_prompt_tokens = output.num_prompt_tokens
        self.num_output_tokens = output.num_output_tokens


def _usage(counts: Collected | RequestOutput) -> dict:
    """OpenAI's usage object from a finished request's token counts."""
    prompt_tokens, completion_tokens = counts.num_prompt_tokens, counts.num_output_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _envelope(request: GenerationRequest, object_name: str, created: int, model: str, choices: list[dict]) -> dict:
    """The fields every response body and stream chunk of both endpoints shares."""
    return {"id": request.request_id, "object": object_name, "created": created, "model": model, "choices": choices}


def _completion_response(object_name: str, request: GenerationRequest, model: str, choice: dict,
                         result: Collected) -> dict:
    """The non-streaming response body: one choice plus token usage."""
    return _envelope(request, object_name, int(time.time()), model, [choice]) | {"usage": _usage(result)}


async def _collect(
    outputs: AsyncIterator[RequestOutput], request: GenerationRequest, http_request: Request
) -> Collected:
    """Run a request to the end; abort it if the client disconnects first."""
    collected = Collected()

    async def drain() -> None:
        async for output in outputs:
            collected.add(output)

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
        request = _generation_request("chatcmpl", prompt_ids, params, body.n)
        outputs = _start(engine, request)
        if body.stream:
            return StreamingResponse(_stream_chat(engine, request, outputs, body), media_type="text/event-stream")
        result = await _collect(outputs, request, http_request)
        message = {"role": "assistant", "content": result.text}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": _chat_logprobs(engine, result.logprobs) if logprobs is not None else None,
            "finish_reason": result.finish_reason,
        }
        return _completion_response("chat.completion", request, body.model, choice, result)

    @app.post("/v1/completions")
    async def completions(http_request: Request):
        body = await _parse(http_request, CompletionRequest)
        engine = _engine(engines, body.model)
        prompt_ids = _completion_prompt(engine, body.prompt)
        params = body.sampling_params(body.max_tokens or 16, body.logprobs)
        request = _generation_request("cmpl", prompt_ids, params, body.n)
        outputs = _start(engine, request)
        prefix = str(engine.tokenizer.decode(prompt_ids)) if body.echo else ""
        if body.stream:
            return StreamingResponse(
                _stream_completion(engine, request, outputs, body, prefix), media_type="text/event-stream"
            )
        result = await _collect(outputs, request, http_request)
        choice = {
            "index": 0,
            "text": prefix + result.text,
            "logprobs": _completion_logprobs(engine, result.logprobs, len(prefix))
            if body.logprobs is not None
            else None,
            "finish_reason": result.finish_reason,
        }
        return _completion_response("text_completion", request, body.model, choice, result)

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


def _generation_request(prefix: str, prompt_ids: list[int], params: SamplingParams, n: int) -> GenerationRequest:
    if n != 1:
        raise OpenAIError(400, "only n=1 is supported", param="n")
    return GenerationRequest(f"{prefix}-{uuid.uuid4().hex}", prompt_ids, params)


def _start(engine: AsyncEngine, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
    """Hand the request to the engine, which validates it; OpenAIError 400 when it cannot be served."""
    try:
        return engine.generate(request)
    except InvalidParamsError as error:
        raise OpenAIError(400, str(error)) from None
    except RequestError as error:
        code = "context_length_exceeded" if "context length" in str(error) else None
        raise OpenAIError(400, str(error), code=code, param="messages" if code else None) from None


async def _stream_chat(
    engine: AsyncEngine,
    request: GenerationRequest,
    outputs: AsyncIterator[RequestOutput],
    body: ChatCompletionRequest,
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return _envelope(request, "chat.completion.chunk", created, body.model, [choice])

    yield _sse(chunk({"role": "assistant", "content": ""}))
    last: RequestOutput | None = None
    async for output in _outputs(outputs, request):
        if isinstance(output, OpenAIError):
            yield _sse(output.body())
            break
        last = output
        logprobs = _chat_logprobs(engine, output.logprobs) if request.params.logprobs is not None else None
        if output.text or logprobs:
            yield _sse(chunk({"content": output.text}, logprobs=logprobs))
        if output.finished:
            yield _sse(chunk({}, output.finish_reason))
    if last is not None and body.include_usage_in_stream:
        yield _sse(chunk({}) | {"choices": [], "usage": _usage(last)})
    yield _sse("[DONE]")


async def _stream_completion(
    engine: AsyncEngine,
    request: GenerationRequest,
    outputs: AsyncIterator[RequestOutput],
    body: CompletionRequest,
    prefix: str,
) -> AsyncIterator[str]:
    created = int(time.time())
    offset = len(prefix)

    def chunk(text: str, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        return _envelope(request, "text_completion", created, body.model, [choice])

    if prefix:
        yield _sse(chunk(prefix))
    last: RequestOutput | None = None
    async for output in _outputs(outputs, request):
        if isinstance(output, OpenAIError):
            yield _sse(output.body())
            break
        last = output
        logprobs = None
        if body.logprobs is not None:
            logprobs = _completion_logprobs(engine, output.logprobs, offset)
        offset += len(output.text)
        if output.text or logprobs or output.finished:
            yield _sse(chunk(output.text, output.finish_reason, logprobs))
    if last is not None and body.include_usage_in_stream:
        yield _sse(chunk("") | {"choices": [], "usage": _usage(last)})
    yield _sse("[DONE]")


async def _outputs(
    outputs: AsyncIterator[RequestOutput], request: GenerationRequest
) -> AsyncIterator[RequestOutput | OpenAIError]:
    """The engine's outputs, a failure turned into a final OpenAI error (the headers are already
    sent, so it goes into the stream). A client disconnect cancels the response task, which
    closes the engine iterator and so aborts the request."""
    try:
        async for output in outputs:
            yield output
    except (ValueError, RuntimeError) as error:
        yield _as_openai_error(error, request.request_id)
