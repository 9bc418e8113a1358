"""LoRA on a CUDA GPU: the SGMV/BGMV kernels at Llama-3.1-8B shapes in bf16, and the engine's
decode CUDA graphs (adapter slots as a static buffer row) against eager execution.

Run through the device tool::

    python3 -m pytest -s -m gpu tests/serving/test_lora_gpu.py --confcutdir=tests/serving
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

import serving.kernels as kernels
from serving.config import EngineConfig
from serving.engine import Engine
from serving.sampling import SamplingParams
from serving.sequence import GenerationRequest

logger = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="needs compiled Triton"),
]


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


@pytest.mark.parametrize("rank", [8, 64])
def test_kernels_match_references_at_llama_8b_shapes(rank):
    """q|k|v of Llama-3.1-8B: K = 4096, three sub-projections (6144 outputs), 6 adapter slots."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    slots, hidden, outputs = 6, 4096, 6144
    a = (torch.randn(slots, 3 * rank, hidden, device="cuda", generator=generator) / hidden**0.5).bfloat16()
    b = (torch.randn(slots, outputs, rank, device="cuda", generator=generator) / rank**0.5).bfloat16()
    lengths, seg_slots = [300, 17, 1, 128, 64], [3, -1, 0, 5, 3]
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    seg = torch.tensor(seg_slots, dtype=torch.int32, device="cuda")
    x = torch.randn(sum(lengths), hidden, device="cuda", generator=generator).bfloat16()
    out = torch.randn(sum(lengths), outputs, device="cuda", generator=generator).bfloat16()
    longest = max(lengths)
    t_ref = kernels.sgmv_shrink_ref(x, a, starts, seg, longest)
    errors = {"sgmv_shrink": _relative_error(kernels.sgmv_shrink_triton(x, a, starts, seg, longest), t_ref)}
    q_part = t_ref[:, :rank]  # the q sub-projection's ranks, as the linear layer slices them
    errors["sgmv_expand"] = _relative_error(
        kernels.sgmv_expand_triton(out.clone(), q_part, b, starts, seg, longest),
        kernels.sgmv_expand_ref(out.clone(), q_part, b, starts, seg, longest),
    )
    rows = torch.tensor([3, -1, 0, 5, 3, 3, 1, -1] * 16, dtype=torch.int32, device="cuda")
    xd, outd = x[: rows.numel()], out[: rows.numel()]
    td_ref = kernels.bgmv_shrink_ref(xd, a, rows)
    errors["bgmv_shrink"] = _relative_error(kernels.bgmv_shrink_triton(xd, a, rows), td_ref)
    errors["bgmv_expand"] = _relative_error(
        kernels.bgmv_expand_triton(outd.clone(), td_ref[:, :rank], b, rows),
        kernels.bgmv_expand_ref(outd.clone(), td_ref[:, :rank], b, rows),
    )
    logger.info("rank %d relative errors: %s", rank, errors)
    assert all(error < 1e-2 for error in errors.values()), errors


def _greedy(engine: Engine, adapters: list[str | None]) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    requests = [
        GenerationRequest(f"r{i}", [30 + i + j for j in range(5 + 3 * i)], params, adapter=adapter)
        for i, adapter in enumerate(adapters)
    ]
    outputs = engine.generate(requests)
    return [outputs[r.request_id] for r in requests]


def test_decode_graphs_with_mixed_adapters_equal_eager(tiny_checkpoint, lora_adapters):
    adapters = [None, "all-r8", "qv-r4", "mlp-r16-rslora", "all-r8", "patterns", None, "qv-r4"]

    def engine(graphs: bool) -> Engine:
        config = EngineConfig(
            str(tiny_checkpoint("llama")), device="cuda", max_running=8, cuda_graphs=graphs,
            lora_adapters={name: str(path) for name, path in lora_adapters.items()}, max_loras=3, max_lora_rank=16,
        )  # fmt: skip
        return Engine(config)

    with_graphs = engine(True)
    assert with_graphs.runner.graphs is not None
    eager = _greedy(engine(False), adapters)
    assert _greedy(with_graphs, adapters) == eager
    assert eager[1] != eager[0]  # an adapter changes the tokens
