"""Tests of demux.trust_region: convergence against scipy's trust-ncg, the radius and
dropout rules read from the trajectory, the mask-norm constraint, batching, determinism."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.optimize
import torch

from demux.errors import ParameterError
from demux.trust_region import (
    DROPOUT_SCHEDULES,
    Dropout,
    Quadratic,
    TrustRegionConfig,
    dropout_cap,
    edge_weight,
    minimize,
    steihaug_cg,
    trust_ratio,
)

F64 = torch.float64
#: scipy's trust-ncg radii, so that our iterates are directly comparable with its own.
SCIPY_RADII = {"radius0": 1.0, "radius_max": 1000.0}




def _spd(batch: int, dim: int, *, seed: int, low: float = 0.5, high: float = 4.5) -> torch.Tensor:
    """``(batch, dim, dim)`` symmetric positive definite, eigenvalues in [low, high]."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(batch, dim, dim, generator=g, dtype=F64))[0]
    eig = low + (high - low) * torch.rand(batch, dim, generator=g, dtype=F64)
    return q @ torch.diag_embed(eig) @ q.transpose(1, 2)


def _quadratic(a: torch.Tensor, c: torch.Tensor):
    """``f_b(x) = x.A_b x / 2 - c_b.x`` (ignores dropout)."""

    def objective(theta, dropout=None):
        return 0.5 * torch.einsum("bp,bpq,bq->b", theta, a, theta) - (c * theta).sum(1)

    return objective


def _rosenbrock(theta, dropout=None):
    return (100 * (theta[:, 1:] - theta[:, :-1] ** 2) ** 2 + (1 - theta[:, :-1]) ** 2).sum(1)


def _keep(dropout: Dropout | None, size: int, like: torch.Tensor) -> torch.Tensor:
    """Inverted-dropout weights ``(B, size)`` from one ``(size,)`` draw shared by the items."""
    if dropout is None:
        return torch.ones(1, size, dtype=like.dtype, device=like.device)
    u = torch.rand(size, generator=torch.Generator().manual_seed(dropout.seed), dtype=like.dtype).to(like.device)
    rate = dropout.rate[:, None]
    return (u[None] >= rate).to(like.dtype) / (1 - rate)


def _dropout_quadratic(target: torch.Tensor, weight: torch.Tensor):
    """``sum_i keep_i w_i (theta_i - t_i)^2 / 2``: quadratic under any one draw."""

    def objective(theta, dropout):
        return 0.5 * (_keep(dropout, theta.shape[1], theta) * weight * (theta - target) ** 2).sum(1)

    return objective


S, K = 3, 6


def _softmax_masks(theta):
    """Masks ``(B, S*K)``: softmax over S sources of logits ``theta`` reshaped ``(S, K)``."""
    return theta.view(-1, S, K).softmax(dim=1).reshape(-1, S * K)


def _mask_targets(batch: int, *, seed: int) -> torch.Tensor:
    """``(batch, S*K)`` reachable target masks."""
    g = torch.Generator().manual_seed(seed)
    return _softmax_masks(2 * torch.randn(batch, S * K, generator=g, dtype=F64))


def _mask_objective(target: torch.Tensor):
    """Squared error between softmax masks and ``target`` (under dropout)."""

    def objective(theta, dropout):
        m = _softmax_masks(theta)
        return (_keep(dropout, S * K, theta) * (m - target) ** 2).sum(1)

    return objective


def _stack(result, name: str) -> torch.Tensor:
    """``(n_iter, B)`` of one trajectory field."""
    return torch.stack([getattr(step, name) for step in result.trajectory])


# --- convergence ----------------------------------------------------------------------


def test_batch_of_quadratics_reaches_their_minima_like_scipy():
    B, P = 4, 6
    a = _spd(B, P, seed=1)
    c = torch.randn(B, P, generator=torch.Generator().manual_seed(2), dtype=F64)
    objective = _quadratic(a, c)
    cfg = TrustRegionConfig(max_iter=100, gtol=1e-9, dropout_schedule="none")
    result = minimize(objective, torch.zeros(B, P, dtype=F64), config=cfg)

    exact = torch.linalg.solve(a, c)
    torch.testing.assert_close(result.theta, exact, atol=1e-8, rtol=0)
    assert result.success.all()
    torch.testing.assert_close(result.loss, objective(exact), atol=1e-12, rtol=0)
    for b in range(B):
        a_b, c_b = a[b].numpy(), c[b].numpy()
        oracle = scipy.optimize.minimize(
            lambda x: 0.5 * x @ a_b @ x - c_b @ x,
            np.zeros(P),
            jac=lambda x: a_b @ x - c_b,
            hessp=lambda x, p: a_b @ p,
            method="trust-ncg",
            options={"gtol": 1e-9},
        )
        np.testing.assert_allclose(result.theta[b].numpy(), oracle.x, atol=1e-8)


