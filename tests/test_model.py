"""Tests of demux.model's closed-form curvature: loss, gradient, exact and Gauss-Newton
Hessian products and the masks' Jacobian products against autograd, on small float64 models
with every parameter block (levels, gains, energy terms, details) and every penalty."""

from __future__ import annotations

import pytest
import torch

from demux.model import ModelInputs, SourceBlocks, VarianceModel
from demux.trust_region import Dropout, TrustRegionConfig, minimize, steihaug_cg
from demux.weighting import perceptual_weights

F64 = torch.float64
BLOCKS = [
    SourceBlocks(gain=True, detail=True, energy=None, smooth_time=0.7, smooth_freq=0.0, anchor_weight=0.0),
    SourceBlocks(gain=False, detail=False, energy=(0.5, 0.2), smooth_time=0.0, smooth_freq=0.4, anchor_weight=2.0),
    SourceBlocks(gain=True, detail=False, energy=None, smooth_time=0.0, smooth_freq=0.0, anchor_weight=0.0),
]


def _model(*, separable: bool, seed: int = 0, batch: int = 2, weight: torch.Tensor | None = None) -> VarianceModel:
    """Three sources on a 6 x 5 (freq, frame) grid, or on 30 packed coefficients;
    ``weight`` ``(30,)`` weighs the coefficients' divergences."""
    g = torch.Generator().manual_seed(seed)
    F, N = 6, 5
    Kf, S = F * N, len(BLOCKS)
    power = torch.rand(batch, Kf, generator=g, dtype=F64) * 2 + 0.05
    power[0, 3] = 0.0  # a coefficient of zero power (the eps of the divergence matters there)
    log_p = torch.log(power + 1e-10)
    if separable:
        group = (torch.arange(F) // 2).repeat_interleave(N)  # three bands of two bins
        frame = torch.arange(N).repeat(F)
        n_groups, n_frames, shape = 3, N, (F, N)
    else:
        group = torch.randint(0, 4, (Kf,), generator=g)
        frame = torch.randint(0, 3, (Kf,), generator=g)
        n_groups, n_frames, shape = 4, 3, (Kf,)
    support = torch.rand(S, Kf, generator=g, dtype=F64).clamp_min(0.2)
    support[2, :4] = 0.0
    inputs = ModelInputs(
        power=power,
        log_power=log_p - log_p.median(1, keepdim=True).values,
        local_energy=torch.randn(batch, Kf, generator=g, dtype=F64),
        prior=torch.randn(batch, S, Kf, generator=g, dtype=F64),
        support=support,
        locks=torch.zeros(S, Kf, dtype=torch.bool),
        group=group,
        n_groups=n_groups,
        frame=frame,
        n_frames=n_frames,
        grid_shape=shape,
        anchor=torch.randn(batch, S, n_groups, generator=g, dtype=F64),
        learned=torch.randn(S, n_groups, generator=g, dtype=F64),
        weight=weight,
    )
    return VarianceModel(BLOCKS, inputs, combiner="softmax", residual=None)


def _point(model: VarianceModel, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    theta0 = model.initial()
    return theta0 + 0.5 * torch.randn(theta0.shape, generator=g, dtype=F64)


DROPOUT = Dropout(rate=torch.tensor([0.3, 0.0], dtype=F64), seed=11)


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("dropout", [None, DROPOUT])
def test_closed_form_loss_gradient_and_hessian_match_autograd(separable, dropout):
    model = _model(separable=separable)
    theta = _point(model)
    x = theta.clone().requires_grad_(True)
    _assert_closed_form_matches_autograd(model, theta, x, model.objective(x, dropout), dropout)


def _assert_closed_form_matches_autograd(model, theta, x, loss, dropout):
    """``model.quadratic`` at ``theta`` equals autograd's loss, gradient and HVP of ``loss(x)``; returns ``(grad, v)``."""
    q = model.quadratic(theta, dropout)
    (grad,) = torch.autograd.grad(loss.sum(), x, create_graph=True)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    (hv,) = torch.autograd.grad(grad, x, grad_outputs=v)
    torch.testing.assert_close(q.loss, loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.grad, grad.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(q.hvp(v), hv, rtol=1e-10, atol=1e-12)
    return grad, v


def _autograd_gauss_newton(model: VarianceModel, theta: torch.Tensor, v: torch.Tensor, dropout) -> torch.Tensor:
    """``J^T diag(w max(D'', 0)) J v + H_penalty v`` with ``J = d log V / d theta`` by autograd."""
    x = model.inputs
    th = theta.clone().requires_grad_(True)
    log_v = torch.logsumexp(model.logits(th), dim=1)
    probe = torch.zeros_like(log_v, requires_grad=True)
    (jt_probe,) = torch.autograd.grad(log_v, th, grad_outputs=probe, create_graph=True)
    (jv,) = torch.autograd.grad(jt_probe, probe, grad_outputs=v)  # J v by the double-vjp trick
    ratio = (x.power * torch.exp(-log_v)).detach()
    weight = model._weights(dropout, like=ratio) / ratio.shape[1]
    second = (weight * ratio * (1 - 1e-12 / (ratio + 1e-12) ** 2)).clamp_min(0)
    (jt,) = torch.autograd.grad(log_v, th, grad_outputs=second * jv)
    pen = model.penalty(th, model.fitted_part(th))
    (pg,) = torch.autograd.grad(pen.sum(), th, create_graph=True)
    (ph,) = torch.autograd.grad(pg, th, grad_outputs=v)
    return jt + ph


@pytest.mark.parametrize("separable", [True, False])
def test_gauss_newton_product_matches_autograd_and_is_positive(separable):
    model = _model(separable=separable)
    theta = _point(model)
    q = model.quadratic(theta, DROPOUT, gauss_newton=True)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(theta.shape, generator=g, dtype=F64)
        hv = q.hvp(v)
        torch.testing.assert_close(hv, _autograd_gauss_newton(model, theta, v, DROPOUT), rtol=1e-9, atol=1e-12)
        assert bool(((v * hv).sum(1) >= 0).all())


@pytest.mark.parametrize("separable", [True, False])
def test_mask_vjp_matches_autograd(separable):
    model = _model(separable=separable)
    theta = _point(model)
    masks, vjp = model.mask_vjp(theta)
    w = torch.randn(masks.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    x = theta.clone().requires_grad_(True)
    reference = model.masks(x).flatten(1)
    (expected,) = torch.autograd.grad(reference, x, grad_outputs=w)
    torch.testing.assert_close(masks, reference.detach())
    torch.testing.assert_close(vjp(w), expected, rtol=1e-10, atol=1e-13)


def test_sigmoid_masks_fall_back_to_autograd():
    model = _model(separable=True)
    sigmoid = VarianceModel(model.blocks, model.inputs, combiner="sigmoid", residual=2)
    assert sigmoid.mask_vjp(model.initial()) is None


def test_cg_with_gauss_newton_reaches_the_newton_step_in_a_large_region():
    model = _model(separable=True, batch=1)
    theta = _point(model)
    q = model.quadratic(theta, None, gauss_newton=True)
    P = theta.shape[1]
    dense = torch.stack([q.hvp(e[None])[0] for e in torch.eye(P, dtype=F64)], 1)  # (P, P)
    newton = torch.linalg.solve(dense, -q.grad[0])
    cg = steihaug_cg(
        q.grad, q.hvp, metric=torch.ones_like(theta), radius=torch.tensor([1e6], dtype=F64),
        active=torch.tensor([True]), max_iter=4 * P,
    )
    assert not bool(cg.on_boundary[0])
    # CG stops at a relative residual min(0.5, sqrt|g|) |g|: compare the residuals, not the steps
    residual = q.grad[0] + dense @ cg.step[0]
    assert float(residual.norm()) <= min(0.5, float(q.grad.norm()) ** 0.5) * float(q.grad.norm())
    assert float((dense @ (cg.step[0] - newton)).norm()) < float(q.grad.norm())


@pytest.mark.parametrize("closed_masks", [False, True])
def test_minimize_with_the_closed_form_matches_autograd(closed_masks):
    model = _model(separable=True)
    config = TrustRegionConfig(max_iter=6, seed=4)
    masks = lambda th: model.masks(th).flatten(1)
    by_autograd = minimize(model.objective, model.initial(), masks=masks, config=config)
    vjp = model.mask_vjp if closed_masks else None
    closed = minimize(model.objective, model.initial(), masks=masks, config=config, curvature=model.quadratic,
                      mask_vjp=vjp)
    # the first step agrees to rounding; later ones drift apart along directions of nearly
    # zero curvature (where CG amplifies rounding), which the loss barely sees
    first = [minimize(model.objective, model.initial(), masks=masks, config=config.__class__(max_iter=1, seed=4),
                      curvature=c, mask_vjp=vjp if c else None) for c in (None, model.quadratic)]
    torch.testing.assert_close(first[1].theta, first[0].theta, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(closed.loss, by_autograd.loss, rtol=1e-3, atol=0)
    assert bool((closed.loss < model.objective(model.initial())).all())


@pytest.mark.parametrize("hessian", ["exact", "gauss-newton"])
def test_a_stage_fit_lowers_the_loss_and_repeats_bit_for_bit(hessian):
    model = _model(separable=True)
    config = TrustRegionConfig(max_iter=8, hessian=hessian, seed=2)
    masks = lambda th: model.masks(th).flatten(1)
    runs = [
        minimize(model.objective, model.initial(), masks=masks, config=config, curvature=model.quadratic,
                 mask_vjp=model.mask_vjp)
        for _ in range(2)
    ]
    assert torch.equal(runs[0].theta, runs[1].theta)
    start = model.objective(model.initial())
    assert bool((runs[0].loss < start - 1e-3).all())


def _weight() -> torch.Tensor:
    """``(30,)`` A-weighting of 6 bins x 5 frames at 0..5 kHz (bin 0 at 0 Hz: weight 0)."""
    freq = (torch.arange(6, dtype=F64) * 1000.0).repeat_interleave(5)
    return perceptual_weights(freq, "a-weighting")


def _naive_weighted_loss(model: VarianceModel, theta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``mean_k w_k coverage_k d_IS(P_k | V_k) + penalties``, written out from the logits."""
    x = model.inputs
    ratio = x.power * torch.exp(-torch.logsumexp(model.logits(theta), dim=1))
    coverage = x.support.sum(0).clamp(max=1.0)
    divergence = ratio - torch.log(ratio + 1e-12) - 1.0
    return (weight * coverage * divergence).mean(1) + model.penalty(theta, model.fitted_part(theta))


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("dropout", [None, DROPOUT])
def test_weighted_closed_form_matches_autograd_of_the_weighted_loss(separable, dropout):
    weight = _weight()
    model = _model(separable=separable, weight=weight)
    theta = _point(model)
    x = theta.clone().requires_grad_(True)
    loss = model.objective(x, dropout)
    if dropout is None:  # the objective is the weighted sum itself, not only self-consistent
        torch.testing.assert_close(loss, _naive_weighted_loss(model, x, weight), rtol=1e-12, atol=1e-12)
    grad, v = _assert_closed_form_matches_autograd(model, theta, x, loss, dropout)
    gn = model.quadratic(theta, dropout, gauss_newton=True)
    torch.testing.assert_close(gn.hvp(v), _autograd_gauss_newton(model, theta, v, dropout), rtol=1e-9, atol=1e-12)
    # the weights change the fit: the unweighted gradient differs by far more than the tolerance
    assert float((_model(separable=separable).quadratic(theta, dropout).grad - grad.detach()).abs().max()) > 1e-3


def test_unit_weights_reproduce_the_unweighted_fit_bit_for_bit():
    plain, ones = _model(separable=True), _model(separable=True, weight=torch.ones(30, dtype=F64))
    theta = _point(plain)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    q, q1 = plain.quadratic(theta, DROPOUT), ones.quadratic(theta, DROPOUT)
    assert torch.equal(q.loss, q1.loss) and torch.equal(q.grad, q1.grad) and torch.equal(q.hvp(v), q1.hvp(v))
    config = TrustRegionConfig(max_iter=6, seed=3)
    fits = [
        minimize(m.objective, m.initial(), masks=lambda th, m=m: m.masks(th).flatten(1), config=config,
                 curvature=m.quadratic, mask_vjp=m.mask_vjp)
        for m in (plain, ones)
    ]
    assert torch.equal(fits[0].theta, fits[1].theta)
    assert bool((fits[0].loss < plain.objective(plain.initial()) - 1e-3).all())  # it did fit
