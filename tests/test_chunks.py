"""Chunked separation: exact reassembly, cross-fades that sum to one, no audible seams."""

from __future__ import annotations

import pytest
import torch

from conftest import si_sdr_db, tones
from demux.chunks import crossfade, overlap_add, plan_chunks, split
from demux.errors import ParameterError
from demux.pipeline import separate


@pytest.mark.parametrize(
    ("length", "size", "overlap"), [(1000, 300, 50), (1000, 1000, 0), (999, 200, 100), (50, 200, 20), (1050, 1000, 100)]
)
def test_split_then_overlap_add_is_the_identity(length, size, overlap):
    x = torch.randn(2, 3, length, generator=torch.Generator().manual_seed(0))
    plan = plan_chunks(length, size=size, overlap=overlap)
    chunks = split(x, plan)
    assert chunks.shape == (2 * plan.count, 3, plan.size)
    assert plan.starts[0] == 0 and plan.starts[-1] + plan.size == length  # no padding anywhere
    assert all(b - a <= plan.size - plan.overlap for a, b in zip(plan.starts, plan.starts[1:]))
    torch.testing.assert_close(overlap_add(chunks, plan), x)


def test_crossfades_ramp_over_the_overlaps():
    plan = plan_chunks(1000, size=300, overlap=60)
    weights = crossfade(plan, dtype=torch.float64)
    assert weights[1, 0] < 0.01 and weights[0, -1] < 0.01  # real ramps, not a hard cut
    assert weights[0, 0] == 1.0 and weights[-1, -1] == 1.0  # the signal's own ends are not faded
    torch.testing.assert_close(weights[0, -60:] + weights[1, :60], torch.ones(60, dtype=torch.float64))


def test_bad_chunk_plans_are_refused():
    with pytest.raises(ParameterError, match="overlap=200 samples is not in"):
        plan_chunks(1000, size=300, overlap=200)
    with pytest.raises(ParameterError, match="segment=0 s must be > 0"):
        separate(torch.zeros(1, 100), 8000, "tones-fft", segment=0)


def test_chunked_stems_stay_clean_and_show_no_seams():
    fs, seconds = 8000, 6
    refs = {
        "low": tones([(440, 0.5)], sample_rate=fs, seconds=seconds),
        "mid": tones([(1500, 0.3)], sample_rate=fs, seconds=seconds),
    }
    mixture = (refs["low"] + refs["mid"])[None]
    chunked = separate(mixture, fs, "tones-fft", segment=1.0, overlap=0.2, batch_size=3)
    assert len(chunked.stages) == 3  # 7 chunks in batches of 3
    torch.testing.assert_close(sum(chunked.stems.values()), mixture, atol=1e-5, rtol=0)
    for name, ref in refs.items():
        # about 49 dB (the whole-file fit is exact for stationary tones; a chunk's FFT leaks a little)
        assert si_sdr_db(chunked.stems[name], ref) > 40
    # seams and ends: the stem's deviation from the reference stays 40 dB below the tone
    # everywhere, the last chunk included (it is not zero-padded)
    error = (chunked.stems["low"][0] - refs["low"]).abs()
    assert error.max() < 1e-2
