"""Baselines: separator signature, stems that sum to the mixture, and quality floors.

Floors (SI-SDR unless stated), on problems whose answer is known:
oracle IRM / IBM / Wiener on multitone > 20 dB per source; band-pass on the multitone's
disjoint bands > 15 dB; NMF (KL) on AM carriers > 12 dB; HPSS on tone + clicks: harmonic
> 20 dB, percussive > 5 dB; FastICA on an instantaneous 2x2 mixture: |corr| > 0.99 up to
permutation; wavelet shrinkage of a real ECG in white noise at 0 dB: output SNR > 2 dB;
oracles on two complex tones at +120 / -200 Hz: error < -20 dB per tone; the MTI canceller:
a constant (zero Doppler) below -60 dB, tones at the documented gain sin(pi f / PRF)^(pulses - 1).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from demux import baselines
from demux.baselines import BASELINES, ORACLES
from demux.errors import ParameterError
from demux.metrics import si_sdr, snr
from demux.synth import SCENARIOS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _tensors(scenario):
    mixture = torch.from_numpy(scenario.mixture)[None]
    references = {name: torch.from_numpy(s)[None] for name, s in scenario.sources.items()}
    return mixture, references


def _scores(stems, references) -> dict[str, float]:
    return {name: float(si_sdr(stems[name][0], ref[0]).min()) for name, ref in references.items()}


def _assert_sums_to_mixture(stems, mixture, atol=1e-5):
    for name, stem in stems.items():
        assert stem.shape == mixture.shape and stem.dtype == mixture.dtype, name
    torch.testing.assert_close(sum(stems.values()), mixture, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def multitone():
    return SCENARIOS["multitone"](np.random.default_rng(11), seconds=1.0)


@pytest.fixture(scope="module")
def two_tone_clicks():
    fs, n = 16000.0, 16000
    t = np.arange(n) / fs
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 880 * t + 1)
    clicks = np.zeros(n)
    burst = np.random.default_rng(0).standard_normal(20) * np.hanning(20)
    for k in range(1000, n, 4000):
        clicks[k : k + 20] = burst
    as_tensor = lambda x: torch.tensor(x[None, None], dtype=torch.float32)  # noqa: E731
    return fs, as_tensor(tone + clicks), as_tensor(tone), as_tensor(clicks)


def test_every_baseline_has_the_separator_signature():
    for name, fn in BASELINES.items():
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:2]] == ["mixture", "sample_rate"], name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:]), name
        assert ("references" in inspect.signature(fn).parameters) == (name in ORACLES), name


@pytest.mark.parametrize("name", ORACLES)
def test_oracle_masks_are_upper_bounds_on_multitone(name, multitone):
    mixture, references = _tensors(multitone)
    stems = BASELINES[name](mixture, multitone.sample_rate, references=references)
    assert list(stems) == list(references)
    _assert_sums_to_mixture(stems, mixture)
    scores = _scores(stems, references)
    assert min(scores.values()) > 20.0, scores


def test_oracle_on_another_transform(multitone):
    from demux.transforms.fft import FFT

    mixture, references = _tensors(multitone)
    stems = baselines.oracle_wiener(mixture, 8000.0, references=references, transform=FFT(8000.0))
    _assert_sums_to_mixture(stems, mixture)
    scores = _scores(stems, references)
    assert min(scores.values()) > 20.0, scores


def test_oracle_on_a_batch_equals_items_alone(multitone):
    mixture, references = _tensors(multitone)
    other = torch.roll(mixture, 1000, dims=-1)
    other_refs = {k: torch.roll(v, 1000, dims=-1) for k, v in references.items()}
    batch = baselines.oracle_wiener(torch.cat([mixture, other]), 8000.0,
                                    references={k: torch.cat([references[k], other_refs[k]]) for k in references})
    alone = baselines.oracle_wiener(other, 8000.0, references=other_refs)
    for k in references:
        torch.testing.assert_close(batch[k][1:], alone[k], atol=1e-6, rtol=0)


def _complex_tones(fs: float = 1000.0, n: int = 4000):
    t = torch.arange(n, dtype=torch.float64) / fs
    up, down = torch.exp(2j * math.pi * 120 * t), 0.5 * torch.exp(-2j * math.pi * 200 * t + 1.0)
    as_signal = lambda x: x.to(torch.complex64)[None, None]  # noqa: E731
    return fs, as_signal(up + down), {"up": as_signal(up), "down": as_signal(down)}


def _error_db(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    estimate, truth = estimate.to(torch.complex128), truth.to(torch.complex128)
    return float(10 * torch.log10((estimate - truth).abs().square().sum() / truth.abs().square().sum()))


@pytest.mark.parametrize("name", ORACLES)
@pytest.mark.parametrize("transform", ["default", "cfft"])
def test_oracles_on_complex_baseband_keep_negative_frequencies(name, transform):
    from demux.transforms.fft import ComplexFFT

    fs, mixture, references = _complex_tones()
    options = {} if transform == "default" else {"transform": ComplexFFT(fs)}  # default: a two-sided STFT
    stems = BASELINES[name](mixture, fs, references=references, **options)
    assert list(stems) == ["up", "down"]
    _assert_sums_to_mixture(stems, mixture)
    for key, truth in references.items():
        assert _error_db(stems[key], truth) < -20.0, (key, _error_db(stems[key], truth))


def test_oracle_on_a_two_sided_transform_of_a_real_mixture_gives_real_stems(multitone):
    from demux.transforms.fft import ComplexFFT

    mixture, references = _tensors(multitone)
    stems = baselines.oracle_irm(mixture, 8000.0, references=references, transform=ComplexFFT(8000.0))
    _assert_sums_to_mixture(stems, mixture)  # real float32 stems, as the mixture
    scores = _scores(stems, references)
    assert min(scores.values()) > 20.0, scores


def test_oracles_refuse_a_one_sided_transform_for_complex_input():
    from demux.transforms.fft import FFT

    fs, mixture, references = _complex_tones()
    with pytest.raises(ParameterError, match="two-sided"):
        baselines.oracle_irm(mixture, fs, references=references, transform=FFT(fs))


def test_mti_canceller_cancels_zero_doppler_and_sums_to_the_mixture():
    rng = np.random.default_rng(5)
    constant = torch.full((2, 1, 500), complex(3.0, -1.5), dtype=torch.complex64)
    stems = baselines.mti_canceller(constant, 2000.0)
    assert list(stems) == ["clutter", "targets"]
    _assert_sums_to_mixture(stems, constant, atol=1e-6)
    residual_db = 10 * math.log10(float(stems["targets"].abs().square().sum()) / float(constant.abs().square().sum())
                                  + 1e-300)
    assert residual_db < -60.0, residual_db
    noisy = torch.tensor(rng.standard_normal((1, 2, 300)) + 1j * rng.standard_normal((1, 2, 300)),
                         dtype=torch.complex64)
    _assert_sums_to_mixture(baselines.mti_canceller(noisy, 2000.0, pulses=5), noisy, atol=1e-5)


@pytest.mark.parametrize("pulses", [3, 5])
@pytest.mark.parametrize("doppler", [0.25, 0.5, -0.125])  # fractions of the PRF
def test_mti_canceller_passes_tones_with_the_documented_gain(pulses, doppler):
    prf, n = 2000.0, 400
    tone = torch.exp(2j * math.pi * doppler * torch.arange(n, dtype=torch.float64))[None, None]
    stems = baselines.mti_canceller(tone.to(torch.complex64), prf, pulses=pulses)
    gain = math.sin(math.pi * doppler) ** (pulses - 1)  # PRF/4, 3 pulses: 1/2 (-6.02 dB)
    edge = (pulses - 1) // 2  # pulses that see the repeated edge pulse
    interior = slice(edge, n - edge)
    torch.testing.assert_close(stems["targets"][..., interior].to(torch.complex128), gain * tone[..., interior],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(stems["clutter"][..., interior].to(torch.complex128), (1 - gain) * tone[..., interior],
                               atol=1e-6, rtol=0)


def test_bandpass_on_disjoint_bands(multitone):
    mixture, references = _tensors(multitone)
    stems = baselines.bandpass(mixture, multitone.sample_rate, bands=multitone.params["bands"])
    assert list(stems) == [*references, "residual"]
    _assert_sums_to_mixture(stems, mixture, atol=1e-6)
    scores = _scores(stems, references)
    assert min(scores.values()) > 15.0, scores


def test_bandpass_keeps_negative_and_positive_frequencies_apart():
    fs, n = 1000.0, 4000
    t = torch.arange(n, dtype=torch.float64) / fs
    up, down = torch.exp(2j * math.pi * 120 * t), 0.5 * torch.exp(-2j * math.pi * 200 * t)
    mixture = (up + down).to(torch.complex64)[None, None]
    stems = baselines.bandpass(mixture, fs, bands={"up": (80.0, 160.0), "down": (-240.0, -160.0)})
    _assert_sums_to_mixture(stems, mixture, atol=1e-5)
    for name, truth in (("up", up), ("down", down)):
        error = (stems[name][0, 0, 200:-200].to(torch.complex128) - truth[200:-200]).abs().max()
        assert error < 0.02 * truth.abs().max(), (name, float(error))


def test_ecg_bandpass_removes_wander_and_keeps_the_band():
    fs, n = 360.0, 3600
    t = np.arange(n) / fs
    inside, wander = np.sin(2 * np.pi * 10 * t), 2 * np.sin(2 * np.pi * 0.1 * t)
    mixture = torch.tensor((inside + wander)[None, None], dtype=torch.float32)
    stems = baselines.ecg_bandpass(mixture, fs)
    assert list(stems) == ["ecg", "noise"]
    _assert_sums_to_mixture(stems, mixture, atol=1e-6)
    truth = torch.tensor(inside[None], dtype=torch.float32)
    assert float(snr(stems["ecg"][0, :, 360:-360], truth[:, 360:-360])) > 20.0


def test_hpss_separates_tone_from_clicks(two_tone_clicks):
    fs, mixture, tone, clicks = two_tone_clicks
    stems = baselines.hpss(mixture, fs)
    assert list(stems) == ["harmonic", "percussive"]
    _assert_sums_to_mixture(stems, mixture)
    assert float(si_sdr(stems["harmonic"][0], tone[0])) > 20.0
    assert float(si_sdr(stems["percussive"][0], clicks[0])) > 5.0


def test_fastica_recovers_instantaneously_mixed_sources():
    rng = np.random.default_rng(2)
    n = 4000
    sources = np.stack([rng.uniform(-1, 1, n), np.sign(np.sin(2 * np.pi * 3 * np.arange(n) / 1000))])
    mixing = np.array([[1.0, 0.6], [0.4, 1.0]])
    mixture = torch.tensor((mixing @ sources)[None], dtype=torch.float32)
    stems = baselines.fastica(mixture, 1000.0, seed=0)
    assert list(stems) == ["ic1", "ic2"]
    _assert_sums_to_mixture(stems, mixture, atol=1e-5)
    corr = np.array([[abs(np.corrcoef(stems[k][0, 0].numpy(), s)[0, 1]) for s in sources] for k in stems])
    best = max(corr[0, 0] + corr[1, 1], corr[0, 1] + corr[1, 0]) / 2
    assert best > 0.99, corr
    with pytest.raises(ParameterError, match="multichannel"):
        baselines.fastica(mixture[:, :1], 1000.0)


def test_nmf_separates_am_carriers_and_is_seeded():
    scenario = SCENARIOS["am"](np.random.default_rng(4), seconds=0.5)
    mixture, references = _tensors(scenario)
    stems = baselines.nmf(mixture, scenario.sample_rate, bands=scenario.params["bands"], n_iter=100, seed=1)
    assert list(stems) == [*references, "residual"]
    _assert_sums_to_mixture(stems, mixture)
    scores = _scores(stems, references)
    assert min(scores.values()) > 12.0, scores
    again = baselines.nmf(mixture, scenario.sample_rate, bands=scenario.params["bands"], n_iter=100, seed=1)
    assert all(torch.equal(stems[k], again[k]) for k in stems)
    is_stems = baselines.nmf(mixture, scenario.sample_rate, bands=scenario.params["bands"], n_iter=20, divergence="is")
    _assert_sums_to_mixture(is_stems, mixture)


def test_wavelet_shrinkage_denoises_white_noise_on_a_smooth_signal():
    import pywt

    clean = pywt.data.demo_signal("HeaviSine", 4096)
    noise = np.random.default_rng(0).standard_normal(clean.shape) * np.std(clean)  # 0 dB
    mixture = torch.tensor((clean + noise)[None, None], dtype=torch.float32)
    stems = baselines.wavelet_denoise(mixture, 1000.0)
    assert list(stems) == ["clean", "noise"]
    _assert_sums_to_mixture(stems, mixture, atol=1e-6)
    assert float(snr(stems["clean"][0], torch.tensor(clean[None], dtype=torch.float32))) > 12.0


def test_wavelet_shrinkage_improves_the_snr_of_a_noisy_ecg(monkeypatch):
    if not (DATA / "ecg").is_dir():
        pytest.skip(f"{DATA / 'ecg'} not present")
    monkeypatch.setenv("DEMUX_DATA", str(DATA))
    ecg = SCENARIOS["ecg-emg"](np.random.default_rng(0), seconds=10.0).sources["ecg"]
    noise = np.random.default_rng(1).standard_normal(ecg.shape) * np.sqrt(np.mean(ecg.astype(np.float64) ** 2))
    mixture = torch.tensor((ecg + noise)[None], dtype=torch.float32)
    truth = torch.from_numpy(ecg)
    before = float(snr(mixture[0], truth))
    after = float(snr(baselines.wavelet_denoise(mixture, 360.0)["clean"][0], truth))
    assert abs(before) < 0.2 and after > before + 2.0, (before, after)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: baselines.oracle_irm(x, 8000.0, references={}), "need references"),
        (lambda x: baselines.oracle_irm(x, 8000.0, references={"a": x[..., :10]}), "expected the mixture's"),
        (lambda x: baselines.bandpass(x, 8000.0, bands={"a": (100.0, 5000.0)}), "not inside"),
        (lambda x: baselines.bandpass(x, 8000.0, bands={"residual": (100.0, 500.0)}), "also a source name"),
        (lambda x: baselines.nmf(x, 8000.0, bands={"a": (0.0, 100.0)}, divergence="euclid"), "divergence"),
        (lambda x: baselines.wavelet_denoise(x, 8000.0, wavelet="nope"), "wavelet"),
        (lambda x: baselines.hpss(x[0], 8000.0), r"\(batch, channel, time\)"),
        (lambda x: baselines.hpss(x.to(torch.complex64), 8000.0), "real mixture"),
        (lambda x: baselines.mti_canceller(x, 2000.0, pulses=2), "odd integer >= 3"),
        (lambda x: baselines.mti_canceller(x, 2000.0, pulses=True), "odd integer >= 3"),
    ],
)
def test_bad_arguments_raise_parameter_errors(call, message):
    with pytest.raises(ParameterError, match=message):
        call(torch.zeros(1, 1, 800))
