"""Long signals in equal, overlapping chunks, put back together with cross-fades.

Chunks of one length can be fitted as one batch (the controller is vectorised over
items), and the fit's memory no longer grows with the signal. Chunk starts are spread
evenly so that the last chunk ends at the signal's end: no chunk is zero-padded (a
padded chunk's tones stop abruptly and their spectra leak across bands). The
overlap-add weights are ``sin^2`` ramps over the overlaps, divided by their sum at
every sample: since each chunk's stems sum to that chunk, the stems put back together
still sum to the signal exactly, whatever the overlaps turned out to be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from demux.errors import ParameterError


@dataclass(frozen=True)
class ChunkPlan:
    """How a signal of ``length`` samples is cut: chunks of ``size`` samples at ``starts``.

    ``overlap`` is the cross-fade length; neighbouring chunks overlap by at least that.
    """

    length: int
    size: int
    overlap: int
    starts: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.starts)


def plan_chunks(length: int, *, size: int, overlap: int) -> ChunkPlan:
    """Plan chunks of ``size`` samples overlapping by at least ``overlap`` samples.

    A signal no longer than ``size`` is one chunk of its own length.

    Raises:
        ParameterError: ``size < 1`` or ``overlap`` not in ``[0, size / 2]``.
    """
    if size < 1:
        raise ParameterError(f"chunk size={size} samples is not >= 1")
    if not 0 <= overlap <= size // 2:
        raise ParameterError(f"chunk overlap={overlap} samples is not in [0, size/2 = {size // 2}]")
    if length <= size:
        return ChunkPlan(length=length, size=length, overlap=0, starts=(0,))
    count = math.ceil((length - overlap) / (size - overlap))
    starts = tuple(round(i * (length - size) / (count - 1)) for i in range(count))
    return ChunkPlan(length=length, size=size, overlap=overlap, starts=starts)


def split(x: Tensor, plan: ChunkPlan) -> Tensor:
    """Cut ``(batch, channel, time)`` into ``(batch * count, channel, size)``, chunk-major per item."""
    B, C, _ = x.shape
    chunks = torch.stack([x[..., s : s + plan.size] for s in plan.starts], dim=1)  # (B, count, C, size)
    return chunks.reshape(B * plan.count, C, plan.size)


def crossfade(plan: ChunkPlan, *, dtype=torch.float32, device=None) -> Tensor:
    """``(count, size)`` ramps over each chunk's overlaps (before normalisation)."""
    weights = torch.ones(plan.count, plan.size, dtype=dtype, device=device)
    n = plan.overlap
    if plan.count > 1 and n > 0:
        ramp = torch.sin(0.5 * math.pi * (torch.arange(n, dtype=dtype, device=device) + 0.5) / n).square()
        weights[1:, :n] *= ramp
        weights[:-1, -n:] *= ramp.flip(0)
    return weights


def overlap_add(chunks: Tensor, plan: ChunkPlan) -> Tensor:
    """Inverse of :func:`split`: ``(batch * count, channel, size)`` -> ``(batch, channel, length)``.

    Each sample is the weighted mean of the chunks covering it (weights from
    :func:`crossfade`, normalised to sum to one there).
    """
    BN, C, _ = chunks.shape
    B = BN // plan.count
    weights = crossfade(plan, dtype=chunks.real.dtype, device=chunks.device)
    out = chunks.new_zeros(B, C, plan.length)
    total = weights.new_zeros(plan.length)
    parts = chunks.reshape(B, plan.count, C, plan.size)
    for i, start in enumerate(plan.starts):  # count is small (minutes of signal in tens-of-seconds chunks)
        out[..., start : start + plan.size] += parts[:, i] * weights[i]
        total[start : start + plan.size] += weights[i]
    return out / total
