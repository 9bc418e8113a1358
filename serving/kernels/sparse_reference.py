"""Plain PyTorch references of the sparse decode-attention ops (Double Sparsity and H2O).

Same KV layout as :mod:`serving.kernels.reference`: a pool of token slots ``k_cache[S, Hkv, D]``,
``req_to_token[R, L]`` mapping (request row, position) to a slot, request ``b`` of the batch
owning row ``req_pool_indices[b]`` and its first ``seq_lens[b]`` positions.

Double Sparsity (Yang et al., 2024) at decode, per request and KV head:

1. :func:`label_scores_ref` - approximate scores ``q[channels] . label[slot]`` from the query's
   heavy channels and the *label cache* (the same channels of every cached key, one side table
   ``labels[S, Hkv, R]`` written at the K/V slots, see :func:`store_labels`). Under GQA a
   KV head's score is the max over the query heads that share it, so one token set serves the
   group and K/V rows are still read once per KV head. Always-kept sink and recent positions
   score ``+inf``, positions past the request's length ``-inf``.
2. :func:`select_tokens` - the ``k`` best positions of each row (``torch.topk``).
3. :func:`gathered_decode_attention_ref` - exact attention over only the selected positions.

H2O (Zhang et al., 2023): :func:`h2o_decode_attention_ref` is exact decode attention that also
adds, to a per-slot float32 table, the attention probability each key received (summed over
query heads); :func:`h2o_keep_positions` picks the positions a sequence keeps under a budget
(recent window + largest accumulated mass) so the rest can be evicted and their slots freed.
"""

from __future__ import annotations

import torch

from serving.kernels.reference import _gather_padded_kv


