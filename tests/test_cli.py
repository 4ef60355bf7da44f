"""`demux separate` through the CLI: a corpus of bad inputs, recipes and options, and the happy paths.

Every bad case must end with exit code 2, exactly one line on stderr that names the
file (or recipe key) and the problem, no traceback, and nothing written under OUT.
Signals are 1 s at 8 kHz with the fast ``tones-fft`` recipe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import demux
from conftest import tones
from demux.cli import app
from demux.recipe import load_recipe

FS = 8000
runner = CliRunner()

TWO_BANDS = """
name: two-bands
domain: audio
stages:
  split:
    transform: {type: fft}
    sources:
      low: {band: {lo: 0, hi: 1000}}
      high: {band: {lo: 1000, hi: 4000}}
    fit: {max_iter: 5}
"""


def mixture(*, seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    """``(channels, time)`` float32: a tone in each band of tones-fft, a different gain per channel."""
    one = tones([(440, 0.3), (1700, 0.2), (3100, 0.1)], sample_rate=FS, seconds=seconds).numpy()
    return np.stack([one * (1 - 0.2 * c) for c in range(channels)]).astype(np.float32)


def write_wav(path: Path, data: np.ndarray | None = None, *, rate: int = FS, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = mixture() if data is None else data
    sf.write(path, data.T, rate, subtype=subtype)
    return path


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def separate(*args: str | Path):
    return runner.invoke(app, ["separate", *map(str, args)])


def files_under(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (hidden ones too): its bytes and mtime."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def assert_refused(result, out: Path, *named: str) -> str:
    """Exit 2, one stderr line naming each of ``named``, no traceback, nothing under ``out``."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for text in named:
        assert text in lines[0], (text, lines[0])
    assert files_under(out) == {}
    return lines[0]


# ----------------------------------------------------------------------------- the bad-input corpus
# Each case builds its files in tmp_path and returns (CLI arguments before -o, texts the error line must hold).


def _bytes(name: str, content: bytes):
    def make(tmp: Path):
        path = tmp / name
        path.write_bytes(content)
        return [path, "-r", "tones-fft"], [name]

    return make


def _misnamed(real: str, name: str, problem: str):
    """A good ``real`` file (.wav or .npy) under a name whose extension says otherwise."""

    def make(tmp: Path):
        source = tmp / f"source{real}"
        if real == ".npy":
            np.save(source, ONE_SECOND)
        else:
            write_wav(source)
        path = source.rename(tmp / name)
        return [path, "-r", "tones-fft", "--rate", str(FS)] if name.endswith(".npy") else [path, "-r", "tones-fft"], [name, problem]

    return make


def _npy(name: str, data: np.ndarray, *extra: str):
    def make(tmp: Path):
        path = tmp / name
        np.save(path, data)
        return [path, "-r", "tones-fft", *extra], [name]

    return make


