"""Transforms: round trips, parity with references, gradients, physical axes, errors.

Tolerances: round trips 1e-5 relative (float32) and 5e-11 (float64, pywt's own
round-trip tolerance: its biorthogonal filters are tabulated to ~1e-12); parity with
scipy/pywt/numpy 1e-10 relative in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import pywt
import scipy.fft
import scipy.signal
import torch
from sklearn.decomposition import PCA as SkPCA
from sklearn.decomposition import FastICA as SkFastICA

from demux.errors import ParameterError
from demux.transforms import (
    ArraySTFT, ComplexFFT, ComplexSTFT, DCT, DWT, FFT, ICA, ICASTFT, MelBands, PCA, STFT, SpatialDFT, TRANSFORMS, build_transform, transform_params,
)
from demux.transforms.channels import fastica_fit, pca_fit
from demux.transforms.dct import dct, idct
from demux.transforms.mel import mel_filterbank
from demux.transforms.spatial import steering_vectors
from demux.transforms.stft import make_window, stft
from demux.transforms.wavelet import MODES, filter_bank, level_bands, wavedec

ROUND_TRIP_TOL = {torch.float32: 1e-5, torch.float64: 5e-11}
PARITY_TOL = 1e-10




def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().norm() / b.abs().norm())


def noise(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def independent_sources(n: int, seed: int = 0) -> torch.Tensor:
    """``(1, 3, n)`` non-Gaussian, independent, unit-variance sources."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    sources = np.stack([rng.laplace(size=n), rng.uniform(-1, 1, size=n), np.sign(np.sin(2 * np.pi * t / 97.3))])
    sources = (sources - sources.mean(1, keepdims=True)) / sources.std(1, keepdims=True)
    return torch.from_numpy(sources)[None]


MIXING = torch.tensor([[1.0, 0.5, 0.3], [0.2, 1.0, 0.4], [0.6, -0.3, 1.0]], dtype=torch.float64)


