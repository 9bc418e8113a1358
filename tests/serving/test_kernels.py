"""Triton kernels vs their PyTorch references on the CPU, through Triton's interpreter.

Triton fixes interpret-or-compile when a function is decorated with ``@triton.jit``, its own
standard library (``tl.sum``, ``tl.max`` ...) included, i.e. when triton is first imported. In
a one-process suite something may import triton earlier, so the interpreted comparisons run in
a child pytest over this file with ``TRITON_INTERPRET=1`` set from the start
(``test_interpreted_kernels_in_subprocess``). In the parent they are not collected (rather than
reported as dozens of skips); the summary says how many ran in the child and how they ended
(``tests/serving/conftest.py``). Running this file alone with ``TRITON_INTERPRET=1`` runs them
directly. The references themselves are checked
against independent implementations (SDPA, transformers' rotary) in the parent.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import serving.kernels as kernels
from serving.kernels.testing import make_paged_batch
from tests.serving.conftest import CHILD_RESULT

_TOLERANCE = {torch.float32: {"atol": 2e-5, "rtol": 1e-5}, torch.float16: {"atol": 3e-3, "rtol": 1e-2}}
GQA_SHAPES = [pytest.param(4, 4, 16, id="mha-d16"), pytest.param(8, 2, 32, id="gqa4-d32")]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]
_CHILD_TIMEOUT_S = 300


def _interpreter_active() -> bool:
    """True when triton was imported in interpreter mode (its standard library interpreted)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton.language as tl
        from triton.runtime.jit import JITFunction
    except ImportError:
        return False
    return not isinstance(tl.sum, JITFunction)


INTERPRETED = _interpreter_active()
# Collected only in interpreter mode (the child); see tests/serving/conftest.py.
interpreted = pytest.mark.triton_interpreter


def test_interpreted_kernels_in_subprocess(request: pytest.FixtureRequest) -> None:
    """Run this file's interpreted comparisons in a fresh interpreter-mode pytest."""
    if INTERPRETED:
        pytest.skip("already running in interpreter mode")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "SERVING_KERNELS": "auto"}
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-x"]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert result.returncode == 0, f"interpreted kernel tests failed:\n{result.stdout}\n{result.stderr}"
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed, 1 skipped", summary), f"only this test may skip in the child: {summary}"
    request.config.stash[CHILD_RESULT] = summary.strip("= ")


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), **_TOLERANCE[expected.dtype])


def test_kernel_submodules_do_not_shadow_the_ops() -> None:
    """Importing a kernel module sets it as a package attribute: names must not collide."""
    pytest.importorskip("triton")
    for module in ("paged_decode", "paged_extend", "elementwise", "gemv", "lora_kernels"):
        importlib.import_module(f"serving.kernels.{module}")
    for name in kernels.__all__:
        if name.isupper():  # a constant
            continue
        assert inspect.isfunction(getattr(kernels, name)), f"serving.kernels.{name} is shadowed"


# --- references against independent implementations -----------------------------------


def test_extend_reference_matches_causal_sdpa_per_request() -> None:
    batch = make_paged_batch([23, 9], 8, 2, 16, extend_lens=[23, 9])
    out = kernels.extend_attention_ref(*batch.extend_args())
    for b in range(2):
        row, length = int(batch.req_pool_indices[b]), int(batch.seq_lens[b])
        slots = batch.req_to_token[row, :length].long()
        keys = batch.k_cache[slots].transpose(0, 1).repeat_interleave(4, 0)
        values = batch.v_cache[slots].transpose(0, 1).repeat_interleave(4, 0)
        start = int(batch.q_start[b])
        queries = batch.q[start : start + length].transpose(0, 1)
        expected = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, scale=batch.scale)
        torch.testing.assert_close(
            out[start : start + length], expected.transpose(0, 1), atol=1e-5, rtol=1e-5
        )
        # Decoding the last token over the same slots equals the last causal row.
        last = kernels.decode_attention_ref(
            batch.q[start + length - 1][None], batch.k_cache, batch.v_cache, batch.req_to_token,
            batch.req_pool_indices[b : b + 1], batch.seq_lens[b : b + 1], batch.scale,
        )  # fmt: skip
        torch.testing.assert_close(last[0], expected[:, -1], atol=1e-5, rtol=1e-5)


