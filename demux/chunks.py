"""Long signals in equal, overlapping chunks, put back together with cross-fades.

Chunks of one length can be fitted as one batch (the controller is vectorised over
items), and the fit's memory no longer grows with the signal. The cross-fades are
``sin^2`` / ``cos^2`` ramps over the overlap, which sum to one: since each chunk's
stems sum to that chunk, the overlap-added stems still sum to the signal exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from demux.errors import ParameterError


@dataclass(frozen=True)
class ChunkPlan:
    """How a signal of ``length`` samples is cut: ``count`` chunks of ``size``, ``hop`` apart."""

    length: int
    size: int
    hop: int
    count: int

    @property
    def overlap(self) -> int:
        return self.size - self.hop


def plan_chunks(length: int, *, size: int, overlap: int) -> ChunkPlan:
    """Plan chunks of ``size`` samples overlapping by ``overlap`` samples.

    A signal no longer than ``size`` is one chunk of its own length.

    Raises:
        ParameterError: ``size < 1`` or ``overlap`` not in ``[0, size / 2]``.
    """
    if size < 1:
        raise ParameterError(f"chunk size={size} samples is not >= 1")
    if not 0 <= overlap <= size // 2:
        raise ParameterError(f"chunk overlap={overlap} samples is not in [0, size/2 = {size // 2}]")
    if length <= size:
        return ChunkPlan(length=length, size=length, hop=length, count=1)
    hop = size - overlap
    return ChunkPlan(length=length, size=size, hop=hop, count=math.ceil((length - overlap) / hop))


def split(x: Tensor, plan: ChunkPlan) -> Tensor:
    """Cut ``(batch, channel, time)`` into ``(batch * count, channel, size)`` (the end zero-padded)."""
    B, C, T = x.shape
    padded = plan.hop * (plan.count - 1) + plan.size
    x = torch.nn.functional.pad(x, (0, padded - T))
    chunks = x.unfold(-1, plan.size, plan.hop)  # (B, C, count, size)
    return chunks.permute(0, 2, 1, 3).reshape(B * plan.count, C, plan.size)


def crossfade(plan: ChunkPlan, *, dtype=torch.float32, device=None) -> Tensor:
    """``(count, size)`` weights: ramps over each overlap that sum to one with the neighbour's."""
    weights = torch.ones(plan.count, plan.size, dtype=dtype, device=device)
    n = plan.overlap
    if plan.count > 1 and n > 0:
        ramp = torch.sin(0.5 * math.pi * (torch.arange(n, dtype=dtype, device=device) + 0.5) / n).square()
        weights[1:, :n] = ramp
        weights[:-1, -n:] = 1.0 - ramp
    return weights


def overlap_add(chunks: Tensor, plan: ChunkPlan) -> Tensor:
    """Inverse of :func:`split`: ``(batch * count, channel, size)`` -> ``(batch, channel, length)``."""
    BN, C, _ = chunks.shape
    B = BN // plan.count
    weighted = chunks.reshape(B, plan.count, C, plan.size) * crossfade(plan, dtype=chunks.dtype, device=chunks.device)[
        None, :, None, :
    ]
    padded = plan.hop * (plan.count - 1) + plan.size
    out = chunks.new_zeros(B, C, padded)
    for i in range(plan.count):  # count is small (minutes of signal in tens-of-seconds chunks)
        out[..., i * plan.hop : i * plan.hop + plan.size] += weighted[:, i]
    return out[..., : plan.length]
