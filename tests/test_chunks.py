"""Chunked separation: exact reassembly, cross-fades that sum to one, no audible seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import si_sdr_db, tones
from demux.chunks import OverlapAdd, crossfade, overlap_add, plan_chunks, split
from demux.errors import ParameterError
from demux.io import resample
from demux.pipeline import separate, separate_chunks
from demux.recipe import load_recipe
from demux.synth import make


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


def test_overlap_add_region_by_region_is_overlap_add():
    x = torch.randn(1, 2, 5000, generator=torch.Generator().manual_seed(1))
    plan = plan_chunks(5000, size=1200, overlap=300)
    chunks = split(x, plan) * 1.5  # stems are not the signal: the weights must still normalise
    joiner = OverlapAdd(plan)
    regions = [joiner.add(i, chunks[i : i + 1]) for i in range(plan.count)]
    # each region ends where the next chunk starts: nothing handed over is touched again
    assert [r.shape[-1] for r in regions[:-1]] == [b - a for a, b in zip((0, *plan.starts[1:-1]), plan.starts[1:])]
    torch.testing.assert_close(torch.cat(regions, dim=-1), overlap_add(chunks, plan))
    with pytest.raises(ParameterError, match="chunk 1 of 1200 samples: expected chunk 0"):
        OverlapAdd(plan).add(1, chunks[1:2])


def _stationary(fs: int, seconds: float) -> torch.Tensor:
    """``(1, time)``: two steady tones plus white noise (seed 0)."""
    noise = 0.01 * torch.randn(int(fs * seconds), generator=torch.Generator().manual_seed(0))
    return (tones([(440, 0.5), (1500, 0.3)], sample_rate=fs, seconds=seconds) + noise)[None]


def _seam_ratio(stem: torch.Tensor, seams: list[int], *, fs: int, cutoff: float, window: int) -> float:
    """Largest high-passed energy of a ``window``-sample frame at a seam over its neighbours' median.

    A step or kink where chunks meet is broadband: it shows above ``cutoff`` as one
    frame standing out from the frames around it (a chunk's fit may leak a little more
    or less than its neighbour's over its whole length: that is not a seam).
    """
    import scipy.signal

    sos = scipy.signal.butter(8, cutoff, "highpass", fs=fs, output="sos")
    high = torch.from_numpy(scipy.signal.sosfiltfilt(sos, stem.double().numpy()).copy())
    frames = high[..., : high.shape[-1] // window * window].reshape(-1, window).square().mean(1)
    ratios = []
    for seam in seams:
        f = seam // window
        around = torch.cat([frames[f - 6 : f - 1], frames[f + 2 : f + 7]])
        ratios.append(frames[f - 1 : f + 2].max() / around.median())
    return float(max(ratios))


# A seam frame's high-passed energy over its neighbours' median: about 1.3-2 where nothing
# happens (frame-to-frame spread of the leakage), 5 for a step of 3e-4 (64 dB below the tone).
SEAM_BOUND = 3.0


def test_stationary_stems_show_no_seam_discontinuity():
    fs, seconds = 8000, 8.0
    mixture = _stationary(fs, seconds)
    chunked = separate(mixture, fs, "tones-fft", segment=1.0, overlap=0.2)
    plan = plan_chunks(mixture.shape[-1], size=fs, overlap=round(0.2 * fs))
    # where the cross-fades start and end: a chunk's edge, weighed in or out
    seams = sorted({*plan.starts[1:], *(s + plan.size for s in plan.starts[:-1])})
    for name, cutoff in (("low", 2000.0), ("mid", 3000.0)):  # above each stem's band: leakage and seams only
        ratio = _seam_ratio(chunked.stems[name], seams, fs=fs, cutoff=cutoff, window=160)
        assert ratio < SEAM_BOUND, (name, ratio)
        # the measure sees a seam: a step of 3e-4 (64 dB below the 440 Hz tone) at one of them
        stepped = chunked.stems[name].clone()
        stepped[..., seams[3] :] += 3e-4
        assert _seam_ratio(stepped, seams, fs=fs, cutoff=cutoff, window=160) > SEAM_BOUND


def test_chunked_and_whole_file_sdr_agree_within_a_tenth_of_a_db():
    # an STFT is local, so chunking changes only the seams and the fits (tones-fft's own
    # rFFT is not: a 1 s chunk resolves tones 1 Hz apart, the whole signal 0.25 Hz); both
    # fits run to the same convergence (40 steps: 15 leave the whole-signal fit behind)
    scenario = make("multitone", np.random.default_rng(0), seconds=4.0)
    recipe = load_recipe("tones-fft", ["split.fit.max_iter=40", "split.transform.type=stft",
                                       "split.transform.n_fft=256", "split.transform.hop=64"])
    names = list(scenario.sources)
    reference = torch.from_numpy(np.stack([scenario.sources[k] for k in names]))

    def sdr(segment):
        stems = separate(scenario.mixture, scenario.sample_rate, recipe, segment=segment, overlap=0.2).stems
        return torch.tensor([si_sdr_db(stems[k], reference[i]) for i, k in enumerate(names)])

    whole, chunked = sdr(None), sdr(1.0)
    assert whole.min() > 40
    assert (chunked - whole).abs().max() < 0.1, (whole, chunked)


def test_streamed_chunks_read_only_their_span_and_equal_separate():
    fs = 8000
    mixture = _stationary(fs, 5.0)
    spans = []

    def read(start, stop):
        spans.append((start, stop))
        return mixture[:, start:stop].numpy()

    regions = list(separate_chunks(read, mixture.shape[-1], fs, "tones-fft", segment=1.0, overlap=0.2, batch_size=2))
    assert max(stop - start for start, stop in spans) == fs  # one chunk at a time, never the whole signal
    assert [len(r.chunks) for _, reports in regions for r in reports] == [2, 2, 2]
    assert sum(stems["low"].shape[-1] for stems, _ in regions) == mixture.shape[-1]
    joined = {k: torch.cat([stems[k] for stems, _ in regions], dim=-1)[0] for k in regions[0][0]}
    in_memory = separate(mixture, fs, "tones-fft", segment=1.0, overlap=0.2, batch_size=2).stems
    for name, stem in in_memory.items():
        torch.testing.assert_close(joined[name], stem, atol=1e-6, rtol=0)
    torch.testing.assert_close(sum(joined.values()), mixture, atol=1e-5, rtol=0)


def test_chunks_resampled_one_by_one_equal_the_whole_signal_resampled():
    # a recipe at 8 kHz on an 11.025 kHz input: each chunk is resampled from just the input it
    # needs and its stems back as they come; the stems are those of resampling it all at once
    fs, rate = 11025, 8000
    recipe = load_recipe("tones-fft", ["sample_rates=[8000]", "resample_to=8000"])
    mixture = _stationary(fs, 4.0)
    streamed = separate(mixture, fs, recipe, segment=1.0, overlap=0.2).stems
    at_rate = torch.from_numpy(resample(mixture.numpy(), fs, rate))
    stems = separate(at_rate, rate, "tones-fft", segment=1.0, overlap=0.2).stems
    for name, stem in stems.items():
        back = resample(stem.numpy(), rate, fs)[:, : mixture.shape[-1]]
        np.testing.assert_allclose(streamed[name].numpy(), back, atol=1e-5, rtol=0)
