"""Voice-activity prior: Sohn's likelihood ratio, speech presence on bursts in noise, recipe key."""

from __future__ import annotations

import math

import pytest
import torch

from demux.errors import RecipeError
from demux.pipeline import separate, stage_inputs
from demux.priors.activity import activity_bias, bin_log_likelihood_ratio, speech_presence
from demux.recipe import load_recipe
from demux.transforms import STFT

RATE = 16000
ACTIVE = ((0.5, 1.0), (1.6, 2.2), (2.8, 3.3))  # seconds: the bursts of the synthetic talker


def bursts_in_noise(seconds: float = 4.0) -> torch.Tensor:
    """``(1, 1, T)``: white noise plus harmonic bursts (f0 150 Hz, 20 harmonics, 1/h amplitudes)
    in ``ACTIVE``, at 0 dB SNR inside the bursts."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(seconds * RATE)) / RATE
    voice = sum(torch.sin(2 * math.pi * 150 * h * t + h) / h for h in range(1, 21))
    envelope = torch.zeros_like(t)
    for lo, hi in ACTIVE:
        envelope += ((t >= lo) & (t < hi)).float() * torch.sin(math.pi * (t - lo) / (hi - lo)).clamp_min(0) ** 0.5
    voice = voice * envelope
    noise = torch.randn(t.shape, generator=g)
    burst = envelope > 0
    voice = voice * (noise[burst].square().mean() / voice[burst].square().mean()).sqrt()
    return (voice + noise)[None, None]


def test_bin_log_likelihood_ratio_by_hand():
    power = torch.tensor([[0.5, 1.0, math.e, 4.0]])
    llr = bin_log_likelihood_ratio(power, torch.zeros(1))
    assert torch.allclose(llr, torch.tensor([[0.0, 0.0, math.e - 2.0, 3.0 - math.log(4.0)]]))
    # with the noise variance doubled, gamma halves: 4 -> 2
    assert float(bin_log_likelihood_ratio(torch.tensor(4.0), torch.tensor(math.log(2.0)))) == pytest.approx(
        1.0 - math.log(2.0))


def test_speech_presence_sums_the_band_and_holds_over():
    llr = torch.zeros(1, 3, 9)
    llr[0, :2, 4] = 5.0  # one active frame, seen by two in-band bins
    llr[0, 2, 1] = 50.0  # a loud out-of-band bin does not vote
    in_band = torch.tensor([True, True, False])
    p = speech_presence(llr, in_band, threshold=1.0, hangover=2)
    assert float(p[0, 4]) == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item())  # 2 * (5 - 1)
    assert torch.equal(p[0, 2:7], p[0, 4].expand(5))  # held over two frames both ways
    assert float(p[0, 0]) == pytest.approx(torch.sigmoid(torch.tensor(-2.0)).item())  # 2 * (0 - 1)
    assert torch.allclose(activity_bias(torch.tensor([0.0, 0.5, 1.0]), 3.0), torch.tensor([-3.0, -1.5, 0.0]))


def test_activity_prior_finds_the_bursts():
    # Measured on this case: 100 % of the frames inside the bursts' middle 80 % are active
    # (p > 1/2: gamma > -weight / 2) and 0 % of the frames 0.15 s or more away from any burst.
    recipe = load_recipe("speech-enhance", ["split.sources.speech.activity={weight: 2.0}"])
    stage = recipe.stages[0]
    x = bursts_in_noise()
    stft = STFT(RATE, n_fft=512, hop=128)
    coeffs = stft(x)
    found = {}
    inputs, _ = stage_inputs(stage, coeffs, stft, x.shape[-1], recipe.source, found=found)
    F, N = coeffs.shape[-2:]
    assert inputs.prior.shape == (1, 2, F * N)
    speech = list(stage.sources).index("speech")
    gamma = inputs.prior[0, speech].view(F, N)
    assert torch.equal(gamma, gamma[:1].expand(F, N))  # one bias per frame
    assert float(gamma.max()) <= 0.0 and float(gamma.min()) >= -2.0 - 1e-5
    assert float(gamma.min()) < -1.9  # the pauses are pushed down by about the full weight
    times = torch.arange(N) * 128 / RATE
    inside = torch.zeros(N, dtype=torch.bool)
    away = torch.ones(N, dtype=torch.bool)
    for lo, hi in ACTIVE:
        inside |= (times >= lo + 0.1 * (hi - lo)) & (times <= hi - 0.1 * (hi - lo))
        away &= (times < lo - 0.15) | (times > hi + 0.15)
    hit = float((gamma[0, inside] > -1.0).float().mean())
    false_alarm = float((gamma[0, away] > -1.0).float().mean())
    assert hit >= 0.95 and false_alarm <= 0.05, (hit, false_alarm)
    # demux.json's active_fraction: the frames with p > 1/2 (gamma > -weight / 2); the bursts
    # fill 40 % of the 4 s, the hangover widens them (measured 0.475)
    (fraction,) = found["speech"]["active_fraction"]
    assert fraction == pytest.approx(float((gamma[0] > -1.0).float().mean()), abs=1e-3)
    assert fraction == pytest.approx(0.4, abs=0.1)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("{wieght: 1}", r"activity\.wieght: unknown key; did you mean 'weight'"),
        ("{weight: -1}", r"activity\.weight"),
        ("{band: {lo: 4000, hi: 300}}", r"activity\.band"),
        ("{band: {lo: low, hi: 300}}", r"activity\.band\.lo: expected a number"),
        ("{hangover_ms: [1]}", r"activity\.hangover_ms: expected a number"),
    ],
)
def test_activity_key_errors_name_the_key(override, key):
    with pytest.raises(RecipeError, match=key):
        load_recipe("speech-enhance", [f"split.sources.speech.activity={override}"])


def test_activity_needs_a_time_frequency_transform():
    recipe = load_recipe("ecg-wavelet", ["split.sources.ecg.activity={weight: 1.0}"])
    x = torch.randn(1, 1, 3600, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RecipeError, match=r"ecg\.activity"):
        separate(x, 360, recipe)
