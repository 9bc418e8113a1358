"""Sparse decode attention in Triton: Double Sparsity's label scores and gathered attention,
and H2O's attention-mass accumulation. References: :mod:`serving.kernels.sparse_reference`.

* ``label_scores_triton`` - one program per (request, KV head, block of positions): loads the
  heavy channels of the group's query heads once, the label rows of its positions through the
  slot table, one small ``tl.dot`` (R channels padded to 16), max over the group, sink/recent
  forced to ``+inf``. Reads ``R / D`` of what dense attention reads for keys, and no values.
* ``gathered_decode_attention_triton`` - the split-KV decode of ``paged_decode`` with one more
  indirection: a program walks its share of the *selected* positions of its KV head, so K/V
  rows are read only for the ``K`` chosen tokens. The splits merge with ``paged_decode``'s
  merge kernel.
* ``h2o_decode_attention_triton`` - dense split-KV decode whose partial programs also store
  their scaled scores (``[B, Hq, W]`` fp32 scratch: 4 bytes per query head and token, an eighth
  of re-reading a bf16 key under Llama-3-8B's GQA); a third kernel turns them into
  probabilities with the merged log-sum-exp and adds them (summed over the group) to the
  layer's per-slot mass table with atomics.

No launch synchronises with the host, so all of them can run inside CUDA graphs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from serving.kernels.paged_decode import (
    LOG2E,
    _decode_merge_kernel,
    check_attention_inputs,
    default_num_splits,
)

_MIN_DOT = 16  # tl.dot needs every dimension >= 16


@triton.jit
def _label_scores_kernel(
    q_ptr,
    labels_ptr,
    channels_ptr,
    req_to_token_ptr,
    req_pool_indices_ptr,
    seq_lens_ptr,
    scores_ptr,
    sink,
    recent,
    max_len,
    stride_qb,
    stride_qh,
    stride_ls,
    stride_lh,
    stride_ch,
    stride_rt_row,
    stride_rt_col,
    stride_sb,
    stride_sh,
    GROUP: tl.constexpr,
    NUM_CHANNELS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Approximate scores of one block of one request's positions for one KV head."""
    batch = tl.program_id(0)
    kv_head = tl.program_id(1)
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, BLOCK_H)
    offs_r = tl.arange(0, BLOCK_R)
    head_mask = offs_h < GROUP
    r_mask = offs_r < NUM_CHANNELS

    seq_len = tl.load(seq_lens_ptr + batch).to(tl.int32)
    table_row = tl.load(req_pool_indices_ptr + batch).to(tl.int64)
    valid = offs_n < seq_len
    channels = tl.load(channels_ptr + kv_head * stride_ch + offs_r, mask=r_mask, other=0)
    q_heads = kv_head * GROUP + offs_h
    q_heavy = tl.load(
        q_ptr + batch * stride_qb + q_heads[:, None] * stride_qh + channels[None, :],
        mask=head_mask[:, None] & r_mask[None, :],
        other=0.0,
    )
    slots = tl.load(
        req_to_token_ptr + table_row * stride_rt_row + offs_n * stride_rt_col, mask=valid, other=0
    ).to(tl.int64)
    labels = tl.load(
        labels_ptr + slots[:, None] * stride_ls + kv_head * stride_lh + offs_r[None, :],
        mask=valid[:, None] & r_mask[None, :],
        other=0.0,
    )
    scores = tl.dot(q_heavy, tl.trans(labels), input_precision=DOT_PRECISION)  # [BLOCK_H, BLOCK_N]
    scores = tl.where(head_mask[:, None], scores, float("-inf"))
    best = tl.max(scores, 0)
    kept = (offs_n < sink) | (offs_n >= seq_len - recent)
    best = tl.where(kept, float("inf"), best)
    best = tl.where(valid, best, float("-inf"))
    tl.store(scores_ptr + batch * stride_sb + kv_head * stride_sh + offs_n, best, mask=offs_n < max_len)


