"""Voice activity as a per-frame prior: the likelihood-ratio detector of Sohn et al. (1999).

Per bin, under Gaussian noise of variance ``lambda`` and speech of a-priori SNR ``xi``,
the log likelihood ratio of "speech + noise" to "noise" given the a-posteriori SNR
``gamma = |c|^2 / lambda`` is ``gamma xi / (1 + xi) - log(1 + xi)``. With the maximum-
likelihood ``xi = max(gamma - 1, 0)`` this is ``gamma - 1 - log(gamma)`` where
``gamma > 1`` and 0 elsewhere (its mean over pure noise is ``1/e - E1(1) = 0.149``).
A frame's log-odds of speech are the sum over the band's bins of the ratio minus a
per-bin ``threshold`` (Sohn's geometric-mean test, made soft); a hangover keeps a frame
active when an active frame lies within ``hangover`` frames of it (both ways: offline).
The presence probability ``p(t)`` becomes the bias ``weight * (p(t) - 1)``: the source
is pushed down in the pauses and left as it was where speech is present. (The symmetric
``weight / 2 * (2 p(t) - 1)`` differs by a constant only, which ``level`` could absorb,
but a fit of a few dozen steps starts from it: in speech-enhance it measured a mean
SI-SDRi of +1.38 dB against +2.25 dB for this form, both with ``weight`` 1.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def bin_log_likelihood_ratio(power: Tensor, noise_log_variance: Tensor) -> Tensor:
    """Sohn's per-bin log likelihood ratio with the maximum-likelihood a-priori SNR.

    Args:
        power: ``(..., F, N)`` observed power ``|c|^2``.
        noise_log_variance: broadcastable to ``power``: natural log of the noise variance,
            in the units of ``power``.

    Returns:
        ``(..., F, N)`` ``gamma - 1 - log(gamma)`` where ``gamma > 1``, else 0 (nats).
    """
    gamma = (power * torch.exp(-noise_log_variance)).clamp_min(1.0)
    return gamma - 1.0 - torch.log(gamma)


def speech_presence(llr: Tensor, in_band: Tensor, *, threshold: float, hangover: int) -> Tensor:
    """Per-frame speech presence probability from per-bin log likelihood ratios.

    Args:
        llr: ``(B, F, N)`` per-bin log likelihood ratios (:func:`bin_log_likelihood_ratio`).
        in_band: ``(F,)`` bool, the bins that vote.
        threshold: per-bin log-odds a bin must exceed to vote for speech (nats).
        hangover: frames; a frame's probability is the largest within this many frames of it.

    Returns:
        ``(B, N)`` probabilities in [0, 1].
    """
    log_odds = (llr[:, in_band] - threshold).sum(1)  # (B, N)
    presence = torch.sigmoid(log_odds)
    if hangover > 0:
        presence = torch.nn.functional.max_pool1d(presence[:, None], 2 * hangover + 1, stride=1, padding=hangover)[:, 0]
    return presence


def activity_bias(presence: Tensor, weight: float) -> Tensor:
    """``(B, N)`` per-frame log-odds bias ``gamma(t) = weight * (p(t) - 1)`` in ``[-weight, 0]``
    from presence probabilities ``(B, N)``."""
    return weight * (presence - 1.0)
