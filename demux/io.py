"""Read and write signals as ``(channels, time)`` arrays with their sample rate.

One reader per file type, chosen by extension (:func:`supported_extensions`):

- ``.wav``, ``.flac``, ``.ogg``: audio through soundfile; float32 at full scale 1.0,
  and the file's subtype (``"PCM_16"``...) is kept so stems can be written alike.
- ``.npy``: ``(time,)`` or ``(channels, time)`` real or complex arrays; ``uint8``
  arrays are raw RTL-SDR I/Q bytes (``(time, 2)`` or interleaved ``(2*time,)``).
  The sample rate must be passed (``--rate``).
- ``.hea`` (or the record name without extension, or its ``.dat``): WFDB records
  through the ``wfdb`` package, in physical units, at the header's rate.
- ``.cfile``, ``.cf32``: interleaved little-endian complex64 baseband I/Q (GNU Radio's
  file sink); the sample rate must be passed.
- ``.sigmf-meta`` (or its ``.sigmf-data``): SigMF recordings with datatype
  ``cf32_le``, ``ci16_le``, ``ci8`` or ``cu8`` at ``global.core:sample_rate``.

Integer I/Q is scaled to full scale 1.0 (``cu8``: ``(x - 127.5) / 127.5``, the
RTL-SDR offset-binary convention). Every problem a user can cause raises
:class:`~demux.errors.InputError` with a one-line message that starts with the file.

Writing goes through :func:`atomic_write`: a temporary name in the target folder,
then :func:`os.replace`, so an interrupted run never leaves a half-written file and
never touches an existing one it was not allowed to replace.

Long recordings need not fit in memory: :func:`open_signal` reads audio files and
``.npy`` arrays a block at a time, :func:`write_stream` appends blocks to a stem's
temporary file (renamed once complete), and :func:`resample_span` /
:class:`StreamResampler` resample a block, or a stream of blocks, to the very samples
:func:`resample` gives the whole signal.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from demux.errors import InputError, OutputExistsError, ParameterError


@dataclass
class Signal:
    """A signal read from a file.

    Attributes:
        data: ``(channels, time)`` samples, float32 (complex64 for I/Q), in the
            file's units (full scale 1.0 for audio and integer I/Q, physical units
            such as mV for WFDB).
        sample_rate: samples per second per channel, Hz.
        subtype: soundfile subtype of the source (``"PCM_16"``, ``"FLOAT"``...), to
            write outputs alike; ``None`` for formats without one.
        path: the file that was read (the ``.hea`` of a WFDB record, the
            ``.sigmf-meta`` of a SigMF recording).
    """

    data: np.ndarray
    sample_rate: float
    subtype: str | None = None
    path: Path | None = None


@dataclass(frozen=True)
class SignalFile:
    """A signal file opened for reading in blocks (:func:`open_signal`).

    Attributes:
        path: the file (as :attr:`Signal.path`).
        sample_rate: Hz.
        channels: ``C``.
        length: samples per channel, ``T``.
        subtype: as :attr:`Signal.subtype`.
        is_complex: blocks are complex64 (I/Q), else float32.
    """

    path: Path
    sample_rate: float
    channels: int
    length: int
    subtype: str | None
    is_complex: bool
    block: Callable[[int, int], np.ndarray] = field(repr=False)  # unchecked ``(C, stop - start)`` samples

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples ``start..stop`` (default: to the end) as ``(C, n)`` float32 or complex64.

        Raises:
            InputError: the block holds NaN/Inf samples (the message gives the first one's
                index in the file), or the file ends early.
        """
        stop = self.length if stop is None else stop
        if not 0 <= start <= stop <= self.length:
            raise ParameterError(f"block {start}..{stop} is not inside 0..{self.length}")
        data = self.block(start, stop)
        _check_finite(self.path, data, offset=start)
        return data

    def scan(self, *, block: int = 1 << 20) -> bool:
        """Read the file once, a block at a time: whether any sample is nonzero.

        Raises:
            InputError: as :meth:`read`, or the file holds no samples.
        """
        if self.length == 0 or self.channels == 0:
            raise InputError(self.path, f"holds no samples (zero-length signal, shape {(self.channels, self.length)})")
        return any(np.any(self.read(a, min(a + block, self.length))) for a in range(0, self.length, block))

    def load(self) -> Signal:
        """The whole signal in memory (unchecked; :func:`read` checks it)."""
        return Signal(self.block(0, self.length), self.sample_rate, self.subtype, self.path)


