"""Harmonic comb prior with a tracked fundamental.

f0 is tracked per frame by harmonic summation (Hermes 1988): the salience of a
candidate f0 is the weighted sum of the log-power at its first harmonics; the
candidate with the highest salience wins. A frame is voiced when the same sum on
the whitened log-power (log-power minus its local mean over frequency) beats, at
some candidate, what noise of the frame's own spectrum would score: a z-score
against the frame's spread, thresholded (a harmonic-to-noise test). The comb gives
log-odds ``+strength`` on the teeth ``h * f0(t)`` and ``-strength`` between them,
scaled by the voicing: unvoiced frames get no comb (log-odds 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


# Voicing score (a z-score, see track_f0) at which a frame is called voiced, and the slope of
# the squashing there. Under noise the score has median 2.0-2.7 and 99.9th percentile 3.3-4.6
# (30 s of white, pink and brown noise, raw or smoothed over 9 frames; f0 70-400/500 Hz,
# 10-12 harmonics): at most 0.3% of noise frames are called voiced.
VOICING_THRESHOLD = 4.5
VOICING_SLOPE = 2.0


def whitened_log_power(power: Tensor, *, step: float, width_hz: float) -> Tensor:
    """Log-power minus its running mean over ``width_hz`` of frequency.

    Args:
        power: ``(batch, freq, frame)`` power spectrogram.
        step: bin spacing, Hz.
        width_hz: width of the running mean, Hz (wide against the harmonic spacing, so the
            teeth stand out of it).

    Returns:
        ``(batch, freq, frame)`` log-power re the local spectral envelope, nats.
    """
    B, F, N = power.shape
    # digital silence stays finite (and flat, so it scores no harmonics)
    floor = (1e-10 * power.mean(dim=(1, 2), keepdim=True)).clamp_min(torch.finfo(power.dtype).tiny)
    logp = torch.log(power + floor)
    half = max(1, round(width_hz / 2 / step))
    rows = logp.transpose(1, 2).reshape(B * N, 1, F)
    envelope = torch.nn.functional.avg_pool1d(rows, 2 * half + 1, stride=1, padding=half, count_include_pad=False)
    return logp - envelope.reshape(B, N, F).transpose(1, 2)


def track_f0(
    power: Tensor,
    freqs_hz: Tensor,
    *,
    f0_min: float,
    f0_max: float,
    n_harmonics: int = 10,
    bins_per_octave: int = 48,
) -> tuple[Tensor, Tensor]:
    """Per-frame f0 by harmonic summation on a log-frequency candidate grid.

    Args:
        power: ``(batch, freq, frame)`` power spectrogram (any positive scale).
        freqs_hz: ``(freq,)`` increasing bin frequencies, Hz.
        f0_min: lowest candidate, Hz.
        f0_max: highest candidate, Hz.
        n_harmonics: harmonics summed per candidate.
        bins_per_octave: resolution of the candidate grid.

    Returns:
        ``f0`` ``(batch, frame)`` in Hz and ``voicing`` ``(batch, frame)`` in [0, 1]: the
        harmonic-to-noise z-score squashed, 1/2 at ``VOICING_THRESHOLD`` (see there for
        the false-alarm rate on noise).
    """
    B, F, N = power.shape
    n_cand = max(2, int(math.ceil(bins_per_octave * math.log2(f0_max / f0_min))) + 1)
    cand = f0_min * 2.0 ** (torch.arange(n_cand, dtype=power.dtype, device=power.device) / bins_per_octave)
    harmonics = torch.arange(1, n_harmonics + 1, dtype=power.dtype, device=power.device)
    targets = cand[:, None] * harmonics[None, :]  # (n_cand, H) Hz
    # fractional bin index of each target, linear interpolation between neighbours
    step = freqs_hz[1] - freqs_hz[0]
    pos = ((targets - freqs_hz[0]) / step).clamp(0, F - 1)
    lo = pos.floor().long().clamp(max=F - 2)
    frac = pos - lo
    valid = (targets <= freqs_hz[-1]).to(power.dtype)
    weights = valid * 0.9 ** (harmonics - 1)  # decaying weights favour the true f0 over its sub-octave
    logp = torch.log1p(power / (power.mean(dim=(1, 2), keepdim=True) + 1e-12))  # (B, F, N)
    best, index = _salience(logp, lo, frac, weights).max(dim=1)
    f0 = cand[index]
    # Voicing: is there a harmonic series at any candidate, beyond what noise of this frame's
    # spectrum would score? On the whitened log-power a candidate's salience under noise has
    # mean 0 and std at most sigma * ||w||_2 / ||w||_1 (sigma: the spread of z over the bins
    # the harmonics reach; interpolation between bins only averages it down).
    z = whitened_log_power(power, step=float(step), width_hz=2.0 * f0_max)
    reach = z[:, freqs_hz <= targets[valid.bool()].max(), :]
    sigma = 1.4826 * (reach - reach.median(dim=1, keepdim=True).values).abs().median(dim=1).values  # (B, N)
    spread = weights.square().sum(dim=1).sqrt() / weights.sum(dim=1)  # (cand,)
    score = (_salience(z, lo, frac, weights) / spread[None, :, None]).amax(dim=1) / sigma.clamp_min(1e-6)
    voicing = torch.sigmoid(VOICING_SLOPE * (score - VOICING_THRESHOLD))
    return f0, voicing


def _salience(logp: Tensor, lo: Tensor, frac: Tensor, weights: Tensor) -> Tensor:
    """``(B, cand, N)`` weighted mean of ``logp`` ``(B, F, N)`` at the targets' fractional bins ``lo + frac``."""
    at = logp[:, lo, :] * (1 - frac)[None, :, :, None] + logp[:, lo + 1, :] * frac[None, :, :, None]
    return (at * weights[None, :, :, None]).sum(dim=2) / weights.sum(dim=1)[None, :, None]


