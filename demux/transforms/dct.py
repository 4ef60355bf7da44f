"""Orthonormal DCT-II (forward) and DCT-III (inverse) along time, computed with an FFT.

Makhoul's reordering turns a length-``N`` DCT-II into one complex FFT of the same
length, so it is O(N log N), differentiable and runs wherever ``torch.fft`` does.
Matches ``scipy.fft.dct(x, type=2, norm="ortho")``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from demux.transforms._common import check_count, check_signal, whole_signal_grid
from demux.transforms.base import Grid, Transform


def _twiddle(n: int, like: Tensor) -> Tensor:
    """``exp(-i pi k / (2n))`` for ``k < n``, complex, on ``like``'s device."""
    k = torch.arange(n, dtype=like.real.dtype, device=like.device)
    return torch.polar(torch.ones_like(k), -math.pi * k / (2 * n))


def _ortho_scale(n: int, like: Tensor) -> Tensor:
    """Per-coefficient factors turning scipy's unnormalised DCT-II into the orthonormal one."""
    scale = torch.full((n,), math.sqrt(1 / (2 * n)), dtype=like.real.dtype, device=like.device)
    scale[0] = math.sqrt(1 / (4 * n))
    return scale


def dct(x: Tensor) -> Tensor:
    """Orthonormal DCT-II along the last dimension.

    Args:
        x: ``(..., time)`` real signal.

    Returns:
        ``(..., time)`` real coefficients; coefficient ``k`` oscillates at ``k * fs / (2 * time)`` Hz.
    """
    n = x.shape[-1]
    reordered = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    spectrum = torch.fft.fft(reordered, dim=-1)
    return 2 * (spectrum * _twiddle(n, spectrum)).real * _ortho_scale(n, x)


def idct(coeffs: Tensor) -> Tensor:
    """Inverse of :func:`dct` (orthonormal DCT-III): ``(..., time)`` -> ``(..., time)``."""
    n = coeffs.shape[-1]
    y = coeffs / _ortho_scale(n, coeffs)
    # y_{n-k}, with y_n = 0, pairs with y_k to rebuild the FFT of the reordered signal.
    mirrored = torch.cat([torch.zeros_like(y[..., :1]), y[..., 1:].flip(-1)], dim=-1)
    spectrum = torch.complex(y, -mirrored) * _twiddle(n, y).conj() / 2
    reordered = torch.fft.ifft(spectrum, dim=-1).real
    half = (n + 1) // 2
    out = torch.empty_like(reordered)
    out[..., ::2] = reordered[..., :half]
    out[..., 1::2] = reordered[..., half:].flip(-1)
    return out


class DCT(Transform):
    """Orthonormal DCT-II of the whole signal; coefficients ``(batch, channel, T)`` real.

    Coefficient ``k`` is at ``k * fs / (2T)`` Hz; the grid pools coefficients into
    at most 512 equal-width bands, like :class:`~demux.transforms.fft.FFT`.
    """

    def forward(self, x: Tensor) -> Tensor:
        check_signal(x)
        return dct(x)

    def inverse(self, coeffs: Tensor, length: int) -> Tensor:
        check_count("DCT coefficients", coeffs.shape[-1], length, length)
        return idct(coeffs)

    def grid(self, length: int) -> Grid:
        step = self.sample_rate / (2 * length)
        freq = torch.arange(length, dtype=torch.float32) * step
        return whole_signal_grid(freq, half_width_hz=step / 2, sample_rate=self.sample_rate, length=length)
