"""Numbers and figures behind docs/recipes.md: three recipes against their baselines.

Run by hand from the repository root (tests never run it; its outputs are committed):

    .venv/bin/python docs/recipe_evidence.py [ecg] [tones] [speech] [speech-variants] [--figures]

It prints one Markdown table per recipe and, with ``--figures``, writes
``docs/figures/<recipe>.png``. Deterministic: every mixture comes from a fixed seed.

- ``ecg-wavelet``: MIT-BIH records 100, 101, 103 (lead MLII) + NSTDB ``ma`` and ``bw``,
  mixed as the ``ecg-emg`` scenario mixes record 100 (:func:`ecg_mixture`), at 0 and 6 dB.
  Output SNR of the ECG stem, and R peaks found on it (:func:`r_peaks`) against the
  ``.atr`` beat annotations within 50 ms.
- ``tones-dct``: the ``multitone``, ``am`` and ``chirps`` scenarios (as ``demux bench``
  makes its items).
- ``speech-enhance``: the ``speech-noise`` scenario at 0 and 5 dB and ``data/demo_mix.wav``;
  ``speech-variants`` (not run by default: about 20 minutes on one thread) scores variants of
  the recipe on those and on 4 items of 10 s at 0 dB.

Stems are scored against the scenario's references as ``demux bench`` maps them
(:func:`assign`), so methods with finer or differently named stems (HPSS, audio-stft)
are scored on sums of their stems.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from pathlib import Path

import numpy as np
import torch

from demux import baselines, io
from demux.metrics import bss_eval, si_sdr
from demux.pipeline import separate
from demux.recipe import load_recipe
from demux.synth import Scenario, data_dir, make
from demux.transforms import build_transform

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"
ECG_RATE = 360.0
ECG_RECORDS = ("100", "101", "103")
#: MIT-BIH annotation symbols that mark a beat (the others are rhythm, noise and comment labels).
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")
MATCH_S = 0.05  # an R peak within 50 ms of an annotated beat is a hit
SPEECH_BAND_HZ = (100.0, 4000.0)  # the band-pass baseline's speech band


# --------------------------------------------------------------------------- scoring


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return abs(float(np.sum(a * b))) / math.sqrt(float(np.sum(a * a) * np.sum(b * b)) + 1e-300)


def assign(stems: dict[str, np.ndarray], refs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reference name -> estimate ``(channel, time)``, as ``demux bench`` maps stems.

    A stem named like a reference is its estimate; the other stems go one-to-one to the
    references still without one (the assignment maximising total absolute correlation),
    and any stem left after that to the reference it correlates with most.
    """
    from scipy.optimize import linear_sum_assignment

    estimates: dict[str, np.ndarray] = {k: v for k, v in stems.items() if k in refs}
    leftover = [k for k in stems if k not in refs]
    missing = [k for k in refs if k not in estimates]
    if leftover and missing:
        corr = np.array([[_correlation(stems[k], refs[r]) for r in missing] for k in leftover])
        paired = dict(zip(*linear_sum_assignment(-corr)))
        for i, name in enumerate(leftover):
            target = missing[paired[i]] if i in paired else max(refs, key=lambda r: _correlation(stems[name], refs[r]))
            estimates[target] = estimates.get(target, 0) + stems[name]
    else:
        for name in leftover:
            target = max(refs, key=lambda r: _correlation(stems[name], refs[r]))
            estimates[target] = estimates.get(target, 0) + stems[name]
    return {name: np.asarray(estimates.get(name, np.zeros_like(ref)), dtype=np.float64) for name, ref in refs.items()}


