"""Paged decode attention in Triton: split-KV (flash-decoding) and GQA-aware.

Stage 1 runs one program per (request, KV head, head block, KV split). The program loads the
query rows of every query head that shares the KV head (``Hq / Hkv`` of them, padded to a
tensor-core friendly block), walks its share of the request's slots through the slot table,
and keeps an online softmax; K/V rows are therefore read once per KV head, not once per query
head. It writes a partial output and its log-sum-exp per split. Stage 2 merges the splits.

The launch needs no host synchronisation (no ``.item()``), so it can be captured in a CUDA
graph: the number of splits is fixed per batch shape and each program derives its slot range
from ``seq_lens`` on the device.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
_MAX_SPLITS = 16


@triton.jit
def _decode_partial_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    req_to_token_ptr,
    req_pool_indices_ptr,
    seq_lens_ptr,
    mid_out_ptr,
    mid_lse_ptr,
    scale_log2,
    stride_qb,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_rt_row,
    stride_rt_col,
    stride_mid_b,
    stride_mid_h,
    stride_mid_s,
    stride_lse_b,
    stride_lse_h,
    GROUP: tl.constexpr,
    HEAD_BLOCKS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Partial attention of one split of one request's slots, for one group of query heads."""
    batch = tl.program_id(0)
    kv_head = tl.program_id(1) // HEAD_BLOCKS
    head_block = tl.program_id(1) % HEAD_BLOCKS
    split = tl.program_id(2)

    group_offs = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    head_mask = group_offs < GROUP
    q_heads = kv_head * GROUP + group_offs
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM

    seq_len = tl.load(seq_lens_ptr + batch).to(tl.int32)
    table_row = tl.load(req_pool_indices_ptr + batch).to(tl.int64)
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    q = tl.load(
        q_ptr + batch * stride_qb + q_heads[:, None] * stride_qh + offs_d[None, :],
        mask=head_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    row_max = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    for block_start in range(start, end, BLOCK_N):
        offs_n = block_start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        slots = tl.load(
            req_to_token_ptr + table_row * stride_rt_row + offs_n * stride_rt_col, mask=n_mask, other=0
        ).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + slots[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :], mask=kv_mask)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        scores = tl.where(n_mask[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        probs = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        v = tl.load(v_ptr + slots[:, None] * stride_vs + kv_head * stride_vh + offs_d[None, :], mask=kv_mask)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
        row_max = new_max

    has_keys = end > start
    safe_sum = tl.where(row_sum > 0, row_sum, 1.0)
    lse = tl.where(has_keys, row_max + tl.log2(safe_sum), float("-inf"))
    mid_offs = batch * stride_mid_b + q_heads[:, None] * stride_mid_h + split * stride_mid_s + offs_d[None, :]
    tl.store(mid_out_ptr + mid_offs, acc / safe_sum[:, None], mask=head_mask[:, None] & d_mask[None, :])
    tl.store(mid_lse_ptr + batch * stride_lse_b + q_heads * stride_lse_h + split, lse, mask=head_mask)


@triton.jit
def _decode_merge_kernel(
    mid_out_ptr,
    mid_lse_ptr,
    out_ptr,
    stride_mid_b,
    stride_mid_h,
    stride_mid_s,
    stride_lse_b,
    stride_lse_h,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Merge the per-split partial outputs of one (request, query head) by their log-sum-exps."""
    batch = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    lse = tl.load(
        mid_lse_ptr + batch * stride_lse_b + head * stride_lse_h + offs_s,
        mask=offs_s < NUM_SPLITS,
        other=float("-inf"),
    )
    used = lse > float("-inf")
    top = tl.max(tl.where(used, lse, -1.0e30), 0)
    weights = tl.where(used, tl.exp2(lse - top), 0.0)
    partial = tl.load(
        mid_out_ptr
        + batch * stride_mid_b
        + head * stride_mid_h
        + offs_s[:, None] * stride_mid_s
        + offs_d[None, :],
        mask=used[:, None] & d_mask[None, :],
        other=0.0,
    )
    total = tl.sum(weights, 0)
    merged = tl.sum(weights[:, None] * partial, 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + batch * stride_ob + head * stride_oh + offs_d, merged, mask=d_mask)


@functools.cache
def _multiprocessor_count(device_index: int) -> int:
    """Streaming multiprocessors of a CUDA device (cached: it never changes)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_num_splits(batch: int, num_kv_heads: int, head_blocks: int, device: torch.device) -> int:
    """Enough KV splits to give every SM about four programs; 4 on CPU (exercises the merge)."""
    if device.type != "cuda":
        return 4
    programs = batch * num_kv_heads * head_blocks
    target = 4 * _multiprocessor_count(device.index if device.index is not None else 0)
    return max(1, min(_MAX_SPLITS, triton.cdiv(target, max(programs, 1))))


def check_attention_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """Reject shapes the kernel cannot handle with a message that says why."""
    if q.dim() != 3 or k_cache.dim() != 3 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"expected q[B,Hq,D] and k/v caches [S,Hkv,D] of one shape; got {tuple(q.shape)}, "
            f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}"
        )
    if q.shape[2] != k_cache.shape[2] or q.shape[1] % k_cache.shape[1]:
        raise ValueError(
            f"head dims must match and Hq must be a multiple of Hkv: {q.shape} vs {k_cache.shape}"
        )
    if not q.dtype == k_cache.dtype == v_cache.dtype:
        raise ValueError(f"q and the caches must share a dtype: {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last (head) dim")


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Decode attention of ``q[B, Hq, D]`` over the paged cache; see ``decode_attention_ref``.

    The keyword-only knobs exist for the benchmark's tuning sweep; callers leave them alone.
    """
    check_attention_inputs(q, k_cache, v_cache)
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    block_h = max(16, triton.next_power_of_2(min(group, 64)))
    head_blocks = triton.cdiv(group, block_h)
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_n = block_n or (64 if q.is_cuda else 32)
    splits = num_splits or default_num_splits(batch, num_kv_heads, head_blocks, q.device)

    out = torch.empty_like(q)
    if batch == 0:
        return out
    mid_out = torch.empty((batch, num_q_heads, splits, head_dim), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty((batch, num_q_heads, splits), dtype=torch.float32, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _decode_partial_kernel[(batch, num_kv_heads * head_blocks, splits)](
        q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, mid_out, mid_lse,
        scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), req_to_token.stride(0), req_to_token.stride(1),
        mid_out.stride(0), mid_out.stride(1), mid_out.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        GROUP=group, HEAD_BLOCKS=head_blocks, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_H=block_h,
        BLOCK_N=block_n, NUM_SPLITS=splits, DOT_PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    _decode_merge_kernel[(batch, num_q_heads)](
        mid_out, mid_lse, out,
        mid_out.stride(0), mid_out.stride(1), mid_out.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=splits,
        BLOCK_S=max(2, triton.next_power_of_2(splits)),
        num_warps=4 if head_dim >= 128 else 2,
    )  # fmt: skip
    return out