def test_rotary_reference_matches_transformers() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    head_dim = 16
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    cache = kernels.rotary_cos_sin_cache(inv_freq, 64)
    q, k = torch.randn(10, 4, head_dim), torch.randn(10, 2, head_dim)
    positions = torch.randint(0, 64, (10,))
    got_q, got_k = kernels.apply_rotary_ref(q, k, positions, cache)
    angles = torch.outer(positions.float(), inv_freq).repeat(1, 2)
    want_q, want_k = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], angles.cos()[None], angles.sin()[None]
    )
    torch.testing.assert_close(got_q, want_q[0].transpose(0, 1))
    torch.testing.assert_close(got_k, want_k[0].transpose(0, 1))


# --- Triton () against the references ---------------------------------------


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim"), GQA_SHAPES)
def test_decode_attention_matches_reference(dtype, num_q_heads, num_kv_heads, head_dim) -> None:
    batch = make_paged_batch([1, 37, 0, 130, 70], num_q_heads, num_kv_heads, head_dim, dtype)
    assert not batch.q.is_contiguous() and batch.req_to_token.stride(0) != batch.req_to_token.shape[1]
    assert_close(
        kernels.decode_attention_triton(*batch.decode_args()),
        kernels.decode_attention_ref(*batch.decode_args()),
    )


@interpreted
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_attention_split_counts_and_head_dim_64(num_splits) -> None:
    from serving.kernels.paged_decode import decode_attention_triton

    batch = make_paged_batch([5, 95], 4, 1, 64, seed=num_splits)
    got = decode_attention_triton(*batch.decode_args(), num_splits=num_splits, block_n=16)
    assert_close(got, kernels.decode_attention_ref(*batch.decode_args()))


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim"), GQA_SHAPES)
def test_extend_attention_prefill_and_prefix_hits(dtype, num_q_heads, num_kv_heads, head_dim) -> None:
    # A fresh prefill, a one-token extend, a prefix hit and a mid-prompt chunk, in one batch.
    batch = make_paged_batch(
        [40, 1, 75, 60], num_q_heads, num_kv_heads, head_dim, dtype, extend_lens=[40, 1, 19, 33]
    )
    assert_close(
        kernels.extend_attention_triton(*batch.extend_args()),
        kernels.extend_attention_ref(*batch.extend_args()),
    )


@interpreted
def test_extend_attention_odd_blocks_and_empty_request() -> None:
    from serving.kernels.paged_extend import extend_attention_triton

    batch = make_paged_batch([50, 12], 2, 1, 32, extend_lens=[0, 12], seed=3)
    got = extend_attention_triton(*batch.extend_args(), block_m=16, block_n=16)
    assert_close(got, kernels.extend_attention_ref(*batch.extend_args()))


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norms_match_reference(dtype) -> None:
    x, residual = torch.randn(2, 5, 96, dtype=dtype), torch.randn(2, 5, 96, dtype=dtype)
    weight = torch.randn(96, dtype=dtype)
    assert_close(kernels.rms_norm_triton(x, weight, 1e-6), kernels.rms_norm_ref(x, weight, 1e-6))
    got_normed, got_residual = kernels.fused_add_rms_norm_triton(x, residual, weight, 1e-5)
    want_normed, want_residual = kernels.fused_add_rms_norm_ref(x, residual, weight, 1e-5)
    assert_close(got_normed, want_normed)
    assert_close(got_residual, want_residual)


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3-qk-norm"])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_rotary_store_kv_matches_reference(dtype, qk_norm, is_neox) -> None:
    """Same returned q and same caches as the reference; slots not written stay untouched."""
    head_dim, tokens, num_slots = 32, 5, 40
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    cos_sin = kernels.rotary_cos_sin_cache(inv_freq, 64)
    qkv = torch.randn(tokens, 6 + 3 + 3, head_dim, dtype=dtype)
    q, k, v = qkv[:, :6], qkv[:, 6:9], qkv[:, 9:]  # strided views of a fused projection
    positions = torch.tensor([0, 9, 63, 9, 1])
    slots = torch.tensor([7, 0, 39, 12, 3])
    norms = (torch.rand(head_dim, dtype=dtype) + 0.5, torch.rand(head_dim, dtype=dtype) + 0.5, 1e-6)
    extra = norms if qk_norm else (None, None, 1e-6)
    caches = {}
    for name, op in (("triton", kernels.rotary_store_kv_triton), ("ref", kernels.rotary_store_kv_ref)):
        k_cache = torch.full((num_slots, 3, head_dim), -7.0, dtype=dtype)
        v_cache = torch.full_like(k_cache, -7.0)
        new_q = op(q, k, v, positions, cos_sin, k_cache, v_cache, slots, is_neox, *extra)
        caches[name] = (new_q, k_cache, v_cache)
    for got, want in zip(caches["triton"], caches["ref"], strict=True):
        assert_close(got, want)
    untouched = torch.ones(num_slots, dtype=torch.bool)
    untouched[slots] = False
    assert (caches["triton"][1][untouched] == -7.0).all()


