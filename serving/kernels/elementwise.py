"""Fused small ops in Triton: RMSNorm, residual-add + RMSNorm, SiLU-and-mul, and ``rotary_store_kv``
(per-head q/k norm, rotary embedding and the KV-cache write: everything between a layer's qkv
projection and its attention, in one launch).

Each saves a round trip through memory against the eager PyTorch sequence (which launches one
kernel per elementwise op and writes every fp32 intermediate). All math is in fp32; results
are cast back to the input dtype. Every op returns new tensors and leaves its inputs alone, except
that ``rotary_store_kv`` writes K/V into the cache tensors it is given.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from serving.kernels.reference import has_qk_norm


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    new_residual_ptr,
    stride_x,
    stride_r,
    stride_o,
    stride_nr,
    hidden,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Normalise one row; with HAS_RESIDUAL, first add the residual row and store the sum."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        total = x.to(tl.float32) + tl.load(residual_ptr + row * stride_r + offs, mask=mask, other=0.0).to(
            tl.float32
        )
        x = total.to(x.dtype)
        tl.store(new_residual_ptr + row * stride_nr + offs, x, mask=mask)
    x32 = x.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(x32 * x32, 0) / hidden + eps)
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (x32 * inv_rms * weight).to(x.dtype), mask=mask)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """View ``x[..., H]`` as ``[N, H]`` with a unit stride in H (copying only if needed)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _norm_launch_options(hidden: int) -> tuple[int, int]:
    """Block size (whole row) and warps for a row of ``hidden`` elements."""
    block = triton.next_power_of_2(hidden)
    return block, max(1, min(16, block // 256))


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim; see ``rms_norm_ref``."""
    rows = _as_rows(x)
    out = torch.empty_like(rows)
    block, warps = _norm_launch_options(rows.shape[1])
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](
            rows, rows, weight, out, out,
            rows.stride(0), rows.stride(0), out.stride(0), out.stride(0), rows.shape[1], eps,
            HAS_RESIDUAL=False, BLOCK=block, num_warps=warps,
        )  # fmt: skip
    return out.view(x.shape)


def fused_add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)`` in one pass; see ``fused_add_rms_norm_ref``."""
    if x.shape != residual.shape:
        raise ValueError(f"x and residual shapes differ: {tuple(x.shape)} vs {tuple(residual.shape)}")
    rows, residual_rows = _as_rows(x), _as_rows(residual)
    out, new_residual = torch.empty_like(rows), torch.empty_like(rows)
    block, warps = _norm_launch_options(rows.shape[1])
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](
            rows, residual_rows, weight, out, new_residual,
            rows.stride(0), residual_rows.stride(0), out.stride(0), new_residual.stride(0),
            rows.shape[1], eps, HAS_RESIDUAL=True, BLOCK=block, num_warps=warps,
        )  # fmt: skip
    return out.view(x.shape), new_residual.view(x.shape)


@triton.jit
def _rotate_heads(
    x_ptr,
    token,
    head_block,
    stride_xt,
    stride_xh,
    num_heads,
    cos,
    sin,
    norm_weight_ptr,
    eps,
    HAS_NORM: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    IS_NEOX: tl.constexpr,
):
    """Load BLOCK_H heads of one token, RMS-normalise each head (HAS_NORM), rotate them.

    Returns the rotated halves (fp32), their column indices within a head and the mask.
    """
    offs_h = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_f = tl.arange(0, BLOCK_HALF)
    if IS_NEOX:
        first_idx = offs_f
        second_idx = offs_f + HALF
    else:
        first_idx = 2 * offs_f
        second_idx = 2 * offs_f + 1
    mask = (offs_h < num_heads)[:, None] & (offs_f < HALF)[None, :]
    rows = x_ptr + token * stride_xt + offs_h[:, None] * stride_xh
    first = tl.load(rows + first_idx[None, :], mask=mask, other=0.0)
    second = tl.load(rows + second_idx[None, :], mask=mask, other=0.0)
    first32, second32 = first.to(tl.float32), second.to(tl.float32)
    if HAS_NORM:
        # Per-head RMSNorm (Qwen3), rounded to the input dtype as the unfused norm would be.
        mean_square = (tl.sum(first32 * first32, 1) + tl.sum(second32 * second32, 1)) / (2 * HALF)
        inv_rms = (1.0 / tl.sqrt(mean_square + eps))[:, None]
        f_mask = offs_f < HALF
        w_first = tl.load(norm_weight_ptr + first_idx, mask=f_mask, other=0.0).to(tl.float32)[None, :]
        w_second = tl.load(norm_weight_ptr + second_idx, mask=f_mask, other=0.0).to(tl.float32)[None, :]
        first32 = (first32 * inv_rms * w_first).to(first.dtype).to(tl.float32)
        second32 = (second32 * inv_rms * w_second).to(first.dtype).to(tl.float32)
    rotated_first = first32 * cos - second32 * sin
    rotated_second = second32 * cos + first32 * sin
    return rotated_first, rotated_second, offs_h, first_idx, second_idx, mask


@triton.jit
def _token_angles(
    positions_ptr, cos_sin_ptr, token, stride_cache, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr
):
    """fp32 cos and sin rows ``[1, BLOCK_HALF]`` of one token's position."""
    offs_f = tl.arange(0, BLOCK_HALF)
    f_mask = offs_f < HALF
    angles_row = cos_sin_ptr + tl.load(positions_ptr + token).to(tl.int64) * stride_cache
    cos = tl.load(angles_row + offs_f, mask=f_mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(angles_row + HALF + offs_f, mask=f_mask, other=0.0).to(tl.float32)[None, :]
    return cos, sin


def _check_rotary_shapes(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache) -> None:
    head_dim = q.shape[-1]
    if head_dim % 2 or k.shape[-1] != head_dim or cos_sin_cache.shape[-1] != head_dim:
        raise ValueError(
            f"rotary needs an even head dim shared by q, k and cos_sin_cache; got {q.shape[-1]}, "
            f"{k.shape[-1]}, {cos_sin_cache.shape[-1]}"
        )
    if q.shape[0] != k.shape[0] or positions.shape[0] != q.shape[0]:
        raise ValueError(
            f"q, k and positions need one row per token: {q.shape}, {k.shape}, {positions.shape}"
        )


def _head_blocks(head_dim: int, num_q_heads: int, num_k_heads: int) -> tuple[int, int, int, int]:
    """(BLOCK_HALF, BLOCK_H, q blocks, k blocks) of the rotary launches: ~2k elements a program."""
    block_half = triton.next_power_of_2(head_dim // 2)
    block_h = max(1, min(triton.next_power_of_2(max(num_q_heads, num_k_heads)), 2048 // block_half))
    return block_half, block_h, triton.cdiv(num_q_heads, block_h), triton.cdiv(num_k_heads, block_h)


@triton.jit
def _rotary_store_kv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_cache_loc_ptr,
    positions_ptr,
    cos_sin_ptr,
    q_norm_ptr,
    k_norm_ptr,
    eps,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_qot,
    stride_qoh,
    stride_cs,
    stride_ch,
    stride_cache,
    num_q_heads,
    num_kv_heads,
    Q_BLOCKS: tl.constexpr,
    HAS_NORM: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_NEOX: tl.constexpr,
):
    """q head blocks: (norm,) rotate, write q_out. KV head blocks: (norm,) rotate k and store
    it with v into the caches at the token's slot."""
    token = tl.program_id(0).to(tl.int64)
    head_block = tl.program_id(1)
    cos, sin = _token_angles(positions_ptr, cos_sin_ptr, token, stride_cache, HALF, BLOCK_HALF)
    if head_block < Q_BLOCKS:
        first, second, offs_h, first_idx, second_idx, mask = _rotate_heads(
            q_ptr, token, head_block, stride_qt, stride_qh, num_q_heads, cos, sin, q_norm_ptr, eps,
            HAS_NORM, HALF, BLOCK_H, BLOCK_HALF, IS_NEOX,
        )  # fmt: skip
        out_rows = q_out_ptr + token * stride_qot + offs_h[:, None] * stride_qoh
        tl.store(out_rows + first_idx[None, :], first.to(q_out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_rows + second_idx[None, :], second.to(q_out_ptr.dtype.element_ty), mask=mask)
    else:
        kv_block = head_block - Q_BLOCKS
        first, second, offs_h, first_idx, second_idx, mask = _rotate_heads(
            k_ptr, token, kv_block, stride_kt, stride_kh, num_kv_heads, cos, sin, k_norm_ptr, eps,
            HAS_NORM, HALF, BLOCK_H, BLOCK_HALF, IS_NEOX,
        )  # fmt: skip
        slot = tl.load(out_cache_loc_ptr + token).to(tl.int64)
        k_rows = k_cache_ptr + slot * stride_cs + offs_h[:, None] * stride_ch
        tl.store(k_rows + first_idx[None, :], first.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(k_rows + second_idx[None, :], second.to(k_cache_ptr.dtype.element_ty), mask=mask)
        offs_d = tl.arange(0, BLOCK_D)
        v_mask = (offs_h < num_kv_heads)[:, None] & (offs_d < 2 * HALF)[None, :]
        values = tl.load(
            v_ptr + token * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=v_mask, other=0.0
        )
        v_rows = v_cache_ptr + slot * stride_cs + offs_h[:, None] * stride_ch
        tl.store(v_rows + offs_d[None, :], values.to(v_cache_ptr.dtype.element_ty), mask=v_mask)


def rotary_store_kv_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out_cache_loc: torch.Tensor,
    is_neox: bool = True,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """One launch per layer for what precedes attention; see ``rotary_store_kv_ref``."""
    _check_rotary_shapes(q, k, positions, cos_sin_cache)
    has_norm = has_qk_norm(q_norm_weight, k_norm_weight)
    if v.shape != k.shape or k_cache.shape[1:] != k.shape[1:] or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"k {tuple(k.shape)}, v {tuple(v.shape)} and caches {tuple(k_cache.shape)}, "
            f"{tuple(v_cache.shape)} disagree on heads or head dim"
        )
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache need the same strides and a unit stride in head_dim")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if cos_sin_cache.stride(-1) != 1:
        cos_sin_cache = cos_sin_cache.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    head_dim = q.shape[-1]
    block_half, block_h, q_blocks, kv_blocks = _head_blocks(head_dim, q.shape[1], k.shape[1])
    norms = (q_norm_weight, k_norm_weight) if has_norm else (q, k)  # unused pointers without a norm
    if q.shape[0]:
        _rotary_store_kv_kernel[(q.shape[0], q_blocks + kv_blocks)](
            q, k, v, q_out, k_cache, v_cache, out_cache_loc, positions, cos_sin_cache,
            norms[0], norms[1], eps,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            q_out.stride(0), q_out.stride(1), k_cache.stride(0), k_cache.stride(1),
            cos_sin_cache.stride(0), q.shape[1], k.shape[1],
            Q_BLOCKS=q_blocks, HAS_NORM=has_norm, HALF=head_dim // 2, BLOCK_H=block_h,
            BLOCK_HALF=block_half, BLOCK_D=triton.next_power_of_2(head_dim), IS_NEOX=is_neox,
            num_warps=4,
        )  # fmt: skip
    return q_out


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, inner, BLOCK: tl.constexpr):
    """``silu(gate) * up`` for one block of one row."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inner
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + inner + offs, mask=mask, other=0.0).to(tl.float32)
    gate32 = gate.to(tl.float32)
    activated = gate32 / (1.0 + tl.exp(-gate32)) * up
    tl.store(out_ptr + row * stride_o + offs, activated.to(gate.dtype), mask=mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :I]) * x[..., I:]``; see ``silu_and_mul_ref``."""
    if x.shape[-1] % 2:
        raise ValueError(f"silu_and_mul needs an even last dim; got {x.shape[-1]}")
    rows = _as_rows(x)
    inner = rows.shape[1] // 2
    out = torch.empty((rows.shape[0], inner), dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(inner))
    if rows.shape[0]:
        _silu_and_mul_kernel[(rows.shape[0], triton.cdiv(inner, block))](
            rows, out, rows.stride(0), out.stride(0), inner, BLOCK=block, num_warps=4
        )
    return out.view(*x.shape[:-1], inner)