def scores(refs: dict[str, np.ndarray], estimates: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Reference -> {sdr, si_sdr} in dB (BSS-Eval v3 fast engine, channels averaged)."""
    ref = torch.from_numpy(np.stack([refs[k] for k in refs])).movedim(1, 0)  # (C, S, T)
    est = torch.from_numpy(np.stack([estimates[k] for k in refs])).movedim(1, 0)
    sdr = bss_eval(ref, est, engine="fast", permutation=False).sdr.mean(0)
    sisdr = si_sdr(est, ref).mean(0)
    return {name: {"sdr": float(sdr[i]), "si_sdr": float(sisdr[i])} for i, name in enumerate(refs)}


def references(scenario: Scenario) -> dict[str, np.ndarray]:
    """Non-noise sources, then ``noise`` = the sum of the noise sources; float64."""
    noise = scenario.params.get("noise_sources", [])
    refs = {k: v.astype(np.float64) for k, v in scenario.sources.items() if k not in noise}
    if noise:
        refs["noise"] = sum(scenario.sources[k].astype(np.float64) for k in noise)
    return refs


def _stems(method, mixture: np.ndarray, rate: float) -> dict[str, np.ndarray]:
    """Run ``method(mixture (1, C, T) tensor, rate)``; stems as ``(C, T)`` float64 arrays."""
    out = method(torch.from_numpy(mixture.astype(np.float32))[None], rate)
    return {k: v.detach().reshape(v.shape[-2:]).double().numpy() for k, v in out.items()}


def demux_method(recipe: str, overrides=()):
    resolved = load_recipe(recipe, list(overrides))
    return lambda mixture, rate: separate(mixture, rate, resolved, seed=0).stems


def oracle_method(recipe: str, refs: dict[str, np.ndarray]):
    """The oracle ideal ratio mask on the first-stage transform of ``recipe``."""
    stage = load_recipe(recipe).stages[0]

    def run(mixture, rate):
        transform = build_transform(stage.transform.type, rate, **stage.transform.params)
        tensors = {k: torch.from_numpy(v)[None] for k, v in refs.items()}
        return baselines.oracle_irm(mixture.double(), rate, references=tensors, transform=transform)

    return run


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- ECG


@functools.cache
def _record(name: str) -> np.ndarray:
    import wfdb

    return wfdb.rdrecord(str(data_dir() / "ecg" / name), channels=[0]).p_signal[:, 0]


def ecg_mixture(record: str, seconds: float, snr_db: float, rng: np.random.Generator):
    """As the ``ecg-emg`` scenario, for any MIT-BIH record: ``(ecg, noise, beats)``.

    Independent random excerpts of the record and of NSTDB ``ma`` and ``bw`` (channel 0),
    each made zero-mean; ``bw`` scaled to the power of ``ma``, then both by one gain so that
    ``P(ecg) / P(ma + bw)`` is ``snr_db``. ``beats``: annotated beat positions, samples.
    """
    import wfdb

    n = round(seconds * ECG_RATE)
    parts, first = {}, 0
    for name in (record, "ma", "bw"):
        x = _record(name)
        start = int(rng.integers(0, x.size - n + 1))
        first = start if name == record else first
        parts[name] = x[start : start + n] - x[start : start + n].mean()
    ma, bw = parts["ma"], parts["bw"] * math.sqrt(np.mean(parts["ma"] ** 2) / np.mean(parts["bw"] ** 2))
    ecg = parts[record]
    gain = math.sqrt(np.mean(ecg**2) / (np.mean((ma + bw) ** 2) * 10 ** (snr_db / 10)))
    ann = wfdb.rdann(str(data_dir() / "ecg" / record), "atr", sampfrom=first, sampto=first + n)
    beats = np.array([s - first for s, sym in zip(ann.sample, ann.symbol) if sym in BEAT_SYMBOLS])
    return ecg, gain * (ma + bw), beats


def r_peaks(x: np.ndarray, rate: float = ECG_RATE) -> np.ndarray:
    """R-peak sample positions: ``find_peaks`` on the 5-20 Hz band-passed signal.

    Candidates are peaks of ``|band-passed|`` at least 250 ms apart (the refractory
    period) and above 30 % of its 99th percentile; each is then moved to the largest
    deviation of ``x`` itself from its local median within 50 ms, so the position
    reflects the cleaned waveform, not the detector's filter.
    """
    from scipy import signal as sps

    sos = sps.butter(3, [5.0, 20.0], btype="bandpass", fs=rate, output="sos")
    envelope = np.abs(sps.sosfiltfilt(sos, x))
    candidates, _ = sps.find_peaks(envelope, distance=int(0.25 * rate), height=0.3 * np.percentile(envelope, 99))
    near, context = int(0.05 * rate), int(0.2 * rate)
    peaks = []
    for p in candidates:
        lo, hi = max(0, p - near), min(x.size, p + near + 1)
        local = x[lo:hi] - np.median(x[max(0, p - context) : p + context + 1])
        peaks.append(lo + int(np.argmax(np.abs(local))))
    return np.array(peaks, dtype=np.int64)


def match_beats(peaks: np.ndarray, beats: np.ndarray, rate: float = ECG_RATE) -> tuple[int, int, list[float]]:
    """``(hits, detections, |errors| in ms)``: each annotated beat's nearest peak within 50 ms."""
    errors = []
    for beat in beats:
        if peaks.size:
            nearest = peaks[np.argmin(np.abs(peaks - beat))]
            if abs(nearest - beat) <= MATCH_S * rate:
                errors.append(abs(nearest - beat) / rate * 1000)
    return len(errors), int(peaks.size), errors


def output_snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((estimate - reference) ** 2)))