def _truncated(suffix: str):
    def make(tmp: Path):
        source = tmp / f"whole{suffix}"
        if suffix == ".npy":
            np.save(source, mixture())
        else:
            write_wav(source, subtype="PCM_16")
        path = tmp / f"cut{suffix}"
        content = source.read_bytes()
        path.write_bytes(content[: len(content) // 2])
        source.unlink()
        return [path, "-r", "tones-fft", "--rate", str(FS)] if suffix == ".npy" else [path, "-r", "tones-fft"], [path.name]

    return make


def _wav(name: str, data: np.ndarray, *extra: str, rate: int = FS, recipe: str = "tones-fft"):
    def make(tmp: Path):
        path = write_wav(tmp / name, data, rate=rate)
        return [path, "-r", recipe, *extra], [name]

    return make


def _with_recipe(text: str, *named: str, set_: tuple[str, ...] = (), files: dict[str, bytes] | None = None, rate: int = FS,
                 data: np.ndarray | None = None, culprit: str = "r.yaml"):
    def make(tmp: Path):
        for file_name, content in (files or {}).items():
            (tmp / file_name).write_bytes(content)
        recipe = write_recipe(tmp / "r.yaml", text.replace("TMP", str(tmp)))
        path = write_wav(tmp / "mix.wav", data, rate=rate)
        sets = [arg for item in set_ for arg in ("--set", item)]
        return [path, "-r", recipe, *sets], [culprit, *named]

    return make


def _folder(files: tuple[str, ...], *args: str):
    def make(tmp: Path):
        folder = tmp / "in"
        folder.mkdir()
        for name in files:
            (folder / name).write_bytes(b"not a signal")
        return [folder, "-r", "tones-fft", *args], ["in"]

    return make


def _options(*args: str):
    def make(tmp: Path):
        return [write_wav(tmp / "mix.wav"), "-r", "tones-fft", *args], list(args[:1])

    return make


def _same_track(tmp: Path):
    a, b = write_wav(tmp / "a" / "mix.wav"), write_wav(tmp / "b" / "mix.wav")
    return [a, b, "-r", "tones-fft"], ["mix.wav", "writes to"]


def _out_is_a_file(tmp: Path):
    # OUT itself must stay as it is: this case checks a file under tmp instead (see the test)
    return [write_wav(tmp / "mix.wav"), "-r", "tones-fft"], ["is a file"]


def _unreadable(tmp: Path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading")
    path = write_wav(tmp / "locked.wav")
    path.chmod(0)
    return [path, "-r", "tones-fft"], ["locked.wav", "permission denied"]


def _two_channels_for_three(tmp: Path):
    text = TWO_BANDS.replace("{type: fft}", "{type: spatial, n_elements: 2, spacing_m: 0.05, n_fft: 256}")
    recipe = write_recipe(tmp / "array.yaml", text)
    path = write_wav(tmp / "three.wav", mixture(channels=3))
    return [path, "-r", recipe], ["three.wav", "expected 2 channels", "got 3"]


ONE_SECOND = mixture()
SILENT_SAMPLE = np.zeros((1, 1), np.float32)
NAN = ONE_SECOND.copy()
NAN[0, 100] = np.nan
INF = ONE_SECOND.copy()
INF[0, 7] = np.inf
BAD_CASES = {
    # ---- files
    "missing-file": lambda tmp: ([tmp / "nowhere.wav", "-r", "tones-fft"], ["nowhere.wav", "not found"]),
    "empty-file": _bytes("empty.wav", b""),
    "zero-length-audio": _wav("none.wav", np.zeros((1, 0), np.float32)),
    "corrupt-wav-header": _bytes("noise.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4),
    "corrupt-flac": _bytes("noise.flac", b"fLaC" + bytes(range(256)) * 8),
    "truncated-flac": _truncated(".flac"),
    "truncated-npy": _truncated(".npy"),
    "truncated-wav": _truncated(".wav"),
    "text-file": _bytes("notes.txt", b"hello"),
    "no-extension": _bytes("mixture", b"RIFF"),
    "wav-named-npy": _misnamed(".wav", "x.npy", "not a .npy file"),
    "npy-named-wav": _misnamed(".npy", "y.wav", "corrupt audio"),
    "nan-samples-npy": _npy("nan.npy", NAN, "--rate", "8000"),
    "inf-samples-npy": _npy("inf.npy", INF, "--rate", "8000"),
    "nan-samples-float-wav": _wav("nan.wav", NAN),
    "npy-without-rate": _npy("norate.npy", ONE_SECOND),
    "complex-npy": _npy("iq.npy", ONE_SECOND.astype(np.complex64), "--rate", "8000"),
    "single-sample": _wav("one.wav", SILENT_SAMPLE + 0.5),
    "rate-contradicts-file": _wav("mix.wav", ONE_SECOND, "--rate", "16000"),
    "rate-not-positive": _wav("mix.wav", ONE_SECOND, "--rate", "-5"),
    "unreadable-permissions": _unreadable,
    # ---- what the recipe can serve
    "rate-not-served": _with_recipe(
        TWO_BANDS + "sample_rates: [8000]\n", "16000 Hz", "two-bands", "serves 8000", rate=16000, culprit="mix.wav"
    ),
    "band-above-nyquist": _wav("slow.wav", ONE_SECOND, rate=4000),
    "too-short-for-wavelet-levels": _wav("short.wav", ONE_SECOND[:, :200], rate=360, recipe="ecg-wavelet"),
    "more-channels-than-array": _two_channels_for_three,
    # ---- folders and globs
    "empty-folder": _folder(()),
    "folder-without-matching-files": _folder(("a.txt", "b.npy")),
    "glob-matching-nothing": lambda tmp: ([tmp / "*.wav", "-r", "tones-fft"], ["*.wav", "match this pattern"]),
    "two-inputs-one-track": _same_track,
    # ---- recipes
    "yaml-syntax-error": _with_recipe("name: x\nstages: {split: [unclosed\n", "YAML syntax error at line 3, column 1"),
    "unknown-key": _with_recipe(TWO_BANDS.replace("fit: {", "fit: {max_itr: 3, "), "max_itr", "did you mean 'max_iter'"),
    "wrong-type": _with_recipe(TWO_BANDS.replace("lo: 1000", "lo: loud"), "sources.high.bands.0.lo", "expected a number"),
    "out-of-range": _with_recipe(TWO_BANDS.replace("max_iter: 5", "max_iter: 0"), "fit.max_iter"),
    "inverted-band": _with_recipe(TWO_BANDS.replace("lo: 1000, hi: 4000", "lo: 3000, hi: 1000"), "lo < hi"),
    "unknown-recipe-name": lambda tmp: ([write_wav(tmp / "mix.wav"), "-r", "tones-fttf"], ["tones-fttf", "did you mean 'tones-fft'"]),
    "missing-recipe-file": lambda tmp: ([write_wav(tmp / "mix.wav"), "-r", tmp / "gone.yaml"], ["gone.yaml", "no such recipe file"]),
    "learned-not-safetensors": _with_recipe(
        TWO_BANDS.replace("{band: {lo: 0, hi: 1000}}", "{band: {lo: 0, hi: 1000}, learned: TMP/learned.bin}"),
        "not a safetensors file", files={"learned.bin": b"\x80\x04pickle, not safetensors"}, culprit="learned.bin",
    ),
    "learned-missing": _with_recipe(
        TWO_BANDS.replace("{band: {lo: 0, hi: 1000}}", "{band: {lo: 0, hi: 1000}, learned: TMP/none.safetensors}"),
        "no such learned-parameters file", culprit="none.safetensors",
    ),
    "source-name-escapes": _with_recipe(TWO_BANDS.replace("      high:", "      ../evil:"), "sources.../evil", "file name"),
    "source-name-with-folder": _with_recipe(TWO_BANDS.replace("      high:", "      sub/high:"), "sources.sub/high"),
    "stems-unknown-leaf": _with_recipe(TWO_BANDS + "stems: {all: [low, hihg]}\n", "stems.all.1", "unknown stem 'hihg'"),
    "set-malformed": _with_recipe(TWO_BANDS, "split.fit.max_iter", "key.path=value", set_=("split.fit.max_iter",)),
    "set-wrong-type": _with_recipe(TWO_BANDS, "split.fit.max_iter", "expected an integer", set_=("split.fit.max_iter=many",)),
    "set-unknown-key": _with_recipe(TWO_BANDS, "split.fit.max_itr", "unknown key", set_=("split.fit.max_itr=3",)),
    # ---- options
    "format-invalid": _options("--format", "mp3"),
    "jobs-zero": _options("--jobs", "0"),
    "segment-negative": _options("--segment", "-1"),
    "overlap-above-half": _options("--overlap", "0.6"),
    "batch-size-zero": _options("--batch-size", "0"),
    "device-cuda-without-cuda": pytest.param(
        _options("--device", "cuda"),
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: --device cuda is valid"),
    ),
}


@pytest.mark.parametrize("make", list(BAD_CASES.values()), ids=list(BAD_CASES))
def test_bad_input_is_refused_with_one_line_and_nothing_written(tmp_path, make):
    args, named = make(tmp_path)
    out = tmp_path / "OUT"
    result = separate(*args, "-o", out)
    assert_refused(result, out, *named)
    assert not (tmp_path / "evil.wav").exists() and not (out.parent / "evil.wav").exists()


def test_bad_input_corpus_is_large_enough():
    assert len(BAD_CASES) >= 30


def test_output_folder_that_is_a_file_is_refused(tmp_path):
    args, named = _out_is_a_file(tmp_path)
    out = tmp_path / "OUT"
    out.write_text("a file")
    result = separate(*args, "-o", out)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "OUT" in result.stderr and named[0] in result.stderr
    assert out.read_text() == "a file"


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "separate", str(tmp_path / "nowhere.wav"), "-r", "tones-fft", "-o", str(tmp_path / "o")])
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "InputError"


def test_existing_outputs_of_a_single_file_are_refused_and_left_alone(tmp_path):
    path, out = write_wav(tmp_path / "mix.wav"), tmp_path / "OUT"
    assert separate(path, "-r", "tones-fft", "-o", out).exit_code == 0
    before = files_under(out)
    assert {"mix/low.wav", "mix/mid.wav", "mix/high.wav", "mix/demux.json", "mix/masks.npz"} == set(before)
    result = separate(path, "-r", "tones-fft", "-o", out, "--seed", "4")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "exists" in line and "--overwrite" in line and str(out / "mix") in line
    assert files_under(out) == before  # same bytes and mtimes
    replaced = separate(path, "-r", "tones-fft", "-o", out, "--seed", "4", "--overwrite")
    assert replaced.exit_code == 0
    assert json.loads((out / "mix" / "demux.json").read_text())["seed"] == 4


def test_silent_input_gives_silent_stems_with_a_warning(tmp_path):
    path, out = write_wav(tmp_path / "zero.wav", np.zeros((1, FS), np.float32)), tmp_path / "OUT"
    result = separate(path, "-r", "tones-fft", "-o", out)
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "zero.wav" in result.stderr and "silent" in result.stderr
    for name in ("low", "mid", "high"):
        stem, rate = sf.read(out / "zero" / f"{name}.wav", dtype="float32")
        assert rate == FS and stem.shape == (FS,) and not np.any(stem)

    def no_nan(constant):
        assert constant != "NaN", "demux.json holds NaN"
        return float(constant)

    record = json.loads((out / "zero" / "demux.json").read_text(), parse_constant=no_nan)
    assert record["warnings"] and "silent" in record["warnings"][0]


# ----------------------------------------------------------------------------- happy paths


def read_stems(folder: Path, ext: str = "wav") -> dict[str, np.ndarray]:
    """Stems of one track folder as ``(channels, time)`` float arrays."""
    out = {}
    for path in sorted(folder.glob(f"*.{ext}")):
        out[path.stem] = np.load(path) if ext == "npy" else sf.read(path, dtype="float32", always_2d=True)[0].T
    return out


def test_single_file_writes_stems_that_sum_to_the_mixture_and_provenance(tmp_path):
    data = mixture(channels=2)
    path, out = write_wav(tmp_path / "song.wav", data), tmp_path / "OUT"
    result = separate(path, "-r", "tones-fft", "-o", out, "--seed", "7")
    assert result.exit_code == 0, result.output
    stems = read_stems(out / "song")
    assert set(stems) == {"low", "mid", "high"}
    for stem in stems.values():
        assert stem.shape == data.shape
    np.testing.assert_allclose(sum(stems.values()), data, atol=1e-5)
    # each tone lands in its own band's stem (the error is about 1e-5 today)
    for name, (freq, amp) in {"low": (440, 0.3), "mid": (1700, 0.2), "high": (3100, 0.1)}.items():
        tone = tones([(freq, amp)], sample_rate=FS, seconds=1).numpy()
        np.testing.assert_allclose(stems[name], np.stack([tone, 0.8 * tone]), atol=1e-3)
    assert sf.info(out / "song" / "low.wav").subtype == "FLOAT"
    record = json.loads((out / "song" / "demux.json").read_text())
    for key in ("input", "track", "stems", "sample_rate", "seed", "recipe", "versions", "stages"):
        assert key in record, key
    assert record["input"] == str(path) and record["track"] == "song" and record["seed"] == 7
    assert record["sample_rate"] == FS and record["stems"] == {n: f"{n}.wav" for n in ("low", "mid", "high")}
    assert record["recipe"]["name"] == "tones-fft" and record["versions"]["torch"] == torch.__version__
    stage = record["stages"][0]
    assert stage["n_iter"] >= 1 and len(stage["trajectory"]["radius"]) == stage["n_iter"]


def test_recipe_stems_are_the_files_written_and_recorded(tmp_path):
    data = mixture()
    path, out = write_wav(tmp_path / "mix.wav", data), tmp_path / "OUT"
    result = separate(path, "-r", "tones-fft", "-o", out, "--set", "stems={tonal: [low], rest: [mid, high]}")
    assert result.exit_code == 0, result.output
    stems = read_stems(out / "mix")
    assert set(stems) == {"tonal", "rest"}
    np.testing.assert_allclose(stems["tonal"] + stems["rest"], data, atol=1e-5)
    tone = tones([(440, 0.3)], sample_rate=FS, seconds=1).numpy()
    np.testing.assert_allclose(stems["tonal"], tone[None], atol=1e-3)
    record = json.loads((out / "mix" / "demux.json").read_text())
    assert record["stems"] == {"tonal": "tonal.wav", "rest": "rest.wav"}
    assert record["recipe"]["stems"] == {"tonal": ["low"], "rest": ["mid", "high"]}
    with np.load(out / "mix" / "masks.npz") as masks:  # the first stage's masks: its own sources
        assert list(masks["names"]) == ["low", "mid", "high"]


@pytest.mark.parametrize("fmt", ["flac", "npy"])
def test_format_option_writes_that_format(tmp_path, fmt):
    path = write_wav(tmp_path / "mix.wav")
    assert separate(path, "-r", "tones-fft", "-o", tmp_path / "wav").exit_code == 0
    result = separate(path, "-r", "tones-fft", "-o", tmp_path / fmt, "--format", fmt)
    assert result.exit_code == 0, result.output
    reference, stems = read_stems(tmp_path / "wav" / "mix"), read_stems(tmp_path / fmt / "mix", fmt)
    assert set(stems) == set(reference) == {"low", "mid", "high"}
    tolerance = 0 if fmt == "npy" else 2.0**-22  # flac defaults to PCM_24
    for name, stem in stems.items():
        np.testing.assert_allclose(stem, reference[name], rtol=0, atol=tolerance)
    assert json.loads((tmp_path / fmt / "mix" / "demux.json").read_text())["stems"]["low"] == f"low.{fmt}"


def test_set_override_is_applied_and_recorded(tmp_path):
    path, out = write_wav(tmp_path / "mix.wav"), tmp_path / "OUT"
    result = separate(path, "-r", "tones-fft", "-o", out, "--set", "split.fit.max_iter=2")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "mix" / "demux.json").read_text())
    assert record["overrides"] == ["split.fit.max_iter=2"]
    assert record["recipe"]["stages"]["split"]["fit"]["max_iter"] == 2
    assert record["stages"][0]["n_iter"] <= 2