@triton.jit
def _sparse_partial_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    req_to_token_ptr,
    req_pool_indices_ptr,
    seq_lens_ptr,
    positions_ptr,
    scores_ptr,
    mid_out_ptr,
    mid_lse_ptr,
    num_selected,
    scale_log2,
    stride_qb,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_rt_row,
    stride_rt_col,
    stride_pb,
    stride_ph,
    stride_sb,
    stride_sh,
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
    GATHERED: tl.constexpr,
    STORE_SCORES: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Partial attention of one split, for one group of query heads.

    GATHERED: the split covers entries of ``positions[b, kv_head, :num_selected]`` (positions
    past the request's length skipped); else the request's positions ``0 .. seq_len``.
    STORE_SCORES: also write each key's scaled (log2-domain) score to ``scores[b, head, n]``.
    """
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
    total = num_selected + 0 * seq_len if GATHERED else seq_len  # valid entries may sit anywhere in K
    split_len = tl.cdiv(tl.cdiv(total, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, total)

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
        if GATHERED:
            pos = tl.load(
                positions_ptr + batch * stride_pb + kv_head * stride_ph + offs_n, mask=n_mask, other=0
            ).to(tl.int32)
            n_mask = n_mask & (pos < seq_len)
        else:
            pos = offs_n
        slots = tl.load(
            req_to_token_ptr + table_row * stride_rt_row + pos * stride_rt_col, mask=n_mask, other=0
        ).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + slots[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :], mask=kv_mask)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        scores = tl.where(n_mask[None, :], scores, float("-inf"))
        if STORE_SCORES:
            tl.store(
                scores_ptr + batch * stride_sb + q_heads[:, None] * stride_sh + offs_n[None, :],
                scores,
                mask=head_mask[:, None] & n_mask[None, :],
            )
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        safe_max = tl.where(new_max > float("-inf"), new_max, 0.0)  # a block of only skipped entries
        probs = tl.exp2(scores - safe_max[:, None])
        rescale = tl.exp2(row_max - safe_max)
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        v = tl.load(v_ptr + slots[:, None] * stride_vs + kv_head * stride_vh + offs_d[None, :], mask=kv_mask)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
        row_max = new_max

    has_keys = row_sum > 0
    safe_sum = tl.where(has_keys, row_sum, 1.0)
    lse = tl.where(has_keys, row_max + tl.log2(safe_sum), float("-inf"))
    mid_offs = batch * stride_mid_b + q_heads[:, None] * stride_mid_h + split * stride_mid_s + offs_d[None, :]
    tl.store(mid_out_ptr + mid_offs, acc / safe_sum[:, None], mask=head_mask[:, None] & d_mask[None, :])
    tl.store(mid_lse_ptr + batch * stride_lse_b + q_heads * stride_lse_h + split, lse, mask=head_mask)


@triton.jit
def _accumulate_mass_kernel(
    scores_ptr,
    mid_lse_ptr,
    req_to_token_ptr,
    req_pool_indices_ptr,
    seq_lens_ptr,
    mass_ptr,
    stride_sb,
    stride_sh,
    stride_lse_b,
    stride_lse_h,
    stride_rt_row,
    stride_rt_col,
    GROUP: tl.constexpr,
    HEAD_BLOCKS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Add the probabilities one block of keys received from one group of query heads."""
    batch = tl.program_id(0)
    kv_head = tl.program_id(1) // HEAD_BLOCKS
    head_block = tl.program_id(1) % HEAD_BLOCKS
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    group_offs = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    head_mask = group_offs < GROUP
    q_heads = kv_head * GROUP + group_offs
    seq_len = tl.load(seq_lens_ptr + batch).to(tl.int32)
    n_mask = offs_n < seq_len
    if tl.program_id(2) * BLOCK_N < seq_len:
        offs_s = tl.arange(0, BLOCK_S)
        split_lse = tl.load(
            mid_lse_ptr + batch * stride_lse_b + q_heads[:, None] * stride_lse_h + offs_s[None, :],
            mask=head_mask[:, None] & (offs_s[None, :] < NUM_SPLITS),
            other=float("-inf"),
        )
        top = tl.max(split_lse, 1)
        safe_top = tl.where(top > float("-inf"), top, 0.0)
        total = tl.sum(tl.exp2(split_lse - safe_top[:, None]), 1)
        lse = safe_top + tl.log2(tl.where(total > 0, total, 1.0))  # [BLOCK_H]
        scores = tl.load(
            scores_ptr + batch * stride_sb + q_heads[:, None] * stride_sh + offs_n[None, :],
            mask=head_mask[:, None] & n_mask[None, :],
            other=float("-inf"),
        )
        probs = tl.exp2(scores - tl.where(head_mask, lse, 0.0)[:, None])
        received = tl.sum(tl.where(head_mask[:, None] & n_mask[None, :], probs, 0.0), 0)
        table_row = tl.load(req_pool_indices_ptr + batch).to(tl.int64)
        slots = tl.load(
            req_to_token_ptr + table_row * stride_rt_row + offs_n * stride_rt_col, mask=n_mask, other=0
        ).to(tl.int64)
        tl.atomic_add(mass_ptr + slots, received, mask=n_mask)


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def label_scores_triton(
    q: torch.Tensor,
    labels: torch.Tensor,
    channels: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    max_len: int,
    sink: int,
    recent: int,
    *,
    block_n: int | None = None,
) -> torch.Tensor:
    """Approximate scores ``[B, Hkv, max_len]`` fp32; see ``label_scores_ref``."""
    batch, num_q_heads, _ = q.shape
    num_kv_heads, num_channels = channels.shape
    if labels.shape[1:] != (num_kv_heads, num_channels) or num_q_heads % num_kv_heads:
        raise ValueError(
            f"labels [S, Hkv, R] must match channels [Hkv, R] and Hq be a multiple of Hkv: "
            f"q {tuple(q.shape)}, labels {tuple(labels.shape)}, channels {tuple(channels.shape)}"
        )
    if labels.dtype != q.dtype or q.stride(-1) != 1 or labels.stride(-1) != 1 or channels.stride(-1) != 1:
        raise ValueError("q and labels must share a dtype and be contiguous in their last dim")
    group = num_q_heads // num_kv_heads
    scores = torch.empty((batch, num_kv_heads, max_len), dtype=torch.float32, device=q.device)
    if batch == 0 or max_len == 0:
        return scores
    block_n = block_n or (128 if q.is_cuda else 32)
    _label_scores_kernel[(batch, num_kv_heads, triton.cdiv(max_len, block_n))](
        q, labels, channels, req_to_token, req_pool_indices, seq_lens, scores,
        sink, recent, max_len,
        q.stride(0), q.stride(1), labels.stride(0), labels.stride(1), channels.stride(0),
        req_to_token.stride(0), req_to_token.stride(1), scores.stride(0), scores.stride(1),
        GROUP=group, NUM_CHANNELS=num_channels,
        BLOCK_H=max(_MIN_DOT, triton.next_power_of_2(group)),
        BLOCK_R=max(_MIN_DOT, triton.next_power_of_2(num_channels)),
        BLOCK_N=block_n, DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=4,
    )  # fmt: skip
    return scores


def _launch_partial(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    positions: torch.Tensor | None,
    scores: torch.Tensor | None,
    num_splits: int | None,
    block_n: int | None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Run the partial kernel; return (mid_out, mid_lse, launch geometry)."""
    check_attention_inputs(q, k_cache, v_cache)
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    block_h = max(_MIN_DOT, triton.next_power_of_2(min(group, 64)))
    head_blocks = triton.cdiv(group, block_h)
    splits = num_splits or default_num_splits(batch, num_kv_heads, head_blocks, q.device)
    block_n = block_n or (64 if q.is_cuda else 32)
    geometry = {"group": group, "block_h": block_h, "head_blocks": head_blocks, "splits": splits}
    mid_out = torch.empty((batch, num_q_heads, splits, head_dim), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty((batch, num_q_heads, splits), dtype=torch.float32, device=q.device)
    gathered = positions is not None
    pos = positions if positions is not None else seq_lens  # any tensor: unused when not gathered
    num_selected, stride_pb, stride_ph = (
        (pos.shape[-1], pos.stride(0), pos.stride(1)) if gathered else (0, 0, 0)
    )
    out_scores = scores if scores is not None else mid_lse
    _sparse_partial_kernel[(batch, num_kv_heads * head_blocks, splits)](
        q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, pos, out_scores,
        mid_out, mid_lse,
        num_selected, scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), req_to_token.stride(0), req_to_token.stride(1),
        stride_pb, stride_ph,
        out_scores.stride(0), out_scores.stride(1),
        mid_out.stride(0), mid_out.stride(1), mid_out.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        GROUP=group, HEAD_BLOCKS=head_blocks, HEAD_DIM=head_dim,
        BLOCK_D=max(_MIN_DOT, triton.next_power_of_2(head_dim)), BLOCK_H=block_h, BLOCK_N=block_n,
        NUM_SPLITS=splits, GATHERED=gathered, STORE_SCORES=scores is not None,
        DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=4, num_stages=2,
    )  # fmt: skip
    return mid_out, mid_lse, geometry


def _merge(q: torch.Tensor, mid_out: torch.Tensor, mid_lse: torch.Tensor, splits: int) -> torch.Tensor:
    """Merge the per-split partials into ``[B, Hq, D]`` (``paged_decode``'s merge kernel)."""
    batch, num_q_heads, head_dim = q.shape
    out = torch.empty_like(q)
    _decode_merge_kernel[(batch, num_q_heads)](
        mid_out, mid_lse, out,
        mid_out.stride(0), mid_out.stride(1), mid_out.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=max(_MIN_DOT, triton.next_power_of_2(head_dim)), NUM_SPLITS=splits,
        BLOCK_S=max(2, triton.next_power_of_2(splits)),
        num_warps=4 if head_dim >= 128 else 2,
    )  # fmt: skip
    return out


def gathered_decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Decode attention over the selected positions only; see ``gathered_decode_attention_ref``."""
    batch, num_kv_heads = q.shape[0], k_cache.shape[1]
    if positions.dim() != 3 or positions.shape[:2] != (batch, num_kv_heads) or positions.stride(-1) != 1:
        raise ValueError(f"positions must be [B, Hkv, K] contiguous in K; got {tuple(positions.shape)}")
    if batch == 0:
        return torch.empty_like(q)
    mid_out, mid_lse, geometry = _launch_partial(
        q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale, positions, None,
        num_splits, block_n,
    )  # fmt: skip
    return _merge(q, mid_out, mid_lse, geometry["splits"])


def h2o_decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    mass: torch.Tensor,
    *,
    max_len: int | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Dense decode that accumulates per-slot attention mass; see ``h2o_decode_attention_ref``.

    ``max_len`` (at least the longest request) sizes the score scratch; default: the slot
    table's width.
    """
    if mass.dim() != 1 or mass.dtype != torch.float32 or not mass.is_contiguous():
        raise ValueError(
            f"mass must be a contiguous float32 [num_slots] table; got {mass.dtype} {tuple(mass.shape)}"
        )
    batch, num_q_heads, _ = q.shape
    if batch == 0:
        return torch.empty_like(q)
    width = max_len or req_to_token.shape[1]
    scores = torch.empty((batch, num_q_heads, width), dtype=torch.float32, device=q.device)
    mid_out, mid_lse, geometry = _launch_partial(
        q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale, None, scores,
        num_splits, block_n,
    )  # fmt: skip
    out = _merge(q, mid_out, mid_lse, geometry["splits"])
    block_n_mass = 128 if q.is_cuda else 32
    splits = geometry["splits"]
    _accumulate_mass_kernel[(batch, k_cache.shape[1] * geometry["head_blocks"], triton.cdiv(width, block_n_mass))](
        scores, mid_lse, req_to_token, req_pool_indices, seq_lens, mass,
        scores.stride(0), scores.stride(1), mid_lse.stride(0), mid_lse.stride(1),
        req_to_token.stride(0), req_to_token.stride(1),
        GROUP=geometry["group"], HEAD_BLOCKS=geometry["head_blocks"], BLOCK_H=geometry["block_h"],
        BLOCK_N=block_n_mass, NUM_SPLITS=splits, BLOCK_S=max(2, triton.next_power_of_2(splits)),
        num_warps=4,
    )  # fmt: skip
    return out
