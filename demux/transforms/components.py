"""Independent components, then an STFT of each: a (component, freq, frame) grid for multichannel EEG.

``forward`` unmixes the channels with symmetric FastICA (:func:`demux.transforms.channels.fastica_fit`)
and takes the STFT of every component; ``inverse`` runs the inverse STFT and multiplies by
the mixing matrix, so whatever a mask keeps of a component lands back at the sensors::

    coeffs = stft(unmixing @ x)                 # (B, K, F, N), K = C components
    x      = mixing @ istft(coeffs)             # (B, C, T)

Both maps are linear (the channel means ride along in the components), so stems that
sum over sources to the coefficients sum to the mixture up to the STFT's round trip.

The map is fitted to the data: the first ``forward`` fits it (or call :meth:`ICASTFT.fit`)
and later calls reuse it, so references analysed after the mixture (the oracle masks)
land in the mixture's components.
"""

from __future__ import annotations

import torch
from torch import Tensor

from demux.errors import ParameterError
from demux.transforms._common import check_int, check_positive, check_signal
from demux.transforms.base import Grid, Transform
from demux.transforms.channels import fastica_fit
from demux.transforms.stft import STFT, WindowSpec


class ICASTFT(Transform):
    """FastICA across channels, then a centred STFT per component.

    Coefficients are ``(batch, K, F, N)`` complex with ``K = channel`` components,
    ``F = n_fft // 2 + 1`` bins and ``N`` frames. Window and hop are in seconds, so one
    recipe serves every EEG rate: ``n_fft = round(window_s * fs)``.

    Args:
        sample_rate: Hz.
        window_s: STFT frame length, seconds (default 1 s: 1 Hz bins, alpha and beta resolved).
        hop_s: frame step, seconds (default a quarter of ``window_s``).
        window: scipy window name or tuple (default ``"hann"``).
        seed: seed of FastICA's initial rotation.
        max_iter: FastICA iteration cap.
        fit_highpass_hz: the unmixing is fitted without the STFT bins below this frequency
            (slow drift would dominate the fit; MNE fits ICA on high-passed data too) and
            applied to the whole signal, so the map stays exact; 0 fits on everything.

    Attributes:
        unmixing: ``(B, K, C)`` once fitted (``None`` before).
        mixing: ``(B, C, K)``, its inverse.
    """

    def __init__(self, sample_rate: float, window_s: float = 1.0, hop_s: float | None = None,
                 window: WindowSpec = "hann", seed: int = 0, max_iter: int = 200, fit_highpass_hz: float = 1.0):
        super().__init__(sample_rate)
        n_fft = round(check_positive("window_s", window_s) * self.sample_rate)
        hop = n_fft // 4 if hop_s is None else round(check_positive("hop_s", hop_s) * self.sample_rate)
        if n_fft < 2 or hop < 1:
            raise ParameterError(
                f"window_s={window_s} and hop_s={hop_s} give {n_fft} and {hop} samples at {self.sample_rate:g} Hz; "
                "expected a window of at least 2 samples and a hop of at least 1"
            )
        self.stft = STFT(sample_rate, n_fft=n_fft, hop=hop, window=window)
        self.invertible = self.stft.invertible
        self.seed = int(seed)
        self.max_iter = check_int("max_iter", max_iter, 1)
        if not 0 <= fit_highpass_hz < self.sample_rate / 2:
            raise ParameterError(f"fit_highpass_hz={fit_highpass_hz} is not in [0, {self.sample_rate / 2:g}) Hz")
        self.fit_highpass_hz = float(fit_highpass_hz)
        self.register_buffer("unmixing", None)
        self.register_buffer("mixing", None)

    def fit(self, x: Tensor) -> ICASTFT:
        """Fit one unmixing per batch item of ``x`` ``(B, C, T)`` (``C >= 2``); returns ``self``."""
        _, C, _ = check_signal(x, min_length=2)
        if C < 2:
            raise ParameterError(f"independent components need at least 2 channels, got {C}")
        highpassed = self.stft.inverse(self._highpass(self.stft(x)), x.shape[-1])
        unmixing, mixing, _ = fastica_fit(highpassed, max_iter=self.max_iter, seed=self.seed)
        self.unmixing, self.mixing = unmixing.detach(), mixing.detach()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T)`` signals -> ``(B, C, F, N)`` complex STFT of the components (fits the map first if unfitted)."""
        B, C, _ = check_signal(x)
        if self.unmixing is None:
            self.fit(x)
        if self.unmixing.shape[0] not in (1, B) or self.unmixing.shape[-1] != C:
            raise ParameterError(
                f"fitted on {self.unmixing.shape[0]} items of {self.unmixing.shape[-1]} channels, got {B} of {C}"
            )
        return self.stft(self.unmixing.to(x.dtype) @ x)

    def activations(self, coeffs: Tensor, length: int, *, highpass: bool = False) -> Tensor:
        """``(B, K, F, N)`` coefficients -> ``(B, K, length)`` component time courses (no mixing).

        ``highpass`` leaves out the bins below ``fit_highpass_hz``, as the fit did.
        """
        return self.stft.inverse(self._highpass(coeffs) if highpass else coeffs, length)

    def _highpass(self, coeffs: Tensor) -> Tensor:
        keep = (self.stft.grid(1).freq_hz[0] >= self.fit_highpass_hz).to(coeffs.device)  # (F, 1)
        return coeffs * keep

    def inverse(self, coeffs: Tensor, length: int) -> Tensor:
        """``(B', K, F, N)`` -> ``(B', C, length)`` at the sensors.

        ``B'`` may be a multiple ``B * S`` of the fitted batch ``B`` (item-major: masked
        copies of each item for ``S`` sources, as the pipeline stacks them).
        """
        if self.mixing is None:
            raise ParameterError("ICASTFT.inverse needs a fitted map: call forward(x) or fit(x) first")
        fitted, batch = self.mixing.shape[0], coeffs.shape[0]
        if batch % fitted:
            raise ParameterError(f"fitted on a batch of {fitted} items; got {batch}, not a multiple of it")
        mixing = self.mixing.repeat_interleave(batch // fitted, dim=0)
        components = self.activations(coeffs, length)
        return mixing.to(components.dtype) @ components

    def grid(self, length: int) -> Grid:
        """The STFT's (freq, frame) grid per component; ``group`` is ``component * F + bin``."""
        if self.unmixing is None:
            raise ParameterError("ICASTFT.grid needs a fitted map: call forward(x) or fit(x) first")
        K = self.unmixing.shape[-2]
        inner = self.stft.grid(length)
        F = inner.n_groups
        return Grid(
            freq_hz=inner.freq_hz,
            band_lo_hz=inner.band_lo_hz,
            band_hi_hz=inner.band_hi_hz,
            time_s=inner.time_s,
            group=(torch.arange(K).view(K, 1, 1) * F + inner.group),
            n_groups=K * F,
            frame=inner.frame,
            n_frames=inner.n_frames,
            shape=inner.shape,
        )


__all__ = ["ICASTFT"]
