"""Batches: killed and resumed, in parallel workers, deterministic, and their completion rules.

Signals are short (1-2 s at 8 kHz, ``tones-fft``; 10 s at 360 Hz, ``ecg-wavelet``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
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


# ----------------------------------------------------------------------------- chunks of several files in one batch


def sdr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """``10 log10(|ref|^2 / |est - ref|^2)``: how close two runs' stems are (not a separation score)."""
    error = np.sum((estimate - reference) ** 2)
    return math.inf if error == 0 else float(10 * np.log10(np.sum(reference**2) / error))


def alone(items, recipe, out: Path, **options) -> dict[str, dict[str, np.ndarray]]:
    """Each item separated by itself (never grouped): its stems by track."""
    for item in items:
        moved = dataclasses.replace(item, out_dir=out / item.track)
        assert separate_item(moved, recipe, Options(out=out, **options), resume=False).status == "done"
    return {item.track: stems_of(out / item.track) for item in items}


def test_files_of_one_length_are_fitted_together_deterministically_as_they_are_alone(tmp_path):
    inputs = tmp_path / "in"
    write_mixtures(inputs, 4, seconds=0.5)
    write_mixtures(tmp_path / "odd", 1, seconds=0.4)[0].rename(inputs / "odd.wav")  # a length of its own
    recipe = load_recipe("tones-fft")
    runs = {}
    for name in ("a", "b"):
        items, _ = plan([inputs], recipe, tmp_path / name)
        results = run(items, recipe, Options(out=tmp_path / name, batch_size=4), batch=True)
        assert [r.status for r in results] == ["done"] * 5
        runs[name] = {item.track: stems_of(tmp_path / name / item.track) for item in items}
    record = json.loads((tmp_path / "a" / "item0" / "demux.json").read_text())
    assert record["batched_with"] == ["item1", "item2", "item3"] and record["batch_size"] == 4
    assert json.loads((tmp_path / "a" / "odd" / "demux.json").read_text())["batched_with"] == []
    assert len(record["stages"]) == 1 and len(record["stages"][0]["loss"]) == 1  # its own fit's report
    layout = {p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")}
    reference = alone(items, recipe, tmp_path / "alone")  # one 0.5 s chunk: any batch size is one chunk a fit
    assert layout == {p.relative_to(tmp_path / "alone") for p in (tmp_path / "alone").rglob("*")}
    for track, stems in runs["a"].items():
        for name, stem in stems.items():
            assert np.array_equal(stem, runs["b"][track][name]), (track, name)  # same inputs, seed, batch size
            if track in ("item0", "odd"):  # first in its batch, or alone: the lone run's fit exactly
                assert np.array_equal(stem, reference[track][name]), (track, name)
                masks = [np.load(root / track / "masks.npz")["masks"] for root in (tmp_path / "a", tmp_path / "alone")]
                assert np.array_equal(*masks), track
            # later in the batch: other dropout draws (measured: 4.4e-6 at most, 94 dB)
            np.testing.assert_allclose(stem, reference[track][name], atol=1e-4)
            assert sdr_db(reference[track][name], stem) > 60, (track, name)


def test_a_batch_report_split_per_input_keeps_each_inputs_items():
    from demux.pipeline import StageMasks, StageReport

    masks = StageMasks(["a", "b"], torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 2, 3, 1), torch.zeros(3),
                       torch.zeros(1))
    report = StageReport(name="split", split=None, sources=["a", "b"], seconds=1.5, n_params=7,
                         loss=[0.0, 1.0, 2.0, 3.0], n_iter=2, status=["gtol", "radius", "max_iter", "gtol"],
                         trajectory={"step": [0, 1], "rho": [[0.0, 0.1, 0.2, 0.3], [1.0, 1.1, 1.2, 1.3]]},
                         energy_share={"a": [0.5, 0.6, 0.7, 0.8], "b": [0.5, 0.4, 0.3, 0.2]}, chunks=[0, 1],
                         masks=masks)
    second = report.select(range(2, 4))  # the second of two inputs, two chunks each
    assert second.loss == [2.0, 3.0] and second.status == ["max_iter", "gtol"]
    assert second.trajectory == {"step": [0, 1], "rho": [[0.2, 0.3], [1.2, 1.3]]}
    assert second.energy_share == {"a": [0.7, 0.8], "b": [0.3, 0.2]}
    assert second.masks.masks[:, 0, 0, 0].tolist() == [2.0, 3.0] and second.end is None
    assert (second.seconds, second.n_iter, second.chunks) == (1.5, 2, [0, 1])  # the batch's


