"""radar-range-doppler on the radar-range scenario: range gates as channels, fitted gate by gate.

The case is ``make("radar-range", default_rng(0), seconds=0.5)``: 8 gates at a PRF of 2 kHz,
targets in gates 1, 2 and 6 (+510, -478, -895 Hz), a ghost of the first in gate 4 (11.7 dB
down), clutter 33.9 dB over a target in gate 0. Scored as the bench scores (BSS-Eval v3 SDR, channels
averaged, gates where a reference is silent left out); the ghost is its own reference,
``multipath``, which the recipe's multipath stem (lines a nearer gate holds >= 3 dB stronger)
estimates.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from demux.baselines import mti_canceller
from demux.bench import band_overrides, score
from demux.errors import ParameterError
from demux.metrics import MetricWarning
from demux.pipeline import separate
from demux.priors.lines import find_lines, multipath_lines
from demux.recipe import load_recipe
from demux.synth import make

RECIPE = "radar-range-doppler"
# measured (SDR, dB): clutter 42.60, targets 24.38, multipath 17.08, noise 11.85; the MTI canceller
# (against targets + ghost): clutter 34.98, targets 8.57
FLOORS = {"clutter": 39.0, "targets": 21.0, "multipath": 14.0, "noise": 9.0}


def _sdr(stems: dict[str, np.ndarray], refs: dict[str, np.ndarray]) -> dict[str, float]:
    names = list(refs)
    with warnings.catch_warnings():  # targets are silent in most gates: those gates score NaN and are left out
        warnings.simplefilter("ignore", MetricWarning)
        values = score({k: refs[k].astype(np.complex128) for k in names},
                       {k: stems[k].astype(np.complex128) for k in names})["sdr"]
    return dict(zip(names, (float(v) for v in values)))


@pytest.fixture(scope="module")
def separation():
    scenario = make("radar-range", np.random.default_rng(0), seconds=0.5)
    recipe = load_recipe(RECIPE, band_overrides(load_recipe(RECIPE), scenario))
    return scenario, separate(torch.from_numpy(scenario.mixture), scenario.sample_rate, recipe, seed=0)


@pytest.fixture(scope="module")
def case(separation):
    scenario, result = separation
    mixture = torch.from_numpy(scenario.mixture)
    stems = {k: v.numpy() for k, v in result.stems.items()}
    mti = {k: v.numpy()[0] for k, v in mti_canceller(mixture[None], scenario.sample_rate).items()}
    src = scenario.sources
    refs = {name: src[name] for name in ("clutter", "targets", "multipath", "noise")}
    return scenario, stems, mti, refs


def test_the_recipe_validates():
    recipe = load_recipe(RECIPE)
    assert recipe.domain == "radar" and recipe.sources() == ["clutter", "targets", "multipath", "noise"]
    sources = recipe.stages[0].sources
    assert recipe.stages[0].transform.type == "cfft"
    assert (sources["targets"].lines.paths, sources["multipath"].lines.paths) == ("direct", "multipath")


def test_the_scenario_puts_a_ghost_beyond_its_target():
    scenario = make("radar-range", np.random.default_rng(0), seconds=0.5)
    ghost, targets = scenario.params["multipath"], scenario.params["targets"]
    direct = targets[ghost["of_target"]]
    assert direct["gate"] < ghost["gate"] <= direct["gate"] + 3
    assert ghost["gate"] not in {t["gate"] for t in targets}
    assert 6.0 <= ghost["attenuation_db"] <= 12.0
    power = np.mean(np.abs(scenario.sources["multipath"]) ** 2, axis=1)
    assert np.flatnonzero(power).tolist() == [ghost["gate"]]
    np.testing.assert_allclose(10 * np.log10(power[ghost["gate"]]), -ghost["attenuation_db"], atol=1e-3)
    clutter = 10 * np.log10(np.mean(np.abs(scenario.sources["clutter"]) ** 2, axis=1))
    assert np.all(np.diff(clutter) < 0)  # clutter falls with range


def test_stems_sum_to_the_mixture(case):
    scenario, stems, _, _ = case
    np.testing.assert_allclose(sum(stems.values()), scenario.mixture, atol=1e-3)


def test_each_stem_clears_its_floor_and_targets_beat_the_mti_canceller(case):
    _, stems, mti, refs = case
    measured = _sdr(stems, refs)
    assert all(measured[name] > FLOORS[name] for name in FLOORS), measured
    # the canceller's output holds targets and ghost alike: it is scored against their sum
    canceller = _sdr(mti, {"clutter": refs["clutter"], "targets": refs["targets"] + refs["multipath"]})
    assert measured["targets"] > canceller["targets"] + 10.0, (measured, canceller)
    assert measured["clutter"] > canceller["clutter"], (measured, canceller)


def test_the_report_lists_each_line_with_its_gate(separation):
    # what demux.json records: every target in its gate and the ghost in the multipath stem's,
    # each within a quarter of a Doppler bin (measured 0.02 Hz off for targets, 0.15 Hz for the
    # weaker ghost; bins are 2 Hz)
    scenario, result = separation
    found = result.stages[0].found
    bin_hz = scenario.sample_rate / scenario.mixture.shape[1]
    ghost = scenario.params["multipath"]
    for name, truth in (("targets", scenario.params["targets"]), ("multipath", [ghost])):
        listed = sorted(zip(found[name]["lines_channel"][0], found[name]["lines_hz"][0]))
        assert [g for g, _ in listed] == sorted(t["gate"] for t in truth), (name, listed)
        for (_, hz), t in zip(listed, sorted(truth, key=lambda t: t["gate"])):
            assert abs(hz - t["doppler_hz"]) < 0.25 * bin_hz, (name, listed)
    # the ghost's peak is its target's less the attenuation (measured 11.4 dB for 11.7)
    (direct,) = [hz for g, hz in zip(found["targets"]["lines_channel"][0], found["targets"]["lines_snr_db"][0])
                 if g == scenario.params["targets"][ghost["of_target"]]["gate"]]
    assert abs(direct - found["multipath"]["lines_snr_db"][0][0] - ghost["attenuation_db"]) < 1.5


def test_masks_differ_per_gate(case):
    """A target's gate keeps its Doppler line in the targets stem; an empty gate gives that bin away."""
    scenario, stems, _, _ = case
    pulses = scenario.mixture.shape[1]
    target = scenario.params["targets"][0]
    busy = {t["gate"] for t in scenario.params["targets"]} | {scenario.params["multipath"]["gate"]}
    empty = next(g for g in range(scenario.mixture.shape[0]) if g not in busy and g > 0)  # gate 0: most clutter
    k = round(target["doppler_hz"] * pulses / scenario.sample_rate) % pulses
    mix = np.abs(np.fft.fft(scenario.mixture, axis=1)[:, k]) ** 2
    kept = np.abs(np.fft.fft(stems["targets"], axis=1)[:, k]) ** 2
    assert kept[target["gate"]] > 0.9 * mix[target["gate"]]  # the line's own bin: all of it
    assert kept[empty] < 0.01 * mix[empty]  # the same Doppler bin in a gate without a target: noise, not targets