def test_folder_keeps_its_nested_layout(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "OUT"
    for relative in ("a.wav", "x/b.wav", "x/y/c.flac"):
        write_wav(folder / relative, subtype="FLOAT" if relative.endswith("wav") else "PCM_24")
    (folder / "x" / "notes.txt").write_text("skipped: not audio")
    result = separate(folder, "-r", "tones-fft", "-o", out)
    assert result.exit_code == 0, result.output
    written = {p.relative_to(out).as_posix() for p in out.rglob("demux.json")}
    assert written == {"a/demux.json", "x/b/demux.json", "x/y/c/demux.json"}
    assert (out / "x" / "y" / "c" / "low.flac").is_file()
    assert sf.info(out / "x" / "y" / "c" / "low.flac").subtype == "PCM_24"  # the input's subtype is kept


def test_quiet_prints_nothing_on_success(tmp_path):
    result = separate(write_wav(tmp_path / "mix.wav"), "-r", "tones-fft", "-o", tmp_path / "OUT", "--quiet")
    assert result.exit_code == 0
    assert result.output == ""
    assert (tmp_path / "OUT" / "mix" / "demux.json").is_file()


def test_folder_keeps_going_past_a_bad_file_and_exits_1(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "OUT"
    write_wav(folder / "a.wav")
    (folder / "b.wav").write_bytes(b"RIFF broken")
    write_wav(folder / "c.wav")
    result = separate(folder, "-r", "tones-fft", "-o", out)
    assert result.exit_code == 1
    assert "1 of 3 items failed" in result.stderr
    assert "b.wav" in result.stderr and "corrupt" in result.stderr
    assert (out / "a" / "demux.json").is_file() and (out / "c" / "demux.json").is_file()
    assert not (out / "b").exists()
    again = separate(folder, "-r", "tones-fft", "-o", out)
    assert again.exit_code == 1 and "skipped" in again.stderr


# ----------------------------------------------------------------------------- long inputs and devices


def long_input(tmp_path: Path, seconds: float = 6.0):
    """``(path, refs)``: a mono WAV of a 440 Hz tone (low band) and a 1500 Hz tone (mid band)."""
    refs = {"low": tones([(440, 0.5)], sample_rate=FS, seconds=seconds).numpy(),
            "mid": tones([(1500, 0.3)], sample_rate=FS, seconds=seconds).numpy()}
    return write_wav(tmp_path / "long.wav", (refs["low"] + refs["mid"])[None]), refs


CHUNKED = ("--segment", "1", "--overlap", "0.2", "--batch-size", "3")  # 8 chunks of 1 s, 0.8 s apart


def test_batch_size_fits_a_folders_files_of_one_length_together(tmp_path):
    folder = tmp_path / "in"
    for i, seconds in enumerate((0.5, 0.5, 0.5, 0.4)):  # the last one's length is its own
        write_wav(folder / f"f{i}.wav", tones([(440 + 50 * i, 0.5), (1500, 0.3)], sample_rate=FS,
                                               seconds=seconds).numpy()[None])
    out = tmp_path / "OUT"
    result = separate(folder, "-r", "tones-fft", "-o", out, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads((out / f"f{i}" / "demux.json").read_text()) for i in range(4)]
    assert [r["batched_with"] for r in records] == [["f1"], ["f0"], [], []]  # two a group, in input order
    assert {r["batch_size"] for r in records} == {2}
    again = separate(folder, "-r", "tones-fft", "-o", out, "--batch-size", "2")
    assert again.exit_code == 0 and again.stderr.count("skipped") == 4


def test_long_input_in_chunks_shows_no_seams_and_sums_to_the_mixture(tmp_path):
    path, refs = long_input(tmp_path)
    out = tmp_path / "OUT"
    result = separate(path, "-r", "tones-fft", "-o", out, *CHUNKED)
    assert result.exit_code == 0, result.output
    stems = read_stems(out / "long")
    np.testing.assert_allclose(sum(stems.values()), (refs["low"] + refs["mid"])[None], atol=1e-5)
    body = slice(None)  # the whole signal: no chunk is zero-padded, the last one included
    assert np.abs(stems["high"][0, body]).max() < 1e-3  # no tone there
    # seams and ends: the stem's error stays 40 dB below the tone's amplitude everywhere
    error = np.abs(stems["low"][0] - refs["low"])
    assert error.max() < 1e-2
    record = json.loads((out / "long" / "demux.json").read_text())
    assert (record["segment"], record["overlap"], record["batch_size"]) == (1.0, 0.2, 3)
    assert [stage["chunks"] for stage in record["stages"]] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    whole = separate(path, "-r", "tones-fft", "-o", tmp_path / "whole", "--segment", "0")
    assert whole.exit_code == 0, whole.output
    record = json.loads((tmp_path / "whole" / "long" / "demux.json").read_text())
    assert record["segment"] is None and len(record["stages"]) == 1 and record["stages"][0]["chunks"] is None
    for name, stem in read_stems(tmp_path / "whole" / "long").items():
        np.testing.assert_allclose(stems[name][:, body], stem[:, body], atol=1e-2)  # chunked and whole-file agree


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("recipe", "rate", "extra"),
    [
        ("tones-fft", FS, ["--segment", "0.5"]),  # chunked: 3 chunks in one batch
        ("ecg-wavelet", 360, []),
        ("audio-stft", 16000, ["--set", "hpss.fit.max_iter=5", "--set", "mel.fit.max_iter=5", "--set", "pitch.fit.max_iter=5"]),
    ],
)
def test_cuda_gives_the_cpu_stems(tmp_path, recipe, rate, extra):
    """Transforms, priors, model and controller all on the device: the CPU's stems, to float32 noise."""
    seconds = 10 if recipe == "ecg-wavelet" else 1  # eight db4 levels need 6 s at 360 Hz
    freqs = [(1.2, 1.0), (40, 0.3), (150, 0.1)] if recipe == "ecg-wavelet" else [(440, 0.3), (1700, 0.2), (3100, 0.1)]
    data = tones(freqs, sample_rate=rate, seconds=seconds).numpy()[None]
    path = write_wav(tmp_path / "mix.wav", data, rate=rate)
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        result = separate(path, "-r", recipe, "-o", out, "--device", device, *extra)
        assert result.exit_code == 0, result.output
        assert json.loads((out / "mix" / "demux.json").read_text())["device"] == device
        runs[device] = read_stems(out / "mix")
    assert set(runs["cuda"]) == set(runs["cpu"]) == set(load_recipe(recipe).sources())
    np.testing.assert_allclose(sum(runs["cuda"].values()), data, atol=1e-4)
    for name, stem in runs["cpu"].items():
        # the fits take the same steps; float32 reductions differ in order between devices
        np.testing.assert_allclose(runs["cuda"][name], stem, atol=1e-3)


def test_complex_iq_input_gives_complex_npy_stems(tmp_path):
    from demux.synth import make

    scenario = make("radar-mti", np.random.default_rng(0))
    path = tmp_path / "slow_time.npy"
    np.save(path, scenario.mixture)
    result = separate(path, "-r", "radar-doppler", "--rate", str(scenario.sample_rate), "-o", tmp_path / "OUT")
    assert result.exit_code == 0, result.output
    stems = {name: np.load(tmp_path / "OUT" / "slow_time" / f"{name}.npy") for name in ("clutter", "targets", "noise")}
    assert all(stem.dtype == np.complex64 for stem in stems.values())
    np.testing.assert_allclose(sum(stems.values()), scenario.mixture, atol=1e-4)


def test_what_the_priors_found_is_in_demux_json_and_the_summary(tmp_path):
    from demux.synth import make

    scenario = make("radar-mti", np.random.default_rng(0))  # one target at -505.73 Hz, 10 dB per pulse
    path = tmp_path / "slow_time.npy"
    np.save(path, scenario.mixture)
    result = separate(path, "-r", "radar-doppler", "--rate", str(scenario.sample_rate), "-o", tmp_path / "OUT")
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "OUT" / "slow_time" / "demux.json").read_text())["stages"][0]["found"]
    (truth,) = [t["doppler_hz"] for t in scenario.params["targets"]]
    (line,) = found["targets"]["lines_hz"][0]
    assert abs(line - truth) < scenario.sample_rate / scenario.mixture.shape[-1]  # within a Doppler bin (0.004 Hz off)
    assert "slow_time: split.targets lines_hz=[" in result.stderr


