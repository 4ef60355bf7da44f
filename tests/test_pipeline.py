"""The separation engine on mixtures with exact ground truth made here.

Floors are set well under what the engine reaches today (noted beside each) and
well over what the mixture itself scores, so a regression in priors, model or
controller fails here.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import si_sdr_db, tones
from demux.errors import ParameterError, RecipeError
from demux.model import ModelInputs, SourceBlocks, VarianceModel
from demux.recipe import load_recipe, parse_recipe
from demux.pipeline import separate

FS = 8000


def recipe_from(stages: dict, **top):
    return parse_recipe({"name": "test", "stages": stages, **top}, source="<test>")


def test_disjoint_bands_separate_and_sum_to_the_mixture():
    refs = {
        "low": tones([(440, 0.5), (700, 0.3)], sample_rate=FS, seconds=1),
        "mid": tones([(1500, 0.4)], sample_rate=FS, seconds=1),
        "high": tones([(3000, 0.3), (3300, 0.2)], sample_rate=FS, seconds=1),
    }
    mixture = sum(refs.values())[None]
    result = separate(mixture, FS, "tones-fft")
    for name, ref in refs.items():
        # reaches about 60 dB; the mixture scores below 0 dB against each
        assert si_sdr_db(result.stems[name], ref) > 30, name
        assert si_sdr_db(mixture, ref) < 3
    total = sum(result.stems.values())
    assert torch.allclose(total, mixture, atol=1e-5)
    assert result.stems["low"].shape == mixture.shape


def test_tones_and_a_chirp_in_the_stft_domain():
    t = torch.arange(FS) / FS
    chirp = 0.4 * torch.sin(2 * math.pi * (1500 * t + 1000 * t**2))  # 1.5 -> 3.5 kHz
    tone = tones([(300, 0.5), (520, 0.3)], sample_rate=FS, seconds=1)
    recipe = recipe_from(
        {
            "split": {
                "transform": {"type": "stft", "n_fft": 256, "hop": 64},
                "sources": {"tones": {"band": {"lo": 0, "hi": 1000}}, "chirp": {"band": {"lo": 1000, "hi": 4000}}},
                "fit": {"max_iter": 10},
            }
        }
    )
    result = separate((tone + chirp)[None], FS, recipe)
    assert si_sdr_db(result.stems["tones"], tone) > 20  # about 31 dB
    assert si_sdr_db(result.stems["chirp"], chirp) > 20
    assert torch.allclose(sum(result.stems.values()), (tone + chirp)[None], atol=1e-5)


def ecg_like(seconds: float, fs: float = 360.0):
    """A pulse train with QRS-, S- and T-like Gaussian bumps at 72 beats per minute."""
    t = torch.arange(int(fs * seconds)) / fs
    ecg = torch.zeros_like(t)
    for beat in torch.arange(0.4, seconds, 0.83):
        ecg += torch.exp(-0.5 * ((t - beat) / 0.012) ** 2) - 0.15 * torch.exp(-0.5 * ((t - beat - 0.03) / 0.01) ** 2)
        ecg += 0.2 * torch.exp(-0.5 * ((t - beat - 0.25) / 0.05) ** 2)
    return t, ecg


def snr_db(estimate, reference):
    return float(10 * torch.log10(reference.square().sum() / (estimate - reference).square().sum()))


def test_ecg_pulse_train_against_broadband_noise_and_wander():
    t, ecg = ecg_like(10)
    noise = 0.15 * torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
    wander = 0.3 * torch.sin(2 * math.pi * 0.2 * t)
    mixture = (ecg + noise + wander)[None]
    result = separate(mixture, 360, "ecg-wavelet")
    # in: 1.2 dB (wander left out) ; out: about 6 dB
    assert snr_db(result.stems["ecg"][0], ecg) > snr_db(ecg + noise, ecg) + 3
    assert snr_db(result.stems["baseline"][0], wander) > 6  # about 11 dB
    assert torch.allclose(sum(result.stems.values()), mixture, atol=1e-5)
    # the beat prior's R peaks, as demux.json reports them: measured 72.3 bpm, every beat within 6 ms
    found = result.stages[0].found["ecg"]
    truth = torch.arange(0.4, 10, 0.83)
    assert found["n_beats"] == [len(truth)] and abs(found["heart_rate_bpm"][0] - 60 / 0.83) < 1.0
    assert float((torch.tensor(found["beat_times_s"][0]) - truth).abs().max()) < 0.015


def test_harmonic_against_clicks_with_anisotropic_smoothness():
    n = FS
    harmonic = tones([(220, 0.3), (440, 0.2), (660, 0.1)], sample_rate=FS, seconds=1)
    clicks = torch.zeros(n)
    g = torch.Generator().manual_seed(1)
    for k in range(0, n, 2000):
        clicks[k : k + 30] = 0.8 * torch.randn(30, generator=g)
    recipe = load_recipe(
        "audio-stft", ["hpss.fit.max_iter=20", "hpss.sources.harmonic.smooth.time=4", "hpss.sources.noisy.smooth.freq=4"]
    )
    stage = recipe.stages[0]
    recipe = type(recipe)(name="hpss", stages=(stage,), sample_rates=())
    result = separate((harmonic + clicks)[None], FS, recipe)
    assert si_sdr_db(result.stems["harmonic"], harmonic) > 15  # about 24 dB
    assert si_sdr_db(result.stems["noisy"], clicks) > 6  # about 13 dB


def test_locked_band_goes_whole_to_its_source():
    low = tones([(300, 0.5)], sample_rate=FS, seconds=1)
    primary = tones([(1500, 0.01)], sample_rate=FS, seconds=1)  # weak: energy alone would not win it
    noise = 0.05 * torch.randn(FS, generator=torch.Generator().manual_seed(2))
    recipe = load_recipe("radio-fft")
    result = separate((low + primary + noise)[None], FS, recipe)
    spectrum = torch.fft.rfft(result.stems["primary"][0])
    mixture_spectrum = torch.fft.rfft((low + primary + noise))
    freqs = torch.fft.rfftfreq(FS, 1 / FS)
    inside = (freqs > 1100) & (freqs < 1900)
    assert torch.allclose(spectrum[inside], mixture_spectrum[inside], atol=1e-3)


def test_edge_radius_weighs_the_masks_of_the_bins_at_band_edges(monkeypatch):
    """radio-fft's ``fit.edge_radius`` (width 0, scale 0.5): the fit's norm weighs by 4 the
    masks of every source at the bins that straddle an edge of a band or lock (1000 and
    2000 Hz at 1 Hz bins), and by 1 every other mask; without the key, no weights."""
    import demux.pipeline as pipeline

    seen, real = [], pipeline.minimize

    def spy(*args, **kwargs):
        seen.append(kwargs["norm_weight"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "minimize", spy)
    noise = 0.01 * torch.randn(FS, generator=torch.Generator().manual_seed(0))
    x = (tones([(1500, 0.5)], sample_rate=FS, seconds=1) + noise)[None]
    separate(x, FS, "radio-fft")
    separate(x, FS, load_recipe("radio-fft", ["split.fit.edge_radius=null"]))
    weight, none = seen
    assert none is None
    freq = torch.fft.rfftfreq(FS, 1 / FS)
    weight = weight.reshape(3, freq.numel())
    for per_source in weight:
        assert freq[per_source != 1].tolist() == [1000.0, 2000.0]
        assert per_source[per_source != 1].tolist() == [4.0, 4.0]


def test_sigmoid_combiner_keeps_stems_summing_to_the_mixture():
    a = tones([(500, 0.5)], sample_rate=FS, seconds=1)
    b = tones([(2000, 0.5)], sample_rate=FS, seconds=1)
    recipe = recipe_from(
        {
            "split": {
                "transform": {"type": "stft", "n_fft": 256, "hop": 64},
                "combiner": "sigmoid",
                "sources": {
                    "a": {"band": {"lo": 300, "hi": 700}},
                    "b": {"band": {"lo": 1800, "hi": 2200}},
                    "residual": {"stationary": True},
                },
                "fit": {"max_iter": 8},
            }
        }
    )
    result = separate((a + b)[None], FS, recipe)
    assert torch.allclose(sum(result.stems.values()), (a + b)[None], atol=1e-4)
    assert si_sdr_db(result.stems["a"], a) > 15
    assert si_sdr_db(result.stems["b"], b) > 15


def test_same_seed_gives_identical_stems_and_batches_work():
    x = (tones([(440, 0.5)], sample_rate=FS, seconds=0.5) + 0.1 * torch.randn(FS // 2, generator=torch.Generator().manual_seed(3)))
    one = separate(x[None], FS, "tones-fft", seed=5)
    two = separate(x[None], FS, "tones-fft", seed=5)
    for name in one.stems:
        assert torch.equal(one.stems[name], two.stems[name])
    batch = separate(torch.stack([x[None], 0.5 * x[None]]), FS, "tones-fft", seed=5)
    assert batch.stems["low"].shape == (2, 1, FS // 2)
    assert torch.allclose(sum(batch.stems.values()), torch.stack([x[None], 0.5 * x[None]]), atol=1e-5)


def test_trajectory_and_reports_are_recorded():
    x = tones([(440, 0.5), (2000, 0.2)], sample_rate=FS, seconds=0.5)[None]
    result = separate(x, FS, "tones-fft")
    report = result.stages[0]
    assert report.sources == ["low", "mid", "high"]
    steps = report.trajectory["step"]
    assert len(steps) == report.n_iter > 0
    for key in ("objective", "rho", "radius", "mask_change", "dropout", "accepted"):
        assert len(report.trajectory[key]) == len(steps)
    accepted = [i for i, a in enumerate(report.trajectory["accepted"]) if a[0]]
    for i in accepted:  # the trust region holds on the masks at every accepted step
        assert report.trajectory["mask_change"][i][0] <= 1.25 * report.trajectory["radius"][i][0] + 1e-9
    assert abs(sum(v[0] for v in report.energy_share.values()) - 1) < 1e-4


def test_what_the_priors_found_is_per_item_and_follows_a_batch_split():
    # a batch of two items: a line prior finds each item's own tone (measured exactly 700 and 1300 Hz,
    # 65.2 dB over the noise, as line_snr_db predicts), and selecting an item keeps its lines only
    recipe = recipe_from({"split": {"transform": {"type": "fft"}, "sources": {
        "tone": {"lines": {"max_lines": 2}, "stationary": True}, "rest": {"stationary": True}},
        "fit": {"max_iter": 1}}})
    noise = 0.01 * torch.randn(2, 1, FS, generator=torch.Generator().manual_seed(4))
    x = torch.stack([tones([(700, 0.5)], sample_rate=FS, seconds=1), tones([(1300, 0.5)], sample_rate=FS, seconds=1)])
    report = separate(x[:, None] + noise, FS, recipe).stages[0]
    lines = report.found["tone"]["lines_hz"]
    assert len(lines) == 2 and [len(item) for item in lines] == [1, 1]
    assert abs(lines[0][0] - 700) < 0.1 and abs(lines[1][0] - 1300) < 0.1  # bins are 1 Hz
    assert report.select([1]).found == {"tone": {key: [v[1]] for key, v in report.found["tone"].items()}}
    assert "rest" not in report.found  # no prior that finds things


def test_unserved_sample_rate_is_refused_or_resampled():
    x = tones([(100, 0.5)], sample_rate=1000, seconds=1)[None]
    with pytest.raises(ParameterError, match="sample rate 1000 Hz is not served by recipe 'tones-fft'"):
        separate(x, 1000, load_recipe("tones-fft").__class__(**{**load_recipe("tones-fft").__dict__, "sample_rates": (8000.0,)}))
    _, ecg = ecg_like(10, fs=250)
    result = separate(ecg[None], 250, "ecg-wavelet")  # served by resampling to 360 Hz and back
    assert result.stems["ecg"].shape == (1, ecg.shape[0])
    assert torch.allclose(sum(result.stems.values())[0], ecg, atol=1e-2)


def test_wavelet_levels_deeper_than_the_signal_allow_are_named():
    recipe = load_recipe("ecg-wavelet")
    with pytest.raises(RecipeError, match=r"stages\.split\.transform"):
        separate(torch.zeros(1, 100) + 0.1, 360, recipe)


def test_model_gradients_flow_in_float64():
    torch.manual_seed(0)
    B, S, Kf = 1, 2, 12
    power = torch.rand(B, Kf, dtype=torch.float64) + 0.1
    inputs = ModelInputs(
        power=power,
        log_power=torch.log(power),
        local_energy=torch.log(power).roll(1, dims=1),
        prior=torch.zeros(B, S, Kf, dtype=torch.float64),
        support=torch.rand(S, Kf, dtype=torch.float64),
        locks=torch.zeros(S, Kf, dtype=torch.bool),
        group=torch.arange(Kf) % 3,
        n_groups=3,
        frame=torch.arange(Kf) // 3,
        n_frames=4,
        grid_shape=(1, 3, 4),
        anchor=torch.zeros(B, S, 3, dtype=torch.float64),
        learned=torch.zeros(S, 3, dtype=torch.float64),
    )
    blocks = [
        SourceBlocks(gain=True, detail=True, energy=(1.0, 0.5), smooth_time=1.0, smooth_freq=0.0, anchor_weight=0.0),
        SourceBlocks(gain=False, detail=False, energy=None, smooth_time=0.0, smooth_freq=1.0, anchor_weight=2.0),
    ]
    model = VarianceModel(blocks, inputs, combiner="softmax", residual=None)
    theta = (model.initial().double() + 0.1 * torch.randn(B, model.n_params, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda th: model.objective(th), (theta,))
    assert torch.autograd.gradcheck(lambda th: model.masks(th), (theta,))


def test_complex_radio_capture_primary_locked_and_bursts_found():
    import numpy as np

    from demux.synth import make

    scenario = make("radio", np.random.default_rng(0), seconds=0.02)
    result = separate(scenario.mixture, scenario.sample_rate, "radio-iq")
    secondary = scenario.sources["qpsk"] + scenario.sources["ofdm"]
    assert result.stems["primary"].dtype == torch.complex64
    # the mixture scores about 4 dB against the primary and 0 dB against the secondary users
    primary_gain = si_sdr_db(result.stems["primary"], scenario.sources["primary"]) - si_sdr_db(
        scenario.mixture, scenario.sources["primary"]
    )
    assert primary_gain > 10
    assert si_sdr_db(result.stems["secondary"], secondary) > 12
    total = sum(result.stems.values())
    assert torch.allclose(total, torch.from_numpy(scenario.mixture), atol=1e-4)


def test_radar_clutter_and_moving_target_in_slow_time_doppler():
    import numpy as np

    from demux.synth import make

    scenario = make("radar-mti", np.random.default_rng(0))
    result = separate(scenario.mixture, scenario.sample_rate, "radar-doppler")
    mixture_vs_target = si_sdr_db(scenario.mixture, scenario.sources["targets"])  # about -36 dB
    assert si_sdr_db(result.stems["targets"], scenario.sources["targets"]) > mixture_vs_target + 25
    assert si_sdr_db(result.stems["clutter"], scenario.sources["clutter"]) > 30  # about 36 dB
    # the line prior's lines, as demux.json reports them: measured -505.73 Hz for -505.726, 40.8 dB
    # for 41.3 (a 10 dB per-pulse SNR plus the Hann-tapered coherent gain over 2000 pulses)
    found = result.stages[0].found["targets"]
    (truth,) = [target["doppler_hz"] for target in scenario.params["targets"]]
    n = scenario.mixture.shape[-1]
    assert len(found["lines_hz"][0]) == 1 and abs(found["lines_hz"][0][0] - truth) < 0.1 * scenario.sample_rate / n
    assert abs(found["lines_snr_db"][0][0] - (10 + 10 * math.log10(2 / 3 * n))) < 1.5


def test_complex_input_needs_a_two_sided_transform_and_real_input_no_negative_bands():
    iq = torch.randn(1, 2000, dtype=torch.complex64)
    with pytest.raises(RecipeError, match=r"stages\.split\.transform\.type: complex \(I/Q\) input needs a two-sided"):
        separate(iq, 8000, "tones-fft")
    with pytest.raises(RecipeError, match=r"clutter\.bands\.0\.lo: -25 Hz: negative frequencies need complex"):
        separate(torch.randn(1, 2000), 2000, "radar-doppler")


def test_a_warm_start_continues_where_a_fit_ended():
    from demux.pipeline import run_stage

    x = (tones([(440, 0.5), (2000, 0.2)], sample_rate=FS, seconds=0.5) + 0.01 * torch.randn(FS // 2, generator=torch.Generator().manual_seed(4)))[None, None]
    stage = load_recipe("tones-fft", ["split.fit.max_iter=3"]).stages[0]
    _, cold = run_stage(stage, x, FS, seed=0)
    _, warm = run_stage(stage, x, FS, seed=0, warm=cold.end)
    assert cold.end.theta.shape == warm.end.theta.shape
    # the second fit starts where the first ended: its first objective is the first fit's last
    assert warm.trajectory["objective"][0][0] <= cold.trajectory["objective"][0][0]
    assert warm.loss[0] <= cold.loss[0] + 1e-6
    assert warm.trajectory["radius"][0][0] == pytest.approx(min(max(cold.end.radius, 1e-3), stage.fit.radius_max))


@pytest.mark.parametrize("mode", ["whole", "chunks", "online"])
def test_recipe_stems_are_sums_of_leaves_that_sum_to_the_mixture(mode):
    from demux.online import separate_online
    from demux.pipeline import group_stems

    x = (tones([(440, 0.5), (1500, 0.3), (3000, 0.2)], sample_rate=FS, seconds=1.2)
         + 0.05 * torch.randn(int(1.2 * FS), generator=torch.Generator().manual_seed(6)))[None]
    run = {"whole": lambda r: separate(x, FS, r, seed=2).stems,
           "chunks": lambda r: separate(x, FS, r, seed=2, segment=0.5, batch_size=2).stems,
           "online": lambda r: separate_online(x, FS, r, window=0.5, hop=0.25, seed=2).stems}[mode]
    plain = load_recipe("tones-fft", ["split.fit.max_iter=5"])
    grouped = load_recipe("tones-fft", ["split.fit.max_iter=5", "stems={tonal: [low], rest: [high, mid]}"])
    leaves, stems = run(plain), run(grouped)
    assert list(stems) == ["tonal", "rest"] and list(leaves) == ["low", "mid", "high"]
    assert torch.equal(stems["tonal"], leaves["low"])  # a one-leaf stem is that leaf, bit for bit
    torch.testing.assert_close(stems["rest"], leaves["high"] + leaves["mid"], atol=1e-6, rtol=0)
    torch.testing.assert_close(stems["tonal"] + stems["rest"], x, atol=1e-5, rtol=0)
    assert group_stems(plain, leaves) is leaves  # no `stems`: the leaves as they are


def test_recipe_stems_carry_the_gradient_of_their_leaves():
    from demux.pipeline import group_stems

    recipe = load_recipe("tones-fft", ["stems={tonal: [low], rest: [high, mid]}"])
    leaves = {name: torch.randn(1, 1, 8, requires_grad=True) for name in ("low", "mid", "high")}
    stems = group_stems(recipe, leaves)
    (stems["tonal"].sum() + 2 * stems["rest"].sum()).backward()
    assert [float(leaves[n].grad.mean()) for n in ("low", "mid", "high")] == [1.0, 2.0, 2.0]


def test_chunks_are_capped_at_max_chunk_samples_whatever_the_segment(monkeypatch):
    """A segment longer than ``MAX_CHUNK_SAMPLES`` is cut at that many samples: 2 s at 8 kHz with a cap of
    4000 gives chunks of 4000 (overlap 0.1 of that), so more than the one chunk a 10 s segment asks for."""
    import demux.pipeline as pipeline

    recipe = load_recipe("tones-fft", ["split.fit.max_iter=2"])
    x = tones([(440.0, 1.0), (1800.0, 0.5), (3000.0, 0.3)], sample_rate=FS, seconds=2.0)[None]
    whole = separate(x, FS, recipe, segment=10.0)
    monkeypatch.setattr(pipeline, "MAX_CHUNK_SAMPLES", 4000)
    capped = separate(x, FS, recipe, segment=10.0)
    def chunks(separation) -> int:
        return sum(len(report.chunks or [0]) for report in separation.stages)

    assert chunks(whole) == 1
    assert chunks(capped) >= 4  # ceil((16000 - 400) / 3600) = 5 chunks of 4000
    assert float((sum(capped.stems.values()) - x).abs().max()) < 1e-5  # stems still sum to the mixture
