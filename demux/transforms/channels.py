"""Transforms across channels: PCA (Karhunen-Loeve) and FastICA.

Both are linear maps fitted per batch item: ``components = unmixing @ x`` and
``x = mixing @ components``. ``forward`` does not subtract the channel means
(the fit does): keeping the map linear makes masked stems projected back with
``inverse`` sum to the mixture exactly; the means just ride along in the
components.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from demux.errors import ParameterError
from demux.transforms._common import check_count, check_int, check_signal, pooled_index
from demux.transforms.base import Grid, Transform

Fit = tuple[Tensor, Tensor, Tensor]


def _check_components(n_components: int | None, channels: int) -> int:
    if n_components is None:
        return channels
    check_int("n_components", n_components, 1)
    if n_components > channels:
        raise ParameterError(f"n_components={n_components} exceeds the {channels} channels of the signal")
    return n_components


def _principal_axes(x: Tensor, n_components: int) -> tuple[Tensor, Tensor, Tensor]:
    """Channel means ``(B, C, 1)``, top covariance eigenvalues ``(B, K)`` and eigenvectors ``(B, C, K)``."""
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    cov = centred @ centred.transpose(-1, -2) / x.shape[-1]
    values, vectors = torch.linalg.eigh(cov)
    # eigh sorts ascending; components go by decreasing variance.
    values, vectors = values.flip(-1)[..., :n_components], vectors.flip(-1)[..., :n_components]
    floor = values[..., :1].clamp(min=torch.finfo(x.dtype).tiny) * torch.finfo(x.dtype).eps
    return mean, values.clamp(min=floor), vectors


def _canonical_signs(unmixing: Tensor, mixing: Tensor) -> tuple[Tensor, Tensor]:
    """Flip each component so the largest-magnitude entry of its mixing column is positive."""
    peak = mixing.gather(-2, mixing.abs().argmax(dim=-2, keepdim=True))
    sign = torch.where(peak < 0, -1.0, 1.0).to(mixing.dtype)
    return unmixing * sign.transpose(-1, -2), mixing * sign


def pca_fit(x: Tensor, *, n_components: int | None = None) -> Fit:
    """Principal axes of the channels of each batch item.

    Args:
        x: ``(B, C, T)`` real signals.
        n_components: ``K <= C`` components kept (default ``C``), by decreasing variance.

    Returns:
        ``unmixing`` ``(B, K, C)`` (orthonormal rows), ``mixing`` ``(B, C, K)`` (its
        transpose) and channel ``mean`` ``(B, C, 1)``, all in ``x``'s dtype.
    """
    _, C, _ = check_signal(x, min_length=2)
    K = _check_components(n_components, C)
    mean, _, vectors = _principal_axes(x.double(), K)
    unmixing, mixing = _canonical_signs(vectors.transpose(-1, -2), vectors)
    return unmixing.to(x.dtype), mixing.to(x.dtype), mean.to(x.dtype)


def _symmetric_decorrelation(w: Tensor) -> Tensor:
    """``(W W^T)^(-1/2) W`` for ``(B, K, K)`` ``W``: the nearest matrix with orthonormal rows."""
    values, vectors = torch.linalg.eigh(w @ w.transpose(-1, -2))
    return vectors @ torch.diag_embed(values.rsqrt()) @ vectors.transpose(-1, -2) @ w


def fastica_fit(
    x: Tensor, *, n_components: int | None = None, max_iter: int = 200, tol: float = 1e-4, seed: int = 0
) -> Fit:
    """Symmetric FastICA with the logcosh contrast, batched over items (sklearn's ``FastICA``).

    Whitens with the top-``K`` principal axes, then iterates
    ``W <- decorrelate(E[g(WZ) Z^T] - E[g'(WZ)] W)`` with ``g = tanh`` until
    ``max |(|diag(W_new W^T)| - 1)| < tol`` for every item (converged items stop
    moving) or ``max_iter``.

    Args:
        x: ``(B, C, T)`` real signals.
        n_components: ``K <= C`` independent components (default ``C``).
        max_iter: iteration cap (>= 1).
        tol: convergence tolerance (> 0).
        seed: seed of the random initial rotation; equal seeds give equal results.

    Returns:
        ``unmixing`` ``(B, K, C)`` (unit-variance components), ``mixing`` ``(B, C, K)``
        (its pseudo-inverse) and channel ``mean`` ``(B, C, 1)``, in ``x``'s dtype.
    """
    B, C, T = check_signal(x, min_length=2)
    K = _check_components(n_components, C)
    check_int("max_iter", max_iter, 1)
    if not tol > 0:
        raise ParameterError(f"tol={tol!r} is not a number > 0")
    mean, values, vectors = _principal_axes(x.double(), K)
    whitening = values.rsqrt().unsqueeze(-1) * vectors.transpose(-1, -2)
    z = whitening @ (x.double() - mean)
    # One initial rotation for every item, so an item's result does not depend on its batch.
    start = torch.randn(K, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = _symmetric_decorrelation(start.to(x.device).expand(B, K, K))
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        g = torch.tanh(w @ z)
        step = g @ z.transpose(-1, -2) / T - (1 - g.square()).mean(dim=-1, keepdim=True) * w
        w_new = _symmetric_decorrelation(step)
        change = ((w_new * w).sum(dim=-1).abs() - 1).abs().amax(dim=-1)
        w = torch.where(done[:, None, None], w, w_new)
        done = done | (change < tol)
        if bool(done.all()):
            break
    unmixing = w @ whitening
    unmixing, mixing = _canonical_signs(unmixing, torch.linalg.pinv(unmixing))
    return unmixing.to(x.dtype), mixing.to(x.dtype), mean.to(x.dtype)


class _ChannelTransform(Transform):
    """A fitted linear map over channels: ``(B, C, T) -> (B, K, T)`` components."""

    def __init__(self, sample_rate: float, n_components: int | None = None):
        super().__init__(sample_rate)
        self.n_components = None if n_components is None else check_int("n_components", n_components, 1)
        self.register_buffer("unmixing", None)
        self.register_buffer("mixing", None)
        self.register_buffer("mean", None)

    @abstractmethod
    def _fit(self, x: Tensor) -> Fit:
        """``(unmixing, mixing, mean)`` of ``x`` ``(B, C, T)``."""

    def fit(self, x: Tensor) -> _ChannelTransform:
        """Fit one map per batch item of ``x`` ``(B, C, T)``; returns ``self``."""
        unmixing, mixing, mean = self._fit(x)
        self.unmixing, self.mixing, self.mean = unmixing.detach(), mixing.detach(), mean.detach()
        self.invertible = unmixing.shape[-2] == unmixing.shape[-1]
        return self

    def _fitted(self, batch: int, what: str) -> None:
        if self.unmixing is None:
            raise ParameterError(f"{type(self).__name__}.{what} needs a fitted map: call fit(x) first")
        if self.unmixing.shape[0] not in (1, batch):
            raise ParameterError(f"fitted on a batch of {self.unmixing.shape[0]} items, got {batch}")

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T)`` signals -> ``(B, K, T)`` components."""
        B, C, _ = check_signal(x)
        self._fitted(B, "forward")
        if C != self.unmixing.shape[-1]:
            raise ParameterError(f"fitted on {self.unmixing.shape[-1]} channels, got {C}")
        return self.unmixing.to(x.dtype) @ x

    def inverse(self, coeffs: Tensor, length: int) -> Tensor:
        """``(B, K, length)`` components -> ``(B, C, length)`` at the sensors."""
        self._fitted(coeffs.shape[0], "inverse")
        check_count("component samples", coeffs.shape[-1], length, length)
        return self.mixing.to(coeffs.dtype) @ coeffs

    def grid(self, length: int) -> Grid:
        """Each component spans the full band ``[0, fs/2]``; ``group`` is the component index.

        ``frame`` pools samples into at most 512 equal-length runs.
        """
        if self.unmixing is None:
            raise ParameterError(f"{type(self).__name__}.grid needs a fitted map: call fit(x) first")
        K = self.unmixing.shape[-2]
        frame, n_frames = pooled_index(length)
        return Grid(
            freq_hz=torch.full((1, 1), self.sample_rate / 4),
            band_lo_hz=torch.zeros((1, 1)),
            band_hi_hz=torch.full((1, 1), self.sample_rate / 2),
            time_s=(torch.arange(length, dtype=torch.float32) / self.sample_rate).view(1, -1),
            group=torch.arange(K).view(-1, 1),
            n_groups=K,
            frame=frame.view(1, -1),
            n_frames=n_frames,
            shape=(length,),
        )


class PCA(_ChannelTransform):
    """Principal components of the channels (orthonormal rotation, no whitening).

    Args:
        sample_rate: Hz.
        n_components: components kept (default all; fewer makes ``inverse`` a projection).
    """

    def _fit(self, x: Tensor) -> Fit:
        return pca_fit(x, n_components=self.n_components)


class ICA(_ChannelTransform):
    """Independent components of the channels (symmetric FastICA, logcosh).

    Args:
        sample_rate: Hz.
        n_components: components (default all channels).
        seed: seed of the initial rotation.
    """

    def __init__(self, sample_rate: float, n_components: int | None = None, seed: int = 0):
        super().__init__(sample_rate, n_components)
        self.seed = int(seed)

    def _fit(self, x: Tensor) -> Fit:
        return fastica_fit(x, n_components=self.n_components, seed=self.seed)
