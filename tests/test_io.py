"""Tests for demux.io: round trips per format, real recordings, resampling,
atomic writes, path handling and every bad input a user can hand us."""

from __future__ import annotations

import json
import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import wfdb

from demux import io
from demux.errors import InputError, OutputExistsError, ParameterError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MITDB_100 = DATA / "ecg" / "100"
ADSB = DATA / "rf" / "dump1090_modes1_1090MHz_2Msps_u8_IQ.npy"


def _needs(path: Path) -> Path:
    if not (path.exists() or path.with_name(path.name + ".hea").exists()):
        pytest.skip(f"{path} not present")
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ------------------------------------------------------------------ round trips


def test_wav_pcm16_keeps_subtype_and_values(tmp_path):
    rng = _rng()
    ints = rng.integers(-32768, 32768, size=(4000, 2), dtype=np.int16)
    source = tmp_path / "in.wav"
    sf.write(source, ints, 8000, subtype="PCM_16")

    signal = io.read(source)
    assert signal.data.shape == (2, 4000) and signal.data.dtype == np.float32
    assert signal.sample_rate == 8000 and signal.subtype == "PCM_16" and signal.path == source
    # (T, C) on disk becomes (C, T): channel 1 is the file's second column.
    np.testing.assert_array_equal(signal.data[1], ints[:, 1] / 32768)

    out = io.write(tmp_path / "out.wav", signal.data, signal.sample_rate, subtype=signal.subtype)
    assert sf.info(out).subtype == "PCM_16"
    again = io.read(out)
    assert np.abs(again.data - signal.data).max() <= 1 / 32768
    np.testing.assert_array_equal(sf.read(out, dtype="int16")[0], ints)


def test_wav_default_float_is_exact(tmp_path):
    data = _rng().standard_normal((3, 1000)).astype(np.float32) * 2  # beyond full scale on purpose
    path = io.write(tmp_path / "f.wav", data, 22050)
    assert sf.info(path).subtype == "FLOAT"
    np.testing.assert_array_equal(io.read(path).data, data)


def test_flac_default_pcm24(tmp_path):
    data = (_rng().uniform(-0.9, 0.9, (2, 3000))).astype(np.float32)
    path = io.write(tmp_path / "x.flac", data, 44100)
    signal = io.read(path)
    assert signal.subtype == "PCM_24" and signal.sample_rate == 44100
    assert np.abs(signal.data - data).max() <= 2.0**-23


