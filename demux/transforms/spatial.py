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
from demux.transforms.base import Grid, Transform, power
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


# --------------------------------------------------------------------------- narrowband array processing
#
# Convention of demux.synth.plane_wave_delays: mic m sits at x_m metres on the array
# axis; a plane wave from theta degrees (0 = broadside, positive towards +x) reaches it
# ``-x_m sin(theta) / c`` seconds after the origin, so the mics at larger x hear it first.
# (SpatialDFT above counts elements from one end and its angles the other way round.)


def ula_positions(*, n_elements: int, spacing_m: float) -> Tensor:
    """``(M,)`` positions, metres, of a uniform linear array centred on the origin."""
    return (torch.arange(n_elements, dtype=torch.float64) - (n_elements - 1) / 2) * spacing_m


def plane_wave_steering(*, mic_x_m: Tensor, freqs_hz: Tensor, angles_deg: Tensor, speed_m_s: float) -> Tensor:
    """Steering vectors of plane waves at a linear array.

    Args:
        mic_x_m: ``(M,)`` mic positions, metres.
        freqs_hz: ``(F,)`` frequencies, Hz.
        angles_deg: ``(D,)`` directions, degrees from broadside (positive towards +x).
        speed_m_s: propagation speed, m/s.

    Returns:
        ``(D, M, F)`` complex128 ``exp(2j pi f x_m sin(theta) / c)`` (a delay of
        ``-x_m sin(theta) / c`` at mic m).
    """
    sin = torch.sin(torch.deg2rad(angles_deg.to(torch.float64)))
    advance_s = sin[:, None] * mic_x_m.to(torch.float64)[None, :] / speed_m_s  # (D, M)
    phase = 2 * math.pi * advance_s[:, :, None] * freqs_hz.to(torch.float64)[None, None, :]
    return torch.polar(torch.ones_like(phase), phase)


def plane_wave_match(spectra: Tensor, steering: Tensor) -> Tensor:
    """Share of each time-frequency bin's energy that one plane wave from each direction explains.

    ``|a^H x|^2 / (M ||x||^2)`` in [0, 1]: 1 where the bin is a plane wave from that
    direction; about 1 for every direction where the aperture is short against the
    wavelength (the data cannot tell directions apart there, and the match says so).

    Args:
        spectra: ``(B, M, F, N)`` complex STFTs of the mics.
        steering: ``(D, M, F)`` steering vectors (:func:`plane_wave_steering`).

    Returns:
        ``(B, D, F, N)`` real, same precision as ``spectra``.
    """
    M = spectra.shape[1]
    beams = torch.einsum("dmf,bmfn->bdfn", steering.conj().to(spectra.dtype), spectra)
    energy = power(spectra).sum(1, keepdim=True)
    return power(beams) / (M * energy).clamp_min(torch.finfo(energy.dtype).tiny)


def direction_votes(match: Tensor, voters: Tensor, *, min_match: float) -> Tensor:
    """Votes of time-frequency bins for directions: an angular histogram per item (DUET-style).

    A bin whose best direction explains at least ``min_match`` of its energy (one source
    dominates it: W-disjoint orthogonality, Yilmaz & Rickard 2004) votes once for that
    direction. Mixed and diffuse bins abstain, so each source's peak stands at its own
    direction, not at a compromise between sources.

    Args:
        match: ``(B, D, F, N)`` :func:`plane_wave_match` on a grid of ``D`` directions.
        voters: ``(B, F, N)`` boolean, the bins allowed to vote (e.g. the loud ones).
        min_match: in [0, 1].

    Returns:
        ``(B, D)`` float64 vote counts.
    """
    best, arg = match.max(dim=1)
    votes = (best >= min_match) & voters
    counts = torch.zeros(match.shape[:2], dtype=torch.float64, device=match.device)
    return counts.scatter_add_(1, arg.flatten(1), votes.flatten(1).to(torch.float64))


