"""Transform-domain dropout for any PyTorch model, and a trust-region controller of its rates.

:class:`TransformDropout` is a drop-in replacement for ``nn.Dropout`` on inputs
``(..., time)``: in training mode it analyses each row with a demux transform (FFT,
DCT, DWT or STFT), drops coefficients with probabilities that fall with their energy,
rescales the kept ones so that the expected output equals the input, and synthesises.
:class:`TrustRegionController` lowers the rates of many such layers together, by no
more than a trust radius per step and only after very successful optimiser steps
(DESIGN.md, "Dropout under the controller"), with the radius rule of
:func:`demux.trust_region.update_radius`.

The functional layer (:func:`drop_probabilities`, :func:`draw_gains`,
:func:`transform_dropout`) holds the maths; the classes only keep state.

Drop probabilities of one row with coefficients ``c_k`` (k over all of them, every
axis of the transform flattened)::

    e_k = log(|c_k|^2 + eps) - median_j log(|c_j|^2 + eps)    eps = 1e-6 * mean_j |c_j|^2 + tiny
    w_k = 2 * sigmoid(-energy_weight * e_k)                    in (0, 2); 1 at the median
    p_k = min(p * w_k / mean_j w_j, MAX_DROP)

``e`` is the level-normalised log-power of DESIGN.md (invariant to the input gain), so
a coefficient above the row's median power is dropped less often than ``p`` and one
below it more often; the mean of ``p_k`` over the row is ``p`` exactly unless some
``p_k`` reached ``MAX_DROP`` (then it is below ``p``). ``energy_weight = 0`` gives
``p_k = p`` everywhere. Kept coefficients are multiplied by ``1 / (1 - p_k)``, so
``E[gain_k] = 1`` and, every transform here being linear, ``E[output] = input``.
The probabilities and gains are computed without gradient, like the mask of
``nn.Dropout``: given a draw, the layer is the linear map ``x -> T^-1(gain * T x)``
and that is the gradient it passes back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from demux.errors import ParameterError
from demux.transforms import Transform, build_transform, power
from demux.trust_region import TrustRegionConfig, trust_ratio, update_radius

__all__ = [
    "MAX_DROP",
    "ControllerStep",
    "TransformDropout",
    "TransformName",
    "TrustRegionController",
    "draw_gains",
    "drop_probabilities",
    "lowered_rates",
    "transform_dropout",
]

#: Transforms of one signal along time that :class:`TransformDropout` can use by name.
TransformName = Literal["fft", "dct", "dwt", "stft"]

#: No coefficient is dropped with a higher probability than this: its kept gain
#: ``1 / (1 - p_k)`` stays <= 20, so one draw cannot blow a coefficient up.
MAX_DROP = 0.95

#: Floor of ``eps`` relative to a row's mean power: rows with exact zeros (silent
#: bins) would otherwise give ``log 0`` and pull the median.
_RELATIVE_EPS = 1e-6

#: Inputs in these dtypes are analysed in float32 (``torch.fft`` lacks them on CPU)
#: and cast back.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# --- functional layer ----------------------------------------------------------------


def drop_probabilities(coeffs: Tensor, *, p: float | Tensor, energy_weight: float = 1.0) -> Tensor:
    """Per-coefficient drop probabilities ``p_k`` of the module docstring.

    Args:
        coeffs: ``(N, *K)`` real or complex coefficients, ``N`` independent rows.
        p: mean drop probability of a row, in [0, 1) (a float or a 0-d tensor).
        energy_weight: how strongly energy lowers the drop probability, >= 0
            (0: the same ``p`` everywhere).

    Returns:
        ``(N, *K)`` real probabilities in ``[0, MAX_DROP]``, of ``coeffs``' real dtype;
        each row's mean is ``p`` unless some entries were capped at ``MAX_DROP``.
    """
    N = coeffs.shape[0]
    pw = power(coeffs).reshape(N, -1)
    eps = _RELATIVE_EPS * pw.mean(dim=1, keepdim=True) + torch.finfo(pw.dtype).tiny
    log_power = torch.log(pw + eps)
    e = log_power - log_power.median(dim=1, keepdim=True).values
    w = 2 * torch.sigmoid(-energy_weight * e)
    probabilities = (p * w / w.mean(dim=1, keepdim=True)).clamp(max=MAX_DROP)
    return probabilities.reshape(coeffs.shape)


def draw_gains(probabilities: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """One dropout draw: ``0`` where a coefficient is dropped, ``1 / (1 - p_k)`` where kept.

    Args:
        probabilities: ``(...)`` drop probabilities in ``[0, 1)``.
        generator: random source on ``probabilities``' device (default: torch's global one,
            so ``torch.manual_seed`` makes the draw reproducible).

    Returns:
        ``(...)`` gains, same dtype, with ``E[gain] = 1``.
    """
    uniform = torch.rand(
        probabilities.shape, generator=generator, dtype=probabilities.dtype, device=probabilities.device
    )
    return (uniform >= probabilities).to(probabilities.dtype) / (1 - probabilities)


def transform_dropout(
    x: Tensor,
    *,
    transform: Transform,
    p: float | Tensor,
    energy_weight: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Analyse, drop coefficients by energy, rescale the kept ones, synthesise.

    Args:
        x: ``(batch, channel, time)`` real signal.
        transform: an invertible linear transform (``forward``/``inverse``).
        p: mean drop probability per row, in [0, 1).
        energy_weight: see :func:`drop_probabilities`.
        generator: see :func:`draw_gains`.

    Returns:
        ``(batch, channel, time)``, ``E[output] = x``; differentiable in ``x`` with the
        draw held fixed (probabilities and gains carry no gradient).
    """
    B, C, T = x.shape
    coeffs = transform(x)
    with torch.no_grad():
        flat = coeffs.reshape(B * C, *coeffs.shape[2:])
        probabilities = drop_probabilities(flat, p=p, energy_weight=energy_weight)
        gains = draw_gains(probabilities, generator=generator).reshape(coeffs.shape)
    return transform.inverse(gains * coeffs, T)


