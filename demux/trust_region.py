"""Batched trust-region minimisation whose steps are measured on masks, with annealed dropout.

The controller of DESIGN.md ("The model", steps 5-6). Every item ``b`` of a batch
minimises its own loss ``f_b(theta_b)`` with its own radius, ratio and accept/reject
decision; the only Python loops are over iterations, CG steps, probes and memory slots,
never over items.

One iteration, per item:

1. Draw one dropout seed for the iteration (common random numbers): the current point,
   its gradient and Hessian-vector products, and the trial point all see the same draw,
   or ``rho`` would measure the noise instead of the model.
2. Build the quadratic model ``q(p) = g.p + p.Hp/2`` (:data:`HessianMode`).
3. Metric ``D ~ c diag(J^T J)/M`` with ``J = d masks / d theta`` (Hutchinson, averaged
   over iterations with geometric weights: steps are small, so J changes slowly while
   a few probes per iteration are noisy), so that
   ``||D^(1/2) p|| ~ ||m(theta + p) - m(theta)|| / sqrt(M)``, the RMS mask change.
   The per-item scale ``c`` (:func:`calibrate_metric`) is the squared ratio of true to
   predicted mask change of the previous trial step. A diagonal metric ignores the
   correlations of J's columns (softmax masks of S sources move together: at uniform
   masks it under-estimates a move that keeps the logits' mean by sqrt(S/(S-1))) and
   Hutchinson adds noise, so an uncalibrated metric can overshoot step after step
   until the radius collapses.
   With ``norm_weight`` the norm weighs each mask's change: ``W = diag(w)``,
   ``D ~ c diag(J^T W J)/M`` (probes ``sqrt(w) v``), the change
   ``||W^(1/2) dm|| / sqrt(M)``, so a mask of weight ``w`` may move ``radius / sqrt(w)``
   at most (:func:`edge_weight`: a smaller radius near band edges).
4. :func:`steihaug_cg` in that metric; its first iterate is the Cauchy point.
5. :func:`trust_ratio` from the true loss and the TRUE mask change (an overshoot
   beyond ``overshoot * Delta`` rejects the step), then :func:`update_radius` and
   the dropout schedule (:data:`DropoutScheduleName`).

The structure follows scipy's ``_trustregion.py`` / ``_trustregion_ncg.py`` and
pytorch-minimize (a driver loop over small pure helpers). With ``masks=None``,
``hessian="exact"``, no dropout and scipy's radii (``radius0=1``, ``radius_max=1000``)
the iterates are those of ``scipy.optimize.minimize(method="trust-ncg")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Literal, get_args

import torch
from torch import Tensor

from demux.errors import ParameterError

__all__ = [
    "DROPOUT_SCHEDULES",
    "CGStep",
    "Dropout",
    "DropoutScheduleName",
    "HessianMode",
    "Quadratic",
    "Status",
    "TrajectoryStep",
    "TrustRegionConfig",
    "TrustRegionResult",
    "boundary_roots",
    "calibrate_metric",
    "dropout_cap",
    "edge_weight",
    "minimize",
    "steihaug_cg",
    "trust_ratio",
    "update_radius",
    "weighted_norm",
]

#: How the quadratic model's curvature is built. ``exact``: the exact Hessian's
#: products (the objective's own closed form where :func:`minimize` gets a
#: ``curvature``, else autograd's double backward). ``gauss-newton``: the objective's
#: positive semi-definite Gauss-Newton products (needs a ``curvature``). ``diagonal``: a Hutchinson estimate of diag(H), fresh
#: Rademacher probes each iteration. ``lbfgs``: a limited-memory BFGS matrix per item
#: from pairs ``(s, y)`` whose gradients share one dropout draw.
HessianMode = Literal["exact", "gauss-newton", "diagonal", "lbfgs"]

#: How the dropout rate anneals. ``controlled``: ``p *= dropout_decay`` after a very
#: successful step (``rho > eta2``), never by more than the radius, held otherwise.
#: ``linear``: the cap of :func:`dropout_cap` itself. ``constant``: ``dropout0``
#: throughout. ``none``: no dropout (the objective receives ``None``).
DropoutScheduleName = Literal["controlled", "linear", "constant", "none"]

#: Fraction of ``max_iter`` by which every annealing schedule reaches ``dropout_floor``.
_ANNEAL_END = 0.8
#: Metric entries below this fraction of an item's largest are raised to it: a parameter
#: that barely moves the masks must not be allowed an unbounded step.
_METRIC_FLOOR = 1e-6
#: Weight of the previous iterations' Hutchinson estimates of the metric (per iteration).
_METRIC_MEMORY = 0.9
#: The calibration may correct the Hutchinson metric by at most this factor in norm
#: either way (squared for the metric): masks far from linear over a step say little
#: about the next one.
_CALIBRATION_LIMIT = 10.0


@dataclass(frozen=True)
class TrustRegionConfig:
    """Settings of :func:`minimize`; every value is checked on construction.

    Attributes:
        max_iter: outer iterations at most (all items stop there).
        radius0: initial radius ``Delta0``: RMS mask change per step (Euclidean norm
            of the step in parameter space when ``masks`` is ``None``).
        radius_max: the radius never grows beyond this.
        radius_min: an item stops once its radius falls below this.
        eta0: a step is accepted if ``rho > eta0``.
        eta1: ``rho < eta1`` shrinks the radius by ``gamma1``.
        eta2: ``rho > eta2`` on the boundary grows it by ``gamma2``; also what counts
            as a "very successful" step for the dropout schedule.
        gamma1: shrink factor, in (0, 1).
        gamma2: growth factor, > 1.
        overshoot: a step whose true mask change exceeds ``overshoot * Delta`` is
            rejected (``rho = -inf``): the diagonal metric is only a linearisation.
        gtol: an item stops once the Euclidean norm of its gradient is below this
            (the gradient of the iteration's dropout draw).
        cg_max_iter: Steihaug-CG iterations per step at most.
        hessian: see :data:`HessianMode`.
        probes: Rademacher probes per Hutchinson estimate (metric, diagonal Hessian).
        lbfgs_memory: curvature pairs kept per item for ``hessian="lbfgs"``.
        dropout_schedule: see :data:`DropoutScheduleName`.
        dropout0: dropout rate at the start, in [0, 1).
        dropout_floor: the rate every annealing schedule ends at, <= ``dropout0``.
        dropout_decay: ``controlled`` multiplies the rate by this after a very
            successful step, in (0, 1].
        warmup: iterations held at ``dropout0`` before any annealing.
        seed: seeds the dropout draws and the Hutchinson probes.
    """

    max_iter: int = 50
    radius0: float = 0.05
    radius_max: float = 0.5
    radius_min: float = 1e-6
    eta0: float = 0.15
    eta1: float = 0.25
    eta2: float = 0.75
    gamma1: float = 0.25
    gamma2: float = 2.0
    overshoot: float = 1.25
    gtol: float = 1e-5
    cg_max_iter: int = 20
    hessian: HessianMode = "exact"
    probes: int = 4
    lbfgs_memory: int = 8
    dropout_schedule: DropoutScheduleName = "controlled"
    dropout0: float = 0.3
    dropout_floor: float = 0.01
    dropout_decay: float = 0.9
    warmup: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ParameterError(f"TrustRegionConfig.{f.name}={value!r} is not an integer")
            if f.type == "float" and not (
                isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            ):
                raise ParameterError(f"TrustRegionConfig.{f.name}={value!r} is not a finite number")
        _require(
            self.hessian in get_args(HessianMode), f"hessian={self.hessian!r} is not one of {get_args(HessianMode)}"
        )
        _require(
            self.dropout_schedule in get_args(DropoutScheduleName),
            f"dropout_schedule={self.dropout_schedule!r} is not one of {get_args(DropoutScheduleName)}",
        )
        _require(self.max_iter >= 1, f"max_iter={self.max_iter} is not >= 1")
        _require(self.cg_max_iter >= 1, f"cg_max_iter={self.cg_max_iter} is not >= 1")
        _require(self.probes >= 1, f"probes={self.probes} is not >= 1")
        _require(self.lbfgs_memory >= 1, f"lbfgs_memory={self.lbfgs_memory} is not >= 1")
        _require(self.warmup >= 0, f"warmup={self.warmup} is not >= 0")
        _require(
            0 <= self.radius_min < self.radius0 <= self.radius_max,
            f"radii must satisfy 0 <= radius_min < radius0 <= radius_max, got "
            f"{self.radius_min=}, {self.radius0=}, {self.radius_max=}",
        )
        _require(
            0 <= self.eta0 <= self.eta1 < self.eta2 <= 1,
            f"ratios must satisfy 0 <= eta0 <= eta1 < eta2 <= 1, got {self.eta0=}, {self.eta1=}, {self.eta2=}",
        )
        _require(0 < self.gamma1 < 1, f"gamma1={self.gamma1} is not in (0, 1)")
        _require(self.gamma2 > 1, f"gamma2={self.gamma2} is not > 1")
        _require(self.overshoot >= 1, f"overshoot={self.overshoot} is not >= 1")
        _require(self.gtol >= 0, f"gtol={self.gtol} is not >= 0")
        _require(
            0 <= self.dropout_floor <= self.dropout0 < 1,
            f"dropout rates must satisfy 0 <= dropout_floor <= dropout0 < 1, got "
            f"{self.dropout_floor=}, {self.dropout0=}",
        )
        _require(0 < self.dropout_decay <= 1, f"dropout_decay={self.dropout_decay} is not in (0, 1]")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ParameterError(message)


@dataclass(frozen=True)
class Dropout:
    """What the objective receives at each evaluation.

    The objective must draw its keep-mask from ``torch.Generator().manual_seed(seed)``
    (a CPU generator, then move the draw to its device), so that the current and the
    trial point of one iteration see the same draw. Drawing a shape that does not
    depend on the batch size (e.g. one ``(P,)`` uniform draw compared with each item's
    rate) makes each item's result independent of what else is in the batch.

    Attributes:
        rate: ``(B,)`` per-item drop rate in [0, 1).
        seed: this iteration's seed.
    """

    rate: Tensor
    seed: int


@dataclass(frozen=True)
class Quadratic:
    """The quadratic model of a batch of losses at one point, as a ``curvature`` callable
    of :func:`minimize` returns it (without autograd, when the objective has a closed form).

    Attributes:
        loss: ``(B,)`` losses.
        grad: ``(B, P)`` gradients.
        hvp: ``(B, P) -> (B, P)`` products with each item's Hessian (or Gauss-Newton) matrix.
    """

    loss: Tensor
    grad: Tensor
    hvp: Callable[[Tensor], Tensor]


class Status(IntEnum):
    """Why an item stopped."""

    GTOL = 0
    RADIUS = 1
    MAX_ITER = 2


_MESSAGES = {
    Status.GTOL: "converged: gradient norm below gtol",
    Status.RADIUS: "converged: trust radius below radius_min",
    Status.MAX_ITER: "stopped: max_iter reached",
}


@dataclass(frozen=True)
class TrajectoryStep:
    """One outer iteration, every field a detached per-item tensor.

    Attributes:
        step: iteration index, from 0.
        objective: ``(B,)`` loss at the iterate after this step (the trial point if
            accepted), under this iteration's dropout draw.
        rho: ``(B,)`` actual / predicted reduction; ``-inf`` for an overshoot, a
            non-finite trial loss or no predicted decrease; NaN for inactive items.
        radius: ``(B,)`` the radius this step was constrained by (before its update).
        mask_change: ``(B,)`` true RMS mask change of the trial step,
            ``||m(theta + p) - m(theta)|| / sqrt(M)`` (``||p||`` without masks).
        dropout: ``(B,)`` dropout rate used at this step.
        accepted: ``(B,)`` bool, the trial step was taken.
        on_boundary: ``(B,)`` bool, the trial step reached the trust-region boundary
            (in the metric; the true mask change may differ).
        active: ``(B,)`` bool, the item was still being optimised at this step.
    """

    step: int
    objective: Tensor
    rho: Tensor
    radius: Tensor
    mask_change: Tensor
    dropout: Tensor
    accepted: Tensor
    on_boundary: Tensor
    active: Tensor

    def to_dict(self) -> dict:
        """JSON-ready: lists of per-item values; non-finite floats become ``None``."""
        out: dict = {"step": self.step}
        for f in fields(self)[1:]:
            out[f.name] = _json_list(getattr(self, f.name))
        return out


def _json_list(values: Tensor) -> list:
    if values.dtype == torch.bool:
        return values.tolist()
    return [v if math.isfinite(v) else None for v in values.double().tolist()]


@dataclass(frozen=True)
class TrustRegionResult:
    """What :func:`minimize` returns.

    Attributes:
        theta: ``(B, P)`` final parameters.
        loss: ``(B,)`` loss at ``theta`` without dropout.
        n_iter: outer iterations run.
        iterations: ``(B,)`` int64, steps each item took before it stopped.
        status: ``(B,)`` int64 :class:`Status` codes.
        message: per-item reason it stopped.
        success: ``(B,)`` bool, stopped on ``gtol`` or ``radius_min`` (not ``max_iter``).
        trajectory: one :class:`TrajectoryStep` per outer iteration.
    """

    theta: Tensor
    loss: Tensor
    n_iter: int
    iterations: Tensor
    status: Tensor
    message: list[str]
    success: Tensor
    trajectory: list[TrajectoryStep]

    def to_dict(self) -> dict:
        """JSON-ready summary and trajectory; ``theta`` is left to the caller, who
        knows what its parameters mean (and they can be large)."""
        return {
            "loss": _json_list(self.loss),
            "n_iter": self.n_iter,
            "iterations": self.iterations.tolist(),
            "status": [Status(s).name.lower() for s in self.status.tolist()],
            "message": self.message,
            "success": self.success.tolist(),
            "trajectory": [step.to_dict() for step in self.trajectory],
        }


# --- small pure helpers -------------------------------------------------------------


def _rows_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(B, P), (B, P) -> (B,)`` row-wise dot products."""
    return (a * b).sum(dim=1)


def _safe(denominator: Tensor) -> Tensor:
    """The denominator with zeros replaced by ones (the quotient is masked out there)."""
    return torch.where(denominator != 0, denominator, torch.ones_like(denominator))


def weighted_norm(x: Tensor, weight: Tensor | None = None) -> Tensor:
    """``(B, N) -> (B,)`` ``sqrt(sum_i w_i x_i^2)``; ``weight`` ``(N,)`` or ``(B, N)``, None: all ones."""
    return x.norm(dim=1) if weight is None else (weight * x.square()).sum(dim=1).sqrt()


def edge_weight(position: Tensor, edges: Tensor, *, width: Tensor | float, scale: float) -> Tensor:
    """Norm weights that shrink the trust radius by ``scale`` within ``width`` of an edge.

    Args:
        position: ``(N,)`` where each weighted entry sits (Hz for band edges).
        edges: ``(E,)`` edge positions, same unit (none: all weights 1).
        width: ``(N,)`` or one number >= 0, same unit: how far from an edge an entry
            still counts as near it (e.g. a distance plus half the entry's bin width).
        scale: radius factor near an edge, in (0, 1].

    Returns:
        ``(N,)`` ``1 / scale^2`` where ``|position - edge| <= width`` for some edge, else 1,
        in ``position``'s dtype: as ``norm_weight`` of :func:`minimize`, an entry near an
        edge may change by ``scale * radius`` at most.
    """
    width = torch.as_tensor(width, dtype=position.dtype, device=position.device)
    _require(bool((width >= 0).all()), f"width={width} is not >= 0")
    _require(0 < scale <= 1, f"scale={scale} is not in (0, 1]")
    distance = (position[:, None] - edges.to(position)[None, :]).abs()
    near = (distance <= width.reshape(-1, 1)).any(dim=1)
    return torch.where(near, 1.0 / scale**2, 1.0).to(position.dtype)


def boundary_roots(z: Tensor, d: Tensor, *, metric: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """The two ``tau`` with ``||z + tau d||_D = radius``, ``D = diag(metric)``.

    Args:
        z: ``(B, P)`` point inside the region (``||z||_D <= radius``).
        d: ``(B, P)`` direction.
        metric: ``(B, P)`` positive diagonal of ``D``.
        radius: ``(B,)``.

    Returns:
        ``(ta, tb)``, each ``(B,)``, ``ta <= 0 <= tb`` (0 where ``d`` is 0).
    """
    a = _rows_dot(d, metric * d)
    b = 2 * _rows_dot(z, metric * d)
    c = _rows_dot(z, metric * z) - radius**2
    # scipy's cancellation-free form of the quadratic formula (c <= 0, so disc >= b^2)
    root = torch.sqrt((b * b - 4 * a * c).clamp_min(0))
    aux = b + torch.where(b >= 0, root, -root)
    t1, t2 = -aux / (2 * _safe(a)), -2 * c / _safe(aux)
    return torch.minimum(t1, t2), torch.maximum(t1, t2)


@dataclass(frozen=True)
class CGStep:
    """What :func:`steihaug_cg` returns.

    Attributes:
        step: ``(B, P)`` approximate minimiser ``p`` of the model in the region.
        decrease: ``(B,)`` predicted reduction ``-(g.p + p.Hp/2) >= 0``.
        on_boundary: ``(B,)`` bool, the step stopped on the trust-region boundary.
    """

    step: Tensor
    decrease: Tensor
    on_boundary: Tensor


def steihaug_cg(
    grad: Tensor,
    hvp: Callable[[Tensor], Tensor],
    *,
    metric: Tensor,
    radius: Tensor,
    active: Tensor,
    max_iter: int,
) -> CGStep:
    """Preconditioned Steihaug-Toint CG for ``min g.p + p.Hp/2`` s.t. ``||p||_D <= radius``.

    CG preconditioned by ``D^-1``, so its iterates grow monotonically in the norm
    ``||p||_D = sqrt(p.Dp)``; the first iterate is the Cauchy point of that norm.
    An item stops at the boundary (positive curvature leaving the region, or negative
    curvature: the better of the two boundary points along the direction), at a
    residual ``||g + Hp|| <= min(0.5, sqrt(||g||)) ||g||``, or after ``max_iter``.
    Items are masked, never branched on; the loop ends early once all are done.

    Args:
        grad: ``(B, P)`` gradient ``g``.
        hvp: ``(B, P) -> (B, P)`` product with each item's Hessian model ``H``.
        metric: ``(B, P)`` positive diagonal of ``D``.
        radius: ``(B,)`` trust radius.
        active: ``(B,)`` bool; inactive items get ``p = 0``.
        max_iter: CG iterations at most.

    Returns:
        A :class:`CGStep`.
    """
    gnorm = grad.norm(dim=1)
    tol = torch.minimum(gnorm.sqrt(), torch.full_like(gnorm, 0.5)) * gnorm
    z = torch.zeros_like(grad)
    r = grad
    y = r / metric
    d = -y
    ry = _rows_dot(r, y)
    model = torch.zeros_like(gnorm)  # q(z)
    done = ~active | (gnorm <= tol)
    on_boundary = torch.zeros_like(done)
    for _ in range(max_iter):
        if bool(done.all()):
            break
        hd = hvp(d)
        dhd = _rows_dot(d, hd)
        rd = _rows_dot(r, d)
        negative = dhd <= 0
        alpha = ry / _safe(torch.where(negative, torch.zeros_like(dhd), dhd))
        z_next = z + alpha[:, None] * d
        leaves = _rows_dot(z_next, metric * z_next) >= radius**2

        ta, tb = boundary_roots(z, d, metric=metric, radius=radius)
        model_a = model + ta * rd + 0.5 * ta**2 * dhd
        model_b = model + tb * rd + 0.5 * tb**2 * dhd
        take_a = negative & (model_a < model_b)
        tau = torch.where(take_a, ta, tb)
        model_tau = torch.where(take_a, model_a, model_b)

        to_boundary = ~done & (negative | leaves)
        interior = ~done & ~to_boundary
        z = torch.where(to_boundary[:, None], z + tau[:, None] * d, torch.where(interior[:, None], z_next, z))
        model = torch.where(
            to_boundary, model_tau, torch.where(interior, model + alpha * rd + 0.5 * alpha**2 * dhd, model)
        )
        on_boundary = on_boundary | to_boundary

        r_next = r + alpha[:, None] * hd
        y_next = r_next / metric
        ry_next = _rows_dot(r_next, y_next)
        beta = ry_next / _safe(ry)
        d = torch.where(interior[:, None], -y_next + beta[:, None] * d, d)
        r = torch.where(interior[:, None], r_next, r)
        ry = torch.where(interior, ry_next, ry)
        done = done | to_boundary | (interior & (r_next.norm(dim=1) <= tol))
    return CGStep(step=z, decrease=-model, on_boundary=on_boundary)


def calibrate_metric(scale: Tensor, *, mask_change: Tensor, metric_norm: Tensor, active: Tensor) -> Tensor:
    """Per-item metric scale so that the last step's predicted mask change would have been true.

    Args:
        scale: ``(B,)`` current scale ``c``.
        mask_change: ``(B,)`` true RMS mask change of the last trial step.
        metric_norm: ``(B,)`` its norm in the UNSCALED Hutchinson metric.
        active: ``(B,)`` bool; other items keep their scale.

    Returns:
        ``(B,)`` ``(mask_change / metric_norm)^2`` clamped to ``[1/L^2, L^2]``
        (L = 10), or ``scale`` where the step was null or its change not finite.
    """
    ratio = (mask_change / _safe(metric_norm)) ** 2
    limit = _CALIBRATION_LIMIT**2
    usable = active & (metric_norm > 0) & torch.isfinite(ratio)
    return torch.where(usable, ratio.clamp(1 / limit, limit), scale)


def trust_ratio(
    actual: Tensor, predicted: Tensor, *, mask_change: Tensor, radius: Tensor, overshoot: float
) -> Tensor:
    """``rho = actual / predicted`` reduction, ``-inf`` where the step must be rejected.

    A step is rejected outright when its true mask change exceeds ``overshoot * radius``
    (the metric under-estimated it), when the trial loss is not finite (``actual`` is
    NaN or -inf), or when the model predicts no decrease.

    Args:
        actual: ``(B,)`` ``f(theta) - f(theta + p)``, same dropout draw.
        predicted: ``(B,)`` ``-(g.p + p.Hp/2)``.
        mask_change: ``(B,)`` true RMS mask change of the step.
        radius: ``(B,)``.
        overshoot: tolerated ratio of mask change to radius.

    Returns:
        ``(B,)`` rho.
    """
    rho = actual / _safe(predicted)
    reject = (predicted <= 0) | torch.isnan(actual) | (mask_change > overshoot * radius)
    return torch.where(reject, torch.full_like(rho, -math.inf), rho)


def update_radius(radius: Tensor, rho: Tensor, on_boundary: Tensor, *, config: TrustRegionConfig) -> Tensor:
    """The classic radius rule, per item.

    ``rho < eta1``: ``radius * gamma1``; ``rho > eta2`` with the step on the boundary:
    ``min(gamma2 * radius, radius_max)``; otherwise unchanged.

    Args:
        radius: ``(B,)``.
        rho: ``(B,)`` (NaN leaves the radius unchanged).
        on_boundary: ``(B,)`` bool.
        config: the ratios and factors.

    Returns:
        ``(B,)`` new radius.
    """
    grown = torch.clamp(radius * config.gamma2, max=config.radius_max)
    radius_next = torch.where((rho > config.eta2) & on_boundary, grown, radius)
    return torch.where(rho < config.eta1, radius * config.gamma1, radius_next)


def dropout_cap(step: int, *, config: TrustRegionConfig) -> float:
    """Upper bound on the dropout rate at iteration ``step`` for the annealing schedules.

    ``dropout0`` during the warm-up, then linear down to ``dropout_floor``, reached at
    iteration ``int(0.8 * max_iter)`` and held after (the warm-up is cut short if it
    would end later).

    Returns:
        The cap, in ``[dropout_floor, dropout0]``.
    """
    end = int(_ANNEAL_END * config.max_iter)
    start = min(config.warmup, end)
    if step < start:
        return config.dropout0
    if step >= end:
        return config.dropout_floor
    fraction = (end - step) / (end - start)
    return config.dropout_floor + (config.dropout0 - config.dropout_floor) * fraction


def _controlled_rate(rate: Tensor, *, step: int, rho: Tensor, radius: Tensor, config: TrustRegionConfig) -> Tensor:
    """Decay after very successful steps, by no more than the radius; held otherwise."""
    lowered = torch.maximum(rate * config.dropout_decay, rate - radius)
    decays = (rho > config.eta2) & (step + 1 >= config.warmup)
    rate = torch.where(decays, lowered, rate).clamp(max=dropout_cap(step + 1, config=config))
    return rate.clamp(min=config.dropout_floor)


def _linear_rate(rate: Tensor, *, step: int, rho: Tensor, radius: Tensor, config: TrustRegionConfig) -> Tensor:
    """The cap itself."""
    return torch.full_like(rate, dropout_cap(step + 1, config=config))


def _held_rate(rate: Tensor, *, step: int, rho: Tensor, radius: Tensor, config: TrustRegionConfig) -> Tensor:
    """Unchanged (``constant``, and ``none`` at rate 0)."""
    return rate


#: The dropout strategies by name: ``f(rate, *, step, rho, radius, config)`` maps the
#: ``(B,)`` rates used at iteration ``step`` (with that step's ``rho`` and radius) to
#: the rates of iteration ``step + 1``.
DROPOUT_SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "controlled": _controlled_rate,
    "linear": _linear_rate,
    "constant": _held_rate,
    "none": _held_rate,
}


def _rademacher(generator: torch.Generator, shape: tuple[int, ...], *, like: Tensor) -> Tensor:
    """+-1 probes drawn on the CPU (the same on every device), cast like ``like``."""
    # int8 draws the same values as int64 from the same generator state, six times faster
    signs = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8) * 2 - 1
    return signs.to(device=like.device, dtype=like.dtype)