@interpreted
def test_rotary_store_kv_needs_both_norm_weights() -> None:
    q, k = torch.randn(2, 4, 16), torch.randn(2, 2, 16)
    cache = torch.zeros(4, 2, 16)
    cos_sin = kernels.rotary_cos_sin_cache(torch.ones(8), 8)
    with pytest.raises(ValueError, match="both"):
        kernels.rotary_store_kv_triton(
            q, k, k, torch.tensor([0, 1]), cos_sin, cache, cache.clone(), torch.tensor([1, 2]), True,
            torch.ones(16), None,
        )  # fmt: skip


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 4])
@pytest.mark.parametrize("silu_mul_input", [False, True], ids=["plain", "swiglu-input"])
def test_gemv_linear_matches_reference(dtype, rows, silu_mul_input) -> None:
    """Ragged sizes (K not a multiple of the block, N not of BLOCK_N), bias or none."""
    in_features, out_features = 3000, 37  # K spans two 2048-wide tiles, the second ragged
    x = torch.randn(rows, 2 * in_features if silu_mul_input else in_features, dtype=dtype)
    weight = torch.randn(out_features, in_features, dtype=dtype) / in_features**0.5
    bias = torch.randn(out_features, dtype=dtype)
    for b in (None, bias):
        want = kernels.linear_ref(x, weight, b, silu_mul_input)
        assert_close(kernels.linear_triton(x, weight, b, silu_mul_input), want)
    even = torch.randn(rows, 512, dtype=dtype), torch.randn(16, 512, dtype=dtype) / 512**0.5
    assert_close(kernels.linear_triton(*even), kernels.linear_ref(*even))


@interpreted
def test_gemv_linear_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        kernels.linear_triton(torch.randn(1, 8), torch.randn(4, 6))
    with pytest.raises(ValueError, match="silu_mul_input"):
        kernels.linear_triton(torch.randn(1, 8), torch.randn(4, 8), None, True)


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_matches_reference(dtype) -> None:
    x = torch.randn(3, 4, 2 * 80, dtype=dtype)
    assert_close(kernels.silu_and_mul_triton(x), kernels.silu_and_mul_ref(x))


# --- dispatch ---------------------------------------------------------------------------


@interpreted
def test_dispatch_uses_reference_on_cpu_and_honours_override(monkeypatch) -> None:
    x, weight = torch.randn(3, 16), torch.ones(16)
    monkeypatch.delenv("SERVING_KERNELS", raising=False)
    assert kernels.kernel_backend(x) == "torch"
    monkeypatch.setenv("SERVING_KERNELS", "triton")
    assert kernels.kernel_backend(x) == "triton"
    assert_close(kernels.silu_and_mul(x), kernels.silu_and_mul_ref(x))
    monkeypatch.setenv("SERVING_KERNELS", "cuda")
    with pytest.raises(ValueError, match="SERVING_KERNELS"):
        kernels.rms_norm(x, weight, 1e-6)


@interpreted
def test_attention_rejects_mismatched_heads() -> None:
    batch = make_paged_batch([4], 3, 2, 16)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        kernels.decode_attention_triton(*batch.decode_args())