def test_ogg_reads_as_channels_by_time(tmp_path):
    t = np.arange(16000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "a.ogg", tone, 16000, format="OGG", subtype="VORBIS")
    signal = io.read(tmp_path / "a.ogg")
    assert signal.data.shape[0] == 1 and signal.subtype == "VORBIS"
    n = min(signal.data.shape[1], tone.size)
    assert np.corrcoef(signal.data[0, :n], tone[:n])[0, 1] > 0.99  # lossy codec


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.int16])
def test_npy_round_trip(tmp_path, dtype):
    rng = _rng()
    data = (rng.standard_normal((2, 500)) * 100).astype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        data = data + 1j * rng.standard_normal((2, 500)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    signal = io.read(tmp_path / "x.npy", rate=250)
    expected = data.astype(np.complex64 if np.iscomplexobj(data) else np.float32)
    assert signal.data.dtype == expected.dtype and signal.sample_rate == 250 and signal.subtype is None
    np.testing.assert_array_equal(signal.data, expected)

    out = io.write(tmp_path / "y.npy", signal.data, 250)
    np.testing.assert_array_equal(np.load(out), expected)


def test_npy_one_dimensional_is_one_channel(tmp_path):
    np.save(tmp_path / "m.npy", np.arange(10, dtype=np.float32))
    data = io.read(tmp_path / "m.npy", rate=1.0).data
    assert data.shape == (1, 10)
    np.testing.assert_array_equal(data[0], np.arange(10))


def test_wfdb_format16_round_trip(tmp_path):
    signal = _rng().standard_normal((1500, 2))
    wfdb.wrsamp(
        "rec", fs=250, units=["mV", "mV"], sig_name=["I", "II"], p_signal=signal,
        fmt=["16", "16"], adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(tmp_path),
    )
    reference = wfdb.rdrecord(str(tmp_path / "rec")).p_signal.T
    for name in ("rec.hea", "rec", "rec.dat"):  # header, record name, or its signal file
        got = io.read(tmp_path / name)
        assert got.sample_rate == 250 and got.data.shape == (2, 1500) and got.path == tmp_path / "rec.hea"
        np.testing.assert_allclose(got.data, reference, rtol=1e-6)
    # Physical units: the 200 adu/mV quantisation is the only loss.
    assert np.abs(got.data - signal.T).max() <= 0.5 / 200 + 1e-6


def test_mitdb_100_format212_matches_wfdb():
    record = _needs(MITDB_100)
    got = io.read(record)
    reference = wfdb.rdrecord(str(record))
    assert reference.fmt == ["212", "212"]
    assert got.sample_rate == 360 and got.data.shape == (2, 650000)
    np.testing.assert_allclose(got.data, reference.p_signal.T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ext", [".cf32", ".cfile"])
def test_complex_baseband_round_trip(tmp_path, ext):
    rng = _rng()
    iq = (rng.standard_normal(777) + 1j * rng.standard_normal(777)).astype(np.complex64)
    iq.tofile(tmp_path / f"cap{ext}")
    signal = io.read(tmp_path / f"cap{ext}", rate=2.4e6)
    assert signal.data.shape == (1, 777) and signal.data.dtype == np.complex64
    assert signal.sample_rate == 2.4e6
    np.testing.assert_array_equal(signal.data[0], iq)


def _sigmf(tmp_path: Path, name: str, raw: np.ndarray, meta_global: dict) -> Path:
    raw.tofile(tmp_path / f"{name}.sigmf-data")
    meta = tmp_path / f"{name}.sigmf-meta"
    meta.write_text(json.dumps({"global": meta_global, "captures": [{"core:sample_start": 0}], "annotations": []}))
    return meta


def test_sigmf_datatypes(tmp_path):
    rng = _rng()
    i16 = rng.integers(-32768, 32768, size=400, dtype=np.int16)
    i8 = rng.integers(-128, 128, size=400, dtype=np.int8)
    u8 = rng.integers(0, 256, size=400, dtype=np.uint8)
    f32 = rng.standard_normal(400).astype("<f4")
    cases = {
        "cf32_le": (f32, f32[0::2] + 1j * f32[1::2]),
        "ci16_le": (i16, (i16[0::2] + 1j * i16[1::2]) / 32768),
        "ci8": (i8, (i8[0::2] + 1j * i8[1::2]) / 128),
        "cu8": (u8, ((u8[0::2] - 127.5) + 1j * (u8[1::2] - 127.5)) / 127.5),
    }
    for datatype, (raw, expected) in cases.items():
        meta = _sigmf(tmp_path, datatype, raw, {"core:datatype": datatype, "core:sample_rate": 1e6})
        signal = io.read(meta)
        assert signal.sample_rate == 1e6 and signal.data.dtype == np.complex64, datatype
        np.testing.assert_allclose(signal.data[0], expected, rtol=1e-6, atol=1e-7, err_msg=datatype)
        # The data file names the same recording.
        np.testing.assert_array_equal(io.read(meta.with_suffix(".sigmf-data")).data, signal.data)


def test_sigmf_multichannel_interleaves_per_sample(tmp_path):
    iq = np.arange(12, dtype=np.float32)  # samples (0+1j, 2+3j, ...) alternate channels
    meta = _sigmf(tmp_path, "two", iq, {"core:datatype": "cf32_le", "core:sample_rate": 8, "core:num_channels": 2})
    data = io.read(meta).data
    np.testing.assert_array_equal(data, [[0 + 1j, 4 + 5j, 8 + 9j], [2 + 3j, 6 + 7j, 10 + 11j]])


def test_real_adsb_capture_is_complex_iq(tmp_path):
    raw = np.load(_needs(ADSB))
    signal = io.read(ADSB, rate=2e6)
    assert signal.data.shape == (1, raw.shape[0]) and signal.data.dtype == np.complex64
    expected = ((raw[:, 0] - 127.5) + 1j * (raw[:, 1] - 127.5)) / 127.5
    np.testing.assert_allclose(signal.data[0], expected, rtol=1e-6)
    # The same bytes as a SigMF cu8 recording read identically.
    meta = _sigmf(tmp_path, "adsb", raw.reshape(-1), {"core:datatype": "cu8", "core:sample_rate": 2e6})
    np.testing.assert_array_equal(io.read(meta).data, signal.data)


# ----------------------------------------------------------------- bad inputs


def _wav(path: Path, data: np.ndarray, subtype: str = "FLOAT") -> Path:
    sf.write(path, data, 8000, subtype=subtype)
    return path


def _wfdb_record(folder: Path) -> Path:
    wfdb.wrsamp(
        "rec", fs=360, units=["mV"], sig_name=["MLII"], p_signal=np.zeros((100, 1)) + 0.5,
        fmt=["16"], adc_gain=[200.0], baseline=[0], write_dir=str(folder),
    )
    return folder / "rec.hea"


def _missing(tmp):
    return tmp / "nope.wav", {}, tmp / "nope.wav", "file not found"


def _folder(tmp):
    (tmp / "dir.wav").mkdir()
    return tmp / "dir.wav", {}, tmp / "dir.wav", "is a folder, expected a file"


def _folder_no_extension(tmp):
    (tmp / "dir").mkdir()
    return tmp / "dir", {}, tmp / "dir", "is a folder, expected a file"


def _empty(ext, rate=None):
    def make(tmp):
        (tmp / f"e{ext}").touch()
        return tmp / f"e{ext}", {"rate": rate}, tmp / f"e{ext}", re.escape("empty file (0 bytes)")

    return make


def _zero_length_wav(tmp):
    path = _wav(tmp / "z.wav", np.zeros((0, 1)), "PCM_16")
    return path, {}, path, "zero-length signal"


def _zero_length_npy(tmp):
    np.save(tmp / "z.npy", np.zeros((2, 0), dtype=np.float32))
    return tmp / "z.npy", {"rate": 10}, tmp / "z.npy", "zero-length signal"


def _corrupt_wav(tmp):
    (tmp / "c.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt ")
    return tmp / "c.wav", {}, tmp / "c.wav", "unreadable or corrupt audio file"


def _corrupt_flac(tmp):
    (tmp / "c.flac").write_bytes(b"not a flac stream at all" * 10)
    return tmp / "c.flac", {}, tmp / "c.flac", "unreadable or corrupt audio file"


def _truncated_npy_header(tmp):
    np.save(tmp / "t.npy", np.zeros(10, dtype=np.float32))
    (tmp / "t.npy").write_bytes((tmp / "t.npy").read_bytes()[:20])
    return tmp / "t.npy", {"rate": 1}, tmp / "t.npy", r"unreadable or corrupt \.npy file"


def _truncated_npy_data(tmp):
    np.save(tmp / "t.npy", np.zeros(10, dtype=np.float32))
    (tmp / "t.npy").write_bytes((tmp / "t.npy").read_bytes()[:-4])
    return tmp / "t.npy", {"rate": 1}, tmp / "t.npy", r"unreadable or corrupt \.npy file"


def _npz_named_npy(tmp):
    np.savez(tmp / "a.npz", x=np.zeros(3))
    (tmp / "a.npz").rename(tmp / "a.npy")
    return tmp / "a.npy", {"rate": 1}, tmp / "a.npy", r"\.npz archive"


def _text_npy(tmp):
    np.save(tmp / "s.npy", np.array(["a", "b"]))
    return tmp / "s.npy", {"rate": 1}, tmp / "s.npy", "unsupported array dtype <U1"


def _transposed_npy(tmp):
    np.save(tmp / "tc.npy", np.zeros((100, 2), dtype=np.float32))
    problem = re.escape("more channels than samples: save it as (channels, time)")
    return tmp / "tc.npy", {"rate": 1}, tmp / "tc.npy", problem


def _unsupported(tmp):
    (tmp / "clip.mp4").write_bytes(b"\x00" * 16)
    return tmp / "clip.mp4", {}, tmp / "clip.mp4", r"unsupported file type '\.mp4' \(supported: .*\.npy.*\.wav\)"


def _nan_npy(tmp):
    data = np.ones((2, 10), dtype=np.float32)
    data[1, 5] = np.nan
    data[1, 7] = np.inf
    data[1, 9] = -np.inf
    np.save(tmp / "n.npy", data)
    problem = re.escape("contains 3 NaN/Inf samples (first at channel 1, sample 5)")
    return tmp / "n.npy", {"rate": 1}, tmp / "n.npy", problem


def _nan_wav(tmp):
    data = np.zeros(50, dtype=np.float32)
    data[12] = np.nan
    path = _wav(tmp / "n.wav", data)
    return path, {}, path, re.escape("contains 1 NaN/Inf samples (first at channel 0, sample 12)")


def _no_rate_npy(tmp):
    np.save(tmp / "r.npy", np.zeros(10, dtype=np.float32))
    return tmp / "r.npy", {}, tmp / "r.npy", "sample rate unknown: pass --rate"


def _no_rate_cf32(tmp):
    np.zeros(4, dtype=np.complex64).tofile(tmp / "r.cf32")
    return tmp / "r.cf32", {}, tmp / "r.cf32", "sample rate unknown: pass --rate"


def _rate_mismatch(tmp):
    path = _wav(tmp / "m.wav", np.zeros(10))
    return path, {"rate": 16000}, path, "the file says 8000 Hz but --rate 16000 was given"


def _truncated_cf32(tmp):
    (tmp / "t.cf32").write_bytes(np.zeros(3, dtype=np.complex64).tobytes()[:-3])
    return tmp / "t.cf32", {"rate": 1e6}, tmp / "t.cf32", r"not a whole number .*\(truncated\?\)"


def _permission_denied(tmp, monkeypatch):
    path = _wav(tmp / "p.wav", np.zeros(10))
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the probe see what a user would

        def denied(name, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(name))

        monkeypatch.setattr(io, "open", denied, raising=False)
    return path, {}, path, "permission denied"


def _wfdb_missing_dat(tmp):
    header = _wfdb_record(tmp)
    (tmp / "rec.dat").unlink()
    return header, {}, header, "WFDB record is missing its signal file rec.dat"


def _wfdb_bad_header(tmp):
    (tmp / "bad.hea").write_text("this is not a header\n")
    return tmp / "bad.hea", {}, tmp / "bad.hea", "unreadable WFDB header"


def _wfdb_header_without_signals(tmp):
    (tmp / "bad.hea").write_text("bad 2 250\n")
    return tmp / "bad.hea", {}, tmp / "bad.hea", re.escape("unreadable WFDB header (declares 2 signals, describes 0)")


def _wfdb_truncated_dat(tmp):
    header = _wfdb_record(tmp)
    (tmp / "rec.dat").write_bytes((tmp / "rec.dat").read_bytes()[:51])
    return header, {}, header, "unreadable or truncated WFDB signal file"


def _dat_without_header(tmp):
    (tmp / "lone.dat").write_bytes(b"\x00" * 8)
    return tmp / "lone.dat", {}, tmp / "lone.dat", "is read through its .hea file, and lone.hea is not beside it"


def _sigmf_case(meta_global, problem, *, raw=np.zeros(8, dtype="<f4"), text=None):
    def make(tmp):
        meta = _sigmf(tmp, "rec", raw, meta_global)
        if text is not None:
            meta.write_text(text)
        return meta, {}, meta, problem

    return make


def _sigmf_missing_data(tmp):
    meta = _sigmf(tmp, "rec", np.zeros(8, dtype="<f4"), {"core:datatype": "cf32_le", "core:sample_rate": 1e6})
    data = tmp / "rec.sigmf-data"
    data.unlink()
    return meta, {}, data, "file not found"


def _sigmf_truncated_data(tmp):
    raw = np.zeros(7, dtype="<i2")  # an odd number of components
    meta = _sigmf(tmp, "rec", raw, {"core:datatype": "ci16_le", "core:sample_rate": 1e6})
    return meta, {}, tmp / "rec.sigmf-data", "not a whole number of 1-channel complex samples"


BAD_INPUTS = {
    "missing": _missing,
    "folder": _folder,
    "folder-no-extension": _folder_no_extension,
    "empty-wav": _empty(".wav"),
    "empty-npy": _empty(".npy", rate=1),
    "empty-cf32": _empty(".cf32", rate=1),
    "empty-hea": _empty(".hea"),
    "zero-length-wav": _zero_length_wav,
    "zero-length-npy": _zero_length_npy,
    "corrupt-wav-header": _corrupt_wav,
    "corrupt-flac": _corrupt_flac,
    "truncated-npy-header": _truncated_npy_header,
    "truncated-npy-data": _truncated_npy_data,
    "npz-named-npy": _npz_named_npy,
    "text-npy": _text_npy,
    "transposed-npy": _transposed_npy,
    "unsupported-extension": _unsupported,
    "nan-inf-npy": _nan_npy,
    "nan-wav": _nan_wav,
    "npy-without-rate": _no_rate_npy,
    "cf32-without-rate": _no_rate_cf32,
    "rate-mismatch": _rate_mismatch,
    "truncated-cf32": _truncated_cf32,
    "permission-denied": _permission_denied,
    "wfdb-missing-dat": _wfdb_missing_dat,
    "wfdb-bad-header": _wfdb_bad_header,
    "wfdb-header-without-signals": _wfdb_header_without_signals,
    "wfdb-truncated-dat": _wfdb_truncated_dat,
    "dat-without-header": _dat_without_header,
    "sigmf-no-rate": _sigmf_case({"core:datatype": "cf32_le"}, "SigMF metadata has no global core:sample_rate"),
    "sigmf-bad-rate": _sigmf_case(
        {"core:datatype": "cf32_le", "core:sample_rate": -5}, "core:sample_rate must be a positive number, got -5"
    ),
    "sigmf-unsupported-datatype": _sigmf_case(
        {"core:datatype": "rf64_be", "core:sample_rate": 1e6},
        re.escape("unsupported SigMF datatype 'rf64_be' (supported: cf32_le, ci16_le, ci8, cu8)"),
    ),
    "sigmf-invalid-json": _sigmf_case({}, r"unreadable SigMF metadata \(invalid JSON", text="{not json"),
    "sigmf-no-global": _sigmf_case({}, r"no 'global' object", text="[1, 2]"),
    "sigmf-missing-data": _sigmf_missing_data,
    "sigmf-truncated-data": _sigmf_truncated_data,
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_names_file_and_problem(tmp_path, monkeypatch, case):
    maker_args = (tmp_path, monkeypatch) if case is _permission_denied else (tmp_path,)
    path, kwargs, culprit, problem = case(*maker_args)
    before = _listing(tmp_path)
    try:
        with pytest.raises(InputError, match=problem) as raised:
            io.read(path, **kwargs)
    finally:
        for p in tmp_path.rglob("*"):  # let tmp_path be cleaned up after the chmod case
            p.chmod(0o755)
    message = str(raised.value)
    assert message.startswith(f"{culprit}: "), message
    assert "\n" not in message
    assert raised.value.path == culprit
    assert _listing(tmp_path) == before


def test_bad_rate_is_a_parameter_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(4, dtype=np.float32))
    for rate in (0, -1, float("nan"), float("inf"), "fast"):
        with pytest.raises(ParameterError, match="is not a positive number of Hz"):
            io.read(tmp_path / "x.npy", rate=rate)


# ------------------------------------------------------------------- resample


def test_resample_keeps_tone_frequency():
    fs_in, fs_out, f0 = 44100, 16000, 1234.0
    t = np.arange(fs_in) / fs_in
    tone = np.stack([np.sin(2 * np.pi * f0 * t), 0.5 * np.cos(2 * np.pi * f0 * t)]).astype(np.float32)
    out = io.resample(tone, fs_in, fs_out)
    assert out.shape == (2, 16000) and out.dtype == np.float32
    window = np.hanning(out.shape[1])
    spectrum = np.abs(np.fft.rfft(out * window, axis=-1))
    freqs = np.fft.rfftfreq(out.shape[1], 1 / fs_out)
    assert np.all(np.abs(freqs[spectrum.argmax(axis=-1)] - f0) <= 1.0)
    # Amplitudes survive away from the filter's edge transients.
    middle = out[:, 1000:-1000]
    np.testing.assert_allclose(np.abs(middle).max(axis=-1), [1.0, 0.5], rtol=0.01)


@pytest.mark.parametrize(
    ("from_rate", "to_rate", "ratio"),
    [(44100, 16000, Fraction(160, 441)), (2e6, 44100, Fraction(441, 20000)), (360, 500, Fraction(25, 18))],
)
def test_resample_length_ratio(from_rate, to_rate, ratio):
    assert io.resample_ratio(from_rate, to_rate) == ratio
    data = _rng().standard_normal((1, 36000)).astype(np.float32)
    out = io.resample(data, from_rate, to_rate)
    assert out.shape == (1, -(-36000 * ratio.numerator // ratio.denominator))


def test_resample_complex_and_identity():
    iq = (np.exp(2j * np.pi * 0.01 * np.arange(1000))[None]).astype(np.complex64)
    assert io.resample(iq, 2e6, 1e6).dtype == np.complex64
    same = io.resample(iq, 8000, 8000)
    np.testing.assert_array_equal(same, iq)
    assert same is not iq


def test_resample_rejects_bad_arguments():
    with pytest.raises(ParameterError, match="to_rate=0"):
        io.resample(np.zeros((1, 10)), 8000, 0)
    with pytest.raises(ParameterError, match=r"shape \(channels, time\)"):
        io.resample(np.zeros(10), 8000, 16000)


# -------------------------------------------------------------- atomic writes


def test_write_refuses_existing_file_and_leaves_it(tmp_path):
    target = tmp_path / "out.wav"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match=re.escape(f"{target}: exists (pass --overwrite")):
        io.write(target, np.zeros((1, 10)), 8000)
    assert target.read_bytes() == b"precious"
    assert _listing(tmp_path) == ["out.wav"]

    io.write(target, np.full((1, 10), 0.25), 8000, overwrite=True)
    np.testing.assert_array_equal(io.read(target).data, np.full((1, 10), 0.25, dtype=np.float32))
    assert _listing(tmp_path) == ["out.wav"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_write_interrupted_midway_leaves_nothing(tmp_path, monkeypatch, overwrite):
    target = tmp_path / "stem.wav"
    if overwrite:
        target.write_bytes(b"old stem")

    original = sf.SoundFile.write

    def half_then_fail(self, data):
        original(self, data[: len(data) // 2])  # a real half-written file under the temporary name
        raise KeyboardInterrupt

    monkeypatch.setattr(sf.SoundFile, "write", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        io.write(target, np.zeros((1, 100)), 8000, overwrite=overwrite)
    assert _listing(tmp_path) == (["stem.wav"] if overwrite else [])
    if overwrite:
        assert target.read_bytes() == b"old stem"


def test_atomic_write_temp_name_and_cleanup(tmp_path):
    target = tmp_path / "deep" / "er" / "report.json"
    with io.atomic_write(target) as temp:
        assert temp.parent == target.parent and temp.name.startswith(".") and temp.suffix == ".json"
        assert temp.exists() and not target.exists()
        temp.write_text("{}")
    assert target.read_text() == "{}"
    assert _listing(target.parent) == ["report.json"]

    with pytest.raises(ValueError, match="boom"):
        with io.atomic_write(target, overwrite=True) as temp:
            temp.write_text("partial")
            raise ValueError("boom")
    assert target.read_text() == "{}"
    assert _listing(target.parent) == ["report.json"]


def test_write_text_atomic(tmp_path):
    path = io.write_text_atomic(tmp_path / "r.md", "# résumé\n")
    assert path.read_text(encoding="utf-8") == "# résumé\n"
    with pytest.raises(OutputExistsError):
        io.write_text_atomic(path, "other")
    io.write_text_atomic(path, "other", overwrite=True)
    assert path.read_text() == "other"
    assert _listing(tmp_path) == ["r.md"]


@pytest.mark.parametrize(
    ("name", "data", "rate", "kwargs", "problem"),
    [
        ("x.mp3", np.zeros((1, 4)), 8000, {}, r"unsupported extension \(expected one of \.flac, \.npy, \.wav\)"),
        ("x.wav", np.zeros(4), 8000, {}, r"shape \(channels, time\)"),
        ("x.wav", np.zeros((1, 0)), 8000, {}, r"shape \(channels, time\) with samples"),
        ("x.wav", np.zeros((1, 4), dtype=np.complex64), 8000, {}, "complex data .* use .npy"),
        ("x.flac", np.zeros((1, 4)), 8000, {"subtype": "FLOAT"}, "subtype 'FLOAT' cannot be written as .flac"),
        ("x.wav", np.zeros((1, 4)), 8000.5, {}, "integer sample rate"),
        ("x.npy", np.array([[0.0, np.nan, np.inf]]), 8000, {}, "holds 2 NaN/Inf samples"),
        ("x.wav", np.zeros((1, 4)), -8000, {}, "sample_rate=-8000 is not a positive number"),
    ],
)
def test_write_rejects_bad_requests_without_writing(tmp_path, name, data, rate, kwargs, problem):
    with pytest.raises(ParameterError, match=problem):
        io.write(tmp_path / name, data, rate, **kwargs)
    assert _listing(tmp_path) == []


def test_write_into_a_folder_path_is_refused(tmp_path):
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(ParameterError, match="is a folder"):
        io.write(tmp_path / "d.wav", np.zeros((1, 4)), 8000, overwrite=True)


def test_write_too_many_flac_channels_is_a_parameter_error(tmp_path):
    with pytest.raises(ParameterError, match="cannot write 9 channels"):
        io.write(tmp_path / "x.flac", np.zeros((9, 16)), 8000)
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("parts", "expected"),
    [(("a", "b.wav"), "a/b.wav"), (("a/b.wav",), "a/b.wav"), (("a/../b.wav",), "b.wav"), (("./x",), "x")],
)
def test_safe_join_inside(tmp_path, parts, expected):
    assert io.safe_join(tmp_path / "out", *parts) == tmp_path / "out" / expected


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        (("..", "x.wav"), "escapes the output folder"),
        (("a/../../x.wav",), "escapes the output folder"),
        (("a", "..", ".."), "escapes the output folder"),
        (("/etc/passwd",), "is absolute"),
        (("a", "/tmp/x"), "is absolute"),
        (("",), "escapes the output folder"),
        ((".",), "escapes the output folder"),
        (("a\0b",), "NUL byte"),
    ],
)
def test_safe_join_refuses_escapes(tmp_path, parts, problem):
    with pytest.raises(ParameterError, match=problem):
        io.safe_join(tmp_path / "out", *parts)


def test_safe_join_refuses_symlink_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere")
    (out / "inner").symlink_to(out)
    with pytest.raises(ParameterError, match="escapes the output folder"):
        io.safe_join(out, "link", "x.wav")
    assert io.safe_join(out, "inner", "x.wav") == out / "x.wav"


@pytest.fixture
def tree(tmp_path):
    names = ["b/2.wav", "b/1.WAV", "a/deep/3.flac", "a/notes.txt", "top.wav", ".hidden/4.wav", "a/.5.wav", "empty/"]
    for name in names:
        path = tmp_path / name
        if name.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    return tmp_path


def test_find_inputs_folder_is_recursive_and_sorted(tree):
    got = io.find_inputs([tree], extensions={".wav", "flac"})
    assert [p.relative_to(tree).as_posix() for p in got] == ["a/deep/3.flac", "b/1.WAV", "b/2.wav", "top.wav"]


def test_find_inputs_globs_files_and_duplicates(tree):
    got = io.find_inputs(
        [str(tree / "**" / "*.wav"), tree / "a" / "notes.txt", tree / "top.wav", str(tree / "a*")],
        extensions={".wav", ".flac"},
    )
    # glob is case-sensitive on the pattern: b/1.WAV does not match *.wav;
    # "a*" matches the folder a, which is searched recursively.
    assert [p.relative_to(tree).as_posix() for p in got] == ["b/2.wav", "top.wav", "a/notes.txt", "a/deep/3.flac"]


def test_find_inputs_accepts_wfdb_record_names(tmp_path):
    header = _wfdb_record(tmp_path)
    assert io.find_inputs([tmp_path / "rec"], extensions={".hea"}) == [tmp_path / "rec"]
    assert io.find_inputs([tmp_path], extensions=io.supported_extensions()) == [header]


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda t: t / "empty", re.escape("no .flac, .wav files in this folder (searched recursively)")),
        (lambda t: t / "nothing-here", "file or folder not found"),
        (lambda t: str(t / "*.ogg"), re.escape("no .flac, .wav files match this pattern")),
    ],
)
def test_find_inputs_errors_name_the_path(tree, make, problem):
    target = make(tree)
    with pytest.raises(InputError, match=problem) as raised:
        io.find_inputs([tree / "top.wav", target], extensions={".wav", ".flac"})
    assert str(raised.value).startswith(str(target))


def test_supported_extensions_lists_readers_and_writers():
    assert set(io.supported_extensions()) >= {".wav", ".flac", ".ogg", ".npy", ".hea", ".cfile", ".cf32", ".sigmf-meta"}
    assert io.supported_extensions(write=True) == (".flac", ".npy", ".wav")


def test_supported_extensions_are_all_readable(tmp_path):
    """Every advertised extension reaches a reader (a missing file says 'not found', not 'unsupported')."""
    for ext in io.supported_extensions():
        with pytest.raises(InputError, match="file not found"):
            io.read(tmp_path / f"x{ext}")


# ------------------------------------------------------------ streaming: blocks in, blocks out


@pytest.mark.parametrize(("name", "is_complex"), [("stem.wav", False), ("stem.flac", False), ("stem.npy", True)])
def test_write_stream_appears_only_once_complete(tmp_path, name, is_complex):
    target = tmp_path / name
    data = (_rng().uniform(-0.5, 0.5, (2, 3000)) * (1 + 1j if is_complex else 1)).astype(
        np.complex64 if is_complex else np.float32)
    with io.write_stream(target, 8000, channels=2, length=3000, is_complex=is_complex) as writer:
        for start in range(0, 3000, 1100):
            writer.write(data[:, start : start + 1100])
            listing = _listing(tmp_path)
            assert not target.exists() and len(listing) == 1 and io.is_temporary(listing[0])
    assert _listing(tmp_path) == [name]
    tolerance = 2**-23 if name.endswith(".flac") else 0  # FLAC: 24-bit PCM
    np.testing.assert_allclose(io.read(target, rate=8000).data, data, atol=tolerance, rtol=0)


@pytest.mark.parametrize("failure", ["raises", "short", "nan", "too-long"])
def test_write_stream_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, failure):
    target = tmp_path / "stem.wav"
    target.write_bytes(b"old stem")
    expected = {"raises": (KeyError, "boom"), "short": (ParameterError, "1000 of 2000 samples were written"),
                "nan": (ParameterError, "data holds 10 NaN/Inf samples"), "too-long": (ParameterError, "more than 2000")}
    block = np.zeros((1, 1000), dtype=np.float32)
    kind, message = expected[failure]
    with pytest.raises(kind, match=message), io.write_stream(target, 8000, channels=1, length=2000,
                                                             overwrite=True) as writer:
        writer.write(block)
        if failure == "raises":
            raise KeyError("boom")
        if failure == "nan":
            writer.write(np.full((1, 10), np.nan))
        if failure == "too-long":
            writer.write(np.zeros((1, 1001)))
    assert _listing(tmp_path) == ["stem.wav"] and target.read_bytes() == b"old stem"


