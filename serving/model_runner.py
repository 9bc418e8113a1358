"""Runs the model on a scheduled batch: builds the :class:`ForwardBatch`, allocates the KV
memory and picks the attention backend that alone reads and writes it, and replays CUDA graphs
for decode batches on the GPU (one graph per batch-size bucket).

With an :class:`~serving.lora.pool.AdapterPool`, a batch also carries its rows' adapter slots
(:class:`~serving.lora.batch.LoraBatch`); decode graphs keep them in a row of their static
input buffer, so batches mixing adapters (and the base model) replay the same graphs.

Under tensor parallelism (``serving/parallel.py``) the driver's runner sends each step's packed
inputs (or, for a decode graph, its static input buffer) to the workers' runners over pipes;
they wait for them in :meth:`ModelRunner.follow` and run the same forward on their shards: one
scheduler, N ranks in lockstep."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from serving.attention import ForwardBatch, ForwardMode, make_attention_backend
from serving.lora.batch import NO_ADAPTER, LoraBatch
from serving.lora.pool import AdapterPool
from serving.memory import PADDING_SLOT, KVPool, ReqToTokenPool
from serving.models import LlamaForCausalLM
from serving.models.llama import head_dim_of
from serving.parallel import StepChannel, TensorParallel
from serving.scheduler import ScheduledBatch
from serving.sequence import Sequence

logger = logging.getLogger(__name__)


# What a driver sends its workers each step (see StepMessage).
STOP, STEP, GRAPH, LORA, EVICT = "stop", "step", "graph", "lora", "evict"


@dataclass(frozen=True)
class StepMessage:
    """One message, driver -> workers: ``kind`` STEP (eager: the packed inputs and field sizes,
    and the rows' adapter slots when any row has one), GRAPH (a decode-graph bucket and the used
    columns of the static input buffer), LORA (an adapter pool's ``event``, between steps),
    EVICT (``evictions``: the attention backend's ``evict`` arguments after a step) or STOP.
    ``attention_plan`` is the backend's ``begin_step`` plan; ``unread``: how many input tokens
    follow by device broadcast (a batch scheduled ahead)."""

    kind: str
    is_decode: bool = False
    sizes: tuple[int, ...] = ()
    inputs: np.ndarray | None = None
    graph_size: int = 0
    unread: int = 0
    lora_slots: tuple[int, ...] = ()
    num_new_tokens: tuple[int, ...] = ()
    event: tuple | None = None
    attention_plan: object = None
    evictions: tuple[tuple[int, int, int, int], ...] = ()


@dataclass
class MemoryPlan:
    """Sizes of the KV pool and request table."""

    num_slots: int
    max_running: int
    max_context: int


class ModelRunner:
    """Model + KV pool + request table + attention backend + (on CUDA) decode CUDA graphs."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        plan: MemoryPlan,
        use_cuda_graphs: bool,
        attention_backend: str = "dense",
        backend_options: object = None,
        adapters: AdapterPool | None = None,
        channel: StepChannel | None = None,
    ) -> None:
        config = model.config
        param = next(model.parameters())
        self.model = model
        self.tp: TensorParallel = model.tp
        if self.tp.enabled and channel is None:
            raise ValueError("a tensor-parallel runner needs the step channel between driver and workers")
        self.channel = channel
        self.adapters = adapters
        self.device = param.device
        self.kv_pool = KVPool(
            config.num_hidden_layers,
            plan.num_slots,
            model.num_kv_heads,  # this rank's
            head_dim_of(config),
            param.dtype,
            self.device,
        )
        self.req_pool = ReqToTokenPool(plan.max_running + 1, plan.max_context, self.device)
        self.padding_row = self.req_pool.alloc()  # padded graph entries read slot 0 through it
        self.attention = make_attention_backend(
            attention_backend, self.kv_pool, self.req_pool, config, backend_options, self.tp
        )
        self.graphs: DecodeGraphs | None = None
        if use_cuda_graphs and not self.attention.supports_cuda_graphs:
            logger.info("the %s attention backend runs decode without CUDA graphs", attention_backend)
        elif use_cuda_graphs:
            self.graphs = DecodeGraphs(self, plan.max_running)

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch, unread_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 next-token logits for the sequences of ``batch`` that sample this step, then
        those of the positions scoring sequences score (``ScheduledBatch.score_positions``).

        A batch scheduled ahead (``batch.ahead``) takes its input tokens from ``unread_tokens``,
        the previous step's sampled tokens still on the device, one per sequence.
        """
        if batch.ahead != (unread_tokens is not None):
            raise ValueError("a batch scheduled ahead needs the unread tokens, and only it")
        attention_plan = self.attention.begin_step(batch)
        if self.graphs is not None and batch.is_decode:
            return self.graphs.replay(batch, unread_tokens, attention_plan)
        forward_batch, sizes, packed = self.prepare(batch)
        unread = 0 if unread_tokens is None else unread_tokens.numel()
        if self.channel is not None:
            slots = tuple(seq.lora_slot for seq in batch.sequences) if forward_batch.lora is not None else ()
            self.tell_workers(StepMessage(STEP, batch.is_decode, tuple(sizes), packed.numpy(), unread=unread,
                                          lora_slots=slots, num_new_tokens=tuple(batch.num_new_tokens),
                                          attention_plan=attention_plan))
        if unread_tokens is not None:
            forward_batch.input_ids = self.tp.broadcast(unread_tokens.contiguous())
        return self.run(forward_batch)

    # ----- tensor parallelism: the driver announces each step, workers follow --------------

    def tell_workers(self, message: StepMessage) -> None:
        if self.channel is not None:
            self.channel.send(message)

    def mirror_adapters(self) -> None:
        """Send the adapter pool's adapters to the workers, then every later change of it."""
        if self.channel is None or self.adapters is None:
            return
        self.adapters.watch(lambda event: self.tell_workers(StepMessage(LORA, event=event)))

    def evictions(self, batch: ScheduledBatch) -> list[tuple[Sequence, list[int]]]:
        """After a step: the sequences whose KV the backend shrank (H2O) and the entries each
        keeps, every rank evicting the same ones (their device rows compacted)."""
        plan = self.attention.eviction_plan(batch)
        if not plan:
            return []
        self.tell_workers(StepMessage(EVICT, evictions=tuple(arguments for _, arguments in plan)))
        return [(seq, self.attention.evict(*arguments)) for seq, arguments in plan]

    def stop_workers(self) -> None:
        """Tell the workers' :meth:`follow` loops to return."""
        self.tell_workers(StepMessage(STOP))

    @torch.inference_mode()
    def follow(self) -> None:
        """A worker's loop: run every step the driver announces, until it says stop (or exits).

        The step's inputs come over a pipe, not a collective: an idle server leaves its workers
        blocked in a read without a timeout, and a dead driver ends them (end of file). Only the
        unread input tokens of a batch scheduled ahead, already on the driver's device, come by
        a device broadcast."""
        assert self.channel is not None
        while True:
            try:
                message: StepMessage = self.channel.receive()
            except EOFError:
                logger.warning("the tensor-parallel driver went away; this worker stops")
                return
            if message.kind == STOP:
                return
            if message.kind == LORA:
                assert self.adapters is not None and message.event is not None
                self.adapters.apply(message.event)
                continue
            if message.kind == EVICT:
                for arguments in message.evictions:
                    self.attention.evict(*arguments)
                continue
            self.attention.follow_step(message.attention_plan)
            if message.kind == GRAPH:
                assert self.graphs is not None and message.inputs is not None
                self.graphs.follow(message)
                continue
            assert message.inputs is not None
            packed = torch.from_numpy(message.inputs).to(self.device)
            batch = self.unpack(message.is_decode, list(message.sizes), packed)
            if message.lora_slots:
                batch.lora = LoraBatch.build(list(message.lora_slots), list(message.num_new_tokens), self.device)
            if message.unread:
                batch.input_ids = self.receive_unread(message.unread)
            self.run(batch)

    def receive_unread(self, count: int) -> torch.Tensor:
        """The driver's sampled tokens of the previous step, by device broadcast."""
        return self.tp.broadcast(torch.empty(count, dtype=torch.int64, device=self.device))

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """The backend's per-step metadata, then the model (also what a decode graph captures)."""
        self.attention.prepare(batch)
        return self.model(batch, self.attention)

    def prepare(self, batch: ScheduledBatch) -> tuple[ForwardBatch, list[int], torch.Tensor]:
        """Flatten the batch's new tokens and per-request metadata into device tensors; also
        the packed host tensor and its field sizes (what workers get)."""
        is_decode, sizes, packed = self.pack(batch)
        forward_batch = self.unpack(is_decode, sizes, packed.to(self.device))
        forward_batch.lora = self.lora_batch(batch)
        return forward_batch, sizes, packed

    def lora_batch(self, batch: ScheduledBatch) -> LoraBatch | None:
        """The rows' adapter slots, or None when no row of the step uses an adapter."""
        lora_slots = [seq.lora_slot for seq in batch.sequences]
        if self.adapters is None or all(slot == NO_ADAPTER for slot in lora_slots):
            return None
        return LoraBatch.build(lora_slots, batch.num_new_tokens, self.device)

    def pack(self, batch: ScheduledBatch) -> tuple[bool, list[int], torch.Tensor]:
        """The batch's new tokens and per-request metadata as one host int64 tensor (one
        host -> device copy, one broadcast) and the sizes of its fields."""
        input_ids: list[int] = []
        positions: list[int] = []
        seq_lens, q_start, logits_indices = [], [], []
        score_rows: list[int] = []  # after the sampling rows (see Engine._launch)
        table_rows: list[int] = []
        table_cols: list[int] = []
        table_slots: list[int] = []
        extend = not batch.is_decode
        for index, (seq, count) in enumerate(zip(batch.sequences, batch.num_new_tokens, strict=True)):
            start = seq.num_computed
            q_start.append(len(positions))
            if not batch.ahead:  # ahead, the tokens are on the device (see forward)
                input_ids.extend(seq.token_ids[start : start + count])
            positions.extend(range(start, start + count))
            seq_lens.append(seq.num_kv)
            if batch.samples(index):
                logits_indices.append(len(positions) - 1)
            score_rows.extend(q_start[-1] + p - start for p in batch.score_positions(index))
            if extend:  # slot-table entries not yet recorded (decode: just the new one, implied)
                first = batch.table_starts[index]
                table_rows.extend([seq.req_pool_idx] * (seq.num_kv - first))
                table_cols.extend(range(first, seq.num_kv))
                table_slots.extend(seq.kv_slots[first:])
        logits_indices += score_rows
        pool_rows = [seq.req_pool_idx for seq in batch.sequences]
        fields: list[list] = [
            input_ids,
            positions,
            pool_rows,
            seq_lens,
            batch.num_new_tokens,
            q_start,
            logits_indices,
            table_rows,
            table_cols,
            table_slots,
        ]
        # One host -> device copy for all fields (small copies each cost a launch and a sync).
        packed = torch.cat(
            [torch.tensor([v for values in fields for v in values], dtype=torch.int64), batch.out_cache_loc]
        )
        sizes = [len(values) for values in fields] + [batch.out_cache_loc.numel()]
        return batch.is_decode, sizes, packed

    def unpack(self, is_decode: bool, sizes: list[int], packed: torch.Tensor) -> ForwardBatch:
        """The :class:`ForwardBatch` of :meth:`pack`'s tensor, already on the device."""
        parts = packed.split(sizes)
        ids, pos, rows, lens, extend_lens, starts, logits_rows, t_rows, t_cols, t_slots, slots = parts
        extend = not is_decode
        return ForwardBatch(
            mode=ForwardMode.EXTEND if extend else ForwardMode.DECODE,
            input_ids=ids,
            positions=pos,
            out_cache_loc=slots,
            req_pool_indices=rows,
            seq_lens=lens,
            extend_lens=extend_lens,
            q_start=starts,
            logits_indices=logits_rows,
            table_rows=t_rows if extend else None,
            table_cols=t_cols if extend else None,
            table_slots=t_slots if extend else None,
        )


def graph_buckets(max_batch: int) -> list[int]:
    """Batch sizes with a captured decode graph: 1, 2, 4, 8, then every 8 (16 past 64, 32 past 256)."""
    sizes = [1, 2, 4, 8]
    while sizes[-1] < max_batch:
        last = sizes[-1]
        sizes.append(last + (8 if last < 64 else 16 if last < 256 else 32))
    return [s for s in sizes if s < max_batch] + [max_batch]


class DecodeGraphs:
    """CUDA graphs of the decode forward, one per bucket, sharing static input buffers.

    A batch of ``n`` requests runs in the smallest bucket ``>= n``; padding entries use the
    runner's padding request row and slot 0, so they touch no real request's KV. A replay costs
    one host -> device copy of the step's inputs (from pinned memory) and one graph launch: the
    backend's per-step metadata (the dense backend's slot-table update), the forward and the
    logits all run inside the graph. A backend that needs more static inputs allocates them in
    its ``init_graph_state`` and fills them in ``prepare_replay``.
    """

    # Rows of the static input buffer. Padding entries hold token 0, position 0, slot 0 (the
    # padding slot), the runner's padding request row, length 1 and no adapter; the LoRA row
    # (each entry's adapter slot) exists when the runner has adapters.
    FIELDS = ("input_ids", "positions", "out_cache_loc", "req_pool_indices", "seq_lens")
    LORA_ROW = len(FIELDS)

    def __init__(self, runner: ModelRunner, max_batch: int) -> None:
        self.runner = runner
        self.buckets = graph_buckets(max_batch)
        self.with_lora = runner.adapters is not None
        size, device = self.buckets[-1], runner.device
        padding_values = [0, 0, PADDING_SLOT, runner.padding_row, 1] + ([NO_ADAPTER] if self.with_lora else [])
        padding = torch.tensor(padding_values, dtype=torch.int64)
        self.host_inputs = padding[:, None].repeat(1, size).pin_memory()
        self.host_view = self.host_inputs.numpy()
        self.padding_column = padding.numpy()[:, None]
        self.inputs = self.host_inputs.to(device)
        self.ones = torch.ones(size, dtype=torch.int64, device=device)
        self.arange = torch.arange(size, dtype=torch.int64, device=device)
        self.copied = torch.cuda.Event()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        runner.attention.init_graph_state(size)
        self._capture_all()

    def _static_batch(self, size: int) -> ForwardBatch:
        fields = {name: self.inputs[row, :size] for row, name in enumerate(self.FIELDS)}
        return ForwardBatch(
            mode=ForwardMode.DECODE,
            lora=LoraBatch(self.inputs[self.LORA_ROW, :size]) if self.with_lora else None,
            extend_lens=self.ones[:size],
            q_start=self.arange[:size],
            logits_indices=self.arange[:size],
            **fields,
        )

    @torch.inference_mode()
    def _capture_all(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        for size in reversed(self.buckets):  # largest first so smaller ones reuse its memory
            batch = self._static_batch(size)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.runner.run(batch)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self.runner.run(batch)
            self.graphs[size] = graph
        torch.cuda.synchronize()
        logger.info("captured decode CUDA graphs for batch sizes %s", self.buckets)

    def replay(
        self, batch: ScheduledBatch, unread_tokens: torch.Tensor | None = None, attention_plan: object = None
    ) -> torch.Tensor:
        """Write the decode batch's inputs (padded to its bucket) to the static buffer, replay.

        With ``unread_tokens`` (a batch scheduled ahead) the input tokens are copied on the
        device from the previous step's sampling instead, queued behind it.
        """
        sequences = batch.sequences
        count = len(sequences)
        size = next(b for b in self.buckets if b >= count)
        view = self.host_view
        self.copied.synchronize()  # the previous step's copy out of this buffer (done by now, in practice)
        if unread_tokens is None:
            view[0, :count] = [seq.token_ids[seq.num_computed] for seq in sequences]
        view[1, :count] = [seq.num_computed for seq in sequences]
        view[2, :count] = batch.out_cache_loc.numpy()
        view[3, :count] = [seq.req_pool_idx for seq in sequences]
        view[4, :count] = [len(seq.kv_slots) for seq in sequences]
        if self.with_lora:
            view[self.LORA_ROW, :count] = [seq.lora_slot for seq in sequences]
        view[:, count:size] = self.padding_column
        self.runner.attention.prepare_replay(batch, size)
        self.inputs.copy_(self.host_inputs, non_blocking=True)
        self.copied.record()
        if self.runner.tp.enabled:  # the workers replay the same bucket on the same inputs
            unread = 0 if unread_tokens is None else count
            inputs = view[:, :size].copy()
            self.runner.tell_workers(StepMessage(GRAPH, True, inputs=inputs, graph_size=size, unread=unread,
                                                 attention_plan=attention_plan))
            if unread_tokens is not None:
                unread_tokens = self.runner.tp.broadcast(unread_tokens.contiguous())
        if unread_tokens is not None:
            self.inputs[0, :count].copy_(unread_tokens)
        self.graphs[size].replay()
        return self.outputs[size][:count]

    def follow(self, message: StepMessage) -> None:
        """A worker's replay of the driver's bucket on the driver's static inputs."""
        assert message.inputs is not None
        size = message.graph_size
        self.runner.attention.follow_step(message.attention_plan)
        self.copied.synchronize()
        self.host_view[:, :size] = message.inputs
        self.inputs.copy_(self.host_inputs, non_blocking=True)
        self.copied.record()
        if message.unread:
            self.inputs[0, : message.unread].copy_(self.runner.receive_unread(message.unread))
        self.graphs[size].replay()
