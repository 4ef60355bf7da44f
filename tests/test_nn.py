"""Tests of demux.nn: TransformDropout (shapes, eval identity, unbiasedness, energy-informed
drop frequencies, gradients, torch.compile) and TrustRegionController (radius-bounded rate
changes, reaching the floor, the radius rule, state round trips)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from demux.errors import ParameterError
from demux.nn import (
    MAX_DROP,
    TransformDropout,
    TrustRegionController,
    draw_gains,
    drop_probabilities,
    lowered_rates,
)
from demux.transforms import build_transform

F64 = torch.float64

#: Small transform settings for short test signals (the STFT's default 1024-sample frame
#: would be mostly padding).
TRANSFORMS = {
    "fft": {},
    "dct": {},
    "dwt": {"wavelet": "db2"},
    "stft": {"n_fft": 16, "hop": 4},
}


def _layer(name: str, **kwargs) -> TransformDropout:
    return TransformDropout(name, **{**TRANSFORMS[name], **kwargs})


def _tone_plus_noise(length: int, *, bin_: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """``(length,)`` a strong cosine on FFT bin ``bin_`` plus weak white noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=F64)
    x = 3 * torch.cos(2 * math.pi * bin_ * t / length + 0.4) + 0.1 * torch.randn(length, generator=g, dtype=F64)
    return x.to(dtype)


