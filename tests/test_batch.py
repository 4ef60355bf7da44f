"""Batches: killed and resumed, in parallel workers, deterministic, and their completion rules.

Signals are short (1-2 s at 8 kHz, ``tones-fft``; 10 s at 360 Hz, ``ecg-wavelet``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import tones
from demux.batch import Options, is_complete, plan, run, separate_item
from demux.cli import app
from demux.errors import DemuxError, ParameterError
from demux.recipe import load_recipe, parse_recipe

FS = 8000
runner = CliRunner()


def write_mixtures(folder: Path, n: int, *, seconds: float = 1.0) -> list[Path]:
    """``n`` float WAV mixtures of three tones (one per tones-fft band), a different chord each."""
    paths = []
    for i in range(n):
        data = tones([(300 + 40 * i, 0.3), (1500 + 60 * i, 0.2), (3000 + 50 * i, 0.1)], sample_rate=FS, seconds=seconds)
        path = folder / f"item{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, data.numpy(), FS, subtype="FLOAT")
        paths.append(path)
    return paths


def temporaries(folder: Path) -> list[Path]:
    """Leftovers of demux.io.atomic_write: hidden ``.<stem>.<hex>.tmp<ext>`` files."""
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def stems_of(track: Path) -> dict[str, np.ndarray]:
    return {p.stem: sf.read(p, dtype="float32", always_2d=True)[0] for p in sorted(track.glob("*.wav"))}


# ----------------------------------------------------------------------------- killed and resumed


def test_killed_batch_resumes_without_redoing_finished_items(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "OUT"
    write_mixtures(inputs, 6)
    command = [sys.executable, "-m", "demux.cli", "separate", str(inputs), "-r", "tones-fft", "-o", str(out), "-q"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.rglob("demux.json")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no item completed in 120 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    tracks = [out / f"item{i}" for i in range(6)]
    done = [t for t in tracks if (t / "demux.json").is_file()]
    assert 1 <= len(done) < 6, "the kill came too late to leave unfinished items"
    marks = {t: {p.name: p.stat().st_mtime_ns for p in t.iterdir()} for t in done}
    # a stale temporary in the next item's folder, as a kill during a write leaves one
    stale = tracks[len(done)] / ".low.0123456789ab.tmp.wav"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a stem")

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    for track in tracks:
        record = json.loads((track / "demux.json").read_text())
        stems = stems_of(track)
        assert set(stems) == set(record["stems"]) == {"low", "mid", "high"}
        mixture = sf.read(record["input"], dtype="float32", always_2d=True)[0]
        np.testing.assert_allclose(sum(stems.values()), mixture, atol=1e-5)
    for track, before in marks.items():  # skipped: nothing rewritten
        assert {p.name: p.stat().st_mtime_ns for p in track.iterdir()} == before
    assert temporaries(out) == []


def test_incomplete_item_is_redone_and_its_stale_temporaries_removed(tmp_path):
    (path,) = write_mixtures(tmp_path / "in", 1)
    out, recipe = tmp_path / "OUT", load_recipe("tones-fft")
    items, batch = plan([tmp_path / "in"], recipe, out)
    assert batch and [i.track for i in items] == ["item0"]
    track = out / "item0"
    track.mkdir(parents=True)
    (track / "low.wav").write_bytes(b"left by a killed run")
    (track / ".mid.a1b2c3d4e5f6.tmp.wav").write_bytes(b"half written")
    assert not is_complete(items[0])
    (result,) = run(items, recipe, Options(out=out), batch=True)
    assert result.status == "done"
    assert sorted(p.name for p in track.iterdir()) == ["demux.json", "high.wav", "low.wav", "masks.npz", "mid.wav"]
    assert sf.info(track / "low.wav").frames == FS


def test_item_whose_stem_was_deleted_is_redone(tmp_path):
    write_mixtures(tmp_path / "in", 2)
    out, recipe = tmp_path / "OUT", load_recipe("tones-fft")
    items, _ = plan([tmp_path / "in"], recipe, out)
    assert [r.status for r in run(items, recipe, Options(out=out), batch=True)] == ["done", "done"]
    (out / "item1" / "mid.wav").unlink()
    assert is_complete(items[0]) and not is_complete(items[1])
    assert [r.status for r in run(items, recipe, Options(out=out), batch=True)] == ["skipped", "done"]
    assert (out / "item1" / "mid.wav").is_file()


def test_complete_item_made_with_other_settings_is_not_skipped(tmp_path):
    write_mixtures(tmp_path / "in", 1)
    out, recipe = tmp_path / "OUT", load_recipe("tones-fft")
    items, _ = plan([tmp_path / "in"], recipe, out)
    run(items, recipe, Options(out=out, seed=1), batch=True)
    before = (out / "item0" / "demux.json").read_bytes()
    (other_seed,) = run(items, recipe, Options(out=out, seed=2), batch=True)
    other = load_recipe("tones-fft", ["split.fit.max_iter=3"])
    (other_recipe,) = run(items, other, Options(out=out, seed=1), batch=True)
    other_chunking = [run(items, recipe, Options(out=out, seed=1, **change), batch=True)[0]
                      for change in ({"segment": 0.5}, {"segment": 0}, {"overlap": 0.2}, {"batch_size": 2})]
    for result in (other_seed, other_recipe, *other_chunking):
        assert result.status == "failed" and "another recipe, seed, format or segmenting" in result.message
    assert (out / "item0" / "demux.json").read_bytes() == before
    (replaced,) = run(items, recipe, Options(out=out, seed=2, overwrite=True), batch=True)
    assert replaced.status == "done"
    assert json.loads((out / "item0" / "demux.json").read_text())["seed"] == 2


# ----------------------------------------------------------------------------- parallel workers


def test_jobs_give_the_same_stems_bit_for_bit_and_keep_going(tmp_path):
    inputs = tmp_path / "in"
    write_mixtures(inputs, 3)
    (inputs / "broken.wav").write_bytes(b"RIFF, and then nothing")
    results = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        result = runner.invoke(app, ["separate", str(inputs), "-r", "tones-fft", "-o", str(out), "--jobs", str(jobs)])
        assert result.exit_code == 1, result.output
        assert "1 of 4 items failed" in result.stderr and "broken.wav" in result.stderr
        assert not (out / "broken").exists()
        table = result.stderr[result.stderr.index("demux separate --recipe") :]
        rows = [table.index(f"│ {track} ") for track in ("broken", "item0", "item1", "item2")]
        assert rows == sorted(rows), "the summary lists items in input order, not completion order"
        results[jobs] = {t.name: stems_of(t) for t in sorted(out.iterdir())}
    assert set(results[1]) == set(results[2]) == {"item0", "item1", "item2"}
    for track, stems in results[1].items():
        for name, stem in stems.items():
            # arrays, not bytes: libsndfile stamps float WAVs with the time of writing (PEAK chunk)
            assert np.array_equal(stem, results[2][track][name]), (track, name)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("segment", -1.0, "--segment -1.0: expected seconds >= 0"),
        ("segment", math.inf, "--segment inf"),
        ("overlap", 0.6, "--overlap 0.6: expected a fraction of the segment in \\[0, 0.5\\]"),
        ("overlap", -0.1, "--overlap -0.1"),
        ("batch_size", 0, "--batch-size 0: expected an integer >= 1"),
        ("batch_size", 2.5, "--batch-size 2.5"),
    ],
)
def test_options_refuse_bad_segmenting(option, value, expected):
    with pytest.raises(ParameterError, match=expected):
        Options(**{option: value})


def test_segment_zero_means_the_whole_file():
    assert Options(segment=0).segment is None and Options(segment=0.0).segment is None
    assert Options().segment == 30.0 and Options(segment=2).segment == 2


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_run_refuses_a_bad_number_of_jobs(tmp_path, jobs):
    with pytest.raises(ParameterError, match="--jobs"):
        run([], load_recipe("tones-fft"), Options(out=tmp_path), batch=True, jobs=jobs)


# ----------------------------------------------------------------------------- determinism


def ecg_like(seconds: float = 10.0, rate: int = 360) -> np.ndarray:
    """``(1, time)``: narrow spikes at 1.2 Hz, a 0.2 Hz wander and seeded broadband noise."""
    t = np.arange(int(seconds * rate)) / rate
    beats = np.exp(-0.5 * ((t % (1 / 1.2) - 0.4) / 0.01) ** 2)
    noise = np.random.default_rng(5).standard_normal(t.size) * 0.05
    return (beats + 0.3 * np.sin(2 * math.pi * 0.2 * t) + noise).astype(np.float32)[None]


@pytest.mark.parametrize(
    ("recipe", "rate", "data"),
    [
        ("tones-fft", FS, tones([(440, 0.3), (1700, 0.2), (3100, 0.1)], sample_rate=FS, seconds=1).numpy()[None]),
        ("ecg-wavelet", 360, ecg_like()),
    ],
)
def test_same_seed_gives_the_same_stems_bit_for_bit(tmp_path, recipe, rate, data):
    path = tmp_path / "mix.wav"
    sf.write(path, data.T, rate, subtype="FLOAT")
    runs = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        result = runner.invoke(app, ["separate", str(path), "-r", recipe, "-o", str(tmp_path / name), "--seed", str(seed)])
        assert result.exit_code == 0, result.output
        runs[name] = stems_of(tmp_path / name / "mix")
        assert json.loads((tmp_path / name / "mix" / "demux.json").read_text())["seed"] == seed
    assert set(runs["a"]) == set(load_recipe(recipe).sources())
    for stem, samples in runs["a"].items():
        assert np.array_equal(samples, runs["b"][stem]), stem
        # another seed may move the fit, but every run's stems still sum to the mixture
        np.testing.assert_allclose(sum(runs["c"].values()), data.T, atol=1e-4)


# ----------------------------------------------------------------------------- output names


def test_source_name_escaping_the_track_folder_is_refused_by_safe_join(tmp_path):
    (path,) = write_mixtures(tmp_path / "in", 1)
    raw = {"name": "evil", "stages": {"split": {"transform": {"type": "fft"}, "sources": {"ok": {}, "../evil": {}}}}}
    with pytest.raises(DemuxError, match=r"sources\.\.\./evil: a source name becomes a file name"):
        parse_recipe(raw, source="<test>")  # refused when the recipe is read ...
    good = load_recipe("tones-fft")
    stage = good.stages[0]
    sources = {"../evil" if name == "low" else name: src for name, src in stage.sources.items()}
    recipe = dataclasses.replace(good, stages=(dataclasses.replace(stage, sources=sources),))
    out = tmp_path / "OUT"
    item = plan([path], good, out)[0][0]
    with pytest.raises(DemuxError, match=r"item0\.wav: .*'\.\./evil\.wav' escapes the output folder"):
        separate_item(item, recipe, Options(out=out), resume=False)  # ... and by safe_join for every file
    assert not out.exists() and not (tmp_path / "evil.wav").exists()


def test_long_item_failing_midway_leaves_no_stem_and_no_temporary(tmp_path, monkeypatch):
    import demux.pipeline

    write_mixtures(tmp_path / "in", 1, seconds=3.0)
    real = demux.pipeline.separate_chunks
    written = []

    def fails_after_one_batch(*args, **kwargs):
        regions = real(*args, **kwargs)
        yield next(regions)
        written.extend(temporaries(tmp_path / "out"))  # the first region went to the stems' temporaries
        raise ParameterError("chunk 2 failed")

    monkeypatch.setattr(demux.pipeline, "separate_chunks", fails_after_one_batch)
    recipe = load_recipe("tones-fft")
    items, _ = plan([tmp_path / "in"], recipe, tmp_path / "out")
    [result] = run(items, recipe, Options(out=tmp_path / "out", segment=1.0), batch=True)
    assert result.status == "failed" and "chunk 2 failed" in result.message
    assert len(written) == 3  # one temporary per stem, being written as the chunks came
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []
