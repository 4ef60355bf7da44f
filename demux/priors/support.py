"""Support priors: where a source may live, as log-odds over coefficients.

A source declared in bands ``Omega_s`` (Hz) gets log-odds 0 inside and
``outside`` (about -8, i.e. a prior keep probability near 3e-4) outside, with a
logistic edge so the fit can still move energy across a boundary it straddles.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def band_membership(
    freq_hz: Tensor, bands: Sequence[tuple[float, float, float]], *, resolution_hz: Tensor | float
) -> Tensor:
    """Soft membership in the union of bands, in [0, 1].

    Args:
        freq_hz: frequency of each coefficient, Hz, any shape.
        bands: ``(lo, hi, edge)`` triples in Hz; ``edge`` is the width of the logistic
            transition (0: ``resolution_hz``, about one bin).
        resolution_hz: frequency width of each coefficient, Hz (a tensor shaped like
            ``freq_hz``, or one number).

    Returns:
        Membership of the same shape as ``freq_hz``.
    """
    member = torch.zeros_like(freq_hz)
    for lo, hi, edge in bands:
        # 4/width makes the logistic go from 12% to 88% across `width`.
        slope = 4.0 / torch.clamp(torch.as_tensor(resolution_hz, dtype=freq_hz.dtype), min=max(edge, 1e-9))
        inside = torch.sigmoid((freq_hz - lo) * slope) * torch.sigmoid((hi - freq_hz) * slope)
        member = torch.maximum(member, inside)
    return member


def support_log_odds(membership: Tensor, *, outside: float) -> Tensor:
    """Log-odds 0 where ``membership`` is 1, ``outside`` where it is 0 (linear in between)."""
    return outside * (1.0 - membership)


def level_membership(group: Tensor, levels: Sequence[int], *, n_groups: int) -> Tensor:
    """Membership of packed-DWT coefficients in wavelet levels.

    Args:
        group: ``int64`` group index of each coefficient in wavedec order
            ``[cA_J, cD_J, ..., cD_1]`` (0 is the approximation), any shape.
        levels: the source's levels, 1 = finest detail ``cD_1``, ``J`` = coarsest
            detail, ``J + 1`` = the approximation.
        n_groups: ``J + 1``.

    Returns:
        1.0 where the coefficient's level is in ``levels``, else 0.0; shape of ``group``.
    """
    depth = n_groups - 1
    level = torch.where(group == 0, torch.full_like(group, depth + 1), depth - group + 1)
    wanted = torch.tensor(sorted(levels), dtype=group.dtype, device=group.device)
    return torch.isin(level, wanted).to(torch.get_default_dtype())


def direction_membership(direction_deg: Tensor, *, direction: float, width: float) -> Tensor:
    """Gaussian membership of beams in a direction of arrival.

    Args:
        direction_deg: steering direction of each coefficient's beam, degrees, any shape.
        direction: the source's direction, degrees from broadside.
        width: standard deviation of the membership, degrees.

    Returns:
        ``exp(-0.5 ((direction_deg - direction) / width)^2)``, shape of ``direction_deg``.
    """
    return torch.exp(-0.5 * ((direction_deg - direction) / width).square())
