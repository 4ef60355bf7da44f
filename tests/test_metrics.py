"""Metrics: BSS-Eval parity with mir_eval (fixtures and random cases), the fast engine's
building blocks (blocked correlations, singular systems, permutation search, CUDA),
SI-SDR against a naive formula, silence handling, and the transform-domain diagnostics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.optimize import linear_sum_assignment

from demux import metrics
from demux.errors import ParameterError
from conftest import si_sdr_db
from demux.metrics import (
    FILTER_LENGTH,
    MetricWarning,
    best_permutation,
    bss_eval,
    lagged_correlation,
    leakage,
    si_sdr,
    snr,
    transform_sir,
    trust_region_stability,
)

SETS = ("01", "02", "03", "05", "06", "07", "08", "09")
TOL_DB = 0.01


def _load_set(folder: Path) -> torch.Tensor:
    """``(S, T)`` float64, channels averaged to mono and sources in filename order (mir_eval's loader)."""
    sources = []
    for path in sorted(folder.glob("*.wav")):
        data, _ = sf.read(path, dtype="float64", always_2d=True)
        sources.append(data.mean(axis=1))
    return torch.from_numpy(np.stack(sources))


def _fixture(shared_data: Path, number: str):
    fixtures = shared_data / "mir_eval_fixtures"
    if not fixtures.is_dir():
        pytest.skip(f"{fixtures} not present")
    expected = json.loads((fixtures / f"output{number}.json").read_text())
    return _load_set(fixtures / f"ref{number}"), _load_set(fixtures / f"est{number}"), expected


def _assert_close(actual: torch.Tensor, expected, what: str) -> None:
    expected = torch.tensor(np.asarray(expected, dtype=np.float64))
    assert actual.shape == expected.shape, what
    both_inf = torch.isinf(actual) & torch.isinf(expected) & (actual.sign() == expected.sign())
    error = torch.where(both_inf, 0.0, (actual - expected).abs())
    assert float(error.max()) < TOL_DB, f"{what}: max error {float(error.max()):.3g} dB"


@pytest.mark.parametrize("number", SETS)
def test_fast_engine_matches_mir_eval_fixtures(shared_data, number):
    ref, est, expected = _fixture(shared_data, number)
    result = bss_eval(ref, est, engine="fast")
    sources = expected["Sources"]
    _assert_close(result.sdr, sources["Source to Distortion"], "sdr")
    _assert_close(result.sir, sources["Source to Interference"], "sir")
    _assert_close(result.sar, sources["Source to Artifact"], "sar")
    assert result.permutation.tolist() == sources["Source permutation"]
    assert result.engine == "fast" and result.engine_version


@pytest.mark.parametrize("number", ["01", "05", "06", "07"])
def test_fast_engine_framewise_matches_mir_eval_fixtures(shared_data, number):
    # A subset for time (each frame is a full solve); 2 and 3 sources, mono and the
    # stereo set. Set 09's 500-sample windows are under the 512-tap filter, which
    # demux refuses (test_short_signals_are_refused).
    ref, est, expected = _fixture(shared_data, number)
    framewise = expected["Framewise"]
    result = bss_eval(ref, est, engine="fast", window=framewise["win"], hop=framewise["hop"], permutation=False)
    _assert_close(result.sdr, framewise["Source to Distortion"], "framewise sdr")
    _assert_close(result.sir, framewise["Source to Interference"], "framewise sir")
    _assert_close(result.sar, framewise["Source to Artifact"], "framewise sar")


def test_mir_eval_engine_matches_fixtures_sources_and_images(shared_data):
    ref, est, expected = _fixture(shared_data, "01")
    result = bss_eval(ref, est, engine="mir_eval")
    _assert_close(result.sdr, expected["Sources"]["Source to Distortion"], "sdr")
    assert result.engine == "mir_eval"
    images = expected["Images"]
    extra = images["nchan"] - 1

    def as_images(x: torch.Tensor, gain: float, reverse: bool) -> torch.Tensor:
        channels = [x * gain] * extra
        return torch.stack([x, *(channels[::-1] if reverse else channels)], dim=1)  # (S, C, T)

    result = bss_eval(
        as_images(ref, 1.0, False), as_images(est, images["gain"], images["reverse"]), engine="mir_eval", mode="images"
    )
    _assert_close(result.sdr, images["Source to Distortion"], "images sdr")
    _assert_close(result.isr, images["Image to Spatial"], "images isr")
    _assert_close(result.sar, images["Source to Artifact"], "images sar")


def _random_case(seed: int, S: int, T: int = 4096, echo: int = 0):
    """White-noise references (with ``echo``, the last one is the first delayed by that
    many samples), estimates that mix them with a little noise, shuffled; and the shuffle."""
    generator = torch.Generator().manual_seed(seed)
    ref = torch.randn(S, T, generator=generator, dtype=torch.float64)
    if echo:
        ref[0, -echo:] = 0.0  # so that the delayed copy loses nothing
        ref[-1] = ref[0].roll(echo)
    mixing = torch.eye(S, dtype=torch.float64) + 0.3 * torch.rand(S, S, generator=generator, dtype=torch.float64)
    est = mixing @ ref + 0.1 * torch.randn(S, T, generator=generator, dtype=torch.float64)
    order = torch.randperm(S, generator=generator)
    return ref, est[order], order


@pytest.mark.parametrize("seed, S, echo", [(0, 2, 0), (1, 3, 0), (2, 2, 3)])
def test_random_permuted_estimates_match_mir_eval(seed, S, echo):
    ref, est, order = _random_case(seed, S, echo=echo)
    if echo:
        # the case is there for its singular Gram matrix (the delayed copies of the two
        # references overlap), which the engine cannot Cholesky-factor and solves as
        # mir_eval does (LU)
        unit = ref / ref.norm(dim=-1, keepdim=True)
        gram = metrics._gram(lagged_correlation(unit[None], unit[None], lags=FILTER_LENGTH))
        assert int(torch.linalg.cholesky_ex(gram).info) != 0
    fast = bss_eval(ref, est, engine="fast")
    slow = bss_eval(ref, est, engine="mir_eval")
    for name in ("sdr", "sir", "sar"):
        _assert_close(getattr(fast, name), getattr(slow, name).numpy(), name)
    # estimate k holds reference order[k], so reference j is in estimate argsort(order)[j]
    expected = torch.argsort(order)
    assert fast.permutation.tolist() == expected.tolist() == slow.permutation.tolist()


def test_batch_equals_items_and_chunks(monkeypatch):
    cases = [_random_case(seed, 2)[:2] for seed in (3, 4)]
    ref = torch.stack([c[0] for c in cases])
    est = torch.stack([c[1] for c in cases])
    batched = bss_eval(ref, est, permutation=False)
    assert batched.sdr.shape == (2, 2)
    for i, (r, e) in enumerate(cases):
        torch.testing.assert_close(batched.sdr[i], bss_eval(r, e, permutation=False).sdr)
    monkeypatch.setattr(metrics, "_CHUNK_BYTES", 1)  # one item per chunk
    chunked = bss_eval(ref, est, permutation=False)
    for name in ("sdr", "sir", "sar"):
        torch.testing.assert_close(getattr(chunked, name), getattr(batched, name))


@pytest.mark.parametrize("block", [100, 16384])
def test_lagged_correlation_matches_np_correlate(block):
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 1000, generator=generator, dtype=torch.float64)
    y = torch.randn(2, 4, 1000, generator=generator, dtype=torch.float64)
    lags = 37
    corr = lagged_correlation(x, y, lags=lags, block=block)  # block=100: ten blocks; 16384: one
    assert corr.shape == (2, lags, 3, 4)
    for n, a, b in itertools.product(range(2), range(3), range(4)):
        direct = np.correlate(y[n, b].numpy(), x[n, a].numpy(), mode="full")[999 : 999 + lags]
        np.testing.assert_allclose(corr[n, :, a, b].numpy(), direct, rtol=0, atol=1e-10)
    with pytest.raises(ParameterError, match="lags"):
        lagged_correlation(x, y, lags=0)


