"""Harmonic comb prior with a tracked fundamental.

f0 is tracked per frame by harmonic summation (Hermes 1988): the salience of a
candidate f0 is the weighted sum of the log-power at its first harmonics; the
candidate with the highest salience wins, and frames whose best salience is low
are called unvoiced. The comb then gives log-odds ``+strength`` on the teeth
``h * f0(t)`` and ``-strength`` between them and in unvoiced frames.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
        ``f0`` ``(batch, frame)`` in Hz and ``voicing`` ``(batch, frame)`` in [0, 1]
        (the salience of the winner relative to the frame's median salience, squashed).
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
    at = logp[:, lo, :] * (1 - frac)[None, :, :, None] + logp[:, lo + 1, :] * frac[None, :, :, None]
    salience = (at * weights[None, :, :, None]).sum(dim=2) / weights.sum(dim=1)[None, :, None]  # (B, cand, N)
    best, index = salience.max(dim=1)
    f0 = cand[index]
    reference = salience.median(dim=1).values
    voicing = torch.sigmoid(4.0 * (best / (reference + 1e-6) - 1.5))
    return f0, voicing


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
        voicing: ``(batch, frame)`` in [0, 1]; 0 turns the frame's comb into ``-strength``.
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
    return strength * (2.0 * tooth * voicing[:, None, :] - 1.0)
