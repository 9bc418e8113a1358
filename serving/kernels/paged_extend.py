"""Causal extend (prefill, chunked prefill, prefix hit) attention over the paged KV pool.

Flash-attention style: one program per (request, block of BLOCK_M new tokens, query head)
streams the request's keys in blocks of BLOCK_N through the slot table with an online
softmax. The new tokens' K/V are already in the pool, so prefix and new keys are read the
same way; only the keys a block can see (up to its last token's position) are visited.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from serving.kernels.paged_decode import LOG2E, check_attention_inputs

# (block_m, block_n, num_warps, num_stages) the benchmark sweeps and the GPU tests verify;
# the first is the default on CUDA.
LAUNCH_VARIANTS = (
    (64, 64, 4, 2),
    (64, 64, 4, 3),
    (128, 64, 8, 2),
    (128, 64, 8, 3),
    (64, 32, 4, 3),
    (128, 32, 4, 2),
)


@triton.jit
def _attend_key_block(
    acc,
    row_max,
    row_sum,
    q,
    query_pos,
    block_start,
    kv_end,
    k_ptr,
    v_ptr,
    slot_row_ptr,
    stride_rt_col,
    kv_head_k_offset,
    kv_head_v_offset,
    stride_ks,
    stride_vs,
    offs_d,
    d_mask,
    scale_log2,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One online-softmax step over keys ``block_start ..+ BLOCK_N``.

    MASKED=False is the fast path for key blocks that lie wholly before every query of the
    tile (all visible, all in range): no bounds or causal masks.
    """
    offs_n = block_start + tl.arange(0, BLOCK_N)
    if MASKED:
        n_mask = offs_n < kv_end
        slots = tl.load(slot_row_ptr + offs_n * stride_rt_col, mask=n_mask, other=0).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
    else:
        slots = tl.load(slot_row_ptr + offs_n * stride_rt_col).to(tl.int64)
        kv_mask = d_mask[None, :]
    k = tl.load(k_ptr + kv_head_k_offset + slots[:, None] * stride_ks + offs_d[None, :], mask=kv_mask)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    if MASKED:
        visible = n_mask[None, :] & (offs_n[None, :] <= query_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    probs = tl.exp2(scores - new_max[:, None])
    rescale = tl.exp2(row_max - new_max)
    row_sum = row_sum * rescale + tl.sum(probs, 1)
    v = tl.load(v_ptr + kv_head_v_offset + slots[:, None] * stride_vs + offs_d[None, :], mask=kv_mask)
    acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, new_max, row_sum


@triton.jit
def _extend_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    req_to_token_ptr,
    req_pool_indices_ptr,
    seq_lens_ptr,
    extend_lens_ptr,
    q_start_ptr,
    scale_log2,
    stride_qt,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_rt_row,
    stride_rt_col,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Attention of BLOCK_M new tokens of one request for one query head."""
    batch = tl.program_id(0)
    block_m = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP

    seq_len = tl.load(seq_lens_ptr + batch).to(tl.int32)
    extend_len = tl.load(extend_lens_ptr + batch).to(tl.int32)
    token_start = tl.load(q_start_ptr + batch).to(tl.int64)
    table_row = tl.load(req_pool_indices_ptr + batch).to(tl.int64)
    prefix_len = seq_len - extend_len

    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < extend_len
    query_pos = prefix_len + offs_m
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    # Keys visible to this tile: positions 0 ..= its last token's; none if the tile is empty.
    # Keys up to the tile's first token are visible to all its rows: whole key blocks below
    # that bound take the unmasked path.
    kv_end = tl.minimum(seq_len, prefix_len + (block_m + 1) * BLOCK_M)
    kv_end = tl.where(block_m * BLOCK_M < extend_len, kv_end, 0)
    unmasked_end = tl.minimum((prefix_len + block_m * BLOCK_M + 1) // BLOCK_N * BLOCK_N, kv_end)

    q_rows = token_start + offs_m
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    slot_row_ptr = req_to_token_ptr + table_row * stride_rt_row
    k_head, v_head = kv_head * stride_kh, kv_head * stride_vh
    for block_start in range(0, unmasked_end, BLOCK_N):
        acc, row_max, row_sum = _attend_key_block(
            acc, row_max, row_sum, q, query_pos, block_start, kv_end, k_ptr, v_ptr, slot_row_ptr,
            stride_rt_col, k_head, v_head, stride_ks, stride_vs, offs_d, d_mask, scale_log2,
            BLOCK_N=BLOCK_N, MASKED=False, DOT_PRECISION=DOT_PRECISION,
        )  # fmt: skip
    for block_start in range(unmasked_end, kv_end, BLOCK_N):
        acc, row_max, row_sum = _attend_key_block(
            acc, row_max, row_sum, q, query_pos, block_start, kv_end, k_ptr, v_ptr, slot_row_ptr,
            stride_rt_col, k_head, v_head, stride_ks, stride_vs, offs_d, d_mask, scale_log2,
            BLOCK_N=BLOCK_N, MASKED=True, DOT_PRECISION=DOT_PRECISION,
        )  # fmt: skip

    out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
    tl.store(
        out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
        out,
        mask=m_mask[:, None] & d_mask[None, :],
    )


def extend_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    q_start: torch.Tensor,
    scale: float,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int = LAUNCH_VARIANTS[0][3],
) -> torch.Tensor:
    """Causal extend attention of ``q[T, Hq, D]``; see ``extend_attention_ref``.

    Reads ``max(extend_lens)`` on the host to size the grid (one sync per prefill batch).
    Rows of ``q`` that belong to no request are zero. The keyword-only knobs exist for the
    benchmark's tuning sweep.
    """
    check_attention_inputs(q, k_cache, v_cache)
    num_tokens, num_q_heads, head_dim = q.shape
    group = num_q_heads // k_cache.shape[1]
    batch = req_pool_indices.shape[0]
    out = torch.zeros_like(q)
    if batch == 0 or num_tokens == 0:
        return out
    block_d = max(16, triton.next_power_of_2(head_dim))
    default_m, default_n, default_warps, _ = LAUNCH_VARIANTS[0] if q.is_cuda else (16, 32, 4, 1)
    block_m, block_n = block_m or default_m, block_n or default_n
    num_warps = num_warps or default_warps
    max_extend = int(extend_lens.max().item())
    grid = (batch, triton.cdiv(max(max_extend, 1), block_m), num_q_heads)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _extend_kernel[grid](
        q, k_cache, v_cache, out, req_to_token, req_pool_indices, seq_lens, extend_lens, q_start,
        scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        out.stride(0), out.stride(1), req_to_token.stride(0), req_to_token.stride(1),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_PRECISION=precision, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out
