"""Triton kernels vs their PyTorch references on a CUDA GPU, at realistic shapes in bf16/fp16.

Run through the device tool (see benchmarks/results/serving_kernels_gpu.txt for the last
output). Errors are reported as ||out - ref|| / ||ref|| against the fp32 reference, the
measure that does not blow up on near-zero elements, plus an elementwise closeness check.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

import serving.kernels as kernels
from serving.kernels.testing import make_paged_batch

logger = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1", reason="needs compiled (not interpreted) Triton"
    ),
]

HALF_DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
# Relative-norm error bounds: bf16 has 8 bits of mantissa, fp16 11.
_MAX_RELATIVE_ERROR = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
_ELEMENT_TOLERANCE = {
    torch.bfloat16: {"atol": 4e-2, "rtol": 4e-2},
    torch.float16: {"atol": 6e-3, "rtol": 1e-2},
}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, label: str) -> None:
    """Compare in fp32; log the relative error so the committed log carries the figure."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.isfinite(actual).all(), f"{label}: non-finite output"
    diff = (actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-12)
    max_abs = (actual.float() - expected.float()).abs().max().item()
    logger.info("%s: relative error %.2e, max abs error %.2e", label, diff.item(), max_abs)
    assert diff.item() < _MAX_RELATIVE_ERROR[expected.dtype], f"{label}: relative error {diff.item():.2e}"
    torch.testing.assert_close(actual.float(), expected.float(), **_ELEMENT_TOLERANCE[expected.dtype])


def _ragged_lengths(batch: int, max_len: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=generator)
    lengths[0] = max_len  # the longest request always present
    return lengths.tolist()


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize(
    ("num_q_heads", "num_kv_heads", "head_dim"),
    [pytest.param(32, 8, 128, id="gqa32/8-d128"), pytest.param(16, 16, 64, id="mha16-d64")],
)
def test_decode_attention_batch64_context4k(dtype, num_q_heads, num_kv_heads, head_dim) -> None:
    batch = make_paged_batch(_ragged_lengths(64, 4096, 0), num_q_heads, num_kv_heads, head_dim, dtype, "cuda")
    got = kernels.decode_attention(*batch.decode_args())  # dispatch picks Triton on CUDA
    assert_matches(
        got,
        kernels.decode_attention_ref(*batch.decode_args()),
        f"decode {dtype} {num_q_heads}/{num_kv_heads}",
    )


def test_decode_attention_replays_in_a_cuda_graph() -> None:
    """The decode launch needs no host sync, so the engine can capture it in a CUDA graph."""
    batch = make_paged_batch(_ragged_lengths(16, 1024, 1), 32, 8, 128, torch.bfloat16, "cuda")
    args = batch.decode_args()
    kernels.decode_attention_triton(*args)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured_out = kernels.decode_attention_triton(*args)
    batch.q.normal_()  # new inputs in the same buffers, as the engine does between steps
    batch.seq_lens.sub_(1).clamp_(min=1)
    graph.replay()
    torch.cuda.synchronize()
    assert_matches(captured_out, kernels.decode_attention_ref(*args), "decode in a CUDA graph")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize(
    ("num_q_heads", "num_kv_heads", "head_dim"),
    [pytest.param(32, 8, 128, id="gqa32/8-d128"), pytest.param(16, 16, 64, id="mha16-d64")],
)
def test_extend_attention_prefill_chunks_and_prefix_hits(dtype, num_q_heads, num_kv_heads, head_dim) -> None:
    seq_lens = [2048, 1024, 3000, 700, 4096, 1]
    extend_lens = [2048, 512, 100, 700, 1024, 1]  # prefill, chunks, prefix hits, one token
    batch = make_paged_batch(
        seq_lens, num_q_heads, num_kv_heads, head_dim, dtype, "cuda", extend_lens=extend_lens
    )
    got = kernels.extend_attention(*batch.extend_args())
    want = kernels.extend_attention_ref(*batch.extend_args())
    assert_matches(got, want, f"extend {dtype} {num_q_heads}/{num_kv_heads}")


