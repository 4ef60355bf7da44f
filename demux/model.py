"""The local Gaussian variance model of one stage: parameters -> log-variances -> objective.

Every coefficient k of the mixture is modelled as a sum of independent zero-mean
sources with variances ``exp(z[s, k])`` (FASST, Kernel Additive Modelling). For
source s (DESIGN.md, "The model")::

    z[s, k] = prior[s, k] + level[s, b(k)] + gain[s, t(k)] + detail[s, k]
              + beta[s, b(k)] * e[k] + alpha[s, b(k)] * E[k]

with ``b(k)`` the coefficient's group (frequency bin, mel band, wavelet level),
``t(k)`` its frame, ``e = log|c|^2 - median(log|c|^2)`` and ``E`` the same of the
neighbourhood mean power. Which blocks a source fits is the recipe's choice
(``stationary``, ``detail``, ``energy``). The
mixture-only objective is the Itakura-Saito divergence between the observed power
and ``V = sum_s exp(z_s)`` (optionally weighted per coefficient, ``ModelInputs.weight``)
plus the priors' penalties (smoothness, noise anchor).

Coefficients are handled flat: ``Kf`` is the number of coefficients of one item
(``prod(K)``, times channels for transforms over channels), so the same code
serves STFT grids, packed wavelet levels and spectra.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from demux.priors.combine import sigmoid_masks, softmax_masks
from demux.trust_region import Dropout, Quadratic

_EPS = 1e-12  # in log(ratio + eps): a coefficient of zero power
_RIDGE = 1e-3  # keeps per-frame and per-coefficient blocks identifiable where the data says nothing


@dataclass(frozen=True)
class SourceBlocks:
    """Which parameter blocks one source fits, and its penalty weights."""

    gain: bool
    detail: bool
    energy: tuple[float, float] | None  # initial (beta, alpha), None: no energy terms
    smooth_time: float
    smooth_freq: float
    anchor_weight: float  # weight of the noise anchor on ``level`` (0: none)


@dataclass
class ModelInputs:
    """Everything fixed while one stage is fitted (one batch of items).

    Attributes:
        power: ``(B, Kf)`` coefficient power, normalised to mean 1 per item.
        log_power: ``(B, Kf)`` ``e = log(power) - median(log(power))``.
        local_energy: ``(B, Kf)`` ``E``, the same of the neighbourhood mean power.
        prior: ``(B, S, Kf)`` fixed prior log-odds.
        support: ``(S, Kf)`` membership of each coefficient in each source's support,
            in [0, 1]. The fitted part is scaled by it, so tied parameters (a group's
            level, a frame's gain) cannot buy a source out of its support; and
            coefficients that no source claims do not count in the likelihood.
        locks: ``(S, Kf)`` boolean hard locks.
        group: ``(Kf,)`` int64 group of each coefficient.
        n_groups: ``G``.
        frame: ``(Kf,)`` int64 frame of each coefficient.
        n_frames: ``N``.
        grid_shape: shape that ``Kf`` unflattens to (for smoothness along axes).
        anchor: ``(B, S, G)`` log-variance anchors (used where ``anchor_weight > 0``).
        learned: ``(S, G)`` learned offsets added to ``level`` (zeros when none).
        weight: ``(Kf,)`` weight ``w_k >= 0`` of each coefficient's divergence in the
            likelihood, mean 1 (:func:`demux.weighting.perceptual_weights`); ``None``: 1.
    """

    power: Tensor
    log_power: Tensor
    local_energy: Tensor
    prior: Tensor
    support: Tensor
    locks: Tensor
    group: Tensor
    n_groups: int
    frame: Tensor
    n_frames: int
    grid_shape: tuple[int, ...]
    anchor: Tensor
    learned: Tensor
    weight: Tensor | None = None


class VarianceModel:
    """Packs the fitted blocks into one flat vector per item and evaluates the objective.

    ``theta`` is ``(B, P)``: per item, the concatenation of ``level (S, G)``,
    ``gain (Sg, N)``, ``beta (Se, G)``, ``alpha (Se, G)`` and ``detail (Sd, Kf)`` for
    the sources that fit each block.
    """

    def __init__(self, blocks: list[SourceBlocks], inputs: ModelInputs, *, combiner: str, residual: int | None):
        self.blocks = blocks
        self.inputs = inputs
        self.combiner = combiner
        self.residual = residual
        S, G, N, Kf = len(blocks), inputs.n_groups, inputs.n_frames, inputs.power.shape[1]
        self.gain_sources = [s for s, b in enumerate(blocks) if b.gain and N > 1]
        self.energy_sources = [s for s, b in enumerate(blocks) if b.energy is not None]
        self.detail_sources = [s for s, b in enumerate(blocks) if b.detail]
        self.sizes = {
            "level": (S, G),
            "gain": (len(self.gain_sources), N),
            "beta": (len(self.energy_sources), G),
            "alpha": (len(self.energy_sources), G),
            "detail": (len(self.detail_sources), Kf),
        }
        # a coefficient counts in the likelihood as far as some source may take it, times its weight
        coverage = inputs.support.sum(0).clamp(max=1.0)
        self._coverage = coverage if inputs.weight is None else coverage * inputs.weight
        self._spread = _Spread(inputs.group, inputs.frame, inputs.grid_shape, inputs.n_groups, inputs.n_frames)
        self._direct, self._centre = self._direct_terms()

    @property
    def n_params(self) -> int:
        return sum(a * b for a, b in self.sizes.values())

    def unpack(self, theta: Tensor) -> dict[str, Tensor]:
        """Split ``(B, P)`` into named blocks ``(B, rows, cols)`` (views)."""
        out, start = {}, 0
        for name, (rows, cols) in self.sizes.items():
            out[name] = theta[:, start : start + rows * cols].reshape(theta.shape[0], rows, cols)
            start += rows * cols
        return out

    def initial(self) -> Tensor:
        """Starting parameters ``(B, P)``: each source at its share of the observed group power."""
        x = self.inputs
        B, S = x.power.shape[0], len(self.blocks)
        like = {"dtype": x.power.dtype, "device": x.power.device}
        counts = torch.bincount(x.group, minlength=x.n_groups).clamp(min=1).to(x.power.dtype)
        group_mean = torch.zeros(B, x.n_groups, **like).index_add_(1, x.group, x.power) / counts
        log_mean = torch.log(group_mean + 1e-8)
        e_mean = torch.zeros_like(group_mean).index_add_(1, x.group, x.log_power) / counts
        local_mean = torch.zeros_like(group_mean).index_add_(1, x.group, x.local_energy) / counts
        parts = []
        level = log_mean[:, None, :].expand(B, S, -1) - torch.log(torch.tensor(float(S)))
        beta, alpha = (
            torch.tensor([(b.energy or (0.0, 0.0))[i] for b in self.blocks], **like) for i in (0, 1)
        )
        # start each energy-following source at its share of the group's mean log-power
        level = level - beta[None, :, None] * e_mean[:, None, :] - alpha[None, :, None] * local_mean[:, None, :]
        anchored = torch.tensor([b.anchor_weight > 0 for b in self.blocks], device=x.power.device)
        level = torch.where(anchored[None, :, None], x.anchor, level)
        parts.append(level.reshape(B, -1))
        parts.append(torch.zeros(B, self.sizes["gain"][0] * self.sizes["gain"][1], **like))
        for initial in (beta, alpha):
            parts.append(initial[self.energy_sources][None, :, None].expand(B, -1, x.n_groups).reshape(B, -1))
        parts.append(torch.zeros(B, self.sizes["detail"][0] * self.sizes["detail"][1], **like))
        return torch.cat(parts, dim=1)

    def fitted_part(self, theta: Tensor) -> Tensor:
        """``(B, S, Kf)`` the fitted log-variance (everything but the fixed prior)."""
        return self._fitted(self.unpack(theta), offset=self.inputs.learned)

    def _fitted(self, p: dict[str, Tensor], *, offset: Tensor | None) -> Tensor:
        """``J theta (+ offset on level)``: the fitted part is linear in the parameters."""
        x, spread = self.inputs, self._spread
        z = spread.by_group(p["level"] if offset is None else p["level"] + offset[None])
        if self.gain_sources:
            z = z + spread.by_frame(self._all_sources(p["gain"], self.gain_sources))
        if self.energy_sources:
            beta = spread.by_group(self._all_sources(p["beta"], self.energy_sources))
            alpha = spread.by_group(self._all_sources(p["alpha"], self.energy_sources))
            z = z + beta * spread.view(x.log_power) + alpha * spread.view(x.local_energy)
        z = spread.flat(z)
        if self.detail_sources:
            z = z + self._all_sources(p["detail"], self.detail_sources)
        return z

    def _pull(self, c: Tensor) -> Tensor:
        """``(B, S, Kf) -> (B, P)``: ``J^T c``, the adjoint of :meth:`_fitted` without offset."""
        x, spread = self.inputs, self._spread
        e, E = x.log_power, x.local_energy
        blocks = {"level": spread.group_sum(c)}
        if self.gain_sources:
            blocks["gain"] = spread.frame_sum(c[:, self.gain_sources])
        if self.energy_sources:
            energy = c[:, self.energy_sources]
            blocks["beta"] = spread.group_sum(energy * e[:, None])
            blocks["alpha"] = spread.group_sum(energy * E[:, None])
        if self.detail_sources:
            blocks["detail"] = c[:, self.detail_sources]
        B = c.shape[0]
        return torch.cat([blocks[name].reshape(B, -1) for name, size in self.sizes.items() if size[0] * size[1]], 1)

    def _all_sources(self, block: Tensor, sources: list[int]) -> Tensor:
        """``(B, S, cols)``: ``block`` ``(B, len(sources), cols)`` in its sources' rows, zeros elsewhere."""
        B, _, cols = block.shape
        return block.new_zeros(B, len(self.blocks), cols).index_copy(1, _index(sources, block), block)

    def logits(self, theta: Tensor) -> Tensor:
        """``(B, S, Kf)`` log-variances ``z``."""
        return self.inputs.prior + self.inputs.support * self.fitted_part(theta)

    def masks(self, theta: Tensor) -> Tensor:
        """``(B, S, Kf)`` keep probabilities (before locks)."""
        z = self.logits(theta)
        if self.combiner == "sigmoid":
            return sigmoid_masks(z, residual=self.residual)
        return softmax_masks(z)

    def objective(self, theta: Tensor, dropout: Dropout | None = None) -> Tensor:
        """Per-item loss ``(B,)``: mean weighted IS divergence (coefficients dropped at
        ``dropout.rate``, each weighted by ``inputs.weight``) + penalties."""
        x = self.inputs
        fitted = self.fitted_part(theta)
        log_v = torch.logsumexp(x.prior + x.support * fitted, dim=1)  # (B, Kf)
        ratio = x.power * torch.exp(-log_v)
        divergence = (ratio - torch.log(ratio + _EPS) - 1.0) * self._weights(dropout, like=ratio)
        return divergence.mean(dim=1) + self.penalty(theta, fitted)

    def _weights(self, dropout: Dropout | None, *, like: Tensor) -> Tensor:
        """``(B, Kf)`` (or ``(Kf,)``) weight of each coefficient's divergence: its coverage
        times ``inputs.weight``, times the dropout keep-mask over the keep rate (the draw
        of ``dropout.seed``)."""
        if dropout is None:
            return self._coverage
        generator = torch.Generator(device="cpu").manual_seed(int(dropout.seed))
        draw = torch.rand(like.shape, generator=generator, dtype=like.dtype).to(like.device)
        rate = dropout.rate.to(like.dtype)[:, None]
        return self._coverage * (draw >= rate) / (1.0 - rate)

    def quadratic(self, theta: Tensor, dropout: Dropout | None = None, *, gauss_newton: bool = False) -> Quadratic:
        """Loss, gradient and Hessian-vector products at ``theta`` in closed form (no autograd).

        The fitted part is linear, ``f = J theta``, and the divergence of coefficient k
        depends on the logits only through ``L_k = log V_k``, so per coefficient the
        Hessian in the logits is ``D'' m m^T + D' (diag(m) - m m^T)`` (``m`` the softmax,
        ``D', D''`` the divergence's derivatives in ``L``). A product is then a gather
        (``J v``), a few passes over the coefficients and a scatter-add (``J^T``);
        ``gauss_newton`` keeps only ``max(D'', 0) m m^T`` (positive semi-definite).
        The penalties are quadratic in theta, so their part is exact either way.

        Args:
            theta: ``(B, P)``.
            dropout: as for :meth:`objective` (the same draw).
            gauss_newton: drop the second term (the one that may be indefinite).

        Returns:
            A :class:`~demux.trust_region.Quadratic` whose ``hvp`` maps ``(B, P) -> (B, P)``.
        """
        x = self.inputs
        theta = theta.detach()
        fitted = self.fitted_part(theta)
        z = x.prior + x.support * fitted
        log_v = torch.logsumexp(z, dim=1)
        m = torch.exp(z - log_v[:, None])
        ratio = x.power * torch.exp(-log_v)
        weights = self._weights(dropout, like=ratio)
        # the same operations as objective(), so that rho compares bit-comparable losses
        loss = ((ratio - torch.log(ratio + _EPS) - 1.0) * weights).mean(dim=1) + self.penalty(theta, fitted)
        weight = weights / ratio.shape[1]
        shrink = ratio / (ratio + _EPS)
        first = weight * (shrink - ratio)  # (B, Kf) D' (the divergence's slope in log V), weighted
        second = weight * ratio * (1.0 - _EPS / (ratio + _EPS) ** 2)  # D''
        if gauss_newton:
            second = second.clamp_min(0.0)
        sm = x.support * m
        grad = self._pull(self._smooth(fitted, sm * first[:, None])) + self._direct * (theta - self._centre)

        def hvp(v: Tensor) -> Tensor:
            a = self._fitted(self.unpack(v), offset=None)
            u = (sm * a).sum(1, keepdim=True)  # (B, 1, Kf) change of log V
            if gauss_newton:
                c = sm * (second[:, None] * u)
            else:
                c = sm * ((second - first)[:, None] * u + first[:, None] * x.support * a)
            return self._pull(self._smooth(a, c)) + self._direct * v

        return Quadratic(loss=loss, grad=grad, hvp=hvp)

    def mask_vjp(self, theta: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]] | None:
        """Masks ``(B, M)`` (``M = S * Kf``) at ``theta`` and products with the transpose of
        their Jacobian, ``(B, M) -> (B, P)``, in closed form: with softmax masks
        ``J_z^T w = m * (w - sum_t m_t w_t)`` per coefficient, then the support and ``J^T``.
        ``None`` for sigmoid masks (autograd does it).
        """
        if self.combiner == "sigmoid":
            return None
        x = self.inputs
        m = softmax_masks(self.logits(theta.detach()))
        B, S, Kf = m.shape

        def vjp(w: Tensor) -> Tensor:
            w = w.view(B, S, Kf)
            return self._pull(x.support * m * (w - (m * w).sum(1, keepdim=True)))

        return m.flatten(1), vjp

    def penalty(self, theta: Tensor, fitted: Tensor) -> Tensor:
        """``(B,)`` smoothness, noise-anchor and ridge penalties."""
        x, p = self.inputs, self.unpack(theta)
        B = theta.shape[0]
        total = torch.zeros(B, dtype=theta.dtype, device=theta.device)
        grid = fitted.reshape(B, len(self.blocks), *x.grid_shape)
        time_axis, freq_axis = (-1, -2) if len(x.grid_shape) >= 2 else (None, -1)
        for s, block in enumerate(self.blocks):
            if block.smooth_time and time_axis is not None:
                total = total + block.smooth_time * grid[:, s].diff(dim=time_axis).square().flatten(1).mean(1)
            if block.smooth_freq:
                total = total + block.smooth_freq * grid[:, s].diff(dim=freq_axis).square().flatten(1).mean(1)
            if block.anchor_weight:
                total = total + block.anchor_weight * (p["level"][:, s] - x.anchor[:, s]).square().mean(1)
        for name in ("gain", "detail"):
            if p[name].numel():
                total = total + _RIDGE * p[name].square().flatten(1).mean(1)
        return total


    def _smooth(self, fitted: Tensor, c: Tensor) -> Tensor:
        """``c`` plus the gradient of the smoothness penalties with respect to the fitted
        part ``fitted`` (equally their Hessian's product with a direction), ``(B, S, Kf)``."""
        x = self.inputs
        B, S = fitted.shape[:2]
        grid = fitted.reshape(B, S, *x.grid_shape)
        out = c.view(grid.shape)
        axes = ((-1, "smooth_time"), (-2, "smooth_freq")) if len(x.grid_shape) >= 2 else ((-1, "smooth_freq"),)
        for axis, name in axes:
            weights = [getattr(b, name) for b in self.blocks]
            if not any(weights) or grid.shape[axis] < 2:
                continue
            n_diff = grid[0, 0].numel() // grid.shape[axis] * (grid.shape[axis] - 1)
            scale = torch.tensor(weights, dtype=grid.dtype, device=grid.device) * (2.0 / n_diff)
            d = grid.diff(dim=axis)
            pad = [0, 0] * (-axis - 1)
            d_t = torch.nn.functional.pad(d, [*pad, 1, 0]) - torch.nn.functional.pad(d, [*pad, 0, 1])  # D^T d
            out = out + scale.view(1, S, *([1] * len(x.grid_shape))) * d_t
        return out.reshape(B, S, -1)  # c itself (no copy) when no source is smoothed

    def _direct_terms(self) -> tuple[Tensor, Tensor]:
        """``(P,)`` curvature and ``(B, P)`` centre of the penalties on theta itself
        (noise anchor on ``level``, ridge on ``gain`` and ``detail``): their gradient is
        ``curvature * (theta - centre)``."""
        x = self.inputs
        B, like = x.power.shape[0], {"dtype": x.power.dtype, "device": x.power.device}
        curvature, centre = [], []
        for name, (rows, cols) in self.sizes.items():
            if name == "level":
                anchor = torch.tensor([b.anchor_weight for b in self.blocks], **like)
                curvature.append((2.0 * anchor / cols)[:, None].expand(rows, cols).reshape(-1))
                centre.append(torch.where(anchor[None, :, None] > 0, x.anchor, 0.0).reshape(B, -1))
                continue
            ridge = 2.0 * _RIDGE / max(rows * cols, 1) if name in ("gain", "detail") else 0.0
            curvature.append(torch.full((rows * cols,), ridge, **like))
            centre.append(torch.zeros(B, rows * cols, **like))
        return torch.cat(curvature), torch.cat(centre, 1)