@dataclass(frozen=True)
class _IQFormat:
    """How one I/Q component is stored: ``value = (stored - offset) / scale``."""

    dtype: str
    offset: float
    scale: float


# Keys are SigMF datatype names; ".npy" uint8 arrays and .cfile/.cf32 reuse them.
_IQ_FORMATS = {
    "cf32_le": _IQFormat("<f4", 0.0, 1.0),
    "ci16_le": _IQFormat("<i2", 0.0, 32768.0),
    "ci8": _IQFormat("i1", 0.0, 128.0),
    "cu8": _IQFormat("u1", 127.5, 127.5),
}

_SOUNDFILE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}
_DEFAULT_SUBTYPES = {".wav": "FLOAT", ".flac": "PCM_24"}
_WRITE_EXTENSIONS = (".flac", ".npy", ".wav")
# A companion file is read through its main file (and is not listed on its own,
# so a folder scan finds each record once).
_COMPANIONS = {".dat": ".hea", ".sigmf-data": ".sigmf-meta"}


# ----------------------------------------------------------------- validation


def _check_rate(rate: float, name: str) -> float:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ParameterError(f"{name}={rate!r} is not a positive number of Hz")
    return value


def _require_rate(path: Path, rate: float | None) -> float:
    if rate is None:
        raise InputError(path, "sample rate unknown: pass --rate")
    return rate


def _declared_rate(path: Path, declared: float, rate: float | None) -> float:
    """The file's own rate; a different ``rate`` is refused, not silently ignored."""
    if rate is not None and not math.isclose(rate, declared, rel_tol=1e-9):
        raise InputError(
            path,
            f"the file says {declared:g} Hz but --rate {rate:g} was given "
            "(--rate is for raw formats; resample instead)",
        )
    return float(declared)


def _probe(path: Path) -> None:
    """Raise InputError unless ``path`` is a readable, non-empty file."""
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise InputError(path, "permission denied") from None
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)")


def _check_samples(path: Path, data: np.ndarray) -> None:
    if data.size == 0:
        raise InputError(path, f"holds no samples (zero-length signal, shape {data.shape})")
    _check_finite(path, data)


def _check_finite(path: Path, data: np.ndarray, *, offset: int = 0) -> None:
    bad = ~np.isfinite(data)
    if bad.any():
        channel, sample = np.unravel_index(np.argmax(bad), bad.shape)
        raise InputError(
            path,
            f"contains {int(bad.sum())} NaN/Inf samples (first at channel {channel}, sample {offset + sample})",
        )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# -------------------------------------------------------------------- readers


def _decode_iq(path: Path, raw: np.ndarray, fmt: _IQFormat, *, channels: int = 1) -> np.ndarray:
    """Interleaved components ``(2 * time * channels,)`` -> ``(channels, time)`` complex64."""
    per_sample = 2 * channels
    if raw.size % per_sample:
        raise InputError(
            path,
            f"{raw.size} I/Q components is not a whole number of {channels}-channel "
            "complex samples (truncated?)",
        )
    values = (raw.astype(np.float32) - np.float32(fmt.offset)) / np.float32(fmt.scale)
    iq = values[0::2] + 1j * values[1::2]
    # SigMF interleaves channels within each sample: (time, channels).
    return iq.astype(np.complex64).reshape(-1, channels).T


def _read_raw_iq(path: Path, fmt: _IQFormat, *, channels: int = 1) -> np.ndarray:
    itemsize = np.dtype(fmt.dtype).itemsize
    size = path.stat().st_size
    if size % itemsize:
        raise InputError(path, f"{size} bytes is not a whole number of {itemsize}-byte components (truncated?)")
    return _decode_iq(path, np.fromfile(path, dtype=fmt.dtype), fmt, channels=channels)


