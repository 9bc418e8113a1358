"""The engine: the step loop (schedule -> run model -> sample -> finish) and its async front.

:class:`Engine` is synchronous and single-threaded. :class:`AsyncEngine` runs it in a background
thread and hands each caller an async iterator of :class:`RequestOutput` deltas, so a web
server's event loop never blocks on the model.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from serving.detokenizer import TextStream
from serving.memory import slots_for_memory
from serving.model_runner import MemoryPlan, ModelRunner
from serving.models import load_config, load_model
from serving.models.llama import head_dim_of
from serving.sampling import PendingSample, Sampler, SamplingParams, TokenLogprobs
from serving.scheduler import ScheduledBatch, Scheduler
from serving.sequence import GenerationRequest, RequestOutput, Sequence

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the engine cannot serve (too long, bad parameters); the client gets a 400."""


@dataclass
class LaunchedStep:
    """A model step queued on the device: its batch, the sequences that sample, their tokens."""

    batch: ScheduledBatch
    sampling: list[Sequence]
    sample: PendingSample


@dataclass
class EngineConfig:
    """How to load and size one served model."""

    model_path: str
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    max_context: int | None = None  # None: the model's max_position_embeddings, capped at 4096
    max_running: int = 32
    max_batch_tokens: int = 512
    kv_memory_gb: float | None = None  # None: max_running full contexts, capped at 32k tokens
    kv_slots: int | None = None  # exact pool size in tokens (overrides kv_memory_gb; tests)
    cuda_graphs: bool | None = None  # None: on for CUDA
    detokenize: bool = True  # False: token ids only (benchmarks); stop strings then unsupported
    # Launch the next decode step before reading this one's tokens, so the GPU never waits for
    # the host between steps (see Engine.step). None: on for CUDA.
    overlap: bool | None = None

    def torch_dtype(self) -> torch.dtype:
        if self.dtype is None:
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)