def ecg_methods(overrides=()) -> dict:
    return {
        "demux ecg-wavelet": demux_method("ecg-wavelet", overrides),
        "ecg-bandpass 0.5-40 Hz": lambda m, r: {"ecg": baselines.ecg_bandpass(m.double(), r)["ecg"]},
        "wavelet soft threshold": lambda m, r: {"ecg": baselines.wavelet_denoise(m.double(), r)["clean"]},
        "mixture": lambda m, r: {"ecg": m},
    }


def ecg_table(*, snrs=(0.0, 6.0), items: int = 5, seconds: float = 20.0, overrides=()) -> str:
    """Output SNR and R-peak scores per method and input SNR (medians over records x items)."""
    rows = []
    for snr in snrs:
        results: dict[str, dict[str, list]] = {}
        for record in ECG_RECORDS:
            rng = np.random.default_rng([int(record), int(snr) + 100])
            for _ in range(items):
                ecg, noise, beats = ecg_mixture(record, seconds, snr, rng)
                mixture = (ecg + noise)[None]
                methods = ecg_methods(overrides)
                methods["oracle IRM (db4 DWT)"] = oracle_method("ecg-wavelet", {"ecg": ecg[None], "noise": noise[None]})
                for name, method in methods.items():
                    start = time.perf_counter()
                    estimate = _stems(method, mixture, ECG_RATE)["ecg"][0]
                    hits, found, errors = match_beats(r_peaks(estimate), beats)
                    r = results.setdefault(name, {"snr": [], "rec": [], "hits": 0, "beats": 0, "found": 0, "err": [], "s": 0.0})
                    r["snr"].append(output_snr(estimate, ecg))
                    r["rec"].append(record)
                    r["hits"], r["beats"], r["found"] = r["hits"] + hits, r["beats"] + beats.size, r["found"] + found
                    r["err"] += errors
                    r["s"] += time.perf_counter() - start
        for name, r in results.items():
            per_record = [float(np.median([v for v, rec in zip(r["snr"], r["rec"]) if rec == x])) for x in ECG_RECORDS]
            rows.append([f"{snr:g} dB", name, float(np.median(r["snr"])), *per_record, f"{r['hits'] / r['beats']:.3f}",
                         f"{r['hits'] / max(r['found'], 1):.3f}", float(np.median(r["err"])), float(np.mean(r["err"]))])
    header = ["input SNR", "method", "output SNR (median)", *(f"rec {x}" for x in ECG_RECORDS), "R sensitivity",
              "R PPV", "median abs err ms", "mean abs err ms"]
    return markdown(header, rows)


