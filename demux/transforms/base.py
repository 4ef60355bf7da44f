"""What every demux transform promises: forward, inverse and the physical axes.

Canonical layout: signals are ``(batch, channel, time)``; a transform's coefficients
are ``(batch, channel, *K)`` where ``K`` is the transform's own coefficient shape
(``(freq, frame)`` for the STFT, ``(freq,)`` for the FFT, ``(coef,)`` for the packed
DWT). Priors never index bins: they read the :class:`Grid`, which says in Hz and
seconds what each coefficient means.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class Grid:
    """Physical meaning of each coefficient of a transform output.

    Every tensor is broadcastable to one item's coefficient shape ``(channel, *K)``
    (the output of ``forward`` without its batch dimension), so
    ``grid.freq_hz + 0 * coeffs[0].abs()`` has one item's shape. Most transforms
    act on each channel alike and give tensors with a leading 1; transforms over
    channels (PCA, ICA, spatial DFT) give a channel-dependent ``direction_deg`` or
    component meaning along that first dimension.

    Attributes:
        freq_hz: centre frequency of each coefficient, Hz.
        band_lo_hz: lower edge of the frequency band the coefficient covers, Hz.
        band_hi_hz: upper edge of that band, Hz.
        time_s: centre time of each coefficient, seconds from the signal start.
        group: ``int64`` index ``b(k)`` of the group whose parameters coefficient k
            shares (frequency bin, wavelet level, ...), in ``[0, n_groups)``.
        n_groups: number of groups.
        n_frames: number of distinct time positions a per-frame term needs
            (``frame`` below indexes them).
        frame: ``int64`` index of each coefficient's time position, in ``[0, n_frames)``.
        shape: the coefficient shape ``K`` (without the channel dimension).
        direction_deg: steering direction of each output channel, degrees from
            broadside, for spatial transforms; ``None`` otherwise.
    """

    freq_hz: Tensor
    band_lo_hz: Tensor
    band_hi_hz: Tensor
    time_s: Tensor
    group: Tensor
    n_groups: int
    frame: Tensor
    n_frames: int
    shape: tuple[int, ...]
    direction_deg: Tensor | None = None


class Transform(nn.Module, ABC):
    """A differentiable, batched analysis/synthesis pair with physical axes.

    Subclasses keep ``forward`` and ``inverse`` thin and delegate the maths to
    pure functions in the same module (the ``functional`` layer).
    """

    #: ``inverse(forward(x), T) == x`` up to float error.
    invertible: bool = True
    #: Takes complex baseband signals (I/Q); its frequency axis is two-sided.
    complex_input: bool = False

    def __init__(self, sample_rate: float):
        super().__init__()
        self.sample_rate = float(sample_rate)

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Analyse signals.

        Args:
            x: ``(batch, channel, time)`` real signal.

        Returns:
            ``(batch, channel, *K)`` coefficients (complex or real).
        """

    @abstractmethod
    def inverse(self, coeffs: Tensor, length: int) -> Tensor:
        """Synthesise signals of ``length`` samples from ``(batch, channel, *K)`` coefficients.

        Returns:
            ``(batch, channel, length)`` real signal.
        """

    @abstractmethod
    def grid(self, length: int) -> Grid:
        """The physical axes of ``forward`` applied to a signal of ``length`` samples."""

    def coefficient_shape(self, length: int) -> tuple[int, ...]:
        """``K`` for a signal of ``length`` samples."""
        return self.grid(length).shape


def power(coeffs: Tensor) -> Tensor:
    """``|c|^2`` of real or complex coefficients, same shape, real dtype."""
    return coeffs.real.square() + coeffs.imag.square() if coeffs.is_complex() else coeffs.square()


__all__ = ["Grid", "Transform", "power"]
