"""Multilevel discrete wavelet transform, coefficient-exact with PyWavelets.

``dwt``/``idwt`` reproduce ``pywt.dwt``/``pywt.idwt`` (same filters, extension and
sample alignment) with ``conv1d``/``conv_transpose1d``, so they are batched,
differentiable and run on any device. The signal extension is a gather with
precomputed indices, which works for signals shorter than the filter too.

Coefficients of all levels are packed into one dense tensor in ``pywt.wavedec``
order ``[cA_J, cD_J, ..., cD_1]`` (:func:`pack` / :func:`split`, the idea of
``pywt.coeffs_to_array``), so mask models see one ``(batch, channel, K)`` tensor.
Packed *group* ``0`` is the approximation ``cA_J``; group ``i >= 1`` is the
detail of level ``J + 1 - i`` (level 1 is the finest).
"""

from __future__ import annotations

import difflib
from typing import Literal, NamedTuple, get_args

import pywt
import torch
from torch import Tensor
from torch.nn import functional as nnf

from demux.errors import ParameterError
from demux.transforms._common import check_int, check_signal, over_signals
from demux.transforms.base import Grid, Transform

Mode = Literal["periodization", "symmetric", "periodic", "reflect", "zero", "constant"]
MODES: tuple[str, ...] = get_args(Mode)


class FilterBank(NamedTuple):
    """Analysis and synthesis filters of one wavelet, float64.

    Attributes:
        dec: ``(2, F)`` decomposition low-pass and high-pass filters (pywt ``dec_lo``, ``dec_hi``).
        rec: ``(2, F)`` reconstruction filters (pywt ``rec_lo``, ``rec_hi``).
    """

    dec: Tensor
    rec: Tensor