#: Variants of ecg-wavelet measured against the shipped recipe (``--set`` overrides).
ECG_VARIANTS = {
    "shipped (db4, ecg levels 2-8, beat prior, beat template on levels 7-8)": (),
    "no beat template (baseline still on levels 7-9)": ("split.sources.ecg.beats.template_levels=[]",),
    "no beat template, baseline on the approximation only (the previous recipe)": (
        "split.sources.ecg.beats.template_levels=[]", "split.sources.baseline.levels=[9]"),
    "beat template floor 0.05": ("split.sources.ecg.beats.template_floor=0.05",),
    "beat template on level 8 only (baseline on 8-9)": (
        "split.sources.ecg.beats.template_levels=[8]", "split.sources.baseline.levels=[8,9]"),
    "no beat prior": ("split.sources.ecg.beats=null",),
    "beat prior weight 4": ("split.sources.ecg.beats.weight=4.0",),
    "beat prior qrs_ms 60": ("split.sources.ecg.beats.qrs_ms=60",),
    "beat prior on levels 2-4 only": ("split.sources.ecg.beats.levels=[2,3,4]",),
    "ecg levels 3-8": ("split.sources.ecg.levels=[3,4,5,6,7,8]",),
    "bior4.4": ("split.transform.wavelet=bior4.4",),
    "emg with per-frame gains": ("split.sources.emg.stationary=false",),
    "emg noise-floor weight 1": ("split.sources.emg.noise_floor.weight=1.0",),
}


def ecg_variants_table(*, snrs=(0.0, 6.0), items: int = 5, seconds: float = 20.0) -> str:
    """Median output SNR of each :data:`ECG_VARIANTS` entry on the excerpts of :func:`ecg_table`."""
    rows = []
    for label, overrides in ECG_VARIANTS.items():
        method = demux_method("ecg-wavelet", overrides)
        row = [label]
        for snr in snrs:
            values = []
            for record in ECG_RECORDS:
                rng = np.random.default_rng([int(record), int(snr) + 100])
                for _ in range(items):
                    ecg, noise, _ = ecg_mixture(record, seconds, snr, rng)
                    values.append(output_snr(_stems(method, (ecg + noise)[None], ECG_RATE)["ecg"][0], ecg))
            row.append(float(np.median(values)))
        rows.append(row)
    return markdown(["ecg-wavelet variant", *(f"output SNR at {s:g} dB" for s in snrs)], rows)


def ecg_low_share(items: int = 5, seconds: float = 20.0) -> float:
    """Median share of the clean ECG's power in the db4 level-8 approximation (below ~0.7 Hz)."""
    import pywt

    shares = []
    for record in ECG_RECORDS:
        rng = np.random.default_rng([int(record), 106])
        for _ in range(items):
            ecg, _, _ = ecg_mixture(record, seconds, 6.0, rng)
            coeffs = pywt.wavedec(ecg, "db4", mode="periodization", level=8)
            shares.append(np.sum(coeffs[0] ** 2) / sum(np.sum(c**2) for c in coeffs))
    return float(np.median(shares))


# --------------------------------------------------------------------------- tones and speech


def scenario_items(name: str, n: int, **options) -> list[Scenario]:
    """Item ``i`` from ``SeedSequence(0, spawn_key=(i,))``, as ``demux bench`` makes them."""
    return [make(name, np.random.default_rng(np.random.SeedSequence(0, spawn_key=(i,))), **options) for i in range(n)]


def demo_scenario() -> Scenario:
    """``data/demo_mix.wav`` with its references (speech + kitchen noise at 5 dB, 6 s)."""
    read = lambda p: io.read(ROOT / p).data.astype(np.float32)
    sources = {"speech": read("data/demo/demo_mix/speech.wav"), "noise": read("data/demo/demo_mix/noise.wav")}
    return Scenario(read("data/demo_mix.wav"), sources, 16000.0, {}, "speech-enhance")