@pytest.mark.parametrize("dim", [2, 10])
def test_rosenbrock_follows_scipy_trust_ncg(dim):
    x0 = torch.full((1, dim), -1.0, dtype=F64)
    x0[0, ::2] = -1.2
    cfg = TrustRegionConfig(max_iter=300, gtol=1e-8, dropout_schedule="none", **SCIPY_RADII)
    result = minimize(_rosenbrock, x0, config=cfg)
    oracle = scipy.optimize.minimize(
        scipy.optimize.rosen,
        x0[0].numpy(),
        jac=scipy.optimize.rosen_der,
        hessp=scipy.optimize.rosen_hess_prod,
        method="trust-ncg",
        options={"gtol": 1e-8},
    )
    assert oracle.success
    np.testing.assert_allclose(result.theta[0].numpy(), oracle.x, atol=1e-7)
    np.testing.assert_allclose(result.theta[0].numpy(), np.ones(dim), atol=1e-7)
    assert result.status.tolist() == [0]
    # same radius rule and Steihaug-CG: the same path, not just the same end
    assert abs(result.n_iter - oracle.nit) <= 2


@pytest.mark.parametrize("hessian", ["exact", "diagonal", "lbfgs"])
def test_each_hessian_mode_converges_on_quadratics(hessian):
    B, P = 3, 5
    a = _spd(B, P, seed=3, low=1.0, high=3.0)
    c = torch.randn(B, P, generator=torch.Generator().manual_seed(4), dtype=F64)
    cfg = TrustRegionConfig(hessian=hessian, max_iter=200, gtol=1e-9, dropout_schedule="none")
    result = minimize(_quadratic(a, c), torch.zeros(B, P, dtype=F64), config=cfg)
    torch.testing.assert_close(result.theta, torch.linalg.solve(a, c), atol=1e-5, rtol=0)
    assert result.success.all()


@pytest.mark.parametrize("dim", [2, 10])
def test_lbfgs_on_rosenbrock(dim):
    x0 = torch.full((1, dim), -1.0, dtype=F64)
    x0[0, ::2] = -1.2
    cfg = TrustRegionConfig(hessian="lbfgs", max_iter=300, gtol=1e-8, dropout_schedule="none", **SCIPY_RADII)
    result = minimize(_rosenbrock, x0, config=cfg)
    torch.testing.assert_close(result.theta, torch.ones(1, dim, dtype=F64), atol=1e-6, rtol=0)


# --- Steihaug-CG ----------------------------------------------------------------------


def _model(g, h, p):
    return (g * p).sum(1) + 0.5 * torch.einsum("bp,bpq,bq->b", p, h, p)


def test_first_cg_iterate_is_the_cauchy_point_in_the_metric():
    B, P = 3, 4
    gen = torch.Generator().manual_seed(5)
    h = _spd(B, P, seed=6)
    g = torch.randn(B, P, generator=gen, dtype=F64)
    metric = 0.5 + torch.rand(B, P, generator=gen, dtype=F64)
    radius = torch.tensor([10.0, 0.05, 1.0], dtype=F64)
    cg = steihaug_cg(
        g,
        lambda v: torch.einsum("bpq,bq->bp", h, v),
        metric=metric,
        radius=radius,
        active=torch.ones(B, dtype=torch.bool),
        max_iter=1,
    )
    d = -g / metric
    tau = (g * g / metric).sum(1) / torch.einsum("bp,bpq,bq->b", d, h, d)
    d_norm = (metric * d * d).sum(1).sqrt()
    tau = torch.minimum(tau, radius / d_norm)
    torch.testing.assert_close(cg.step, tau[:, None] * d, atol=1e-12, rtol=0)
    assert cg.on_boundary.tolist() == (tau * d_norm >= radius - 1e-12).tolist()
    assert cg.on_boundary[1] and not cg.on_boundary[0]
    torch.testing.assert_close(cg.decrease, -_model(g, h, cg.step), atol=1e-12, rtol=0)