def test_chunked_files_fitted_together_each_go_on_from_their_own_chunks(tmp_path):
    """3 files of 3 chunks, --batch-size 8: 2 chunks of each file a fit, then the last one.

    The last, smaller batch must warm-start each file from its own chunks: starting them
    from the first file's instead measured 2.7e-4 off (57 dB) on the third file.
    """
    paths = write_mixtures(tmp_path / "in", 3, seconds=2.5)
    recipe = load_recipe("tones-fft")
    items, _ = plan([tmp_path / "in"], recipe, tmp_path / "out")
    assert [r.status for r in run(items, recipe, Options(out=tmp_path / "out", segment=1.0, batch_size=8),
                                  batch=True)] == ["done"] * 3
    record = json.loads((tmp_path / "out" / "item2" / "demux.json").read_text())
    assert [stage["chunks"] for stage in record["stages"]] == [[0, 1], [2]]
    assert [len(stage["loss"]) for stage in record["stages"]] == [2, 1]
    reference = alone(items, recipe, tmp_path / "alone", segment=1.0, batch_size=2)
    for item, path in zip(items, paths, strict=True):
        stems = stems_of(tmp_path / "out" / item.track)
        mixture = sf.read(path, dtype="float32", always_2d=True)[0]
        np.testing.assert_allclose(sum(stems.values()), mixture, atol=1e-5)
        for name, stem in stems.items():
            # warm-start radii are batch means and dropout draws per place (measured: 1.4e-5 at most, 85 dB)
            np.testing.assert_allclose(stem, reference[item.track][name], atol=1e-4)
            assert sdr_db(reference[item.track][name], stem) > 70, (item.track, name)


def test_cross_file_batch_resumes_after_partial_completion(tmp_path):
    write_mixtures(tmp_path / "in", 4)
    recipe, out = load_recipe("tones-fft"), tmp_path / "out"
    items, _ = plan([tmp_path / "in"], recipe, out)
    options = Options(out=out, batch_size=4)
    run(items, recipe, options, batch=True)
    before = {item.track: stems_of(item.out_dir) for item in items}
    marks = {p: p.stat().st_mtime_ns for p in out.rglob("*") if "item2" not in p.parts}
    (out / "item2" / "demux.json").unlink()  # as if killed before it was marked complete
    (out / "item2" / ".mid.0123456789ab.tmp.wav").write_bytes(b"half a stem")
    results = run(items, recipe, options, batch=True)
    assert [r.status for r in results] == ["skipped", "skipped", "done", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if "item2" not in p.parts} == marks
    assert all(is_complete(item) for item in items) and temporaries(out) == []
    record = json.loads((out / "item2" / "demux.json").read_text())
    assert record["batched_with"] == [] and record["batch_size"] == 4  # the rest of its group was done
    for name, stem in stems_of(out / "item2").items():  # fitted alone now (measured: 6.4e-6 from before)
        np.testing.assert_allclose(stem, before["item2"][name], atol=1e-4)


def test_bad_files_in_a_cross_file_batch_fail_alone(tmp_path, monkeypatch):
    import demux.pipeline

    inputs = tmp_path / "in"
    write_mixtures(inputs, 3)
    (inputs / "broken.wav").write_bytes(b"RIFF, and then nothing")  # unreadable: never grouped
    nan = sf.read(inputs / "item0.wav", dtype="float32")[0]
    nan[100] = np.nan
    sf.write(inputs / "nan.wav", nan, FS, subtype="FLOAT")  # the others' length: refused when opened
    real, shapes = demux.pipeline.separate_chunks, []

    def fails_when_grouped(read, *args, **kwargs):  # a group's fit failing: its items are redone alone
        shapes.append(read(0, 1).shape)
        if read(0, 1).shape[0] > 1:
            raise ParameterError("the group's fit failed")
        yield from real(read, *args, **kwargs)

    monkeypatch.setattr(demux.pipeline, "separate_chunks", fails_when_grouped)
    recipe, out = load_recipe("tones-fft"), tmp_path / "out"
    items, _ = plan([inputs], recipe, out)
    results = {r.item.track: r for r in run(items, recipe, Options(out=out, batch_size=8), batch=True)}
    assert {t: r.status for t, r in results.items()} == {
        "broken": "failed", "item0": "done", "item1": "done", "item2": "done", "nan": "failed"}
    assert "broken.wav" in results["broken"].message and "nan.wav" in results["nan"].message
    assert "NaN" in results["nan"].message or "nan" in results["nan"].message.lower()
    assert shapes == [(3, 1, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1)]  # one group of 3, then each alone
    assert sorted(p.name for p in out.iterdir()) == ["item0", "item1", "item2"]
    assert temporaries(out) == []


