"""The engine: the step loop (schedule -> run model -> sample -> finish).

:class:`Engine` is synchronous and single-threaded; ``serving/async_engine.py`` runs it in a
thread for the web server. Its configuration and the checkpoint's limits are in
``serving/config.py``, the KV pool's size in ``serving/kv_sizing.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from serving.config import EngineConfig, context_limit, eos_token_ids
from serving.detokenizer import TextStream
from serving.kv_sizing import num_kv_slots
from serving.lora.adapter import AdapterError, LoraAdapter, load_adapter
from serving.lora.pool import ALL_TARGETS, AdapterInUseError, AdapterPool
from serving.model_runner import MemoryPlan, ModelRunner
from serving.models import load_config
from serving.parallel import SINGLE, init_tensor_parallel, leave_tensor_parallel
from serving.prefix_cache import NoPrefixCache
from serving.radix_cache import RadixCache
from serving.sampling import PendingSample, Sampler, TokenLogprobs
from serving.scheduler import ScheduledBatch, Scheduler
from serving.sequence import GenerationRequest, RequestOutput, Sequence
from serving.tp_worker import Workers, build_rank_model, check_tensor_parallel, share_plan

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the engine cannot serve (too long, bad parameters); the client gets a 400."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for monitoring (``GET /metrics``): counters since start and current gauges."""

    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    generation_tokens: int
    kv_slots_used: int  # cached prefixes included
    kv_slots_total: int
    requests_running: int
    requests_waiting: int


@dataclass
class LaunchedStep:
    """A model step queued on the device: its batch, the sequences that sample, their tokens,
    and the scoring sequences with their number of scored tokens and (on the device) the scores."""

    batch: ScheduledBatch
    sampling: list[Sequence]
    sample: PendingSample | None
    scoring: list[tuple[Sequence, int]]
    scores: torch.Tensor | None


