"""Mask combiners: from per-source log-variances to keep probabilities.

``softmax`` gives the posterior-mean Wiener gains of the local Gaussian model
(DESIGN.md step 3): masks sum to one, so stems sum to the mixture exactly.
``sigmoid`` lets targets overlap: each target's gain is taken against the
``residual`` source alone, the gains are scaled down wherever they sum past
``1 + eps``, and the residual takes what is left, so stems still sum to the mixture.
"""

from __future__ import annotations

import torch
from torch import Tensor


def softmax_masks(logits: Tensor) -> Tensor:
    """Competitive masks.

    Args:
        logits: ``(batch, source, ...)`` log-variances ``z``.

    Returns:
        ``(batch, source, ...)`` masks in [0, 1] summing to one over sources.
    """
    return torch.softmax(logits, dim=1)


def sigmoid_masks(logits: Tensor, *, residual: int, eps: float = 0.05) -> Tensor:
    """Overlapping target masks with a residual; the cross-source constraint ``sum keep <= 1 + eps``.

    Args:
        logits: ``(batch, source, ...)`` log-variances.
        residual: index of the residual source along dim 1.
        eps: slack of the cross-source constraint before rescaling.

    Returns:
        ``(batch, source, ...)`` masks; the residual's is ``max(0, 1 - sum of targets)``,
        so where targets sum past 1 (by at most eps) the stems over-explain slightly.
    """
    S = logits.shape[1]
    targets = [s for s in range(S) if s != residual]
    gains = torch.sigmoid(logits[:, targets] - logits[:, residual : residual + 1])
    total = gains.sum(dim=1, keepdim=True)
    gains = gains * torch.clamp((1.0 + eps) / total, max=1.0)
    rest = torch.clamp(1.0 - gains.sum(dim=1, keepdim=True), min=0.0)
    parts = list(gains.unbind(dim=1))
    parts.insert(residual, rest.squeeze(1))
    return torch.stack(parts, dim=1)


def apply_locks(masks: Tensor, locks: Tensor) -> Tensor:
    """Hard locks: where source s holds a lock, it keeps the coefficient whole.

    Args:
        masks: ``(batch, source, ...)``.
        locks: ``(source, ...)`` boolean (broadcast over batch); at most one source
            may lock a coefficient (the recipe checks this).

    Returns:
        ``(batch, source, ...)`` with locked coefficients one-hot.
    """
    locked = locks.any(dim=0, keepdim=True)
    return torch.where(locked.unsqueeze(0), locks.unsqueeze(0).to(masks.dtype), masks)