def moving_average(x: Tensor, *, width: int) -> Tensor:
    """``(B, D)`` -> ``(B, D)`` mean over ``width`` (odd) neighbours, zeros beyond the ends."""
    kernel = torch.ones(1, 1, width, dtype=x.dtype, device=x.device) / width
    return torch.nn.functional.conv1d(x[:, None], kernel, padding=width // 2)[:, 0]


def find_directions(spectrum: Tensor, angles_deg: Tensor, *, n: int, min_separation: float,
                    min_height: float) -> list[list[float]]:
    """The highest local maxima of angular spectra, at least ``min_separation`` degrees apart.

    Args:
        spectrum: ``(B, D)`` angular spectra on the grid ``angles_deg`` ``(D,)`` (increasing).
        n: at most this many directions per item.
        min_separation: degrees between two directions found.
        min_height: a peak counts if it rises above the spectrum's minimum by at least this
            fraction of the highest peak's rise (a weaker one is a sidelobe or nothing).

    Returns:
        Per item, the directions found in degrees, ascending (between 1 and ``n`` of them).
    """
    found = []
    for row in spectrum.double().cpu():
        floor = float(row.min())
        rise = row - floor
        peak = torch.ones_like(row, dtype=torch.bool)
        peak[1:] &= row[1:] >= row[:-1]
        peak[:-1] &= row[:-1] >= row[1:]
        chosen: list[float] = []
        for d in torch.argsort(rise, descending=True).tolist():
            if len(chosen) == n or rise[d] < min_height * float(rise.max()):
                break
            angle = float(angles_deg[d])
            if peak[d] and all(abs(angle - c) >= min_separation for c in chosen):
                chosen.append(angle)
        found.append(sorted(chosen) or [float(angles_deg[int(row.argmax())])])
    return found


#: Direction grid that bins vote on when the sources' directions are found, degrees.
VOTE_GRID_DEG = torch.arange(-90.0, 90.5, 1.0, dtype=torch.float64)
#: A bin votes when one plane wave explains this share of its energy (one source dominates).
VOTE_MIN_MATCH = 0.95
#: Votes are smoothed over this many grid steps (degrees) before their peaks are taken.
VOTE_SMOOTH = 5
#: Frames matched against every direction at a time (bounds the memory on long signals).
VOTE_BLOCK = 64
#: Directions found are this many degrees apart at least.
MIN_SEPARATION_DEG = 10.0
#: A direction is found when its votes rise this far above the floor, relative to the highest.
MIN_PEAK_HEIGHT = 0.2


class ArraySTFT(STFT):
    """The STFT of every mic of a linear array, with the array's geometry.

    ``(B, M, T) -> (B, M, F, N)`` complex, exactly :class:`~demux.transforms.stft.STFT`
    per mic (same inverse, same grid: masks act on every mic alike and stems stay at
    the sensors). The geometry serves the direction priors: :meth:`match` and
    :meth:`find_directions` (the convention of :func:`plane_wave_steering`).

    Args:
        sample_rate: Hz.
        n_elements: ``M`` mics (the input channels), at least 2.
        spacing_m: distance between neighbouring mics, metres; the array is centred on
            the origin (:func:`ula_positions`).
        speed_m_s: propagation speed (343 m/s: sound in air at 20 C).
        n_fft, hop, window: the STFT (see :class:`~demux.transforms.stft.STFT`).

    Directions are found from the bins between ``c / (4 L)`` (``L`` the aperture: below
    it the phase differences across the array are a fraction of a radian) and
    ``c / (2 d)`` (above it, spatial aliasing).
    """

    def __init__(self, sample_rate: float, n_elements: int, spacing_m: float, speed_m_s: float = 343.0,
                 n_fft: int = 1024, hop: int | None = None, window: WindowSpec = "hann"):
        super().__init__(sample_rate, n_fft=n_fft, hop=hop, window=window)
        self.n_elements = check_int("n_elements", n_elements, 2)
        self.spacing_m = check_positive("spacing_m", spacing_m)
        self.speed_m_s = check_positive("speed_m_s", speed_m_s)
        self.register_buffer("mic_x_m", ula_positions(n_elements=self.n_elements, spacing_m=self.spacing_m))
        aperture = (self.n_elements - 1) * self.spacing_m
        self.vote_band_hz = (self.speed_m_s / (4 * aperture), min(self.speed_m_s / (2 * self.spacing_m), sample_rate / 2))

    def forward(self, x: Tensor) -> Tensor:
        _, M, _ = check_signal(x)
        if M != self.n_elements:
            raise ParameterError(f"expected {self.n_elements} channels (the array's mics), got {M}: "
                                 "this transform needs the array's multichannel recording")
        return super().forward(x)

    def freqs_hz(self) -> Tensor:
        """``(F,)`` bin frequencies, Hz."""
        return torch.arange(self.n_fft // 2 + 1, dtype=torch.float64) * (self.sample_rate / self.n_fft)

    def steering(self, angles_deg: Tensor, freqs_hz: Tensor | None = None) -> Tensor:
        """``(D, M, F)`` steering vectors of the directions ``angles_deg`` ``(D,)`` (every bin by default)."""
        freqs = self.freqs_hz() if freqs_hz is None else freqs_hz
        return plane_wave_steering(mic_x_m=self.mic_x_m.cpu(), freqs_hz=freqs, angles_deg=angles_deg,
                                   speed_m_s=self.speed_m_s).to(self.mic_x_m.device)

    def match(self, coeffs: Tensor, angles_deg: Tensor) -> Tensor:
        """:func:`plane_wave_match` of ``coeffs`` ``(B, M, F, N)`` with directions ``(D,)``: ``(B, D, F, N)``."""
        return plane_wave_match(coeffs, self.steering(angles_deg))

    def find_directions(self, coeffs: Tensor, *, n: int) -> list[list[float]]:
        """Up to ``n`` source directions per item, degrees ascending, from ``coeffs`` ``(B, M, F, N)``.

        Loud bins (above the item's median power) in the vote band vote for their best
        direction (:func:`direction_votes`); the peaks of the votes, smoothed over
        ``VOTE_SMOOTH`` degrees, are the directions (:func:`find_directions`).
        """
        freqs = self.freqs_hz()
        lo, hi = self.vote_band_hz
        use = ((freqs >= lo) & (freqs <= hi)).to(coeffs.device)
        if not bool(use.any()):
            raise ParameterError(f"no STFT bin between {lo:.0f} and {hi:.0f} Hz to find directions from; "
                                 "use a larger n_fft")
        band = coeffs[:, :, use]
        steering = self.steering(VOTE_GRID_DEG, freqs[use.cpu()])
        level = power(band).sum(1)  # (B, F', N)
        loud = level > level.flatten(1).median(dim=1).values[:, None, None]
        votes = sum(  # frames in blocks: the match over every direction is D times the coefficients
            direction_votes(plane_wave_match(band[..., i : i + VOTE_BLOCK], steering), loud[..., i : i + VOTE_BLOCK],
                            min_match=VOTE_MIN_MATCH)
            for i in range(0, band.shape[-1], VOTE_BLOCK)
        )
        return find_directions(moving_average(votes, width=VOTE_SMOOTH), VOTE_GRID_DEG, n=n,
                               min_separation=MIN_SEPARATION_DEG, min_height=MIN_PEAK_HEIGHT)