def _check_wav_size(path: Path) -> None:
    """Refuse a WAV whose ``data`` chunk is shorter than its header declares.

    libsndfile reads a truncated WAV silently (whatever frames are there), which
    would separate half a recording without a word.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not plain RIFF/WAVE (RF64, corrupt): libsndfile reports it
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                available = path.stat().st_size - f.tell()
                if size not in (0, 0xFFFFFFFF) and available < size:  # 0 / -1: streamed, size unknown
                    raise InputError(path, f"truncated WAV: the header declares {size} bytes of samples, {available} are there")
                return
            f.seek(size + (size & 1), os.SEEK_CUR)


def _open_soundfile(path: Path, rate: float | None) -> SignalFile:
    import soundfile as sf

    if path.suffix.lower() == ".wav":
        _check_wav_size(path)
    try:
        with sf.SoundFile(path) as audio:
            info = (audio.samplerate, audio.channels, audio.frames, audio.subtype)
    except sf.SoundFileError as error:
        raise InputError(path, f"unreadable or corrupt audio file ({_soundfile_reason(error)})") from None
    samplerate, channels, frames, subtype = info

    def block(start: int, stop: int) -> np.ndarray:
        try:
            with sf.SoundFile(path) as audio:
                audio.seek(start)
                data = audio.read(stop - start, dtype="float32", always_2d=True)
        except sf.SoundFileError as error:
            raise InputError(path, f"unreadable or corrupt audio file ({_soundfile_reason(error)})") from None
        if data.shape[0] != stop - start:
            raise InputError(path, f"ends after {start + data.shape[0]} samples, its header says {frames} (truncated?)")
        return np.ascontiguousarray(data.T)

    return SignalFile(path, _declared_rate(path, samplerate, rate), channels, frames, subtype, False, block)


def _soundfile_reason(error) -> str:
    return getattr(error, "error_string", None) or _one_line(error)


def _read_soundfile(path: Path, rate: float | None) -> Signal:
    return _open_soundfile(path, rate).load()


def _open_npy(path: Path, rate: float | None) -> SignalFile:
    """A ``.npy`` file memory-mapped: blocks are read (and converted) one at a time.

    Each block maps the file afresh and lets go of the map once copied: pages read
    through a map count as the process's resident memory for as long as it lives.
    """
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK\x03\x04"):
        raise InputError(path, "is a .npz archive, not a single .npy array")
    if magic != b"\x93NUMPY":
        raise InputError(path, "not a .npy file (no NumPy header): is it another format with a .npy name?")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(path, f"unreadable or corrupt .npy file ({_one_line(error)})") from None
    if array.dtype == np.uint8:
        if not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 2)):
            raise InputError(
                path, f"uint8 data is read as I/Q bytes: expected shape (time, 2) or (2*time,), got {array.shape}"
            )
        if array.size % 2:
            _decode_iq(path, array.reshape(-1)[:1], _IQ_FORMATS["cu8"])  # raises: not whole complex samples
        channels, length, is_complex = 1, array.size // 2, True

        def block(start: int, stop: int) -> np.ndarray:
            raw = np.load(path, mmap_mode="r").reshape(-1)[2 * start : 2 * stop]
            return _decode_iq(path, np.array(raw), _IQ_FORMATS["cu8"])

    elif np.issubdtype(array.dtype, np.number) and array.ndim in (1, 2):
        is_complex = np.issubdtype(array.dtype, np.complexfloating)
        dtype = np.complex64 if is_complex else np.float32
        channels, length = (1, *array.shape) if array.ndim == 1 else array.shape

        def block(start: int, stop: int) -> np.ndarray:
            rows = np.load(path, mmap_mode="r").reshape(channels, length)
            return np.array(rows[:, start:stop], dtype=dtype, order="C")  # a copy: the map is read-only

        if 0 < length < channels:
            raise InputError(path, f"shape {array.shape} has more channels than samples: save it as (channels, time)")
    elif np.issubdtype(array.dtype, np.number):
        raise InputError(path, f"expected shape (time,) or (channels, time), got {array.shape}")
    else:
        raise InputError(path, f"unsupported array dtype {array.dtype} (expected real or complex numbers)")
    return SignalFile(path, _require_rate(path, rate), channels, length, None, is_complex, block)


def _read_npy(path: Path, rate: float | None) -> Signal:
    return _open_npy(path, rate).load()


def _read_cf32(path: Path, rate: float | None) -> Signal:
    data = _read_raw_iq(path, _IQ_FORMATS["cf32_le"])
    return Signal(data, _require_rate(path, rate), None, path)


def _read_wfdb(path: Path, rate: float | None) -> Signal:
    import wfdb

    record = str(path.with_suffix(""))
    try:
        header = wfdb.rdheader(record)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(path, f"unreadable WFDB header ({_one_line(error)})") from None
    files = getattr(header, "file_name", None)
    if not header.n_sig or not files or len(files) != header.n_sig:
        described = len(files or [])
        raise InputError(path, f"unreadable WFDB header (declares {header.n_sig} signals, describes {described})")
    for name in dict.fromkeys(files):
        if not (path.parent / name).is_file():
            raise InputError(path, f"WFDB record is missing its signal file {name}")
        _probe(path.parent / name)
    try:
        signals = wfdb.rdrecord(record, physical=True)
    except (ValueError, IndexError) as error:
        raise InputError(path, f"unreadable or truncated WFDB signal file ({_one_line(error)})") from None
    data = np.ascontiguousarray(signals.p_signal.T, dtype=np.float32)
    return Signal(data, _declared_rate(path, float(signals.fs), rate), None, path)


def _read_sigmf(path: Path, rate: float | None) -> Signal:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "unreadable SigMF metadata (not UTF-8 text)") from None
    except json.JSONDecodeError as error:
        problem = f"unreadable SigMF metadata (invalid JSON: {error.msg} at line {error.lineno})"
        raise InputError(path, problem) from None
    info = meta.get("global") if isinstance(meta, dict) else None
    if not isinstance(info, dict):
        raise InputError(path, "unreadable SigMF metadata (no 'global' object)")
    datatype = info.get("core:datatype")
    if datatype not in _IQ_FORMATS:
        raise InputError(
            path, f"unsupported SigMF datatype {datatype!r} (supported: {', '.join(_IQ_FORMATS)})"
        )
    if "core:sample_rate" not in info:
        raise InputError(path, "SigMF metadata has no global core:sample_rate")
    declared = info["core:sample_rate"]
    if isinstance(declared, bool) or not isinstance(declared, int | float) or not declared > 0:
        raise InputError(path, f"SigMF core:sample_rate must be a positive number, got {declared!r}")
    channels = info.get("core:num_channels", 1)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise InputError(path, f"SigMF core:num_channels must be a positive integer, got {channels!r}")
    data_path = path.with_suffix(".sigmf-data")
    _probe(data_path)
    data = _read_raw_iq(data_path, _IQ_FORMATS[datatype], channels=channels)
    return Signal(data, _declared_rate(path, float(declared), rate), None, path)


_Reader = Callable[[Path, float | None], Signal]
_READERS: dict[str, _Reader] = {
    **dict.fromkeys(_SOUNDFILE_FORMATS, _read_soundfile),
    ".npy": _read_npy,
    ".hea": _read_wfdb,
    ".cfile": _read_cf32,
    ".cf32": _read_cf32,
    ".sigmf-meta": _read_sigmf,
}


def _wfdb_header_for(path: Path) -> Path | None:
    """The header of a WFDB record named without extension (``ecg/100``), if any."""
    header = path.with_name(path.name + ".hea")
    return header if not path.exists() and header.is_file() else None


def _locate(path: Path) -> tuple[Path, _Reader]:
    """The file to open for ``path`` and its reader."""
    header = _wfdb_header_for(path)
    if header is not None:
        return header, _read_wfdb
    suffix = path.suffix.lower()
    if suffix in _READERS:
        return path, _READERS[suffix]
    if suffix in _COMPANIONS:
        main = path.with_suffix(_COMPANIONS[suffix])
        if main.is_file():
            return main, _READERS[_COMPANIONS[suffix]]
        raise InputError(path, f"is read through its {_COMPANIONS[suffix]} file, and {main.name} is not beside it")
    if path.is_dir() or not path.exists():
        _probe(path)
    raise InputError(
        path, f"unsupported file type {suffix or '(no extension)'!r} (supported: {', '.join(supported_extensions())})"
    )


def supported_extensions(*, write: bool = False) -> tuple[str, ...]:
    """Extensions :func:`read` accepts (or :func:`write` produces with ``write=True``), sorted."""
    return _WRITE_EXTENSIONS if write else tuple(sorted(_READERS))


def read(path: str | Path, *, rate: float | None = None) -> Signal:
    """Read a signal file as ``(channels, time)`` samples with its sample rate.

    Args:
        path: a file of a supported type (:func:`supported_extensions`), or a WFDB
            record name without extension.
        rate: sample rate in Hz for formats that do not store one (``.npy``,
            ``.cfile``, ``.cf32``); for the others it must match the file's.

    Returns:
        A :class:`Signal` whose ``data`` is ``(C, T)`` float32, or complex64 for I/Q.

    Raises:
        InputError: the file is missing, a folder, unreadable, empty, corrupt or
            truncated, of an unsupported type, holds no samples or NaN/Inf samples,
            or has no known sample rate.
        ParameterError: ``rate`` is not a positive number.
    """
    if rate is not None:
        rate = _check_rate(rate, "rate")
    target, reader = _locate(Path(path))
    _probe(target)
    signal = reader(target, rate)
    _check_samples(target, signal.data)
    return signal


def open_signal(path: str | Path, *, rate: float | None = None) -> SignalFile:
    """Open a signal file for reading in blocks, as :func:`read` would read it whole.

    Audio files (soundfile) and ``.npy`` arrays (memory-mapped) are read block by
    block, so a long recording never sits in memory whole; other formats are read
    whole here and served from memory. Samples are checked block by block as they
    are read (:meth:`SignalFile.read`, :meth:`SignalFile.scan`).

    Raises:
        InputError, ParameterError: as :func:`read`, except that NaN/Inf samples and
            an empty signal are found when read.
    """
    if rate is not None:
        rate = _check_rate(rate, "rate")
    target, reader = _locate(Path(path))
    _probe(target)
    opener = _OPENERS.get(reader)
    if opener is not None:
        return opener(target, rate)
    signal = reader(target, rate)
    data = signal.data
    return SignalFile(signal.path or target, signal.sample_rate, data.shape[0], data.shape[1], signal.subtype,
                      np.iscomplexobj(data), lambda start, stop: data[:, start:stop])


_OPENERS = {_read_soundfile: _open_soundfile, _read_npy: _open_npy}


# -------------------------------------------------------------------- writing


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise ParameterError(f"{path}: is a folder, expected a file name to write")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(path)


@contextlib.contextmanager
def atomic_write(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` on success.

    The temporary name keeps ``path``'s extension (writers such as soundfile and
    ``np.save`` choose the format by it) and starts with a dot (folder scans skip
    it). Missing parent folders are created. If the body raises, the temporary
    file is removed and ``path`` is left as it was.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false (checked
            before and again after writing, since batch jobs run side by side).
        ParameterError: ``path`` is a folder.
        InputError: the folder cannot be written to.
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
    temp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except PermissionError:
        raise InputError(path.parent, "permission denied (cannot create files in this folder)") from None
    except (FileExistsError, NotADirectoryError):
        raise InputError(path.parent, "a file is in the way of this output folder") from None
    try:
        yield temp
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        _refuse_existing(path, overwrite)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


_TEMPORARY = re.compile(r"^\..*\.[0-9a-f]{12}\.tmp(\.[^.]+)?$")


def is_temporary(path: str | Path) -> bool:
    """Whether ``path`` is named like one of :func:`atomic_write`'s temporary files."""
    return bool(_TEMPORARY.match(Path(path).name))


