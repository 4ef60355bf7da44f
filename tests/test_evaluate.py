"""evaluate(): pairing by track and source, the mixture floor, errors, and the CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from demux.cli import app
from demux.errors import InputError, ParameterError
from demux.evaluate import evaluate, track_signals

RATE = 8000
SOURCES = ("bass", "voice")


def _write(path: Path, data: np.ndarray, rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.atleast_2d(data).T, rate, subtype="FLOAT")


def _sources(seed: int, channels: int = 1, length: int = RATE) -> np.ndarray:
    """``(S, C, T)``: a low tone with noise and a brighter noise, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / RATE
    low = np.sin(2 * np.pi * 110 * t) + 0.1 * rng.standard_normal(length)
    bright = rng.standard_normal(length)
    stack = np.stack([low, bright])[:, None] * (0.5 ** np.arange(channels))[None, :, None]
    return (0.2 * stack).astype(np.float32)


def _make_tracks(root: Path, names=("song1", "song2"), *, residual: bool = True) -> dict:
    """refs/<track>/{bass,voice,mixture}.wav and est/<track>/{bass,voice,residual}.wav."""
    made = {}
    for seed, track in enumerate(names):
        refs = _sources(seed)
        rng = np.random.default_rng(100 + seed)
        # each estimate: 0.9 of its source, 0.15 of the other, a little noise
        ests = 0.9 * refs + 0.15 * refs[::-1] + 0.01 * rng.standard_normal(refs.shape).astype(np.float32)
        for name, ref, est in zip(SOURCES, refs, ests):
            _write(root / "refs" / track / f"{name}.wav", ref)
            _write(root / "est" / track / f"{name}.wav", est)
        _write(root / "refs" / track / "mixture.wav", refs.sum(axis=0))
        if residual:
            _write(root / "est" / track / "residual.wav", refs.sum(axis=0) - ests.sum(axis=0))
        made[track] = (refs, ests)
    return made


def _naive_si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    estimate, reference = estimate.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    target = estimate @ reference / (reference @ reference) * reference
    return float(10 * np.log10(np.sum(target**2) / np.sum((estimate - target) ** 2)))


