"""Component priors: which independent components a source may take, from statistics of each.

Artifact components of EEG are told apart without a montage: an eye blink is a rare, large, one-signed deflection, so its component
is strongly skewed (absolute skewness 3-10 on 10 s of the EEGLAB tutorial data and on
synthetic blinks, where brain and muscle components stay below 1.6: rhythms and
noise bursts are symmetric; kurtosis, the classic criterion, does not separate them
in short excerpts, where bursty muscle and spiky brain components reach 15-22 beside
blinks' 7-130); muscle is broadband, so its component keeps a large share of its power
above 20 Hz, where brain components keep a few percent.

A rule turns one statistic into a soft membership in [0, 1] with a logistic edge
``width`` wide (in the statistic's units): ``above`` keeps components whose statistic
exceeds it, ``below`` those under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

ComponentStatistic = Literal["skewness", "band_share"]


def abs_skewness(activations: Tensor) -> Tensor:
    """Absolute skewness of each component (ICA leaves the sign of a component arbitrary).

    Args:
        activations: ``(B, K, T)`` real component time courses.

    Returns:
        ``(B, K)``: 0 for any symmetric signal (rhythms, noise, symmetric bursts); a
        train of one-signed deflections (blinks) is far above 1.
    """
    centred = activations - activations.mean(dim=-1, keepdim=True)
    variance = centred.square().mean(dim=-1)
    return (centred.pow(3).mean(dim=-1) / variance.clamp_min(1e-30).pow(1.5)).abs()


def band_share(activations: Tensor, *, sample_rate: float, lo: float, hi: float) -> Tensor:
    """Share of each component's power (DC left out) between ``lo`` and ``hi`` Hz.

    Args:
        activations: ``(B, K, T)`` real component time courses.
        sample_rate: Hz.
        lo, hi: band edges, Hz.

    Returns:
        ``(B, K)`` in [0, 1].
    """
    spectrum = torch.fft.rfft(activations.double(), dim=-1).abs().square()[..., 1:]
    freq = torch.fft.rfftfreq(activations.shape[-1], 1.0 / sample_rate, dtype=torch.float64)[1:]
    inside = ((freq >= lo) & (freq <= hi)).to(spectrum.device)
    return ((spectrum * inside).sum(-1) / spectrum.sum(-1).clamp_min(1e-30)).to(activations.dtype)


def rule_membership(statistic: Tensor, *, above: float | None = None, below: float | None = None,
                    width: float) -> Tensor:
    """Soft membership of components whose ``statistic`` is above ``above`` and below ``below``.

    Args:
        statistic: ``(B, K)``.
        above, below: thresholds in the statistic's units (``None``: no bound).
        width: the logistic edge goes from 12 % to 88 % across ``width``.

    Returns:
        ``(B, K)`` in [0, 1].
    """
    slope = 4.0 / width
    member = torch.ones_like(statistic)
    if above is not None:
        member = member * torch.sigmoid((statistic - above) * slope)
    if below is not None:
        member = member * torch.sigmoid((below - statistic) * slope)
    return member


def component_membership(activations: Tensor, rules: Sequence, *, sample_rate: float) -> Tensor:
    """Membership of each component in a source whose every rule must hold (the minimum over rules).

    Args:
        activations: ``(B, K, T)`` component time courses.
        rules: objects with ``statistic``, ``above``, ``below``, ``width`` and, for
            ``band_share``, ``band`` (``lo``/``hi`` in Hz), as :class:`demux.recipe.ComponentRule`.
        sample_rate: Hz.

    Returns:
        ``(B, K)`` in [0, 1].
    """
    member = torch.ones(activations.shape[:2], dtype=activations.dtype, device=activations.device)
    for rule in rules:
        if rule.statistic == "skewness":
            value = abs_skewness(activations)
        else:
            value = band_share(activations, sample_rate=sample_rate, lo=rule.band.lo, hi=rule.band.hi)
        member = torch.minimum(member, rule_membership(value, above=rule.above, below=rule.below, width=rule.width))
    return member


__all__ = ["ComponentStatistic", "abs_skewness", "band_share", "component_membership", "rule_membership"]
