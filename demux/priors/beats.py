"""Per-beat time prior for ECG: R peaks found on a coarse stem, a membership around each beat.

The QRS complex is the ECG's only content at the fine wavelet levels (about 11-90 Hz at
360 Hz); between beats those levels hold muscle noise. So once the beats are found
(Pan-Tompkins style, on a 5-45 Hz reconstruction where the QRS dominates even at 0 dB
input SNR), the ECG source's prior log-odds at fine levels rise near each beat and fall
between beats.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import signal as sps
from torch import Tensor

from demux.errors import ParameterError


def find_beats(x: Tensor, *, sample_rate: float, refractory_s: float = 0.25, window_s: float = 0.08,
               height: float = 0.3) -> list[np.ndarray]:
    """R-peak times of each item, from a signal where the QRS complexes dominate.

    The envelope is the squared signal summed over channels and averaged over
    ``window_s`` (Pan-Tompkins' moving-window integration); its peaks at least
    ``refractory_s`` apart and above ``height`` times its 99th percentile are beats,
    each placed at the largest ``|x|`` within half a window of the envelope peak.

    Args:
        x: ``(batch, channel, time)`` band-limited signal (e.g. 5-45 Hz), any units.
        sample_rate: Hz.
        refractory_s: shortest RR interval, seconds.
        window_s: integration window, seconds.
        height: detection threshold, a fraction of the envelope's 99th percentile.

    Returns:
        Per item, a sorted ``(n_beats,)`` float64 array of beat times, seconds.
    """
    if refractory_s <= 0 or window_s <= 0 or not 0 < height < 1:
        raise ParameterError(
            f"refractory_s={refractory_s}, window_s={window_s}, height={height}: expected positive "
            "durations and a height in (0, 1)"
        )
    power = x.detach().double().pow(2).sum(1).cpu().numpy()  # (B, T)
    width = max(1, round(window_s * sample_rate))
    half = width // 2
    out = []
    for row in power:
        envelope = np.convolve(row, np.ones(width) / width, mode="same")
        peaks, _ = sps.find_peaks(envelope, distance=max(1, round(refractory_s * sample_rate)),
                                  height=height * np.percentile(envelope, 99))
        starts = np.maximum(peaks - half, 0)
        at = [lo + int(np.argmax(row[lo : p + half + 1])) for lo, p in zip(starts, peaks)]
        out.append(np.asarray(at, dtype=np.float64) / sample_rate)
    return out


def beat_summary(beats_s: np.ndarray, *, max_times: int = 500) -> dict:
    """What :func:`find_beats` found in one item, as JSON-ready numbers (for ``demux.json``).

    Args:
        beats_s: ``(n_beats,)`` sorted beat times, seconds.
        max_times: most beat times listed (a 30-minute record holds about 2000).

    Returns:
        ``n_beats``; ``heart_rate_bpm``, the mean rate ``60 / mean RR interval`` (``None``
        with fewer than two beats); ``beat_times_s``, the first ``max_times`` times rounded
        to the millisecond.
    """
    n = len(beats_s)
    rate = 60.0 * (n - 1) / float(beats_s[-1] - beats_s[0]) if n > 1 and beats_s[-1] > beats_s[0] else None
    return {
        "n_beats": n,
        "heart_rate_bpm": None if rate is None else round(rate, 1),
        "beat_times_s": [round(float(t), 3) for t in beats_s[:max_times]],
    }


def beat_membership(times_s: Tensor, beats_s: np.ndarray, *, half_width_s: Tensor | float) -> Tensor:
    """Membership of each coefficient time in the nearest beat's window, in [0, 1].

    1 within ``half_width_s`` of a beat, then a raised-cosine fall to 0 over another
    ``half_width_s``; 0 with no beats.

    Args:
        times_s: ``(K,)`` coefficient centre times, seconds.
        beats_s: ``(n_beats,)`` beat times, seconds.
        half_width_s: half-width of the flat top, seconds: a number or ``(K,)`` (wider at
            coarse levels, whose coefficients span more time).

    Returns:
        ``(K,)`` membership, dtype of ``times_s``.
    """
    if len(beats_s) == 0:
        return torch.zeros_like(times_s)
    beats = torch.as_tensor(np.sort(beats_s), dtype=times_s.dtype, device=times_s.device)
    after = torch.searchsorted(beats, times_s).clamp(max=beats.numel() - 1)  # the first beat at or after t
    before = (after - 1).clamp(min=0)
    distance = torch.minimum((times_s - beats[before]).abs(), (times_s - beats[after]).abs())
    w = torch.as_tensor(half_width_s, dtype=times_s.dtype, device=times_s.device)
    ramp = ((distance - w) / w).clamp(0, 1)
    return 0.5 * (1 + torch.cos(torch.pi * ramp))


def beat_log_odds(times_s: Tensor, level: Tensor, beats: list[np.ndarray], *, sample_rate: float, levels: tuple[int, ...],
                  qrs_s: float, filter_len: int, weight: float) -> Tensor:
    """``(B, K)`` log-odds ``weight * (2 m - 1)`` on ``levels`` (0 elsewhere), m the beat membership.

    A level-``j`` coefficient spans about ``filter_len * 2**j`` samples, so its window's
    flat top is ``qrs_s`` plus half that span: a coefficient counts as "at a beat" when
    its support reaches the QRS complex.

    Args:
        times_s: ``(K,)`` coefficient centre times, seconds.
        level: ``(K,)`` wavelet level of each coefficient (1 = finest detail).
        beats: per item, beat times in seconds (:func:`find_beats`).
        sample_rate: Hz.
        levels: the levels the prior acts on.
        qrs_s: half-width of the QRS complex, seconds.
        filter_len: the wavelet's filter length, taps.
        weight: log-odds at a beat (and minus it between beats).
    """
    half = qrs_s + 0.5 * filter_len * 2.0 ** level.to(times_s.dtype) / sample_rate
    on = torch.isin(level, torch.tensor(levels, dtype=level.dtype, device=level.device)).to(times_s.dtype)
    rows = [weight * (2 * beat_membership(times_s, b, half_width_s=half) - 1) * on for b in beats]
    return torch.stack(rows)



def beat_template_train(x: Tensor, beats: list[np.ndarray], *, sample_rate: float, pre: float = 0.4,
                        post: float = 0.6) -> Tensor:
    """The ECG's beat-locked part: each item's mean beat, placed back at every beat.

    The mean is over windows from ``pre`` to ``post`` median RR intervals around each beat
    (together they tile the record), so whatever is not locked to the beats, baseline
    wander and muscle noise, falls as ``1/sqrt(n_beats)`` in amplitude; with ``n`` beats
    ``x`` itself adds ``1/n`` of its own power to the template.

    Args:
        x: ``(batch, channel, time)`` signal, any units (the mixture).
        beats: per item, beat times in seconds (:func:`find_beats`).
        sample_rate: Hz.
        pre, post: the window before and after each beat, in median RR intervals.

    Returns:
        ``(batch, channel, time)`` template train, units of ``x``; zeros for an item with
        fewer than two beats (no RR interval).
    """
    if pre < 0 or post <= 0 or pre + post > 2:
        raise ParameterError(f"pre={pre}, post={post}: expected pre >= 0, post > 0, pre + post <= 2 RR intervals")
    T = x.shape[-1]
    out = torch.zeros_like(x)
    for b, times in enumerate(beats):
        if len(times) < 2:
            continue
        at = np.round(np.sort(times) * sample_rate).astype(np.int64)
        rr = float(np.median(np.diff(at)))
        lo, hi = -round(pre * rr), max(1, round(post * rr))
        whole = [a for a in at if a + lo >= 0 and a + hi <= T]
        if not whole:
            continue
        template = torch.stack([x[b, :, a + lo : a + hi] for a in whole]).mean(0)  # (C, hi - lo)
        for a in at:
            start, stop = max(a + lo, 0), min(a + hi, T)
            out[b, :, start:stop] += template[:, start - (a + lo) : stop - (a + lo)]
    return out


def template_log_odds(template_power: Tensor, residual_power: Tensor, level: Tensor, *, levels: tuple[int, ...],
                      floor: float) -> Tensor:
    """``(B, K)`` log-odds ``log(P_t + f) - log(P_r + f)`` on ``levels``, 0 elsewhere.

    ``P_t`` is the power of the template train's coefficient (the ECG's beat-locked part)
    and ``P_r`` that of the mixture's minus it (what is left for a source sharing the
    level, baseline wander): a per-coefficient signal-to-rest ratio, so a burst of wander
    goes to the other source even where the ECG's own energy prior would take it.
    ``f = floor * mean_j P_t``, ``mean_j`` over the coefficient's level, keeps the ratio
    finite where both are small.

    Args:
        template_power: ``(B, K)`` ``P_t`` (:func:`beat_template_train`, transformed).
        residual_power: ``(B, K)`` ``P_r``, same units.
        level: ``(K,)`` wavelet level of each coefficient.
        levels: the levels the log-odds act on.
        floor: > 0, a share of the level's mean template power.
    """
    if floor <= 0:
        raise ParameterError(f"floor={floor}: expected a share > 0")
    out = torch.zeros_like(template_power)
    for j in levels:
        on = level == j
        if not on.any():
            continue
        f = floor * template_power[:, on].mean(1, keepdim=True) + 1e-30
        out[:, on] = torch.log(template_power[:, on] + f) - torch.log(residual_power[:, on] + f)
    return out
