"""Direction-of-arrival priors over the time-frequency bins of a microphone array.

A source heard from direction ``theta`` reaches the mics as a plane wave: in a bin
it dominates, the mics' coefficients are ``x ~ g a(theta)`` up to small phase errors.
The share of the bin's energy one plane wave from ``theta`` explains,
``match = |a^H x|^2 / (M ||x||^2)``, is then about ``1 - mean_m delta_m^2`` for phase
errors ``delta_m`` (radians, after the best common phase), so the log-likelihood of
independent Gaussian phase errors of spread ``sigma`` is::

    log p(x | source from theta) = -M (1 - match) / (2 sigma^2) + const

These are the source's prior log-odds in that bin (the "spatial clustering" of
DUET, Yilmaz & Rickard 2004, with a soft membership). Where the array is short
against the wavelength every direction matches and the prior says nothing, as it
should: there the spectral terms of the stage decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

#: Log-odds of a source whose direction was not found in the mixture: it takes nothing.
ABSENT = -60.0


class ArrayTransform(Protocol):
    """What the priors need of the transform (``demux.transforms.spatial.ArraySTFT``)."""

    n_elements: int

    def match(self, coeffs: Tensor, angles_deg: Tensor) -> Tensor: ...

    def find_directions(self, coeffs: Tensor, *, n: int) -> list[list[float]]: ...


def arrival_log_odds(match: Tensor, *, n_mics: int, phase_noise: float, floor: float) -> Tensor:
    """Log-likelihood of the mics' phases under a plane wave, as prior log-odds.

    Args:
        match: plane-wave match in [0, 1], any shape (``demux.transforms.spatial.plane_wave_match``).
        n_mics: ``M``.
        phase_noise: ``sigma``, the spread of each mic's phase error, radians.
        floor: the lowest log-odds given (a source's ``outside``): a bin far from the
            direction is as unlikely as a coefficient outside a band.

    Returns:
        ``max(-M (1 - match) / (2 sigma^2), floor)``, shape of ``match``.
    """
    return (-n_mics * (1.0 - match) / (2.0 * phase_noise**2)).clamp(min=floor)


def source_directions(given: Sequence[float | None], found: Sequence[float]) -> list[float | None]:
    """Each source's direction: its own, or the next one found (``None`` when none is left).

    Args:
        given: per source, degrees, or ``None`` for "find it"; sources to find take the
            directions ``found`` (ascending) in the order they are listed.
        found: directions found in the mixture, degrees.
    """
    pending = iter(found)
    return [direction if direction is not None else next(pending, None) for direction in given]


def arrival_priors(transform: ArrayTransform, coeffs: Tensor, *, given: Sequence[float | None],
                   phase_noise: Sequence[float], floor: Sequence[float]) -> tuple[Tensor, list[list[float | None]]]:
    """Direction priors of ``S`` sources over an array's STFT bins.

    Args:
        transform: the array's transform (geometry, steering, direction finding).
        coeffs: ``(B, M, F, N)`` complex STFTs of the mics.
        given: per source, its direction in degrees, or ``None`` to find it in each item
            (:func:`source_directions`).
        phase_noise: per source, radians (:func:`arrival_log_odds`).
        floor: per source, the lowest log-odds.

    Returns:
        ``(B, S, F, N)`` log-odds (:data:`ABSENT` for a source whose direction was not
        found), and per item the directions used, degrees (``None``: not found).
    """
    B, _, F, N = coeffs.shape
    to_find = sum(d is None for d in given)
    found = transform.find_directions(coeffs, n=to_find) if to_find else [[] for _ in range(B)]
    out = torch.full((B, len(given), F, N), ABSENT, dtype=coeffs.real.dtype, device=coeffs.device)
    used = []
    for b in range(B):
        directions = source_directions(given, found[b])
        present = [s for s, d in enumerate(directions) if d is not None]
        angles = torch.tensor([directions[s] for s in present], dtype=torch.float64)
        match = transform.match(coeffs[b : b + 1], angles)[0]  # (S', F, N)
        for row, s in enumerate(present):
            out[b, s] = arrival_log_odds(match[row], n_mics=transform.n_elements, phase_noise=phase_noise[s],
                                         floor=floor[s])
        used.append(directions)
    return out, used
