"""Noise-floor estimates per group, as log-variances.

- ``mad``: robust wavelet-shrinkage estimate (Donoho & Johnstone 1994):
  ``sigma = MAD(c) / 0.6745``; for zero-median coefficients ``MAD(c)^2 = median(|c|^2)``.
  For complex circular coefficients ``|c|^2`` is exponential and ``median = sigma^2 ln 2``.
- ``minimum``: minimum statistics (Martin 2001) reduced to its core: a low
  percentile of the power over the group's coefficients, bias-corrected for the
  exponential distribution of a periodogram bin.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_GAUSS_MEDIAN_SQ = 0.6745**2  # median(c^2) / sigma^2 for real Gaussian c


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
    out = torch.quantile(power, q, dim=1, keepdim=True).expand(B, n_groups).clone()
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=n_groups).tolist()
    start = 0
    for g, count in enumerate(counts):  # groups are few (bins, levels, bands): a loop is clearer than padding
        if count:
            out[:, g] = torch.quantile(power[:, order[start : start + count]], q, dim=1)
        start += count
    return out


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
