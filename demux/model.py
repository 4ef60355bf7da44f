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
and ``V = sum_s exp(z_s)`` plus the priors' penalties (smoothness, noise anchor).

Coefficients are handled flat: ``Kf`` is the number of coefficients of one item
(``prod(K)``, times channels for transforms over channels), so the same code
serves STFT grids, packed wavelet levels and spectra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from demux.priors.combine import sigmoid_masks, softmax_masks
from demux.trust_region import Dropout

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
        # a coefficient counts in the likelihood as far as some source may take it
        self._coverage = inputs.support.sum(0).clamp(max=1.0)
        self._spread = _Spread(inputs.group, inputs.frame, inputs.grid_shape)

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
        x, p, spread = self.inputs, self.unpack(theta), self._spread
        z = spread.by_group(p["level"] + x.learned[None])
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
        """Per-item loss ``(B,)``: mean IS divergence (coefficients dropped at ``dropout.rate``) + penalties."""
        x = self.inputs
        fitted = self.fitted_part(theta)
        log_v = torch.logsumexp(x.prior + x.support * fitted, dim=1)  # (B, Kf)
        ratio = x.power * torch.exp(-log_v)
        divergence = (ratio - torch.log(ratio + 1e-12) - 1.0) * self._coverage
        if dropout is not None:
            generator = torch.Generator(device="cpu").manual_seed(int(dropout.seed))
            draw = torch.rand(divergence.shape, generator=generator, dtype=divergence.dtype).to(divergence.device)
            rate = dropout.rate.to(divergence.dtype)[:, None]
            divergence = divergence * (draw >= rate) / (1.0 - rate)
        loss = divergence.mean(dim=1)
        return loss + self.penalty(theta, fitted)

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


class _Spread:
    """Spreads per-group and per-frame tables over the flat coefficients.

    On ``(..., rows, cols)`` grids whose group depends on the row only and whose frame
    on the column only (STFT bins x frames), a table is gathered over rows (or
    columns) and broadcast: the backward pass is then a sum over an axis, where a
    gather over all ``Kf`` coefficients needs a scatter-add that costs tens of times
    more on CPU. Other grids (packed wavelet levels) fall back to that gather.
    """

    def __init__(self, group: Tensor, frame: Tensor, grid_shape: tuple[int, ...]):
        self.rows, self.cols = math.prod(grid_shape[:-1]), grid_shape[-1]
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
