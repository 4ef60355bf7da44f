"""radio-iq reaches its quality floor on the bench's quick ``radio`` items, at a fit cheap enough for 10 s.

The floor is what the shipped recipe measured on those exact items (seeded, CPU) minus a
margin, and sits above what a coarser grid reaches (hop 192: 20.16 dB on these items),
so a regression in the recipe or the engine fails here. docs/recipes.md#radio-iq has the
timings and the comparison with the previous 4x-redundant grid and 20-step fit.
"""

from __future__ import annotations

import numpy as np
import torch

from demux import bench
from demux.pipeline import separate


def _median_sdr(recipe_overrides: tuple[str, ...] = ()) -> tuple[float, dict[str, float]]:
    """Median SDR over the quick bench's two radio items x references, and per reference."""
    config = bench.BenchConfig(scenarios=("radio",), quick=True)
    per: dict[str, list[float]] = {}
    for scenario in bench.make_items("radio", config):
        groups = bench.reference_groups("radio", scenario)
        refs = bench.references(scenario, groups)
        recipe, _ = bench.recipe_for(scenario, config, recipe_overrides)
        stems = separate(torch.from_numpy(scenario.mixture)[None], scenario.sample_rate, recipe).stems
        stems = {k: v.numpy().reshape(v.shape[-2:]) for k, v in stems.items()}
        estimates, _ = bench.assign_stems(stems, refs, groups=groups)
        for name, value in zip(refs, bench.score(refs, estimates)["sdr"]):
            per.setdefault(name, []).append(value)
    return float(np.median(sum(per.values(), []))), {k: float(np.median(v)) for k, v in per.items()}


def test_radio_iq_separates_the_quick_bench_items_above_the_bandpass():
    # measured: median 20.70 dB (primary 23.77, secondary 20.70, noise -0.40); the band-pass
    # baseline 18.01; the previous recipe (hop 64, 20 steps of 20 CG steps) 21.02
    median, per = _median_sdr()
    assert median > 20.2
    assert per["primary"] > 23.0
    assert median > 18.01 + 2.0