def eos_token_ids(model_path: str | Path, config, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-sequence ids from generation_config.json, config.json and the tokenizer."""
    ids: set[int] = set()
    sources = [getattr(config, "eos_token_id", None), tokenizer.eos_token_id]
    if (Path(model_path) / "generation_config.json").is_file():
        sources.append(GenerationConfig.from_pretrained(model_path).eos_token_id)
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def sliding_window(model_config) -> int | None:
    """The attention window of a model that uses one (Mistral v0.1, Qwen2 with use_sliding_window)."""
    window = getattr(model_config, "sliding_window", None)
    if not window or not getattr(model_config, "use_sliding_window", True):
        return None
    return int(window)


class Engine:
    """One model's step loop. Not thread-safe: one thread drives it (see :class:`AsyncEngine`)."""

    def __init__(self, config: EngineConfig, model=None) -> None:
        self.config = config
        model_config = load_config(config.model_path)
        self.max_context = config.max_context or min(model_config.max_position_embeddings, 4096)
        window = sliding_window(model_config)
        if window is not None and window < self.max_context:
            # Within the window, sliding-window attention is full attention: cap the context there.
            logger.info("capping context at the sliding window of %d tokens", window)
            self.max_context = window
        self.tokenizer = AutoTokenizer.from_pretrained(config.model_path, local_files_only=True)
        self.eos_token_ids = eos_token_ids(config.model_path, model_config, self.tokenizer)
        dtype = config.torch_dtype()
        if model is None:
            model = load_model(config.model_path, config.device, dtype, self.max_context, model_config)
        num_slots = self._num_slots(model_config, dtype)
        self.max_context = min(self.max_context, num_slots - 1)
        use_graphs = config.device.startswith("cuda") if config.cuda_graphs is None else config.cuda_graphs
        plan = MemoryPlan(num_slots, config.max_running, self.max_context)
        self.runner = ModelRunner(model, plan, use_graphs)
        self.scheduler = Scheduler(
            self.runner.kv_pool, self.runner.req_pool, config.max_running, config.max_batch_tokens
        )
        self.sampler = Sampler()
        self.overlap = config.device.startswith("cuda") if config.overlap is None else config.overlap
        self._in_flight: LaunchedStep | None = None
        self._streams: dict[str, TextStream] = {}
        self._arrivals = itertools.count()

    def _num_slots(self, model_config, dtype: torch.dtype) -> int:
        layers, kv_heads = model_config.num_hidden_layers, model_config.num_key_value_heads
        if self.config.kv_slots is not None:
            return self.config.kv_slots + 1  # + the padding slot
        if self.config.kv_memory_gb is not None:
            budget = int(self.config.kv_memory_gb * 2**30)
            return slots_for_memory(budget, layers, kv_heads, head_dim_of(model_config), dtype)
        # Default: room for every running request at full context, capped at 32k tokens (at least
        # one full context), which is plenty for the CPU path; GPU deployments set kv_memory_gb.
        return min(self.config.max_running * self.max_context, max(self.max_context, 32768)) + 1

    # ----- requests -------------------------------------------------------------------------

    def check_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise :class:`RequestError` when the request cannot be served; else return."""
        params.validate()
        if not prompt_token_ids:
            raise RequestError("the prompt is empty")
        prompt_len = len(prompt_token_ids)
        if prompt_len >= self.max_context:
            raise RequestError(
                f"This model's maximum context length is {self.max_context} tokens. However, your messages "
                f"resulted in {prompt_len} tokens. Please reduce the length of the messages."
            )
        if params.max_tokens is not None and prompt_len + params.max_tokens > self.max_context:
            raise RequestError(
                f"This model's maximum context length is {self.max_context} tokens. However, you requested "
                f"{prompt_len + params.max_tokens} tokens ({prompt_len} in the messages, {params.max_tokens} "
                "in the completion). Please reduce the length of the messages or completion."
            )

    def add_request(self, request: GenerationRequest) -> None:
        """Validate and queue a request."""
        self.check_request(request.prompt_token_ids, request.params)
        if request.params.stop and not self.config.detokenize:
            raise RequestError("stop strings need detokenization, which this engine has turned off")
        if request.request_id in self._streams:
            raise RequestError(f"duplicate request id {request.request_id!r}")
        generator = None
        if request.params.seed is not None:
            generator = torch.Generator(device=self.runner.device).manual_seed(request.params.seed)
        seq = Sequence(request, next(self._arrivals), generator)
        seq.max_total_tokens = min(
            self.max_context, len(request.prompt_token_ids) + (request.params.max_tokens or self.max_context)
        )
        self._streams[request.request_id] = TextStream(
            self.tokenizer if self.config.detokenize else None, request.params.stop
        )
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request wherever it is; returns its final output, or None if unknown."""
        seq = self.scheduler.find(request_id)
        if seq is None:
            return None
        self.scheduler.finish(seq, "abort")
        return self._output(seq, [], [], self._streams.pop(request_id).flush())

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or self._in_flight is not None

    # ----- the loop -------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one model step and report what each request produced.

        With ``overlap``, a steady decode step is launched before the host reads the previous
        one's tokens (:meth:`Scheduler.schedule_ahead`), the input tokens going from sampler to
        model on the device. The host's work between steps (reading tokens, detokenizing, stop
        checks, scheduling, the graph launch) then runs while the GPU computes. Each call still
        returns exactly one step's outputs, in order; a sequence that stops on a token has had
        one more step launched, whose token is dropped.
        """
        launched, self._in_flight = self._in_flight, None
        if launched is None:
            batch = self.scheduler.schedule()
            if batch is None:
                return []
            launched = self._launch(batch)
        if self.overlap and self._may_run_ahead(launched):
            ahead = self.scheduler.schedule_ahead(launched.batch)
            if ahead is not None:
                try:
                    self._in_flight = self._launch(ahead, launched.sample.tokens)
                except Exception:
                    self._in_flight = launched  # still to be read; the caller decides about the requests
                    raise
        result = launched.sample.result()
        return [
            self._append_token(seq, token, logprobs)
            for seq, token, logprobs in zip(launched.sampling, result.token_ids, result.logprobs, strict=True)
            if not seq.is_finished  # stopped (or aborted) while this step was already launched
        ]

    def _launch(self, batch: ScheduledBatch, unread_tokens: torch.Tensor | None = None) -> LaunchedStep:
        """Queue the batch's forward pass and sampling on the device."""
        sampling = [seq for i, seq in enumerate(batch.sequences) if batch.samples(i)]
        try:
            logits = self.runner.forward(batch, unread_tokens)
        except Exception:
            self.scheduler.rollback(batch)  # no slot may leak; the caller decides about the requests
            raise
        self.scheduler.advance(batch)
        return LaunchedStep(batch, sampling, self.sampler.launch(logits, sampling))

    @staticmethod
    def _may_run_ahead(launched: LaunchedStep) -> bool:
        """Whether the step after ``launched`` may start before its tokens are read: every
        sequence decodes and samples, none needs its token history on the host (penalties),
        and none can reach its length limit with the unread token."""
        sequences = launched.batch.sequences
        return (
            launched.batch.is_decode
            and len(launched.sampling) == len(sequences)
            and all(
                not seq.params.has_penalties and len(seq.token_ids) + 1 < seq.max_total_tokens
                for seq in sequences
            )
        )

    def _append_token(self, seq: Sequence, token: int, logprobs: TokenLogprobs | None) -> RequestOutput:
        """Add a sampled token, detokenize it, and finish the request if a stop condition hit."""
        seq.token_ids.append(token)
        stream = self._streams[seq.request_id]
        text = stream.push([token])
        reason = self._finish_reason(seq, token, stream)
        if reason is not None:
            self.scheduler.finish(seq, reason)
            text += self._streams.pop(seq.request_id).flush()
        return self._output(seq, [token], [logprobs] if logprobs else [], text)

    def _finish_reason(self, seq: Sequence, token: int, stream: TextStream) -> str | None:
        params = seq.params
        if stream.stopped or token in params.stop_token_ids:
            return "stop"
        if not params.ignore_eos and token in self.eos_token_ids:
            return "stop"
        if len(seq.token_ids) >= seq.max_total_tokens:
            return "length"
        return None

    @staticmethod
    def _output(seq: Sequence, tokens: list[int], logprobs: list[TokenLogprobs], text: str) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=tokens,
            text=text,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens,
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            logprobs=logprobs,
        )

    def generate(self, requests: list[GenerationRequest]) -> dict[str, list[int]]:
        """Run requests to completion (offline use: tests, benchmarks); output token ids by id."""
        for request in requests:
            self.add_request(request)
        outputs: dict[str, list[int]] = {r.request_id: [] for r in requests}
        while self.has_work:
            for output in self.step():
                outputs[output.request_id].extend(output.new_token_ids)
        return outputs