def test_folders_scored_with_mixture_floor_and_improvements(tmp_path):
    import mir_eval.separation

    made = _make_tracks(tmp_path)
    report = evaluate(tmp_path / "refs", tmp_path / "est")
    assert report.tracks == ["song1", "song2"] and report.sources == list(SOURCES)
    assert report.metrics == ("sdr", "sir", "sar", "si_sdr", "mix_sdr", "mix_si_sdr", "sdr_imp", "si_sdr_imp")
    assert report.engine == "fast" and report.engine_version
    assert any("residual" in note for note in report.notes)
    refs, ests = made["song1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mir_eval's deprecation notice
        sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(
            refs[:, 0].astype(np.float64), ests[:, 0].astype(np.float64), compute_permutation=False
        )
        mixture = np.repeat(refs.sum(axis=0), 2, axis=0).astype(np.float64)
        mix_sdr, *_ = mir_eval.separation.bss_eval_sources(
            refs[:, 0].astype(np.float64), mixture, compute_permutation=False
        )
    rows = [row for row in report.rows if row.track == "song1"]
    for s, row in enumerate(rows):
        assert row.values["sdr"] == pytest.approx(sdr[s], abs=0.01)
        assert row.values["sir"] == pytest.approx(sir[s], abs=0.01)
        assert row.values["sar"] == pytest.approx(sar[s], abs=0.01)
        assert row.values["mix_sdr"] == pytest.approx(mix_sdr[s], abs=0.01)
        assert row.values["si_sdr"] == pytest.approx(_naive_si_sdr(ests[s], refs[s]), abs=1e-4)
        assert row.values["mix_si_sdr"] == pytest.approx(_naive_si_sdr(refs.sum(axis=0), refs[s]), abs=1e-4)
        assert row.values["sdr_imp"] == pytest.approx(row.values["sdr"] - row.values["mix_sdr"])
        assert row.values["si_sdr_imp"] > 5.0  # the estimates are far better than the mixture
    voice = np.array([row.values["sdr"] for row in report.rows if row.source == "voice"])
    stats = report.aggregate()["voice"]["sdr"]
    assert stats["median"] == pytest.approx(np.median(voice)) and stats["mean"] == pytest.approx(voice.mean())
    assert stats["iqr"] == pytest.approx(np.subtract(*np.percentile(voice, [75, 25]))) and stats["n"] == 2


def test_mir_eval_engine_agrees_with_fast(tmp_path):
    _make_tracks(tmp_path, names=("song1",))
    fast = evaluate(tmp_path / "refs", tmp_path / "est")
    slow = evaluate(tmp_path / "refs", tmp_path / "est", engine="mir_eval")
    assert slow.engine == "mir_eval"
    for a, b in zip(fast.rows, slow.rows):
        for metric in ("sdr", "sir", "sar", "mix_sdr"):
            assert a.values[metric] == pytest.approx(b.values[metric], abs=0.01)


def test_single_track_folders_and_mixture_option(tmp_path):
    made = _make_tracks(tmp_path, names=("song1",))
    (tmp_path / "refs" / "song1" / "mixture.wav").rename(tmp_path / "mix.wav")
    (tmp_path / "est" / "song1").rename(tmp_path / "est" / "take2")
    report = evaluate(tmp_path / "refs" / "song1", tmp_path / "est" / "take2")
    assert "mix_sdr" not in report.metrics
    with_mix = evaluate(tmp_path / "refs" / "song1", tmp_path / "est" / "take2", mixture=tmp_path / "mix.wav")
    refs, _ = made["song1"]
    assert with_mix.rows[1].values["mix_si_sdr"] == pytest.approx(_naive_si_sdr(refs.sum(axis=0), refs[1]), abs=1e-4)
    assert with_mix.rows[1].values["sdr"] == pytest.approx(report.rows[1].values["sdr"])


def test_mixture_file_with_several_tracks_is_refused(tmp_path):
    _make_tracks(tmp_path)
    _write(tmp_path / "mix.wav", np.zeros(RATE, dtype=np.float32))
    with pytest.raises(ParameterError, match="one file but the reference has 2 tracks"):
        evaluate(tmp_path / "refs", tmp_path / "est", mixture=tmp_path / "mix.wav")


def test_multichannel_is_the_mean_over_channels(tmp_path):
    refs = _sources(3, channels=2)
    ests = 0.9 * refs + 0.15 * refs[::-1]
    ests[:, 1] += 0.02 * np.random.default_rng(4).standard_normal(ests[:, 1].shape).astype(np.float32)
    for name, ref, est in zip(SOURCES, refs, ests):
        _write(tmp_path / "refs" / f"{name}.wav", ref)
        _write(tmp_path / "est" / f"{name}.wav", est)
    report = evaluate(tmp_path / "refs", tmp_path / "est")
    for s, row in enumerate(report.rows):
        per_channel = [_naive_si_sdr(ests[s, c], refs[s, c]) for c in range(2)]
        assert row.values["si_sdr"] == pytest.approx(np.mean(per_channel), abs=1e-4)
        assert per_channel[0] - per_channel[1] > 1.0  # the channels differ, so the mean is a real mean


def test_npy_stems_need_and_use_a_rate(tmp_path):
    refs = _sources(5)
    for name, ref in zip(SOURCES, refs):
        (tmp_path / "refs").mkdir(exist_ok=True)
        (tmp_path / "est").mkdir(exist_ok=True)
        np.save(tmp_path / "refs" / f"{name}.npy", ref)
        np.save(tmp_path / "est" / f"{name}.npy", ref + 0.1 * refs[::-1].sum(axis=0))
    with pytest.raises(InputError, match="rate"):
        evaluate(tmp_path / "refs", tmp_path / "est")
    report = evaluate(tmp_path / "refs", tmp_path / "est", rate=RATE)
    assert report.sample_rates == {"refs": RATE} and np.isfinite(report.rows[0].values["sdr"])


def test_silent_reference_gives_nan_and_a_note(tmp_path):
    _make_tracks(tmp_path, names=("song1",), residual=False)
    _write(tmp_path / "refs" / "song1" / "voice.wav", np.zeros(RATE, dtype=np.float32))
    report = evaluate(tmp_path / "refs", tmp_path / "est")
    bass, voice = report.rows
    assert np.isnan(voice.values["sdr"]) and np.isnan(voice.values["si_sdr"])
    assert np.isfinite(bass.values["sdr"])
    assert any("silent reference" in note for note in report.notes)
    assert report.aggregate()["voice"]["sdr"]["n"] == 0


def test_missing_extra_and_mismatched_stems_are_errors(tmp_path):
    _make_tracks(tmp_path, names=("song1",))
    est = tmp_path / "est" / "song1"
    with pytest.raises(InputError, match="no reference stem named 'residual'"):
        evaluate(tmp_path / "refs", tmp_path / "est", strict=True)
    (est / "voice.wav").rename(tmp_path / "voice.wav")
    with pytest.raises(InputError, match="missing estimate stem.*voice"):
        evaluate(tmp_path / "refs", tmp_path / "est")
    _write(est / "voice.wav", np.zeros(RATE - 10, dtype=np.float32) + 0.1)
    with pytest.raises(InputError, match=r"voice\.wav: 7990 samples but .*refs/song1/voice\.wav has 8000"):
        evaluate(tmp_path / "refs", tmp_path / "est")
    _write(est / "voice.wav", np.zeros(RATE, dtype=np.float32) + 0.1, rate=16000)
    with pytest.raises(InputError, match="sample rate 16000 Hz but .*voice.wav has 8000 Hz"):
        evaluate(tmp_path / "refs", tmp_path / "est")
    _write(tmp_path / "other" / "song9" / "bass.wav", np.ones(RATE, dtype=np.float32))
    with pytest.raises(InputError, match="no estimate for track.*song1"):
        evaluate(tmp_path / "refs", tmp_path / "other")
    with pytest.raises(InputError, match="not found"):
        evaluate(tmp_path / "refs", tmp_path / "missing")
    with pytest.raises(ParameterError, match="engine="):
        evaluate(tmp_path / "refs", tmp_path / "est", engine="museval")


def test_cli_writes_reports_and_exits_2_on_a_missing_stem(tmp_path):
    _make_tracks(tmp_path)
    runner = CliRunner()
    args = ["evaluate", "--reference", str(tmp_path / "refs"), "--estimate", str(tmp_path / "est")]
    outputs = ["--report", str(tmp_path / "r.md"), "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")]
    result = runner.invoke(app, args + outputs + ["--plot", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "song2" in result.output and "sdr_imp" in (tmp_path / "r.csv").read_text()
    assert (tmp_path / "r.md").stat().st_size > 0 and (tmp_path / "plots" / "sdr.png").is_file()
    for track in ("song1", "song2"):  # --plot draws each track's mixture, stems and references
        assert (tmp_path / "plots" / f"{track}.before_after.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    again = runner.invoke(app, args + ["--csv", str(tmp_path / "r.csv")])
    assert again.exit_code == 2 and "exists" in again.output
    (tmp_path / "est" / "song2" / "bass.wav").unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("demux: error:") and "bass" in lines[0]


def test_combine_scores_the_sum_of_several_estimate_stems(tmp_path):
    made = _make_tracks(tmp_path, names=("song1",), residual=False)
    refs, ests = made["song1"]
    # split the voice estimate into two finer stems, as a multi-stage recipe would
    _write(tmp_path / "est" / "song1" / "voice_a.wav", 0.3 * ests[1])
    _write(tmp_path / "est" / "song1" / "voice_b.wav", 0.7 * ests[1])
    (tmp_path / "est" / "song1" / f"{SOURCES[1]}.wav").unlink()
    with pytest.raises(InputError, match=f"missing estimate stem\\(s\\) {SOURCES[1]}"):
        evaluate(tmp_path / "refs", tmp_path / "est")
    report = evaluate(tmp_path / "refs", tmp_path / "est", combine={SOURCES[1]: ["voice_a", "voice_b"]})
    row = next(r for r in report.rows if r.source == SOURCES[1])
    assert row.values["si_sdr"] == pytest.approx(_naive_si_sdr(ests[1], refs[1]), abs=1e-3)
    result = CliRunner().invoke(
        app,
        ["evaluate", "--reference", str(tmp_path / "refs"), "--estimate", str(tmp_path / "est"),
         "--combine", f"{SOURCES[1]}=voice_a+voice_b"],
    )
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(
        app, ["evaluate", "--reference", str(tmp_path / "refs"), "--estimate", str(tmp_path / "est"), "--combine", "voice"]
    )
    assert bad.exit_code == 2 and "expected REFERENCE=STEM+STEM" in bad.stderr


def test_track_signals_reads_back_what_was_scored(tmp_path):
    made = _make_tracks(tmp_path)
    report = evaluate(tmp_path / "refs", tmp_path / "est")
    refs, ests = made["song2"]
    signals = track_signals(report, "song2")
    assert signals.sample_rate == RATE
    assert list(signals.stems) == ["bass", "residual", "voice"]  # the unscored residual too
    for k, name in enumerate(SOURCES):
        np.testing.assert_array_equal(signals.stems[name], ests[k])
        np.testing.assert_array_equal(signals.references[name], refs[k])
    np.testing.assert_allclose(signals.mixture, refs.sum(axis=0), atol=1e-7)
    with pytest.raises(ParameterError, match="no stems recorded for track 'song3'"):
        track_signals(report, "song3")