def lowered_rates(
    rates: Tensor, *, floors: Tensor, radius: Tensor, decay: float, very_successful: Tensor
) -> tuple[Tensor, Tensor]:
    """The controller's rate rule: after a very successful step, ``rate *= decay``, but by
    no more than ``radius`` and never below the floor; otherwise, or at/below the floor, held.

    Args:
        rates: ``(L,)`` current drop rates.
        floors: ``(L,)`` the rates they are lowered toward.
        radius: ``(1,)`` the largest change allowed this step.
        decay: multiplicative decay, in (0, 1].
        very_successful: ``(1,)`` bool, ``rho > eta2``.

    Returns:
        ``(L,)`` new rates (never raised) and a ``(1,)`` bool: whether the radius, not the
        decay or the floor, bounded some layer's change (the step was on the boundary).
    """
    lowered = torch.maximum(rates * decay, rates - radius)
    target = torch.maximum(lowered, floors)
    moves = very_successful & (rates > floors)
    bound = moves & (rates - radius > torch.maximum(rates * decay, floors))
    return torch.where(moves, target, rates), bound.any().reshape(1)


# --- the layer -----------------------------------------------------------------------


class TransformDropout(nn.Module):
    """Dropout of transform coefficients, informed by their energy; ``nn.Dropout``'s drop-in.

    Args:
        transform: ``"fft"``, ``"dct"``, ``"dwt"`` or ``"stft"`` (built with
            ``sample_rate=1``: the transform's grid, unused here, is then in cycles per
            sample and samples), or a built :class:`~demux.transforms.Transform` that is
            linear and invertible along time.
        p: mean drop probability per row, in [0, 1); a buffer (``state_dict`` keeps it;
            a :class:`TrustRegionController` lowers it in place).
        target_p: the floor a controller lowers ``p`` toward, in [0, 1); None: the
            controller's own floor.
        controller: registers this layer with it.
        energy_weight: see :func:`drop_probabilities`, >= 0.
        **transform_params: passed to the transform (``n_fft``, ``hop``, ``wavelet``,
            ``level``, ``mode``, ...).

    Shape:
        input ``(..., time)`` of any floating dtype; output the same shape, dtype and
        device. Leading dimensions are packed into rows, each transformed on its own.
        Eval mode returns the input itself.
    """

    def __init__(
        self,
        transform: TransformName | Transform = "fft",
        p: float = 0.3,
        target_p: float | None = None,
        controller: TrustRegionController | None = None,
        energy_weight: float = 1.0,
        **transform_params,
    ):
        super().__init__()
        if isinstance(transform, Transform):
            if transform_params:
                raise ParameterError(
                    f"transform parameters {sorted(transform_params)} go with a transform name, "
                    "not a built Transform"
                )
            self.transform = transform
        elif transform in get_args(TransformName):
            self.transform = build_transform(transform, 1.0, **transform_params)
        else:
            raise ParameterError(
                f"transform={transform!r} is not one of {', '.join(get_args(TransformName))} or a Transform"
            )
        _check_rate("p", p)
        if target_p is not None:
            _check_rate("target_p", target_p)
        if not (_is_number(energy_weight) and math.isfinite(energy_weight) and energy_weight >= 0):
            raise ParameterError(f"energy_weight={energy_weight!r} is not a finite number >= 0")
        self.register_buffer("p", torch.tensor(float(p)))
        self.target_p = target_p
        self.energy_weight = float(energy_weight)
        if controller is not None:
            controller.register(self)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ParameterError(f"TransformDropout expects a real floating (..., time) tensor, got {shape}")
        if not self.training or x.numel() == 0:
            return x
        rows = x.reshape(-1, 1, x.shape[-1])
        if rows.dtype in _LOW_PRECISION:
            rows = rows.float()
        out = transform_dropout(rows, transform=self.transform, p=self.p, energy_weight=self.energy_weight)
        return out.to(x.dtype).reshape(x.shape)

    def extra_repr(self) -> str:
        target = "" if self.target_p is None else f", target_p={self.target_p}"
        return f"p={float(self.p):.4g}{target}, energy_weight={self.energy_weight}"