def test_cg_inside_the_region_meets_its_residual_tolerance():
    B, P = 2, 8
    h = _spd(B, P, seed=7)
    # a small gradient asks for a tight residual, min(0.5, sqrt(||g||)) ||g|| = 1e-2 ||g||
    g = torch.randn(B, P, generator=torch.Generator().manual_seed(8), dtype=F64)
    g = 1e-4 * g / g.norm(dim=1, keepdim=True)
    def solve(max_iter: int):
        return steihaug_cg(
            g,
            lambda v: torch.einsum("bpq,bq->bp", h, v),
            metric=torch.ones(B, P, dtype=F64),
            radius=torch.full((B,), 1e3, dtype=F64),
            active=torch.ones(B, dtype=torch.bool),
            max_iter=max_iter,
        )

    cg = solve(50)
    residual = (g + torch.einsum("bpq,bq->bp", h, cg.step)).norm(dim=1)
    gnorm = g.norm(dim=1)
    assert (residual <= torch.clamp(gnorm.sqrt(), max=0.5) * gnorm).all()
    assert not cg.on_boundary.any()
    torch.testing.assert_close(cg.decrease, -_model(g, h, cg.step), atol=1e-10, rtol=0)
    # the model can only improve with more CG iterations than the Cauchy point
    assert (cg.decrease > solve(1).decrease).all()