def best_abs_corr(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each true row, the best |correlation| with any estimated row."""
    k = truth.shape[0]
    return np.abs(np.corrcoef(truth, estimate)[:k, k:]).max(axis=1)


def fitted(transform, x: torch.Tensor):
    return transform.fit(x) if isinstance(transform, PCA | ICA | ICASTFT) else transform


# One small instance per registered transform (M = C = 3 channels), for the shared checks.
def small_transforms(dtype: torch.dtype = torch.float32):
    return {
        "stft": STFT(8000, n_fft=64, hop=16),
        "fft": FFT(8000),
        "dct": DCT(8000),
        "dwt": DWT(8000, "db4", mode="symmetric"),
        "pca": PCA(8000),
        "ica": ICA(8000, seed=1),
        "spatial": SpatialDFT(8000, 3, 0.1, angles_deg=(-60, -30, 0, 30, 60), n_fft=64, hop=16),
        "cfft": ComplexFFT(8000),
        "cstft": ComplexSTFT(8000, n_fft=64, hop=16),
        "array-stft": ArraySTFT(8000, 3, 0.1, n_fft=64, hop=16),
        "ica-stft": ICASTFT(8000, window_s=0.008, hop_s=0.002),
    }


def signal_for(transform, x: torch.Tensor) -> torch.Tensor:
    """``x`` as the transform takes it: real, or complex baseband (I from x, Q from x shifted)."""
    return torch.complex(x, x.roll(7, dims=-1)) if transform.complex_input else x


def mixed(batch: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """``(batch, 3, length)`` invertibly mixed independent sources (fine for every transform)."""
    items = [MIXING @ independent_sources(length, seed=b)[0] for b in range(batch)]
    return torch.stack(items).to(dtype)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_every_transform_round_trips(name, dtype):
    transform = small_transforms()[name]
    x = signal_for(transform, mixed(2, 1001, dtype))
    transform = fitted(transform, x)
    assert transform.invertible
    y = transform.inverse(transform(x), x.shape[-1])
    assert y.shape == x.shape and y.dtype == x.dtype
    assert rel_err(y, x) <= ROUND_TRIP_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("n_fft", "hop", "window", "length"),
    [(256, 64, "hann", 1000), (255, 100, "hann", 999), (512, 128, ("kaiser", 8.0), 4097), (64, 16, "blackman", 333),
     (128, 128, "boxcar", 1024), (32, 8, torch.hamming_window(32, dtype=torch.float64), 200)],
)
def test_stft_round_trip(n_fft, hop, window, length, dtype):
    transform = STFT(16000, n_fft=n_fft, hop=hop, window=window)
    x = noise(3, 2, length, dtype=dtype)
    coeffs = transform(x)
    assert coeffs.shape == (3, 2, n_fft // 2 + 1, 1 + length // hop) and coeffs.is_complex()
    assert rel_err(transform.inverse(coeffs, length), x) <= ROUND_TRIP_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [1, 2, 7, 64, 1001])
def test_fft_and_dct_round_trip(length, dtype):
    x = noise(2, 3, length, dtype=dtype)
    for transform in (FFT(1000), DCT(1000)):
        assert rel_err(transform.inverse(transform(x), length), x) <= ROUND_TRIP_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["periodization", "symmetric"])
@pytest.mark.parametrize("wavelet", ["db4", "sym5", "bior4.4"])
def test_dwt_round_trip_every_level(wavelet, mode, dtype):
    for length in (97, 128, 301):
        x = noise(2, 3, length, dtype=dtype, seed=length)
        deepest = pywt.dwt_max_level(length, pywt.Wavelet(wavelet).dec_len)
        assert DWT(100, wavelet, mode=mode).levels(length) == deepest
        for level in range(1, deepest + 1):
            transform = DWT(100, wavelet, level=level, mode=mode)
            coeffs = transform(x)
            assert coeffs.shape == (2, 3, sum(transform.lengths(length)))
            assert rel_err(transform.inverse(coeffs, length), x) <= ROUND_TRIP_TOL[dtype]


def test_dwt_pack_split_round_trip():
    transform = DWT(100, "sym5", level=3, mode="symmetric")
    x = noise(2, 1, 150)
    coeffs = transform(x)
    parts = transform.split(coeffs, 150)
    assert [p.shape[-1] for p in parts] == transform.lengths(150)
    assert torch.equal(transform.pack(parts), coeffs)


def test_pca_projection_with_fewer_components_keeps_top_variance():
    x = mixed(1, 2000, torch.float64)
    transform = PCA(100, n_components=2).fit(x)
    assert not transform.invertible
    approx = transform.inverse(transform(x), 2000)
    # Rank-2 projection: the error is exactly the discarded variance, never the kept one.
    full = PCA(100).fit(x)
    dropped = full(x)[:, 2:]
    assert rel_err(approx, x) == pytest.approx(float(dropped.norm() / x.norm()), rel=1e-9)


def test_spatial_round_trip_needs_well_conditioned_beams():
    clustered = SpatialDFT(16000, 4, 0.05, angles_deg=(-10, 0, 10, 20), n_fft=128)
    assert not clustered.invertible and clustered.condition > 100


# --------------------------------------------------------------------------- parity with references


@pytest.mark.parametrize(
    ("n_fft", "hop", "window"), [(256, 64, "hann"), (255, 100, "hamming"), (128, 32, ("kaiser", 6.0))]
)
def test_stft_matches_scipy_shorttimefft(n_fft, hop, window):
    # ShortTimeFFT slice p is centred on sample p * hop like torch's centred frames;
    # phase_shift=None keeps numpy's rfft phase (no roll to the window centre).
    x = noise(1, 1, 2000, dtype=torch.float64)
    win = make_window(window, n_fft).numpy()
    reference = scipy.signal.ShortTimeFFT(win, hop, 16000, fft_mode="onesided", mfft=n_fft, phase_shift=None)
    ours = STFT(16000, n_fft=n_fft, hop=hop, window=window)(x)[0, 0].numpy()
    expected = reference.stft(x[0, 0].numpy(), p0=0, p1=ours.shape[-1])
    assert np.abs(ours - expected).max() <= PARITY_TOL * np.abs(expected).max()


def test_stft_matches_naive_frames():
    x = noise(1, 1, 300, dtype=torch.float64)[0, 0].numpy()
    n_fft, hop = 64, 20
    window = scipy.signal.get_window("hann", n_fft)
    padded = np.pad(x, n_fft // 2)
    frames = np.stack([padded[n * hop : n * hop + n_fft] for n in range(1 + len(x) // hop)], axis=1)
    expected = np.fft.rfft(frames * window[:, None], axis=0)
    ours = stft(torch.from_numpy(x), n_fft=n_fft, hop=hop, window=torch.from_numpy(window)).numpy()
    assert np.abs(ours - expected).max() <= PARITY_TOL * np.abs(expected).max()


@pytest.mark.parametrize("length", [1, 2, 9, 256, 1001])
def test_dct_matches_scipy(length):
    x = noise(2, length, dtype=torch.float64)
    expected = scipy.fft.dct(x.numpy(), type=2, norm="ortho", axis=-1)
    assert np.abs(dct(x).numpy() - expected).max() <= PARITY_TOL * np.abs(expected).max()
    assert np.abs(idct(torch.from_numpy(expected)).numpy() - x.numpy()).max() <= PARITY_TOL * x.abs().max().item()


def test_fft_matches_numpy():
    x = noise(1, 2, 777, dtype=torch.float64)
    expected = np.fft.rfft(x.numpy(), axis=-1)
    assert np.abs(FFT(100)(x).numpy() - expected).max() <= PARITY_TOL * np.abs(expected).max()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wavelet", ["db4", "sym5", "bior4.4", "haar", "coif2"])
def test_dwt_matches_pywt_wavedec(wavelet, mode):
    bank = filter_bank(wavelet)
    for length in (41, 128, 333):
        x = noise(2, length, dtype=torch.float64, seed=length)
        for level in range(1, pywt.dwt_max_level(length, bank.dec.shape[-1]) + 1):
            expected = pywt.wavedec(x.numpy(), wavelet, mode=mode, level=level)
            ours = wavedec(x, bank=bank, level=level, mode=mode)
            assert len(ours) == len(expected) == level + 1
            for got, ref in zip(ours, expected, strict=True):
                assert got.shape == ref.shape
                assert np.abs(got.numpy() - ref).max() <= PARITY_TOL * np.abs(ref).max()


def naive_mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk, norm):
    """librosa.filters.mel written out from its documented formulas, one bin at a time."""

    def hz_to_mel(f):
        if htk:
            return 2595.0 * math.log10(1.0 + f / 700.0)
        if f < 1000.0:
            return f / (200.0 / 3)
        return 15.0 + math.log(f / 1000.0) / (math.log(6.4) / 27.0)

    def mel_to_hz(m):
        if htk:
            return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
        if m < 15.0:
            return m * 200.0 / 3
        return 1000.0 * math.exp((m - 15.0) * math.log(6.4) / 27.0)

    lo, hi = hz_to_mel(fmin), hz_to_mel(fmax)
    points = [mel_to_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    weights = np.zeros((n_mels, n_fft // 2 + 1))
    for band in range(n_mels):
        left, centre, right = points[band : band + 3]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            rising, falling = (f - left) / (centre - left), (right - f) / (right - centre)
            weights[band, k] = max(0.0, min(rising, falling))
        if norm == "slaney":
            weights[band] *= 2.0 / (right - left)
    return weights


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax", "scale", "norm"),
    [(16000, 512, 40, 0.0, None, "slaney", "slaney"), (22050, 1024, 64, 50.0, 8000.0, "htk", None),
     (8000, 255, 20, 300.0, None, "slaney", None), (44100, 2048, 128, 0.0, 16000.0, "htk", "slaney")],
)
def test_mel_filterbank_matches_naive_librosa_formulas(sr, n_fft, n_mels, fmin, fmax, scale, norm):
    ours = mel_filterbank(sample_rate=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, scale=scale,
                          norm=norm, dtype=torch.float64).numpy()
    expected = naive_mel_filterbank(sr, n_fft, n_mels, fmin, fmax or sr / 2, scale == "htk", norm)
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-9 * np.abs(expected).max()


def test_mel_bands_pool_and_expand():
    bands = MelBands(8000, n_fft=256, n_mels=16, fmin=300.0, fmax=3000.0)
    filters = bands.filters.double().numpy()
    power = noise(2, 129, 5, dtype=torch.float64).square()
    assert np.allclose(bands.to_mel(power).numpy(), np.einsum("mf,bfn->bmn", filters, power.numpy()), rtol=1e-6)
    values = noise(2, 16, 5, dtype=torch.float64)
    lifted = bands.expand(values).numpy()
    coverage = filters.sum(axis=0)
    covered = coverage > 0
    expected = np.einsum("mf,bmn->bfn", filters, values.numpy())[:, covered] / coverage[covered][None, :, None]
    assert np.allclose(lifted[:, covered], expected, rtol=1e-5, atol=1e-6)
    # Bins outside [300, 3000] Hz get the nearest band: the first below, the last above.
    freqs = np.arange(129) * 8000 / 256
    assert np.allclose(lifted[:, freqs < 250], values.numpy()[:, :1].repeat((freqs < 250).sum(), 1))
    assert np.allclose(lifted[:, freqs > 3050], values.numpy()[:, -1:].repeat((freqs > 3050).sum(), 1))
    # A mask equal in every band lifts to the same value everywhere (the weights sum to one).
    assert np.allclose(bands.expand(torch.full((16, 3), 0.25)).numpy(), 0.25, atol=1e-6)


def test_fastica_recovers_sources_like_sklearn():
    sources = independent_sources(5000)
    x = (MIXING @ sources[0])[None]
    unmixing, mixing, mean = fastica_fit(x, seed=0)
    ours = (unmixing @ (x - mean))[0].numpy()
    assert best_abs_corr(ours, sources[0].numpy()).min() > 0.99
    sk = SkFastICA(n_components=3, whiten="unit-variance", fun="logcosh", random_state=0, max_iter=400, tol=1e-4)
    sk_sources = sk.fit_transform(x[0].numpy().T).T
    assert best_abs_corr(sk_sources, sources[0].numpy()).min() > 0.99
    assert best_abs_corr(ours, sk_sources).min() > 0.99
    again = fastica_fit(x, seed=0)[0]
    assert torch.equal(again, unmixing)


def test_pca_matches_sklearn_axes():
    x = mixed(1, 3000, torch.float64)
    unmixing, mixing, mean = pca_fit(x)
    sk = SkPCA(n_components=3).fit(x[0].numpy().T)
    alignment = np.abs(np.einsum("kc,kc->k", unmixing[0].numpy(), sk.components_))
    assert np.allclose(alignment, 1.0, atol=1e-8)
    assert np.allclose(mean[0, :, 0].numpy(), sk.mean_)
    assert np.allclose((mixing @ unmixing)[0].numpy(), np.eye(3), atol=1e-12)


# --------------------------------------------------------------------------- gradients


def gradcheck_transform(transform, x: torch.Tensor) -> None:
    length = x.shape[-1]
    assert torch.autograd.gradcheck(transform, (x.requires_grad_(),), fast_mode=True)
    coeffs = transform(x.detach()).requires_grad_()
    assert torch.autograd.gradcheck(lambda c: transform.inverse(c, length), (coeffs,), fast_mode=True)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_gradcheck_forward_and_inverse(name):
    transform = small_transforms()[name]
    x = signal_for(transform, mixed(1, 40, torch.float64))
    if name in ("stft", "spatial", "cstft", "array-stft"):
        transform = {
            "stft": STFT(8000, n_fft=8, hop=2),
            "cstft": ComplexSTFT(8000, n_fft=8, hop=2),
            "spatial": SpatialDFT(8000, 3, 0.1, angles_deg=(-60, -30, 0, 30, 60), n_fft=8, hop=2),
            "array-stft": ArraySTFT(8000, 3, 0.1, n_fft=8, hop=2),
        }[name]
    gradcheck_transform(fitted(transform, x), x)


def test_gradcheck_dwt_periodization():
    gradcheck_transform(DWT(100, "sym5", level=2, mode="periodization"), noise(1, 2, 37, dtype=torch.float64))


# --------------------------------------------------------------------------- physical axes


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_grid_describes_forward_output(name):
    transform = small_transforms()[name]
    x = signal_for(transform, mixed(2, 1001, torch.float32))
    transform = fitted(transform, x)
    coeffs = transform(x)
    grid = transform.grid(1001)
    assert grid.shape == tuple(coeffs.shape[2:]) == transform.coefficient_shape(1001)
    item = coeffs[0].abs()
    for tensor in (grid.freq_hz, grid.band_lo_hz, grid.band_hi_hz, grid.time_s, grid.group, grid.frame):
        assert torch.broadcast_shapes(tensor.shape, item.shape) == item.shape
    assert int(grid.group.min()) == 0 and int(grid.group.max()) == grid.n_groups - 1
    assert int(grid.frame.min()) == 0 and int(grid.frame.max()) == grid.n_frames - 1
    assert bool((grid.band_lo_hz <= grid.freq_hz).all() and (grid.freq_hz <= grid.band_hi_hz).all())
    lowest = -4000 if transform.complex_input else 0  # complex baseband: a two-sided spectrum
    assert float(grid.band_lo_hz.min()) >= lowest and float(grid.band_hi_hz.max()) <= 4000
    assert float(grid.time_s.min()) >= 0 and float(grid.time_s.max()) <= 1001 / 8000


def tone(freq_hz: float, sample_rate: float, length: int) -> torch.Tensor:
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    return torch.sin(2 * math.pi * freq_hz * t).float().view(1, 1, -1)


def test_stft_grid_peaks_at_tone_frequency():
    transform = STFT(16000, n_fft=512, hop=128)
    spectrum = transform(tone(1000.0, 16000, 16000))[0, 0].abs().mean(-1)
    grid = transform.grid(16000)
    assert float(grid.freq_hz[0, int(spectrum.argmax()), 0]) == pytest.approx(1000.0)
    assert torch.allclose(grid.time_s[0, 0, :3], torch.tensor([0.0, 0.008, 0.016]))
    assert float(grid.band_hi_hz[0, -1, 0]) == 8000.0 and float(grid.band_lo_hz[0, 0, 0]) == 0.0
    assert float(grid.band_hi_hz[0, 1, 0] - grid.band_lo_hz[0, 1, 0]) == pytest.approx(16000 / 512)


@pytest.mark.parametrize("cls", [FFT, DCT])
def test_whole_signal_grid_peaks_at_tone_frequency(cls):
    transform = cls(16000)
    coeffs = transform(tone(1000.0, 16000, 8000))[0, 0].abs()
    grid = transform.grid(8000)
    peak = grid.freq_hz[0, int(coeffs.argmax())]
    assert float(peak) == pytest.approx(1000.0, abs=float(grid.band_hi_hz[0, 1] - grid.band_lo_hz[0, 1]))
    assert grid.n_groups == 512 and grid.n_frames == 1
    assert bool((grid.group.diff() >= 0).all())
    counts = torch.bincount(grid.group[0])
    assert int(counts.max() - counts.min()) <= 1


def test_dwt_levels_cover_octaves_and_capture_tones():
    fs, length, level = 360.0, 3600, 5
    transform = DWT(fs, "db4", level=level)
    grid = transform.grid(length)
    for j in range(1, level + 1):
        group = level + 1 - j
        members = grid.group[0] == group
        assert float(grid.band_lo_hz[0, members].min()) == fs / 2 ** (j + 1)
        assert float(grid.band_hi_hz[0, members].max()) == fs / 2**j
        assert transform.level_groups(fs / 2 ** (j + 1) + 1, fs / 2**j - 1, length) == [group]
        coeffs = transform(tone(0.75 * fs / 2**j, fs, length))[0, 0]
        energy = torch.zeros(level + 1).index_add(0, grid.group[0], coeffs.square())
        assert float(energy[group] / energy.sum()) > 0.8
    approx = grid.group[0] == 0
    assert float(grid.band_hi_hz[0, approx].max()) == fs / 2 ** (level + 1)
    assert transform.level_groups(0.0, 30.0, length) == [0, 1, 2, 3]  # up to D3 = [22.5, 45] Hz
    assert level_bands(sample_rate=fs, level=2) == [(0.0, 45.0), (45.0, 90.0), (90.0, 180.0)]


def test_dwt_grid_times_follow_coefficients():
    transform = DWT(100.0, "db4", level=3, mode="periodization")
    grid = transform.grid(800)
    for group in range(4):
        times = grid.time_s[0, grid.group[0] == group]
        step = 2 ** (3 if group == 0 else 4 - group) / 100.0
        assert torch.allclose(times.diff(), torch.full_like(times.diff(), step), atol=1e-5)
    # The coarsest level's coefficient n spans samples [8n, 8n + 8): frames agree with that.
    assert grid.n_frames == 100
    fine = grid.group[0] == 3
    assert torch.equal(grid.frame[0, fine], torch.arange(400) // 4)


def test_spatial_dft_points_at_plane_wave_direction():
    fs, length, spacing, speed = 16000, 4096, 0.04, 343.0
    angles = tuple(range(-90, 91, 5))
    transform = SpatialDFT(fs, 8, spacing, speed_m_s=speed, angles_deg=angles, n_fft=256, hop=64)
    t = torch.arange(length, dtype=torch.float64) / fs
    delays = torch.arange(8, dtype=torch.float64) * spacing * math.sin(math.radians(30.0)) / speed
    x = sum(torch.cos(2 * math.pi * f * (t[None, :] - delays[:, None])) for f in (1500.0, 2500.0, 3500.0))
    beams = transform(x.float()[None])
    energy = beams.abs().square().sum(dim=(0, 2, 3))
    grid = transform.grid(length)
    assert grid.direction_deg.shape == (len(angles), 1, 1)
    assert float(grid.direction_deg[int(energy.argmax()), 0, 0]) == 30.0


def test_steering_vectors_delay_phase():
    a = steering_vectors(n_elements=3, spacing_m=0.5, speed_m_s=340.0, freqs_hz=torch.tensor([0.0, 170.0]),
                         angles_deg=torch.tensor([0.0, 90.0]))
    assert a.shape == (2, 3, 2)
    assert torch.allclose(a[0], torch.ones(3, 2, dtype=a.dtype))
    # At 170 Hz and 90 deg each element lags the previous by 0.5/340 s, a quarter period: phase -pi/2 per element.
    expected = torch.polar(torch.ones(3, dtype=torch.float64), -0.5 * math.pi * torch.arange(3, dtype=torch.float64))
    assert torch.allclose(a[1, :, 1], expected)


# --------------------------------------------------------------------------- batching and errors


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_batch_equals_stacked_single_calls(name):
    x = signal_for(small_transforms()[name], mixed(3, 513, torch.float32))
    batched = fitted(small_transforms()[name], x)
    coeffs = batched(x)
    for b in range(3):
        single = fitted(small_transforms()[name], x[b : b + 1])
        assert torch.allclose(coeffs[b : b + 1], single(x[b : b + 1]), rtol=1e-4, atol=1e-4)
        assert torch.allclose(batched.inverse(coeffs, 513)[b : b + 1], single.inverse(coeffs[b : b + 1], 513),
                              rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: STFT(100, n_fft=64, hop=0), r"hop=0 is not an integer >= 1"),
        (lambda: STFT(100, n_fft=1), r"n_fft=1 is not an integer >= 2"),
        (lambda: STFT(100, n_fft=64, window="nosuchwindow"), r"not a scipy.signal.get_window name"),
        (lambda: STFT(100, n_fft=64, window=torch.ones(32)), r"shape \(64,\)"),
        (lambda: DWT(100, "db44"), r"not a discrete PyWavelets wavelet; did you mean"),
        (lambda: DWT(100, "morl"), r"not a discrete PyWavelets wavelet"),
        (lambda: DWT(100, "db4", mode="wrap"), r"mode='wrap' is not one of periodization"),
        (lambda: DWT(100, "db4", level=0), r"level=0 is not an integer >= 1"),
        (lambda: DWT(100, "db4", level=6)(torch.zeros(1, 1, 100)), r"max level is 3"),
        (lambda: build_transform("sftf", 100), r"unknown transform 'sftf'; did you mean 'stft'\?.*valid: stft, fft"),
        (lambda: build_transform("stft", 100, nfft=256), r"no parameter 'nfft' \(accepted: n_fft, hop, window\)"),
        (lambda: PCA(100)(torch.zeros(1, 2, 10)), r"call fit\(x\) first"),
        (lambda: ICA(100, n_components=3).fit(torch.zeros(1, 2, 10)), r"n_components=3 exceeds the 2 channels"),
        (lambda: FFT(100)(torch.zeros(4, 10)), r"\(batch, channel, time\) tensor"),
        (lambda: mel_filterbank(sample_rate=100, n_fft=64, n_mels=8, fmin=60.0), r"0 <= fmin < fmax"),
        (lambda: MelBands(100, 64, scale="bark"), r"scale='bark' is not one of slaney, htk"),
        (lambda: SpatialDFT(100, 4, 0.1)(torch.zeros(1, 3, 100)), r"expected 4 channels"),
        (lambda: SpatialDFT(100, 4, 0.1, angles_deg=(0, 120)), r"degrees in \[-90, 90\]"),
        (lambda: STFT(100, n_fft=64, hop=16).inverse(torch.zeros(1, 1, 33, 5, dtype=torch.complex64), 200),
         r"STFT frames: got 5, but a 200-sample signal has 13"),
        (lambda: STFT(100, n_fft=64, hop=128).inverse(torch.zeros(1, 1, 33, 2, dtype=torch.complex64), 200),
         r"not NOLA for hop=128"),
    ],
)
def test_bad_parameters_raise(build, match):
    with pytest.raises(ParameterError, match=match):
        build()


def test_build_transform_by_name():
    transform = build_transform("dwt", 360, wavelet="sym8", level=4, mode="symmetric")
    assert isinstance(transform, DWT) and transform.level == 4 and transform.mode == "symmetric"
    assert transform_params("stft") == ["n_fft", "hop", "window"]
    assert set(TRANSFORMS) == {"stft", "fft", "dct", "dwt", "pca", "ica", "spatial", "cfft", "cstft", "array-stft", "ica-stft"}


def test_documented_defaults():
    stft_default = STFT(16000)
    assert (stft_default.n_fft, stft_default.hop) == (1024, 256)
    assert np.allclose(stft_default.window.numpy(), scipy.signal.get_window("hann", 1024))
    dwt_default = DWT(360)
    assert (dwt_default.wavelet, dwt_default.level, dwt_default.mode) == ("db4", None, "periodization")
    spatial = SpatialDFT(16000, 4, 0.05)
    assert spatial.min_freq_hz == pytest.approx(343.0 / (4 * 0.05))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_round_trip_on_cuda(name):
    x = mixed(2, 1001, torch.float32).cuda()
    transform = fitted(small_transforms()[name].cuda(), x)
    coeffs = transform(x)
    assert coeffs.device.type == "cuda"
    assert rel_err(transform.inverse(coeffs, 1001), x) <= ROUND_TRIP_TOL[torch.float32]


# --------------------------------------------------------------------------- complex baseband


def test_complex_fft_matches_numpy_in_increasing_frequency_order():
    x = torch.complex(noise(2, 1, 301, dtype=torch.float64), noise(2, 1, 301, dtype=torch.float64).flip(-1))
    ours = ComplexFFT(1000)(x)
    reference = np.fft.fftshift(np.fft.fft(x.numpy(), axis=-1), axes=-1)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=PARITY_TOL, atol=PARITY_TOL * np.abs(reference).max())
    freqs = ComplexFFT(1000).grid(301).freq_hz.flatten().double()
    np.testing.assert_allclose(freqs.numpy(), np.fft.fftshift(np.fft.fftfreq(301, 1 / 1000)), atol=1e-3)


@pytest.mark.parametrize("transform", [ComplexFFT(16000), ComplexSTFT(16000, n_fft=512, hop=128)])
@pytest.mark.parametrize("tone_hz", [-3000.0, 1000.0])
def test_complex_tone_peaks_at_its_signed_frequency(transform, tone_hz):
    t = torch.arange(16000, dtype=torch.float64) / 16000
    x = torch.exp(2j * math.pi * tone_hz * t).to(torch.complex64).view(1, 1, -1)
    power = transform(x).abs().square()[0, 0]
    grid = transform.grid(16000)
    freq = torch.broadcast_to(grid.freq_hz, (1, *grid.shape))[0]
    peak = freq.flatten()[power.flatten().argmax()]
    assert abs(float(peak) - tone_hz) <= 16000 / 512 / 2 + 1e-3


def test_complex_stft_matches_naive_framing():
    n_fft, hop, length = 16, 4, 50
    x = torch.complex(noise(1, 1, length, dtype=torch.float64), noise(1, 1, length, dtype=torch.float64).roll(3, -1))
    ours = ComplexSTFT(100, n_fft=n_fft, hop=hop)(x)[0, 0].numpy()
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as scipy's get_window("hann")
    padded = np.pad(x[0, 0].numpy(), n_fft // 2)
    frames = [padded[i * hop : i * hop + n_fft] * window for i in range(1 + length // hop)]
    naive = np.fft.fftshift(np.fft.fft(np.stack(frames, axis=1), axis=0), axes=0)
    np.testing.assert_allclose(ours, naive, atol=1e-10)