class _Spread:
    """Spreads per-group and per-frame tables over the flat coefficients.

    On ``(..., rows, cols)`` grids whose group depends on the row only and whose frame
    on the column only (STFT bins x frames), a table is gathered over rows (or
    columns) and broadcast: the backward pass is then a sum over an axis, where a
    gather over all ``Kf`` coefficients needs a scatter-add that costs tens of times
    more on CPU. Other grids (packed wavelet levels) fall back to that gather.
    """

    def __init__(self, group: Tensor, frame: Tensor, grid_shape: tuple[int, ...], n_groups: int, n_frames: int):
        self.rows, self.cols = math.prod(grid_shape[:-1]), grid_shape[-1]
        self.n_groups, self.n_frames = n_groups, n_frames
        g, f = group.view(self.rows, self.cols), frame.view(self.rows, self.cols)
        self.separable = bool((g == g[:, :1]).all()) and bool((f == f[:1, :]).all())
        self.group, self.frame = (g[:, 0], f[0, :]) if self.separable else (group, frame)

    def by_group(self, table: Tensor) -> Tensor:
        """``(B, R, G)`` -> ``(B, R, rows, 1)`` (separable) or ``(B, R, Kf)``."""
        out = table[:, :, self.group]
        return out.unsqueeze(-1) if self.separable else out

    def by_frame(self, table: Tensor) -> Tensor:
        """``(B, R, N)`` -> ``(B, R, 1, cols)`` (separable) or ``(B, R, Kf)``."""
        out = table[:, :, self.frame]
        return out.unsqueeze(-2) if self.separable else out

    def group_sum(self, values: Tensor) -> Tensor:
        """``(B, R, Kf) -> (B, R, G)``: the adjoint of :meth:`by_group`."""
        B, R = values.shape[:2]
        if self.separable:
            values = values.view(B, R, self.rows, self.cols).sum(-1)
        return values.new_zeros(B, R, self.n_groups).index_add_(2, self.group, values)

    def frame_sum(self, values: Tensor) -> Tensor:
        """``(B, R, Kf) -> (B, R, N)``: the adjoint of :meth:`by_frame`."""
        B, R = values.shape[:2]
        if self.separable:
            values = values.view(B, R, self.rows, self.cols).sum(-2)
        return values.new_zeros(B, R, self.n_frames).index_add_(2, self.frame, values)

    def view(self, values: Tensor) -> Tensor:
        """``(B, Kf)`` -> ``(B, 1, rows, cols)`` (separable) or ``(B, 1, Kf)``."""
        return values.view(values.shape[0], 1, self.rows, self.cols) if self.separable else values.unsqueeze(1)

    def flat(self, z: Tensor) -> Tensor:
        """Back to ``(B, R, Kf)`` from any of the shapes above."""
        if not self.separable:
            return z
        B, R = z.shape[:2]
        return z.expand(B, R, self.rows, self.cols).reshape(B, R, self.rows * self.cols)


def _index(rows: list[int], like: Tensor) -> Tensor:
    return torch.tensor(rows, dtype=torch.long, device=like.device)