def test_negative_curvature_goes_to_the_boundary_and_inactive_items_stay():
    P = 3
    h = torch.diag_embed(torch.tensor([[-2.0, 1.0, 1.0], [1.0, 2.0, 3.0]], dtype=F64))
    g = torch.tensor([[0.1, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    metric = torch.tensor([[4.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
    radius = torch.tensor([0.5, 0.5], dtype=F64)
    cg = steihaug_cg(
        g,
        lambda v: torch.einsum("bpq,bq->bp", h, v),
        metric=metric,
        radius=radius,
        active=torch.tensor([True, False]),
        max_iter=10,
    )
    assert cg.on_boundary.tolist() == [True, False]
    # ||p||_D = radius along -g: p_0 = -0.5 / sqrt(4)
    torch.testing.assert_close(cg.step[0], torch.tensor([-0.25, 0.0, 0.0], dtype=F64), atol=1e-12, rtol=0)
    assert torch.equal(cg.step[1], torch.zeros(P, dtype=F64))
    torch.testing.assert_close(cg.decrease, -_model(g, h, cg.step), atol=1e-12, rtol=0)


# --- radius rule ----------------------------------------------------------------------


def test_radius_shrinks_after_a_rejected_and_after_a_poor_step():
    """``sqrt(1 + x^2)``: its quadratic model predicts far too much for long steps.

    From x=3 a step of 10 lands at -7, worse (rejected); from x=6 it lands at -4,
    better but rho ~ 0.2 (accepted, yet shrunk)."""
    theta0 = torch.tensor([[3.0], [6.0]], dtype=F64)
    cfg = TrustRegionConfig(radius0=10.0, radius_max=100.0, max_iter=3, dropout_schedule="none")
    result = minimize(lambda x, d: torch.sqrt(1 + x[:, 0] ** 2), theta0, config=cfg)
    first, second = result.trajectory[:2]
    assert first.accepted.tolist() == [False, True]
    assert first.rho[0] < 0 and cfg.eta0 < first.rho[1] < cfg.eta1
    torch.testing.assert_close(second.radius, cfg.gamma1 * first.radius)
    torch.testing.assert_close(first.objective, torch.sqrt(1 + torch.tensor([3.0, 4.0], dtype=F64) ** 2))


def test_radius_grows_after_a_very_successful_boundary_step_up_to_radius_max():
    cfg = TrustRegionConfig(max_iter=6, dropout_schedule="none")
    target = torch.full((1, 3), 10.0, dtype=F64)
    result = minimize(lambda x, d: 0.5 * ((x - target) ** 2).sum(1), torch.zeros(1, 3, dtype=F64), config=cfg)
    radius, rho = _stack(result, "radius")[:, 0], _stack(result, "rho")[:, 0]
    assert (rho > cfg.eta2).all() and _stack(result, "accepted").all()
    # every step ends on the boundary: its length is the radius it was given
    torch.testing.assert_close(_stack(result, "mask_change")[:, 0], radius)
    expected = torch.clamp(cfg.radius0 * cfg.gamma2 ** torch.arange(6, dtype=F64), max=cfg.radius_max)
    torch.testing.assert_close(radius, expected)


# --- steps measured on masks ----------------------------------------------------------


def test_mask_change_stays_within_overshoot_and_the_masks_reach_their_target():
    B = 3
    target = _mask_targets(B, seed=9)
    objective = _mask_objective(target)
    cfg = TrustRegionConfig(max_iter=60, gtol=1e-9, dropout_schedule="none")
    result = minimize(objective, torch.zeros(B, S * K, dtype=F64), masks=_softmax_masks, config=cfg)
    change, radius = _stack(result, "mask_change"), _stack(result, "radius")
    accepted = _stack(result, "accepted")
    assert accepted.sum() >= 10
    assert (change[accepted] <= cfg.overshoot * radius[accepted]).all()
    # the calibrated diagonal metric is an estimate, not a loose bound: steps that end
    # on its boundary move the masks by about the radius
    boundary = accepted & _stack(result, "on_boundary")
    assert boundary.sum() >= 5
    ratio = change[boundary] / radius[boundary]
    assert ((ratio > 0.75) & (ratio <= cfg.overshoot)).all()
    torch.testing.assert_close(_softmax_masks(result.theta), target, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("hessian", "tolerance"), [("exact", 1e-6), ("diagonal", 1e-3), ("lbfgs", 1e-5)])
def test_each_hessian_mode_reaches_target_masks(hessian, tolerance):
    """Softmax masks have a flat direction per column (adding a constant to the logits)
    and a metric that Hutchinson estimates noisily; every model must cope."""
    target = _mask_targets(3, seed=9)
    cfg = TrustRegionConfig(max_iter=150, gtol=1e-9, dropout_schedule="none", hessian=hessian)
    result = minimize(_mask_objective(target), torch.zeros(3, S * K, dtype=F64), masks=_softmax_masks, config=cfg)
    torch.testing.assert_close(_softmax_masks(result.theta), target, atol=tolerance, rtol=0)


def test_a_step_that_moves_the_masks_too_far_is_pulled_back_to_the_boundary():
    """Masks ``theta^3`` are flat at 0.01, so the linearised metric allows a unit step
    whose true mask change is ~20x the radius; the step is shortened along its ray
    (not thrown away), and the shortened step's model decrease is exact for this
    quadratic objective, so rho is 1."""
    cfg = TrustRegionConfig(max_iter=2, dropout_schedule="none")
    result = minimize(
        lambda x, d: ((x - 1) ** 2).sum(1),
        torch.full((1, 4), 0.01, dtype=F64),
        masks=lambda x: x**3,
        config=cfg,
    )
    first = result.trajectory[0]
    assert first.accepted[0]
    assert 0 < first.mask_change[0] <= cfg.overshoot * first.radius[0]
    torch.testing.assert_close(first.rho, torch.ones(1, dtype=F64))
    assert result.loss[0] < 4 * (1 - 0.01) ** 2  # it moved toward the minimum
    payload = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert len(payload["trajectory"]) == 2


def test_trust_ratio_rejects_a_mask_change_beyond_the_overshoot():
    rho = trust_ratio(
        torch.tensor([1.0, 1.0]),
        torch.tensor([1.0, 1.0]),
        mask_change=torch.tensor([0.06, 0.07]),
        radius=torch.tensor([0.05, 0.05]),
        overshoot=1.25,
    )
    assert rho[0] == 1.0 and rho[1] == -math.inf


# --- dropout --------------------------------------------------------------------------


def test_current_and_trial_point_share_one_draw_per_iteration():
    seeds: list[int | None] = []
    target = torch.tensor([[1.0, -2.0, 3.0, 0.5, -1.0, 2.0]], dtype=F64)
    quadratic = _dropout_quadratic(target, torch.linspace(1, 3, 6, dtype=F64))

    def objective(theta, dropout):
        seeds.append(None if dropout is None else dropout.seed)
        return quadratic(theta, dropout)

    cfg = TrustRegionConfig(max_iter=8, gtol=0.0, dropout_schedule="constant", dropout0=0.4)
    result = minimize(objective, torch.zeros_like(target), config=cfg)
    assert seeds[-1] is None and len(seeds) == 2 * result.n_iter + 1
    current, trial = seeds[0:-1:2], seeds[1:-1:2]
    assert current == trial and len(set(current)) == result.n_iter
    # with the same draw the exact model of a quadratic is exact: rho = 1
    rho = _stack(result, "rho")
    torch.testing.assert_close(rho, torch.ones_like(rho), atol=1e-9, rtol=0)
    torch.testing.assert_close(result.loss, quadratic(result.theta, None))


def _dropout_run(schedule: str, **overrides):
    rates: list[torch.Tensor] = []
    target = torch.linspace(-2, 2, 8, dtype=F64).expand(2, 8)
    quadratic = _dropout_quadratic(target, torch.linspace(0.5, 2, 8, dtype=F64))

    def objective(theta, dropout):
        rates.append(None if dropout is None else dropout.rate)
        return quadratic(theta, dropout) + 0.05 * (theta**4).sum(1)

    settings = {"max_iter": 30, "gtol": 0.0, "radius_min": 0.0, "dropout_schedule": schedule} | overrides
    cfg = TrustRegionConfig(**settings)
    result = minimize(objective, torch.tensor([[0.0] * 8, [3.0] * 8], dtype=F64), config=cfg)
    return cfg, result, rates


@pytest.mark.parametrize("schedule", ["controlled", "linear"])
def test_annealed_dropout_never_rises_and_ends_at_the_floor(schedule):
    # a radius held below dropout_decay * rate, and a cap falling slower than it
    cfg, result, rates = _dropout_run(schedule, radius0=0.01, radius_max=0.01, max_iter=60)
    rate, rho, radius = _stack(result, "dropout"), _stack(result, "rho"), _stack(result, "radius")
    assert result.n_iter == cfg.max_iter
    assert torch.equal(rate[: cfg.warmup], torch.full_like(rate[: cfg.warmup], cfg.dropout0))
    assert (rate[1:] <= rate[:-1]).all()
    assert torch.equal(rate[-1], torch.full_like(rate[-1], cfg.dropout_floor))
    caps = torch.tensor([dropout_cap(t, config=cfg) for t in range(cfg.max_iter)], dtype=F64)
    assert (rate <= caps[:, None] + 1e-15).all()
    # the objective saw the rate the trajectory reports, twice per iteration
    assert all(torch.equal(seen, rate[t // 2]) for t, seen in enumerate(rates[:-1]))
    if schedule == "linear":
        torch.testing.assert_close(rate, caps[:, None].expand_as(rate))
        return
    # controlled: below the cap, the rate falls only after very successful steps,
    # and never by more than the radius
    capped = rate[1:] >= caps[1:, None] - 1e-15
    fell = rate[1:] < rate[:-1]
    assert (fell & ~capped).any() and (~fell).any()
    assert (rho[:-1][fell & ~capped] > cfg.eta2).all()
    assert ((rate[:-1] - rate[1:])[~capped] <= radius[:-1][~capped] + 1e-15).all()
    assert ((rate[:-1] - rate[1:])[~capped] <= (1 - cfg.dropout_decay) * rate[:-1][~capped] + 1e-15).all()


def test_controlled_rate_falls_only_after_very_successful_steps_and_by_at_most_the_radius():
    cfg = TrustRegionConfig(max_iter=1000, warmup=3)
    rate = torch.full((5,), 0.25, dtype=F64)  # below the cap, which starts at 0.3
    rho = torch.tensor([0.9, 0.5, -math.inf, 0.9, math.nan], dtype=F64)
    radius = torch.tensor([1.0, 1.0, 1.0, 0.001, 1.0], dtype=F64)
    after = DROPOUT_SCHEDULES["controlled"](rate, step=10, rho=rho, radius=radius, config=cfg)
    torch.testing.assert_close(after, torch.tensor([0.225, 0.25, 0.25, 0.249, 0.25], dtype=F64))
    during_warmup = DROPOUT_SCHEDULES["controlled"](rate, step=1, rho=rho, radius=radius, config=cfg)
    assert torch.equal(during_warmup, rate)
    low = torch.full((5,), 0.011, dtype=F64)
    floor = DROPOUT_SCHEDULES["controlled"](low, step=10, rho=rho, radius=radius, config=cfg)
    assert floor.min() == cfg.dropout_floor


def test_constant_and_no_dropout():
    cfg, result, rates = _dropout_run("constant")
    assert torch.equal(_stack(result, "dropout"), torch.full((cfg.max_iter, 2), cfg.dropout0, dtype=F64))
    cfg, result, rates = _dropout_run("none")
    assert rates == [None] * len(rates) and len(rates) == 2 * result.n_iter + 1
    assert not _stack(result, "dropout").any()


# --- batching and determinism ---------------------------------------------------------


@pytest.mark.parametrize("hessian", ["exact", "lbfgs"])
def test_a_batch_gives_each_item_its_own_result(hessian):
    B = 3
    target = _mask_targets(B, seed=10)
    theta0 = torch.randn(B, S * K, generator=torch.Generator().manual_seed(11), dtype=F64)
    cfg = TrustRegionConfig(max_iter=25, hessian=hessian)
    batch = minimize(_mask_objective(target), theta0, masks=_softmax_masks, config=cfg)
    assert (batch.iterations > 5).all()
    for b in range(B):
        single = minimize(_mask_objective(target[b : b + 1]), theta0[b : b + 1], masks=_softmax_masks, config=cfg)
        torch.testing.assert_close(single.theta[0], batch.theta[b], atol=1e-6, rtol=0)
        assert single.iterations.item() == batch.iterations[b].item()
        torch.testing.assert_close(_stack(single, "radius")[:, 0], _stack(batch, "radius")[: single.n_iter, b])


def test_two_runs_are_bit_identical():
    objective = _mask_objective(_mask_targets(2, seed=12).float())
    theta0 = torch.zeros(2, S * K, dtype=torch.float32)
    cfg = TrustRegionConfig(max_iter=15, hessian="diagonal", seed=3)
    runs = [minimize(objective, theta0, masks=_softmax_masks, config=cfg) for _ in range(2)]
    assert torch.equal(runs[0].theta, runs[1].theta) and torch.equal(runs[0].loss, runs[1].loss)
    for name in ["objective", "rho", "radius", "mask_change", "dropout", "accepted"]:
        assert torch.equal(_stack(runs[0], name), _stack(runs[1], name)), name
    assert not torch.equal(runs[0].theta, theta0)
    assert runs[0].theta.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    target = _mask_targets(3, seed=13)
    theta0 = torch.zeros(3, S * K, dtype=F64)
    cfg = TrustRegionConfig(max_iter=20)
    cpu = minimize(_mask_objective(target), theta0, masks=_softmax_masks, config=cfg)
    gpu = minimize(_mask_objective(target.cuda()), theta0.cuda(), masks=_softmax_masks, config=cfg)
    assert gpu.theta.is_cuda and gpu.status.is_cuda
    torch.testing.assert_close(gpu.theta.cpu(), cpu.theta, atol=1e-6, rtol=0)
    assert torch.equal(_stack(gpu, "accepted").cpu(), _stack(cpu, "accepted"))


def test_callback_sees_every_step_and_the_result_serialises():
    steps = []
    cfg = TrustRegionConfig(max_iter=5, dropout_schedule="none")
    target = torch.full((2, 3), 4.0, dtype=F64)
    result = minimize(
        lambda x, d: ((x - target) ** 2).sum(1), torch.zeros(2, 3, dtype=F64), config=cfg, callback=steps.append
    )
    assert steps == result.trajectory and [s.step for s in steps] == list(range(5))
    payload = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert payload["status"] == ["max_iter", "max_iter"] and payload["success"] == [False, False]
    assert len(payload["trajectory"]) == 5 and len(payload["trajectory"][0]["radius"]) == 2


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"max_iter": 0}, "max_iter=0 is not >= 1"),
        ({"max_iter": 2.5}, "max_iter=2.5 is not an integer"),
        ({"cg_max_iter": True}, "cg_max_iter=True is not an integer"),
        ({"radius0": 0.0}, "radius_min < radius0 <= radius_max"),
        ({"radius0": 1.0}, "radius_min < radius0 <= radius_max"),
        ({"radius0": math.nan}, "radius0=nan is not a finite number"),
        ({"eta0": 0.5}, "eta0 <= eta1 < eta2"),
        ({"gamma1": 1.0}, r"gamma1=1.0 is not in \(0, 1\)"),
        ({"gamma2": 0.5}, "gamma2=0.5 is not > 1"),
        ({"overshoot": 0.9}, "overshoot=0.9 is not >= 1"),
        ({"gtol": -1.0}, "gtol=-1.0 is not >= 0"),
        ({"hessian": "newton"}, "hessian='newton' is not one of"),
        ({"dropout_schedule": "cosine"}, "dropout_schedule='cosine' is not one of"),
        ({"dropout0": 1.0}, "dropout_floor <= dropout0 < 1"),
        ({"dropout_floor": 0.5}, "dropout_floor <= dropout0 < 1"),
        ({"dropout_decay": 0.0}, r"dropout_decay=0.0 is not in \(0, 1\]"),
        ({"warmup": -1}, "warmup=-1 is not >= 0"),
        ({"probes": 0}, "probes=0 is not >= 1"),
    ],
)
def test_bad_config_values_are_refused(overrides, match):
    with pytest.raises(ParameterError, match=match):
        TrustRegionConfig(**overrides)


def test_bad_inputs_are_refused():
    def loss(x, d):
        return (x**2).sum(1)

    with pytest.raises(ParameterError, match=r"theta0 must be a \(batch, params\) float tensor, got \(3,\)"):
        minimize(loss, torch.zeros(3))
    with pytest.raises(ParameterError, match="theta0 holds NaN or Inf"):
        minimize(loss, torch.tensor([[math.nan]]))
    with pytest.raises(ParameterError, match=r"objective must return a \(2,\) float tensor"):
        minimize(lambda x, d: (x**2).sum(), torch.ones(2, 3))
    with pytest.raises(ParameterError, match=r"masks must return a \(2, M\) tensor, got \(6,\)"):
        minimize(loss, torch.ones(2, 3), masks=lambda x: x.flatten())
    with pytest.raises(ParameterError, match="config must be a TrustRegionConfig"):
        minimize(loss, torch.ones(2, 3), config={"max_iter": 3})
    with pytest.raises(ParameterError, match='hessian="gauss-newton" needs the objective\'s curvature'):
        minimize(loss, torch.ones(2, 3), config=TrustRegionConfig(hessian="gauss-newton"))


def test_gauss_newton_curvature_reaches_the_minima_of_quadratics():
    """A closed-form ``curvature`` (here the exact Hessian of quadratics, which is its own
    Gauss-Newton matrix) replaces autograd and reaches scipy's minima."""
    a, c = _spd(3, 4, seed=7), torch.randn(3, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
    objective = _quadratic(a, c)
    calls = []

    def curvature(theta, dropout, *, gauss_newton):
        calls.append(gauss_newton)
        grad = torch.einsum("bpq,bq->bp", a, theta) - c
        return Quadratic(objective(theta), grad, lambda v: torch.einsum("bpq,bq->bp", a, v))

    config = TrustRegionConfig(hessian="gauss-newton", dropout_schedule="none", gtol=1e-10, **SCIPY_RADII)
    result = minimize(objective, torch.zeros(3, 4, dtype=F64), config=config, curvature=curvature)
    torch.testing.assert_close(result.theta, torch.linalg.solve(a, c), rtol=1e-8, atol=1e-9)
    assert calls and all(calls)


# --- weighted norms: a smaller radius for some entries (near band edges) --------------


def test_a_weighted_euclidean_norm_is_the_plain_norm_in_rescaled_parameters():
    """``||p||_W <= r`` with ``W = diag(w)`` is ``||q|| <= r`` for ``q = W^(1/2) p``, and
    Steihaug CG preconditioned by ``W`` is plain CG on the rescaled problem: the iterates
    agree to rounding, so the weights act exactly as a per-parameter radius. (The minima
    are far, so every step ends on the boundary: inside, CG's stopping rule on the
    residual norm is not invariant to the rescaling.)"""
    a = _spd(3, 5, seed=4)
    c = 20 * torch.randn(3, 5, generator=torch.Generator().manual_seed(5), dtype=F64)
    w = torch.tensor([16.0, 1.0, 4.0, 1.0, 1.0], dtype=F64)
    root = w.sqrt()
    cfg = TrustRegionConfig(max_iter=6, dropout_schedule="none", radius0=0.1, radius_max=0.4)
    weighted = minimize(_quadratic(a, c), torch.zeros(3, 5, dtype=F64), config=cfg, norm_weight=w)
    # f(W^(-1/2) q) is the quadratic with A' = W^(-1/2) A W^(-1/2), c' = W^(-1/2) c
    rescaled = minimize(_quadratic(a / root[:, None] / root[None], c / root), torch.zeros(3, 5, dtype=F64), config=cfg)
    torch.testing.assert_close(weighted.theta * root, rescaled.theta, atol=1e-10, rtol=0)
    torch.testing.assert_close(_stack(weighted, "mask_change"), _stack(rescaled, "mask_change"), atol=1e-10, rtol=0)


def test_heavily_weighted_parameters_move_less_in_a_step():
    """Far from the minimum every step ends on the boundary ``||p||_W = radius``; the
    entries of weight 16 (radius scale 1/4) move less than the others, and without
    weights they all move alike."""
    target = torch.full((1, 4), 10.0, dtype=F64)
    cfg = TrustRegionConfig(max_iter=1, dropout_schedule="none", radius0=0.5)
    w = edge_weight(torch.tensor([0.0, 1.0, 5.0, 9.0], dtype=F64), torch.tensor([0.5]), width=0.5, scale=0.25)
    torch.testing.assert_close(w, torch.tensor([16.0, 16.0, 1.0, 1.0], dtype=F64))
    objective = lambda x, d: 0.5 * ((x - target) ** 2).sum(1)  # noqa: E731
    plain = minimize(objective, torch.zeros(1, 4, dtype=F64), config=cfg).theta[0]
    edged = minimize(objective, torch.zeros(1, 4, dtype=F64), config=cfg, norm_weight=w)
    step = edged.theta[0]
    torch.testing.assert_close(plain, torch.full((4,), 0.25, dtype=F64))  # 0.5 / sqrt(4) each
    torch.testing.assert_close((w * step**2).sum().sqrt(), torch.tensor(0.5, dtype=F64))  # on the boundary
    torch.testing.assert_close(edged.trajectory[0].mask_change[0], torch.tensor(0.5, dtype=F64))
    # measured: 0.021 for the weighted entries, 0.343 for the others (1/16 with this Hessian)
    assert (step[:2] > 0).all() and (step[:2] < 0.25 * step[2:].min()).all()


def test_weighted_masks_are_the_plain_norm_of_rescaled_masks():
    """``norm_weight`` on masks: the metric's probes are ``sqrt(w) v`` and the change is
    ``||W^(1/2) dm|| / sqrt(M)``, the same as the plain norm of masks ``sqrt(w) m``
    (the same Hutchinson draws), and the weighted masks move less."""
    target = _mask_targets(2, seed=3)
    w = torch.ones(S, K, dtype=F64)
    w[:, :2] = 16.0  # the first two columns (all sources) are "near an edge"
    w = w.reshape(-1)
    cfg = TrustRegionConfig(max_iter=8, dropout_schedule="none", gtol=1e-12)
    theta0 = torch.zeros(2, S * K, dtype=F64)
    weighted = minimize(_mask_objective(target), theta0, masks=_softmax_masks, config=cfg, norm_weight=w)
    rescaled = minimize(_mask_objective(target), theta0, masks=lambda x: _softmax_masks(x) * w.sqrt(), config=cfg)
    # rounding (sqrt(w)^2 != w in the last bit) grows over the 8 steps to ~3e-8
    torch.testing.assert_close(weighted.theta, rescaled.theta, atol=1e-6, rtol=0)
    plain = minimize(_mask_objective(target), theta0, masks=_softmax_masks, config=TrustRegionConfig(
        max_iter=1, dropout_schedule="none"))
    first = minimize(_mask_objective(target), theta0, masks=_softmax_masks, config=TrustRegionConfig(
        max_iter=1, dropout_schedule="none"), norm_weight=w)

    def moved(result):  # (B, S, K) mask change of the first step
        return (_softmax_masks(result.theta) - _softmax_masks(theta0)).abs().view(-1, S, K)

    edge_share = lambda r: moved(r)[:, :, :2].sum() / moved(r).sum()  # noqa: E731
    assert edge_share(first) < 0.5 * edge_share(plain)  # measured 0.020 vs 0.250


def test_edge_weight_and_norm_weight_are_checked():
    hz = torch.tensor([0.0, 90.0, 100.0, 111.0, 300.0])
    torch.testing.assert_close(edge_weight(hz, torch.tensor([100.0]), width=10.0, scale=0.5),
                               torch.tensor([1.0, 4.0, 4.0, 1.0, 1.0]))
    per_entry = edge_weight(hz, torch.tensor([100.0, 0.0]), width=torch.tensor([0.0, 0.0, 0.0, 12.0, 0.0]), scale=1.0)
    torch.testing.assert_close(per_entry, torch.ones(5))  # scale 1: no change anywhere
    torch.testing.assert_close(edge_weight(hz, torch.zeros(0), width=1.0, scale=0.5), torch.ones(5))
    with pytest.raises(ParameterError, match=r"scale=0.0 is not in \(0, 1\]"):
        edge_weight(hz, torch.tensor([100.0]), width=1.0, scale=0.0)
    with pytest.raises(ParameterError, match="is not >= 0"):
        edge_weight(hz, torch.tensor([100.0]), width=-1.0, scale=0.5)

    def loss(x, d):
        return (x**2).sum(1)

    with pytest.raises(ParameterError, match=r"norm_weight must be a \(M,\) or \(2, M\) tensor, got \(3, 3\)"):
        minimize(loss, torch.ones(2, 3), norm_weight=torch.ones(3, 3))
    with pytest.raises(ParameterError, match="norm_weight must be positive and finite"):
        minimize(loss, torch.ones(2, 3), norm_weight=torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ParameterError, match="norm_weight has 4 entries per item, theta 3"):
        minimize(loss, torch.ones(2, 3), norm_weight=torch.ones(4))
    with pytest.raises(ParameterError, match="norm_weight has 3 entries per item, the masks 6"):
        minimize(loss, torch.ones(2, 3), masks=lambda x: torch.cat([x, x], 1), norm_weight=torch.ones(3))