def write_text_atomic(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` through :func:`atomic_write`; returns ``path``."""
    with atomic_write(path, overwrite=overwrite) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)


class SignalWriter:
    """The open temporary file of :func:`write_stream`: blocks of samples appended in order."""

    def __init__(self, path: Path, sink, *, channels: int, length: int, is_complex: bool):
        self.path = path  # the final name, for messages
        self.channels, self.length, self.is_complex = channels, length, is_complex
        self.written = 0
        self._sink = sink  # (block (C, n), offset) -> None

    def write(self, block: np.ndarray) -> None:
        """Append ``(C, n)`` samples.

        Raises:
            ParameterError: wrong shape, more samples than announced, NaN/Inf samples,
                or complex samples for a real file.
        """
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ParameterError(f"data must have shape ({self.channels}, time), got {block.shape}")
        if self.written + block.shape[1] > self.length:
            raise ParameterError(f"{self.path}: {self.written + block.shape[1]} samples is more than {self.length}")
        bad = int(np.count_nonzero(~np.isfinite(block)))
        if bad:
            raise ParameterError(f"refusing to write {self.path}: data holds {bad} NaN/Inf samples")
        if np.iscomplexobj(block) and not self.is_complex:
            raise ParameterError(f"cannot write complex data to {self.path}: use .npy")
        self._sink(block.astype(np.complex64 if self.is_complex else np.float32, copy=False), self.written)
        self.written += block.shape[1]


@contextlib.contextmanager
def write_stream(
    path: str | Path,
    sample_rate: float,
    *,
    channels: int,
    length: int,
    is_complex: bool = False,
    subtype: str | None = None,
    overwrite: bool = False,
) -> Iterator[SignalWriter]:
    """Write ``channels x length`` samples to ``.wav``, ``.flac`` or ``.npy`` block by block, atomically.

    The blocks go to :func:`atomic_write`'s temporary file as they come
    (:meth:`SignalWriter.write`); ``path`` appears, renamed, only once all ``length``
    samples are written and the body has returned. If the body raises, or fewer
    samples were written, the temporary file is removed and ``path`` is left as it
    was; a killed process leaves only a temporary file (:func:`is_temporary`),
    never a partial ``path``.

    Args: as :func:`write`; ``is_complex``: complex64 samples (``.npy`` only).

    Raises:
        ParameterError: as :func:`write`, or the body wrote fewer than ``length`` samples.
        OutputExistsError: as :func:`write`.
    """
    import soundfile as sf

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITE_EXTENSIONS:
        expected = ", ".join(supported_extensions(write=True))
        raise ParameterError(f"cannot write {path}: unsupported extension (expected one of {expected})")
    if not (isinstance(channels, int) and channels >= 1 and isinstance(length, int) and length >= 1):
        raise ParameterError(f"data must have shape (channels, time) with samples, got {(channels, length)}")
    rate = _check_rate(sample_rate, "sample_rate")
    fmt = _SOUNDFILE_FORMATS.get(suffix, "")
    if fmt:
        if is_complex:
            raise ParameterError(f"cannot write complex data to {path}: use .npy")
        if rate != round(rate):
            raise ParameterError(f"{suffix} needs an integer sample rate, got {rate:g} Hz (resample or write .npy)")
        subtype = _soundfile_subtype(path, fmt, subtype)
    with atomic_write(path, overwrite=overwrite) as temp, contextlib.ExitStack() as files:
        if fmt:
            try:
                audio = files.enter_context(sf.SoundFile(temp, "w", int(rate), channels, subtype, format=fmt))
            except sf.SoundFileError as error:
                raise ParameterError(
                    f"cannot write {channels} channels at {rate:g} Hz as {fmt} {subtype} ({_one_line(error)})"
                ) from None

            def sink(block: np.ndarray, offset: int) -> None:
                audio.write(block.T)
        else:
            dtype = np.dtype(np.complex64 if is_complex else np.float32)
            file = files.enter_context(open(temp, "wb"))
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (channels, length)}
            np.lib.format.write_array_header_1_0(file, header)
            base = file.tell()

            def sink(block: np.ndarray, offset: int) -> None:
                # (C, T) is channel-major: each channel's samples go to their own stretch of the file
                # (plain writes, not a memory map, whose written pages would count as resident memory)
                for c in range(channels):
                    file.seek(base + (c * length + offset) * dtype.itemsize)
                    file.write(np.ascontiguousarray(block[c]).tobytes())

        writer = SignalWriter(path, sink, channels=channels, length=length, is_complex=is_complex)
        yield writer
        if writer.written != length:
            raise ParameterError(f"{path}: {writer.written} of {length} samples were written; nothing was kept")


def _soundfile_subtype(path: Path, fmt: str, subtype: str | None) -> str:
    import soundfile as sf

    chosen = subtype or _DEFAULT_SUBTYPES[path.suffix.lower()]
    if not sf.check_format(fmt, chosen):
        raise ParameterError(
            f"subtype {chosen!r} cannot be written as {path.suffix.lower()} "
            f"(expected one of {', '.join(sf.available_subtypes(fmt))})"
        )
    return chosen


def write(
    path: str | Path,
    data: np.ndarray,
    sample_rate: float,
    *,
    subtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``(channels, time)`` samples to ``.wav``, ``.flac`` or ``.npy``, atomically.

    Args:
        path: output file; its extension picks the format.
        data: ``(C, T)`` samples at full scale 1.0 for audio. Integer subtypes
            clip values outside [-1, 1) (libsndfile's clipping). Complex data
            only to ``.npy``.
        sample_rate: Hz; an integer for ``.wav``/``.flac``. ``.npy`` does not
            store it.
        subtype: soundfile subtype to keep (e.g. the input's ``"PCM_16"``);
            default ``"FLOAT"`` for ``.wav`` and ``"PCM_24"`` for ``.flac``;
            ignored for ``.npy``, which stores float32/complex64 as is.
        overwrite: replace an existing ``path``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        ParameterError: unsupported extension or subtype, wrong shape, NaN/Inf
            samples, complex data for audio, or a non-integer audio rate.
    """
    data = np.asarray(data)
    if data.ndim != 2 or data.size == 0:
        raise ParameterError(f"data must have shape (channels, time) with samples, got {data.shape}")
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:  # before anything is created
        raise ParameterError(f"refusing to write {path}: data holds {bad} NaN/Inf samples")
    with write_stream(path, sample_rate, channels=data.shape[0], length=data.shape[1],
                      is_complex=np.iscomplexobj(data), subtype=subtype, overwrite=overwrite) as writer:
        writer.write(data)
    return Path(path)


# ----------------------------------------------------------------- resampling


def resample_ratio(from_rate: float, to_rate: float, *, max_denominator: int = 50_000) -> Fraction:
    """The rational ``up/down`` that :func:`resample` applies for ``to_rate/from_rate``.

    The output rate is exactly ``from_rate * ratio``; it differs from ``to_rate``
    only when the ratio needs a denominator above ``max_denominator``. The default
    keeps the ratios between usual audio, biomedical and SDR rates exact (2 MHz to
    44.1 kHz is 441/20000); the filter has ``20 * max(up, down) + 1`` taps.
    """
    ratio = Fraction(_check_rate(to_rate, "to_rate")) / Fraction(_check_rate(from_rate, "from_rate"))
    if not (isinstance(max_denominator, int) and max_denominator >= 1):
        raise ParameterError(f"{max_denominator=} is not an integer >= 1")
    approx = ratio.limit_denominator(max_denominator)
    if approx == 0:
        raise ParameterError(f"cannot resample {from_rate:g} Hz to {to_rate:g} Hz (ratio below 1/{max_denominator})")
    return approx


def resample(data: np.ndarray, from_rate: float, to_rate: float, *, max_denominator: int = 50_000) -> np.ndarray:
    """Resample ``(C, T)`` samples from ``from_rate`` to ``to_rate`` Hz (polyphase FIR).

    Uses :func:`scipy.signal.resample_poly` with the ratio of :func:`resample_ratio`.

    Returns:
        ``(C, ceil(T * up / down))`` float32, or complex64 for complex input.
    """
    import scipy.signal

    data = np.asarray(data)
    if data.ndim != 2:
        raise ParameterError(f"data must have shape (channels, time), got {data.shape}")
    ratio = resample_ratio(from_rate, to_rate, max_denominator=max_denominator)
    dtype = np.complex64 if np.iscomplexobj(data) else np.float32
    if ratio == 1:
        return data.astype(dtype)
    out = scipy.signal.resample_poly(data, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(dtype, copy=False)


def _filter_half(ratio: Fraction) -> int:
    """Half the length of :func:`resample`'s filter, in upsampled samples (scipy's ``10 * max(up, down)``)."""
    return 10 * max(ratio.numerator, ratio.denominator)


def resampled_length(length: int, from_rate: float, to_rate: float) -> int:
    """Samples :func:`resample` makes of ``length`` samples: ``ceil(length * up / down)``."""
    ratio = resample_ratio(from_rate, to_rate)
    return -(-length * ratio.numerator // ratio.denominator)


def resample_span(read: Callable[[int, int], np.ndarray], length: int, from_rate: float, to_rate: float,
                  start: int, stop: int) -> np.ndarray:
    """Samples ``start..stop`` of :func:`resample` of a ``length``-sample signal, reading only what they need.

    ``read(a, b)`` returns the input's samples ``a..b`` as ``(C, b - a)``. Each output
    sample depends on the input within the filter's half length of it; reading from a
    multiple of ``down`` keeps the polyphase filter in the same phase as for the whole
    signal, so the samples are those of the whole signal's resampling (to rounding),
    and chunks resampled one by one show no seams.

    Returns:
        ``(C, stop - start)`` float32, or complex64 for complex input.
    """
    ratio = resample_ratio(from_rate, to_rate)
    up, down, half = ratio.numerator, ratio.denominator, _filter_half(ratio)
    first = max(0, -(-(start * down - half) // up))  # the inputs output ``n`` depends on: |n*down - m*up| <= half
    last = min(length, (max(stop - 1, start) * down + half) // up + 1)
    first -= first % down
    offset = first * up // down  # the output sample the block's resampling starts at
    return resample(read(first, last), from_rate, to_rate)[:, start - offset : stop - offset]


class StreamResampler:
    """:func:`resample` of a signal that arrives in consecutive blocks, with the same samples.

    :meth:`push` takes the next block and returns the output samples that no later
    input changes; it keeps only the input that later outputs still need (the
    filter's half length, plus up to ``down`` samples to keep the filter's phase).
    The output is cut or zero-padded to ``length_out`` samples at the end (resampling
    there and back rounds lengths up).
    """

    def __init__(self, from_rate: float, to_rate: float, *, length_in: int, length_out: int | None = None):
        self.from_rate, self.to_rate = from_rate, to_rate
        self.ratio = resample_ratio(from_rate, to_rate)
        self.length_in = length_in
        self.length_out = resampled_length(length_in, from_rate, to_rate) if length_out is None else length_out
        self._pending: np.ndarray | None = None  # input samples from ``_base`` on
        self._base = 0
        self._received = 0
        self._emitted = 0

    def push(self, block: np.ndarray) -> np.ndarray:
        """The next ``(C, n)`` input samples -> the ``(C, m)`` output samples now final.

        Raises:
            ParameterError: more input than ``length_in`` samples.
        """
        up, down, half = self.ratio.numerator, self.ratio.denominator, _filter_half(self.ratio)
        block = np.asarray(block)
        self._pending = block if self._pending is None else np.concatenate([self._pending, block], axis=-1)
        self._received += block.shape[-1]
        if self._received > self.length_in:
            raise ParameterError(f"{self._received} samples pushed, more than the {self.length_in} announced")
        whole = resampled_length(self.length_in, self.from_rate, self.to_rate)
        if self._received == self.length_in:
            ready = whole
        else:  # outputs whose last input, (n*down + half) // up, has arrived
            ready = min(whole, max(0, (self._received * up - 1 - half) // down + 1))
        offset = self._base * up // down
        out = resample(self._pending, self.from_rate, self.to_rate)[:, self._emitted - offset : ready - offset]
        self._emitted = max(self._emitted, ready)
        keep = max(0, -(-(ready * down - half) // up))
        keep = max(self._base, keep - keep % down)
        self._pending = self._pending[:, keep - self._base :]
        self._base = keep
        done = self._emitted - out.shape[-1]  # where ``out`` starts in the output
        out = out[:, : max(0, self.length_out - done)]
        if self._received == self.length_in and self._emitted < self.length_out:
            out = np.pad(out, ((0, 0), (0, self.length_out - max(done, self._emitted))))
        return out


# ---------------------------------------------------------------------- paths


def _normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}))


def _files_under(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files below ``folder`` with one of ``extensions``, sorted; hidden names skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        # Hidden folders hold version control and our own temporary files.
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(root, name) for name in files if not name.startswith(".") and name.lower().endswith(extensions)
        ]
    return sorted(found)


def find_inputs(paths: Iterable[str | Path], *, extensions: Iterable[str]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a list of input files.

    Args:
        paths: files (taken as given, whatever their extension), WFDB record
            names, folders, or glob patterns (``**`` recurses).
        extensions: the extensions to collect from folders and patterns, e.g.
            ``supported_extensions()``; case-insensitive, leading dot optional.

    Returns:
        The files in the order given, each folder's and pattern's sorted, without
        duplicates.

    Raises:
        InputError: a path does not exist, or a folder or pattern holds no
            matching file (the message names the extensions looked for).
    """
    wanted = _normalise_extensions(extensions)
    looked_for = f"no {', '.join(wanted)} files"
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = _files_under(path, wanted)
            if not files:
                raise InputError(path, f"{looked_for} in this folder (searched recursively)")
        elif path.is_file() or _wfdb_header_for(path) is not None:
            files = [path]
        elif glob.has_magic(str(raw)):
            files = []
            for match in map(Path, sorted(glob.glob(str(raw), recursive=True))):
                if match.is_dir():
                    files += _files_under(match, wanted)
                elif match.name.lower().endswith(wanted):
                    files.append(match)
            if not files:
                raise InputError(path, f"{looked_for} match this pattern")
        else:
            raise InputError(path, "file or folder not found")
        found.update(dict.fromkeys(files))
    return list(found)


def safe_join(out_dir: str | Path, *parts: str | Path) -> Path:
    """Join user- or template-supplied ``parts`` under ``out_dir``, refusing escapes.

    Returns:
        ``out_dir / relative``, where ``relative`` is the joined name with ``..``
        and symlinks resolved; it names something strictly inside ``out_dir``.

    Raises:
        ParameterError: a part is absolute or contains a NUL byte, or the result
            (after ``..`` and symlinks) is ``out_dir`` itself or outside it.
    """
    base = Path(out_dir)
    root = base.resolve()
    for part in parts:
        text = str(part)
        if "\0" in text:
            raise ParameterError(f"output name {text!r} contains a NUL byte")
        if Path(text).is_absolute():
            raise ParameterError(f"output name {text!r} is absolute; expected a name relative to {base}")
    target = root.joinpath(*map(str, parts)).resolve()
    if target == root or not target.is_relative_to(root):
        name = "/".join(map(str, parts))
        raise ParameterError(f"output name {name!r} escapes the output folder {base}")
    return base / target.relative_to(root)