def f0_summary(f0: Tensor, voicing: Tensor) -> list[dict]:
    """What :func:`track_f0` found, per item, as JSON-ready numbers (for ``demux.json``).

    Args:
        f0: ``(batch, frame)`` Hz.
        voicing: ``(batch, frame)`` in [0, 1].

    Returns:
        Per item: ``voiced_fraction``, the share of frames with voicing above 1/2, and
        ``f0_median_hz``, the median f0 of those frames (``None`` when none is voiced).
    """
    out = []
    for track, voiced in zip(f0, voicing > 0.5):
        median = round(float(track[voiced].median()), 1) if bool(voiced.any()) else None
        out.append({"f0_median_hz": median, "voiced_fraction": round(float(voiced.double().mean()), 3)})
    return out


def comb_log_odds(
    freqs_hz: Tensor,
    f0: Tensor,
    voicing: Tensor,
    *,
    n_harmonics: int,
    width: float,
    strength: float,
) -> Tensor:
    """Log-odds of a harmonic comb.

    Args:
        freqs_hz: ``(freq,)`` bin frequencies, Hz.
        f0: ``(batch, frame)`` fundamental per frame, Hz.
        voicing: ``(batch, frame)`` in [0, 1]; scales the frame's comb (0: no comb, log-odds 0).
        n_harmonics: teeth per frame.
        width: half-width of each tooth as a fraction of f0.
        strength: log-odds on a tooth (and minus it between teeth).

    Returns:
        ``(batch, freq, frame)`` log-odds.
    """
    harmonics = torch.arange(1, n_harmonics + 1, dtype=f0.dtype, device=f0.device)
    centres = f0[:, None, None, :] * harmonics[None, None, :, None]  # (B, 1, H, N)
    sigma = (width * f0)[:, None, None, :]
    distance = (freqs_hz[None, :, None, None] - centres) / sigma  # (B, F, H, N)
    tooth = torch.exp(-0.5 * distance.square()).amax(dim=2)  # (B, F, N)
    return strength * (2.0 * tooth - 1.0) * voicing[:, None, :]
