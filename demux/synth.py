"""Scenarios with exact ground truth: the mixtures are made here, so every source is known.

Each scenario is a function ``make(rng, *, seconds, snr_db, sample_rate=None) -> Scenario``
registered once in :data:`SCENARIOS`. All randomness comes from ``rng``, so one seed gives
the same scenario bit for bit.

Exactness: a scenario's ``mixture`` is, bit for bit, the float32 (complex64) sum of its
``sources`` taken in dict order, ``functools.reduce(np.add, sources.values())``. Noise is
never hidden in the mixture: when a scenario adds noise, the noise is one of the sources and
``params["noise_sources"]`` names it, so a denoising evaluation can pass ``[clean, noise]``.

``snr_db`` is the ratio of the power of the non-noise sources (their sum) to the power of
the noise sources (their sum), in dB, exact up to float32 rounding (``radar-mti`` states
its own: per-target SNR). ``None`` takes the
scenario's default: no noise for the clean synthetic scenarios, a stated level where the
noise is part of the scenario (ECG + EMG, speech + kitchen noise, radio and radar thermal
noise).

Real-data scenarios read ``ecg/``, ``speech/`` and ``music/`` from :func:`data_dir` and pick
a random excerpt of ``seconds`` with ``rng``.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal as sps

from demux.errors import InputError, OutputExistsError, ParameterError
from demux.io import resample, write, write_text_atomic

SPEED_OF_SOUND = 343.0  # m/s, air at 20 degrees C
RADAR_CARRIER_HZ = 10e9  # X band: velocity = doppler * wavelength / 2


@dataclass(frozen=True)
class Scenario:
    """A mixture and its exact sources.

    Attributes:
        mixture: ``(channel, time)`` float32, or complex64 for baseband scenarios.
        sources: source name -> ``(channel, time)`` array, same dtype as the mixture; their
            float32 sum in dict order equals ``mixture`` bit for bit.
        sample_rate: Hz (the PRF for slow-time radar).
        params: JSON-able description (bands in Hz, tones, directions, SNR, ...) that a
            recipe or an oracle can use; ``params["bands"]`` maps sources to ``[lo_hz, hi_hz]``
            where a source has a declared band.
        recipe: name of the built-in recipe meant for this scenario.
    """

    mixture: np.ndarray
    sources: dict[str, np.ndarray]
    sample_rate: float
    params: dict
    recipe: str

    @property
    def is_complex(self) -> bool:
        return np.iscomplexobj(self.mixture)


def data_dir() -> Path:
    """Folder of the real recordings: ``$DEMUX_DATA``, else ``shared/data`` beside the checkout."""
    env = os.environ.get("DEMUX_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------------------------------
# shared helpers


def _rate(sample_rate: float | None, native: float) -> float:
    fs = native if sample_rate is None else float(sample_rate)
    if not (math.isfinite(fs) and fs > 0):
        raise ParameterError(f"sample_rate={sample_rate} is not a positive number of Hz")
    return fs


def _length(seconds: float, fs: float) -> int:
    n = int(round(seconds * fs)) if math.isfinite(seconds) else 0
    if n < 64:
        raise ParameterError(f"{seconds=} gives {n} samples at {fs:g} Hz; expected at least 64")
    return n


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.abs(x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)) ** 2))


def _noise_gain(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> float:
    """Gain g such that ``10 log10(P(clean) / P(g * noise)) == snr_db``."""
    if not math.isfinite(snr_db):
        raise ParameterError(f"{snr_db=} is not a finite number of dB")
    return math.sqrt(_power(clean) / (_power(noise) * 10.0 ** (snr_db / 10.0)))


def _add_white_noise(rng: np.random.Generator, sources: dict, snr_db: float | None, *,
                     reference: np.ndarray | None = None) -> dict:
    """Append a white Gaussian ``noise`` source ``snr_db`` below ``reference`` (default: the sum of ``sources``)."""
    if snr_db is None:
        return sources
    clean = functools.reduce(np.add, sources.values())
    noise = rng.standard_normal(clean.shape)
    if np.iscomplexobj(clean):
        noise = noise + 1j * rng.standard_normal(clean.shape)
    return {**sources, "noise": noise * _noise_gain(clean if reference is None else reference, noise, snr_db)}


def _assemble(sources: dict, fs: float, params: dict, recipe: str, *, snr_db, noise_sources=()) -> Scenario:
    dtype = np.complex64 if any(np.iscomplexobj(s) for s in sources.values()) else np.float32
    sources = {name: np.atleast_2d(np.asarray(s)).astype(dtype) for name, s in sources.items()}
    noise = [name for name in sources if name == "noise" or name in noise_sources]
    mixture = functools.reduce(np.add, sources.values())
    params = {
        **params,
        "sample_rate": fs,
        "channels": int(mixture.shape[0]),
        "samples": int(mixture.shape[1]),
        "complex": dtype is np.complex64,
        "snr_db": None if snr_db is None else float(snr_db),
        "noise_sources": noise,
        "sources": list(sources),
    }
    return Scenario(mixture, sources, float(fs), params, recipe)


def _bands(rng: np.random.Generator, fs: float) -> dict[str, tuple[float, float]]:
    """2 or 3 of the disjoint bands ``low``, ``mid``, ``high`` (the ``tones-fft`` recipe's), Hz.

    The recipe splits at 1/4 and 5/8 of Nyquist (1 and 2.5 kHz at 8 kHz); each declared band
    keeps 5 % of Nyquist clear of those edges (and of DC and Nyquist), so a source stays inside
    the recipe's band.
    """
    nyquist = fs / 2
    edges = np.array([0.025, 0.25, 0.625, 0.95]) * nyquist
    guard = 0.05 * nyquist
    every = {name: (float(lo + guard), float(hi - guard))
             for name, lo, hi in zip(("low", "mid", "high"), edges[:-1], edges[1:])}
    keep = sorted(rng.choice(3, size=int(rng.integers(2, 4)), replace=False))
    return {name: every[name] for k, name in enumerate(every) if k in keep}


def _tones_in(rng: np.random.Generator, lo: float, hi: float, n: int) -> list[dict]:
    """``n`` tones at least 15 % of the band from ``lo`` and ``hi``, one in each of ``n`` equal slices.

    Within a slice a tone keeps 15 % of the slice from its edges, so tones stay apart.
    """
    margin = 0.15 * (hi - lo)
    width = (hi - lo - 2 * margin) / n
    return [
        {
            "freq_hz": float(lo + margin + width * (k + rng.uniform(0.15, 0.85))),
            "amplitude": float(rng.uniform(0.2, 1.0) / n),
            "phase": float(rng.uniform(0, 2 * np.pi)),
        }
        for k in range(n)
    ]


def _sum_of_tones(t: np.ndarray, tones: list[dict]) -> np.ndarray:
    return sum(p["amplitude"] * np.cos(2 * np.pi * p["freq_hz"] * t + p["phase"]) for p in tones)


def _require(path: Path) -> Path:
    if not path.exists():
        raise InputError(
            path,
            "data not found; real-data scenarios need the shared recordings "
            "(set DEMUX_DATA to the folder holding ecg/, speech/ and music/)",
        )
    return path


def _excerpt_start(rng: np.random.Generator, available: int, n: int, what: Path) -> int:
    if n > available:
        raise ParameterError(f"seconds asks for {n} samples but {what.name} has only {available}")
    return int(rng.integers(0, available - n + 1))


def _read_excerpts(rng: np.random.Generator, paths: list[Path], seconds: float) -> tuple[list[np.ndarray], float]:
    """The same random excerpt of ``seconds`` from each audio file: ``(channel, time)`` float64 arrays, rate.

    The files must share a sample rate; the excerpt fits the shortest of them. Positions
    where a file is silent (RMS below -80 dBFS, e.g. a part resting or the padded end) are
    redrawn, up to 20 times, so every reference of a scenario carries signal.
    """
    import soundfile as sf

    infos = [sf.info(str(_require(path))) for path in paths]
    if len({info.samplerate for info in infos}) != 1:
        raise InputError(paths[0].parent, "files of one scenario have different sample rates")
    n = _length(seconds, infos[0].samplerate)
    available = min(info.frames for info in infos)
    for _ in range(20):
        start = _excerpt_start(rng, available, n, paths[0])
        # Read only the excerpt: the files may be long.
        excerpts = [sf.read(str(p), start=start, stop=start + n, dtype="float64", always_2d=True)[0].T for p in paths]
        if all(_power(x) > 1e-8 for x in excerpts):
            return excerpts, float(infos[0].samplerate)
    raise ParameterError(f"found no excerpt of {seconds} s in which every one of {[p.name for p in paths]} is active")


# ---------------------------------------------------------------------------------------
# synthetic audio-rate scenarios


def multitone(rng: np.random.Generator, *, seconds: float = 2.0, snr_db: float | None = None,
              sample_rate: float | None = None) -> Scenario:
    """2-3 sources, each three tones inside its own band; bands are disjoint (8 kHz mono).

    Sources are named by band, ``low``, ``mid``, ``high`` (see :func:`_bands`): 2 or 3 of
    the ``tones-fft`` recipe's sources.

    ``params["bands"][source] = [lo_hz, hi_hz]`` holds every tone of that source, at least
    15 % of the band away from its edges; ``params["tones"][source]`` lists them.
    """
    fs = _rate(sample_rate, 8000.0)
    t = np.arange(_length(seconds, fs)) / fs
    bands = _bands(rng, fs)
    tones = {name: _tones_in(rng, lo, hi, 3) for name, (lo, hi) in bands.items()}
    sources = {name: _sum_of_tones(t, tones[name]) for name in bands}
    params = {"bands": {k: list(v) for k, v in bands.items()}, "tones": tones}
    return _assemble(_add_white_noise(rng, sources, snr_db), fs, params, "tones-fft", snr_db=snr_db)


def chirps(rng: np.random.Generator, *, seconds: float = 2.0, snr_db: float | None = None,
           sample_rate: float | None = None) -> Scenario:
    """A linear chirp sweeping across three steady tones (8 kHz mono).

    The chirp's instantaneous frequency is ``f0 + (f1 - f0) * t / seconds`` (``params["chirp"]``);
    its band overlaps the tones', so only a time-frequency view separates them.
    """
    fs = _rate(sample_rate, 8000.0)
    n = _length(seconds, fs)
    t = np.arange(n) / fs
    nyquist = fs / 2
    f0, f1 = rng.uniform(0.05, 0.2) * nyquist, rng.uniform(0.6, 0.9) * nyquist
    if rng.random() < 0.5:
        f0, f1 = f1, f0
    duration = n / fs
    # A Tukey taper avoids broadband clicks at the ends of the sweep.
    chirp = 0.5 * sps.windows.tukey(n, 0.05) * sps.chirp(t, f0=f0, t1=duration, f1=f1, method="linear")
    tones = _tones_in(rng, 0.1 * nyquist, 0.85 * nyquist, 3)
    tone_freqs = [p["freq_hz"] for p in tones]
    sources = {"chirp": chirp, "tones": _sum_of_tones(t, tones)}
    params = {
        "chirp": {"f0_hz": float(f0), "f1_hz": float(f1), "t1_s": float(duration), "amplitude": 0.5},
        "tones": tones,
        "bands": {"chirp": [float(min(f0, f1)), float(max(f0, f1))],
                  "tones": [min(tone_freqs) - 20.0, max(tone_freqs) + 20.0]},
    }
    return _assemble(_add_white_noise(rng, sources, snr_db), fs, params, "audio-stft", snr_db=snr_db)


def am(rng: np.random.Generator, *, seconds: float = 2.0, snr_db: float | None = None,
       sample_rate: float | None = None) -> Scenario:
    """2-3 amplitude-modulated carriers in disjoint bands (8 kHz mono).

    Source ``s`` is ``A (1 + m g(t)) cos(2 pi fc t + theta)`` with ``g`` two slow sinusoids
    (2-20 Hz) scaled to peak 1 and depth ``m`` in [0.5, 0.9]; its band is
    ``fc +- (20 Hz + 25 Hz)``, inside the band partition used by ``multitone``.
    """
    fs = _rate(sample_rate, 8000.0)
    t = np.arange(_length(seconds, fs)) / fs
    sources, carriers, bands = {}, {}, {}
    for name, (lo, hi) in _bands(rng, fs).items():
        fc = float(rng.uniform(lo + 45.0, hi - 45.0)) if hi - lo > 90.0 else (lo + hi) / 2
        mod_hz = [float(f) for f in rng.uniform(2.0, 20.0, 2)]
        mod_phase = [float(p) for p in rng.uniform(0, 2 * np.pi, 2)]
        g = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(mod_hz, mod_phase)) / 2
        depth, amplitude = float(rng.uniform(0.5, 0.9)), float(rng.uniform(0.3, 1.0))
        phase = float(rng.uniform(0, 2 * np.pi))
        sources[name] = amplitude * (1 + depth * g) * np.cos(2 * np.pi * fc * t + phase)
        carriers[name] = {"carrier_hz": fc, "amplitude": amplitude, "phase": phase, "depth": depth,
                          "modulation_hz": mod_hz, "modulation_phase": mod_phase}
        bands[name] = [fc - 45.0, fc + 45.0]
    params = {"bands": bands, "carriers": carriers}
    return _assemble(_add_white_noise(rng, sources, snr_db), fs, params, "tones-fft", snr_db=snr_db)


# ---------------------------------------------------------------------------------------
# radio: complex baseband


def _qpsk(rng: np.random.Generator, n: int) -> np.ndarray:
    return ((2 * rng.integers(0, 2, n) - 1) + 1j * (2 * rng.integers(0, 2, n) - 1)) / np.sqrt(2)


def _rrc(beta: float, sps_: int, span: int) -> np.ndarray:
    """Root-raised-cosine taps, ``span`` symbols long, unit energy."""
    t = np.arange(-span * sps_ // 2, span * sps_ // 2 + 1) / sps_
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (np.sin(np.pi * t * (1 - beta)) + 4 * beta * t * np.cos(np.pi * t * (1 + beta))) / (
            np.pi * t * (1 - (4 * beta * t) ** 2)
        )
    h[t == 0] = 1 - beta + 4 * beta / np.pi
    edge = np.isclose(np.abs(t), 1 / (4 * beta))
    quarter = np.pi / (4 * beta)
    h[edge] = beta / np.sqrt(2) * ((1 + 2 / np.pi) * np.sin(quarter) + (1 - 2 / np.pi) * np.cos(quarter))
    return h / np.linalg.norm(h)


def _shaped_qpsk(rng: np.random.Generator, n: int, sps_: int, taps: np.ndarray) -> np.ndarray:
    """``n`` samples of pulse-shaped QPSK, cut after the filter's start-up."""
    symbols = _qpsk(rng, n // sps_ + len(taps) // sps_ + 2)
    x = sps.upfirdn(taps, symbols, up=sps_)
    return x[len(taps) // 2 : len(taps) // 2 + n]


def _ofdm(rng: np.random.Generator, n: int, n_fft: int, n_used: int, n_cp: int) -> np.ndarray:
    """``n`` samples of OFDM with ``n_used`` QPSK subcarriers around DC (DC unused), cyclic prefix."""
    n_symbols = -(-n // (n_fft + n_cp))
    grid = np.zeros((n_symbols, n_fft), complex)
    used = np.r_[-(n_used // 2) : 0, 1 : n_used // 2 + 1]
    grid[:, used] = _qpsk(rng, n_symbols * len(used)).reshape(n_symbols, -1)
    symbols = np.fft.ifft(grid, axis=1) * np.sqrt(n_fft)
    return np.concatenate([symbols[:, -n_cp:], symbols], axis=1).reshape(-1)[:n]


def _bursts(rng: np.random.Generator, n: int, fs: float, *, on_s=(0.002, 0.008),
            off_s=(0.001, 0.005)) -> list[tuple[int, int]]:
    """Random on-intervals ``[start, stop)`` in samples covering part of ``n``."""
    spans, pos = [], int(rng.uniform(*off_s) * fs)
    while pos < n:
        stop = min(n, pos + max(1, int(rng.uniform(*on_s) * fs)))
        spans.append((pos, stop))
        pos = stop + max(1, int(rng.uniform(*off_s) * fs))
    return spans or [(0, n)]


def _gate(x: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    out = np.zeros_like(x)
    for start, stop in spans:
        out[start:stop] = x[start:stop]
    return out


def radio(rng: np.random.Generator, *, seconds: float = 0.05, snr_db: float | None = 20.0,
          sample_rate: float | None = None) -> Scenario:
    """Complex baseband (1 MHz): a primary user in a fixed band and two bursty secondary users.

    The band plan is four slots of ``fs/4`` centred at ``-3/8, -1/8, 1/8, 3/8 fs``:

    - ``primary``: continuous QPSK at ``fs/8`` baud, RRC roll-off 0.35 (span 12 symbols),
      always in the slot at ``-fs/8``; unit power.
    - ``qpsk``: QPSK bursts at ``fs/10`` baud with an RRC truncated to 4 symbols, whose tails
      leak into the adjacent slots.
    - ``ofdm``: OFDM-like bursts, 24 QPSK subcarriers spaced ``fs/128``, cyclic prefix 32,
      rectangular symbols (sinc side lobes leak too).

    The two secondary users take two of the other three slots at random, at -6..+3 dB
    relative to the primary during their bursts. ``params["users"]`` gives each user's
    centre, occupied band and bursts (seconds); ``params["bands"]`` the occupied bands.
    """
    fs = _rate(sample_rate, 1e6)
    n = _length(seconds, fs)
    t = np.arange(n) / fs
    centres = [-0.375 * fs, -0.125 * fs, 0.125 * fs, 0.375 * fs]
    slots = [centres[i] for i in rng.permutation([0, 2, 3])[:2]]
    users, sources = {}, {}
    plan = {
        "primary": (centres[1], 0.125 * fs * 1.35),
        "qpsk": (slots[0], 0.1 * fs * 1.25),
        "ofdm": (slots[1], 24 * fs / 128),
    }
    for name, (centre, bandwidth) in plan.items():
        if name == "primary":
            x, spans, level_db = _shaped_qpsk(rng, n, 8, _rrc(0.35, 8, 12)), [(0, n)], 0.0
        else:
            base = _shaped_qpsk(rng, n, 10, _rrc(0.25, 10, 4)) if name == "qpsk" else _ofdm(rng, n, 128, 24, 32)
            spans, level_db = _bursts(rng, n, fs), float(rng.uniform(-6.0, 3.0))
            x = _gate(base, spans)
        x = x * math.sqrt(10 ** (level_db / 10) / _power(x[spans[0][0] : spans[0][1]]))
        sources[name] = x * np.exp(2j * np.pi * centre * t)
        users[name] = {
            "centre_hz": float(centre),
            "bandwidth_hz": float(bandwidth),
            "level_db": level_db,
            "bursts_s": [[a / fs, b / fs] for a, b in spans],
        }
    params = {
        "users": users,
        "bands": {name: [u["centre_hz"] - u["bandwidth_hz"] / 2, u["centre_hz"] + u["bandwidth_hz"] / 2]
                  for name, u in users.items()},
        "primary": "primary",
    }
    return _assemble(_add_white_noise(rng, sources, snr_db), fs, params, "radio-iq", snr_db=snr_db)


# ---------------------------------------------------------------------------------------
# radar: slow time


def _target_dopplers(rng: np.random.Generator, n_targets: int, prf: float) -> tuple[list[float], list[float]]:
    """Doppler shifts (Hz; 10-45 % of the PRF in magnitude, at least 5 % of it apart) and phases (rad) of targets."""
    dopplers: list[float] = []
    while len(dopplers) < n_targets:
        f = float(rng.choice([-1, 1]) * rng.uniform(0.1, 0.45) * prf)
        if all(abs(f - g) >= 0.05 * prf for g in dopplers):
            dopplers.append(f)
    return dopplers, [float(p) for p in rng.uniform(0, 2 * np.pi, n_targets)]


def radar_mti(rng: np.random.Generator, *, seconds: float = 1.0, snr_db: float | None = 10.0,
              sample_rate: float | None = None) -> Scenario:
    """Slow-time samples of one range gate at a PRF of 2 kHz (complex, the rate is the PRF).

    - ``clutter``: stationary, zero-mean-Doppler complex Gaussian with a Gaussian Doppler
      spectrum of std ``clutter_spread_hz`` in [2, 10] Hz (wind-blown ground clutter),
      20-40 dB above each target.
    - ``targets``: 1-2 constant-amplitude (Swerling 0) targets at Doppler shifts of
      10-45 % of the PRF in magnitude, at least 5 % of the PRF apart; unit amplitude each.

    ``params["targets"]`` lists ``doppler_hz`` and ``velocity_mps`` (10 GHz carrier);
    ``params["bands"]["clutter"] = [-3 sigma, 3 sigma]``. Here ``snr_db`` is the radar's
    per-pulse target SNR: one target's power over the white noise's (default 10 dB; the
    coherent gain over ``n`` pulses adds ``10 log10(n)``).
    """
    prf = _rate(sample_rate, 2000.0)
    n = _length(seconds, prf)
    t = np.arange(n) / prf
    spread = float(rng.uniform(2.0, 10.0))
    white = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    freqs = np.fft.fftfreq(n, 1 / prf)
    # Shaping white noise by the square root of the PSD gives a (circular) stationary process.
    clutter = np.fft.ifft(np.fft.fft(white) * np.exp(-(freqs**2) / (4 * spread**2)))
    ctr_db = float(rng.uniform(20.0, 40.0))
    clutter *= math.sqrt(10 ** (ctr_db / 10) / _power(clutter))

    n_targets = int(rng.integers(1, 3))
    dopplers, phases = _target_dopplers(rng, n_targets, prf)
    targets = sum(np.exp(1j * (2 * np.pi * f * t + p)) for f, p in zip(dopplers, phases))
    wavelength = 299_792_458.0 / RADAR_CARRIER_HZ
    params = {
        "prf_hz": prf,
        "clutter_spread_hz": spread,
        "clutter_to_target_db": ctr_db,
        "carrier_hz": RADAR_CARRIER_HZ,
        "targets": [{"doppler_hz": f, "velocity_mps": f * wavelength / 2, "amplitude": 1.0, "phase": p}
                    for f, p in zip(dopplers, phases)],
        "bands": {"clutter": [-3 * spread, 3 * spread]},
    }
    sources = {"clutter": clutter, "targets": targets}
    one_target = np.exp(1j * 2 * np.pi * dopplers[0] * t)
    sources = _add_white_noise(rng, sources, snr_db, reference=one_target)
    return _assemble(sources, prf, params, "radar-doppler", snr_db=snr_db)


def radar_range(rng: np.random.Generator, *, seconds: float = 1.0, snr_db: float | None = 10.0,
                sample_rate: float | None = None, gates: int = 8) -> Scenario:
    """Slow-time samples of ``gates`` range gates at a PRF of 2 kHz: channels are range gates.

    - ``clutter``: in every gate, an independent stationary zero-mean-Doppler complex
      Gaussian with one Gaussian Doppler spectrum of std ``clutter_spread_hz`` in [2, 10] Hz;
      30-40 dB above a target in gate 0, falling as range^-3 (beam-limited clutter with
      ranges ``(gate + 2)`` gate widths), so about 20 dB less in gate 7.
    - ``targets``: 1-3 Swerling 0 targets of unit amplitude, each in its own gate of
      ``0 .. gates - 2``, at Doppler shifts of 10-45 % of the PRF in magnitude, at least 5 %
      of the PRF apart.
    - ``multipath``: one ghost of a target (a return by a longer, reflected path): in a
      target-free gate 1-3 gates beyond it, the same Doppler, 6-12 dB weaker, another phase.

    ``params["targets"]`` lists ``gate``, ``doppler_hz``, ``velocity_mps`` (10 GHz carrier),
    ``amplitude`` and ``phase``; ``params["multipath"]`` the ghost's ``gate``, ``of_target``
    (an index into targets), ``doppler_hz``, ``attenuation_db`` and ``phase``;
    ``params["clutter_to_target_db"]`` the clutter power per gate over one target's;
    ``params["bands"]["clutter"] = [-3 sigma, 3 sigma]``. ``snr_db`` is the per-pulse SNR of
    one target, as in :func:`radar_mti` (default 10 dB). Sources are ``(gates, pulses)``.
    """
    if isinstance(gates, bool) or not isinstance(gates, int) or gates < 4:
        raise ParameterError(f"{gates=} is not an integer >= 4 (targets, a ghost beyond them, and clutter-only gates)")
    prf = _rate(sample_rate, 2000.0)
    n = _length(seconds, prf)
    t = np.arange(n) / prf
    spread = float(rng.uniform(2.0, 10.0))
    freqs = np.fft.fftfreq(n, 1 / prf)
    white = rng.standard_normal((gates, n)) + 1j * rng.standard_normal((gates, n))
    clutter = np.fft.ifft(np.fft.fft(white, axis=-1) * np.exp(-(freqs**2) / (4 * spread**2)), axis=-1)
    ctr0 = float(rng.uniform(30.0, 40.0))
    ctr = ctr0 - 30.0 * np.log10((np.arange(gates) + 2) / 2)
    clutter *= np.sqrt(10 ** (ctr / 10) / np.mean(np.abs(clutter) ** 2, axis=-1))[:, None]

    n_targets = int(rng.integers(1, 4))
    target_gates = sorted(int(g) for g in rng.choice(gates - 1, size=n_targets, replace=False))
    dopplers, phases = _target_dopplers(rng, n_targets, prf)
    targets = np.zeros((gates, n), dtype=np.complex128)
    for g, f, p in zip(target_gates, dopplers, phases):
        targets[g] += np.exp(1j * (2 * np.pi * f * t + p))

    # the farthest target always has a free gate beyond it (targets stop at gates - 2)
    beyond = {i: [h for h in range(g + 1, min(g + 4, gates)) if h not in target_gates] for i, g in enumerate(target_gates)}
    source = int(rng.choice([i for i, free in beyond.items() if free]))
    ghost_gate = int(rng.choice(beyond[source]))
    attenuation = float(rng.uniform(6.0, 12.0))
    ghost_phase = float(rng.uniform(0, 2 * np.pi))
    multipath = np.zeros((gates, n), dtype=np.complex128)
    multipath[ghost_gate] = 10 ** (-attenuation / 20) * np.exp(1j * (2 * np.pi * dopplers[source] * t + ghost_phase))

    wavelength = 299_792_458.0 / RADAR_CARRIER_HZ
    params = {
        "prf_hz": prf,
        "gates": gates,
        "clutter_spread_hz": spread,
        "clutter_to_target_db": [float(c) for c in ctr],
        "carrier_hz": RADAR_CARRIER_HZ,
        "targets": [{"gate": g, "doppler_hz": f, "velocity_mps": f * wavelength / 2, "amplitude": 1.0, "phase": p}
                    for g, f, p in zip(target_gates, dopplers, phases)],
        "multipath": {"gate": ghost_gate, "of_target": source, "doppler_hz": dopplers[source],
                      "attenuation_db": attenuation, "phase": ghost_phase},
        "bands": {"clutter": [-3 * spread, 3 * spread]},
    }
    sources = {"clutter": clutter, "targets": targets, "multipath": multipath}
    sources = _add_white_noise(rng, sources, snr_db, reference=np.exp(1j * 2 * np.pi * dopplers[0] * t))
    return _assemble(sources, prf, params, "radar-range-doppler", snr_db=snr_db)


# ---------------------------------------------------------------------------------------
# microphone array


def _voice(rng: np.random.Generator, n: int, fs: float) -> tuple[np.ndarray, float]:
    """A speech-like source: harmonic complex with vibrato, on/off 'syllables'; and its f0."""
    t = np.arange(n) / fs
    f0 = float(rng.uniform(100.0, 250.0))
    inst = f0 * (1 + 0.02 * np.sin(2 * np.pi * 5.0 * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(inst) / fs
    top = min(4000.0, 0.45 * fs)
    x = sum(np.cos(h * phase + rng.uniform(0, 2 * np.pi)) / h for h in range(1, int(top / (1.02 * f0)) + 1))
    envelope = np.zeros(n)
    pos = int(rng.uniform(0.05, 0.2) * fs)  # starts silent, so circular delays never wrap sound
    while pos < n:
        length = int(rng.uniform(0.15, 0.4) * fs)
        seg = sps.windows.tukey(length, 0.3)[: n - pos]
        envelope[pos : pos + len(seg)] = seg
        pos += length + int(rng.uniform(0.05, 0.2) * fs)
    x = x * envelope
    return x / math.sqrt(_power(x) + 1e-30), f0


def plane_wave_delays(directions_deg, mic_x_m, *, speed_of_sound: float = SPEED_OF_SOUND) -> np.ndarray:
    """Delays ``(source, mic)`` in seconds of plane waves at a linear array, relative to its origin.

    ``tau = -x_m sin(theta) / c``: ``theta`` in degrees from broadside, positive towards +x,
    so a source at positive ``theta`` reaches the mics at larger ``x`` first.
    """
    theta = np.deg2rad(np.asarray(directions_deg, float))
    return -np.sin(theta)[:, None] * np.asarray(mic_x_m, float)[None, :] / speed_of_sound


def fractional_delay(x: np.ndarray, delays_s: np.ndarray, fs: float) -> np.ndarray:
    """Circularly delay ``x`` (time,) by each of ``delays_s`` (M,) seconds in the frequency domain -> (M, time)."""
    n = x.shape[-1]
    freqs = np.fft.rfftfreq(n, 1 / fs)
    spectrum = np.fft.rfft(x)[None, :] * np.exp(-2j * np.pi * freqs[None, :] * np.asarray(delays_s)[:, None])
    return np.fft.irfft(spectrum, n=n, axis=-1)


def array(rng: np.random.Generator, *, seconds: float = 2.0, snr_db: float | None = None,
          sample_rate: float | None = None) -> Scenario:
    """2-3 speech-like sources as plane waves on a 4-mic uniform linear array (16 kHz).

    Mics at ``x = (m - 1.5) * 4 cm`` (spatial aliasing above c / 2d = 4.3 kHz, above every
    harmonic); directions in [-60, 60] degrees, at least 20 degrees apart. Sources are
    written at the sensors (images, ``(4, time)``), delayed by :func:`plane_wave_delays`
    with :func:`fractional_delay`; ``snr_db`` adds independent white noise per mic.
    """
    fs = _rate(sample_rate, 16000.0)
    n = _length(seconds, fs)
    spacing, n_mics = 0.04, 4
    mic_x = (np.arange(n_mics) - (n_mics - 1) / 2) * spacing
    n_sources = int(rng.integers(2, 4))
    directions: list[float] = []
    while len(directions) < n_sources:
        d = float(rng.uniform(-60.0, 60.0))
        if all(abs(d - e) >= 20.0 for e in directions):
            directions.append(d)
    delays = plane_wave_delays(directions, mic_x)
    sources, f0s = {}, []
    for k, direction in enumerate(directions):
        dry, f0 = _voice(rng, n, fs)
        gain = 10 ** (rng.uniform(-3.0, 3.0) / 20)
        sources[f"source{k + 1}"] = gain * fractional_delay(dry, delays[k], fs)
        f0s.append(f0)
    params = {
        "mic_x_m": mic_x.tolist(),
        "spacing_m": spacing,
        "speed_of_sound_mps": SPEED_OF_SOUND,
        "directions_deg": dict(zip(sources, directions)),
        "delays_s": dict(zip(sources, delays.tolist())),
        "f0_hz": dict(zip(sources, f0s)),
    }
    return _assemble(_add_white_noise(rng, sources, snr_db), fs, params, "array-beamform", snr_db=snr_db)


# ---------------------------------------------------------------------------------------
# real recordings


def ecg_emg(rng: np.random.Generator, *, seconds: float = 10.0, snr_db: float | None = 0.0,
            sample_rate: float | None = None) -> Scenario:
    """MIT-BIH record 100 (lead MLII, 360 Hz) + NSTDB muscle noise ``ma`` and baseline wander ``bw``.

    Random excerpts (independent for the ECG and the noise records), each made zero-mean.
    ``emg`` and ``baseline`` are first scaled to equal power, then by one common gain so
    that ``10 log10(P(ecg) / P(emg + baseline)) == snr_db`` (each alone is about 3 dB
    weaker than their sum). Units: mV. Sources ``ecg``, ``emg``, ``baseline``.
    """
    import wfdb

    if snr_db is None:
        raise ParameterError("ecg-emg needs snr_db (the ECG-to-noise ratio, dB)")
    folder = _require(data_dir() / "ecg")
    native = 360.0
    fs = _rate(sample_rate, native)
    n = _length(seconds, native)
    parts, starts = {}, {}
    for name, record in (("ecg", "100"), ("emg", "ma"), ("baseline", "bw")):
        header = wfdb.rdheader(str(_require(folder / f"{record}.hea").with_suffix("")))
        start = _excerpt_start(rng, header.sig_len, n, folder / record)
        x = wfdb.rdrecord(str(folder / record), sampfrom=start, sampto=start + n, channels=[0]).p_signal[:, 0]
        parts[name], starts[record] = resample((x - x.mean())[None], native, fs), start
    parts["baseline"] *= math.sqrt(_power(parts["emg"]) / _power(parts["baseline"]))
    gain = _noise_gain(parts["ecg"], parts["emg"] + parts["baseline"], snr_db)
    sources = {"ecg": parts["ecg"], "emg": gain * parts["emg"], "baseline": gain * parts["baseline"]}
    params = {
        "records": {"ecg": "mitdb/100 MLII", "emg": "nstdb/ma noise1", "baseline": "nstdb/bw noise1"},
        "start_s": {record: s / native for record, s in starts.items()},
        "units": "mV",
        "bands": {"ecg": [0.5, 40.0]},
    }
    return _assemble(sources, fs, params, "ecg-wavelet", snr_db=snr_db, noise_sources=("emg", "baseline"))


def speech_noise(rng: np.random.Generator, *, seconds: float = 4.0, snr_db: float | None = 5.0,
                 sample_rate: float | None = None) -> Scenario:
    """A LibriSpeech excerpt (16 kHz) + real kitchen noise (``doing_the_dishes``) at ``snr_db``."""
    if snr_db is None:
        raise ParameterError("speech-noise needs snr_db (the speech-to-noise ratio, dB)")
    folder = _require(data_dir() / "speech")
    clips = sorted(folder.glob("libri*.flac"))
    if not clips:
        raise InputError(folder, "no LibriSpeech clips (libri*.flac)")
    clip = clips[int(rng.integers(len(clips)))]
    (speech,), fs_speech = _read_excerpts(rng, [clip], seconds)
    (noise,), fs_noise = _read_excerpts(rng, [folder / "doing_the_dishes.wav"], seconds)
    fs = _rate(sample_rate, fs_speech)
    speech, noise = resample(speech, fs_speech, fs), resample(noise, fs_noise, fs)
    n = min(speech.shape[-1], noise.shape[-1])
    speech, noise = speech[:, :n], noise[:, :n]
    sources = {"speech": speech, "noise": noise * _noise_gain(speech, noise, snr_db)}
    params = {"speech_file": clip.name, "noise_file": "doing_the_dishes.wav"}
    return _assemble(sources, fs, params, "audio-stft", snr_db=snr_db)


MUSIC_PARTS = {"flute": "soprano_flute", "oboe": "alto_oboe", "clarinet": "tenor_clarinet", "bassoon": "bass_bassoon"}


def music(rng: np.random.Generator, *, seconds: float = 5.0, snr_db: float | None = None,
          sample_rate: float | None = None) -> Scenario:
    """Bach chorale BWV 66.6, four wind parts (44.1 kHz stereo); the mixture is their sum.

    One random excerpt, the same for every part. ``params["notes_file"]`` names the score
    (note lists per part) for score-informed priors.
    """
    folder = _require(data_dir() / "music")
    paths = [folder / f"bach_bwv66.6__{part}.flac" for part in MUSIC_PARTS.values()]
    stems, native = _read_excerpts(rng, paths, seconds)
    fs = _rate(sample_rate, native)
    sources = {name: resample(x, native, fs) for name, x in zip(MUSIC_PARTS, stems)}
    params = {"piece": "bwv66.6", "parts": MUSIC_PARTS, "notes_file": "bach_bwv66.6__notes.json"}
    return _assemble(_add_white_noise(rng, sources, snr_db), fs, params, "audio-stft", snr_db=snr_db)


def _eeg_recording() -> tuple[np.ndarray, dict, np.ndarray]:
    """The EEGLAB tutorial recording ``(32, T)`` float64 in µV, its metadata and EEGLAB's unmixing ``(32, 32)``."""
    folder = _require(data_dir() / "eeg")
    x = np.load(_require(folder / "eeglab_data_continuous_uV.npy")).astype(np.float64)
    meta = json.loads(_require(folder / "eeglab_data_meta.json").read_text())
    unmixing = np.load(_require(folder / "eeglab_epochs_icaweights.npy")) @ np.load(folder / "eeglab_epochs_icasphere.npy")
    return x, meta, unmixing


def _scalp_xy(meta: dict) -> np.ndarray:
    """``(C, 2)`` flat scalp positions from EEGLAB's polar locations (nose at +y)."""
    theta = np.radians([c["theta_deg"] for c in meta["channel_locations_eeglab_polar"]])
    radius = np.array([c["radius"] for c in meta["channel_locations_eeglab_polar"]])
    return np.stack([radius * np.sin(theta), radius * np.cos(theta)], axis=1)


def _muscle_burst(rng: np.random.Generator, n: int, fs: float) -> np.ndarray:
    """``(n,)`` 20-60 Hz noise (clipped to 0.9 Nyquist) gated by Hann bursts 0.5-2 s long, about one per 4 s."""
    hi = min(60.0, 0.45 * fs)
    noise = sps.sosfiltfilt(sps.butter(4, [20.0, hi], btype="bandpass", fs=fs, output="sos"), rng.standard_normal(n))
    envelope = np.zeros(n)
    for _ in range(max(1, round(n / fs / 4))):
        width = int(rng.uniform(0.5, 2.0) * fs)
        start = int(rng.integers(0, max(1, n - width)))
        envelope[start : start + width] += np.hanning(width)[: n - start]
    return noise * envelope


def eeg(rng: np.random.Generator, *, seconds: float = 10.0, snr_db: float | None = 0.0,
        sample_rate: float | None = None) -> Scenario:
    """EEGLAB tutorial EEG (32 channels, 128 Hz, µV): real brain activity and blinks, synthetic muscle.

    Construction (every source is ``(32, T)`` at the sensors):

    - the recording is high-passed at 0.5 Hz (zero-phase 2nd-order Butterworth: slow
      drift is neither rhythm nor blink) and a random excerpt of ``seconds`` is drawn,
      redrawn (up to 50 times) until it holds a blink: the blink component's activation
      exceeds 6 times its median absolute value over the recording;
    - ``blink``: EEGLAB's own blink component (of its published ICA, the component of
      largest kurtosis over the recording, IC 3, frontal) back-projected to the sensors,
      ``a_k s_k(t)`` with ``s = W S x`` and ``a_k`` column k of ``(W S)^-1``;
    - ``brain``: the excerpt minus ``blink``, so ``brain + blink`` is the recording (brain
      keeps everything that is not a blink, eye movements included);
    - ``muscle``: two independent 20-60 Hz noise sources gated by 0.5-2 s bursts, one at T7
      and one at T8 (temporalis), each spread over the scalp as ``exp(-d^2 / (2 * 0.25^2))``
      of the flat distance ``d`` to its site on EEGLAB's polar layout; scaled so that
      ``10 log10(P(brain) / P(muscle)) == snr_db``.

    ``params["channel_names"]`` names the channels (``EOG1``/``EOG2`` at 1 and 5).
    """
    if snr_db is None:
        raise ParameterError("eeg needs snr_db (the brain-to-muscle power ratio, dB)")
    x, meta, unmixing = _eeg_recording()
    native = float(meta["fs_hz"])
    x = sps.sosfiltfilt(sps.butter(2, 0.5, btype="highpass", fs=native, output="sos"), x, axis=-1)
    activations = unmixing @ x
    centred = activations - activations.mean(axis=1, keepdims=True)
    kurtosis = (centred**4).mean(1) / (centred**2).mean(1) ** 2
    k = int(np.argmax(kurtosis))
    mixing = np.linalg.inv(unmixing)
    n = _length(seconds, native)
    level = 6 * np.median(np.abs(activations[k]))
    for _ in range(50):
        start = _excerpt_start(rng, x.shape[1], n, data_dir() / "eeg")
        if np.abs(activations[k, start : start + n]).max() > level:
            break
    else:
        raise ParameterError(f"found no excerpt of {seconds} s holding a blink")
    excerpt = x[:, start : start + n]
    blink = np.outer(mixing[:, k], activations[k, start : start + n])
    xy = _scalp_xy(meta)
    names = meta["channel_names"]
    muscle = sum(
        np.outer(np.exp(-np.sum((xy - xy[names.index(site)]) ** 2, axis=1) / (2 * 0.25**2)), _muscle_burst(rng, n, native))
        for site in ("T7", "T8")
    )
    fs = _rate(sample_rate, native)
    sources = {"brain": excerpt - blink, "blink": blink}
    sources["muscle"] = muscle * _noise_gain(sources["brain"], muscle, snr_db)
    sources = {name: resample(v, native, fs) for name, v in sources.items()}
    params = {
        "recording": "EEGLAB tutorial eeglab_data (continuous, 0.5 Hz high-pass)",
        "start_s": start / native,
        "blink_component": k,
        "channel_names": names,
        "eog_channels": [i for i, name in enumerate(names) if name.upper().startswith("EOG")],
        "units": "uV",
    }
    return _assemble(sources, fs, params, "eeg-ica", snr_db=snr_db)


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "multitone": multitone,
    "chirps": chirps,
    "am": am,
    "radio": radio,
    "ecg-emg": ecg_emg,
    "radar-mti": radar_mti,
    "radar-range": radar_range,
    "array": array,
    "speech-noise": speech_noise,
    "music": music,
    "eeg": eeg,
}


def make(name: str, rng: np.random.Generator, **options) -> Scenario:
    """Build scenario ``name`` (a key of :data:`SCENARIOS`); ``options`` left ``None`` take its defaults."""
    if name not in SCENARIOS:
        raise ParameterError(f"unknown scenario {name!r}; expected one of: {', '.join(SCENARIOS)}")
    return SCENARIOS[name](rng, **{k: v for k, v in options.items() if v is not None})


def write_scenarios(name: str, out_dir: str | Path, *, n: int = 1, seconds: float | None = None,
                    snr_db: float | None = None, seed: int = 0, sample_rate: float | None = None,
                    overwrite: bool = False, on_item: Callable[[Path], None] | None = None) -> list[Path]:
    """Write ``n`` items of scenario ``name`` in the ``evaluate`` layout.

    ``out_dir/<name>-<i>/mixture.<ext>`` and ``<source>.<ext>`` for ``i`` in ``range(n)``,
    plus ``out_dir/scenario.json`` (name, seed, options, and each track's params). Complex
    scenarios write ``.npy`` (complex64, ``(channel, time)``; the rate is in scenario.json),
    real ones 32-bit float WAV. Item ``i`` uses ``SeedSequence(seed, spawn_key=(i,))``, so
    it does not depend on ``n``. ``on_item(track_dir)`` is called after each item.

    Returns:
        The track folders, in order.

    Raises:
        OutputExistsError: a file to be written exists and ``overwrite`` is false (checked
            before anything is written).
    """
    if name not in SCENARIOS:
        raise ParameterError(f"unknown scenario {name!r}; expected one of: {', '.join(SCENARIOS)}")
    if not (isinstance(n, int) and n >= 1):
        raise ParameterError(f"{n=} is not an integer >= 1")
    out_dir = Path(out_dir)
    index = out_dir / "scenario.json"
    tracks = [out_dir / f"{name}-{i}" for i in range(n)]
    if not overwrite:
        for path in [index, *tracks]:
            if path.exists():
                raise OutputExistsError(path)
    options = {"seconds": seconds, "snr_db": snr_db, "sample_rate": sample_rate}
    described: dict[str, dict] = {}
    for i, track in enumerate(tracks):
        scenario = make(name, np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,))), **options)
        ext, subtype = (".npy", None) if scenario.is_complex else (".wav", "FLOAT")
        for stem, data in {"mixture": scenario.mixture, **scenario.sources}.items():
            write(track / f"{stem}{ext}", data, scenario.sample_rate, subtype=subtype, overwrite=overwrite)
        described[track.name] = {**scenario.params, "recipe": scenario.recipe, "format": ext[1:]}
        if on_item is not None:
            on_item(track)
    document = {"scenario": name, "seed": seed, "n": n, "options": options, "tracks": described}
    write_text_atomic(index, json.dumps(document, indent=2) + "\n", overwrite=overwrite)
    return tracks


__all__ = ["SCENARIOS", "Scenario", "data_dir", "fractional_delay", "make", "plane_wave_delays", "write_scenarios"]
