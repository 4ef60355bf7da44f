"""Noise-floor estimates per group, as log-variances.

- ``mad``: robust wavelet-shrinkage estimate (Donoho & Johnstone 1994):
  ``sigma = MAD(c) / 0.6745``; for zero-median coefficients ``MAD(c)^2 = median(|c|^2)``.
  For complex circular coefficients ``|c|^2`` is exponential and ``median = sigma^2 ln 2``.
- ``minimum``: minimum statistics (Martin 2001) reduced to its core: a low
  percentile of the power over the group's coefficients, bias-corrected for the
  exponential distribution of a periodogram bin.
- ``tracked``: minimum statistics over time (Martin 2001): per group and frame, the
  recursively smoothed power, its minimum over a sliding window, times Martin's bias
  factor ``B_min(D, Q_eq)``; a floor that follows noise whose level changes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

_GAUSS_MEDIAN_SQ = 0.6745**2  # median(c^2) / sigma^2 for real Gaussian c
_QUANTILE_MAX = 2**24  # torch.quantile's limit on the values along its axis


def group_quantile(power: Tensor, group: Tensor, n_groups: int, q: float) -> Tensor:
    """Per-group quantile of ``power``.

    Args:
        power: ``(batch, Kf)`` non-negative values.
        group: ``(Kf,)`` int64 group index.
        n_groups: number of groups ``G``.
        q: quantile in [0, 1].

    Returns:
        ``(batch, G)``; groups without coefficients get the overall quantile.
    """
    B = power.shape[0]
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=n_groups).tolist()
    out = power.new_empty(B, n_groups)
    if 0 in counts:
        out[:] = _quantile(power, q)[:, None]
    start = 0
    for g, count in enumerate(counts):  # groups are few (bins, levels, bands): a loop is clearer than padding
        if count:
            out[:, g] = _quantile(power[:, order[start : start + count]], q)
        start += count
    return out


def _quantile(values: Tensor, q: float) -> Tensor:
    """``(batch, n) -> (batch,)``: ``torch.quantile`` (linear interpolation) along the last axis,
    also beyond the ``2**24`` values it refuses (10 s of 1 MHz I/Q in a 256-bin STFT holds more)."""
    n = values.shape[-1]
    if n <= _QUANTILE_MAX:
        return torch.quantile(values, q, dim=-1)
    rank = q * (n - 1)
    below = math.floor(rank)
    low = torch.kthvalue(values, below + 1, dim=-1).values
    high = torch.kthvalue(values, min(below + 2, n), dim=-1).values
    return torch.lerp(low, high, rank - below)


def noise_log_variance(
    power: Tensor, group: Tensor, n_groups: int, *, estimate: str, percentile: float, complex_coeffs: bool
) -> Tensor:
    """Log noise variance per group from the mixture power.

    Args:
        power: ``(batch, Kf)`` coefficient power ``|c|^2`` (summed over channels).
        group: ``(Kf,)`` group of each coefficient.
        n_groups: ``G``.
        estimate: ``"mad"`` or ``"minimum"``.
        percentile: for ``minimum``, the percentile (0-100) taken as the floor.
        complex_coeffs: whether the coefficients were complex (changes the bias factor).

    Returns:
        ``(batch, G)`` natural log of the noise variance, in the units of ``power``.
    """
    if estimate == "mad":
        median = group_quantile(power, group, n_groups, 0.5)
        factor = math.log(2.0) if complex_coeffs else _GAUSS_MEDIAN_SQ
        return torch.log(median / factor + 1e-12)
    q = percentile / 100.0
    low = group_quantile(power, group, n_groups, q)
    # quantile q of Exp(1) is -ln(1-q): divide it out to get the mean noise power.
    factor = -math.log(1.0 - q) if complex_coeffs else _chi2_1_quantile(q)
    return torch.log(low / factor + 1e-12)


def _chi2_1_quantile(q: float) -> float:
    """Quantile of ``c^2`` for a unit real Gaussian ``c`` (chi-square, 1 dof)."""
    from scipy.stats import chi2

    return float(chi2.ppf(q, 1))


SMOOTH_S = 0.05  # time constant of the tracker's smoothing (Martin's alpha = 0.85 at a 8 ms hop)

# Martin (2001), Table III: M(D) in the bias of the minimum of D smoothed periodograms
_MARTIN_D = (1, 2, 5, 8, 10, 15, 20, 30, 40, 60, 80, 120, 140, 160)
_MARTIN_M = (0.0, 0.26, 0.48, 0.58, 0.61, 0.668, 0.705, 0.762, 0.8, 0.841, 0.865, 0.89, 0.9, 0.91)


def group_frame_mean(power: Tensor, group: Tensor, frame: Tensor, n_groups: int, n_frames: int) -> Tensor:
    """Mean power of each (group, frame) cell.

    Args:
        power: ``(batch, Kf)`` coefficient power.
        group: ``(Kf,)`` int64 group of each coefficient, in ``[0, G)``.
        frame: ``(Kf,)`` int64 frame of each coefficient, in ``[0, N)``.

    Returns:
        ``(batch, G, N)``; empty cells are 0.
    """
    cell = group * n_frames + frame
    total = power.new_zeros(power.shape[0], n_groups * n_frames).index_add_(1, cell, power)
    count = torch.bincount(cell, minlength=n_groups * n_frames).clamp(min=1).to(power.dtype)
    return (total / count).view(-1, n_groups, n_frames)


def minimum_bias(window: int, dof: float) -> float:
    """Martin's (2001, eq. 17) bias of the minimum of ``window`` smoothed periodograms.

    Args:
        window: ``D``, frames the minimum is taken over (>= 1).
        dof: ``Q_eq``, equivalent degrees of freedom of one smoothed value
            (``2 E[P]^2 / Var[P]``; 2 for a raw complex periodogram bin).

    Returns:
        ``B_min >= 1``: the mean noise power over the expected minimum.
    """
    m = float(np.interp(window, _MARTIN_D, _MARTIN_M))  # beyond the table: its last value
    q = (dof - 2.0 * m) / (1.0 - m)
    return 1.0 + (window - 1) * 2.0 / q


def tracked_log_variance(cells: Tensor, *, window: int, alpha: float, dof: float) -> Tensor:
    """Minimum-statistics noise floor over time (Martin 2001, with a fixed smoothing constant).

    ``P[n] = alpha P[n-1] + (1 - alpha) cells[n]``, ``P[-1]`` the mean of the first ``window``
    frames (not one frame's value: a transform's edge frames hold part of a frame's
    signal, and a start at one of them drags the floor down for a window), then the minimum of
    ``P`` over the ``window`` frames centred on ``n`` (offline: a step in the noise level is
    followed within half a window on either side, where the causal tracker lags a whole
    window), times :func:`minimum_bias` for the frames that window holds (fewer at the ends).

    Args:
        cells: ``(batch, G, N)`` power per group and frame (:func:`group_frame_mean`).
        window: ``D``, frames of the sliding minimum (>= 1).
        alpha: smoothing constant in [0, 1).
        dof: ``Q_eq`` of one value of ``cells`` before smoothing (2 for one complex bin;
            the smoothing multiplies it by ``(1 + alpha) / (1 - alpha)``).

    Returns:
        ``(batch, G, N)`` natural log of the noise variance, in the units of ``cells``.
    """
    smoothed = torch.empty_like(cells)
    state = cells[..., :window].mean(-1)
    for n in range(cells.shape[-1]):  # a first-order recursion: frames are a few hundred
        state = alpha * state + (1.0 - alpha) * cells[..., n]
        smoothed[..., n] = state
    B, G, N = cells.shape
    half = window // 2
    padded = torch.nn.functional.pad(smoothed.reshape(B * G, 1, N), (half, window - 1 - half), value=float("inf"))
    low = -torch.nn.functional.max_pool1d(-padded, window, stride=1).view(B, G, N)
    held = [min(n + window - half, N) - max(n - half, 0) for n in range(N)]
    q = dof * (1.0 + alpha) / (1.0 - alpha)
    bias = torch.tensor([minimum_bias(d, q) for d in held], dtype=cells.dtype, device=cells.device)
    return torch.log(low * bias + 1e-12)


def tracked_log_variance_s(cells: Tensor, *, hop_s: float, track_s: float, dof: float) -> Tensor:
    """:func:`tracked_log_variance` with its window and smoothing in seconds.

    Args:
        cells: ``(B, G, N)`` power per group and frame, frames ``hop_s`` seconds apart.
        track_s: the minimum's window, seconds (at least one frame).
        dof: as in :func:`tracked_log_variance`.

    Returns:
        ``(B, G, N)`` natural log of the tracked noise variance.
    """
    return tracked_log_variance(cells, window=max(1, round(track_s / hop_s)), alpha=math.exp(-hop_s / SMOOTH_S), dof=dof)