@pytest.mark.parametrize("variant", range(6))
def test_extend_attention_launch_variants(variant) -> None:
    """Every configuration the benchmark sweeps computes the same function."""
    from serving.kernels.paged_extend import LAUNCH_VARIANTS, extend_attention_triton

    assert len(LAUNCH_VARIANTS) == 6, "keep the parametrization in step with LAUNCH_VARIANTS"
    block_m, block_n, warps, stages = LAUNCH_VARIANTS[variant]
    batch = make_paged_batch(
        [1500, 700, 333], 32, 8, 128, torch.bfloat16, "cuda", extend_lens=[1500, 200, 97]
    )
    got = extend_attention_triton(
        *batch.extend_args(), block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages
    )
    assert_matches(
        got, kernels.extend_attention_ref(*batch.extend_args()), f"extend variant {LAUNCH_VARIANTS[variant]}"
    )


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_norms_rotary_store_kv_and_silu_at_llama8b_shapes(dtype) -> None:
    tokens, hidden = 512, 4096
    x = torch.randn(tokens, hidden, dtype=dtype, device="cuda")
    residual = torch.randn_like(x)
    weight = torch.rand(hidden, dtype=dtype, device="cuda") + 0.5
    assert_matches(kernels.rms_norm(x, weight, 1e-5), kernels.rms_norm_ref(x, weight, 1e-5), "rms_norm")
    got_normed, got_residual = kernels.fused_add_rms_norm(x, residual, weight, 1e-5)
    want_normed, want_residual = kernels.fused_add_rms_norm_ref(x, residual, weight, 1e-5)
    assert_matches(got_normed, want_normed, "fused_add_rms_norm normed")
    assert_matches(got_residual, want_residual, "fused_add_rms_norm residual")

    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, device="cuda").float() / 128))
    cache = kernels.rotary_cos_sin_cache(inv_freq, 8192)
    qkv = torch.randn(tokens, 32 + 8 + 8, 128, dtype=dtype, device="cuda")
    positions = torch.randint(0, 8192, (tokens,), device="cuda")
    slots = torch.randperm(4 * tokens, device="cuda")[:tokens]
    norm_weights = (torch.rand(128, dtype=dtype, device="cuda") + 0.5, torch.rand_like(weight[:128]) + 0.5)
    for qk_norm in ((None, None, 1e-6), (*norm_weights, 1e-6)):
        results = []
        for op in (kernels.rotary_store_kv, kernels.rotary_store_kv_ref):
            k_cache = torch.zeros(4 * tokens, 8, 128, dtype=dtype, device="cuda")
            v_cache = torch.zeros_like(k_cache)
            new_q = op(
                qkv[:, :32], qkv[:, 32:40], qkv[:, 40:], positions, cache, k_cache, v_cache, slots, True,
                *qk_norm,
            )  # fmt: skip
            results.append((new_q, k_cache, v_cache))
        for name, got, want in zip(("q", "k_cache", "v_cache"), *results, strict=True):
            assert_matches(got, want, f"rotary_store_kv {name} qk_norm={qk_norm[0] is not None}")

    gate_up = torch.randn(tokens, 2 * 14336, dtype=dtype, device="cuda")
    assert_matches(kernels.silu_and_mul(gate_up), kernels.silu_and_mul_ref(gate_up), "silu_and_mul")


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5])
def test_linear_gemv_and_cublas_paths_at_llama8b_shapes(rows) -> None:
    """Up to GEMV_MAX_ROWS rows run the Triton GEMV, more run cuBLAS; both match the reference."""
    for out_features, in_features, swiglu in ((6144, 4096, False), (4096, 14336, True), (4096, 4096, False)):
        weight = torch.randn(out_features, in_features, dtype=torch.bfloat16, device="cuda") / in_features**0.5
        x = torch.randn(rows, 2 * in_features if swiglu else in_features, dtype=torch.bfloat16, device="cuda")
        bias = torch.randn(out_features, dtype=torch.bfloat16, device="cuda")
        got = kernels.linear(x, weight, bias, silu_mul_input=swiglu)
        assert_matches(got, kernels.linear_ref(x, weight, bias, silu_mul_input=swiglu), f"linear {rows} rows")
