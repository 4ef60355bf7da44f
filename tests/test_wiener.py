"""demux.wiener: the multichannel Wiener filter that turns shared masks into stems."""

from __future__ import annotations

import math

import pytest
import torch

import demux.wiener
from demux.errors import ParameterError
from demux.wiener import multichannel_wiener, spatial_covariance, wiener_filter


def _random_case(seed: int, *, B=2, S=3, M=4, F=9, N=40, dtype=torch.complex64):
    g = torch.Generator().manual_seed(seed)
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    x = torch.complex(torch.randn(B, M, F, N, generator=g), torch.randn(B, M, F, N, generator=g)).to(dtype)
    masks = torch.rand(B, S, F, N, generator=g, dtype=real)
    return x, masks / masks.sum(1, keepdim=True)


def _two_plane_waves(seed: int = 0, *, M=4, F=8, N=200):
    """Two rank-one sources (random steering per bin) overlapping in every bin, and their oracle
    power-ratio masks: ``x (1, M, F, N)``, images ``(2, M, F, N)``, masks ``(1, 2, F, N)``."""
    g = torch.Generator().manual_seed(seed)
    phase = 2 * math.pi * torch.rand(2, M, F, generator=g, dtype=torch.float64)
    steering = torch.polar(torch.ones_like(phase), phase)
    level = torch.rand(2, F, N, generator=g, dtype=torch.float64) ** 4  # sparse-ish variances
    gauss = torch.complex(torch.randn(2, F, N, generator=g, dtype=torch.float64),
                          torch.randn(2, F, N, generator=g, dtype=torch.float64))
    signals = gauss * level.sqrt()
    images = steering[:, :, :, None] * signals[:, None]
    power = signals.abs().square()
    return images.sum(0)[None], images, (power / power.sum(0))[None]


def _sdr_db(estimate, images) -> float:
    """Worst source's ``10 log10(|img|^2 / |estimate - img|^2)``; estimate ``(S, M, F, N)``."""
    err = (estimate - images).abs().square().flatten(1).sum(1)
    return float((10 * torch.log10(images.abs().square().flatten(1).sum(1) / err)).min())


@pytest.mark.parametrize("iterations", [0, 2])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_stems_sum_to_the_mixture_with_shape_and_dtype(iterations, dtype):
    x, masks = _random_case(0, dtype=dtype)
    y = multichannel_wiener(x, masks, iterations=iterations)
    assert y.shape == (2, 3, 4, 9, 40) and y.dtype == dtype
    assert float((y.sum(1) - x).abs().max()) < 1e-5 * float(x.abs().max())


def test_stems_sum_to_the_mixture_when_a_source_is_absent_and_bins_are_silent():
    x, masks = _random_case(1)
    masks[:, 2] = 0  # a source that takes nothing: covariance from no bin
    masks[:, :2] = masks[:, :2] / masks[:, :2].sum(1, keepdim=True)
    x[..., :5] = 0  # silent frames: C would be singular without the variance floor
    y = multichannel_wiener(x, masks, iterations=1)
    assert torch.isfinite(y).all()
    assert float((y.sum(1) - x).abs().max()) < 1e-5 * float(x.abs().max())
    assert float(y[:, 2].abs().max()) < 1e-6 * float(x.abs().max())  # measured 6e-10


def test_one_source_gets_the_mixture():
    x, _ = _random_case(2, S=1)
    y = multichannel_wiener(x, torch.ones(2, 1, 9, 40), iterations=2)
    assert float((y[:, 0] - x).abs().max()) < 1e-5 * float(x.abs().max())


def test_heavy_loading_is_the_mask():
    """With ``R_s`` close to the identity for every source the filter is ``v_s / sum v`` = the mask."""
    x, masks = _random_case(3, dtype=torch.complex128)
    y = multichannel_wiener(x, masks, load=1e8)
    # the covariances' own trace M is 1e-8 of the load: the filter is the mask to ~1e-8
    assert float((y - masks[:, :, None] * x[:, None]).abs().max()) < 1e-6 * float(x.abs().max())


def test_two_plane_waves_come_out_cleaner_than_masked():
    x, images, masks = _two_plane_waves()
    masked = _sdr_db((masks[:, :, None] * x[:, None])[0], images)
    once = _sdr_db(multichannel_wiener(x, masks)[0], images)
    em = _sdr_db(multichannel_wiener(x, masks, iterations=2)[0], images)
    # measured: mask 7.63 dB, Wiener 13.29 dB, after 2 EM iterations 16.50 dB (worse source)
    assert once > masked + 4.0, (masked, once)
    assert em > once + 2.0, (once, em)


def test_spatial_covariance_is_hermitian_with_trace_m_plus_load():
    x, masks = _random_case(4, dtype=torch.complex128)
    R = spatial_covariance(masks, x, load=0.1)
    assert R.shape == (2, 3, 9, 4, 4)
    assert torch.allclose(R, R.conj().transpose(-1, -2))
    trace = torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)
    assert torch.allclose(trace, torch.full_like(trace, 4 * 1.1))
    assert float(torch.linalg.eigvalsh(R).min()) >= 0.1 - 1e-9  # loading keeps it full rank


def test_wiener_filter_recovers_sources_with_their_true_statistics():
    """Given the true rank-one covariances (lightly loaded) and the true variances, the
    posterior mean of two sources in four mics is almost exact."""
    x, images, _ = _two_plane_waves(1)
    v = images.abs().square().mean(1)[None]  # (1, 2, F, N)
    R = spatial_covariance(torch.ones_like(v), images[None], load=1e-6)
    # measured 81.7 dB: the load is the only model error
    assert _sdr_db(wiener_filter(x, v, R)[0], images) > 60.0


def test_bad_parameters_are_refused():
    x, masks = _random_case(5)
    with pytest.raises(ParameterError, match="iterations=-1"):
        multichannel_wiener(x, masks, iterations=-1)
    with pytest.raises(ParameterError, match="load=0"):
        multichannel_wiener(x, masks, load=0.0)


def test_gradients_reach_the_masks():
    """``demux train`` differentiates stems with respect to masks (learned offsets)."""
    x, masks = _random_case(6, dtype=torch.complex128)
    x[..., :3] = 0  # silent bins: no NaN from |0|
    masks = masks.clone().requires_grad_(True)
    multichannel_wiener(x, masks, iterations=1)[:, 0].abs().square().sum().backward()
    assert torch.isfinite(masks.grad).all() and float(masks.grad.abs().max()) > 0


def test_frame_blocks_do_not_change_the_stems(monkeypatch):
    x, masks = _random_case(7, dtype=torch.complex128)
    whole = multichannel_wiener(x, masks, iterations=1)
    monkeypatch.setattr(demux.wiener, "FRAME_BLOCK", 7)  # 40 frames: 6 blocks, the last one short
    assert float((multichannel_wiener(x, masks, iterations=1) - whole).abs().max()) < 1e-12
