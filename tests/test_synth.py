"""Scenarios: determinism, exact sums, shapes and rates, physical content, files and CLI."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from demux import synth
from demux.cli import app
from demux.errors import InputError, OutputExistsError, ParameterError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL = {"ecg-emg": "ecg", "speech-noise": "speech", "music": "music", "eeg": "eeg"}

# Short items keep the suite fast; (seconds, expected rate, channels, complex).
SHAPES = {
    "multitone": (0.5, 8000.0, 1, False),
    "chirps": (0.5, 8000.0, 1, False),
    "am": (0.5, 8000.0, 1, False),
    "radio": (0.01, 1e6, 1, True),
    "ecg-emg": (4.0, 360.0, 1, False),
    "radar-mti": (0.5, 2000.0, 1, True),
    "radar-range": (0.5, 2000.0, 8, True),
    "array": (0.5, 16000.0, 4, False),
    "speech-noise": (1.0, 16000.0, 1, False),
    "music": (0.5, 44100.0, 2, False),
    "eeg": (2.0, 128.0, 32, False),
}


@pytest.fixture(autouse=True)
def shared_data(monkeypatch):
    monkeypatch.setenv("DEMUX_DATA", str(DATA))


def _needs_data(name: str) -> None:
    if name in REAL and not (DATA / REAL[name]).is_dir():
        pytest.skip(f"{DATA / REAL[name]} not present")


def _make(name: str, seed: int = 0, **options) -> synth.Scenario:
    _needs_data(name)
    options.setdefault("seconds", SHAPES[name][0])
    return synth.SCENARIOS[name](np.random.default_rng(seed), **options)


def _power(x) -> float:
    return float(np.mean(np.abs(np.asarray(x, dtype=np.complex128)) ** 2))


def _db(a, b) -> float:
    return 10 * math.log10(_power(a) / _power(b))


def test_registry_covers_the_documented_scenarios():
    assert set(synth.SCENARIOS) == set(SHAPES)


@pytest.mark.parametrize("name", list(SHAPES))
def test_scenario_is_deterministic_exact_and_documented(name):
    seconds, rate, channels, is_complex = SHAPES[name]
    a, b, other = _make(name, 7), _make(name, 7), _make(name, 8)

    # Same seed: bit for bit; another seed: different.
    assert a.mixture.tobytes() == b.mixture.tobytes()
    assert all(a.sources[k].tobytes() == b.sources[k].tobytes() for k in a.sources)
    assert a.params == b.params
    assert a.mixture.shape != other.mixture.shape or not np.array_equal(a.mixture, other.mixture)

    # The mixture is the float32 sum of the sources in dict order, exactly.
    np.testing.assert_array_equal(functools.reduce(np.add, a.sources.values()), a.mixture)
    assert a.mixture.dtype == (np.complex64 if is_complex else np.float32)
    assert a.is_complex == is_complex
    assert a.sample_rate == rate
    assert a.mixture.shape == (channels, round(seconds * rate))
    assert all(s.shape == a.mixture.shape and s.dtype == a.mixture.dtype for s in a.sources.values())
    assert a.params["sources"] == list(a.sources)
    assert set(a.params["noise_sources"]) <= set(a.sources)
    assert json.loads(json.dumps(a.params)) == a.params
    assert isinstance(a.recipe, str) and a.recipe
    assert np.isfinite(a.mixture).all() and _power(a.mixture) > 0


def test_multitone_spectrum_peaks_at_the_declared_tones():
    sc = _make("multitone", 3, seconds=1.0)
    n = sc.mixture.shape[1]
    freqs = np.fft.rfftfreq(n, 1 / sc.sample_rate)
    window = np.hanning(n)
    for name, tones in sc.params["tones"].items():
        spectrum = np.abs(np.fft.rfft(sc.sources[name][0] * window))
        lo, hi = sc.params["bands"][name]
        power = spectrum**2
        assert power[(freqs >= lo) & (freqs <= hi)].sum() > 0.999 * power.sum()
        is_peak = (spectrum[1:-1] > spectrum[:-2]) & (spectrum[1:-1] > spectrum[2:])
        peak_bins = 1 + np.flatnonzero(is_peak)
        top = np.sort(freqs[peak_bins[np.argsort(spectrum[peak_bins])[-len(tones):]]])
        np.testing.assert_allclose(top, sorted(t["freq_hz"] for t in tones), atol=1.0)  # 1 Hz bins
    bands = sorted(sc.params["bands"].values())
    assert all(hi < lo for (_, hi), (lo, _) in zip(bands, bands[1:]))  # disjoint


def test_chirp_sweeps_from_f0_to_f1():
    sc = _make("chirps", 1, seconds=1.0)
    chirp = sc.sources["chirp"][0]
    fs, n = sc.sample_rate, chirp.shape[0]
    f0, f1 = sc.params["chirp"]["f0_hz"], sc.params["chirp"]["f1_hz"]
    for frac in (0.25, 0.5, 0.75):
        centre, half = int(frac * n), 256
        segment = chirp[centre - half : centre + half] * np.hanning(2 * half)
        peak = np.fft.rfftfreq(2 * half, 1 / fs)[np.argmax(np.abs(np.fft.rfft(segment, 8 * half)[::4]))]
        assert abs(peak - (f0 + (f1 - f0) * centre / n)) < 2 * fs / (2 * half)


def test_am_sources_stay_in_their_bands():
    sc = _make("am", 2, seconds=1.0)
    freqs = np.fft.rfftfreq(sc.mixture.shape[1], 1 / sc.sample_rate)
    for name, (lo, hi) in sc.params["bands"].items():
        power = np.abs(np.fft.rfft(sc.sources[name][0] * np.hanning(len(freqs) * 2 - 2))) ** 2
        assert power[(freqs >= lo) & (freqs <= hi)].sum() > 0.999 * power.sum()


def test_radio_users_occupy_their_bands_and_bursts():
    sc = _make("radio", 4, seconds=0.02)
    fs, n = sc.sample_rate, sc.mixture.shape[1]
    freqs = np.fft.fftfreq(n, 1 / fs)
    for name, user in sc.params["users"].items():
        x = sc.sources[name][0]
        lo, hi = sc.params["bands"][name]
        power = np.abs(np.fft.fft(x)) ** 2
        assert power[(freqs >= lo) & (freqs <= hi)].sum() > 0.9 * power.sum(), name
        on = np.zeros(n, bool)
        for start, stop in user["bursts_s"]:
            on[round(start * fs) : round(stop * fs)] = True
        assert not np.any(x[~on]), f"{name} transmits outside its bursts"
    assert sc.params["users"]["primary"]["centre_hz"] == -fs / 8  # the fixed band
    assert math.isclose(_db(sc.mixture - sc.sources["noise"], sc.sources["noise"]), 20.0, abs_tol=0.01)


def test_radar_clutter_is_at_zero_doppler_and_targets_at_theirs():
    sc = _make("radar-mti", 5, seconds=1.0, snr_db=15.0)
    n, prf = sc.mixture.shape[1], sc.sample_rate
    freqs = np.fft.fftfreq(n, 1 / prf)
    clutter = np.abs(np.fft.fft(sc.sources["clutter"][0])) ** 2
    lo, hi = sc.params["bands"]["clutter"]
    assert clutter[(freqs >= lo) & (freqs <= hi)].sum() > 0.99 * clutter.sum()
    pad = 16 * n  # zero padding reads the spectrum between bins
    targets = np.abs(np.fft.fft(sc.sources["targets"][0], pad))
    fine = np.fft.fftfreq(pad, 1 / prf)
    for target in sc.params["targets"]:
        near = np.abs(fine - target["doppler_hz"]) < 5.0
        k = np.flatnonzero(near)[np.argmax(targets[near])]
        assert abs(fine[k] - target["doppler_hz"]) < prf / pad
        assert targets[k] > 0.95 * n  # unit amplitude: a full coherent peak
        assert math.isclose(target["velocity_mps"], target["doppler_hz"] * 0.0299792458 / 2, rel_tol=1e-9)
    one_target = sc.params["targets"][0]["amplitude"] ** 2
    assert math.isclose(10 * math.log10(one_target / _power(sc.sources["noise"])), 15.0, abs_tol=0.01)


def test_array_images_are_delayed_as_plane_waves_from_their_directions():
    sc = _make("array", 6, seconds=1.0)
    fs, n = sc.sample_rate, sc.mixture.shape[1]
    x_m = np.asarray(sc.params["mic_x_m"])
    np.testing.assert_allclose(np.diff(x_m), 0.04)
    freqs = np.fft.rfftfreq(n, 1 / fs)
    for name, direction in sc.params["directions_deg"].items():
        expected = -x_m * math.sin(math.radians(direction)) / 343.0
        spectra = np.fft.rfft(sc.sources[name].astype(np.float64), axis=-1)
        for m in range(1, len(x_m)):
            # Adjacent mics are < 0.12 ms apart: no phase wrap below 4 kHz.
            cross = spectra[m] * np.conj(spectra[m - 1])
            use = (np.abs(cross) > 1e-3 * np.abs(cross).max()) & (freqs < 4000)
            phase = np.angle(cross[use])
            weights = np.abs(cross[use])
            tau = -np.sum(weights * freqs[use] * phase) / (2 * np.pi * np.sum(weights * freqs[use] ** 2))
            assert abs(tau - (expected[m] - expected[m - 1])) < 1e-7, (name, m)


def test_white_noise_stem_at_the_requested_snr():
    sc = _make("multitone", 2, snr_db=12.5)
    assert sc.params["noise_sources"] == ["noise"]
    clean = sum(v.astype(np.float64) for k, v in sc.sources.items() if k != "noise")
    assert math.isclose(_db(clean, sc.sources["noise"]), 12.5, abs_tol=1e-3)
    assert "noise" not in _make("multitone", 2).sources


@pytest.mark.parametrize("snr_db", [-3.0, 6.0])
def test_ecg_emg_snr_and_sources(snr_db):
    sc = _make("ecg-emg", 1, snr_db=snr_db)
    assert list(sc.sources) == ["ecg", "emg", "baseline"]
    assert sc.params["noise_sources"] == ["emg", "baseline"]
    noise = sc.sources["emg"].astype(np.float64) + sc.sources["baseline"]
    assert abs(_db(sc.sources["ecg"], noise) - snr_db) < 0.1
    # Equal shares before the common gain: each alone is about 3 dB weaker than the sum.
    assert abs(_db(sc.sources["emg"], sc.sources["baseline"])) < 1e-3
    assert abs(float(np.mean(sc.sources["ecg"]))) < 1e-3  # excerpts are zero-mean


def test_ecg_emg_resamples_on_request():
    sc = _make("ecg-emg", 1, sample_rate=500.0, seconds=2.0)
    assert sc.sample_rate == 500.0 and sc.mixture.shape == (1, 1000)


def test_speech_noise_snr():
    sc = _make("speech-noise", 3, snr_db=-2.0)
    assert abs(_db(sc.sources["speech"], sc.sources["noise"]) + 2.0) < 0.01


def test_music_parts_come_from_one_excerpt():
    a = _make("music", 0, seconds=0.5)
    assert list(a.sources) == ["flute", "oboe", "clarinet", "bassoon"]
    # A different seed moves the excerpt of every part (a shared start position).
    b = _make("music", 1, seconds=0.5)
    assert not any(np.array_equal(a.sources[k], b.sources[k]) for k in a.sources)


def test_missing_data_folder_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DEMUX_DATA", str(tmp_path / "nowhere"))
    for name in REAL:
        with pytest.raises(InputError, match="data not found"):
            synth.SCENARIOS[name](np.random.default_rng(0))


def test_bad_options_raise_parameter_errors():
    with pytest.raises(ParameterError, match="seconds"):
        synth.SCENARIOS["multitone"](np.random.default_rng(0), seconds=0.001)
    with pytest.raises(ParameterError, match="sample_rate"):
        synth.SCENARIOS["am"](np.random.default_rng(0), sample_rate=-1.0)
    with pytest.raises(ParameterError, match="expected one of: multitone"):
        synth.make("nope", np.random.default_rng(0))
    if (DATA / "speech").is_dir():
        with pytest.raises(ParameterError, match="has only"):
            synth.SCENARIOS["speech-noise"](np.random.default_rng(0), seconds=600.0)


def test_write_scenarios_layout_index_and_refusal(tmp_path):
    out = tmp_path / "synth"
    tracks = synth.write_scenarios("multitone", out, n=2, seconds=0.25, snr_db=None, seed=3)
    assert [t.name for t in tracks] == ["multitone-0", "multitone-1"]
    index = json.loads((out / "scenario.json").read_text())
    assert index["scenario"] == "multitone" and index["seed"] == 3 and list(index["tracks"]) == ["multitone-0", "multitone-1"]
    for track in tracks:
        params = index["tracks"][track.name]
        assert sorted(p.name for p in track.iterdir()) == sorted(f"{s}.wav" for s in ["mixture", *params["sources"]])
        data, rate = sf.read(track / "mixture.wav", dtype="float32", always_2d=True)
        assert rate == 8000 and sf.info(track / "mixture.wav").subtype == "FLOAT"
        stems = [sf.read(track / f"{s}.wav", dtype="float32", always_2d=True)[0] for s in params["sources"]]
        np.testing.assert_array_equal(functools.reduce(np.add, stems), data)  # exact after the round trip

    # Item i does not depend on n. (Samples, not bytes: libsndfile's PEAK chunk holds a timestamp.)
    mixture = lambda track: sf.read(track / "mixture.wav", dtype="float32")[0]  # noqa: E731
    alone = synth.write_scenarios("multitone", tmp_path / "one", n=1, seconds=0.25, seed=3)
    np.testing.assert_array_equal(mixture(alone[0]), mixture(tracks[0]))

    before = mixture(tracks[0])
    with pytest.raises(OutputExistsError):
        synth.write_scenarios("multitone", out, n=2, seconds=0.25, seed=4)
    np.testing.assert_array_equal(mixture(tracks[0]), before)  # refused before writing anything
    synth.write_scenarios("multitone", out, n=2, seconds=0.25, seed=4, overwrite=True)
    assert not np.array_equal(mixture(tracks[0]), before)


def test_write_scenarios_complex_as_npy(tmp_path):
    tracks = synth.write_scenarios("radar-mti", tmp_path, n=1, seconds=0.1, seed=0)
    mixture = np.load(tracks[0] / "mixture.npy")
    assert mixture.dtype == np.complex64 and mixture.shape == (1, 200)
    index = json.loads((tmp_path / "scenario.json").read_text())
    assert index["tracks"]["radar-mti-0"]["sample_rate"] == 2000.0 and index["tracks"]["radar-mti-0"]["format"] == "npy"
    stems = [np.load(tracks[0] / f"{s}.npy") for s in index["tracks"]["radar-mti-0"]["sources"]]
    np.testing.assert_array_equal(functools.reduce(np.add, stems), mixture)


def test_cli_synth(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["synth", "am", "-o", str(out), "--n", "2", "--seconds", "0.25", "--snr", "20", "--seed", "5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 2 am item(s)" in result.output and str(out) in result.output
    assert (out / "am-1" / "noise.wav").exists()
    assert json.loads((out / "scenario.json").read_text())["options"]["snr_db"] == 20.0

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0

    unknown = runner.invoke(app, ["synth", "nope", "-o", str(tmp_path / "x")])
    assert unknown.exit_code == 2
    assert "unknown scenario 'nope'" in unknown.output and "radar-mti" in unknown.output