# --- the controller ------------------------------------------------------------------


@dataclass(frozen=True)
class ControllerStep:
    """One :meth:`TrustRegionController.step`.

    Attributes:
        step: index, from 0.
        loss_before: loss before the optimiser step.
        loss_after: loss after it.
        predicted: the predicted decrease ``rho`` was measured against (NaN: none yet).
        rho: actual / predicted decrease (``-inf``: rejected; NaN: nothing to compare).
        radius: the radius this step's rate changes were bounded by (before its update).
        rates: every registered layer's drop rate after the step, in registration order.
    """

    step: int
    loss_before: float
    loss_after: float
    predicted: float
    rho: float
    radius: float
    rates: tuple[float, ...]

    def to_dict(self) -> dict:
        """JSON-ready; non-finite floats become ``None``."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        out["rates"] = list(self.rates)
        return out


class TrustRegionController:
    """Lowers the drop rates of many :class:`TransformDropout` layers with a trust radius.

    Call :meth:`step` after each optimiser step with the loss before and after it
    (ideally on the same batch under the same dropout draw: common random numbers, or
    ``rho`` measures the noise). Per step:

    1. ``actual = loss_before - loss_after``; ``predicted`` is the argument or, when not
       given, the running average of previous actual decreases
       (``avg <- smoothing * avg + (1 - smoothing) * actual``, started at the first one).
    2. ``rho = actual / predicted`` by :func:`demux.trust_region.trust_ratio`: ``-inf``
       when ``predicted <= 0`` or a loss is not finite; with no prediction yet (first
       step, nothing given) NaN, or ``-inf`` if the loss rose.
    3. :func:`lowered_rates`: if ``rho > eta2`` every layer's rate becomes
       ``max(rate * decay, rate - radius, floor)`` (``floor``: the layer's ``target_p``,
       else this controller's ``floor``); otherwise rates are held. Rates are never raised.
    4. :func:`demux.trust_region.update_radius`: ``rho < eta1`` shrinks the radius by
       ``gamma1``; ``rho > eta2`` grows it by ``gamma2`` (up to ``radius_max``) only if the
       radius bounded some rate change ("on the boundary"); NaN holds it.

    Args:
        layers: an ``nn.Module`` whose :class:`TransformDropout` submodules are registered,
            an iterable of :class:`TransformDropout`, or None (layers register themselves
            with ``TransformDropout(controller=...)``).
        radius0, radius_max, eta1, eta2, gamma1, gamma2: as in
            :class:`demux.trust_region.TrustRegionConfig`.
        floor: the rate layers without ``target_p`` are lowered toward, in [0, 1).
        decay: multiplicative rate decay per very successful step, in (0, 1].
        smoothing: weight of the past in the running average of decreases, in [0, 1).
    """

    def __init__(
        self,
        layers: nn.Module | Iterable[TransformDropout] | None = None,
        *,
        radius0: float = 0.05,
        radius_max: float = 0.5,
        eta1: float = 0.25,
        eta2: float = 0.75,
        gamma1: float = 0.25,
        gamma2: float = 2.0,
        floor: float = 0.01,
        decay: float = 0.9,
        smoothing: float = 0.9,
    ):
        _check_rate("floor", floor)
        if not (_is_number(decay) and 0 < decay <= 1):
            raise ParameterError(f"decay={decay!r} is not a number in (0, 1]")
        if not (_is_number(smoothing) and 0 <= smoothing < 1):
            raise ParameterError(f"smoothing={smoothing!r} is not a number in [0, 1)")
        # eta0 and radius_min are the minimiser's accept and stop rules, which have no
        # counterpart here; the rate fields only satisfy the config's own checks.
        self.config = TrustRegionConfig(
            radius0=radius0, radius_max=radius_max, radius_min=0.0, eta0=0.0, eta1=eta1, eta2=eta2,
            gamma1=gamma1, gamma2=gamma2, dropout0=floor, dropout_floor=floor, dropout_decay=decay,
        )
        self.floor = float(floor)
        self.decay = float(decay)
        self.smoothing = float(smoothing)
        self.layers: list[TransformDropout] = []
        self.radius = float(radius0)
        self.average: float | None = None
        self.trajectory: list[ControllerStep] = []
        if isinstance(layers, nn.Module):
            layers = [m for m in layers.modules() if isinstance(m, TransformDropout)]
        for layer in layers or ():
            self.register(layer)

    def register(self, layer: TransformDropout) -> None:
        """Add ``layer`` (once; registering it again does nothing)."""
        if not isinstance(layer, TransformDropout):
            raise ParameterError(f"only TransformDropout layers can be registered, got {type(layer).__name__}")
        if all(layer is not known for known in self.layers):
            self.layers.append(layer)

    def rates(self) -> list[float]:
        """Every registered layer's current drop rate, in registration order."""
        return [float(layer.p) for layer in self.layers]

    def floors(self) -> list[float]:
        """The rate each layer is lowered toward."""
        return [self.floor if layer.target_p is None else layer.target_p for layer in self.layers]

    def step(
        self, loss_before: float | Tensor, loss_after: float | Tensor, predicted_decrease: float | Tensor | None = None
    ) -> ControllerStep:
        """Measure one optimiser step, move the rates and the radius; see the class docstring.

        Args:
            loss_before: scalar loss before the optimiser step.
            loss_after: scalar loss after it.
            predicted_decrease: the decrease a model of the loss predicted (e.g. the
                first-order ``-g . (theta_after - theta_before)``); None: the running
                average of past decreases.

        Returns:
            The :class:`ControllerStep` appended to :attr:`trajectory`.
        """
        before, after = _scalar("loss_before", loss_before), _scalar("loss_after", loss_after)
        given = predicted_decrease is not None
        predicted = _scalar("predicted_decrease", predicted_decrease) if given else self._average_or_nan()
        actual = before - after if math.isfinite(before) and math.isfinite(after) else math.nan
        radius = torch.tensor([self.radius], dtype=torch.float64)
        rho = trust_ratio(
            torch.tensor([actual], dtype=torch.float64),
            torch.tensor([predicted], dtype=torch.float64),
            mask_change=torch.zeros(1, dtype=torch.float64),
            radius=radius,
            overshoot=1.0,
        )
        if math.isnan(predicted) and actual < 0:
            rho = torch.full_like(rho, -math.inf)

        rates, on_boundary = lowered_rates(
            torch.tensor(self.rates(), dtype=torch.float64),
            floors=torch.tensor(self.floors(), dtype=torch.float64),
            radius=radius,
            decay=self.decay,
            very_successful=rho > self.config.eta2,
        )
        self._set_rates(rates.tolist())
        self.radius = float(update_radius(radius, rho, on_boundary, config=self.config))
        if math.isfinite(actual):
            past = actual if self.average is None else self.average
            self.average = self.smoothing * past + (1 - self.smoothing) * actual

        record = ControllerStep(
            step=len(self.trajectory),
            loss_before=before,
            loss_after=after,
            predicted=predicted,
            rho=float(rho),
            radius=float(radius),
            rates=tuple(self.rates()),
        )
        self.trajectory.append(record)
        return record

    def state_dict(self) -> dict:
        """Radius, running average, the layers' rates and the trajectory, as plain Python
        values (``torch.save`` keeps them exactly; use :meth:`ControllerStep.to_dict` for JSON)."""
        return {
            "radius": self.radius,
            "average": self.average,
            "rates": self.rates(),
            "trajectory": [asdict(s) for s in self.trajectory],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned, the rates into the registered layers
        (their number must match)."""
        expected = {"radius", "average", "rates", "trajectory"}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ParameterError(f"controller state must have the keys {sorted(expected)}, got {got}")
        if len(state["rates"]) != len(self.layers):
            raise ParameterError(
                f"the state holds {len(state['rates'])} layer rates but {len(self.layers)} layers are registered"
            )
        self._set_rates([float(r) for r in state["rates"]])
        self.radius = float(state["radius"])
        self.average = None if state["average"] is None else float(state["average"])
        self.trajectory = [ControllerStep(**{**s, "rates": tuple(s["rates"])}) for s in state["trajectory"]]

    def _average_or_nan(self) -> float:
        return math.nan if self.average is None else self.average

    def _set_rates(self, rates: list[float]) -> None:
        with torch.no_grad():
            for layer, rate in zip(self.layers, rates, strict=True):
                layer.p.fill_(rate)


# --- checks --------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_rate(name: str, value: object) -> None:
    if not (_is_number(value) and 0 <= value < 1):
        raise ParameterError(f"{name}={value!r} is not a probability in [0, 1)")


def _scalar(name: str, value: float | Tensor) -> float:
    """A Python float from a number or a one-element tensor, or ParameterError."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ParameterError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach())
    if not _is_number(value):
        raise ParameterError(f"{name}={value!r} is not a number")
    return float(value)
