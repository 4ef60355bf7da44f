"""Multichannel Wiener filter: masks -> stems that use the mics' spatial covariances.

A mask acts on every mic alike, so a bin two talkers share goes to both with the
same spatial image. The local Gaussian model (Duong, Vincent & Gribonval 2010; the
``norbert`` EM of Open-Unmix) gives each source ``s`` a variance ``v_s(f, n)`` and a
full-rank spatial covariance ``R_s(f)`` (``M x M``, trace ``M``); the mixture bin
``x(f, n)`` is then Gaussian with covariance ``C = sum_s v_s R_s`` and each source's
posterior mean is::

    y_s = v_s R_s C^-1 x

The filters ``v_s R_s C^-1`` sum to the identity, so the stems sum to the mixture
(one solve per bin serves every source). Where the ``R_s`` are alike (short aperture,
diffuse sound) this is the mask again; where they differ it steers nulls at the
other sources, which a mask cannot.

Start: ``v_s = mask_s * mean_m |x_m|^2`` and ``R_s`` the mask-weighted covariance of
the mixture. Each EM iteration re-estimates both from the stems (``norbert``'s
update): ``v_s = mean_m |y_s|^2``, ``R_s = sum_n y_s y_s^H / sum_n v_s``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from demux.errors import ParameterError
from demux.transforms.base import power

#: Variances are floored at this share of the bin's mixture power (plus this share of that
#: of the item's mean, for silent bins), so that every bin's ``C`` is invertible while a
#: source whose mask is 0 takes ~nothing from any bin.
VARIANCE_FLOOR = 1e-10
#: Frames filtered at a time: bounds the per-bin ``M x M`` systems held at once.
FRAME_BLOCK = 256


def spatial_covariance(weights: Tensor, x: Tensor, *, load: float) -> Tensor:
    """Weighted spatial covariance per source and frequency, trace ``M``, diagonally loaded.

    Args:
        weights: ``(B, S, F, N)`` non-negative weight of each bin for each source.
        x: ``(B, S, M, F, N)`` or ``(B, M, F, N)`` (shared by every source) complex coefficients.
        load: added to the diagonal after normalising the trace to ``M`` (relative to the
            mean diagonal, 1): keeps ``R_s`` full rank.

    Returns:
        ``(B, S, F, M, M)`` Hermitian ``R_s(f) = M R / tr(R) + load I`` with
        ``R = sum_n w x x^H / sum_n w`` (``load I`` alone for a source without weight).
    """
    if x.dim() == 4:
        x = x.unsqueeze(1)
    M = x.shape[2]
    outer = torch.einsum("bsfn,bsmfn,bskfn->bsfmk", weights.to(x.dtype), x, x.conj())
    trace = torch.diagonal(outer, dim1=-2, dim2=-1).real.sum(-1)  # (B, S, F); the weights' sum cancels
    tiny = torch.finfo(trace.dtype).tiny
    eye = torch.eye(M, dtype=x.dtype, device=x.device)
    # divide before scaling: M / tiny overflows, and |outer| <= trace keeps the quotient finite
    return outer / trace.clamp_min(tiny)[..., None, None] * M + load * eye


def wiener_filter(x: Tensor, variances: Tensor, covariances: Tensor) -> Tensor:
    """Posterior means ``y_s = v_s R_s C^-1 x`` with ``C = sum_s v_s R_s``.

    Args:
        x: ``(B, M, F, N)`` complex mixture coefficients.
        variances: ``(B, S, F, N)`` positive source variances (power per mic).
        covariances: ``(B, S, F, M, M)`` positive definite spatial covariances.

    Returns:
        ``(B, S, M, F, N)`` source images, summing over ``S`` to ``x``.

    Frames are filtered :data:`FRAME_BLOCK` at a time.
    """
    v = variances.to(x.dtype)
    blocks = []
    for i in range(0, x.shape[-1], FRAME_BLOCK):
        vb = v[..., i : i + FRAME_BLOCK]
        C = torch.einsum("bsfn,bsfmk->bfnmk", vb, covariances)
        z = torch.linalg.solve(C, x[..., i : i + FRAME_BLOCK].permute(0, 2, 3, 1).unsqueeze(-1))[..., 0]  # C^-1 x
        # a batched matmul per frequency: einsum's three-operand path was 6x slower on CPU
        Rz = covariances @ z.transpose(-1, -2).unsqueeze(1)  # (B, S, F, M, n)
        blocks.append(Rz.transpose(2, 3) * vb.unsqueeze(2))
    return torch.cat(blocks, dim=-1)


def multichannel_wiener(x: Tensor, masks: Tensor, *, iterations: int = 0, load: float = 1e-3) -> Tensor:
    """Stems of masks ``(B, S, F, N)`` on a mic array's coefficients ``x`` ``(B, M, F, N)`` by Wiener filtering.

    Args:
        x: ``(B, M, F, N)`` complex STFTs of the ``M`` mics.
        masks: ``(B, S, F, N)`` real masks in [0, 1], one per source (shared by the mics).
        iterations: EM re-estimations of the variances and covariances from the stems.
        load: diagonal loading of each ``R_s`` (trace ``M``): larger is closer to masking
            (with ``R_s = I`` for all ``s`` the filter is the mask when the masks sum to 1).

    Returns:
        ``(B, S, M, F, N)`` complex stems, dtype of ``x``, summing over ``S`` to ``x``.

    Computed in double precision: the per-bin ``M x M`` systems are as ill-conditioned
    as the sources' covariances are close to rank one.
    """
    if iterations < 0 or not load > 0:
        raise ParameterError(f"iterations={iterations} must be >= 0 and load={load} > 0")
    xd = x.to(torch.complex128)
    md = masks.to(torch.float64)
    mix_power = power(xd).mean(1)  # (B, F, N)
    silence = VARIANCE_FLOOR * mix_power.mean((1, 2), keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    floor = (VARIANCE_FLOOR * (mix_power + silence))[:, None]  # (B, 1, F, N)
    v = md * mix_power[:, None]
    R = spatial_covariance(md, xd, load=load)
    y = wiener_filter(xd, v.clamp_min(floor), R)
    for _ in range(iterations):
        v = power(y).mean(2)  # (B, S, F, N)
        R = spatial_covariance(torch.ones_like(v), y, load=load)
        y = wiener_filter(xd, v.clamp_min(floor), R)
    return y.to(x.dtype)
