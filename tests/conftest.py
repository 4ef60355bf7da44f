"""Shared fixtures: the real recordings beside the checkout, and small signals made here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The suite's tensors are small: with several OpenMP threads on a 2-core machine the
# threads spin against each other and tiny ops run tens of times slower.
torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


def tones(freqs_amps: list[tuple[float, float]], *, sample_rate: float, seconds: float) -> torch.Tensor:
    """``(time,)`` sum of sines ``amp * sin(2 pi f t)`` with a phase per tone fixed by its frequency."""
    t = torch.arange(int(sample_rate * seconds), dtype=torch.float64) / sample_rate
    out = torch.zeros_like(t)
    for f, a in freqs_amps:
        out += a * torch.sin(2 * math.pi * f * t + f % 1.7)
    return out.float()


def si_sdr_db(estimate, reference) -> float:
    """Scale-invariant SDR in dB, written out here so the tests do not lean on demux.metrics.

    Complex (I/Q) signals take a complex scale ``<e, r> / ||r||^2`` (blind to carrier phase).
    """
    estimate = torch.as_tensor(estimate).flatten().to(torch.complex128)
    reference = torch.as_tensor(reference).flatten().to(torch.complex128)
    target = (torch.vdot(reference, estimate) / torch.vdot(reference, reference)) * reference
    return float(10 * torch.log10(target.abs().square().sum() / (estimate - target).abs().square().sum()))