def score_methods(its: list[Scenario], methods: dict, *, only: str | None = None) -> dict[str, dict[str, float]]:
    """Method -> median SDR, SI-SDR and SI-SDR improvement over items (x references unless ``only``)."""
    out = {}
    for name, factory in methods.items():
        sdr, sisdr, gain, seconds = [], [], [], 0.0
        for scenario in its:
            refs = references(scenario)
            method = factory(scenario, refs)
            start = time.perf_counter()
            stems = _stems(method, scenario.mixture, scenario.sample_rate)
            seconds += time.perf_counter() - start
            got = scores(refs, assign(stems, refs))
            floor = scores(refs, {k: scenario.mixture.astype(np.float64) for k in refs})
            for ref in [only] if only else refs:
                sdr.append(got[ref]["sdr"])
                sisdr.append(got[ref]["si_sdr"])
                gain.append(got[ref]["si_sdr"] - floor[ref]["si_sdr"])
        out[name] = {"sdr": float(np.median(sdr)), "si_sdr": float(np.median(sisdr)),
                     "si_sdr_imp": float(np.median(gain)), "s_per_item": seconds / len(its)}
    return out


def _bands(scenario: Scenario) -> dict[str, tuple[float, float]]:
    return {k: (float(lo), float(hi)) for k, (lo, hi) in scenario.params["bands"].items()}


def tones_table(items: int = 5) -> str:
    methods = {
        "demux tones-dct": lambda s, refs: demux_method("tones-dct"),
        "demux tones-fft": lambda s, refs: demux_method("tones-fft"),
        "demux tones-fft, outside=-30": lambda s, refs: demux_method(
            "tones-fft", [f"split.sources.{k}.outside=-30" for k in ("low", "mid", "high")]),
        "bandpass (declared bands)": lambda s, refs: functools.partial(baselines.bandpass, bands=_bands(s)),
        "oracle IRM (DCT)": lambda s, refs: oracle_method("tones-dct", refs),
        "mixture": lambda s, refs: (lambda m, r: {k: m for k in refs}),
    }
    rows = []
    for name in ("multitone", "am", "chirps"):
        for method, r in score_methods(scenario_items(name, items), methods).items():
            rows.append([name, method, r["sdr"], r["si_sdr"], r["s_per_item"]])
    return markdown(["scenario", "method", "SDR", "SI-SDR", "seconds per item"], rows)


def speech_table(items: int = 4, seconds: float = 4.0) -> str:
    methods = {
        "demux speech-enhance": lambda s, refs: demux_method("speech-enhance"),
        "demux audio-stft (stems grouped per item by correlation)": lambda s, refs: demux_method("audio-stft"),
        "HPSS (median filtering)": lambda s, refs: baselines.hpss,
        f"bandpass {SPEECH_BAND_HZ[0]:g}-{SPEECH_BAND_HZ[1]:g} Hz": lambda s, refs: functools.partial(
            baselines.bandpass, bands={"speech": SPEECH_BAND_HZ}, residual="noise"),
        "oracle IRM (STFT 512)": lambda s, refs: oracle_method("speech-enhance", refs),
        "mixture": lambda s, refs: (lambda m, r: {k: m for k in refs}),
    }
    sets = {f"speech-noise {snr:g} dB ({items} x {seconds:g} s)": scenario_items("speech-noise", items, seconds=seconds,
                                                                             snr_db=snr) for snr in (0.0, 5.0)}
    sets["data/demo_mix.wav (5 dB, 6 s)"] = [demo_scenario()]
    rows = []
    for label, its in sets.items():
        for method, r in score_methods(its, methods, only="speech").items():
            rows.append([label, method, r["si_sdr"], r["si_sdr_imp"], r["sdr"], r["s_per_item"]])
    return markdown(["mixture", "method", "speech SI-SDR", "SI-SDR improvement", "speech SDR", "seconds per item"], rows)


