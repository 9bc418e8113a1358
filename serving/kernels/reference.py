"""Plain PyTorch references of the serving kernels.

These are the CPU path of the engine and the ground truth the Triton kernels are tested
against. Each function has exactly the signature of its Triton twin. All arithmetic runs in
float32 and the result is cast back to the input dtype, so the references are as accurate as
the inputs allow.

KV layout (shared with ``serving/memory.py``): the cache is a pool of token slots,
``k_cache[S, Hkv, D]``; ``req_to_token[R, L]`` maps (request row, position) to a slot, and a
request ``b`` in the batch owns row ``req_pool_indices[b]`` and its first ``seq_lens[b]`` slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gather_padded_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather each request's K/V into ``[B, Lmax, Hkv, D]`` fp32 tensors plus a validity mask.

    Slot-table entries past ``seq_lens[b]`` may hold anything, so they are replaced by slot 0
    before indexing and masked out afterwards.
    """
    max_len = int(seq_lens.max().item()) if seq_lens.numel() else 0
    positions = torch.arange(max_len, device=seq_lens.device)
    valid = positions[None, :] < seq_lens[:, None]  # [B, Lmax]
    slots = req_to_token[req_pool_indices.long(), :max_len].long()
    slots = torch.where(valid, slots, torch.zeros_like(slots))
    return k_cache[slots].float(), v_cache[slots].float(), valid


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of one new query token per request over its cached tokens.

    q: ``[B, Hq, D]``; returns ``[B, Hq, D]`` in q's dtype. ``Hq`` must be a multiple of
    ``Hkv`` (grouped-query attention). A request with ``seq_lens[b] == 0`` gets zeros.
    """
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    keys, values, valid = _gather_padded_kv(k_cache, v_cache, req_to_token, req_pool_indices, seq_lens)
    grouped_q = q.float().reshape(batch, num_kv_heads, group, head_dim)
    scores = torch.einsum("bhgd,blhd->bhgl", grouped_q, keys) * scale
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # empty requests: all -inf -> 0
    out = torch.einsum("bhgl,blhd->bhgd", probs, values)
    return out.reshape(batch, num_q_heads, head_dim).to(q.dtype)


def extend_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    q_start: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of new (extend) tokens over their request's prefix and themselves.

    q: ``[T, Hq, D]``; request ``b``'s new tokens are rows ``q_start[b] : q_start[b] +
    extend_lens[b]``; their K/V are already written to the pool. New token ``i`` sits at
    position ``prefix_len + i`` (``prefix_len = seq_lens[b] - extend_lens[b]``) and attends to
    positions ``0 ..= prefix_len + i``. Rows of ``q`` that belong to no request are zero.
    """
    num_q_heads = q.shape[1]
    num_kv_heads = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    out = torch.zeros_like(q)
    for b in range(req_pool_indices.shape[0]):
        seq_len, extend_len = int(seq_lens[b]), int(extend_lens[b])
        if extend_len == 0:
            continue
        start, prefix_len = int(q_start[b]), seq_len - extend_len
        slots = req_to_token[int(req_pool_indices[b]), :seq_len].long()
        keys = k_cache[slots].float().repeat_interleave(group, dim=1)  # [L, Hq, D]
        values = v_cache[slots].float().repeat_interleave(group, dim=1)
        queries = q[start : start + extend_len].float()  # [E, Hq, D]
        scores = torch.einsum("ehd,lhd->hel", queries, keys) * scale
        query_pos = prefix_len + torch.arange(extend_len, device=q.device)
        key_pos = torch.arange(seq_len, device=q.device)
        causal = key_pos[None, :] <= query_pos[:, None]  # [E, L]
        scores = scores.masked_fill(~causal[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start : start + extend_len] = torch.einsum("hel,lhd->ehd", probs, values).to(q.dtype)
    return out


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x^2) + eps) * weight``, in fp32, cast back."""
    x32 = x.float()
    inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (x32 * inv_rms * weight.float()).to(x.dtype)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm: returns ``(rms_norm(x + residual), x + residual)``.

    The sum is formed in fp32 and cast back to x's dtype; the norm is taken of that cast sum
    so that the normed output and the returned residual agree (as in HF models). Inputs are
    not modified.
    """
    new_residual = (x.float() + residual.float()).to(x.dtype)
    return rms_norm_ref(new_residual, weight, eps), new_residual


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """Rotate the last dim of fp32 ``x`` by per-row angles (``cos``/``sin``: ``[T, 1, D/2]``)."""
    if is_neox:
        first, second = x.chunk(2, dim=-1)
        return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)