# --- TransformDropout ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("shape", [(40,), (3, 40), (2, 3, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_shape_dtype_device_preserved(name, shape, dtype):
    layer = _layer(name).to(dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert not torch.allclose(y, x), "training mode should perturb the input"
    assert torch.isfinite(y).all()


def test_low_precision_input_keeps_its_dtype():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    y = TransformDropout("fft", p=0.3)(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape and torch.isfinite(y.float()).all()


def test_rows_are_independent_of_how_leading_dims_are_packed():
    x = torch.randn(2, 3, 40, generator=torch.Generator().manual_seed(3), dtype=F64)
    layer = _layer("dct").double()
    torch.manual_seed(7)
    y3 = layer(x)
    torch.manual_seed(7)
    y2 = layer(x.reshape(6, 40))
    torch.testing.assert_close(y3.reshape(6, 40), y2, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_eval_mode_is_identity(name):
    layer = _layer(name, p=0.5).eval()
    x = torch.randn(5, 2, 33, generator=torch.Generator().manual_seed(4))
    assert torch.equal(layer(x), x)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_mean_over_draws_equals_input(name):
    """Unbiased: over N = 4000 draws the per-sample mean lies within 5 standard errors
    (estimated from the same draws) of the input, at every one of the 64 samples. A bias
    of the size of the noise itself (e.g. no 1/(1 - p_k) rescaling: ~30% of the signal)
    is thousands of standard errors."""
    n_draws, length = 4000, 64
    x = _tone_plus_noise(length, bin_=5, seed=5, dtype=F64) + torch.linspace(-1, 1, length, dtype=F64)
    layer = _layer(name, p=0.3).double()
    torch.manual_seed(11)
    draws = layer(x.expand(n_draws, length).contiguous())
    mean, sem = draws.mean(0), draws.std(0) / math.sqrt(n_draws)
    assert (draws.std(0) > 1e-3).all(), "the draws should vary"
    z = (mean - x).abs() / sem
    assert z.max() < 5.0, f"max deviation {z.max():.2f} standard errors"


def test_drop_probabilities_formula():
    g = torch.Generator().manual_seed(6)
    coeffs = torch.randn(3, 50, generator=g, dtype=F64) * torch.logspace(0, -3, 50, dtype=F64)
    p = 0.2
    probabilities = drop_probabilities(coeffs, p=p, energy_weight=1.0)
    assert probabilities.max() < MAX_DROP  # no capping for these rows, so the mean is exact
    torch.testing.assert_close(probabilities.mean(1), torch.full((3,), p, dtype=F64), rtol=1e-12, atol=0)
    # a function of level-normalised power: invariant to the input gain
    torch.testing.assert_close(drop_probabilities(7.5 * coeffs, p=p), probabilities, rtol=1e-9, atol=1e-12)
    # monotone: more energy, lower probability
    order = coeffs.square().argsort(dim=1)
    assert (probabilities.gather(1, order).diff(dim=1) <= 1e-15).all()
    uniform = drop_probabilities(coeffs, p=p, energy_weight=0.0)
    torch.testing.assert_close(uniform, torch.full_like(uniform, p), rtol=1e-12, atol=0)


def test_drop_probabilities_are_capped():
    coeffs = torch.cat([torch.full((1, 90), 10.0, dtype=F64), torch.full((1, 10), 1e-3, dtype=F64)], dim=1)
    probabilities = drop_probabilities(coeffs, p=0.9, energy_weight=5.0)
    assert probabilities.max() == pytest.approx(MAX_DROP)


@pytest.mark.parametrize("name", ["fft", "dct"])
def test_high_energy_coefficients_are_dropped_less_often(name):
    """Measured through the layer: re-analysing its output with the same (exactly
    invertible) transform reveals each draw's gains; a zero gain is a drop. Each
    coefficient's drop frequency over N = 3000 draws must match ``p_k`` within 5 binomial
    standard errors, and the strongest quarter must be dropped less than the weakest."""
    n_draws, length, p = 3000, 64, 0.3
    x = _tone_plus_noise(length, bin_=9, seed=8, dtype=F64)
    layer = TransformDropout(name, p=p).double()
    transform = build_transform(name, 1.0).double()
    torch.manual_seed(12)
    y = layer(x.expand(n_draws, length).contiguous())
    c_x = transform(x.view(1, 1, length))[0, 0]
    ratio = (transform(y[:, None])[:, 0] / c_x).abs()
    freq = (ratio < 0.5).to(F64).mean(0)

    expected = drop_probabilities(c_x[None], p=p)[0]
    tol = 5 * torch.sqrt(expected * (1 - expected) / n_draws) + 1e-9
    assert ((freq - expected).abs() <= tol).all()
    strength = transform(x.view(1, 1, length))[0, 0].abs()
    order = strength.argsort()
    quarter = length // 8 if name == "fft" else length // 4
    weak, strong = freq[order[:quarter]].mean(), freq[order[-quarter:]].mean()
    assert strong < 0.5 * p < p < weak


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_gradcheck_with_a_fixed_draw(name):
    """float64 gradcheck of the whole layer; with ``energy_weight=0`` the drop rates do
    not depend on the input, so a fixed seed makes the layer one fixed linear map."""
    layer = _layer(name, p=0.4, energy_weight=0.0).double()
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(9), dtype=F64, requires_grad=True)

    def fn(x):
        torch.manual_seed(3)
        return layer(x)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_backward_is_the_drawn_linear_map(name):
    """With energy-dependent rates the gradient is that of ``x -> T^-1(gain * T x)`` with
    the draw held fixed, as for nn.Dropout's mask. The reference replays the draw through
    the functional layer (same seed, same single ``torch.rand``) and differentiates that
    fixed linear map. (``<J^T v, x> = <v, y>`` would not do: the rates are invariant to
    the input's gain, so even a gradient through them satisfies it, by Euler's theorem.)"""
    layer = _layer(name, p=0.4, energy_weight=2.0).double()
    g = torch.Generator().manual_seed(10)
    x = torch.randn(3, 32, generator=g, dtype=F64, requires_grad=True)
    v = torch.randn(3, 32, generator=g, dtype=F64)
    torch.manual_seed(4)
    y = layer(x)
    (grad,) = torch.autograd.grad((y * v).sum(), x)

    transform = layer.transform
    coeffs = transform(x[:, None])
    torch.manual_seed(4)
    gains = draw_gains(drop_probabilities(coeffs.detach()[:, 0], p=layer.p, energy_weight=2.0))[:, None]
    reference = transform.inverse(gains * coeffs, 32)[:, 0]
    torch.testing.assert_close(reference, y, rtol=0, atol=1e-12)  # the replay is the same draw
    (expected,) = torch.autograd.grad((reference * v).sum(), x)
    assert (gains == 0).any() and grad.abs().sum() > 0
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_state_dict_round_trip_of_the_layer():
    layer = _layer("stft", p=0.3, target_p=0.05)
    layer.p.fill_(0.123)
    fresh = _layer("stft", p=0.3, target_p=0.05)
    fresh.load_state_dict(layer.state_dict())
    assert float(fresh.p) == pytest.approx(0.123)
    assert "p" in layer.state_dict()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"transform": "pca"}, "not one of fft, dct, dwt, stft"),
        ({"p": 1.0}, r"p=1.0 is not a probability"),
        ({"p": -0.1}, r"p=-0.1 is not a probability"),
        ({"target_p": 1.5}, "target_p=1.5"),
        ({"energy_weight": -1.0}, "energy_weight=-1.0"),
        ({"transform": "stft", "nfft": 8}, "has no parameter 'nfft'"),
    ],
)
def test_layer_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        TransformDropout(**kwargs)


