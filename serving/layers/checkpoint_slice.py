"""A checkpoint tensor read lazily, so a rank reads only its shard of it.

``safetensors``' ``safe_open(...).get_slice(name)`` gives a handle that reads a sub-block of a
tensor from the file on indexing. :class:`CheckpointSlice` wraps it with the two tensor methods
the layers' ``weight_loader`` uses, ``shape`` and ``narrow``; :func:`materialize` then reads
the block. A plain ``torch.Tensor`` (a transformers model's parameter) goes through the same
code, so a weight loader never knows which it got. A rank of a tensor-parallel model thus
holds at most one tensor's shard in host memory at a time, never the whole model.
"""

from __future__ import annotations

from typing import Any

import torch


class CheckpointSlice:
    """Rows/columns ``ranges`` of one safetensors tensor, not yet read."""

    def __init__(self, handle: Any, ranges: tuple[tuple[int, int], ...]):
        self.handle = handle
        self.ranges = ranges

    @classmethod
    def open(cls, reader: Any, name: str) -> CheckpointSlice:
        """The lazy tensor ``name`` of an open ``safe_open`` reader."""
        handle = reader.get_slice(name)
        return cls(handle, tuple((0, size) for size in handle.get_shape()))

    @property
    def shape(self) -> torch.Size:
        return torch.Size(end - start for start, end in self.ranges)

    def narrow(self, dim: int, start: int, length: int) -> CheckpointSlice:
        """Like ``Tensor.narrow``: ``length`` entries of ``dim`` from ``start`` (nothing read yet)."""
        low, high = self.ranges[dim]
        if start < 0 or length < 0 or low + start + length > high:
            raise IndexError(f"narrow({dim}, {start}, {length}) is outside a dimension of size {high - low}")
        ranges = list(self.ranges)
        ranges[dim] = (low + start, low + start + length)
        return CheckpointSlice(self.handle, tuple(ranges))

    def read(self) -> torch.Tensor:
        """Read the block from the file."""
        if not self.ranges:  # a scalar
            return self.handle[:]
        return self.handle[tuple(slice(start, end) for start, end in self.ranges)]


def materialize(tensor: torch.Tensor | CheckpointSlice) -> torch.Tensor:
    """A real tensor: read a :class:`CheckpointSlice`, pass a tensor through."""
    return tensor.read() if isinstance(tensor, CheckpointSlice) else tensor
