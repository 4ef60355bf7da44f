"""Spatial DFT of a uniform linear array: an STFT per element, then fixed beams per bin.

Element ``m`` sits at ``m * spacing_m`` along the array axis. A plane wave from
``theta`` degrees (0 = broadside; positive angles reach element 0 first) reaches
element ``m`` ``m * spacing_m * sin(theta) / speed_m_s`` seconds late, so its
steering vector at ``f`` Hz is ``exp(-2j pi f m spacing sin(theta) / speed)``.
Beam ``d`` is the delay-and-sum output ``a_d(f)^H X(f) / M``: a plane wave from
``theta_d`` comes out of it with unit gain.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from demux.errors import ParameterError
from demux.transforms._common import check_int, check_positive, check_signal
from demux.transforms.base import Grid, Transform
from demux.transforms.stft import STFT, WindowSpec

DEFAULT_ANGLES_DEG: tuple[float, ...] = tuple(float(a) for a in range(-90, 91, 15))

#: Largest per-bin condition number of the beam matrix for which the spatial DFT
#: counts as invertible: float32 round trips then stay within ~1e-5.
MAX_CONDITION = 100.0


def steering_vectors(
    *, n_elements: int, spacing_m: float, speed_m_s: float, freqs_hz: Tensor, angles_deg: Tensor
) -> Tensor:
    """Plane-wave steering vectors of a uniform linear array.

    Args:
        n_elements: ``M`` elements.
        spacing_m: element spacing, metres.
        speed_m_s: propagation speed, m/s.
        freqs_hz: ``(F,)`` frequencies, Hz.
        angles_deg: ``(D,)`` directions, degrees from broadside.

    Returns:
        ``(D, M, F)`` complex128 ``exp(-2j pi f m spacing sin(theta) / speed)``.
    """
    m = torch.arange(n_elements, dtype=torch.float64)
    sin = torch.sin(torch.deg2rad(angles_deg.to(torch.float64)))
    delay_s = sin[:, None] * m[None, :] * (spacing_m / speed_m_s)
    phase = -2 * math.pi * delay_s[:, :, None] * freqs_hz.to(torch.float64)[None, None, :]
    return torch.polar(torch.ones_like(phase), phase)


def beam_weights(steering: Tensor) -> Tensor:
    """``(F, D, M)`` delay-and-sum weights ``a^H / M`` from ``(D, M, F)`` steering vectors."""
    return steering.permute(2, 0, 1).conj() / steering.shape[1]


def beamform(spectra: Tensor, weights: Tensor) -> Tensor:
    """``(..., M, F, N)`` element spectra -> ``(..., D, F, N)`` beams with ``(F, D, M)`` weights."""
    return torch.einsum("fdm,...mfn->...dfn", weights.to(spectra.dtype), spectra)


def unbeamform(beams: Tensor, synthesis: Tensor) -> Tensor:
    """``(..., D, F, N)`` beams -> ``(..., M, F, N)`` element spectra with ``(F, M, D)`` synthesis.

    With ``synthesis = pinv(weights)`` this is the least-squares inverse of :func:`beamform`.
    """
    return torch.einsum("fmd,...dfn->...mfn", synthesis.to(beams.dtype), beams)


class SpatialDFT(Transform):
    """Beams of a uniform linear array: ``(B, M, T)`` -> ``(B, D, F, N)`` complex.

    Args:
        sample_rate: Hz.
        n_elements: ``M`` array elements (the input channels).
        spacing_m: element spacing, metres.
        speed_m_s: propagation speed (343 m/s: sound in air).
        angles_deg: the ``D`` beam directions, degrees from broadside.
        n_fft, hop, window: the per-element STFT (see :class:`~demux.transforms.stft.STFT`).
        min_freq_hz: bins below it are steered as if at ``min_freq_hz`` (default
            ``speed / (M * spacing)``, where the aperture is one wavelength). Below
            it an array cannot tell directions apart and exact steering makes the
            beam matrix (nearly) singular (at 0 Hz every direction looks alike);
            this keeps the transform invertible. Pass 0 to steer every bin exactly.

    ``inverse`` solves each bin by least squares (pseudo-inverse of the beam
    matrix), exact when ``D >= M`` and the matrix has full column rank.
    ``invertible`` says whether every bin's matrix has condition number
    <= ``MAX_CONDITION``.
    """

    def __init__(
        self,
        sample_rate: float,
        n_elements: int,
        spacing_m: float,
        speed_m_s: float = 343.0,
        angles_deg: tuple[float, ...] = DEFAULT_ANGLES_DEG,
        n_fft: int = 512,
        hop: int | None = None,
        window: WindowSpec = "hann",
        min_freq_hz: float | None = None,
    ):
        super().__init__(sample_rate)
        self.n_elements = check_int("n_elements", n_elements, 1)
        self.spacing_m = check_positive("spacing_m", spacing_m)
        self.speed_m_s = check_positive("speed_m_s", speed_m_s)
        angles = torch.as_tensor(angles_deg, dtype=torch.float64).flatten()
        if angles.numel() == 0 or not bool(((angles >= -90) & (angles <= 90)).all()):
            raise ParameterError(f"angles_deg={angles_deg!r} must be a non-empty list of degrees in [-90, 90]")
        if min_freq_hz is None:
            min_freq_hz = self.speed_m_s / (self.n_elements * self.spacing_m)
        if not min_freq_hz >= 0:
            raise ParameterError(f"min_freq_hz={min_freq_hz!r} is not a number >= 0")
        self.min_freq_hz = float(min_freq_hz)
        self.stft = STFT(sample_rate, n_fft=n_fft, hop=hop, window=window)
        freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (self.sample_rate / n_fft)
        steering = steering_vectors(
            n_elements=self.n_elements, spacing_m=self.spacing_m, speed_m_s=self.speed_m_s,
            freqs_hz=freqs.clamp(min=self.min_freq_hz), angles_deg=angles,
        )
        weights = beam_weights(steering)
        self.register_buffer("angles_deg", angles.float())
        self.register_buffer("weights", weights)
        self.register_buffer("synthesis", torch.linalg.pinv(weights))
        self.condition = float(torch.linalg.cond(weights).max())
        self.invertible = self.stft.invertible and angles.numel() >= self.n_elements and self.condition <= MAX_CONDITION

    def forward(self, x: Tensor) -> Tensor:
        _, M, _ = check_signal(x)
        if M != self.n_elements:
            raise ParameterError(f"expected {self.n_elements} channels (array elements), got {M}")
        return beamform(self.stft(x), self.weights)

    def inverse(self, coeffs: Tensor, length: int) -> Tensor:
        return self.stft.inverse(unbeamform(coeffs, self.synthesis), length)

    def grid(self, length: int) -> Grid:
        return dataclasses.replace(self.stft.grid(length), direction_deg=self.angles_deg.cpu().view(-1, 1, 1))