def apply_rotary_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding of q ``[T, H, D]`` and k ``[T, Hkv, D]``; returns NEW tensors.

    ``cos_sin_cache[max_pos, D]`` holds cos of the D/2 frequencies then their sin (see
    :func:`rotary_cos_sin_cache`). ``is_neox`` rotates halves (Llama, Qwen); otherwise
    interleaved pairs (GPT-J). Inputs are not modified.
    """
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return (
        _rotate(q.float(), cos, sin, is_neox).to(q.dtype),
        _rotate(k.float(), cos, sin, is_neox).to(k.dtype),
    )


def has_qk_norm(q_norm_weight: torch.Tensor | None, k_norm_weight: torch.Tensor | None) -> bool:
    """Whether per-head q/k norm weights are given; both or neither, else a ValueError."""
    if (q_norm_weight is None) != (k_norm_weight is None):
        raise ValueError("give both q_norm_weight and k_norm_weight, or neither")
    return q_norm_weight is not None


def rotary_store_kv_ref(
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
    """Everything between a layer's qkv projection and its attention, as one op.

    Optionally RMS-normalises each q and k head over head_dim (Qwen3's ``q_norm``/``k_norm``,
    both weights or neither), applies rotary to q ``[T, Hq, D]`` and k ``[T, Hkv, D]``, then
    writes k and v ``[T, Hkv, D]`` into ``k_cache``/``v_cache`` ``[S, Hkv, D]`` at the slots
    ``out_cache_loc[T]``. Returns the new q; the caches are modified in place.
    """
    if has_qk_norm(q_norm_weight, k_norm_weight):
        assert q_norm_weight is not None and k_norm_weight is not None  # for mypy: both are given
        q, k = rms_norm_ref(q, q_norm_weight, eps), rms_norm_ref(k, k_norm_weight, eps)
    q, k = apply_rotary_ref(q, k, positions, cos_sin_cache, is_neox)
    slots = out_cache_loc.long()
    k_cache[slots] = k.to(k_cache.dtype)
    v_cache[slots] = v.to(v_cache.dtype)
    return q


def rotary_cos_sin_cache(inv_freq: torch.Tensor, max_positions: int) -> torch.Tensor:
    """Build the fp32 ``[max_positions, 2 * len(inv_freq)]`` cos|sin table for apply_rotary.

    ``inv_freq`` is the model's inverse frequencies (e.g. from transformers'
    ``ROPE_INIT_FUNCTIONS``, which already applies any rope scaling); multiply by an
    attention scaling factor afterwards if the rope type has one.
    """
    positions = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
    angles = torch.outer(positions, inv_freq.float())
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: ``silu(x[..., :I]) * x[..., I:]`` for ``x[..., 2I]``, in fp32, cast back."""
    gate, up = x.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


def linear_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu_mul_input: bool = False
) -> torch.Tensor:
    """``x @ weight.T + bias`` in fp32, cast back; with ``silu_mul_input`` x holds gate|up and
    the SwiGLU activation ``silu_and_mul_ref(x)`` is the actual input (the down projection)."""
    if silu_mul_input:
        x = silu_and_mul_ref(x)
    out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return out.to(x.dtype)
