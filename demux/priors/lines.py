"""Spectral-line prior: steady tones (moving targets in slow time) found by CLEAN.

Högbom's CLEAN, i.e. matching pursuit on complex exponentials. Each round:

1. the residual's Hann-tapered, zero-padded periodogram is searched over the allowed
   frequencies for cells that pass a cell-averaging CFAR test (Finn & Johnson 1968):
   above ``threshold`` times the larger of the white floor (the periodogram's median over
   ``ln 2``: a complex Gaussian bin's power is exponential) and the mean of the reference
   cells each side, guard cells left out, so the tail of a strong band (clutter) is not
   taken for a line. Cells within one Rayleigh bin (``sample_rate / T``) of a line found
   already are left out: what remains there is that line's fitting error;
2. the strongest passing cell's frequency is refined by parabolic interpolation of the
   log-periodogram;
3. the complex amplitudes of every line found so far are refitted jointly by weighted least
   squares (the taper as weights: the skirts of close lines overlap, and a strong band's
   leakage stays out of the amplitudes), and the lines are subtracted from the signal.

The lines' sum, put through the stage's transform, is each coefficient's expected line
power: for a whole-signal FFT, the Dirichlet-kernel skirts of every line, which stand
well out of the noise floor many bins away from the peak and which an energy-following
source cannot tell from a noise bin that happens to be loud.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from demux.errors import ParameterError


def find_lines(
    x: Tensor,
    *,
    sample_rate: float,
    allowed: Callable[[Tensor], Tensor],
    threshold_db: float = 13.0,
    max_lines: int = 8,
    oversample: int = 8,
    guard_bins: int = 3,
    reference_bins: int = 16,
) -> tuple[Tensor, Tensor]:
    """Frequencies and complex amplitudes of the steady tones in ``x``.

    Args:
        x: ``(batch, time)`` real or complex signal.
        sample_rate: Hz.
        allowed: maps frequencies ``(M,)`` in Hz to a boolean ``(M,)``: where lines may
            be found (a source's support). Real signals search positive frequencies only.
        threshold_db: CFAR threshold, dB above the local noise level (13 dB: a noise
            bin passes with probability ``e^-20``).
        max_lines: most lines per item.
        oversample: zero-padding factor of the search periodogram.
        guard_bins: DFT bins each side of the cell under test left out of its reference.
        reference_bins: DFT bins each side (beyond the guard) averaged as its reference.

    Returns:
        ``freqs_hz`` ``(batch, L)`` and ``amplitudes`` ``(batch, L)`` complex, ``L <=
        max_lines``; a line that was not found has amplitude 0. The tones are
        ``amplitude * exp(2j pi freq t)``, ``t = n / sample_rate`` (real signals: plus
        the conjugate, see :func:`line_signal`).

    Raises:
        ParameterError: ``oversample``, ``guard_bins`` or ``reference_bins`` out of range.
    """
    if oversample < 1 or guard_bins < 0 or reference_bins < 1:
        raise ParameterError(f"{oversample=} must be >= 1, {guard_bins=} >= 0 and {reference_bins=} >= 1")
    B, T = x.shape
    real = not x.is_complex()
    x = x.double() if real else x.to(torch.complex128)  # a line's phase drifts by 2 pi T df: keep df tiny
    M = T * oversample
    fine = torch.fft.fftfreq(M, d=1.0 / sample_rate, dtype=torch.float64, device=x.device)
    search = allowed(fine) & ((fine > 0) if real else torch.ones_like(fine, dtype=torch.bool))
    # a Hann taper for the search: the leakage of a strong band (clutter) falls as the cube
    # of the distance instead of linearly, so it cannot pass for a line far from the band
    window = _search_window(T, x.device)
    floor = _white_floor(x, window)  # (B,)
    threshold = 10.0 ** (threshold_db / 10.0)
    freqs = torch.zeros(B, 0, dtype=torch.float64, device=x.device)
    found = torch.zeros(B, 0, dtype=torch.bool, device=x.device)
    amplitudes = torch.zeros(B, 0, dtype=torch.complex128, device=x.device)
    searching = torch.ones(B, dtype=torch.bool, device=x.device)
    residual = x
    for _ in range(max_lines):
        spectrum = torch.fft.fft(residual * window, n=M, dim=-1).abs().square()  # (B, M)
        level = torch.maximum(floor[:, None], _reference_mean(spectrum, oversample, guard_bins, reference_bins))
        # a line resolved already keeps its Rayleigh cell: what is left of it there is its fitting error
        taken = ((fine[None, :, None] - freqs[:, None, :]).abs() < sample_rate / T) & found[:, None, :]
        passing = search & ~taken.any(dim=-1) & (spectrum > threshold * level)
        peak = spectrum.masked_fill(~passing, 0.0).argmax(dim=-1)  # (B,): the strongest cell that passes
        searching = searching & passing.any(dim=-1)
        if not bool(searching.any()):
            break
        f = _refine(spectrum, peak, sample_rate=sample_rate)
        freqs = torch.cat([freqs, torch.where(searching, f, 0.0)[:, None]], dim=1)
        found = torch.cat([found, searching[:, None]], dim=1)
        amplitudes = _least_squares(x, freqs, found, sample_rate=sample_rate, weights=window)
        residual = x - line_signal(freqs, amplitudes, sample_rate=sample_rate, length=T, real=real)
    return freqs, amplitudes


def line_snr_db(x: Tensor, amplitudes: Tensor) -> Tensor:
    """Each line's peak in :func:`find_lines`' search periodogram over the white noise floor, dB.

    The Hann-tapered periodogram of a tone of amplitude ``a`` peaks at ``|a|^2 (sum w)^2``;
    the floor is the periodogram's median over ``ln 2`` (noise of variance ``sigma^2`` alone:
    ``sigma^2 sum w^2``). So for a tone in white noise this is ``|a|^2 / sigma^2`` (a complex
    tone's per-sample SNR; a real tone ``2 Re(a exp(...))`` has twice that power) plus the
    taper's coherent gain, ``10 log10(T) - 1.76`` dB. CFAR passed the line at ``threshold_db``
    over the larger of this floor and the line's neighbourhood.

    Args:
        x: ``(batch, time)`` the signal the lines were found in.
        amplitudes: ``(batch, L)`` complex amplitudes (:func:`find_lines`).

    Returns:
        ``(batch, L)`` float64 dB; ``-inf`` where the amplitude is 0 (no line).
    """
    x = x.double() if not x.is_complex() else x.to(torch.complex128)
    window = _search_window(x.shape[-1], x.device)
    peak = amplitudes.abs().double().square() * window.sum().square()
    return 10.0 * torch.log10(peak / _white_floor(x, window)[:, None])


def _search_window(length: int, device) -> Tensor:
    return torch.hann_window(length, periodic=False, dtype=torch.float64, device=device)


def _white_floor(x: Tensor, window: Tensor) -> Tensor:
    """``(B,)`` the white noise's mean power per bin of the tapered periodogram of ``x`` ``(B, T)``:
    its median over ``ln 2`` (a complex Gaussian bin's power is exponential)."""
    return torch.fft.fft(x * window, dim=-1).abs().square().median(dim=-1).values / math.log(2.0)


def line_signal(freqs_hz: Tensor, amplitudes: Tensor, *, sample_rate: float, length: int, real: bool) -> Tensor:
    """The sum of tones ``(batch, time)`` (complex; real when ``real``: each tone plus its conjugate).

    Args:
        freqs_hz: ``(batch, L)`` Hz.
        amplitudes: ``(batch, L)`` complex.
        sample_rate: Hz.
        length: samples.
        real: the signal is real (a tone at ``f`` is ``2 Re(a exp(2j pi f t))``).
    """
    tones = _tones(freqs_hz, sample_rate, length)  # (B, L, T)
    out = (amplitudes[:, :, None] * tones).sum(dim=1)
    return 2.0 * out.real if real else out


def _tones(freqs_hz: Tensor, sample_rate: float, length: int) -> Tensor:
    t = torch.arange(length, dtype=torch.float64, device=freqs_hz.device) / sample_rate
    return torch.exp(2j * math.pi * freqs_hz.double()[:, :, None] * t)


def _least_squares(x: Tensor, freqs_hz: Tensor, active: Tensor, *, sample_rate: float, weights: Tensor) -> Tensor:
    """Joint weighted least-squares amplitudes ``(B, L)`` of the active tones (0 for inactive ones).

    The ``(T,)`` weights (the search taper) keep a strong band's leakage out of the
    amplitudes as they keep it out of the search. A real signal is fitted with each tone
    and its conjugate, whose amplitudes come out conjugate (the signal is real); the
    positive-frequency one is returned.
    """
    L, T = freqs_hz.shape[1], x.shape[-1]
    tones = _tones(freqs_hz, sample_rate, T) * active[:, :, None]
    basis = tones if x.is_complex() else torch.cat([tones, tones.conj()], dim=1)
    on = active if x.is_complex() else torch.cat([active, active], dim=1)
    gram = (basis.conj() * weights) @ basis.transpose(1, 2)  # (B, 2L, 2L)
    # inactive rows are zero: a unit diagonal there keeps the system solvable with amplitude 0
    gram = gram + torch.diag_embed((~on).to(gram.dtype))
    rhs = (basis.conj() * weights) @ x.to(torch.complex128)[:, :, None]
    return torch.linalg.solve(gram, rhs)[:, :L, 0]


def _reference_mean(spectrum: Tensor, oversample: int, guard: int, reference: int) -> Tensor:
    """``(B, M)`` mean of the reference cells each side of every cell (circular: the spectrum wraps)."""
    M = spectrum.shape[1]
    r = min((guard + reference) * oversample, (M - 1) // 2)  # short signals: the window cannot wrap onto itself
    g = min(guard * oversample, r - 1)
    padded = torch.cat([spectrum[:, -r:], spectrum, spectrum[:, :r]], dim=1)
    cumsum = torch.nn.functional.pad(padded.cumsum(dim=1), (1, 0))
    centre = torch.arange(M, device=spectrum.device) + r

    def window(half: int) -> Tensor:
        return cumsum[:, centre + half + 1] - cumsum[:, centre - half]

    return (window(r) - window(g)) / (2 * (r - g))


def _refine(spectrum: Tensor, peak: Tensor, *, sample_rate: float) -> Tensor:
    """Peak frequency ``(B,)`` in Hz: parabolic interpolation of the log-periodogram at ``peak``."""
    M = spectrum.shape[1]
    around = torch.stack([(peak - 1) % M, peak, (peak + 1) % M], dim=1)
    left, centre, right = torch.log(spectrum.gather(1, around) + 1e-30).unbind(dim=1)
    curvature = left - 2 * centre + right
    delta = torch.where(curvature < 0, 0.5 * (left - right) / curvature.clamp(max=-1e-12), 0.0).clamp(-0.5, 0.5)
    index = peak.to(spectrum.dtype) + delta
    index = torch.where(index >= M / 2, index - M, index)  # fftfreq order: the upper half is negative
    return index * sample_rate / M


def multipath_lines(freqs_hz: Tensor, amplitudes: Tensor, *, resolution_hz: float, margin_db: float = 3.0) -> Tensor:
    """Which lines of a range-gated search are multipath ghosts.

    A ghost is a return by a longer, reflected path: the same Doppler as a direct return,
    later (a further range gate) and weaker. So a line in gate ``g`` is taken for a ghost
    when a nearer gate (index ``< g``) holds a line within ``resolution_hz`` of its Doppler
    and at least ``margin_db`` stronger. (Two real targets of one Doppler, the further one
    weaker, read the same: the rule cannot tell them apart.)

    Args:
        freqs_hz: ``(batch, gates, L)`` line frequencies, Hz (:func:`find_lines` per gate).
        amplitudes: ``(batch, gates, L)`` complex amplitudes; 0 where no line was found.
        resolution_hz: Doppler tolerance, Hz (one Rayleigh bin, ``sample_rate / pulses``).
        margin_db: how much stronger, dB, the nearer line must be.

    Returns:
        ``(batch, gates, L)`` bool: the found lines that are ghosts.

    Raises:
        ParameterError: ``resolution_hz`` not positive or ``margin_db`` negative.
    """
    if not resolution_hz > 0 or not margin_db >= 0:
        raise ParameterError(f"{resolution_hz=} must be > 0 Hz and {margin_db=} >= 0 dB")
    G = freqs_hz.shape[1]
    power = amplitudes.abs().square()
    found = power > 0
    # pairs (gate g, line l) x (gate h, line m): (B, G, L, G, L)
    same = (freqs_hz[:, :, :, None, None] - freqs_hz[:, None, None, :, :]).abs() <= resolution_hz
    stronger = power[:, None, None, :, :] >= power[:, :, :, None, None] * 10.0 ** (margin_db / 10.0)
    gate = torch.arange(G, device=freqs_hz.device)
    nearer = (gate[None, :] < gate[:, None])[None, :, None, :, None]  # h < g
    return found & (same & stronger & nearer & found[:, None, None, :, :]).flatten(3).any(-1)