def test_projection_energy_of_singular_systems():
    # exactly singular: Cholesky and LU both fail; the pseudo-inverse projects on the range
    gram = torch.tensor([[[4.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    rhs = torch.tensor([[[2.0], [0.0]]], dtype=torch.float64)
    assert float(metrics._projection_energy(gram, rhs)) == pytest.approx(1.0, abs=1e-12)
    # a duplicated column: the energy of e's projection on span(v, w), whatever solver runs
    generator = torch.Generator().manual_seed(11)
    v, w, e = torch.randn(3, 50, generator=generator, dtype=torch.float64)
    basis = torch.stack([v, v, w], dim=1)  # (50, 3)
    projection = basis[:, [0, 2]] @ torch.linalg.lstsq(basis[:, [0, 2]], e[:, None]).solution
    energy = metrics._projection_energy((basis.T @ basis)[None], (basis.T @ e)[None, :, None])
    assert float(energy) == pytest.approx(float(projection.square().sum()), rel=1e-9)


def test_best_permutation_finds_the_assignment_optimum():
    generator = torch.Generator().manual_seed(12)
    for S in (4, 9):  # every permutation tried; the Hungarian algorithm beyond 8 sources
        sir = 10 * torch.randn(5, S, S, generator=generator, dtype=torch.float64)
        perm = best_permutation(sir)
        for n in range(5):
            expected = linear_sum_assignment(sir[n].numpy(), maximize=True)[1]
            assert perm[n].tolist() == expected.tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_engine_on_cuda_matches_cpu():
    ref, est, _ = _random_case(13, 3)
    cpu = bss_eval(ref, est)
    gpu = bss_eval(ref.cuda(), est.cuda())
    assert gpu.sdr.device.type == "cpu" and gpu.permutation.tolist() == cpu.permutation.tolist()
    for name in ("sdr", "sir", "sar"):
        torch.testing.assert_close(getattr(gpu, name), getattr(cpu, name), rtol=0, atol=1e-6)
    framewise = bss_eval(ref.cuda(), est.cuda(), window=2048, hop=1024)
    torch.testing.assert_close(framewise.sdr, bss_eval(ref, est, window=2048, hop=1024).sdr, rtol=0, atol=1e-6)
    quiet = est.clone()
    quiet[2] = 0.0  # the silence path, which indexes device tensors with CPU masks
    with pytest.warns(MetricWarning, match="all-zero"):
        gpu = bss_eval(ref.cuda(), quiet.cuda(), permutation=False)
    with pytest.warns(MetricWarning, match="all-zero"):
        cpu = bss_eval(ref, quiet, permutation=False)
    torch.testing.assert_close(gpu.sdr, cpu.sdr, rtol=0, atol=1e-6, equal_nan=True)


def _naive_si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    alpha = np.dot(estimate, reference) / np.dot(reference, reference)
    target = alpha * reference
    return 10 * np.log10(np.sum(target**2) / np.sum((estimate - target) ** 2))


def test_si_sdr_matches_naive_formula_and_is_scale_invariant():
    generator = torch.Generator().manual_seed(5)
    ref = torch.randn(2, 3, 1000, generator=generator, dtype=torch.float64)
    est = ref + 0.5 * torch.randn(2, 3, 1000, generator=generator, dtype=torch.float64)
    value = si_sdr(est, ref)
    assert value.shape == (2, 3)
    for b, s in itertools.product(range(2), range(3)):
        assert float(value[b, s]) == pytest.approx(_naive_si_sdr(est[b, s].numpy(), ref[b, s].numpy()), abs=1e-9)
    torch.testing.assert_close(si_sdr(7.0 * est, ref), value)
    assert float(snr(est, ref)[0, 0]) == pytest.approx(
        10 * np.log10(np.sum(ref[0, 0].numpy() ** 2) / np.sum((ref[0, 0] - est[0, 0]).numpy() ** 2)), abs=1e-9
    )


def test_si_sdr_perfect_estimate_is_capped_by_eps():
    ref = torch.randn(1, 500, dtype=torch.float64)
    assert float(si_sdr(ref, ref, eps=1e-6)[0]) == pytest.approx(60.0, abs=1e-6)


def test_silence_gives_nan_with_warning_not_a_crash():
    ref, est, _ = _random_case(6, 3)
    est = est.clone()
    ref = ref.clone()
    ref[1] = 0.0  # silent reference
    est[2] = 0.0  # all-zero estimate
    with pytest.warns(MetricWarning, match="silent reference"):
        result = bss_eval(ref, est, permutation=False)
    assert torch.isnan(result.sdr[1]) and torch.isnan(result.sdr[2])
    # the remaining source is scored as if the silent pair were not there
    expected = bss_eval(ref[[0, 2]], torch.stack([est[0], ref[2]]), permutation=False).sdr[0]
    assert float(result.sdr[0]) == pytest.approx(float(expected), abs=1e-9)
    with pytest.warns(MetricWarning, match="identity order"):
        with_search = bss_eval(ref, est, permutation=True, engine="mir_eval")
    assert with_search.permutation.tolist() == [0, 1, 2]
    assert float(with_search.sdr[0]) == pytest.approx(float(expected), abs=TOL_DB)
    with pytest.warns(MetricWarning, match="silent"):
        value = si_sdr(est, ref)
    assert torch.isnan(value[1]) and torch.isnan(value[2]) and torch.isfinite(value[0])


def test_one_reference_has_infinite_sir_and_says_why():
    ref, est, _ = _random_case(7, 1)
    result = bss_eval(ref, est)
    assert torch.isinf(result.sir).all() and torch.isfinite(result.sdr).all()
    assert any("[clean, noise]" in note for note in result.notes)


def test_bad_arguments_raise_parameter_errors():
    ref, est, _ = _random_case(8, 2)
    with pytest.raises(ParameterError, match="engine="):
        bss_eval(ref, est, engine="museval")
    with pytest.raises(ParameterError, match="same"):
        bss_eval(ref, est[:, :-1])
    with pytest.raises(ParameterError, match="images"):
        bss_eval(ref[:, None], est[:, None], mode="images", engine="fast")
    with pytest.raises(ParameterError, match="both window and hop"):
        bss_eval(ref, est, window=1024)
    with pytest.raises(ParameterError, match="finite"):
        bss_eval(ref, est * float("nan"))


def test_short_signals_are_refused():
    ref, est, _ = _random_case(9, 2, T=600)
    with pytest.raises(ParameterError, match="512"):
        bss_eval(ref, est, window=500, hop=50)
    with pytest.raises(ParameterError, match="512"):
        bss_eval(ref[:, :400], est[:, :400])


def test_leakage_known_answer():
    # two sources on disjoint halves of 4 coefficients, with hand-made keep masks
    coeffs = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    keep = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.5, 1.0, 1.0]])
    L = leakage(coeffs, 1 - keep)
    # source 0 (energy 2): stem 0 keeps 1 + 0.25, stem 1 keeps 0.25; source 1 stays in stem 1
    expected = torch.tensor([[1.25 / 2, 0.25 / 2], [0.0, 1.0]])
    torch.testing.assert_close(L, expected)
    with pytest.warns(MetricWarning, match="silent"):
        L = leakage(torch.stack([coeffs[0], torch.zeros(4)]), 1 - keep)
    assert torch.isnan(L[1]).all() and torch.isfinite(L[0]).all()


def test_transform_sir_known_answer_and_complex():
    coeffs = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.5, 2.0]], dtype=torch.complex64)
    masks = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sir = transform_sir(coeffs, masks)
    # stem 0 lets through 0.5 of source 1 at coefficient 1: 10 log10(2 / 0.25); stem 1 is clean
    assert float(sir[0]) == pytest.approx(10 * np.log10(2 / 0.25), abs=1e-5)
    assert torch.isinf(sir[1])
    with pytest.raises(ParameterError, match="broadcast"):
        transform_sir(coeffs, masks[:, :2])


