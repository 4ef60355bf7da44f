"""Perceptual weights of the likelihood, from each coefficient's frequency.

The fit's likelihood term is ``sum_k w_k * d_IS(P_k | V_k)`` (:mod:`demux.model`);
by default ``w_k = 1``. A perceptual weighting makes errors at frequencies the ear
hardly hears cost less, as perceptual audio coders do:

- ``a-weighting``: the IEC 61672-1 A-weighting curve (the ear's sensitivity at
  about 40 phon), as a power ratio ``10^(A(f)/10)``;
- ``ath``: the inverse of the absolute threshold of hearing in quiet (Terhardt
  1979, as in Painter & Spanias 2000), ``10^(-T_q(f)/10)``: a coefficient counts as
  much as the ear is sensitive at its frequency, most at 3-4 kHz.

The weights are normalised to mean 1 over the coefficients, so that the penalties'
weights (smoothness, anchors, ridge) keep their meaning against the likelihood.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from demux.errors import ParameterError

#: The per-coefficient weighting of a stage's likelihood (recipe key ``fit.weighting``).
Weighting = Literal["none", "a-weighting", "ath"]

# IEC 61672-1 pole frequencies, Hz, and the offset that makes A(1 kHz) = 0 dB
_A_POLES = (20.598997, 107.65265, 737.86223, 12194.217)
_A_OFFSET_DB = 2.0


def a_weighting_db(freq_hz: Tensor) -> Tensor:
    """The A-weighting gain ``A(f)``, dB (IEC 61672-1): 0 dB at 1 kHz, -19.1 dB at 100 Hz.

    Args:
        freq_hz: any shape, frequencies in Hz (the sign is ignored: two-sided spectra).

    Returns:
        Same shape, dB; ``-inf`` at 0 Hz.
    """
    f2 = freq_hz.double().square()
    p1, p2, p3, p4 = (p * p for p in _A_POLES)
    response = p4 * f2.square() / ((f2 + p1) * torch.sqrt((f2 + p2) * (f2 + p3)) * (f2 + p4))
    return (20.0 * torch.log10(response) + _A_OFFSET_DB).to(_real(freq_hz))


def hearing_threshold_db(freq_hz: Tensor) -> Tensor:
    """Terhardt's absolute threshold of hearing in quiet ``T_q(f)``, dB SPL.

    ``T_q = 3.64 (f/kHz)^-0.8 - 6.5 exp(-0.6 (f/kHz - 3.3)^2) + 1e-3 (f/kHz)^4``.

    Args:
        freq_hz: any shape, frequencies in Hz (the sign is ignored).

    Returns:
        Same shape, dB SPL; ``+inf`` at 0 Hz.
    """
    khz = freq_hz.double().abs() / 1000.0
    threshold = 3.64 * khz.pow(-0.8) - 6.5 * torch.exp(-0.6 * (khz - 3.3).square()) + 1e-3 * khz.pow(4)
    return threshold.to(_real(freq_hz))


def perceptual_weights(freq_hz: Tensor, weighting: Weighting) -> Tensor | None:
    """Per-coefficient likelihood weights ``w_k >= 0`` of mean 1, from frequency.

    Args:
        freq_hz: ``(Kf,)`` each coefficient's centre frequency, Hz.
        weighting: see :data:`Weighting`.

    Returns:
        ``(Kf,)`` weights (power ratios, normalised to mean 1, dtype of ``freq_hz``),
        or ``None`` for ``"none"`` (every coefficient counts alike).

    Raises:
        ParameterError: an unknown ``weighting``, or every weight zero (all at 0 Hz).
    """
    if weighting not in get_args(Weighting):
        raise ParameterError(f"weighting={weighting!r} is not one of {get_args(Weighting)}")
    if weighting == "none":
        return None
    gain_db = a_weighting_db(freq_hz) if weighting == "a-weighting" else -hearing_threshold_db(freq_hz)
    # in float64: the ATH weight spans tens of orders of magnitude over the audio band
    power = torch.pow(10.0, gain_db.double() / 10.0)
    mean = power.mean()
    if not (mean > 0 and math.isfinite(float(mean))):
        raise ParameterError(f"weighting={weighting!r}: every coefficient has weight 0 (all at 0 Hz?)")
    return (power / mean).to(_real(freq_hz))


def _real(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()