def resolve_wavelet(name: str) -> pywt.Wavelet:
    """The orthogonal or biorthogonal discrete pywt wavelet called ``name``, or ParameterError."""
    discrete = pywt.wavelist(kind="discrete")
    if name not in discrete:
        close = difflib.get_close_matches(str(name), discrete, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ParameterError(
            f"wavelet={name!r} is not a discrete PyWavelets wavelet{hint} "
            f"(families: {', '.join(pywt.families(short=True))}; see pywt.wavelist(kind='discrete'))"
        )
    wavelet = pywt.Wavelet(name)
    if not (wavelet.orthogonal or wavelet.biorthogonal):
        raise ParameterError(f"wavelet={name!r} is neither orthogonal nor biorthogonal")
    return wavelet


def filter_bank(wavelet: str) -> FilterBank:
    """The :class:`FilterBank` of a pywt discrete wavelet name (``"db4"``, ``"bior4.4"``, ...)."""
    w = resolve_wavelet(wavelet)
    return FilterBank(
        dec=torch.tensor([w.dec_lo, w.dec_hi], dtype=torch.float64),
        rec=torch.tensor([w.rec_lo, w.rec_hi], dtype=torch.float64),
    )


def check_mode(mode: str) -> str:
    """``mode`` if it is a supported signal extension mode, else ParameterError listing them."""
    if mode not in MODES:
        raise ParameterError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    return mode


def _next_length(n: int, filter_len: int, mode: str) -> int:
    """Length of one level's coefficients from an ``n``-sample input (pywt.dwt_coeff_len)."""
    return (n + 1) // 2 if mode == "periodization" else (n + filter_len - 1) // 2


def approximation_lengths(length: int, *, filter_len: int, level: int, mode: str) -> list[int]:
    """``[N_0 = length, N_1, ..., N_J]``: input length of each level and the final ``len(cA_J)``."""
    lengths = [length]
    for _ in range(level):
        lengths.append(_next_length(lengths[-1], filter_len, mode))
    return lengths


def coeff_lengths(length: int, *, filter_len: int, level: int, mode: str) -> list[int]:
    """Lengths of ``[cA_J, cD_J, ..., cD_1]`` for a ``length``-sample signal."""
    chain = approximation_lengths(length, filter_len=filter_len, level=level, mode=mode)
    return [chain[-1], *chain[:0:-1]]


def max_level(length: int, filter_len: int) -> int:
    """Deepest useful level for a ``length``-sample signal (``pywt.dwt_max_level``)."""
    return pywt.dwt_max_level(length, filter_len)


def check_level(level: int | None, length: int, *, filter_len: int, wavelet: str = "") -> int:
    """``level`` (or the maximum when None), or ParameterError if the signal is too short for it."""
    deepest = max_level(length, filter_len)
    if level is None:
        level = deepest
    check_int("level", level, 1)
    if level > deepest:
        raise ParameterError(
            f"level={level} is deeper than a {length}-sample signal allows with wavelet {wavelet or filter_len}"
            f" (filter length {filter_len}): the max level is {deepest}"
        )
    return level


def _extension_index(n: int, positions: Tensor, mode: str) -> Tensor:
    """Indices into an ``n``-sample signal giving its ``mode`` extension at ``positions``.

    For ``"zero"`` the index ``n`` points at an appended zero sample.
    """
    if mode == "periodization":
        # pywt first makes odd lengths even by repeating the last sample.
        return (positions % (n + n % 2)).clamp(max=n - 1)
    if mode == "periodic":
        return positions % n
    if mode == "symmetric":
        r = positions % (2 * n)
        return torch.where(r < n, r, 2 * n - 1 - r)
    if mode == "reflect":
        if n == 1:
            return torch.zeros_like(positions)
        r = positions % (2 * n - 2)
        return torch.where(r < n, r, 2 * n - 2 - r)
    if mode == "constant":
        return positions.clamp(0, n - 1)
    return torch.where((positions >= 0) & (positions < n), positions, torch.full_like(positions, n))


def dwt(x: Tensor, *, bank: FilterBank, mode: str) -> tuple[Tensor, Tensor]:
    """One analysis level, equal to ``pywt.dwt(x, wavelet, mode)``.

    Args:
        x: ``(..., n)`` real signal.
        bank: the wavelet's filters.
        mode: signal extension mode (see ``MODES``).

    Returns:
        ``(cA, cD)``, each ``(..., m)`` with ``m = ceil(n / 2)`` for periodization and
        ``floor((n + F - 1) / 2)`` otherwise.
    """
    n, filter_len = x.shape[-1], bank.dec.shape[-1]
    m = _next_length(n, filter_len, mode)
    # Output o = sum_j h[j] x_ext[2o + s - j]; pywt uses s = F/2 (periodization), 1 (others).
    start = filter_len // 2 - (filter_len - 1) if mode == "periodization" else 2 - filter_len
    positions = torch.arange(start, start + 2 * (m - 1) + filter_len, device=x.device)
    index = _extension_index(n, positions, mode)
    weight = bank.dec.flip(-1).unsqueeze(1).to(dtype=x.dtype, device=x.device)

    def analyse(rows: Tensor) -> Tensor:
        if mode == "zero":
            rows = torch.cat([rows, rows.new_zeros(rows.shape[0], 1)], dim=-1)
        return nnf.conv1d(rows[:, index].unsqueeze(1), weight, stride=2)

    both = over_signals(analyse, x)
    return both[..., 0, :], both[..., 1, :]


def idwt(approx: Tensor, detail: Tensor, *, bank: FilterBank, mode: str, length: int) -> Tensor:
    """One synthesis level, equal to ``pywt.idwt(cA, cD, wavelet, mode)[..., :length]``.

    Args:
        approx: ``(..., m)`` approximation coefficients.
        detail: ``(..., m)`` detail coefficients.
        length: samples of the level's input signal (the ``n`` that :func:`dwt` saw).

    Returns:
        ``(..., length)`` real signal.
    """
    m, filter_len = approx.shape[-1], bank.rec.shape[-1]
    weight = bank.rec.unsqueeze(1).to(dtype=approx.dtype, device=approx.device)
    stacked = torch.stack([approx, detail], dim=-2)
    lead = stacked.shape[:-2]
    # y[t] = sum_k cA[k] g_lo[t - 2k] + cD[k] g_hi[t - 2k]
    full = nnf.conv_transpose1d(stacked.reshape(-1, 2, m), weight, stride=2)[:, 0]
    if mode == "periodization":
        wrapped = (torch.arange(full.shape[-1], device=full.device) - (filter_len // 2 - 1)) % (2 * m)
        out = full.new_zeros(full.shape[0], 2 * m).index_add(-1, wrapped, full)[:, :length]
    else:
        out = full[:, filter_len - 2 : filter_len - 2 + length]
    if out.shape[-1] != length:
        raise ParameterError(f"{m} coefficients per band cannot rebuild {length} samples in mode {mode!r}")
    return out.reshape(*lead, length)


def wavedec(x: Tensor, *, bank: FilterBank, level: int, mode: str) -> list[Tensor]:
    """Multilevel analysis, equal to ``pywt.wavedec(x, wavelet, mode, level)``.

    Args:
        x: ``(..., time)`` real signal.
        level: number of levels ``J >= 1``.

    Returns:
        ``[cA_J, cD_J, ..., cD_1]``, each ``(..., n_j)`` (see :func:`coeff_lengths`).
    """
    approx, details = x, []
    for _ in range(level):
        approx, detail = dwt(approx, bank=bank, mode=mode)
        details.append(detail)
    return [approx, *details[::-1]]


def waverec(coeffs: list[Tensor], *, bank: FilterBank, mode: str, length: int) -> Tensor:
    """Inverse of :func:`wavedec`: ``[cA_J, cD_J, ..., cD_1]`` -> ``(..., length)`` signal."""
    level = len(coeffs) - 1
    expected = coeff_lengths(length, filter_len=bank.rec.shape[-1], level=level, mode=mode)
    got = [c.shape[-1] for c in coeffs]
    if got != expected:
        raise ParameterError(f"coefficient lengths {got} do not match a {length}-sample signal: expected {expected}")
    chain = approximation_lengths(length, filter_len=bank.rec.shape[-1], level=level, mode=mode)
    approx = coeffs[0]
    for i, detail in enumerate(coeffs[1:]):
        approx = idwt(approx, detail, bank=bank, mode=mode, length=chain[level - 1 - i])
    return approx


def pack(coeffs: list[Tensor]) -> Tensor:
    """Concatenate ``[cA_J, cD_J, ..., cD_1]`` (each ``(..., n_j)``) into ``(..., sum n_j)``."""
    return torch.cat(coeffs, dim=-1)


def split(packed: Tensor, *, lengths: list[int]) -> list[Tensor]:
    """Inverse of :func:`pack`: ``(..., sum(lengths))`` -> list of ``(..., n_j)`` views."""
    if packed.shape[-1] != sum(lengths):
        raise ParameterError(
            f"packed coefficients have {packed.shape[-1]} values; lengths {lengths} sum to {sum(lengths)}"
        )
    return list(torch.split(packed, lengths, dim=-1))


def level_bands(*, sample_rate: float, level: int) -> list[tuple[float, float]]:
    """Nominal band ``(lo_hz, hi_hz)`` of each packed group, in wavedec order.

    Detail level ``j`` covers ``[fs / 2^(j+1), fs / 2^j]``; the approximation at
    level ``J`` covers ``[0, fs / 2^(J+1)]``. (Real wavelet filters overlap these
    ideal octaves.)
    """
    fs = float(sample_rate)
    return [(0.0, fs / 2 ** (level + 1))] + [(fs / 2 ** (j + 1), fs / 2**j) for j in range(level, 0, -1)]


def level_groups(lo_hz: float, hi_hz: float, *, sample_rate: float, level: int) -> list[int]:
    """Packed group indices whose nominal band overlaps ``(lo_hz, hi_hz)`` by a positive width.

    Group ``0`` is ``cA_J``; group ``i >= 1`` is the detail of level ``J + 1 - i``.
    """
    if not hi_hz > lo_hz:
        raise ParameterError(f"band ({lo_hz}, {hi_hz}) Hz must have hi_hz > lo_hz")
    bands = level_bands(sample_rate=sample_rate, level=level)
    return [g for g, (lo, hi) in enumerate(bands) if min(hi, hi_hz) > max(lo, lo_hz)]


def coefficient_positions(length: int, *, filter_len: int, level: int, mode: str) -> list[Tensor]:
    """Centre of each coefficient's filter support, in samples of the input, per packed group.

    Coefficient ``o`` of level ``j`` is centred at ``2^j o + a (2^j - 1)`` with
    ``a = 1/2`` (periodization) or ``1 - (F - 1) / 2`` (other modes, whose first
    coefficients straddle the left edge), ignoring the filters' phase.
    """
    shift = 0.5 if mode == "periodization" else 1 - (filter_len - 1) / 2
    lengths = coeff_lengths(length, filter_len=filter_len, level=level, mode=mode)
    scales = [level, *range(level, 0, -1)]
    return [
        torch.arange(n, dtype=torch.float64) * 2**j + shift * (2**j - 1) for n, j in zip(lengths, scales, strict=True)
    ]


class DWT(Transform):
    """Multilevel DWT; coefficients ``(batch, channel, K)`` packed as ``[cA_J, cD_J, ..., cD_1]``.

    Args:
        sample_rate: Hz.
        wavelet: PyWavelets discrete wavelet name (orthogonal or biorthogonal).
        level: number of levels ``J``; None uses the deepest useful one for each
            signal length (``pywt.dwt_max_level``). Deeper than that raises ParameterError.
        mode: signal extension (``"periodization"``, ``"symmetric"``, ...; see ``MODES``).

    Grid: ``group`` is the packed group (0 = ``cA_J``, ``i`` = detail level ``J + 1 - i``),
    bands as in :func:`level_bands`, ``time_s`` each coefficient's centre (clipped to the
    signal), ``frame`` the nearest ``cA_J`` position (``n_frames = len(cA_J)``).
    """

    def __init__(self, sample_rate: float, wavelet: str = "db4", level: int | None = None, mode: str = "periodization"):
        super().__init__(sample_rate)
        bank = filter_bank(wavelet)
        self.wavelet = wavelet
        self.mode = check_mode(mode)
        self.level = None if level is None else check_int("level", level, 1)
        self.register_buffer("dec", bank.dec)
        self.register_buffer("rec", bank.rec)

    @property
    def bank(self) -> FilterBank:
        return FilterBank(self.dec, self.rec)

    @property
    def filter_len(self) -> int:
        return self.dec.shape[-1]

    def levels(self, length: int) -> int:
        """``J`` for a ``length``-sample signal (ParameterError if too deep)."""
        return check_level(self.level, length, filter_len=self.filter_len, wavelet=self.wavelet)

    def lengths(self, length: int) -> list[int]:
        """Lengths of ``[cA_J, cD_J, ..., cD_1]`` for a ``length``-sample signal."""
        return coeff_lengths(length, filter_len=self.filter_len, level=self.levels(length), mode=self.mode)

    def split(self, coeffs: Tensor, length: int) -> list[Tensor]:
        """Packed ``(..., K)`` coefficients of a ``length``-sample signal -> ``[cA_J, ..., cD_1]``."""
        return split(coeffs, lengths=self.lengths(length))

    pack = staticmethod(pack)

    def level_groups(self, lo_hz: float, hi_hz: float, length: int) -> list[int]:
        """Packed groups whose band overlaps ``(lo_hz, hi_hz)`` for a ``length``-sample signal."""
        return level_groups(lo_hz, hi_hz, sample_rate=self.sample_rate, level=self.levels(length))

    def forward(self, x: Tensor) -> Tensor:
        _, _, T = check_signal(x)
        return pack(wavedec(x, bank=self.bank, level=self.levels(T), mode=self.mode))

    def inverse(self, coeffs: Tensor, length: int) -> Tensor:
        return waverec(self.split(coeffs, length), bank=self.bank, mode=self.mode, length=length)

    def grid(self, length: int) -> Grid:
        level = self.levels(length)
        positions = coefficient_positions(length, filter_len=self.filter_len, level=level, mode=self.mode)
        sizes = [p.shape[0] for p in positions]
        bands = torch.tensor(level_bands(sample_rate=self.sample_rate, level=level), dtype=torch.float32)
        group = torch.repeat_interleave(torch.arange(level + 1), torch.tensor(sizes))
        lo, hi = bands[group, 0], bands[group, 1]
        position = torch.cat(positions)
        coarse = positions[0]
        frame = torch.round((position - coarse[0]) / 2**level).clamp(0, sizes[0] - 1).long()
        time = (position.clamp(0, length - 1) / self.sample_rate).float()
        return Grid(
            freq_hz=((lo + hi) / 2).view(1, -1),
            band_lo_hz=lo.view(1, -1),
            band_hi_hz=hi.view(1, -1),
            time_s=time.view(1, -1),
            group=group.view(1, -1),
            n_groups=level + 1,
            frame=frame.view(1, -1),
            n_frames=sizes[0],
            shape=(sum(sizes),),
        )