# --------------------------------------------------------------------------- figures


#: docs/recipes.md's speech-enhance variants, as overrides of the shipped recipe. The STFT stage
#: alone is its `speech` summed back: the wavelet stage's masks sum to 1, so voice + hiss is it.
SPEECH_VARIANTS = {
    "shipped": (),
    "the STFT stage alone": ("stems={speech: [voice, hiss], noise: [noise]}",),
    "db4 wavelet stage, hiss on every level": ("wavelet.sources.hiss.levels=[]",),
    "db8 wavelet stage (6 levels), hiss on every level": (
        "wavelet.sources.hiss.levels=[]", "wavelet.transform.wavelet=db8", "wavelet.transform.level=6"),
}


def speech_variants_table(variants: dict = SPEECH_VARIANTS) -> str:
    """SI-SDRi medians of the speech stem on 4 x 4 s at 0 and 5 dB, the demo, their mean, and 4 x 10 s at 0 dB."""
    sets = {"0 dB": scenario_items("speech-noise", 4, seconds=4.0, snr_db=0.0),
            "5 dB": scenario_items("speech-noise", 4, seconds=4.0, snr_db=5.0),
            "demo": [demo_scenario()],
            "10 s, 0 dB": scenario_items("speech-noise", 4, seconds=10.0, snr_db=0.0)}
    rows = []
    for label, overrides in variants.items():
        method = {label: lambda s, refs, o=overrides: demux_method("speech-enhance", o)}
        gain = {k: score_methods(its, method, only="speech")[label]["si_sdr_imp"] for k, its in sets.items()}
        mean = float(np.mean([gain["0 dB"], gain["5 dB"], gain["demo"]]))
        rows.append([label, gain["0 dB"], gain["5 dB"], gain["demo"], mean, gain["10 s, 0 dB"]])
    return markdown(["variant", "0 dB", "5 dB", "demo", "mean", "10 s, 0 dB"], rows)


def _save(fig, name: str) -> Path:
    """Write ``docs/figures/<name>.png`` with a 256-colour palette (keeps each file small)."""
    import io as _io

    from PIL import Image

    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.png"
    buffer = _io.BytesIO()
    fig.savefig(buffer, dpi=80, format="png")
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path