def test_layer_rejects_non_float_input():
    with pytest.raises(ParameterError, match="real floating"):
        TransformDropout("fft")(torch.ones(4, 8, dtype=torch.int64))


@pytest.mark.parametrize(
    "name", ["fft", *(pytest.param(n, marks=pytest.mark.slow) for n in ("dct", "dwt", "stft"))]
)
def test_torch_compile_smoke(name):
    """aot_eager runs the same aten ops with the global generator: the compiled layer
    matches eager under the same seed, passes gradients, reads the rate buffer at call
    time (a controller lowers it in place) and, in eval mode, returns its input. One
    graph, except for the DWT: its level count calls pywt (Cython), a graph break. The
    first compilation in a process takes ~5 s, each further one 2-6 s: only the FFT runs
    by default."""
    torch._dynamo.reset()
    layer = _layer(name, p=0.3)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=name != "dwt")
    x = torch.randn(8, 48, generator=torch.Generator().manual_seed(13), requires_grad=True)

    torch.manual_seed(5)
    expected = layer(x)
    torch.manual_seed(5)
    out = compiled(x)
    torch.testing.assert_close(out, expected)
    (grad,) = torch.autograd.grad((out * x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    layer.p.fill_(0.0)  # no drops: the layer is a round trip through the transform
    torch.testing.assert_close(compiled(x), x, rtol=1e-5, atol=1e-5)
    layer.eval()
    assert torch.equal(compiled(x), x)


# --- TrustRegionController -----------------------------------------------------------


def _controlled(rates, *, target=None, **kwargs):
    controller = TrustRegionController(**kwargs)
    layers = [
        TransformDropout("dct", p=r, target_p=None if target is None else target[i], controller=controller)
        for i, r in enumerate(rates)
    ]
    return controller, layers


def test_layers_register_by_argument_by_module_and_once():
    model = nn.Sequential(TransformDropout("fft"), nn.Linear(4, 4), nn.Sequential(TransformDropout("dct", p=0.2)))
    scanned = TrustRegionController(model)
    assert [float(layer.p) for layer in scanned.layers] == pytest.approx([0.3, 0.2])
    listed = TrustRegionController([model[0], model[0]])
    assert len(listed.layers) == 1
    with pytest.raises(ParameterError, match="only TransformDropout"):
        TrustRegionController([nn.Dropout()])


def test_rates_never_move_more_than_the_radius_and_are_never_raised():
    controller, _ = _controlled([0.5, 0.3, 0.05], radius0=0.02, decay=0.5, floor=0.01)
    g = torch.Generator().manual_seed(14)
    loss = 10.0
    decreases = 0
    for _ in range(200):
        after = loss - 0.1 - 0.05 * float(torch.randn((), generator=g))  # noisy, mostly decreasing
        before_rates = controller.rates()
        record = controller.step(loss, after)
        change = [b - a for b, a in zip(before_rates, record.rates)]
        # the rates live in float32 buffers: a change is exact to their rounding, ~3e-8
        assert all(-1e-7 <= c <= record.radius + 1e-7 for c in change)
        decreases += any(c > 0 for c in change)
        loss = after
    assert decreases > 5  # the bound was tested on real moves


def test_rates_reach_their_floors_under_steadily_decreasing_loss():
    controller, _ = _controlled([0.5, 0.3], target=[None, 0.1], floor=0.02)
    for t in range(100):
        controller.step(0.99**t, 0.99 ** (t + 1))
    assert controller.rates() == pytest.approx([0.02, 0.1], abs=1e-7)
    rhos = [s.rho for s in controller.trajectory]
    assert math.isnan(rhos[0]) and all(r > 0.75 for r in rhos[1:])


def test_radius_shrinks_on_a_loss_increase():
    controller, _ = _controlled([0.3], radius0=0.04, gamma1=0.25)
    before = controller.rates()
    record = controller.step(1.0, 1.2)  # first step: no prediction yet, but the loss rose
    assert record.rho == -math.inf and controller.radius == pytest.approx(0.01)
    controller.step(1.2, 1.0)
    controller.step(1.0, 0.8, predicted_decrease=0.25)  # rho = 0.8: very successful
    radius = controller.radius
    controller.step(0.8, 0.9)  # an increase against a positive running average
    assert controller.radius == pytest.approx(0.25 * radius)
    controller.step(0.9, 0.85, predicted_decrease=1.0)  # rho = 0.05 < eta1
    assert controller.radius == pytest.approx(0.25 * 0.25 * radius)
    assert controller.rates()[0] < before[0]


def test_radius_grows_only_when_it_bounded_a_rate():
    controller, _ = _controlled([0.4], radius0=0.01, radius_max=0.03, decay=0.5)
    radii = []
    for t in range(4):
        radii.append(controller.step(1.0 - 0.1 * t, 0.9 - 0.1 * t, predicted_decrease=0.1).radius)
    assert radii == pytest.approx([0.01, 0.02, 0.03, 0.03])
    free, _ = _controlled([0.4], radius0=0.1, decay=0.9)  # the decay (0.04) binds, not the radius
    free.step(1.0, 0.9, predicted_decrease=0.1)
    assert free.radius == pytest.approx(0.1)


def test_lowered_rates_rule():
    rates = torch.tensor([0.5, 0.3, 0.05, 0.02], dtype=F64)
    floors = torch.tensor([0.01, 0.01, 0.048, 0.05], dtype=F64)
    new, bound = lowered_rates(
        rates, floors=floors, radius=torch.tensor([0.04], dtype=F64), decay=0.9, very_successful=torch.tensor([True])
    )
    # 0.5: decay wants 0.45, the radius allows 0.46; 0.3 -> 0.27; 0.05 wants 0.045 but stops at its
    # floor 0.048; 0.02 is below its floor: held, not raised
    torch.testing.assert_close(new, torch.tensor([0.46, 0.27, 0.048, 0.02], dtype=F64))
    assert bool(bound)
    held, _ = lowered_rates(
        rates, floors=floors, radius=torch.tensor([0.04], dtype=F64), decay=0.9, very_successful=torch.tensor([False])
    )
    assert torch.equal(held, rates)


def test_controller_state_dict_round_trip(tmp_path):
    def run(controller, losses):
        return [controller.step(a, b) for a, b in itertools.pairwise(losses)]

    losses = [1.0, 0.9, 0.85, 0.86, 0.8, 0.7, 0.69, 0.6, 0.65, 0.5]
    original, _ = _controlled([0.3, 0.2], radius0=0.03)
    run(original, losses[:6])
    path = tmp_path / "controller.pt"
    torch.save(original.state_dict(), path)

    restored, layers = _controlled([0.3, 0.2], radius0=0.03)
    restored.load_state_dict(torch.load(path))
    assert restored.rates() == original.rates() and [float(layer.p) for layer in layers] == original.rates()
    def logged(records):  # to_dict: NaN (no prediction yet) compares unequal to itself
        return [r.to_dict() for r in records]

    assert restored.radius == original.radius
    assert logged(restored.trajectory) == logged(original.trajectory)
    assert logged(run(restored, losses[5:])) == logged(run(original, losses[5:]))
    assert original.trajectory[-1].to_dict()["rates"] == original.rates()

    other, _ = _controlled([0.3])
    with pytest.raises(ParameterError, match="2 layer rates but 1 layers"):
        other.load_state_dict(original.state_dict())
    with pytest.raises(ParameterError, match="must have the keys"):
        other.load_state_dict({"radius": 0.1})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"floor": 1.0}, "floor=1.0 is not a probability"),
        ({"decay": 0.0}, r"decay=0.0 is not a number in \(0, 1\]"),
        ({"smoothing": 1.0}, r"smoothing=1.0 is not a number in \[0, 1\)"),
        ({"gamma1": 2.0}, r"gamma1=2.0 is not in \(0, 1\)"),
        ({"radius0": 1.0, "radius_max": 0.5}, "radii must satisfy"),
    ],
)
def test_controller_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        TrustRegionController(**kwargs)


def test_controller_step_rejects_non_scalars():
    controller, _ = _controlled([0.3])
    with pytest.raises(ParameterError, match="loss_before must be a scalar"):
        controller.step(torch.ones(2), 0.5)
    with pytest.raises(ParameterError, match="loss_after='x' is not a number"):
        controller.step(1.0, "x")