def test_version_is_printed():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"demux {demux.__version__}"


@pytest.mark.parametrize(("fmt", "rate", "overrides"), [
    ("wav", FS, ()),  # read in blocks through soundfile
    ("npy", 11025, ("--set", "sample_rates=[8000]", "--set", "resample_to=8000")),  # memory-mapped, resampled per chunk
])
def test_file_longer_than_segment_is_streamed_to_the_in_memory_chunked_stems(tmp_path, fmt, rate, overrides):
    one = tones([(440, 0.3), (1700, 0.2), (3100, 0.1)], sample_rate=rate, seconds=3.0).numpy()
    noise = 0.01 * np.random.default_rng(0).standard_normal((2, one.size))
    data = (np.stack([one, 0.8 * one]) + noise).astype(np.float32)
    path = tmp_path / f"long.{fmt}"
    if fmt == "wav":
        write_wav(path, data, rate=rate)
    else:
        np.save(path, data)
    out = tmp_path / "OUT"
    rate_option = ("--rate", str(rate)) if fmt == "npy" else ()
    result = separate(path, "-r", "tones-fft", "-o", out, *rate_option, *overrides, "--segment", "0.7",
                      "--overlap", "0.25", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    recipe = load_recipe("tones-fft", [o for o in overrides if o != "--set"])
    expected = demux.separate(data, rate, recipe, segment=0.7, overlap=0.25, batch_size=2).stems
    stems = read_stems(out / "long", fmt)
    assert sorted(stems) == sorted(expected)
    for name, stem in stems.items():
        np.testing.assert_allclose(stem, expected[name].numpy(), atol=1e-5, rtol=0)
    record = json.loads((out / "long" / "demux.json").read_text())
    assert record["samples"] == data.shape[1] and record["channels"] == 2
    chunks = [stage["chunks"] for stage in record["stages"]]
    assert [c for batch in chunks for c in batch] == list(range(sum(map(len, chunks)))) and max(map(len, chunks)) == 2
    with np.load(out / "long" / "masks.npz") as masks:  # the first chunk's, as documented
        assert masks["masks"].shape[0] == 3 and masks["masks"].shape[1] == len(masks["freqs_hz"])
