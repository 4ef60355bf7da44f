"""Short-time Fourier transform with centred frames (torch.stft ``center=True`` layout).

Frame ``n`` is centred on sample ``n * hop``; the signal is zero-padded by
``n_fft // 2`` on both sides, so a signal of ``T`` samples has ``1 + T // hop``
frames. This is the layout of ``scipy.signal.ShortTimeFFT(..., phase_shift=None)``
sliced ``p0=0, p1=N``, the parity reference in the tests.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch
from torch import Tensor

from demux.errors import ParameterError
from demux.transforms._common import check_count, check_int, check_signal, linear_bands, over_signals
from demux.transforms.base import Grid, Transform

WindowSpec = str | tuple | Tensor


def make_window(window: WindowSpec, n_fft: int) -> Tensor:
    """A periodic analysis window of ``n_fft`` samples, float64.

    Args:
        window: any ``scipy.signal.get_window`` name or tuple (``"hann"``,
            ``("kaiser", 8.0)``), or a 1-D tensor of ``n_fft`` samples.
    """
    if isinstance(window, Tensor):
        if window.dim() != 1 or window.shape[0] != n_fft or window.is_complex():
            raise ParameterError(
                f"window tensor must be real with shape ({n_fft},) (n_fft), got {tuple(window.shape)}"
            )
        return window.detach().to(torch.float64)
    try:
        values = scipy.signal.get_window(window, n_fft, fftbins=True)
    except (ValueError, TypeError) as err:
        raise ParameterError(f"window={window!r} is not a scipy.signal.get_window name: {err}") from None
    return torch.from_numpy(np.asarray(values, dtype=np.float64))


def is_nola(window: Tensor, hop: int) -> bool:
    """Whether overlap-added squared windows never vanish (the condition iSTFT needs)."""
    if hop > window.shape[0]:
        return False  # frames leave gaps
    return bool(scipy.signal.check_NOLA(window.cpu().numpy(), window.shape[0], window.shape[0] - hop))


def n_frames(length: int, hop: int) -> int:
    """Number of centred frames for a signal of ``length`` samples."""
    return 1 + length // hop


def stft(x: Tensor, *, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """Centred STFT.

    Args:
        x: ``(..., time)`` real signal.
        n_fft: frame length and FFT size, samples.
        hop: frame step, samples.
        window: ``(n_fft,)`` real window (cast to ``x``'s dtype and device).

    Returns:
        ``(..., n_fft // 2 + 1, 1 + time // hop)`` complex coefficients, unnormalised
        (``numpy.fft.rfft`` of each windowed frame).
    """
    win = window.to(dtype=x.dtype, device=x.device)
    return over_signals(
        lambda rows: torch.stft(
            rows, n_fft, hop_length=hop, window=win, center=True, pad_mode="constant",
            normalized=False, onesided=True, return_complex=True,
        ),
        x,
    )


def istft(coeffs: Tensor, *, n_fft: int, hop: int, window: Tensor, length: int) -> Tensor:
    """Inverse of :func:`stft` (weighted overlap-add), exact when the window is NOLA.

    Args:
        coeffs: ``(..., n_fft // 2 + 1, frames)`` complex coefficients.
        length: samples of the output signal.

    Returns:
        ``(..., length)`` real signal.
    """
    lead = coeffs.shape[:-2]
    win = window.to(dtype=coeffs.real.dtype, device=coeffs.device)
    rows = coeffs.reshape(-1, *coeffs.shape[-2:])
    out = torch.istft(rows, n_fft, hop_length=hop, window=win, center=True, onesided=True, length=length)
    return out.reshape(*lead, length)


class STFT(Transform):
    """Centred STFT; coefficients ``(batch, channel, n_fft // 2 + 1, frames)`` complex.

    Args:
        sample_rate: Hz.
        n_fft: frame length and FFT size, samples (>= 2).
        hop: frame step, samples (default ``n_fft // 4``).
        window: scipy window name/tuple or ``(n_fft,)`` tensor (default ``"hann"``).

    ``invertible`` is False when the window is not NOLA for this hop (then
    :meth:`inverse` raises ParameterError).
    """

    def __init__(self, sample_rate: float, n_fft: int = 1024, hop: int | None = None, window: WindowSpec = "hann"):
        super().__init__(sample_rate)
        self.n_fft = check_int("n_fft", n_fft, 2)
        self.hop = check_int("hop", n_fft // 4 if hop is None else hop, 1)
        self.register_buffer("window", make_window(window, self.n_fft))
        self.invertible = is_nola(self.window, self.hop)

    def forward(self, x: Tensor) -> Tensor:
        check_signal(x)
        return stft(x, n_fft=self.n_fft, hop=self.hop, window=self.window)

    def inverse(self, coeffs: Tensor, length: int) -> Tensor:
        self._check_inverse(coeffs, length)
        return istft(coeffs, n_fft=self.n_fft, hop=self.hop, window=self.window, length=length)

    def grid(self, length: int) -> Grid:
        freq = torch.arange(self.n_fft // 2 + 1, dtype=torch.float32) * (self.sample_rate / self.n_fft)
        return self._grid(freq, length, two_sided=False)

    def _check_inverse(self, coeffs: Tensor, length: int) -> None:
        if not self.invertible:
            raise ParameterError(
                f"this window is not NOLA for hop={self.hop} (n_fft={self.n_fft}); use a smaller hop"
            )
        check_count("STFT frames", coeffs.shape[-1], n_frames(length, self.hop), length)

    def _grid(self, freq: Tensor, length: int, *, two_sided: bool) -> Grid:
        """The (bin, frame) grid for bin frequencies ``freq`` ``(F,)``, Hz; a group per bin."""
        n_bins, frames = freq.shape[0], n_frames(length, self.hop)
        lo, hi = linear_bands(freq, self.sample_rate / (2 * self.n_fft), self.sample_rate / 2, two_sided=two_sided)
        return Grid(
            freq_hz=freq.view(1, -1, 1),
            band_lo_hz=lo.view(1, -1, 1),
            band_hi_hz=hi.view(1, -1, 1),
            time_s=(torch.arange(frames, dtype=torch.float32) * (self.hop / self.sample_rate)).view(1, 1, -1),
            group=torch.arange(n_bins).view(1, -1, 1),
            n_groups=n_bins,
            frame=torch.arange(frames).view(1, 1, -1),
            n_frames=frames,
            shape=(n_bins, frames),
        )


def cstft(x: Tensor, *, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """Centred two-sided STFT of complex baseband, bins in increasing frequency order.

    Returns:
        ``(..., n_fft, 1 + time // hop)`` complex; bin ``k`` is ``(k - n_fft // 2) * fs / n_fft`` Hz.
    """
    win = window.to(dtype=x.real.dtype, device=x.device)
    out = over_signals(
        lambda rows: torch.stft(
            rows, n_fft, hop_length=hop, window=win, center=True, pad_mode="constant",
            normalized=False, onesided=False, return_complex=True,
        ),
        x,
    )
    return torch.fft.fftshift(out, dim=-2)


def icstft(coeffs: Tensor, *, n_fft: int, hop: int, window: Tensor, length: int) -> Tensor:
    """Inverse of :func:`cstft`: ``(..., n_fft, frames)`` -> ``(..., length)`` complex."""
    lead = coeffs.shape[:-2]
    win = window.to(dtype=coeffs.real.dtype, device=coeffs.device)
    rows = torch.fft.ifftshift(coeffs, dim=-2).reshape(-1, *coeffs.shape[-2:])
    out = torch.istft(
        rows, n_fft, hop_length=hop, window=win, center=True, onesided=False, length=length, return_complex=True
    )
    return out.reshape(*lead, length)


class ComplexSTFT(STFT):
    """Centred STFT of complex baseband (I/Q); coefficients ``(batch, channel, n_fft, frames)``.

    Bins run from -fs/2 to fs/2 (increasing), so bands in Hz may be negative.
    Same arguments as :class:`STFT`.
    """

    complex_input = True

    def forward(self, x: Tensor) -> Tensor:
        check_signal(x, complex_ok=True)
        x = x.to(torch.promote_types(x.dtype, torch.complex64))
        return cstft(x, n_fft=self.n_fft, hop=self.hop, window=self.window)

    def inverse(self, coeffs: Tensor, length: int) -> Tensor:
        self._check_inverse(coeffs, length)
        return icstft(coeffs, n_fft=self.n_fft, hop=self.hop, window=self.window, length=length)

    def grid(self, length: int) -> Grid:
        freq = (torch.arange(self.n_fft, dtype=torch.float32) - self.n_fft // 2) * (self.sample_rate / self.n_fft)
        return self._grid(freq, length, two_sided=True)