def ecg_figure() -> Path:
    """5 s of record 100 + ma + bw at 0 dB: mixture, ECG stem vs clean, band-pass vs clean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ecg, noise, _ = ecg_mixture("100", 20.0, 0.0, np.random.default_rng([100, 100]))
    mixture = (ecg + noise)[None]
    ours = _stems(demux_method("ecg-wavelet"), mixture, ECG_RATE)
    band = _stems(ecg_methods()["ecg-bandpass 0.5-40 Hz"], mixture, ECG_RATE)["ecg"][0]
    t = np.arange(ecg.size) / ECG_RATE
    view = (t >= 5) & (t < 10)
    fig, axes = plt.subplots(4, 1, figsize=(9, 7.5), sharex=True)
    axes[0].plot(t[view], mixture[0][view], lw=0.6, color="0.3")
    axes[0].set_title("mixture: MIT-BIH 100 + NSTDB muscle noise + baseline wander, 0 dB")
    for ax, estimate, label in ((axes[1], ours["ecg"][0], "demux ecg stem"), (axes[2], band, "0.5-40 Hz band-pass")):
        ax.plot(t[view], ecg[view], lw=1.2, color="0.75", label="clean ECG")
        ax.plot(t[view], estimate[view], lw=0.7, color="C0" if ax is axes[1] else "C1", label=label)
        ax.set_title(f"{label}: output SNR {output_snr(estimate, ecg):.1f} dB (whole 20 s)")
        ax.legend(loc="upper right", fontsize=8)
    axes[3].plot(t[view], ours["emg"][0][view], lw=0.6, color="C2", label="emg stem")
    axes[3].plot(t[view], ours["baseline"][0][view], lw=1.0, color="C3", label="baseline stem")
    axes[3].legend(loc="upper right", fontsize=8)
    axes[3].set_title("demux emg and baseline stems")
    axes[3].set_xlabel("time (s)")
    for ax in axes:
        ax.set_ylabel("mV")
    fig.tight_layout()
    return _save(fig, "ecg-wavelet")


def tones_figure() -> Path:
    """DCT magnitude of a multitone mixture and of the three stems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from demux.transforms.dct import dct

    scenario = scenario_items("multitone", 1)[0]
    stems = _stems(demux_method("tones-dct"), scenario.mixture, scenario.sample_rate)
    n = scenario.mixture.shape[-1]
    freq = np.arange(n) * scenario.sample_rate / (2 * n)
    db = lambda x: 20 * np.log10(dct(torch.from_numpy(x[0])).abs().numpy() + 1e-9)
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True, sharey=True)
    axes[0].plot(freq, db(scenario.mixture.astype(np.float64)), lw=0.5, color="0.3")
    axes[0].set_title(f"mixture (multitone, sources {', '.join(scenario.sources)}): DCT magnitude")
    for k, (name, stem) in enumerate(stems.items()):
        axes[1].plot(freq, db(stem), lw=0.5, color=f"C{k}", label=name)
    for edge in (1000, 2500):
        axes[1].axvline(edge, color="0.5", ls=":", lw=0.8)
    axes[1].set_title("tones-dct stems (band edges dotted)")
    axes[1].legend(loc="upper right", fontsize=8)
    axes[1].set_xlabel("frequency (Hz)")
    axes[1].set_ylim(-120, 40)
    for ax in axes:
        ax.set_ylabel("dB")
    fig.tight_layout()
    return _save(fig, "tones-dct")


def speech_figure() -> Path:
    """Spectrograms of the demo mixture, its clean speech, and the two stems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import signal as sps

    scenario = demo_scenario()
    stems = _stems(demux_method("speech-enhance"), scenario.mixture, scenario.sample_rate)
    panels = {"mixture (data/demo_mix.wav)": scenario.mixture[0], "clean speech (reference)": scenario.sources["speech"][0],
              "demux speech stem": stems["speech"][0], "demux noise stem": stems["noise"][0]}
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 8), sharex=True)
    for ax, (title, x) in zip(axes, panels.items()):
        f, t, S = sps.spectrogram(x.astype(np.float64), fs=scenario.sample_rate, nperseg=512, noverlap=256)
        ax.pcolormesh(t, f / 1000, 10 * np.log10(S + 1e-12), vmin=-110, vmax=-40, cmap="magma", shading="auto",
                      rasterized=True)
        ax.set_title(title)
        ax.set_ylabel("kHz")
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    return _save(fig, "speech-enhance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", choices=["ecg", "tones", "speech", "speech-variants"], default=[])
    parser.add_argument("--figures", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = args.parts or ["ecg", "tones", "speech"]
    if "ecg" in parts:
        print("## ecg-wavelet\n\n" + ecg_table() + f"\n\nECG power below 0.7 Hz (median share): {ecg_low_share():.3f}\n")
        print(ecg_variants_table() + "\n")
    if "tones" in parts:
        print("## tones-dct\n\n" + tones_table() + "\n")
    if "speech" in parts:
        print("## speech-enhance\n\n" + speech_table() + "\n")
    if "speech-variants" in parts:
        print("## speech-enhance variants\n\n" + speech_variants_table() + "\n")
    if args.figures:
        figures = {"ecg": ecg_figure, "tones": tones_figure, "speech": speech_figure}
        for part in [part for part in parts if part in figures]:
            print("wrote", figures[part]().relative_to(ROOT))


if __name__ == "__main__":
    main()
