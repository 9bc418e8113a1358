"""Attention and fused small ops of the serving engine: Triton kernels and PyTorch references.

Every op comes in three names with one signature:

- ``<op>_ref``: plain PyTorch (the CPU path, and the ground truth in tests);
- ``<op>_triton``: the Triton kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``);
- ``<op>``: dispatch. Triton for CUDA tensors, the reference otherwise. The environment
  variable ``SERVING_KERNELS=torch|triton`` forces one side (``auto``/unset: by device).

Triton is imported only when a Triton kernel is first called, so the CPU engine never needs
it. The kernel modules (``paged_decode``, ``paged_extend``, ``elementwise``, ``gemv``,
``sparse_decode``, ``lora_kernels``) are named
unlike the ops on purpose: importing a submodule sets it as an attribute of this package,
which would otherwise replace the dispatch function of the same name.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from serving.kernels.lora_reference import (
    bgmv_expand_ref,
    bgmv_shrink_ref,
    sgmv_expand_ref,
    sgmv_shrink_ref,
)
from serving.kernels.reference import (
    apply_rotary_ref,
    decode_attention_ref,
    extend_attention_ref,
    fused_add_rms_norm_ref,
    linear_ref,
    rms_norm_ref,
    rotary_cos_sin_cache,
    rotary_store_kv_ref,
    silu_and_mul_ref,
)
from serving.kernels.sparse_reference import (
    extend_attention_mass_ref,
    gathered_decode_attention_ref,
    h2o_decode_attention_ref,
    h2o_keep_positions,
    label_scores_ref,
    select_tokens,
    store_labels,
)

__all__ = [
    "apply_rotary_ref",
    "bgmv_expand",
    "bgmv_expand_ref",
    "bgmv_expand_triton",
    "bgmv_shrink",
    "bgmv_shrink_ref",
    "bgmv_shrink_triton",
    "sgmv_expand",
    "sgmv_expand_ref",
    "sgmv_expand_triton",
    "sgmv_shrink",
    "sgmv_shrink_ref",
    "sgmv_shrink_triton",
    "decode_attention",
    "decode_attention_ref",
    "decode_attention_triton",
    "extend_attention",
    "extend_attention_mass_ref",
    "extend_attention_ref",
    "extend_attention_triton",
    "fused_add_rms_norm",
    "fused_add_rms_norm_ref",
    "fused_add_rms_norm_triton",
    "gathered_decode_attention",
    "gathered_decode_attention_ref",
    "gathered_decode_attention_triton",
    "GEMV_MAX_ROWS",
    "h2o_decode_attention",
    "h2o_decode_attention_ref",
    "h2o_decode_attention_triton",
    "h2o_keep_positions",
    "kernel_backend",
    "label_scores",
    "label_scores_ref",
    "label_scores_triton",
    "linear",
    "linear_ref",
    "linear_triton",
    "rms_norm",
    "rms_norm_ref",
    "rms_norm_triton",
    "rotary_cos_sin_cache",
    "rotary_store_kv",
    "rotary_store_kv_ref",
    "rotary_store_kv_triton",
    "select_tokens",
    "silu_and_mul",
    "silu_and_mul_ref",
    "silu_and_mul_triton",
    "store_labels",
]

_BACKENDS = ("auto", "torch", "triton")

# Up to this many rows, linear layers on the Triton side use the GEMV kernel; above, cuBLAS.
GEMV_MAX_ROWS = 2


def kernel_backend(tensor: torch.Tensor) -> str:
    """Return ``"triton"`` or ``"torch"`` for an op on ``tensor``, honouring SERVING_KERNELS."""
    choice = os.environ.get("SERVING_KERNELS", "auto").strip().lower() or "auto"
    if choice not in _BACKENDS:
        raise ValueError(f"SERVING_KERNELS must be one of {', '.join(_BACKENDS)}; got {choice!r}")
    if choice == "auto":
        return "triton" if tensor.is_cuda else "torch"
    return choice


# --- Triton entry points (lazy imports: triton loads on first use) -------------------------


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Split-KV (flash-decoding), GQA-aware decode attention; see ``decode_attention_ref``."""
    from serving.kernels.paged_decode import decode_attention_triton as kernel

    return kernel(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale)


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
) -> torch.Tensor:
    """Tiled causal extend/prefill attention over the paged pool; see ``extend_attention_ref``."""
    from serving.kernels.paged_extend import extend_attention_triton as kernel

    return kernel(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, extend_lens, q_start, scale)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """One-program-per-row RMSNorm; see ``rms_norm_ref``."""
    from serving.kernels.elementwise import rms_norm_triton as kernel

    return kernel(x, weight, eps)