def _request_slots(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` slot ids of each request's first ``width`` positions (garbage past its
    length; zeros past the table's width)."""
    slots = req_to_token[req_pool_indices.long(), :width].long()
    return torch.nn.functional.pad(slots, (0, width - slots.shape[1]))


def store_labels(
    k_cache: torch.Tensor, labels: torch.Tensor, channels: torch.Tensor, out_cache_loc: torch.Tensor
) -> None:
    """Copy the heavy channels of the keys at ``out_cache_loc`` into the label cache.

    k_cache ``[S, Hkv, D]``; labels ``[S, Hkv, R]``; channels ``[Hkv, R]`` int (channel ids per
    KV head). Call after the new keys (rotary applied) are in ``k_cache``.
    """
    slots = out_cache_loc.long()
    keys = k_cache[slots]  # [T, Hkv, D]
    index = channels.long()[None].expand(keys.shape[0], -1, -1)
    labels[slots] = keys.gather(-1, index).to(labels.dtype)


def label_scores_ref(
    q: torch.Tensor,
    labels: torch.Tensor,
    channels: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    max_len: int,
    sink: int,
    recent: int,
) -> torch.Tensor:
    """Approximate per-KV-head scores ``[B, Hkv, max_len]`` (fp32) of every cached position.

    ``score[b, g, n] = max over the query heads h of group g of sum_c q[b, h, channels[g, c]] *
    labels[slot(b, n), g, c]``; ``+inf`` for ``n < sink`` and ``n >= seq_len - recent`` (always
    kept), ``-inf`` for ``n >= seq_len``. ``max_len`` must be at least the longest request.
    """
    batch, num_q_heads, _ = q.shape
    num_kv_heads, num_channels = channels.shape
    group = num_q_heads // num_kv_heads
    slots = _request_slots(req_to_token, req_pool_indices, max_len)
    positions = torch.arange(max_len, device=q.device)
    lengths = seq_lens[:, None].long()
    valid = positions[None, :] < lengths  # [B, L]
    slots = torch.where(valid, slots, torch.zeros_like(slots))
    index = channels.long().repeat_interleave(group, dim=0)  # [Hq, R]
    q_heavy = q.float().gather(-1, index[None].expand(batch, -1, -1))  # [B, Hq, R]
    keys = labels[slots].float()  # [B, L, Hkv, R]
    grouped = q_heavy.reshape(batch, num_kv_heads, group, num_channels)
    scores = torch.einsum("bhgr,blhr->bhgl", grouped, keys).amax(dim=2)  # [B, Hkv, L]
    kept = (positions[None, :] < sink) | (positions[None, :] >= lengths - recent)
    scores = scores.masked_fill(kept[:, None, :], float("inf"))
    return scores.masked_fill(~valid[:, None, :], float("-inf"))


def select_tokens(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions ``[B, Hkv, k]`` (int32) of the ``k`` highest scores of each row, in no order.

    Rows with fewer than ``k`` finite-or-``+inf`` scores are padded with positions whose score
    is ``-inf``, i.e. past the request's length; the attention kernels skip those.
    """
    k = min(k, scores.shape[-1])
    return torch.topk(scores, k, dim=-1, sorted=False).indices.to(torch.int32)


def gathered_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Decode attention of ``q[B, Hq, D]`` over only the positions ``positions[B, Hkv, K]``.

    Each KV head attends over its own selected positions (shared by its query heads); entries
    ``>= seq_lens[b]`` are ignored, duplicates are not allowed. Returns ``[B, Hq, D]`` in q's dtype.
    """
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    pos = positions.long()
    valid = pos < seq_lens[:, None, None]  # [B, Hkv, K]
    rows = req_to_token[req_pool_indices.long()].long()  # [B, Lctx]
    safe = torch.where(valid, pos, torch.zeros_like(pos))
    slots = rows.gather(1, safe.reshape(batch, -1)).reshape(pos.shape)  # [B, Hkv, K]
    heads = torch.arange(num_kv_heads, device=q.device)[None, :, None]
    keys = k_cache[slots, heads].float()  # [B, Hkv, K, D]
    values = v_cache[slots, heads].float()
    grouped_q = q.float().reshape(batch, num_kv_heads, group, head_dim)
    scores = torch.einsum("bhgd,bhkd->bhgk", grouped_q, keys) * scale
    scores = scores.masked_fill(~valid[:, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = torch.einsum("bhgk,bhkd->bhgd", probs, values)
    return out.reshape(batch, num_q_heads, head_dim).to(q.dtype)


def h2o_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    mass: torch.Tensor,
) -> torch.Tensor:
    """Exact decode attention that also accumulates attention mass per key slot.

    ``mass[S]`` (float32, one layer's table) gets ``+= sum over query heads of p[b, h, n]`` at
    the slot of every position ``n < seq_lens[b]``. Returns ``[B, Hq, D]`` in q's dtype.
    """
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    keys, values, valid = _gather_padded_kv(k_cache, v_cache, req_to_token, req_pool_indices, seq_lens)
    grouped_q = q.float().reshape(batch, num_kv_heads, group, head_dim)
    scores = torch.einsum("bhgd,blhd->bhgl", grouped_q, keys) * scale
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    width = valid.shape[1]
    slots = _request_slots(req_to_token, req_pool_indices, width)
    received = probs.sum(dim=(1, 2))  # [B, L]
    mass.index_add_(0, slots[valid], received[valid])
    out = torch.einsum("bhgl,blhd->bhgd", probs, values)
    return out.reshape(batch, num_q_heads, head_dim).to(q.dtype)


def h2o_keep_positions(mass: torch.Tensor, budget: int, recent: int, protected: int = 0) -> torch.Tensor:
    """Positions (sorted, int64) a sequence keeps under an H2O budget of ``budget`` KV entries.

    ``mass[N]``: accumulated attention of the sequence's ``N`` entries (all layers summed).
    Kept: the first ``protected`` entries (a prefix shared with other requests, never evicted),
    the last ``recent`` ones, and the heavy hitters - the largest ``mass`` among the rest - up to
    ``budget`` in all. When protected and recent alone exceed the budget, only they are kept.
    """
    count = mass.shape[0]
    if budget >= count:
        return torch.arange(count, device=mass.device)
    recent_start = max(protected, count - recent)
    heavy = max(0, budget - protected - (count - recent_start))
    middle = mass[protected:recent_start]
    chosen = torch.topk(middle, min(heavy, middle.shape[0]), sorted=False).indices + protected
    parts = [
        torch.arange(protected, device=mass.device),
        chosen,
        torch.arange(recent_start, count, device=mass.device),
    ]
    return torch.cat(parts).sort().values


def extend_attention_mass_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    q_start: torch.Tensor,
    scale: float,
    mass: torch.Tensor,
    chunk: int = 256,
) -> None:
    """H2O's mass for an extend (prefill) step: ``mass[slot] +=`` the causal attention
    probability each key receives from every new token and query head (layout as in
    ``extend_attention_ref``). Queries go ``chunk`` at a time, so memory stays
    ``O(chunk * Hq * seq_len)``; the time is that of computing the attention matrix again.
    """
    num_q_heads, num_kv_heads = q.shape[1], k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    for b in range(req_pool_indices.shape[0]):
        seq_len, extend_len = int(seq_lens[b]), int(extend_lens[b])
        if extend_len == 0:
            continue
        start, prefix_len = int(q_start[b]), seq_len - extend_len
        slots = req_to_token[int(req_pool_indices[b]), :seq_len].long()
        keys = k_cache[slots].float().repeat_interleave(group, dim=1)  # [L, Hq, D]
        key_pos = torch.arange(seq_len, device=q.device)
        received = torch.zeros(seq_len, dtype=torch.float32, device=q.device)
        for first in range(0, extend_len, chunk):
            count = min(chunk, extend_len - first)
            queries = q[start + first : start + first + count].float()
            scores = torch.einsum("ehd,lhd->hel", queries, keys) * scale
            query_pos = prefix_len + first + torch.arange(count, device=q.device)
            scores = scores.masked_fill(key_pos[None, None, :] > query_pos[None, :, None], float("-inf"))
            received += torch.softmax(scores, dim=-1).sum(dim=(0, 1))
        mass.index_add_(0, slots, received)
