"""Helpers shared by the transform modules: argument checks and grid builders."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from demux.errors import ParameterError
from demux.transforms.base import Grid

#: Whole-signal transforms (FFT, DCT) pool their bins into at most this many
#: equal-width bands, so parameters tied per band stay few on long signals.
MAX_POOLED_GROUPS = 512


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, or ParameterError saying it must be an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParameterError(f"{name}={value!r} is not an integer >= {minimum}")
    return value


def check_positive(name: str, value: object) -> float:
    """``value`` as a float, or ParameterError saying it must be a finite number > 0."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ParameterError(f"{name}={value!r} is not a number > 0") from None
    if not number > 0 or number == float("inf"):
        raise ParameterError(f"{name}={value!r} is not a finite number > 0")
    return number


def check_signal(x: Tensor, *, min_length: int = 1, complex_ok: bool = False) -> tuple[int, int, int]:
    """``(batch, channel, time)`` of a real (or, if ``complex_ok``, complex) signal tensor, or ParameterError."""
    if not isinstance(x, Tensor) or x.dim() != 3 or (x.is_complex() and not complex_ok):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        kind = "real or complex" if complex_ok else "real"
        raise ParameterError(f"expected a {kind} (batch, channel, time) tensor, got {shape}")
    B, C, T = x.shape
    if T < min_length:
        raise ParameterError(f"signal has {T} samples; this transform needs at least {min_length}")
    return B, C, T


def over_signals(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply ``fn`` (which maps ``(rows, time)``) to ``x`` of shape ``(..., time)``.

    Leading dimensions are packed into rows and unpacked after, as torchaudio does.
    """
    lead = x.shape[:-1]
    out = fn(x.reshape(-1, x.shape[-1]))
    return out.reshape(*lead, *out.shape[1:])


def pooled_index(n: int, max_groups: int = MAX_POOLED_GROUPS) -> tuple[Tensor, int]:
    """Map ``n`` consecutive items onto ``min(n, max_groups)`` equal-width runs.

    Returns:
        ``(n,)`` int64 run index of each item (non-decreasing, every run non-empty)
        and the number of runs.
    """
    groups = min(n, max_groups)
    return torch.arange(n) * groups // n, groups


def linear_bands(
    freq_hz: Tensor, half_width_hz: float, nyquist_hz: float, *, two_sided: bool = False
) -> tuple[Tensor, Tensor]:
    """Band edges ``freq_hz -/+ half_width_hz`` clipped to ``[0, nyquist_hz]`` (``[-nyquist, nyquist]``
    for the two-sided spectra of complex signals), same shape."""
    lowest = -nyquist_hz if two_sided else 0.0
    return (freq_hz - half_width_hz).clamp(min=lowest), (freq_hz + half_width_hz).clamp(max=nyquist_hz)


def whole_signal_grid(
    freq_hz: Tensor, *, half_width_hz: float, sample_rate: float, length: int, two_sided: bool = False
) -> Grid:
    """Grid of a transform over the whole signal (FFT, DCT): ``K = (F,)``, one frame.

    Args:
        freq_hz: ``(F,)`` centre frequency of each coefficient, Hz.
        half_width_hz: half the spacing between coefficients, Hz.
        sample_rate: Hz.
        length: samples of the analysed signal.

    Groups are :func:`pooled_index` runs of coefficients (at most
    ``MAX_POOLED_GROUPS`` equal-width bands); every coefficient is centred on the
    middle of the signal.
    """
    lo, hi = linear_bands(freq_hz, half_width_hz, sample_rate / 2, two_sided=two_sided)
    group, n_groups = pooled_index(freq_hz.shape[0])
    return Grid(
        freq_hz=freq_hz.view(1, -1),
        band_lo_hz=lo.view(1, -1),
        band_hi_hz=hi.view(1, -1),
        time_s=torch.full((1, 1), length / (2 * sample_rate)),
        group=group.view(1, -1),
        n_groups=n_groups,
        frame=torch.zeros((1, 1), dtype=torch.int64),
        n_frames=1,
        shape=(freq_hz.shape[0],),
    )


def check_count(what: str, got: int, expected: int, length: int) -> None:
    """ParameterError unless coefficients have the ``expected`` size for a ``length``-sample signal."""
    if got != expected:
        raise ParameterError(f"{what}: got {got}, but a {length}-sample signal has {expected}")