# --- objective, masks and curvature -------------------------------------------------


def _call_objective(objective: Callable, theta: Tensor, dropout: Dropout | None) -> Tensor:
    loss = objective(theta, dropout)
    if not isinstance(loss, Tensor) or loss.shape != theta.shape[:1] or not loss.is_floating_point():
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ParameterError(
            f"objective must return a ({theta.shape[0]},) float tensor (one loss per item), got {shape}"
        )
    return loss


def _grad(output: Tensor, x: Tensor, *, grad_outputs: Tensor | None = None, create_graph: bool = False) -> Tensor:
    """``d output / d x`` (vector-Jacobian product), zeros where ``output`` ignores ``x``."""
    if not output.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(
        output, x, grad_outputs=grad_outputs, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    return torch.zeros_like(x) if g is None else g


def _value_and_grad(
    objective: Callable, theta: Tensor, dropout: Dropout | None, *, create_graph: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss ``(B,)`` and gradient ``(B, P)`` at ``theta``, with the leaf ``x`` they hang on.

    One backward of ``sum_b f_b`` gives every item's gradient because items are independent.
    """
    x = theta.detach().requires_grad_(True)
    loss = _call_objective(objective, x, dropout)
    return x, loss, _grad(loss.sum(), x, create_graph=create_graph)


def _mask_metric(
    masks: Callable[[Tensor], Tensor], theta: Tensor, *, generator: torch.Generator, probes: int,
    vjp: Callable[[Tensor], tuple[Tensor, Callable[[Tensor], Tensor]] | None] | None = None,
    root_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Hutchinson estimate of ``diag(J^T W J) / M`` and the masks at ``theta``.

    ``E_v[(J^T v)_i^2] = sum_j J_ji^2`` for Rademacher ``v``; one probe ``(M,)`` is shared
    by all items (they are independent), so an item's metric does not depend on the batch.
    ``vjp`` (see :func:`minimize`'s ``mask_vjp``) gives ``J^T v`` without autograd.
    ``root_weight`` ``(M,)`` or ``(B, M)``: ``sqrt(diag(W))``, multiplies the probes (None: ``W = I``).

    Returns:
        ``estimate (B, P) >= 0`` and ``m (B, M)``, both detached.
    """
    closed = vjp(theta.detach()) if vjp is not None else None
    if closed is None:
        x = theta.detach().requires_grad_(True)
        m = masks(x)
    else:
        m, product = closed
    if not isinstance(m, Tensor) or m.ndim != 2 or m.shape[0] != theta.shape[0]:
        shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
        raise ParameterError(f"masks must return a ({theta.shape[0]}, M) tensor, got {shape}")
    n_masks = m.shape[1]
    if root_weight is not None and root_weight.shape[-1] != n_masks:
        raise ParameterError(f"norm_weight has {root_weight.shape[-1]} entries per item, the masks {n_masks}")
    total = torch.zeros_like(theta)
    for v in _rademacher(generator, (probes, n_masks), like=m):
        v = (v if root_weight is None else v * root_weight).expand_as(m)
        total = total + (_grad(m, x, grad_outputs=v) if closed is None else product(v)) ** 2
    return total.detach() / (probes * n_masks), m.detach()


def _floor_metric(metric: Tensor) -> Tensor:
    """``(B, P)`` metric with entries raised to ``_METRIC_FLOOR`` times the item's largest;
    all ones for an item whose masks ignore theta (only the Euclidean norm is left)."""
    scale = metric.amax(dim=1, keepdim=True)
    return torch.where(scale > 0, torch.maximum(metric, _METRIC_FLOOR * scale), torch.ones_like(metric))


class _EuclideanNorm:
    """Trust-region norm without masks: the (weighted) Euclidean length of the step."""

    def __init__(self, theta: Tensor, weight: Tensor | None = None):
        self._weight = weight
        self._metric = torch.ones_like(theta) if weight is None else weight.expand_as(theta)

    def metric(self, theta: Tensor) -> Tensor:
        """``(B, P)`` diagonal metric at ``theta``: the weights (all ones by default)."""
        return self._metric

    def change(self, step: Tensor, trial: Tensor, *, active: Tensor) -> Tensor:
        """``(B,)`` ``||step||_W``."""
        return weighted_norm(step, self._weight)


class _MaskNorm:
    """Trust-region norm on masks: RMS mask change, and the metric that predicts it.

    The metric is ``c * floor(average of Hutchinson estimates)``; the average gives
    the previous iterations geometric weights ``_METRIC_MEMORY^age``, and the per-item
    scale ``c`` comes from :func:`calibrate_metric` after each trial step. ``weight``
    ``(M,)`` or ``(B, M)`` weighs each mask's change (None: all ones).
    """

    def __init__(self, masks: Callable[[Tensor], Tensor], theta: Tensor, *, generator: torch.Generator, probes: int,
                 vjp: Callable | None = None, weight: Tensor | None = None):
        self._masks, self._generator, self._probes, self._vjp = masks, generator, probes, vjp
        self._norm_weight = weight
        self._root_weight = None if weight is None else weight.sqrt()
        self._sum, self._weight = torch.zeros_like(theta), 0.0
        self._scale = theta.new_ones(theta.shape[0])
        self._hutchinson = self._current = None

    def metric(self, theta: Tensor) -> Tensor:
        """``(B, P)`` diagonal metric at ``theta`` (remembers the masks there)."""
        estimate, self._current = _mask_metric(
            self._masks, theta, generator=self._generator, probes=self._probes, vjp=self._vjp,
            root_weight=self._root_weight,
        )
        self._sum = _METRIC_MEMORY * self._sum + estimate
        self._weight = _METRIC_MEMORY * self._weight + 1
        self._hutchinson = _floor_metric(self._sum / self._weight)
        return self._scale[:, None] * self._hutchinson

    def change(self, step: Tensor, trial: Tensor, *, active: Tensor) -> Tensor:
        """``(B,)`` true RMS mask change from the last :meth:`metric` point to ``trial``;
        recalibrates the metric scale of the ``active`` items."""
        with torch.no_grad():
            change = weighted_norm(self._masks(trial) - self._current, self._norm_weight)
        change = change / math.sqrt(self._current.shape[1])
        predicted = _rows_dot(step, self._hutchinson * step).sqrt()
        self._scale = calibrate_metric(self._scale, mask_change=change, metric_norm=predicted, active=active)
        return change


def _exact_hvp(grad: Tensor, x: Tensor) -> Callable[[Tensor], Tensor]:
    """Products with the exact Hessian: a second backward through the graph of ``grad``."""
    return lambda v: _grad(grad, x, grad_outputs=v).detach()


def _diagonal_hvp(grad: Tensor, x: Tensor, *, generator: torch.Generator, probes: int) -> Callable[[Tensor], Tensor]:
    """Products with a Hutchinson ``diag(H) ~ mean_v v * Hv`` (one ``(P,)`` probe for all items)."""
    exact = _exact_hvp(grad, x)
    total = torch.zeros_like(x)
    for v in _rademacher(generator, (probes, x.shape[1]), like=x):
        v = v.expand_as(x)
        total = total + v * exact(v)
    diagonal = total / probes
    return lambda v: diagonal * v


@dataclass(frozen=True)
class _LbfgsMemory:
    """The last curvature pairs of each item, oldest first, valid ones at the end.

    Attributes:
        s: ``(B, m, P)`` steps.
        y: ``(B, m, P)`` gradient changes (same dropout draw at both ends).
        valid: ``(B, m)`` bool.
    """

    s: Tensor
    y: Tensor
    valid: Tensor

    @classmethod
    def empty(cls, like: Tensor, size: int) -> _LbfgsMemory:
        B, P = like.shape
        zeros = like.new_zeros(B, size, P)
        return cls(zeros, zeros, torch.zeros(B, size, dtype=torch.bool, device=like.device))

    def push(self, s: Tensor, y: Tensor, keep: Tensor) -> _LbfgsMemory:
        """Append ``(s, y)`` ``(B, P)`` where ``keep`` and the curvature condition hold."""
        sy = _rows_dot(s, y)
        keep = keep & torch.isfinite(sy) & (sy > 1e-8 * s.norm(dim=1) * y.norm(dim=1))

        def roll(old: Tensor, new: Tensor) -> Tensor:
            shifted = torch.cat([old[:, 1:], new[:, None]], dim=1)
            return torch.where(keep.view(-1, *([1] * (old.ndim - 1))), shifted, old)

        return _LbfgsMemory(roll(self.s, s), roll(self.y, y), roll(self.valid, torch.ones_like(keep)))

    def hvp(self) -> Callable[[Tensor], Tensor]:
        """Products with the BFGS matrix in unrolled form (Nocedal & Wright, eq. 7.19 ff.).

        ``B = sigma I + sum_i [y_i y_i^T / y_i.s_i - a_i a_i^T / a_i.s_i]`` with
        ``a_i = B_(i-1) s_i`` and ``sigma = y.y / s.y`` of the newest pair (1 if none);
        invalid slots carry weight 0.
        """
        weight = self.valid.to(self.s.dtype)
        ys = _safe(torch.where(self.valid, (self.y * self.s).sum(-1), torch.zeros_like(weight)))
        newest_y = self.y[:, -1]
        sigma = torch.where(self.valid[:, -1], _rows_dot(newest_y, newest_y) / ys[:, -1], torch.ones_like(ys[:, -1]))
        a_list: list[Tensor] = []
        as_list: list[Tensor] = []
        for i in range(self.s.shape[1]):
            s_i = self.s[:, i]
            a_i = sigma[:, None] * s_i
            for j, (a_j, as_j) in enumerate(zip(a_list, as_list)):
                a_i = a_i + weight[:, j, None] * (
                    (_rows_dot(self.y[:, j], s_i) / ys[:, j])[:, None] * self.y[:, j]
                    - (_rows_dot(a_j, s_i) / as_j)[:, None] * a_j
                )
            a_list.append(a_i)
            as_list.append(_safe(_rows_dot(a_i, s_i)))
        a = torch.stack(a_list, dim=1)
        a_s = torch.stack(as_list, dim=1)

        def product(v: Tensor) -> Tensor:
            cy = weight * torch.einsum("bmp,bp->bm", self.y, v) / ys
            ca = weight * torch.einsum("bmp,bp->bm", a, v) / a_s
            return sigma[:, None] * v + torch.einsum("bm,bmp->bp", cy, self.y) - torch.einsum("bm,bmp->bp", ca, a)

        return product


def _pull_back(objective, dropout, norm, theta, grad, cg, trial, trial_loss, mask_change, radius, over):
    """Shorten the steps of the ``over`` items along their ray to the trust-region boundary.

    The diagonal metric only predicts the mask change; where the true change overshot,
    the step is scaled by ``radius / change`` (masks move about linearly with a short
    step) instead of being thrown away, which on large problems (hundreds of thousands
    of per-coefficient parameters) otherwise alternates reject / tiny step and
    collapses the radius. The quadratic model's decrease is re-evaluated for the
    shorter step from ``g.p`` and the full step's decrease, at no extra HVP.

    Returns:
        ``(trial, trial_loss, mask_change, predicted)`` with the ``over`` rows replaced.
    """
    scale = torch.where(over, radius / mask_change.clamp_min(1e-30), torch.ones_like(radius))
    g_dot_p = _rows_dot(grad, cg.step)
    # model(p) = g.p + p.Hp/2 = -decrease, so p.Hp/2 = -(decrease + g.p)
    predicted = torch.where(over, -scale * g_dot_p + scale.square() * (cg.decrease + g_dot_p), cg.decrease)
    step = cg.step * scale[:, None]
    shorter = theta + step
    with torch.no_grad():
        shorter_loss = _call_objective(objective, shorter, dropout).detach()
    shorter_change = norm.change(step, shorter, active=over)
    return (
        torch.where(over[:, None], shorter, trial),
        torch.where(over, shorter_loss, trial_loss),
        torch.where(over, shorter_change, mask_change),
        predicted,
    )


def _check_theta(theta0: Tensor) -> Tensor:
    if not isinstance(theta0, Tensor) or theta0.ndim != 2 or not theta0.is_floating_point():
        shape = tuple(theta0.shape) if isinstance(theta0, Tensor) else type(theta0).__name__
        raise ParameterError(f"theta0 must be a (batch, params) float tensor, got {shape}")
    if theta0.shape[0] == 0 or theta0.shape[1] == 0:
        raise ParameterError(f"theta0 must have at least one item and one parameter, got {tuple(theta0.shape)}")
    if not bool(torch.isfinite(theta0).all()):
        raise ParameterError("theta0 holds NaN or Inf")
    return theta0.detach().clone()


def _check_norm_weight(weight: Tensor | None, *, like: Tensor) -> Tensor | None:
    """``weight`` cast like ``like`` after checking it is a positive finite ``(M,)`` or ``(B, M)``."""
    if weight is None:
        return None
    if not isinstance(weight, Tensor) or weight.ndim == 0 or weight.shape[:-1] not in ((), like.shape[:1]):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ParameterError(f"norm_weight must be a (M,) or ({like.shape[0]}, M) tensor, got {shape}")
    if not bool((torch.isfinite(weight) & (weight > 0)).all()):
        raise ParameterError("norm_weight must be positive and finite")
    return weight.detach().to(dtype=like.dtype, device=like.device)


# --- the driver ---------------------------------------------------------------------


def minimize(
    objective: Callable[[Tensor, Dropout | None], Tensor],
    theta0: Tensor,
    *,
    masks: Callable[[Tensor], Tensor] | None = None,
    config: TrustRegionConfig = TrustRegionConfig(),
    callback: Callable[[TrajectoryStep], None] | None = None,
    curvature: Callable[..., Quadratic] | None = None,
    mask_vjp: Callable[[Tensor], tuple[Tensor, Callable[[Tensor], Tensor]] | None] | None = None,
    norm_weight: Tensor | None = None,
) -> TrustRegionResult:
    """Minimise a batch of independent losses with trust-region steps measured on masks.

    Args:
        objective: ``(theta (B, P), dropout) -> loss (B,)``, each item's loss depending
            only on its own row; twice differentiable for ``hessian`` "exact" and
            "diagonal". ``dropout`` is ``None`` when the schedule is "none" and for the
            final loss; see :class:`Dropout` for how to draw from it.
        theta0: ``(B, P)`` starting parameters (not modified).
        masks: ``theta (B, P) -> (B, M)`` masks whose RMS change
            ``||dm|| / sqrt(M)`` is the trust-region norm; ``None``: the Euclidean
            norm of the step in parameter space.
        config: see :class:`TrustRegionConfig`.
        callback: called with each :class:`TrajectoryStep` as it is made.
        curvature: ``(theta, dropout, *, gauss_newton) -> Quadratic``: the objective's
            loss, gradient and Hessian (``gauss_newton=False``) or Gauss-Newton products
            in closed form, used for ``hessian`` "exact" and "gauss-newton" instead of
            autograd (the objective is then only evaluated at trial points).
        mask_vjp: ``theta -> (masks (B, M), w -> J^T w)`` with ``J = d masks / d theta``
            in closed form for the metric's Hutchinson probes (the same probes, no
            autograd); returning ``None`` falls back to autograd through ``masks``.
        norm_weight: ``(M,)`` or ``(B, M)`` positive weights of the norm's entries
            (the masks; the parameters, ``M = P``, when ``masks`` is ``None``): the norm
            is ``||W^(1/2) dm|| / sqrt(M)``, so entry ``i`` may change by
            ``radius / sqrt(w_i)`` at most (see :func:`edge_weight`). None: all ones.

    Returns:
        A :class:`TrustRegionResult`. Same inputs and config give a bit-identical result.

    Raises:
        ParameterError: ``theta0`` is not a finite ``(B, P)`` float tensor, ``objective``
            or ``masks`` returns the wrong shape, ``config`` is not a
            :class:`TrustRegionConfig`, ``hessian`` is "gauss-newton" without a
            ``curvature``, or ``norm_weight`` is not positive and finite.
    """
    if not isinstance(config, TrustRegionConfig):
        raise ParameterError(f"config must be a TrustRegionConfig, got {type(config).__name__}")
    if config.hessian == "gauss-newton" and curvature is None:
        raise ParameterError('hessian="gauss-newton" needs the objective\'s curvature (minimize(curvature=...))')
    closed_form = curvature is not None and config.hessian in ("exact", "gauss-newton")
    theta = _check_theta(theta0)
    B = theta.shape[0]
    generator = torch.Generator().manual_seed(config.seed)
    next_rate = DROPOUT_SCHEDULES[config.dropout_schedule]
    use_dropout = config.dropout_schedule != "none"
    radius = theta.new_full((B,), config.radius0)
    rate = theta.new_full((B,), config.dropout0 if use_dropout else 0.0)
    active = torch.ones(B, dtype=torch.bool, device=theta.device)
    status = torch.full((B,), int(Status.MAX_ITER), dtype=torch.int64, device=theta.device)
    iterations = torch.zeros(B, dtype=torch.int64, device=theta.device)
    memory = _LbfgsMemory.empty(theta, config.lbfgs_memory) if config.hessian == "lbfgs" else None
    weight = _check_norm_weight(norm_weight, like=theta)
    if masks is None:
        if weight is not None and weight.shape[-1] != theta.shape[1]:
            raise ParameterError(f"norm_weight has {weight.shape[-1]} entries per item, theta {theta.shape[1]}")
        norm: _EuclideanNorm | _MaskNorm = _EuclideanNorm(theta, weight)
    else:
        norm = _MaskNorm(masks, theta, generator=generator, probes=config.probes, vjp=mask_vjp, weight=weight)
    trajectory: list[TrajectoryStep] = []

    with torch.enable_grad():
        for step in range(config.max_iter):
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            dropout = Dropout(rate=rate.clone(), seed=seed) if use_dropout else None
            if closed_form:
                quadratic = curvature(theta, dropout, gauss_newton=config.hessian == "gauss-newton")
                loss, grad = quadratic.loss, quadratic.grad
            else:
                x, loss, grad = _value_and_grad(objective, theta, dropout, create_graph=memory is None)
            small = active & (grad.detach().norm(dim=1) < config.gtol)
            status = torch.where(small, int(Status.GTOL), status)
            active = active & ~small
            if not bool(active.any()):
                break

            if closed_form:
                hvp = quadratic.hvp
            elif memory is not None:
                hvp = memory.hvp()
            elif config.hessian == "diagonal":
                hvp = _diagonal_hvp(grad, x, generator=generator, probes=config.probes)
            else:
                hvp = _exact_hvp(grad, x)
            cg = steihaug_cg(
                grad.detach(),
                hvp,
                metric=norm.metric(theta),
                radius=radius,
                active=active,
                max_iter=config.cg_max_iter,
            )
            trial = theta + cg.step
            if memory is None:
                with torch.no_grad():
                    trial_loss = _call_objective(objective, trial, dropout)
            else:
                _, trial_loss, trial_grad = _value_and_grad(objective, trial, dropout, create_graph=False)
                memory = memory.push(cg.step, trial_grad - grad, active)
            loss, trial_loss = loss.detach(), trial_loss.detach()
            mask_change = norm.change(cg.step, trial, active=active)
            predicted = cg.decrease
            over = active & (mask_change > config.overshoot * radius)
            if memory is None and bool(over.any()):
                trial, trial_loss, mask_change, predicted = _pull_back(
                    objective, dropout, norm, theta, grad.detach(), cg, trial, trial_loss, mask_change, radius, over
                )
            rho = trust_ratio(
                loss - trial_loss,
                predicted,
                mask_change=mask_change,
                radius=radius,
                overshoot=config.overshoot,
            )
            rho = torch.where(active, rho, torch.full_like(rho, math.nan))
            accepted = active & (rho > config.eta0)
            theta = torch.where(accepted[:, None], trial, theta).detach()

            record = TrajectoryStep(
                step=step,
                objective=torch.where(accepted, trial_loss, loss),
                rho=rho,
                radius=radius,
                mask_change=mask_change,
                dropout=rate,
                accepted=accepted,
                on_boundary=cg.on_boundary,
                active=active,
            )
            trajectory.append(record)
            if callback is not None:
                callback(record)

            rate = torch.where(active, next_rate(rate, step=step, rho=rho, radius=radius, config=config), rate)
            radius = torch.where(active, update_radius(radius, rho, cg.on_boundary, config=config), radius)
            iterations = iterations + active.long()
            collapsed = active & (radius < config.radius_min)
            status = torch.where(collapsed, int(Status.RADIUS), status)
            active = active & ~collapsed

    with torch.no_grad():
        final_loss = _call_objective(objective, theta, None).detach()
    return TrustRegionResult(
        theta=theta.detach(),
        loss=final_loss,
        n_iter=len(trajectory),
        iterations=iterations,
        status=status,
        message=[_MESSAGES[Status(s)] for s in status.tolist()],
        success=status != int(Status.MAX_ITER),
        trajectory=trajectory,
    )