def fused_add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add fused with RMSNorm in one pass; see ``fused_add_rms_norm_ref``."""
    from serving.kernels.elementwise import fused_add_rms_norm_triton as kernel

    return kernel(x, residual, weight, eps)


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
    """(q/k norm,) rotary and KV store in one launch; see ``rotary_store_kv_ref``."""
    from serving.kernels.elementwise import rotary_store_kv_triton as kernel

    return kernel(
        q, k, v, positions, cos_sin_cache, k_cache, v_cache, out_cache_loc, is_neox,
        q_norm_weight, k_norm_weight, eps,
    )  # fmt: skip


def linear_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu_mul_input: bool = False
) -> torch.Tensor:
    """GEMV for a few rows, optionally applying SwiGLU to its input; see ``linear_ref``."""
    from serving.kernels.gemv import linear_triton as kernel

    return kernel(x, weight, bias, silu_mul_input)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """Fused SwiGLU activation; see ``silu_and_mul_ref``."""
    from serving.kernels.elementwise import silu_and_mul_triton as kernel

    return kernel(x)


# --- Dispatch ---------------------------------------------------------------------------


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Decode attention, ``[B, Hq, D]`` -> ``[B, Hq, D]``; see ``decode_attention_ref``."""
    op = decode_attention_triton if kernel_backend(q) == "triton" else decode_attention_ref
    return op(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale)


def extend_attention(
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
    """Causal extend attention, ``[T, Hq, D]`` -> ``[T, Hq, D]``; see ``extend_attention_ref``."""
    op = extend_attention_triton if kernel_backend(q) == "triton" else extend_attention_ref
    return op(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, extend_lens, q_start, scale)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim; see ``rms_norm_ref``."""
    op = rms_norm_triton if kernel_backend(x) == "triton" else rms_norm_ref
    return op(x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)``; see ``fused_add_rms_norm_ref``."""
    op = fused_add_rms_norm_triton if kernel_backend(x) == "triton" else fused_add_rms_norm_ref
    return op(x, residual, weight, eps)


def rotary_store_kv(
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
    """(q/k norm,) rotary, K/V written to the cache; returns the new q; see ``rotary_store_kv_ref``."""
    op = rotary_store_kv_triton if kernel_backend(q) == "triton" else rotary_store_kv_ref
    return op(
        q, k, v, positions, cos_sin_cache, k_cache, v_cache, out_cache_loc, is_neox,
        q_norm_weight, k_norm_weight, eps,
    )  # fmt: skip


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu_mul_input: bool = False
) -> torch.Tensor:
    """Projection of ``x[M, K]`` (gate|up ``[M, 2K]`` with ``silu_mul_input``); see ``linear_ref``.

    On the Triton side, up to :data:`GEMV_MAX_ROWS` rows run the Triton GEMV (decode at small
    batch); more rows go to cuBLAS in the input dtype, after the SiLU-and-mul kernel if asked.
    """
    if kernel_backend(x) == "torch":
        return linear_ref(x, weight, bias, silu_mul_input)
    if x.shape[0] <= GEMV_MAX_ROWS:
        return linear_triton(x, weight, bias, silu_mul_input)
    return F.linear(silu_and_mul_triton(x) if silu_mul_input else x, weight, bias)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :I]) * x[..., I:]``; see ``silu_and_mul_ref``."""
    op = silu_and_mul_triton if kernel_backend(x) == "triton" else silu_and_mul_ref
    return op(x)


# --- sparse decode attention (Double Sparsity, H2O): see serving/kernels/sparse_reference.py ---


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
) -> torch.Tensor:
    """Double Sparsity's approximate scores from the label cache; see ``label_scores_ref``."""
    from serving.kernels.sparse_decode import label_scores_triton as kernel

    return kernel(q, labels, channels, req_to_token, req_pool_indices, seq_lens, max_len, sink, recent)


