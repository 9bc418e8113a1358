"""PyTorch references of the batched LoRA products (the CPU path and the kernels' ground truth).

A batch of ``T`` token rows belongs to requests that each use one adapter slot of a stacked
weight pool (``a[S, R, K]``: the down-projections, ``b[S, N, R]``: the up-projections, already
scaled by alpha / r). Slot ``-1`` means no adapter: those rows get nothing added.

Two index layouts, two pairs of ops (the names of S-LoRA / Punica):

* SGMV (prefill, extend): requests are contiguous *segments* of rows, ``seg_starts[B + 1]`` and
  one slot per segment ``seg_slots[B]``; ``max_seg_len`` (a host int) sizes the kernel grid.
* BGMV (decode): one slot per row, ``token_slots[T]``.

*shrink* computes ``t = x @ a[slot]^T`` (``[T, R]``, zeros where slot is -1); *expand* adds
``t @ b[slot]^T`` into ``out`` in place and returns it. Products accumulate in float32 and are
rounded to the input dtype, as the kernels do.
"""

from __future__ import annotations

import torch


def _rows_by_slot(token_slots: torch.Tensor):
    """``(slot, row indices)`` for each adapter slot present (not -1) in ``token_slots``."""
    for slot in torch.unique(token_slots).tolist():
        if slot >= 0:
            yield slot, torch.nonzero(token_slots == slot).flatten()


def segment_token_slots(seg_starts: torch.Tensor, seg_slots: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Expand a segment layout into one slot per row (rows outside every segment get -1)."""
    slots = torch.full((num_tokens,), -1, dtype=torch.int64, device=seg_slots.device)
    starts = seg_starts.tolist()
    for index, slot in enumerate(seg_slots.tolist()):
        slots[starts[index] : starts[index + 1]] = slot
    return slots


def bgmv_shrink_ref(x: torch.Tensor, a: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
    """``t[i] = x[i] @ a[token_slots[i]]^T``: ``x[T, K]``, ``a[S, R, K]`` -> ``[T, R]``."""
    out = torch.zeros((x.shape[0], a.shape[1]), dtype=x.dtype, device=x.device)
    for slot, rows in _rows_by_slot(token_slots):
        out[rows] = (x[rows].float() @ a[slot].float().T).to(x.dtype)
    return out


def bgmv_expand_ref(
    out: torch.Tensor, t: torch.Tensor, b: torch.Tensor, token_slots: torch.Tensor
) -> torch.Tensor:
    """``out[i] += t[i] @ b[token_slots[i]]^T`` in place: ``t[T, R]``, ``b[S, N, R]``, ``out[T, N]``."""
    for slot, rows in _rows_by_slot(token_slots):
        delta = t[rows].float() @ b[slot].float().T
        out[rows] = (out[rows].float() + delta).to(out.dtype)
    return out


def sgmv_shrink_ref(
    x: torch.Tensor, a: torch.Tensor, seg_starts: torch.Tensor, seg_slots: torch.Tensor, max_seg_len: int
) -> torch.Tensor:
    """Segment form of :func:`bgmv_shrink_ref` (``max_seg_len`` only sizes the kernel's grid)."""
    return bgmv_shrink_ref(x, a, segment_token_slots(seg_starts, seg_slots, x.shape[0]))


def sgmv_expand_ref(
    out: torch.Tensor,
    t: torch.Tensor,
    b: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    max_seg_len: int,
) -> torch.Tensor:
    """Segment form of :func:`bgmv_expand_ref`."""
    return bgmv_expand_ref(out, t, b, segment_token_slots(seg_starts, seg_slots, out.shape[0]))