def test_killed_stream_leaves_no_partial_file_only_a_temporary(tmp_path):
    import signal
    import subprocess
    import sys

    target = tmp_path / "stem.wav"
    code = (
        "import sys, time, numpy as np\n"
        "from demux import io\n"
        f"with io.write_stream({str(target)!r}, 8000, channels=1, length=10**6) as w:\n"
        "    w.write(np.zeros((1, 4000), dtype=np.float32))\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # no cleanup can run on SIGKILL: what is left is hidden, named as a temporary (a batch's
    # resume removes it), and the stem's own name never held a partial file
    listing = _listing(tmp_path)
    assert not target.exists() and len(listing) == 1 and io.is_temporary(listing[0])


def _block_formats(tmp_path: Path) -> list[Path]:
    rng = _rng()
    stereo = rng.uniform(-0.5, 0.5, (2, 5000)).astype(np.float32)
    sf.write(tmp_path / "a.wav", stereo.T, 8000, subtype="PCM_16")
    np.save(tmp_path / "b.npy", stereo.astype(np.float64))
    np.save(tmp_path / "c.npy", stereo[0])
    np.save(tmp_path / "d.npy", (stereo[0] + 1j * stereo[1]).astype(np.complex128))
    np.save(tmp_path / "e.npy", rng.integers(0, 256, 10000, dtype=np.uint8))
    np.save(tmp_path / "f.npy", rng.integers(0, 256, (5000, 2), dtype=np.uint8))
    return sorted(tmp_path.iterdir())


def test_open_signal_reads_in_blocks_what_read_reads_whole(tmp_path):
    for path in _block_formats(tmp_path):
        whole = io.read(path, rate=8000)
        opened = io.open_signal(path, rate=8000)
        assert (opened.channels, opened.length, opened.is_complex) == (*whole.data.shape, np.iscomplexobj(whole.data))
        assert (opened.sample_rate, opened.subtype) == (whole.sample_rate, whole.subtype)
        blocks = [opened.read(a, min(a + 1234, opened.length)) for a in range(0, opened.length, 1234)]
        joined = np.concatenate(blocks, axis=1)
        assert joined.dtype == whole.data.dtype, path.name
        np.testing.assert_array_equal(joined, whole.data)
        assert joined.flags.writeable  # a copy, not a view of the read-only map
        assert opened.scan()


def test_open_signal_finds_bad_samples_where_they_are(tmp_path):
    data = np.zeros((1, 3_000_000), dtype=np.float32)
    np.save(tmp_path / "silent.npy", data)
    assert not io.open_signal(tmp_path / "silent.npy", rate=8000).scan()
    data[0, 2_500_000] = np.inf
    np.save(tmp_path / "bad.npy", data)
    opened = io.open_signal(tmp_path / "bad.npy", rate=8000)
    opened.read(0, 2_000_000)  # blocks before the bad sample read fine
    with pytest.raises(InputError, match="1 NaN/Inf samples \\(first at channel 0, sample 2500000\\)"):
        opened.scan()
    np.save(tmp_path / "empty.npy", np.zeros(0, dtype=np.float32))
    with pytest.raises(InputError, match="holds no samples"):
        io.open_signal(tmp_path / "empty.npy", rate=8000).scan()


@pytest.mark.parametrize(("from_rate", "to_rate"), [(44_100, 16_000), (16_000, 44_100), (8000, 12_000), (2e6, 44_100)])
def test_resampling_a_span_or_a_stream_gives_the_whole_signal_s_samples(from_rate, to_rate):
    data = _rng().standard_normal((2, 30_001 if from_rate < 1e6 else 200_001)).astype(np.float32)
    whole = io.resample(data, from_rate, to_rate)
    n = whole.shape[1]
    for start, stop in [(0, 100), (500, 3000), (n - 777, n), (1234, 1235)]:
        span = io.resample_span(lambda a, b: data[:, a:b], data.shape[1], from_rate, to_rate, start, stop)
        np.testing.assert_allclose(span, whole[:, start:stop], atol=1e-6, rtol=0)
    T = data.shape[1]
    sizes = iter([T // 9, 1, T // 4, T // 5] * 10)  # uneven blocks, one of a single sample
    for length_out in (n - 5, n + 7):  # cut or zero-padded at the end
        stream = io.StreamResampler(from_rate, to_rate, length_in=data.shape[1], length_out=length_out)
        blocks, start = [], 0
        while start < data.shape[1]:
            size = next(sizes)
            blocks.append(stream.push(data[:, start : start + size]))
            start += size
        joined = np.concatenate(blocks, axis=1)
        assert joined.shape == (2, length_out)
        np.testing.assert_allclose(joined[:, : min(n, length_out)], whole[:, :length_out], atol=1e-6, rtol=0)
        assert not joined[:, n:].any()