def gathered_decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Split-KV decode over selected positions only; see ``gathered_decode_attention_ref``."""
    from serving.kernels.sparse_decode import gathered_decode_attention_triton as kernel

    return kernel(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, positions, scale)


def h2o_decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    mass: torch.Tensor,
) -> torch.Tensor:
    """Decode attention accumulating per-slot attention mass; see ``h2o_decode_attention_ref``."""
    from serving.kernels.sparse_decode import h2o_decode_attention_triton as kernel

    return kernel(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale, mass)


def label_scores(
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
    """Approximate scores ``[B, Hkv, max_len]`` (fp32); see ``label_scores_ref``."""
    op = label_scores_triton if kernel_backend(q) == "triton" else label_scores_ref
    return op(q, labels, channels, req_to_token, req_pool_indices, seq_lens, max_len, sink, recent)


def gathered_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Decode attention over ``positions[B, Hkv, K]``; see ``gathered_decode_attention_ref``."""
    op = gathered_decode_attention_triton if kernel_backend(q) == "triton" else gathered_decode_attention_ref
    return op(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, positions, scale)


def h2o_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    mass: torch.Tensor,
) -> torch.Tensor:
    """Decode attention, ``mass[slot] +=`` attention received; see ``h2o_decode_attention_ref``."""
    op = h2o_decode_attention_triton if kernel_backend(q) == "triton" else h2o_decode_attention_ref
    return op(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale, mass)


# --- Batched LoRA products (multi-adapter batches; see lora_reference.py) -----------------


def sgmv_shrink_triton(x, a, seg_starts, seg_slots, max_seg_len: int) -> torch.Tensor:
    """Segment-tiled ``x @ a[slot]^T``; see ``sgmv_shrink_ref``."""
    from serving.kernels.lora_kernels import sgmv_shrink_triton as kernel

    return kernel(x, a, seg_starts, seg_slots, max_seg_len)


def sgmv_expand_triton(out, t, b, seg_starts, seg_slots, max_seg_len: int) -> torch.Tensor:
    """Segment-tiled ``out += t @ b[slot]^T``; see ``sgmv_expand_ref``."""
    from serving.kernels.lora_kernels import sgmv_expand_triton as kernel

    return kernel(out, t, b, seg_starts, seg_slots, max_seg_len)


def bgmv_shrink_triton(x, a, token_slots) -> torch.Tensor:
    """Per-row ``x @ a[slot]^T``; see ``bgmv_shrink_ref``."""
    from serving.kernels.lora_kernels import bgmv_shrink_triton as kernel

    return kernel(x, a, token_slots)


def bgmv_expand_triton(out, t, b, token_slots) -> torch.Tensor:
    """Per-row ``out += t @ b[slot]^T``; see ``bgmv_expand_ref``."""
    from serving.kernels.lora_kernels import bgmv_expand_triton as kernel

    return kernel(out, t, b, token_slots)


def sgmv_shrink(
    x: torch.Tensor, a: torch.Tensor, seg_starts: torch.Tensor, seg_slots: torch.Tensor, max_seg_len: int
) -> torch.Tensor:
    """LoRA down-projection of request segments, ``[T, K]`` -> ``[T, R]``."""
    op = sgmv_shrink_triton if kernel_backend(x) == "triton" else sgmv_shrink_ref
    return op(x, a, seg_starts, seg_slots, max_seg_len)


def sgmv_expand(
    out: torch.Tensor,
    t: torch.Tensor,
    b: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    max_seg_len: int,
) -> torch.Tensor:
    """LoRA up-projection of request segments added into ``out`` (in place)."""
    op = sgmv_expand_triton if kernel_backend(t) == "triton" else sgmv_expand_ref
    return op(out, t, b, seg_starts, seg_slots, max_seg_len)


def bgmv_shrink(x: torch.Tensor, a: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
    """LoRA down-projection with one adapter slot per row, ``[T, K]`` -> ``[T, R]``."""
    op = bgmv_shrink_triton if kernel_backend(x) == "triton" else bgmv_shrink_ref
    return op(x, a, token_slots)


def bgmv_expand(out: torch.Tensor, t: torch.Tensor, b: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
    """LoRA up-projection with one adapter slot per row added into ``out`` (in place)."""
    op = bgmv_expand_triton if kernel_backend(t) == "triton" else bgmv_expand_ref
    return op(out, t, b, token_slots)