def test_groups_in_workers_resume_keep_going_and_give_the_jobs_1_stems(tmp_path):
    """A killed batch resumed with --jobs 2 --batch-size 4: --jobs 1's groups, each fitted in a worker.

    One spawned pool (slow to start) serves the resume, the failures and the comparison.
    """
    import shutil

    inputs = tmp_path / "in"
    write_mixtures(inputs, 5, seconds=0.5)
    (inputs / "broken.wav").write_bytes(b"RIFF, and then nothing")  # unreadable: a group of its own
    nan = sf.read(inputs / "item0.wav", dtype="float32")[0]
    nan[100] = np.nan
    sf.write(inputs / "nan.wav", nan, FS, subtype="FLOAT")  # the others' length: grouped, refused in its worker
    recipe, options = load_recipe("tones-fft"), {"batch_size": 4}
    # killed after item0 and item1 were done together, item2 half written, item3 with a stale temporary
    killed = tmp_path / "killed"
    done, _ = plan([inputs / "item0.wav", inputs / "item1.wav"], recipe, killed)
    assert [r.status for r in run(done, recipe, Options(out=killed, **options), batch=True)] == ["done"] * 2
    (killed / "item2").mkdir()
    (killed / "item2" / "low.wav").write_bytes(b"left by a killed run")
    (killed / "item3").mkdir()
    (killed / "item3" / ".mid.0123456789ab.tmp.wav").write_bytes(b"half a stem")
    outs = {jobs: shutil.copytree(killed, tmp_path / f"jobs{jobs}") for jobs in (1, 2)}
    marks = {p.name: p.stat().st_mtime_ns for p in (outs[2] / "item1").iterdir()}

    items, _ = plan([inputs], recipe, outs[1])
    local = run(items, recipe, Options(out=outs[1], **options), batch=True)
    assert [r.status for r in local] == ["failed", "skipped", "skipped"] + ["done"] * 3 + ["failed"]
    result = runner.invoke(app, ["separate", str(inputs), "-r", "tones-fft", "-o", str(outs[2]), "--jobs", "2",
                                 "--batch-size", "4"])
    assert result.exit_code == 1, result.output
    assert "2 of 7 items failed" in result.stderr and "broken.wav" in result.stderr and "nan.wav" in result.stderr
    table = result.stderr[result.stderr.index("demux separate --recipe") :]
    rows = [table.index(f"│ {item.track} ") for item in items]
    assert rows == sorted(rows), "the summary lists items in input order, not completion order"
    assert {p.name: p.stat().st_mtime_ns for p in (outs[2] / "item1").iterdir()} == marks  # skipped: untouched
    assert sorted(p.name for p in outs[2].iterdir()) == [f"item{i}" for i in range(5)]
    assert temporaries(outs[2]) == [] and (outs[2] / "item2" / "masks.npz").is_file()
    for track in (f"item{i}" for i in range(5)):
        records = [json.loads((out / track / "demux.json").read_text()) for out in outs.values()]
        assert records[0]["batched_with"] == records[1]["batched_with"], track
        stems = [stems_of(out / track) for out in outs.values()]
        assert set(stems[0]) == set(stems[1]) == {"low", "mid", "high"}
        for name, stem in stems[0].items():
            assert np.array_equal(stem, stems[1][name]), (track, name)
    # the unfinished items of one length went as one group, nan.wav with them (refused in the worker)
    assert json.loads((outs[2] / "item2" / "demux.json").read_text())["batched_with"] == ["item3", "item4"]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers in Linux /proc")
def test_workers_of_a_killed_batch_stop_with_it_and_the_batch_resumes(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "OUT"
    write_mixtures(inputs, 8, seconds=0.5)
    command = [sys.executable, "-m", "demux.cli", "separate", str(inputs), "-r", "tones-fft", "-o", str(out), "-q",
               "--jobs", "2", "--batch-size", "2"]
    log = tmp_path / "stderr.txt"  # not a pipe: workers that outlive the kill would hold it open
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    while not list(out.rglob("demux.json")):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no item completed in 120 s"
        time.sleep(0.005)
    workers = _children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(workers) >= 2  # the pool's two (and multiprocessing's resource tracker)
    deadline = time.monotonic() + 30  # else they finish the groups queued to them, then wait forever
    try:
        while any(_running(pid) for pid in workers):
            assert time.monotonic() < deadline, "the workers outlived their killed parent"
            time.sleep(0.05)
    finally:
        for pid in filter(_running, workers):
            os.kill(pid, signal.SIGKILL)
    recipe = load_recipe("tones-fft")
    items, _ = plan([inputs], recipe, out)
    done = [is_complete(item) for item in items]
    assert 1 <= sum(done) < len(items), "the kill came too late to leave unfinished items"
    results = run(items, recipe, Options(out=out, batch_size=2), batch=True)
    assert [r.status for r in results] == ["skipped" if d else "done" for d in done]
    assert all(is_complete(item) for item in items) and temporaries(out) == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cross_file_batch_on_cuda_gives_the_cpu_stems(tmp_path):
    write_mixtures(tmp_path / "in", 4)
    recipe = load_recipe("tones-fft")
    runs = {}
    for device in ("cpu", "cuda"):
        items, _ = plan([tmp_path / "in"], recipe, tmp_path / device)
        results = run(items, recipe, Options(out=tmp_path / device, device=device, batch_size=4), batch=True)
        assert [r.status for r in results] == ["done"] * 4
        assert json.loads((tmp_path / device / "item3" / "demux.json").read_text())["batched_with"] == [
            "item0", "item1", "item2"]
        runs[device] = {item.track: stems_of(tmp_path / device / item.track) for item in items}
    for track, stems in runs["cpu"].items():
        for name, stem in stems.items():
            # the same fits; float32 reductions differ in order between devices (as test_cli's CUDA test)
            np.testing.assert_allclose(runs["cuda"][track][name], stem, atol=1e-3)
