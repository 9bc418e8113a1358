"""Which adapter slot each token row of a step uses: the index tensors the LoRA kernels read.

Built once per step by the model runner and passed to every adapter-aware linear layer. A
batch whose requests are contiguous row segments (prefill, chunked prefill, mixed steps) runs
the SGMV kernels over the segments; a decode batch (one row per request) runs BGMV over
``token_slots``, which is also the form a CUDA graph keeps in a static buffer. Slot ``-1``:
the request uses the base model alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serving import kernels

NO_ADAPTER = -1


@dataclass
class LoraBatch:
    """Adapter slots of one step's rows; ``seg_starts`` is None for the BGMV (decode) form."""

    token_slots: torch.Tensor  # [T] int32: slot of each row
    seg_starts: torch.Tensor | None = None  # [B + 1] int32: first row of each request, then T
    seg_slots: torch.Tensor | None = None  # [B] int32: slot of each request
    max_seg_len: int = 0  # the longest segment (a host int: it sizes the SGMV grid)

    @classmethod
    def build(
        cls, request_slots: list[int], num_new_tokens: list[int], device: torch.device | str
    ) -> LoraBatch:
        """Index tensors for requests with these slots and new-token counts, in row order."""
        token_slots = torch.tensor(
            [slot for slot, count in zip(request_slots, num_new_tokens, strict=True) for _ in range(count)],
            dtype=torch.int32,
        ).to(device)
        if all(count == 1 for count in num_new_tokens):
            return cls(token_slots)
        starts = [0]
        for count in num_new_tokens:
            starts.append(starts[-1] + count)
        return cls(
            token_slots,
            torch.tensor(starts, dtype=torch.int32).to(device),
            torch.tensor(request_slots, dtype=torch.int32).to(device),
            max(num_new_tokens),
        )

    def shrink(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``x[T, K] @ a[slot]^T`` -> ``[T, R]`` (zeros for rows without an adapter)."""
        if self.seg_starts is None or self.seg_slots is None:
            return kernels.bgmv_shrink(x, a, self.token_slots)
        return kernels.sgmv_shrink(x, a, self.seg_starts, self.seg_slots, self.max_seg_len)

    def expand(self, out: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``out += t @ b[slot]^T`` in place (``out`` may be a column slice of a merged output)."""
        if self.seg_starts is None or self.seg_slots is None:
            return kernels.bgmv_expand(out, t, b, self.token_slots)
        return kernels.sgmv_expand(out, t, b, self.seg_starts, self.seg_slots, self.max_seg_len)
