"""Differentiable transforms with physical axes; one module per family.

``TRANSFORMS`` is the one registry of transforms by name; recipes build them with
:func:`build_transform`.
"""

from __future__ import annotations

import difflib
import inspect

from demux.errors import ParameterError
from demux.transforms.base import Grid, Transform, power
from demux.transforms.channels import ICA, PCA
from demux.transforms.components import ICASTFT
from demux.transforms.dct import DCT
from demux.transforms.fft import FFT, ComplexFFT
from demux.transforms.mel import MelBands
from demux.transforms.spatial import ArraySTFT, SpatialDFT
from demux.transforms.stft import STFT, ComplexSTFT
from demux.transforms.wavelet import DWT

TRANSFORMS: dict[str, type[Transform]] = {
    "stft": STFT,
    "fft": FFT,
    "dct": DCT,
    "dwt": DWT,
    "pca": PCA,
    "ica": ICA,
    "ica-stft": ICASTFT,
    "spatial": SpatialDFT,
    "array-stft": ArraySTFT,
    "cfft": ComplexFFT,
    "cstft": ComplexSTFT,
}


def transform_params(name: str) -> list[str]:
    """Keyword parameters the transform called ``name`` accepts besides ``sample_rate``."""
    signature = inspect.signature(_lookup(name).__init__)
    return [p for p in signature.parameters if p not in ("self", "sample_rate")]


def _lookup(name: str) -> type[Transform]:
    if name not in TRANSFORMS:
        close = difflib.get_close_matches(str(name), TRANSFORMS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ParameterError(f"unknown transform {name!r}{hint} (valid: {', '.join(TRANSFORMS)})")
    return TRANSFORMS[name]


def build_transform(name: str, sample_rate: float, **params) -> Transform:
    """The transform registered as ``name``, built with ``sample_rate`` and ``params``.

    Raises:
        ParameterError: unknown name (with the closest valid one) or unknown
            parameters (with the accepted ones); bad values raise from the constructor.
    """
    cls = _lookup(name)
    accepted = transform_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ParameterError(
            f"transform {name!r} has no parameter {', '.join(map(repr, unknown))} "
            f"(accepted: {', '.join(accepted) or 'none'})"
        )
    return cls(sample_rate, **params)


__all__ = [
    "ArraySTFT", "DCT", "DWT", "FFT", "ICA", "ICASTFT", "PCA", "STFT", "TRANSFORMS", "ComplexFFT", "ComplexSTFT", "Grid", "MelBands", "SpatialDFT", "Transform",
    "build_transform", "power", "transform_params",
]