def test_trust_region_stability_counts_accepted_steps_within_radius():
    trajectory = {
        "mask_change": [[0.01, 0.2], [0.05, None], [0.3, 0.01]],
        "radius": [[0.05, 0.05], [0.05, 0.05], [0.1, 0.1]],
        "accepted": [[True, False], [True, False], [True, True]],
    }
    # accepted: (0.01<=0.05) yes, (0.05<=0.05) yes, (0.3<=0.1) no, (0.01<=0.1) yes
    assert trust_region_stability(trajectory) == pytest.approx(3 / 4)
    with pytest.raises(ParameterError, match="radius"):
        trust_region_stability({"mask_change": [], "accepted": []})
    with pytest.warns(MetricWarning, match="no accepted step"):
        value = trust_region_stability({"mask_change": [0.1], "radius": [0.1], "accepted": [False]})
    assert np.isnan(value)


def test_si_sdr_of_complex_signals_ignores_a_complex_gain_and_equals_the_real_one():
    rng = np.random.default_rng(3)
    ref = torch.from_numpy(rng.standard_normal((2, 500)) + 1j * rng.standard_normal((2, 500)))
    est = ref + 0.1 * torch.from_numpy(rng.standard_normal((2, 500)) + 1j * rng.standard_normal((2, 500)))
    value = si_sdr(est, ref)
    torch.testing.assert_close(si_sdr(est * (2.0 * np.exp(1j * 2.5)), ref), value, atol=1e-9, rtol=0)
    inner = (est * ref.conj()).sum(-1).abs() ** 2
    expected = 10 * torch.log10(inner / ((est.abs() ** 2).sum(-1) * (ref.abs() ** 2).sum(-1) - inner))
    torch.testing.assert_close(value, expected, atol=1e-9, rtol=0)
    assert float(value.min()) > 15.0  # about 20 dB of added noise
    real_est, real_ref = est.real.contiguous(), ref.real.contiguous()
    direct = [si_sdr_db(real_est[k], real_ref[k]) for k in range(2)]
    as_complex = si_sdr(real_est.to(torch.complex128), real_ref.to(torch.complex128))
    np.testing.assert_allclose(as_complex.numpy(), direct, rtol=0, atol=1e-9)