class AsyncEngine:
    """Runs an :class:`Engine` in a daemon thread; ``generate`` streams outputs to asyncio callers."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._inbox: queue.Queue[tuple[str, object]] = queue.Queue()
        self._listeners: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.engine.tokenizer

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    def check_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Same as :meth:`Engine.check_request` (pure, safe from any thread)."""
        self.engine.check_request(prompt_token_ids, params)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs until it finishes; closing the iterator early aborts it."""
        self.check_request(request.prompt_token_ids, request.params)
        outputs: asyncio.Queue = asyncio.Queue()
        self._listeners[request.request_id] = (asyncio.get_running_loop(), outputs)
        self._inbox.put(("add", request))
        finished = False
        try:
            while not finished:
                item = await outputs.get()
                if isinstance(item, Exception):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._listeners.pop(request.request_id, None)
            if not finished:
                self._inbox.put(("abort", request.request_id))

    def shutdown(self) -> None:
        """Stop the loop thread (requests in flight are dropped)."""
        self._stopped.set()
        self._inbox.put(("wake", None))
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._drain_inbox(block=not self.engine.has_work)
            if not self.engine.has_work:
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # noqa: BLE001 - a failed step must not kill the server
                logger.exception("engine %s step failed; failing its requests", self.name)
                self._fail_all(error)
                continue
            for output in outputs:
                self._deliver(output.request_id, output)

    def _drain_inbox(self, block: bool) -> None:
        try:
            kind, payload = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(kind, payload)
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, kind: str, payload) -> None:
        if kind == "add":
            try:
                self.engine.add_request(payload)
            except ValueError as error:
                self._deliver(payload.request_id, RequestError(str(error)))
        elif kind == "abort":
            self.engine.abort(payload)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self._listeners):
            self.engine.abort(request_id)
            self._deliver(request_id, RuntimeError(f"engine failure: {error}"))

    def _deliver(self, request_id: str, item: RequestOutput | Exception) -> None:
        listener = self._listeners.get(request_id)
        if listener is None:
            return
        loop, outputs = listener
        try:
            loop.call_soon_threadsafe(outputs.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed
            self._listeners.pop(request_id, None)
