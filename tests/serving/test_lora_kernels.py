"""SGMV / BGMV LoRA kernels vs their PyTorch references, through Triton's interpreter on the CPU.

As in ``test_kernels.py``, the interpreted comparisons run in a child pytest with
``TRITON_INTERPRET=1`` set from the start; the references are checked in the parent against
a dense per-row computation.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import serving.kernels as kernels

_TOLERANCE = {torch.float32: {"atol": 1e-4, "rtol": 1e-4}, torch.float16: {"atol": 5e-3, "rtol": 1e-2}}
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


def _interpreter_active() -> bool:
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton.language as tl
        from triton.runtime.jit import JITFunction
    except ImportError:
        return False
    return not isinstance(tl.sum, JITFunction)


INTERPRETED = _interpreter_active()
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child")


def test_interpreted_lora_kernels_in_subprocess() -> None:
    if INTERPRETED:
        pytest.skip("already running in interpreter mode")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "SERVING_KERNELS": "auto"}
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-x"]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2]
    )
    assert result.returncode == 0, f"interpreted LoRA kernel tests failed:\n{result.stdout}\n{result.stderr}"
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed, 1 skipped", summary), summary


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), **_TOLERANCE[expected.dtype])


def _segments(lengths: list[int], slots: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return starts, torch.tensor(slots, dtype=torch.int32), max(lengths)


def _weights(slots: int, rank: int, k: int, n: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(slots, rank, k, generator=g) / k**0.5).to(dtype)
    b = (torch.randn(slots, n, rank, generator=g) / rank**0.5).to(dtype)
    return a, b


def test_references_match_dense_per_row_products() -> None:
    lengths, slots = [3, 5, 1, 4], [2, -1, 0, 2]
    starts, seg_slots, longest = _segments(lengths, slots)
    a, b = _weights(3, 8, 24, 40, torch.float32)
    x = torch.randn(sum(lengths), 24)
    out = torch.randn(sum(lengths), 40)
    row_slots = [s for s, n in zip(slots, lengths, strict=True) for _ in range(n)]
    expected = out.clone()
    for row, slot in enumerate(row_slots):
        if slot >= 0:
            expected[row] += b[slot] @ (a[slot] @ x[row])
    t = kernels.sgmv_shrink_ref(x, a, starts, seg_slots, longest)
    torch.testing.assert_close(kernels.sgmv_expand_ref(out.clone(), t, b, starts, seg_slots, longest), expected)
    per_row = torch.tensor(row_slots)
    t_rows = kernels.bgmv_shrink_ref(x, a, per_row)
    torch.testing.assert_close(kernels.bgmv_expand_ref(out.clone(), t_rows, b, per_row), expected)
    assert t[3:8].abs().sum() == 0  # rows without an adapter shrink to zeros


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [8, 16, 48])
def test_sgmv_matches_reference(dtype, rank) -> None:
    """Segments longer and shorter than a tile, one without an adapter, a repeated slot."""
    lengths, slots = [37, 5, 1, 20, 70], [1, -1, 0, 1, 3]
    starts, seg_slots, longest = _segments(lengths, slots)
    a, b = _weights(4, rank, 96, 80, dtype)
    x = torch.randn(sum(lengths), 96).to(dtype)
    out = torch.randn(sum(lengths), 80).to(dtype)
    t = kernels.sgmv_shrink_triton(x, a, starts, seg_slots, longest)
    assert_close(t, kernels.sgmv_shrink_ref(x, a, starts, seg_slots, longest))
    got = kernels.sgmv_expand_triton(out.clone(), t, b, starts, seg_slots, longest)
    assert_close(got, kernels.sgmv_expand_ref(out.clone(), t, b, starts, seg_slots, longest))


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [8, 64])
def test_bgmv_matches_reference(dtype, rank) -> None:
    slots = torch.tensor([2, -1, 0, 2, 1, -1, 1], dtype=torch.int32)
    a, b = _weights(3, rank, 200, 150, dtype)
    x = torch.randn(len(slots), 200).to(dtype)
    out = torch.randn(len(slots), 150).to(dtype)
    t = kernels.bgmv_shrink_triton(x, a, slots)
    assert_close(t, kernels.bgmv_shrink_ref(x, a, slots))
    got = kernels.bgmv_expand_triton(out.clone(), t, b, slots)
    assert_close(got, kernels.bgmv_expand_ref(out.clone(), t, b, slots))


@interpreted
def test_expand_into_column_slices_of_a_merged_output() -> None:
    """q|k|v style: each sub-projection's expand writes its columns of one strided output."""
    slots = torch.tensor([1, 0, -1], dtype=torch.int32)
    a, b = _weights(2, 16, 32, 48, torch.float32)
    x = torch.randn(3, 32)
    out = torch.zeros(3, 100)
    t = kernels.bgmv_shrink_triton(x, a, slots)
    kernels.bgmv_expand_triton(out[:, 10:58], t, b, slots)
    expected = torch.zeros(3, 100)
    kernels.bgmv_expand_ref(expected[:, 10:58], t, b, slots)
    assert_close(out, expected)
    assert out[:, :10].abs().sum() == 0 and out[:, 58:].abs().sum() == 0


@interpreted
def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="bgmv_shrink"):
        kernels.bgmv_shrink_triton(torch.randn(2, 8), torch.randn(1, 4, 9), torch.zeros(2, dtype=torch.int32))
