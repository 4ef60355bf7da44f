"""Long signals in equal, overlapping chunks, put back together with cross-fades.

Chunks of one length can be fitted as one batch (the controller is vectorised over
items), and the fit's memory no longer grows with the signal. Chunk starts are spread
evenly so that the last chunk ends at the signal's end: no chunk is zero-padded (a
padded chunk's tones stop abruptly and their spectra leak across bands). The
overlap-add weights are ``sin^2`` ramps over the overlaps, divided by their sum at
every sample: since each chunk's stems sum to that chunk, the stems put back together
still sum to the signal exactly, whatever the overlaps turned out to be.
:class:`OverlapAdd` puts the chunks back together in order, handing over each region
as soon as no later chunk covers it (a long file's stems are written as they come).
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
    return torch.stack([chunk_weights(plan, i, dtype=dtype, device=device) for i in range(plan.count)])


def chunk_weights(plan: ChunkPlan, index: int, *, dtype=torch.float32, device=None) -> Tensor:
    """``(size,)`` the cross-fade weights of chunk ``index``: row ``index`` of :func:`crossfade`.

    One chunk's at a time: a long signal's ``(count, size)`` would grow with its length.
    """
    weights = torch.ones(plan.size, dtype=dtype, device=device)
    n = plan.overlap
    if plan.count > 1 and n > 0:
        ramp = torch.sin(0.5 * math.pi * (torch.arange(n, dtype=dtype, device=device) + 0.5) / n).square()
        if index > 0:
            weights[:n] *= ramp
        if index < plan.count - 1:
            weights[-n:] *= ramp.flip(0)
    return weights


def overlap_add(chunks: Tensor, plan: ChunkPlan) -> Tensor:
    """Inverse of :func:`split`: ``(batch * count, channel, size)`` -> ``(batch, channel, length)``.

    Each sample is the weighted mean of the chunks covering it (weights from
    :func:`crossfade`, normalised to sum to one there).
    """
    BN, C, _ = chunks.shape
    parts = chunks.reshape(BN // plan.count, plan.count, C, plan.size)
    joiner = OverlapAdd(plan)
    return torch.cat([joiner.add(i, parts[:, i]) for i in range(plan.count)], dim=-1)


class OverlapAdd:
    """:func:`overlap_add` for chunks that arrive in order, in memory of about one chunk.

    :meth:`add` takes chunk ``i`` and returns the samples that no later chunk covers
    (from where the previous call's stopped to the next chunk's start; to the end
    after the last chunk), so a signal of any length is put back together region by
    region with the same numbers as :func:`overlap_add`.
    """

    def __init__(self, plan: ChunkPlan):
        self.plan = plan
        self._pending: Tensor | None = None  # (batch, channel, n): weighted sums from sample ``_done`` on
        self._total: Tensor | None = None  # (n,): their weights' sum
        self._done = 0
        self._next = 0

    def add(self, index: int, chunk: Tensor) -> Tensor:
        """Chunk ``index`` ``(batch, channel, size)`` -> the finished ``(batch, channel, n)`` region.

        Raises:
            ParameterError: chunks out of order, or of another size than the plan's.
        """
        plan = self.plan
        if index != self._next or chunk.shape[-1] != plan.size:
            raise ParameterError(
                f"chunk {index} of {chunk.shape[-1]} samples: expected chunk {self._next} of {plan.size} samples"
            )
        self._next += 1
        weights = chunk_weights(plan, index, dtype=chunk.real.dtype, device=chunk.device)
        start = plan.starts[index] - self._done
        end = start + plan.size
        if self._pending is None:
            self._pending = chunk.new_zeros(*chunk.shape[:-1], 0)
            self._total = weights.new_zeros(0)
        grow = end - self._pending.shape[-1]
        if grow > 0:
            self._pending = torch.nn.functional.pad(self._pending, (0, grow))
            self._total = torch.nn.functional.pad(self._total, (0, grow))
        self._pending[..., start:end] += chunk * weights
        self._total[start:end] += weights
        final = (plan.starts[index + 1] if index + 1 < plan.count else plan.length) - self._done
        region = self._pending[..., :final] / self._total[:final]
        self._pending, self._total = self._pending[..., final:], self._total[final:]
        self._done += final
        return region
