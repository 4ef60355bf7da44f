"""Baselines: what demux is measured against, each with the signature of a separator.

Every baseline is ``fn(mixture, sample_rate, **options) -> dict[str, Tensor]`` with
``mixture`` a real ``(batch, channel, time)`` tensor (complex is accepted where stated)
and every stem of the same shape, dtype and device. They are registered once in
:data:`BASELINES`.

- Upper bounds (need ``references``): the oracle ideal ratio mask, ideal binary mask and
  Wiener filter, on the same STFT as demux (or any invertible ``transform`` passed in; a
  complex baseband mixture needs a two-sided one, ``cstft``/``cfft``).
- What a user would do without demux: static zero-phase Butterworth band-pass filters from
  declared bands, a 0.5-40 Hz ECG cleaner, and the radar MTI delay-line canceller.
- Classic blind methods: FastICA (multichannel), NMF with Wiener masks, HPSS
  (Fitzgerald 2010), wavelet soft-thresholding (Donoho & Johnstone 1994).

Which stems sum to the mixture: all of them. Mask baselines use masks that sum to one over
the sources at every coefficient, so their stems sum to the mixture up to the transform's
round-trip error; the filter, wavelet and ICA baselines put whatever their sources do not
take into a residual stem, so their stems sum to the mixture up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from demux.errors import ParameterError
from demux.transforms.base import Transform, power
from demux.transforms.stft import STFT, ComplexSTFT

Separator = Callable[..., dict[str, Tensor]]
NmfDivergence = Literal["kl", "is"]
Threshold = Literal["soft", "hard"]


# ---------------------------------------------------------------------------------------
# shared helpers


def _check_mixture(mixture: Tensor, *, allow_complex: bool = False) -> tuple[int, int, int]:
    if not isinstance(mixture, Tensor) or mixture.dim() != 3:
        shape = tuple(mixture.shape) if isinstance(mixture, Tensor) else type(mixture).__name__
        raise ParameterError(f"mixture must be a (batch, channel, time) tensor, got {shape}")
    if mixture.is_complex() and not allow_complex:
        raise ParameterError("this baseline needs a real mixture; complex baseband is supported by 'bandpass', "
                             "'mti-canceller' and the oracles")
    return tuple(mixture.shape)


def _check_references(references: Mapping[str, Tensor] | None, mixture: Tensor) -> dict[str, Tensor]:
    if not references:
        raise ParameterError("oracle baselines need references: a dict source name -> (batch, channel, time) tensor")
    for name, ref in references.items():
        if not isinstance(ref, Tensor) or tuple(ref.shape) != tuple(mixture.shape):
            shape = tuple(ref.shape) if isinstance(ref, Tensor) else type(ref).__name__
            raise ParameterError(f"reference {name!r} has shape {shape}; expected the mixture's {tuple(mixture.shape)}")
    return {name: ref.to(mixture) for name, ref in references.items()}


def _transform(sample_rate: float, transform: Transform | None, n_fft: int, hop: int | None, window, *,
               complex_input: bool = False) -> Transform:
    """``transform``, checked; by default an STFT (two-sided for a ``complex_input`` mixture)."""
    if transform is None:
        return (ComplexSTFT if complex_input else STFT)(sample_rate, n_fft=n_fft, hop=hop, window=window)
    if not transform.invertible:
        raise ParameterError(f"{type(transform).__name__} is not invertible with these settings; masks need an inverse")
    if complex_input and not transform.complex_input:
        raise ParameterError(f"{type(transform).__name__} takes real signals; a complex (I/Q) mixture needs a "
                             "two-sided transform such as ComplexSTFT ('cstft') or ComplexFFT ('cfft')")
    return transform


def _apply_masks(transform: Transform, coeffs: Tensor, masks: Mapping[str, Tensor], length: int,
                 like: Tensor) -> dict[str, Tensor]:
    """Stems ``inverse(coeffs * mask)``, cast back to ``like``'s dtype and device.

    A two-sided transform of a real ``like`` synthesises complex stems whose imaginary part
    is rounding (the masks of real references are symmetric in frequency): it is dropped.
    """
    stems = {name: transform.inverse(coeffs * mask, length) for name, mask in masks.items()}
    return {name: (s.real if s.is_complex() and not like.is_complex() else s).to(like) for name, s in stems.items()}


def _analyse(transform: Transform, x: Tensor) -> Tensor:
    # Masks are computed in float64 so that an oracle's ceiling is not limited by rounding.
    return transform(x.to(torch.complex128 if x.is_complex() else torch.float64))


def _to_numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.complex128 if x.is_complex() else np.float64)


def _from_numpy(x: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype=like.dtype, device=like.device)


def _with_residual(stems: dict[str, np.ndarray], mixture: np.ndarray, residual: str | None) -> dict[str, np.ndarray]:
    if residual is None:
        return stems
    if residual in stems:
        raise ParameterError(f"residual={residual!r} is also a source name; choose another name")
    return {**stems, residual: mixture - sum(stems.values())}


def _odd(n: float) -> int:
    return max(3, int(round(n)) // 2 * 2 + 1)


# ---------------------------------------------------------------------------------------
# oracle masks (upper bounds)


def _oracle(mixture, sample_rate, references, masks_from: Callable[[Tensor], Tensor], transform, n_fft, hop, window):
    _, _, T = _check_mixture(mixture, allow_complex=True)
    refs = _check_references(references, mixture)
    tf = _transform(sample_rate, transform, n_fft, hop, window, complex_input=mixture.is_complex())
    coeffs = _analyse(tf, mixture)
    ref_power = torch.stack([power(_analyse(tf, r)) for r in refs.values()])  # (S, B, C, *K)
    masks = masks_from(ref_power)
    return _apply_masks(tf, coeffs, dict(zip(refs, masks)), T, mixture)


def _ratio_masks(ref_power: Tensor, exponent: float) -> Tensor:
    """``|S_s|^exponent / sum_j |S_j|^exponent``; ``1/S`` where every reference is silent."""
    weights = ref_power ** (exponent / 2)
    total = weights.sum(dim=0, keepdim=True)
    uniform = torch.full_like(weights, 1.0 / weights.shape[0])
    return torch.where(total > 0, weights / total.clamp_min(torch.finfo(weights.dtype).tiny), uniform)


def oracle_irm(mixture: Tensor, sample_rate: float, *, references: Mapping[str, Tensor],
               transform: Transform | None = None, n_fft: int = 1024, hop: int | None = None,
               window="hann") -> dict[str, Tensor]:
    """Oracle ideal ratio mask ``|S_s| / sum_j |S_j|`` (magnitude ratio) applied to the mixture.

    Args:
        mixture: ``(B, C, T)`` real, or complex baseband (I/Q).
        sample_rate: Hz.
        references: source name -> ``(B, C, T)`` true source (include the noise to get a
            noise stem; otherwise the noise is shared out by the masks).
        transform: an invertible :class:`~demux.transforms.base.Transform`, one with
            ``complex_input`` (``cstft``, ``cfft``) for a complex mixture; default
            ``STFT(sample_rate, n_fft, hop, window)``, or ``ComplexSTFT`` with the same
            arguments for a complex mixture. Masks are computed in float64 (complex128).

    Returns:
        source name -> ``(B, C, T)`` stem; masks sum to one, so stems sum to the mixture.
    """
    return _oracle(mixture, sample_rate, references, lambda p: _ratio_masks(p, 1.0), transform, n_fft, hop, window)


def oracle_wiener(mixture: Tensor, sample_rate: float, *, references: Mapping[str, Tensor],
                  transform: Transform | None = None, n_fft: int = 1024, hop: int | None = None,
                  window="hann") -> dict[str, Tensor]:
    """Oracle Wiener filter ``|S_s|^2 / sum_j |S_j|^2``; arguments and result as :func:`oracle_irm`."""
    return _oracle(mixture, sample_rate, references, lambda p: _ratio_masks(p, 2.0), transform, n_fft, hop, window)


def _binary_masks(ref_power: Tensor) -> Tensor:
    winner = ref_power.argmax(dim=0, keepdim=True)  # ties go to the first source
    return torch.zeros_like(ref_power).scatter_(0, winner, 1.0)


def oracle_ibm(mixture: Tensor, sample_rate: float, *, references: Mapping[str, Tensor],
               transform: Transform | None = None, n_fft: int = 1024, hop: int | None = None,
               window="hann") -> dict[str, Tensor]:
    """Oracle ideal binary mask: each coefficient to the loudest source; as :func:`oracle_irm`."""
    return _oracle(mixture, sample_rate, references, _binary_masks, transform, n_fft, hop, window)


# ---------------------------------------------------------------------------------------
# static filters


def _band_filter(x: np.ndarray, sample_rate: float, lo: float, hi: float, order: int) -> np.ndarray:
    """Zero-phase Butterworth ``[lo, hi]`` Hz along the last axis (sosfiltfilt: twice ``order``).

    Real ``x``: band-pass, low-pass when ``lo <= 0``, high-pass when ``hi >= Nyquist``.
    Complex ``x`` (baseband, ``-fs/2 <= lo < hi <= fs/2``): shifted to DC, low-passed to the
    half-width and shifted back, so negative frequencies are kept apart from positive ones.
    """
    from scipy import signal as sps

    nyquist = sample_rate / 2
    floor = -nyquist if np.iscomplexobj(x) else 0.0
    if not (floor <= lo < hi <= nyquist):
        raise ParameterError(f"band [{lo:g}, {hi:g}] Hz is not inside [{floor:g}, {nyquist:g}] Hz with lo < hi")
    T = x.shape[-1]
    if np.iscomplexobj(x):
        centre, half = (lo + hi) / 2, (hi - lo) / 2
        shift = np.exp(-2j * np.pi * centre * np.arange(T) / sample_rate)
        if half >= nyquist:
            return x
        sos = sps.butter(order, half, btype="lowpass", fs=sample_rate, output="sos")
        return _filtfilt(sos, x * shift) / shift
    if lo <= 0 and hi >= nyquist:
        return x.copy()
    if lo <= 0:
        sos = sps.butter(order, hi, btype="lowpass", fs=sample_rate, output="sos")
    elif hi >= nyquist:
        sos = sps.butter(order, lo, btype="highpass", fs=sample_rate, output="sos")
    else:
        sos = sps.butter(order, [lo, hi], btype="bandpass", fs=sample_rate, output="sos")
    return _filtfilt(sos, x)


def _filtfilt(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    from scipy import signal as sps

    # scipy's default pad length exceeds very short signals; cap it rather than fail.
    padlen = min(3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum())), x.shape[-1] - 1)
    return sps.sosfiltfilt(sos, x, axis=-1, padlen=padlen)


def bandpass(mixture: Tensor, sample_rate: float, *, bands: Mapping[str, tuple[float, float]], order: int = 4,
             residual: str | None = "residual") -> dict[str, Tensor]:
    """Static zero-phase Butterworth filters, one per declared band; the rest to a residual.

    Args:
        mixture: ``(B, C, T)`` real, or complex baseband.
        sample_rate: Hz.
        bands: source name -> ``(lo_hz, hi_hz)``; for complex input the band may be negative.
        order: Butterworth order of each pass (the response is applied forward and backward).
        residual: name of the stem ``mixture - sum(band stems)``, or ``None`` to leave it out
            (then the stems no longer sum to the mixture).

    Returns:
        source name -> ``(B, C, T)`` stem.
    """
    _check_mixture(mixture, allow_complex=True)
    if not bands:
        raise ParameterError("bandpass needs bands: a dict source name -> (lo_hz, hi_hz)")
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ParameterError(f"{order=} is not an integer >= 1")
    x = _to_numpy(mixture)
    stems = {name: _band_filter(x, float(sample_rate), float(lo), float(hi), order) for name, (lo, hi) in bands.items()}
    return {name: _from_numpy(s, mixture) for name, s in _with_residual(stems, x, residual).items()}


def ecg_bandpass(mixture: Tensor, sample_rate: float, *, low_hz: float = 0.5, high_hz: float = 40.0,
                 order: int = 5) -> dict[str, Tensor]:
    """NeuroKit2-style ECG cleaning: zero-phase Butterworth band-pass ``low_hz``-``high_hz``.

    Returns:
        ``{"ecg": band-passed, "noise": the rest}``, each ``(B, C, T)``; they sum to the mixture.
    """
    return bandpass(mixture, sample_rate, bands={"ecg": (low_hz, high_hz)}, order=order, residual="noise")


def mti_canceller(mixture: Tensor, sample_rate: float, *, pulses: int = 3) -> dict[str, Tensor]:
    """Radar MTI: the ``pulses``-pulse binomial delay-line canceller along slow time.

    The canceller ``(1 - z^-1)^(pulses - 1)`` (3 pulses: weights ``[1, -2, 1]``) notches
    zero Doppler, where stationary clutter lies. It is applied centred (zero phase, hence
    ``pulses`` odd: an even count delays by half a pulse), its sign set so that the centre
    tap is positive, and divided by ``2^(pulses - 1)``, the sum of its absolute weights.
    Gain normalisation: the response is then real and non-negative,
    ``H(f) = sin(pi f / PRF)^(pulses - 1)``: 0 at zero Doppler, 1 at +-PRF/2 (the peak),
    1/2 (-6.02 dB) at +-PRF/4 for 3 pulses. (The raw ``[1, -2, 1]`` has peak gain 4 and
    white-noise power gain 6; scaling changes neither its notch nor its improvement factor.)
    With this gain the clutter stem, ``mixture - targets``, is the complementary binomial
    low-pass ``1 - H`` (3 pulses: ``(x[n-1] + 2 x[n] + x[n+1]) / 4``), also a gain in [0, 1].
    The first and last ``(pulses - 1) / 2`` pulses see the edge pulse repeated, so a
    constant is cancelled there too.

    Args:
        mixture: ``(B, C, T)`` slow-time samples, one per pulse, complex (I/Q) or real.
        sample_rate: the pulse repetition frequency, Hz (unused: the response scales with it).
        pulses: odd number of pulses >= 3 in the canceller.

    Returns:
        ``{"clutter": mixture - targets, "targets": canceller output}``, each ``(B, C, T)``;
        they sum to the mixture.
    """
    _, _, T = _check_mixture(mixture, allow_complex=True)
    if isinstance(pulses, bool) or not isinstance(pulses, int) or pulses < 3 or pulses % 2 == 0:
        raise ParameterError(f"{pulses=} is not an odd integer >= 3 (a centred canceller needs a middle pulse)")
    order, half = pulses - 1, (pulses - 1) // 2
    weights = [(-1) ** (half + k) * math.comb(order, k) / 2**order for k in range(pulses)]
    x = _to_numpy(mixture)
    padded = np.pad(x, [(0, 0), (0, 0), (half, half)], mode="edge")
    targets = sum(w * padded[..., k : k + T] for k, w in enumerate(weights))
    return {"clutter": _from_numpy(x - targets, mixture), "targets": _from_numpy(targets, mixture)}


# ---------------------------------------------------------------------------------------
# blind methods


def fastica(mixture: Tensor, sample_rate: float, *, n_sources: int | None = None, seed: int = 0,
            max_iter: int = 1000, tol: float = 1e-4) -> dict[str, Tensor]:
    """FastICA (scikit-learn, logcosh) on the channels; sources returned as images at the sensors.

    Independent component ``k`` with mixing column ``a_k`` gives the stem ``a_k s_k(t)``
    ``(C, T)``, so stems keep the mixture's shape and units. What the components do not
    explain (the channel means, and more when ``n_sources < C``) is shared equally among
    the stems, so they sum to the mixture. Stems are named ``ic1``, ``ic2``... by
    decreasing energy; item by item over the batch.

    Args:
        mixture: ``(B, C, T)`` real, ``C >= 2`` (instantaneous mixtures).
        n_sources: components to extract (default ``C``), at most ``C``.
        seed: FastICA's ``random_state``.
    """
    from sklearn.decomposition import FastICA

    B, C, T = _check_mixture(mixture)
    n = C if n_sources is None else n_sources
    if C < 2:
        raise ParameterError("FastICA needs a multichannel mixture (channel >= 2)")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= C:
        raise ParameterError(f"n_sources={n_sources!r} is not an integer in [1, {C}] (the number of channels)")
    x = _to_numpy(mixture)
    out = np.empty((n, B, C, T))
    for b in range(B):
        ica = FastICA(n_components=n, whiten="unit-variance", random_state=seed, max_iter=max_iter, tol=tol)
        s = ica.fit_transform(x[b].T)  # (T, n)
        images = ica.mixing_.T[:, :, None] * s.T[:, None, :]  # (n, C, T)
        images = images[np.argsort(-np.square(images).sum(axis=(1, 2)), kind="stable")]
        out[:, b] = images + (x[b] - images.sum(axis=0)) / n
    return {f"ic{k + 1}": _from_numpy(out[k], mixture) for k in range(n)}


def nmf(mixture: Tensor, sample_rate: float, *, bands: Mapping[str, tuple[float, float]], components_per_band: int = 4,
        divergence: NmfDivergence = "kl", n_iter: int = 200, seed: int = 0, residual: str = "residual",
        n_fft: int = 1024, hop: int | None = None, window="hann") -> dict[str, Tensor]:
    """NMF of the mixture spectrogram with multiplicative updates, then Wiener masks.

    ``V (F, N)`` is the channel-mean magnitude (``divergence="kl"``, beta = 1) or power
    (``"is"``, Itakura-Saito, beta = 0) STFT; ``V ~ W H`` with ``components_per_band``
    components per band plus as many for the residual, ``n_iter`` multiplicative updates
    (Fevotte & Idier 2011), batched over items.

    Initialisation (seeded by ``torch.Generator().manual_seed(seed)``): a band's components
    start uniform in [0.5, 1.5) inside the band and 100 times weaker outside; the residual's
    outside every band. Blind random initialisation cannot split sources whose spectra are
    steady (the spectrogram is then rank one), so the declared bands seed the split.

    Clustering rule, after fitting: component ``k`` goes to the source whose band holds the
    largest share of the spectral mass of ``W[:, k]``, or to ``residual`` when the mass
    outside every band is larger (a bin in overlapping bands counts for the first).
    Masks ``m_s = (W_s H_s) / sum_j (W_j H_j)`` sum to one.

    Returns:
        source name -> ``(B, C, T)`` stem, plus ``residual``.
    """
    if divergence not in get_args(NmfDivergence):
        raise ParameterError(f"{divergence=} is not one of {get_args(NmfDivergence)}")
    for name, value in (("components_per_band", components_per_band), ("n_iter", n_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{name}={value!r} is not an integer >= 1")
    if not bands:
        raise ParameterError("nmf needs bands: a dict source name -> (lo_hz, hi_hz) to cluster components into")
    if residual in bands:
        raise ParameterError(f"residual={residual!r} is also a source name; choose another name")
    B, C, T = _check_mixture(mixture)
    tf = _transform(sample_rate, None, n_fft, hop, window)
    coeffs = _analyse(tf, mixture)  # (B, C, F, N)
    beta = 1.0 if divergence == "kl" else 0.0
    V = power(coeffs).mean(dim=1) ** (0.5 if divergence == "kl" else 1.0)  # (B, F, N)
    freq = tf.grid(T).freq_hz.reshape(-1).to(V)
    support = _band_index(freq, bands)  # (F,) source index per bin, len(bands) outside all
    group = torch.arange(len(bands) + 1).repeat_interleave(components_per_band)  # (K,)
    prior = torch.where(support[:, None] == group[None, :], 1.0, 0.01).to(V)  # (F, K)
    W, H = _beta_nmf(V, prior, beta=beta, n_iter=n_iter, seed=seed)
    names = [*bands, residual]
    membership = torch.nn.functional.one_hot(support, len(names)).to(W)  # (F, S + 1)
    owner = torch.einsum("fs,bfk->bks", membership, W).argmax(dim=-1)  # (B, K)
    partial = torch.stack([torch.einsum("bfk,bkn->bfn", W * (owner == s)[:, None, :], H) for s in range(len(names))])
    partial = partial + torch.finfo(partial.dtype).tiny  # silent everywhere -> equal shares
    masks = (partial / partial.sum(dim=0, keepdim=True))[:, :, None]  # (S, B, 1, F, N)
    return _apply_masks(tf, coeffs, dict(zip(names, masks)), T, mixture)


def _band_index(freq_hz: Tensor, bands: Mapping[str, tuple[float, float]]) -> Tensor:
    """Index of the first band holding each frequency; ``len(bands)`` where none does. Same shape."""
    index = torch.full(freq_hz.shape, len(bands), dtype=torch.long, device=freq_hz.device)
    for s, (lo, hi) in reversed(list(enumerate(bands.values()))):
        index = torch.where((freq_hz >= lo) & (freq_hz <= hi), s, index)
    return index


def _beta_nmf(V: Tensor, prior: Tensor, *, beta: float, n_iter: int, seed: int) -> tuple[Tensor, Tensor]:
    """Multiplicative-update beta-NMF ``V (B, F, N) ~ W (B, F, K) @ H (B, K, N)``; W columns sum to one.

    ``prior (F, K)`` scales the random initial ``W``.
    """
    B, F, N = V.shape
    K = prior.shape[1]
    generator = torch.Generator().manual_seed(seed)
    scale = V.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    W = (0.5 + torch.rand(B, F, K, generator=generator, dtype=V.dtype)).to(V.device) * prior
    H = (0.5 + torch.rand(B, K, N, generator=generator, dtype=V.dtype)).to(V.device) * scale
    eps = torch.finfo(V.dtype).eps * scale
    for _ in range(n_iter):
        approx = W @ H + eps
        H = H * (W.transpose(1, 2) @ (V * approx ** (beta - 2))) / (W.transpose(1, 2) @ approx ** (beta - 1))
        approx = W @ H + eps
        W = W * ((V * approx ** (beta - 2)) @ H.transpose(1, 2)) / (approx ** (beta - 1) @ H.transpose(1, 2))
        norm = W.sum(dim=1, keepdim=True).clamp_min(1e-30)
        # Floors keep factors off denormal numbers (slow) and zero (where updates stick).
        W, H = (W / norm).clamp_min(1e-12), (H * norm.transpose(1, 2)).clamp_min(1e-12 * scale)
    return W, H


def hpss(mixture: Tensor, sample_rate: float, *, harmonic_s: float = 0.2, percussive_hz: float = 500.0,
         exponent: float = 2.0, n_fft: int = 1024, hop: int | None = None, window="hann") -> dict[str, Tensor]:
    """Harmonic/percussive separation by median filtering (Fitzgerald 2010) with soft masks.

    The magnitude STFT is median-filtered along time over ``harmonic_s`` seconds (harmonic
    enhanced) and along frequency over ``percussive_hz`` Hz (percussive enhanced), kernels
    rounded to odd bin/frame counts >= 3. Masks ``H^p / (H^p + P^p)`` and ``P^p / (H^p + P^p)``
    with ``p = exponent`` (one half each where both vanish) sum to one.

    Returns:
        ``{"harmonic", "percussive"}``, each ``(B, C, T)``.
    """
    from scipy.ndimage import median_filter

    _, _, T = _check_mixture(mixture)
    tf = _transform(sample_rate, None, n_fft, hop, window)
    coeffs = _analyse(tf, mixture)
    magnitude = _to_numpy(coeffs.abs())  # (B, C, F, N)
    frames = _odd(harmonic_s * sample_rate / tf.hop)
    bins = _odd(percussive_hz * tf.n_fft / sample_rate)
    harmonic = torch.from_numpy(median_filter(magnitude, size=(1, 1, 1, frames), mode="reflect")) ** exponent
    percussive = torch.from_numpy(median_filter(magnitude, size=(1, 1, bins, 1), mode="reflect")) ** exponent
    total = harmonic + percussive
    mask = torch.where(total > 0, harmonic / total.clamp_min(1e-300), torch.full_like(total, 0.5)).to(coeffs.real)
    return _apply_masks(tf, coeffs, {"harmonic": mask, "percussive": 1 - mask}, T, mixture)


def wavelet_denoise(mixture: Tensor, sample_rate: float, *, wavelet: str = "db4", level: int | None = None,
                    mode: Threshold = "soft", extension: str = "periodization") -> dict[str, Tensor]:
    """Wavelet shrinkage with the universal threshold (Donoho & Johnstone 1994), per channel.

    ``sigma = median(|d1|) / 0.6745`` from the finest detail coefficients, threshold
    ``sigma * sqrt(2 ln T)`` applied (``mode``) to every detail level; the approximation is
    kept. ``sample_rate`` is unused (the threshold is scale-free) but kept for the signature.

    Returns:
        ``{"clean": reconstruction, "noise": mixture - clean}``, each ``(B, C, T)``.
    """
    import pywt

    if mode not in get_args(Threshold):
        raise ParameterError(f"{mode=} is not one of {get_args(Threshold)}")
    B, C, T = _check_mixture(mixture)
    try:
        filter_len = pywt.Wavelet(wavelet).dec_len
    except ValueError:
        raise ParameterError(f"{wavelet=} is not a discrete wavelet known to pywt (e.g. 'db4', 'sym8')") from None
    deepest = pywt.dwt_max_level(T, filter_len)
    if level is not None and not (isinstance(level, int) and 1 <= level <= max(deepest, 1)):
        raise ParameterError(f"{level=} is not an integer in [1, {max(deepest, 1)}] for {T} samples with {wavelet}")
    x = _to_numpy(mixture)
    coeffs = pywt.wavedec(x, wavelet, mode=extension, level=level or max(deepest, 1), axis=-1)
    sigma = np.median(np.abs(coeffs[-1]), axis=-1, keepdims=True) / 0.6745  # (B, C, 1)
    threshold = sigma * math.sqrt(2 * math.log(T))
    shrunk = [coeffs[0]] + [pywt.threshold(d, threshold, mode=mode) for d in coeffs[1:]]
    clean = pywt.waverec(shrunk, wavelet, mode=extension, axis=-1)[..., :T]
    return {"clean": _from_numpy(clean, mixture), "noise": _from_numpy(x - clean, mixture)}


# ---------------------------------------------------------------------------------------
# EEG: what a practitioner does about blinks and muscle


def eeg_bandpass(mixture: Tensor, sample_rate: float, *, low_hz: float = 1.0, high_hz: float = 30.0,
                 order: int = 4) -> dict[str, Tensor]:
    """The usual EEG filter: zero-phase Butterworth ``low_hz``-``high_hz`` on every channel.

    Returns:
        ``brain`` (the pass band), ``blink`` (below ``low_hz``, where blinks have most of
        their power) and ``muscle`` (the rest: mostly above ``high_hz``), each ``(B, C, T)``;
        they sum to the mixture.
    """
    _check_mixture(mixture)
    x = _to_numpy(mixture)
    brain = _band_filter(x, float(sample_rate), float(low_hz), float(high_hz), order)
    blink = _band_filter(x, float(sample_rate), 0.0, float(low_hz), order)
    return {name: _from_numpy(v, mixture) for name, v in (("brain", brain), ("blink", blink),
                                                          ("muscle", x - brain - blink))}


def _outliers(score: np.ndarray, threshold: float) -> np.ndarray:
    """Indices whose robust z-score ``(score - median) / (1.4826 * MAD)`` over components exceeds ``threshold``.

    (A plain z-score cannot flag anything among few components: with ``n`` of them it is at
    most ``(n - 1) / sqrt(n)``, 2.5 for 8.)
    """
    median = np.median(score)
    spread = max(1.4826 * float(np.median(np.abs(score - median))), 1e-12)
    return np.flatnonzero((score - median) / spread > threshold)


def eeg_ica_reject(mixture: Tensor, sample_rate: float, *, eog_channels: tuple[int, ...] = (), threshold: float = 3.0,
                   seed: int = 0, max_iter: int = 1000) -> dict[str, Tensor]:
    """FastICA (scikit-learn) + automatic blink-component rejection, as EEGLAB/MNE users do; muscle is left in.

    The blink components are the outliers (robust z-score above ``threshold``) of the
    components' largest absolute correlation with the EOG channels, both filtered to
    1-10 Hz (MNE's ``find_bads_eog``), or of their kurtosis when no EOG channel is named (EEGLAB's
    ``pop_rejkurt`` on components). Their back-projection is the ``blink`` stem.

    Args:
        mixture: ``(B, C, T)`` real, ``C >= 2``.
        eog_channels: indices of EOG channels in the mixture (may be empty).
        threshold: z-score a component must exceed.
        seed: FastICA's ``random_state``.

    Returns:
        ``brain`` (the mixture minus ``blink``), ``blink`` and ``muscle`` (zeros: this
        method does not estimate it), each ``(B, C, T)``.
    """
    from scipy.stats import kurtosis
    from sklearn.decomposition import FastICA

    B, C, T = _check_mixture(mixture)
    if C < 2:
        raise ParameterError("eeg-ica-reject needs a multichannel mixture (channel >= 2)")
    if any(not 0 <= int(c) < C for c in eog_channels):
        raise ParameterError(f"eog_channels={tuple(eog_channels)} must index the {C} channels")
    x = _to_numpy(mixture)
    blink = np.zeros_like(x)
    for b in range(B):
        ica = FastICA(n_components=C, whiten="unit-variance", random_state=seed, max_iter=max_iter)
        s = ica.fit_transform(x[b].T).T  # (C, T)
        if len(eog_channels):
            # both filtered to 1-10 Hz first, as find_bads_eog does: blinks live there
            s_eog = _band_filter(np.concatenate([s, x[b, list(eog_channels)]]), float(sample_rate), 1.0, 10.0, 4)
            score = np.abs(np.corrcoef(s_eog)[:C, C:]).max(axis=1)
        else:
            score = kurtosis(s, axis=1)
        bad = _outliers(score, threshold)
        blink[b] = ica.mixing_[:, bad] @ s[bad]
    return {"brain": _from_numpy(x - blink, mixture), "blink": _from_numpy(blink, mixture),
            "muscle": _from_numpy(np.zeros_like(x), mixture)}


# ---------------------------------------------------------------------------------------
# microphone arrays: beamformers steered at the directions found in the mixture


def _beams(mixture: Tensor, sample_rate: float, *, weights: Callable[[Tensor, Tensor], Tensor], n_elements: int | None,
           spacing_m: float, n_sources: int, directions_deg, speed_m_s: float, n_fft: int,
           hop: int | None) -> dict[str, Tensor]:
    """Stems ``beam1..`` of a beamformer: each beam's output put back at the mics by its steering vector.

    ``weights(steering (S, M, F), spectra (M, F, N)) -> (S, M, F)`` gives each beam's weights
    ``w`` (output ``w^H x``, distortionless: ``w^H a = 1``). Directions: ``directions_deg``
    or, per item, :meth:`~demux.transforms.spatial.ArraySTFT.find_directions` (as demux's
    ``array-beamform`` finds them), ascending.
    """
    from demux.transforms.spatial import ArraySTFT

    B, C, T = _check_mixture(mixture)
    if isinstance(n_sources, bool) or not isinstance(n_sources, int) or n_sources < 1:
        raise ParameterError(f"{n_sources=} is not an integer >= 1")
    tf = ArraySTFT(sample_rate, n_elements or C, spacing_m, speed_m_s=speed_m_s, n_fft=n_fft, hop=hop)
    coeffs = _analyse(tf, mixture)  # (B, M, F, N)
    out = torch.zeros(n_sources, B, C, T, dtype=torch.float64)
    for b in range(B):
        found = tf.find_directions(coeffs[b : b + 1], n=n_sources)[0] if directions_deg is None else directions_deg
        steering = tf.steering(torch.as_tensor(sorted(found), dtype=torch.float64))  # (S, M, F)
        w = weights(steering, coeffs[b])
        beams = torch.einsum("smf,mfn->sfn", w.conj(), coeffs[b])
        images = tf.inverse(steering[..., None] * beams[:, None], T)  # (S, M, T)
        out[: len(found), b] = images
    return {f"beam{k + 1}": out[k].to(mixture) for k in range(n_sources)}


def delay_and_sum(mixture: Tensor, sample_rate: float, *, spacing_m: float, n_sources: int,
                  directions_deg: tuple[float, ...] | None = None, n_elements: int | None = None,
                  speed_m_s: float = 343.0, n_fft: int = 1024, hop: int | None = None) -> dict[str, Tensor]:
    """Delay-and-sum beams of a uniform linear array, one per source direction.

    Beam ``s`` is ``a_s^H x / M`` per STFT bin (``a_s`` the plane-wave steering vector of
    direction ``s``; :class:`~demux.transforms.spatial.ArraySTFT` geometry and angle
    convention), put back at the mics as ``a_s`` times it, so each stem is a source image
    ``(C, T)``. Beams are spatial filters, not a partition: the stems do not sum to the
    mixture (no residual stem: what no beam passes is not one source).

    Args:
        mixture: ``(B, M, T)`` real, the mics in order along the array.
        spacing_m: mic spacing, metres (the array centred on the origin).
        n_sources: beams per item; directions not found give silent stems.
        directions_deg: the sources' directions, degrees; default: found in each item.

    Returns:
        ``beam1``... ``(B, M, T)``, by ascending direction.
    """
    return _beams(mixture, sample_rate, weights=lambda a, x: a / a.shape[1], n_elements=n_elements, spacing_m=spacing_m,
                  n_sources=n_sources, directions_deg=directions_deg, speed_m_s=speed_m_s, n_fft=n_fft, hop=hop)


def mvdr(mixture: Tensor, sample_rate: float, *, spacing_m: float, n_sources: int,
         directions_deg: tuple[float, ...] | None = None, loading: float = 1e-2, n_elements: int | None = None,
         speed_m_s: float = 343.0, n_fft: int = 1024, hop: int | None = None) -> dict[str, Tensor]:
    """MVDR (Capon) beams: ``w = R^-1 a / (a^H R^-1 a)`` per STFT bin, one per source direction.

    ``R`` is the mixture's spatial covariance per frequency (mean of ``x x^H`` over frames,
    i.e. the minimum-power form, as a user without a noise-only segment computes it),
    diagonally loaded by ``loading`` times its mean eigenvalue (robust Capon: it keeps the
    beam from cancelling its own source when the steering is slightly off, and bounds the
    white-noise gain at low frequencies, where the array is short). Arguments, stems and
    directions as :func:`delay_and_sum`.
    """
    if not loading > 0:
        raise ParameterError(f"{loading=} is not a number > 0")

    def weights(a: Tensor, x: Tensor) -> Tensor:
        M = x.shape[0]
        cov = torch.einsum("mfn,kfn->fmk", x, x.conj()) / x.shape[-1]  # (F, M, M)
        level = cov.diagonal(dim1=1, dim2=2).real.mean(-1).clamp_min(1e-30)
        cov = cov + loading * level[:, None, None] * torch.eye(M, dtype=cov.dtype)
        solved = torch.linalg.solve(cov[None], a.permute(0, 2, 1)[..., None])[..., 0]  # (S, F, M)
        gain = torch.einsum("sfm,sfm->sf", a.permute(0, 2, 1).conj(), solved)
        return (solved / gain[..., None]).permute(0, 2, 1)

    return _beams(mixture, sample_rate, weights=weights, n_elements=n_elements, spacing_m=spacing_m,
                  n_sources=n_sources, directions_deg=directions_deg, speed_m_s=speed_m_s, n_fft=n_fft, hop=hop)


BASELINES: dict[str, Separator] = {
    "oracle-irm": oracle_irm,
    "oracle-ibm": oracle_ibm,
    "oracle-wiener": oracle_wiener,
    "bandpass": bandpass,
    "ecg-bandpass": ecg_bandpass,
    "mti-canceller": mti_canceller,
    "fastica": fastica,
    "nmf": nmf,
    "hpss": hpss,
    "wavelet": wavelet_denoise,
    "delay-and-sum": delay_and_sum,
    "mvdr": mvdr,
    "eeg-bandpass": eeg_bandpass,
    "eeg-ica-reject": eeg_ica_reject,
}

#: Baselines that read the true sources (``references=``): upper bounds, not methods.
ORACLES = ("oracle-irm", "oracle-ibm", "oracle-wiener")

__all__ = [
    "BASELINES",
    "ORACLES",
    "bandpass",
    "delay_and_sum",
    "ecg_bandpass",
    "eeg_bandpass",
    "eeg_ica_reject",
    "fastica",
    "hpss",
    "mti_canceller",
    "mvdr",
    "nmf",
    "oracle_ibm",
    "oracle_irm",
    "oracle_wiener",
    "wavelet_denoise",
]
