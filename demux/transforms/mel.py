"""Mel filterbank (librosa's formulas) and the lift of mel-band values to linear bins.

A mel stage refines an STFT stage: its logits live on ``n_mels`` bands and are
lifted to the STFT's bins by ``F^T m / F^T 1`` (a filter-weighted average of the
bands covering each bin) before the two stages' logits are added.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from demux.errors import ParameterError
from demux.transforms._common import check_int, check_positive

Scale = Literal["slaney", "htk"]
Norm = Literal["slaney"] | None

# Slaney's Auditory Toolbox: linear (200/3 Hz per mel) below 1 kHz, log above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(freq_hz: Tensor, *, scale: Scale = "slaney") -> Tensor:
    """Hz -> mel, elementwise (librosa ``hz_to_mel``; ``htk=True`` for ``scale="htk"``)."""
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + freq_hz / 700.0)
    log_part = _MIN_LOG_MEL + torch.log(freq_hz.clamp(min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(freq_hz >= _MIN_LOG_HZ, log_part, freq_hz / _F_SP)


def mel_to_hz(mels: Tensor, *, scale: Scale = "slaney") -> Tensor:
    """Mel -> Hz, elementwise; inverse of :func:`hz_to_mel`."""
    if scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    log_part = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mels.clamp(min=_MIN_LOG_MEL) - _MIN_LOG_MEL))
    return torch.where(mels >= _MIN_LOG_MEL, log_part, mels * _F_SP)


def bin_frequencies(*, sample_rate: float, n_fft: int) -> Tensor:
    """``(n_fft // 2 + 1,)`` float64 Hz of the rFFT bins (``numpy.fft.rfftfreq``)."""
    return torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (sample_rate / n_fft)


def _band_points_hz(*, n_mels: int, fmin: float, fmax: float, scale: Scale) -> Tensor:
    """``(n_mels + 2,)`` float64 Hz: band edges/centres equally spaced in mel."""
    lo, hi = hz_to_mel(torch.tensor([fmin, fmax], dtype=torch.float64), scale=scale)
    return mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64), scale=scale)


def _check_mel_args(sample_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float | None, scale, norm):
    sample_rate = check_positive("sample_rate", sample_rate)
    check_int("n_fft", n_fft, 2)
    check_int("n_mels", n_mels, 1)
    fmax = sample_rate / 2 if fmax is None else float(fmax)
    if not 0 <= fmin < fmax:
        raise ParameterError(f"need 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")
    if scale not in get_args(Scale):
        raise ParameterError(f"scale={scale!r} is not one of {', '.join(get_args(Scale))}")
    if norm not in ("slaney", None):
        raise ParameterError(f"norm={norm!r} is not 'slaney' or None")
    return sample_rate, fmax


def mel_filterbank(
    *,
    sample_rate: float,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    scale: Scale = "slaney",
    norm: Norm = "slaney",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Triangular mel filters over the rFFT bins (librosa ``filters.mel``).

    Args:
        sample_rate: Hz.
        n_fft: FFT size; the filters cover its ``n_fft // 2 + 1`` bins.
        n_mels: number of bands.
        fmin, fmax: lowest and highest band edge, Hz (``fmax`` default ``sample_rate / 2``).
        scale: ``"slaney"`` (linear below 1 kHz, log above) or ``"htk"`` (``2595 log10(1 + f/700)``).
        norm: ``"slaney"`` divides each filter by its width in Hz / 2 (equal area); None keeps peak 1.

    Returns:
        ``(n_mels, n_fft // 2 + 1)`` non-negative weights.
    """
    sample_rate, fmax = _check_mel_args(sample_rate, n_fft, n_mels, fmin, fmax, scale, norm)
    bins_hz = bin_frequencies(sample_rate=sample_rate, n_fft=n_fft)
    points = _band_points_hz(n_mels=n_mels, fmin=fmin, fmax=fmax, scale=scale)
    widths = points.diff()
    ramps = points[:, None] - bins_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = torch.minimum(rising, falling).clamp(min=0)
    if norm == "slaney":
        weights = weights * (2.0 / (points[2:] - points[:-2]))[:, None]
    return weights.to(dtype)


def expansion_matrix(filterbank: Tensor, *, band_centres_hz: Tensor, bins_hz: Tensor) -> Tensor:
    """``(F, n_mels)`` matrix ``E`` with ``E m = F^T m / F^T 1`` for each covered bin.

    A bin that no filter covers (below ``fmin``, above ``fmax``, or the edge bins
    where every triangle is zero) takes the value of the band whose centre is
    nearest to it in Hz, so lifted masks stay defined everywhere.

    Args:
        filterbank: ``(n_mels, F)`` weights.
        band_centres_hz: ``(n_mels,)`` centre of each band.
        bins_hz: ``(F,)`` frequency of each bin.
    """
    weights = filterbank.T
    coverage = weights.sum(dim=1, keepdim=True)
    nearest = (bins_hz[:, None] - band_centres_hz[None, :]).abs().argmin(dim=1)
    fallback = nn.functional.one_hot(nearest, filterbank.shape[0]).to(weights.dtype)
    return torch.where(coverage > 0, weights / coverage.clamp(min=torch.finfo(weights.dtype).tiny), fallback)


class MelBands(nn.Module):
    """Mel filterbank as buffers: pool linear-bin power into bands, lift band values back.

    Args: as :func:`mel_filterbank`.

    Buffers:
        filters: ``(n_mels, F)`` weights ``F``.
        centres_hz: ``(n_mels,)`` centre frequency of each band.
        expansion: ``(F, n_mels)`` lift ``F^T m / F^T 1`` (see :func:`expansion_matrix`).
    """

    def __init__(
        self,
        sample_rate: float,
        n_fft: int,
        n_mels: int = 64,
        fmin: float = 0.0,
        fmax: float | None = None,
        scale: Scale = "slaney",
        norm: Norm = "slaney",
    ):
        super().__init__()
        filters = mel_filterbank(
            sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, scale=scale, norm=norm
        )
        fmax = sample_rate / 2 if fmax is None else fmax
        centres = _band_points_hz(n_mels=n_mels, fmin=fmin, fmax=fmax, scale=scale)[1:-1]
        bins_hz = bin_frequencies(sample_rate=sample_rate, n_fft=n_fft)
        self.register_buffer("filters", filters)
        self.register_buffer("centres_hz", centres.float())
        expansion = expansion_matrix(filters.double(), band_centres_hz=centres, bins_hz=bins_hz)
        self.register_buffer("expansion", expansion.float())

    def to_mel(self, power: Tensor) -> Tensor:
        """``(..., F, N)`` linear-bin power -> ``(..., n_mels, N)`` band power ``F p``."""
        return torch.einsum("mf,...fn->...mn", self.filters.to(power.dtype), power)

    def expand(self, values_mel: Tensor) -> Tensor:
        """``(..., n_mels, N)`` band values (logits, masks) -> ``(..., F, N)`` per linear bin."""
        return torch.einsum("fm,...mn->...fn", self.expansion.to(values_mel.dtype), values_mel)
