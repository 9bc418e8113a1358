"""Triton kernels of the batched LoRA products: SGMV for prefill segments, BGMV for decode rows.

See ``lora_reference.py`` for the semantics. LoRA ranks are small (8-64), so the products are
memory-bound: SGMV tiles each request's segment of rows against its adapter's matrices with
``tl.dot`` (a segment of a prefill is many rows sharing one adapter), while BGMV gives every
decode row its own program that streams its adapter's rows with plain multiply-adds (no
``tl.dot``: one row, any dtype, also under the interpreter). Programs whose rows have no
adapter (slot -1) or lie past their segment exit at once. Every stride is passed, so the
merged projections run the expand on column slices of one output (q|k|v, gate|up).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sgmv_shrink_kernel(
    x_ptr, a_ptr, out_ptr, seg_starts_ptr, seg_slots_ptr, K, R,
    stride_xt, stride_xk, stride_as, stride_ar, stride_ak, stride_ot, stride_or,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """``out[m, r] = sum_k x[m, k] * a[slot, r, k]`` for a BLOCK_M x BLOCK_R tile of one segment."""
    segment = tl.program_id(0)
    slot = tl.load(seg_slots_ptr + segment).to(tl.int64)
    start = tl.load(seg_starts_ptr + segment)
    end = tl.load(seg_starts_ptr + segment + 1)
    first_row = start + tl.program_id(1) * BLOCK_M
    if (slot < 0) | (first_row >= end):
        return
    offs_m = first_row + tl.arange(0, BLOCK_M)
    offs_r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
    m_mask = offs_m < end
    r_mask = offs_r < R
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xt
    a_cols = a_ptr + slot * stride_as + offs_r.to(tl.int64)[None, :] * stride_ar
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        a = tl.load(a_cols + offs_k[:, None] * stride_ak, mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        acc += tl.dot(x, a)
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_ot + offs_r[None, :] * stride_or
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & r_mask[None, :])


@triton.jit
def _sgmv_expand_kernel(
    t_ptr, b_ptr, out_ptr, seg_starts_ptr, seg_slots_ptr, N, R,
    stride_tt, stride_tr, stride_bs, stride_bn, stride_br, stride_ot, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """``out[m, n] += sum_r t[m, r] * b[slot, n, r]`` for a BLOCK_M x BLOCK_N tile of one segment."""
    segment = tl.program_id(0)
    slot = tl.load(seg_slots_ptr + segment).to(tl.int64)
    start = tl.load(seg_starts_ptr + segment)
    end = tl.load(seg_starts_ptr + segment + 1)
    first_row = start + tl.program_id(1) * BLOCK_M
    if (slot < 0) | (first_row >= end):
        return
    offs_m = first_row + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < end
    n_mask = offs_n < N
    t_rows = t_ptr + offs_m.to(tl.int64)[:, None] * stride_tt
    b_cols = b_ptr + slot * stride_bs + offs_n.to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r_start in range(0, R, BLOCK_R):
        offs_r = r_start + tl.arange(0, BLOCK_R)
        r_mask = offs_r < R
        t = tl.load(t_rows + offs_r[None, :] * stride_tr, mask=m_mask[:, None] & r_mask[None, :], other=0.0)
        b = tl.load(b_cols + offs_r[:, None] * stride_br, mask=r_mask[:, None] & n_mask[None, :], other=0.0)
        acc += tl.dot(t, b)
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_ot + offs_n[None, :] * stride_on
    mask = m_mask[:, None] & n_mask[None, :]
    previous = tl.load(out, mask=mask, other=0.0).to(tl.float32)
    tl.store(out, (previous + acc).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bgmv_shrink_kernel(
    x_ptr, a_ptr, out_ptr, slots_ptr, K, R,
    stride_xt, stride_xk, stride_as, stride_ar, stride_ak, stride_ot, stride_or,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """``out[i, r] = sum_k x[i, k] * a[slot_i, r, k]`` for BLOCK_R ranks of row i."""
    row = tl.program_id(0)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    if slot < 0:
        return
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < R
    a_rows = a_ptr + slot * stride_as + offs_r.to(tl.int64)[:, None] * stride_ar
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_ptr + row * stride_xt + offs_k * stride_xk, mask=k_mask, other=0.0).to(tl.float32)
        a = tl.load(a_rows + offs_k[None, :] * stride_ak, mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.sum(a.to(tl.float32) * x[None, :], axis=1)
    tl.store(out_ptr + row * stride_ot + offs_r * stride_or, acc.to(out_ptr.dtype.element_ty), mask=r_mask)


@triton.jit
def _bgmv_expand_kernel(
    t_ptr, b_ptr, out_ptr, slots_ptr, N, R,
    stride_tt, stride_tr, stride_bs, stride_bn, stride_br, stride_ot, stride_on,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """``out[i, n] += sum_r t[i, r] * b[slot_i, n, r]`` for BLOCK_N outputs of row i."""
    row = tl.program_id(0)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    if slot < 0:
        return
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    b_rows = b_ptr + slot * stride_bs + offs_n.to(tl.int64)[:, None] * stride_bn
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r_start in range(0, R, BLOCK_R):
        offs_r = r_start + tl.arange(0, BLOCK_R)
        r_mask = offs_r < R
        t = tl.load(t_ptr + row * stride_tt + offs_r * stride_tr, mask=r_mask, other=0.0).to(tl.float32)
        b = tl.load(b_rows + offs_r[None, :] * stride_br, mask=n_mask[:, None] & r_mask[None, :], other=0.0)
        acc += tl.sum(b.to(tl.float32) * t[None, :], axis=1)
    out = out_ptr + row * stride_ot + offs_n * stride_on
    previous = tl.load(out, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out, (previous + acc).to(out_ptr.dtype.element_ty), mask=n_mask)


def _check(x: torch.Tensor, weights: torch.Tensor, inner: int, what: str) -> None:
    if weights.dim() != 3 or x.dim() != 2 or weights.shape[2] != inner or x.shape[1] != inner:
        raise ValueError(f"{what}: shapes {tuple(x.shape)} and {tuple(weights.shape)} do not match")


def _sgmv_tile(max_seg_len: int) -> int:
    """Row tile of the SGMV kernels: 16 for short segments (tl.dot's minimum), 64 for long ones."""
    return 16 if max_seg_len <= 16 else 32 if max_seg_len <= 32 else 64


def sgmv_shrink_triton(
    x: torch.Tensor, a: torch.Tensor, seg_starts: torch.Tensor, seg_slots: torch.Tensor, max_seg_len: int
) -> torch.Tensor:
    _check(x, a, x.shape[1], "sgmv_shrink")
    rank = a.shape[1]
    out = torch.zeros((x.shape[0], rank), dtype=x.dtype, device=x.device)
    if seg_slots.numel() == 0 or max_seg_len == 0:
        return out
    block_m, block_r = _sgmv_tile(max_seg_len), max(16, triton.next_power_of_2(min(rank, 64)))
    grid = (seg_slots.numel(), triton.cdiv(max_seg_len, block_m), triton.cdiv(rank, block_r))
    _sgmv_shrink_kernel[grid](
        x, a, out, seg_starts, seg_slots, x.shape[1], rank,
        x.stride(0), x.stride(1), a.stride(0), a.stride(1), a.stride(2), out.stride(0), out.stride(1),
        BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=64,
    )  # fmt: skip
    return out


def sgmv_expand_triton(
    out: torch.Tensor,
    t: torch.Tensor,
    b: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    max_seg_len: int,
) -> torch.Tensor:
    _check(t, b, t.shape[1], "sgmv_expand")
    rank, width = b.shape[2], b.shape[1]
    if seg_slots.numel() == 0 or max_seg_len == 0:
        return out
    block_m, block_r = _sgmv_tile(max_seg_len), max(16, triton.next_power_of_2(min(rank, 64)))
    grid = (seg_slots.numel(), triton.cdiv(max_seg_len, block_m), triton.cdiv(width, 64))
    _sgmv_expand_kernel[grid](
        t, b, out, seg_starts, seg_slots, width, rank,
        t.stride(0), t.stride(1), b.stride(0), b.stride(1), b.stride(2), out.stride(0), out.stride(1),
        BLOCK_M=block_m, BLOCK_N=64, BLOCK_R=block_r,
    )  # fmt: skip
    return out


def bgmv_shrink_triton(x: torch.Tensor, a: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
    _check(x, a, x.shape[1], "bgmv_shrink")
    rank = a.shape[1]
    out = torch.zeros((x.shape[0], rank), dtype=x.dtype, device=x.device)
    if x.shape[0] == 0:
        return out
    block_r = triton.next_power_of_2(min(rank, 32))
    grid = (x.shape[0], triton.cdiv(rank, block_r))
    _bgmv_shrink_kernel[grid](
        x, a, out, token_slots, x.shape[1], rank,
        x.stride(0), x.stride(1), a.stride(0), a.stride(1), a.stride(2), out.stride(0), out.stride(1),
        BLOCK_R=block_r, BLOCK_K=128,
    )  # fmt: skip
    return out


def bgmv_expand_triton(
    out: torch.Tensor, t: torch.Tensor, b: torch.Tensor, token_slots: torch.Tensor
) -> torch.Tensor:
    _check(t, b, t.shape[1], "bgmv_expand")
    rank, width = b.shape[2], b.shape[1]
    if t.shape[0] == 0:
        return out
    grid = (t.shape[0], triton.cdiv(width, 128))
    _bgmv_expand_kernel[grid](
        t, b, out, token_slots, width, rank,
        t.stride(0), t.stride(1), b.stride(0), b.stride(1), b.stride(2), out.stride(0), out.stride(1),
        BLOCK_N=128, BLOCK_R=triton.next_power_of_2(min(rank, 64)),
    )  # fmt: skip
    return out