def test_multipath_lines_flags_the_ghost_and_nothing_else():
    """CLEAN in every gate of the mixture, then the ghost rule: only the ghost's line is flagged."""
    scenario = make("radar-range", np.random.default_rng(0), seconds=0.5)
    x = torch.from_numpy(scenario.mixture)
    pulses = x.shape[1]
    freqs, amplitudes = find_lines(x, sample_rate=scenario.sample_rate, allowed=lambda hz: hz.abs() > 40.0)
    ghost = multipath_lines(freqs[None], amplitudes[None], resolution_hz=scenario.sample_rate / pulses)[0]
    flagged = {(g, round(float(freqs[g, m]))) for g, m in ghost.nonzero().tolist()}
    truth = scenario.params["multipath"]
    assert flagged == {(truth["gate"], round(truth["doppler_hz"]))}, flagged
    direct = {(t["gate"], round(t["doppler_hz"])) for t in scenario.params["targets"]}
    found = {(g, round(float(freqs[g, m]))) for g, m in (amplitudes.abs() > 0).nonzero().tolist()}
    assert direct <= found  # every direct return was found and none of them is flagged


def test_multipath_lines_needs_a_stronger_line_at_a_nearer_gate():
    freqs = torch.tensor([[[100.0], [100.0], [100.5], [300.0]]])  # (1, 4 gates, 1 line)
    amplitudes = torch.tensor([[[0.5 + 0j], [1.0 + 0j], [0.3j], [0.1 + 0j]]])
    ghost = multipath_lines(freqs, amplitudes, resolution_hz=1.0)[0, :, 0]
    # gate 1 is stronger than gate 0 (a farther, stronger line is a target); gate 2 is 10 dB under
    # gate 1 at the same Doppler (a ghost); gate 3 has no partner Doppler
    assert ghost.tolist() == [False, False, True, False]
    assert not multipath_lines(freqs, amplitudes, resolution_hz=1.0, margin_db=12.0)[0, 2, 0]
    with pytest.raises(ParameterError):
        multipath_lines(freqs, amplitudes, resolution_hz=0.0)
