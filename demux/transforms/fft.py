"""Real FFT over the whole signal: one coefficient per frequency bin, no time axis."""

from __future__ import annotations

import torch
from torch import Tensor

from demux.transforms._common import check_count, check_signal, whole_signal_grid
from demux.transforms.base import Grid, Transform


def rfft(x: Tensor) -> Tensor:
    """One-sided DFT along time, unnormalised (``numpy.fft.rfft``).

    Args:
        x: ``(..., time)`` real signal.

    Returns:
        ``(..., time // 2 + 1)`` complex coefficients; bin ``k`` is ``k * fs / time`` Hz.
    """
    return torch.fft.rfft(x, dim=-1)


def irfft(coeffs: Tensor, *, length: int) -> Tensor:
    """Inverse of :func:`rfft`: ``(..., length // 2 + 1)`` complex -> ``(..., length)`` real."""
    return torch.fft.irfft(coeffs, n=length, dim=-1)


class FFT(Transform):
    """rFFT of the whole signal; coefficients ``(batch, channel, T // 2 + 1)`` complex.

    The grid pools bins into at most 512 equal-width bands (``group``), so
    parameters tied per band stay few however long the signal is.
    """

    def forward(self, x: Tensor) -> Tensor:
        check_signal(x)
        return rfft(x)

    def inverse(self, coeffs: Tensor, length: int) -> Tensor:
        check_count("rFFT bins", coeffs.shape[-1], length // 2 + 1, length)
        return irfft(coeffs, length=length)

    def grid(self, length: int) -> Grid:
        step = self.sample_rate / length
        freq = torch.arange(length // 2 + 1, dtype=torch.float32) * step
        return whole_signal_grid(freq, half_width_hz=step / 2, sample_rate=self.sample_rate, length=length)


def cfft(x: Tensor) -> Tensor:
    """Two-sided DFT of complex baseband, in increasing frequency order (``fftshift`` of ``fft``).

    Args:
        x: ``(..., time)`` complex (or real) signal.

    Returns:
        ``(..., time)`` complex coefficients; bin ``k`` is ``(k - time // 2) * fs / time`` Hz.
    """
    return torch.fft.fftshift(torch.fft.fft(x, dim=-1), dim=-1)


def icfft(coeffs: Tensor) -> Tensor:
    """Inverse of :func:`cfft`: ``(..., time)`` -> ``(..., time)`` complex."""
    return torch.fft.ifft(torch.fft.ifftshift(coeffs, dim=-1), dim=-1)


class ComplexFFT(Transform):
    """FFT of a whole complex baseband signal (I/Q), from -fs/2 to fs/2.

    Coefficients ``(batch, channel, T)`` complex, in increasing frequency order, so
    bands in Hz may be negative (below the centre frequency) and pooled groups are
    contiguous in frequency.
    """

    complex_input = True

    def forward(self, x: Tensor) -> Tensor:
        check_signal(x, complex_ok=True)
        return cfft(x.to(torch.promote_types(x.dtype, torch.complex64)))

    def inverse(self, coeffs: Tensor, length: int) -> Tensor:
        check_count("FFT bins", coeffs.shape[-1], length, length)
        return icfft(coeffs)

    def grid(self, length: int) -> Grid:
        step = self.sample_rate / length
        freq = (torch.arange(length, dtype=torch.float32) - length // 2) * step
        return whole_signal_grid(
            freq, half_width_hz=step / 2, sample_rate=self.sample_rate, length=length, two_sided=True
        )
