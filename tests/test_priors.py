"""Prior terms: support in Hz, wavelet levels, directions, f0 tracking and combs, noise floors, masks, locks."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tones
from demux.errors import InputError, RecipeError
from demux.priors.combine import apply_locks, sigmoid_masks, softmax_masks
from demux.priors.harmonic import comb_log_odds, f0_summary, track_f0
from demux.priors.learned import load_offsets
from demux.priors.noise import (SMOOTH_S, group_frame_mean, group_quantile, minimum_bias, noise_log_variance,
                                tracked_log_variance)
from demux.pipeline import separate, stage_inputs
from demux.priors.support import band_membership, direction_membership, level_membership, support_log_odds
from demux.recipe import load_recipe
from demux.transforms import STFT


def test_band_membership_is_one_inside_zero_outside_and_half_at_the_edges():
    freq = torch.tensor([0.0, 400.0, 500.0, 700.0, 1000.0, 1500.0])
    member = band_membership(freq, [(500.0, 1000.0, 40.0)], resolution_hz=1.0)
    assert member[3] > 0.999 and member[0] < 1e-10 and member[5] < 1e-10
    assert member[2] == pytest.approx(0.5, abs=1e-3) and member[4] == pytest.approx(0.5, abs=1e-3)
    log_odds = support_log_odds(member, outside=-8.0)
    assert log_odds[3] == pytest.approx(0.0, abs=1e-2) and log_odds[0] == pytest.approx(-8.0)


def test_several_bands_take_the_union():
    freq = torch.tensor([100.0, 300.0, 600.0])
    member = band_membership(freq, [(50.0, 150.0, 0.0), (550.0, 650.0, 0.0)], resolution_hz=10.0)
    assert member[0] > 0.99 and member[2] > 0.99 and member[1] < 1e-6


def test_level_membership_follows_wavedec_order():
    group = torch.arange(4)  # [cA3, cD3, cD2, cD1]
    assert level_membership(group, [1], n_groups=4).tolist() == [0, 0, 0, 1]
    assert level_membership(group, [3, 4], n_groups=4).tolist() == [1, 1, 0, 0]


def test_direction_membership_peaks_at_the_direction():
    angles = torch.arange(-90.0, 91.0, 5.0)
    member = direction_membership(angles, direction=30.0, width=10.0)
    assert angles[member.argmax()] == 30.0
    assert member[angles == 50.0].item() == pytest.approx(math.exp(-2.0), rel=1e-5)


def test_f0_tracking_finds_a_harmonic_fundamental():
    fs, f0 = 16000, 180.0
    x = tones([(f0 * h, 0.5 / h) for h in range(1, 8)], sample_rate=fs, seconds=0.5)
    stft = STFT(fs, n_fft=2048, hop=256)
    power = stft(x[None, None]).abs().square()[:, 0].double()
    freqs = stft.grid(x.shape[0]).freq_hz.flatten().double()
    track, voicing = track_f0(power, freqs, f0_min=70, f0_max=500)
    middle = track[0, 3:-3]
    assert torch.all((middle - f0).abs() / f0 < 0.03)
    assert voicing[0, 3:-3].min() > 0.5
    (summary,) = f0_summary(track, voicing)  # what demux.json reports: measured 179.9 Hz
    assert abs(summary["f0_median_hz"] - f0) / f0 < 0.03


def _gated_tone_in_noise(f0: float, snr_db: float, *, seed: int, fs: int = 16000, seconds: float = 2.0):
    """A harmonic tone present in the middle half only, in white noise at ``snr_db`` (re the tone
    while on): the ``(1, 1, time)`` signal, and which frames of a 2048/256 STFT lie wholly inside
    the tone and wholly outside it."""
    n, n_fft, hop = int(fs * seconds), 2048, 256
    x = tones([(f0 * h, 0.5 / h) for h in range(1, 8)], sample_rate=fs, seconds=seconds).double()
    x[: n // 4] = 0
    x[3 * n // 4:] = 0
    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    noise *= (x[n // 4: 3 * n // 4].square().mean() / 10 ** (snr_db / 10)).sqrt()
    centre = torch.arange(n // hop + 1) * hop
    on = (centre - n_fft // 2 >= n // 4) & (centre + n_fft // 2 <= 3 * n // 4)
    off = (centre + n_fft // 2 <= n // 4) | (centre - n_fft // 2 >= 3 * n // 4)
    return (x + noise).float()[None, None], on, off


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_f0_voicing_follows_a_gated_tone_in_noise(snr_db):
    for seed in range(2):
        x, on, off = _gated_tone_in_noise(220.0, snr_db, seed=seed)
        stft = STFT(16000, n_fft=2048, hop=256)
        power = stft(x).abs().square()[:, 0].double()
        freqs = stft.grid(x.shape[-1]).freq_hz.flatten().double()
        track, voicing = track_f0(power, freqs, f0_min=70, f0_max=500, n_harmonics=12)
        voiced = voicing[0] > 0.5
        # the tone is on for half the signal. Measured 0.508 (0 dB) and 0.524 (10 dB); the
        # tracker before its noise-normalised voicing test said 0.82-0.90 and 0.95-0.99
        assert abs(f0_summary(track, voicing)[0]["voiced_fraction"] - 0.5) < 0.05
        assert voiced[off].double().mean() < 0.02  # false alarms on noise-only frames: measured 0 of 56
        assert voiced[on].double().mean() > 0.95  # measured 1.0
        assert torch.all((track[0, on] - 220.0).abs() / 220.0 < 0.01)  # measured 0.43% at most


def test_f0_voicing_rarely_fires_on_noise_alone():
    fs, n = 16000, 16000 * 10
    stft = STFT(fs, n_fft=2048, hop=256)
    freqs = stft.grid(n).freq_hz.flatten().double()
    white = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    brown = torch.cumsum(white, 0)
    brown -= brown.mean()
    for x in (white, brown):
        power = stft(x.float()[None, None]).abs().square()[:, 0].double()
        _, voicing = track_f0(power, freqs, f0_min=70, f0_max=500, n_harmonics=12)
        # the stated bound of VOICING_THRESHOLD (at most 0.3% of noise frames); measured 0 and 1 of 626
        assert (voicing > 0.5).double().mean() < 0.01


def test_the_voicing_gate_takes_the_comb_off_noise_only_frames():
    # audio-stft's pitch stage on the gated tone at 10 dB: with `voicing_gate` the pitched
    # source's prior is ~0 on noise-only frames (measured max |log-odds| 0.18), without it the
    # comb's +-3 holds there too (measured 3.0); on the tone's frames both give the comb
    # (measured max difference 3e-4).
    x, on, off = _gated_tone_in_noise(220.0, 10.0, seed=0)
    stft = STFT(16000, n_fft=2048, hop=256)
    coeffs = stft(x)
    F, N = coeffs.shape[-2:]
    priors = {}
    for gate in (False, True):
        recipe = load_recipe("audio-stft", [f"pitch.sources.pitched.harmonic.voicing_gate={str(gate).lower()}"])
        stage = recipe.stages[-1]
        inputs, _ = stage_inputs(stage, coeffs, stft, x.shape[-1], recipe.source)
        priors[gate] = inputs.prior[0, list(stage.sources).index("pitched")].view(F, N)
    assert priors[True][:, off].abs().max() < 0.5
    assert priors[False][:, off].abs().max() > 2.9
    assert torch.allclose(priors[True][:, on], priors[False][:, on], atol=0.05)
    with pytest.raises(RecipeError, match=r"pitch\.sources\.pitched\.harmonic\.voicing_gate: expected true or false"):
        load_recipe("audio-stft", ["pitch.sources.pitched.harmonic.voicing_gate=3"])


def test_f0_summary_takes_the_voiced_frames_only():
    f0 = torch.tensor([[100.0, 200.0, 300.0, 400.0], [100.0, 200.0, 300.0, 400.0]])
    voicing = torch.tensor([[0.9, 0.1, 0.8, 0.7], [0.0, 0.2, 0.3, 0.4]])
    assert f0_summary(f0, voicing) == [{"f0_median_hz": 300.0, "voiced_fraction": 0.75},
                                       {"f0_median_hz": None, "voiced_fraction": 0.0}]


def test_comb_is_positive_on_the_teeth_and_negative_between():
    freqs = torch.linspace(0, 2000, 2001)
    log_odds = comb_log_odds(freqs, torch.tensor([[200.0]]), torch.tensor([[1.0]]), n_harmonics=5, width=0.03, strength=4.0)
    assert log_odds.shape == (1, 2001, 1)
    for h in range(1, 6):
        assert log_odds[0, 200 * h, 0] == pytest.approx(4.0, abs=1e-4)
    assert log_odds[0, 300, 0] == pytest.approx(-4.0, abs=1e-3)
    unvoiced = comb_log_odds(freqs, torch.tensor([[200.0]]), torch.tensor([[0.0]]), n_harmonics=5, width=0.03, strength=4.0)
    assert torch.equal(unvoiced, torch.zeros_like(unvoiced))  # no comb where there is no f0


@pytest.mark.parametrize("estimate", ["mad", "minimum"])
@pytest.mark.parametrize("complex_coeffs", [False, True])
def test_noise_floor_recovers_the_variance_of_white_noise(estimate, complex_coeffs):
    g = torch.Generator().manual_seed(0)
    sigma2 = torch.tensor([0.5, 2.0, 8.0])
    n = 20000
    group = torch.arange(3).repeat_interleave(n)
    if complex_coeffs:
        c = torch.complex(torch.randn(3 * n, generator=g), torch.randn(3 * n, generator=g)) * (sigma2.repeat_interleave(n) / 2).sqrt()
        power = c.abs().square()
    else:
        power = (torch.randn(3 * n, generator=g) * sigma2.repeat_interleave(n).sqrt()).square()
    log_var = noise_log_variance(power[None], group, 3, estimate=estimate, percentile=20.0, complex_coeffs=complex_coeffs)
    assert torch.allclose(log_var[0].exp(), sigma2, rtol=0.05)


def test_group_quantile_matches_torch_per_group():
    power = torch.rand(2, 30, generator=torch.Generator().manual_seed(1))
    group = torch.arange(30) % 4
    out = group_quantile(power, group, 5, 0.5)
    for g in range(4):
        assert torch.allclose(out[:, g], power[:, group == g].quantile(0.5, dim=1))
    assert torch.allclose(out[:, 4], power.quantile(0.5, dim=1))  # an empty group falls back to all


def test_group_quantile_beyond_torch_quantile_limit_interpolates_the_same(monkeypatch):
    # torch.quantile refuses more than 2**24 values (10 s of radio-iq's STFT holds 20M per item):
    # the selection path must give its linear interpolation; a lowered limit takes that path here
    import demux.priors.noise as noise

    power = torch.rand(2, 1001, generator=torch.Generator().manual_seed(4))
    group = torch.arange(1001) % 3
    expected = group_quantile(power, group, 4, 0.2)
    monkeypatch.setattr(noise, "_QUANTILE_MAX", 100)
    assert torch.allclose(group_quantile(power, group, 4, 0.2), expected, rtol=0, atol=1e-7)
    assert not torch.allclose(expected[:, :3], power.min(1, keepdim=True).values.expand(2, 3))  # not trivial


def test_softmax_masks_sum_to_one():
    z = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(softmax_masks(z).sum(1), torch.ones(2, 10))


def test_sigmoid_masks_respect_the_cross_source_constraint():
    z = 5 * torch.randn(2, 4, 50, generator=torch.Generator().manual_seed(3))
    eps = 0.05
    m = sigmoid_masks(z, residual=3, eps=eps)
    targets = m[:, :3].sum(1)
    assert torch.all(targets <= 1 + eps + 1e-6)
    assert torch.all(m >= 0)
    assert torch.allclose(m[:, 3], torch.clamp(1 - targets, min=0))
    assert (targets > 1).any()  # the slack is used, so the check above is not vacuous


def test_locks_make_the_locked_band_one_hot():
    masks = torch.full((1, 2, 4), 0.5)
    locks = torch.tensor([[False, True, False, False], [False, False, False, True]])
    out = apply_locks(masks, locks)
    assert out[0, :, 1].tolist() == [1.0, 0.0] and out[0, :, 3].tolist() == [0.0, 1.0]
    assert out[0, :, 0].tolist() == [0.5, 0.5]


def test_learned_offsets_round_trip_and_refuse_other_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "params.safetensors"
    save_file({"voice": torch.arange(4.0)}, str(path))
    assert torch.equal(load_offsets(path, key="voice", n_groups=4), torch.arange(4.0))
    with pytest.raises(InputError, match="has no tensor 'noise'"):
        load_offsets(path, key="noise", n_groups=4)
    with pytest.raises(InputError, match=r"has shape \(4,\), expected \(5,\)"):
        load_offsets(path, key="voice", n_groups=5)
    pickle_file = tmp_path / "model.pt"
    torch.save({"voice": torch.zeros(4)}, pickle_file)
    with pytest.raises(InputError, match="not a safetensors file"):
        load_offsets(pickle_file, key="voice", n_groups=4)
    with pytest.raises(InputError, match="no such learned-parameters file"):
        load_offsets(tmp_path / "missing.safetensors", key="voice", n_groups=4)


def test_tracked_floor_matches_a_hand_computed_case():
    # alpha 0.5, starting from the mean of the first 3 frames (14/3): P = 13/3, 19/6, 67/12,
    # 79/24, 223/48; centred minima over 3 frames: 19/6, 19/6, 19/6, 79/24, 79/24.
    # Bias: D = 3, Q_eq = 2 * 1.5 / 0.5 = 6, M(3) = 0.26 + 0.22 / 3 = 1/3, Q~ = (6 - 2/3) / (2/3) = 8,
    # B_min = 1 + 2 * 2 / 8 = 1.5; the end frames' windows hold 2 frames: M(2) = 0.26,
    # Q~ = (6 - 0.52) / 0.74, B_min = 1 + 2 / Q~ = 1.27.
    cells = torch.tensor([[[4.0, 2.0, 8.0, 1.0, 6.0]]])
    out = tracked_log_variance(cells, window=3, alpha=0.5, dof=2.0)
    end = 1 + 2 * 0.74 / 5.48
    expected = torch.tensor([[[end * 19 / 6, 1.5 * 19 / 6, 1.5 * 19 / 6, 1.5 * 79 / 24, end * 79 / 24]]])
    assert torch.allclose(out.exp(), expected, rtol=1e-5)
    assert minimum_bias(1, 2.0) == 1.0


def test_tracked_floor_follows_a_noise_step_that_the_static_floor_cannot():
    # White noise whose level steps up 10 dB at 3 s, STFT 512/128 at 16 kHz, 1.5 s window.
    # Measured (median over bins, dB over the quiet half's mean power): tracked floor -0.05 dB
    # at 1.5 s and 9.89 dB at 3.9 s (0.9 s after the step: within the window); the static
    # 10th-percentile floor, one value per bin, 2.8 dB everywhere (7.2 dB short after the step).
    rate, hop = 16000, 128
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 6 * rate, generator=g)
    x[..., 3 * rate :] *= math.sqrt(10.0)
    stft = STFT(rate, n_fft=512, hop=hop)
    p = stft(x).abs().square()[:, 0]  # (1, F, N): unit variance per bin before the step (up to the window gain)
    F, N = p.shape[1:]
    unit = p[..., : N // 2 - 20].mean()  # the mean power before the step
    hop_s = hop / rate
    tracked = tracked_log_variance(p, window=round(1.5 / hop_s), alpha=math.exp(-hop_s / SMOOTH_S), dof=2.0)
    db = lambda v: 10 * float(v.median()) / math.log(10) - 10 * math.log10(float(unit))
    before, after = db(tracked[0, 2:-2, round(1.5 / hop_s)]), db(tracked[0, 2:-2, round(3.9 / hop_s)])
    assert abs(before) < 1.5 and abs(after - 10.0) < 1.5
    group, frame = torch.arange(F).repeat_interleave(N), torch.arange(N).repeat(F)
    static = noise_log_variance(p.reshape(1, -1), group, F, estimate="minimum", percentile=10.0, complex_coeffs=True)
    assert abs(db(static[0, 2:-2]) - 10.0) > 5.0  # one floor per bin: it stays with the quiet half
    # group_frame_mean with one coefficient per cell is the power itself
    assert torch.allclose(group_frame_mean(p.reshape(1, -1), group, frame, F, N), p)


def test_noise_floor_track_s_is_validated_with_its_key_path():
    with pytest.raises(RecipeError, match=r"noise\.noise_floor\.track_s"):
        load_recipe("speech-enhance", ["split.sources.noise.noise_floor={track_s: -1}"])
    with pytest.raises(RecipeError, match=r"noise\.noise_floor\.track_s"):
        load_recipe("speech-enhance", ["split.sources.noise.noise_floor={track_s: 1.5, estimate: mad}"])
    with pytest.raises(RecipeError, match=r"noise\.noise_floor\.track_s: expected a number"):
        load_recipe("speech-enhance", ["split.sources.noise.noise_floor={track_s: soon}"])


def test_a_tracked_floor_enters_the_prior_as_its_broadband_course():
    # speech-enhance's noise with a tracked floor, on white noise stepping up 10 dB at 3 s:
    # the prior holds one value per frame, 10 dB (2.30 nats) higher after the step than
    # before (measured 2.30), and level's anchor is the floor's mean over frames.
    recipe = load_recipe("speech-enhance", ["split.sources.noise.noise_floor={track_s: 1.5, weight: 0}"])
    stage = recipe.stages[0]
    x = torch.randn(1, 1, 6 * 16000, generator=torch.Generator().manual_seed(0))
    x[..., 3 * 16000 :] *= math.sqrt(10.0)
    stft = STFT(16000, n_fft=512, hop=128)
    coeffs = stft(x)
    inputs, _ = stage_inputs(stage, coeffs, stft, x.shape[-1], recipe.source)
    F, N = coeffs.shape[-2:]
    noise = list(stage.sources).index("noise")
    course = inputs.prior[0, noise].view(F, N)
    assert torch.equal(course, course[:1].expand(F, N))
    frame = lambda seconds: round(seconds * 16000 / 128)
    assert float(course[0, frame(4.5)] - course[0, frame(1.5)]) == pytest.approx(math.log(10.0), abs=0.3)
    assert float(course[0].mean()) == pytest.approx(0.0, abs=1e-4)
    assert inputs.anchor[0, noise].shape == (F,)
    whole = load_recipe("tones-fft", ["split.sources.low.noise_floor={track_s: 1.0}"])  # one frame: nothing to track
    with pytest.raises(RecipeError, match=r"low\.noise_floor\.track_s: a tracked floor needs a transform with frames"):
        separate(torch.randn(1, 8000), 8000, whole)