class Engine:
    """One model's step loop. Not thread-safe: one thread drives it (see :class:`AsyncEngine`)."""

    def __init__(self, config: EngineConfig, model=None) -> None:
        self.config = config
        model_config = load_config(config.model_path)
        max_context = context_limit(config, model_config)
        self.tokenizer = AutoTokenizer.from_pretrained(config.model_path, local_files_only=True)
        self.eos_token_ids = eos_token_ids(config.model_path, model_config, self.tokenizer)
        dtype = config.torch_dtype()
        check_tensor_parallel(config, model_config)
        self.workers: Workers | None = None
        if config.tensor_parallel > 1 and model is not None:
            raise ValueError("a tensor-parallel engine loads its own shards; pass no model")
        try:
            self._build(config, model, model_config, max_context, dtype)
        except BaseException:
            if self.workers is not None:  # they would wait for this rank forever
                self.workers.terminate()
                leave_tensor_parallel()
            raise
        self.generation_tokens = 0  # output tokens produced since start (/metrics)
        self.sampler = Sampler()
        self.overlap = config.use_overlap and self.runner.attention.supports_overlap
        self._in_flight: LaunchedStep | None = None
        self._streams: dict[str, TextStream] = {}

    def _build(self, config: EngineConfig, model, model_config, max_context: int, dtype: torch.dtype) -> None:
        """Load (this rank's shard of) the model, its adapters, KV memory, runner and scheduler;
        under tensor parallelism, start the workers first (they load theirs meanwhile)."""
        channel = None
        tp = SINGLE
        if config.tensor_parallel > 1:
            self.workers = Workers(config, max_context)
            channel = self.workers.channel
            tp = init_tensor_parallel(0, config.tensor_parallel, config.device, self.workers.init_method)
        if model is None:
            model = build_rank_model(config, model_config, max_context, tp)
        self.model_config = model_config
        self.adapters: AdapterPool | None = None
        if config.lora_enabled:
            targets = config.lora_targets or ALL_TARGETS
            self.adapters = AdapterPool(model, model_config, config.max_loras, config.max_lora_rank, targets)
            for name, path in config.lora_adapters.items():
                self.adapters.register(name, path)
        lora_bytes = self.adapters.device_bytes if self.adapters is not None else 0
        num_slots = num_kv_slots(config, model_config, max_context, dtype, lora_bytes)
        self.max_context = min(max_context, num_slots - 1)
        plan = MemoryPlan(num_slots, config.max_running, self.max_context)
        if self.workers is not None:
            share_plan(model.tp, plan, next(model.parameters()).device)
        self.runner = ModelRunner(
            model,
            plan,
            config.use_cuda_graphs,
            config.attention_backend,
            config.sparse_options(),
            self.adapters,
            channel,
        )
        self.runner.mirror_adapters()  # under tensor parallelism, every rank holds its shard of each slot
        kv_pool = self.runner.kv_pool
        use_cache = config.prefix_cache and self.runner.attention.supports_prefix_cache
        prefix_cache = RadixCache(kv_pool) if use_cache else NoPrefixCache(kv_pool)
        self.scheduler = Scheduler(
            kv_pool,
            self.runner.req_pool,
            config.max_running,
            config.max_batch_tokens,
            prefix_cache,
            config.schedule_policy,
            adapters=self.adapters,
        )

    # ----- requests -------------------------------------------------------------------------

    def new_sequence(self, request: GenerationRequest) -> Sequence:
        """Validate a request and build its sequence: the one place requests are checked.

        Raises :class:`RequestError` (or ``InvalidParamsError``) when it cannot be served. Reads
        no engine state that the step loop changes, so it is safe from any thread.
        """
        params = request.params
        params.validate()
        prompt_len = len(request.prompt_token_ids)
        if prompt_len == 0:
            raise RequestError("the prompt is empty")
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
        if params.stop and not self.config.detokenize:
            raise RequestError("stop strings need detokenization, which this engine has turned off")
        if request.score_from is not None and not 1 <= request.score_from < prompt_len:
            raise RequestError(f"score_from must be in [1, {prompt_len}) for a prompt of {prompt_len} tokens")
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.runner.device).manual_seed(params.seed)
        max_total = min(self.max_context, prompt_len + (params.max_tokens or self.max_context))
        seq = Sequence(request, max_total, generator)
        if request.adapter is not None:
            # KV computed under an adapter is shared only with requests for the same registration.
            seq.extra_key = (request.extra_key, "lora", request.adapter, self._adapter(request.adapter).uid)
        return seq

    def _adapter(self, name: str) -> LoraAdapter:
        if self.adapters is None:
            raise RequestError(f"adapter {name!r} requested but this engine serves no LoRA adapters")
        adapter = self.adapters.adapters.get(name)
        if adapter is None:
            raise RequestError(f"unknown adapter {name!r}; registered: {self.adapters.names()}")
        return adapter

    # ----- adapters (register/remove from the thread that drives the engine) ----------------

    def _pool(self) -> AdapterPool:
        if self.adapters is None:
            raise AdapterError("this engine was started without LoRA (use --lora or --enable-lora)")
        return self.adapters

    def load_adapter(self, name: str, path: str | Path) -> LoraAdapter:
        """Read and validate an adapter without registering it (safe from any thread)."""
        return load_adapter(name, path, self.model_config, self._pool().dtype)

    def add_adapter(self, adapter: LoraAdapter) -> None:
        """Register a loaded adapter; requests may name it from now on."""
        self._pool().add(adapter)

    def remove_adapter(self, name: str) -> None:
        """Unregister an adapter no live request uses (:class:`AdapterInUseError` otherwise)."""
        pool = self._pool()
        if name not in pool:
            raise KeyError(name)
        users = [seq for seq in (*self.scheduler.running, *self.scheduler.waiting) if seq.adapter == name]
        if users:
            raise AdapterInUseError(f"adapter {name!r} is in use by {len(users)} request(s); retry later")
        pool.unregister(name)

    def adapter_names(self) -> list[str]:
        """Registered adapters (a snapshot; safe from any thread)."""
        return self.adapters.names() if self.adapters is not None else []

    def add(self, seq: Sequence) -> None:
        """Queue a sequence built by :meth:`new_sequence` (its request id must be new, its
        adapter still registered)."""
        if seq.adapter is not None:
            self._adapter(seq.adapter)
        if seq.request_id in self._streams:
            raise RequestError(f"duplicate request id {seq.request_id!r}")
        self._streams[seq.request_id] = TextStream(
            self.tokenizer if self.config.detokenize else None, seq.params.stop
        )
        self.scheduler.add(seq)

    def add_request(self, request: GenerationRequest) -> None:
        """Validate and queue a request."""
        self.add(self.new_sequence(request))

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

    def stats(self) -> EngineStats:
        """Counters and gauges; plain reads of ints and lengths, safe from another thread."""
        scheduler, pool = self.scheduler, self.runner.kv_pool
        return EngineStats(
            prompt_tokens=scheduler.stats.prompt_tokens,
            cached_tokens=scheduler.stats.cached_tokens,
            generation_tokens=self.generation_tokens,
            kv_slots_used=pool.capacity - pool.num_free,
            kv_slots_total=pool.capacity,
            requests_running=len(scheduler.running),
            requests_waiting=len(scheduler.waiting),
        )

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
        if self.workers is not None:
            self.workers.check_alive()
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
        outputs = self._scored(launched)
        if launched.sample is None:
            return outputs
        result = launched.sample.result()
        return outputs + [
            self._append_token(seq, token, logprobs)
            for seq, token, logprobs in zip(launched.sampling, result.token_ids, result.logprobs, strict=True)
            if not seq.is_finished  # stopped (or aborted) while this step was already launched
        ]

    def _launch(self, batch: ScheduledBatch, unread_tokens: torch.Tensor | None = None) -> LaunchedStep:
        """Queue the batch's forward pass, sampling and scoring on the device."""
        sampling = [seq for i, seq in enumerate(batch.sequences) if batch.samples(i)]
        scoring, targets = [], []
        for index, seq in enumerate(batch.sequences):
            positions = batch.score_positions(index)
            if seq.score_from is not None:
                scoring.append((seq, len(positions)))
                targets.extend(seq.token_ids[p + 1] for p in positions)
        try:
            logits = self.runner.forward(batch, unread_tokens)
        except Exception:
            self.scheduler.rollback(batch)  # no slot may leak; the caller decides about the requests
            raise
        self.scheduler.advance(batch)
        for seq, keep in self.runner.evictions(batch):  # H2O: KV over budget
            self.scheduler.drop_kv(seq, keep)
        sample = self.sampler.launch(logits[: len(sampling)], sampling) if sampling else None
        scores = None
        if targets:
            rows = torch.log_softmax(logits[len(sampling) :], dim=-1)
            scores = rows.gather(1, torch.tensor(targets, device=rows.device)[:, None]).squeeze(1)
        return LaunchedStep(batch, sampling, sample, scoring, scores)

    def _scored(self, launched: LaunchedStep) -> list[RequestOutput]:
        """Collect a step's prompt logprobs; a scoring sequence whose tokens are all computed
        finishes with them."""
        values = launched.scores.tolist() if launched.scores is not None else []
        outputs, offset = [], 0
        for seq, count in launched.scoring:
            seq.scores.extend(values[offset : offset + count])
            offset += count
            if seq.is_finished or seq.num_computed < len(seq.token_ids):
                continue
            scores = list(seq.scores)  # before finishing, which resets the sequence's state
            self.scheduler.finish(seq, "stop")
            self._streams.pop(seq.request_id)
            output = self._output(seq, [], [], "")
            output.prompt_logprobs = scores
            outputs.append(output)
        return outputs

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
        self.generation_tokens += 1
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
            num_cached_tokens=seq.cached_tokens,
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            logprobs=logprobs,
        )

    def close(self) -> None:
        """Stop the tensor-parallel workers and leave their process group (nothing otherwise).
        Call it from the thread that drives the engine, after its last step."""
        if self.workers is None:
            return
        workers, self.workers = self.workers, None
        try:
            self.runner.stop_workers()
        except OSError:  # a worker already gone: its pipe is closed
            logger.warning("a tensor-parallel worker had exited before the engine stopped")
        workers.join()
        leave_tensor_parallel()

    def generate(self, requests: list[GenerationRequest]) -> dict[str, list[int]]:
        """Run requests to completion (offline use: tests, benchmarks); output token ids by id."""
        for request in requests:
            self.add_request(request)
        outputs: dict[str, list[int]] = {r.request_id: [] for r in requests}
        while self.has_work:
            for output in self.step():
                outputs[output.request_id].extend(output.new_token_ids)
        return outputs
