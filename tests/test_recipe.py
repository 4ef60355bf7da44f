"""Recipes: every shipped recipe validates; every kind of bad recipe names file, key path and fix."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from demux.cli import app
from demux.errors import RecipeError
from demux.recipe import builtin_names, check_against_signal, load_recipe, parse_recipe, to_dict

GOOD = """
name: two-bands
stages:
  split:
    transform: {type: fft}
    sources:
      low: {band: {lo: 0, hi: 500}}
      high: {band: {lo: 500, hi: 4000}}
"""


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_recipe_validates_and_round_trips(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert len(recipe.sources()) >= 2
    assert len(set(recipe.sources())) == len(recipe.sources())
    # the resolved form is plain data that validates to the same recipe
    data = to_dict(recipe)
    data.pop("source")
    assert parse_recipe(data, source=recipe.source) == recipe


def test_builtins_include_the_first_recipe_of_each_family():
    assert {"tones-fft", "radio-fft", "ecg-wavelet", "audio-stft"} <= set(builtin_names())


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (("low: {band: {lo: 0, hi: 500}}", "low: {band: {lo: 0, hi: 500}, colour: red}"),
         r"stages\.split\.sources\.low\.colour: unknown key"),
        (("lo: 0, hi: 500", "lo: eighty, hi: 500"), r"stages\.split\.sources\.low\.bands\.0\.lo: expected a number, got str 'eighty'"),
        (("{type: fft}", "{wavelet: db4}"), r"stages\.split\.transform\.type: required key is missing"),
        (("lo: 0, hi: 500", "lo: 600, hi: 500"), r"stages\.split\.sources\.low\.bands\.0: expected lo < hi"),
        (("  split:\n", "  split:\n    combiner: sigmoid\n"), r"sigmoid combiner needs a source named 'residual'"),
        (("  split:\n", "  split:\n    fit: {max_iter: 0}\n"), r"stages\.split\.fit\.max_iter: max_iter=0"),
        (("  split:\n", "  split:\n    fit: {max_itr: 3}\n"), r"stages\.split\.fit\.max_itr: unknown key; did you mean 'max_iter'\?"),
        (("  split:\n", "  split:\n    fit: {hessian: magic}\n"), r"stages\.split\.fit\.hessian: expected one of 'exact'"),
        (("  split:\n", "  split:\n    fit: {weighting: c-weighting}\n"),
         r"stages\.split\.fit\.weighting: expected one of 'none', 'a-weighting', 'ath', got 'c-weighting'"),
        (("  split:\n", "  split:\n    fit: {edge_radius: {width_hz: 50, scale: 0}}\n"),
         r"stages\.split\.fit\.edge_radius\.scale: scale=0\.0: expected a radius factor in \(0, 1\]"),
        (("  split:\n", "  split:\n    fit: {edge_radius: {width_hz: -5}}\n"),
         r"stages\.split\.fit\.edge_radius\.width_hz: width_hz=-5\.0: expected a distance >= 0 Hz"),
        (("  split:\n", "  split:\n    fit: {edge_radius: {scale: 0.5}}\n"),
         r"stages\.split\.fit\.edge_radius\.width_hz: required key is missing"),
        (("  split:\n", "  split:\n    fit: {edge_radius: {width: 50}}\n"),
         r"stages\.split\.fit\.edge_radius\.width: unknown key; did you mean 'width_hz'\?"),
        (("name: two-bands", "name: two-bands\nstage: {}"), r"^.*r\.yaml: stage: unknown key; did you mean 'stages'\?"),
        (("      high: {band: {lo: 500, hi: 4000}}\n", ""), r"stages\.split\.sources: expected a mapping of at least two"),
    ],
)
def test_bad_recipes_name_the_key_path(tmp_path, edit, match):
    old, new = edit
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(RecipeError, match=match) as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    path = write(tmp_path, "name: x\nstages: {split: [unclosed\n")
    with pytest.raises(RecipeError, match=r"YAML syntax error at line \d+, column \d+"):
        load_recipe(path)


def test_unknown_recipe_name_suggests_the_closest():
    with pytest.raises(RecipeError, match="did you mean 'audio-stft'"):
        load_recipe("audio-sftf")


def test_missing_recipe_file():
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe("nowhere/recipe.yaml")


def test_recipes_are_loaded_with_safe_load(tmp_path):
    path = write(tmp_path, "!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(RecipeError, match="YAML syntax error"):
        load_recipe(path)


def test_overrides_use_key_paths_with_a_stage_shortcut(tmp_path):
    path = write(tmp_path, GOOD)
    recipe = load_recipe(path, ["split.sources.low.bands.0.hi=450", "stages.split.fit.max_iter=7"])
    assert recipe.stages[0].sources["low"].bands[0].hi == 450.0
    assert recipe.stages[0].fit.max_iter == 7


def test_override_with_a_wrong_type_names_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"split\.fit\.max_iter: expected an integer"):
        load_recipe(write(tmp_path, GOOD), ["split.fit.max_iter=many"])


def test_extends_another_recipe_and_overrides_keys(tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    child = write(tmp_path, f"extends: {tmp_path / 'base.yaml'}\nname: child\nstages: {{split: {{fit: {{max_iter: 3}}}}}}\n", "c.yaml")
    recipe = load_recipe(child)
    assert recipe.name == "child"
    assert recipe.stages[0].fit.max_iter == 3
    assert recipe.stages[0].sources["high"].bands[0].lo == 500.0


def test_circular_extends_is_an_error(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"extends: {b}\n")
    b.write_text(f"extends: {a}\n")
    with pytest.raises(RecipeError, match="circular 'extends'"):
        load_recipe(a)


def test_later_stage_must_split_an_existing_stem(tmp_path):
    text = GOOD + """  second:
    split: middle
    transform: {type: fft}
    sources: {a: {}, b: {}}
"""
    with pytest.raises(RecipeError, match=r"stages\.second\.split: no earlier stem named 'middle'"):
        load_recipe(write(tmp_path, text))


def test_split_replaces_its_stem_in_tree_order():
    assert load_recipe("audio-stft").sources() == ["pitched", "tonal", "percussive", "noise"]


def test_band_above_nyquist_is_refused_for_that_rate(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD))
    check_against_signal(recipe, 8000)
    with pytest.raises(RecipeError, match=r"stages\.split\.sources\.high\.bands\.0\.lo: 500 Hz is at or above Nyquist"):
        check_against_signal(recipe, 1000)


def test_cli_validate_reports_one_line_and_exit_code_2(tmp_path):
    runner = CliRunner()
    good = runner.invoke(app, ["recipes", "validate", str(write(tmp_path, GOOD))])
    assert good.exit_code == 0 and "ok:" in good.output
    bad = write(tmp_path, GOOD.replace("lo: 0", "lo: zero"), "bad.yaml")
    result = runner.invoke(app, ["recipes", "validate", str(bad)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml" in lines[0] and "bands.0.lo" in lines[0]
    assert "Traceback" not in result.output


def test_cli_list_and_show():
    runner = CliRunner()
    listed = runner.invoke(app, ["recipes", "list"])
    assert listed.exit_code == 0
    for name in builtin_names():
        assert name in listed.output
    shown = runner.invoke(app, ["recipes", "show", "ecg-wavelet"])
    assert shown.exit_code == 0 and "db4" in shown.output
    resolved = runner.invoke(app, ["recipes", "show", "ecg-wavelet", "--set", "split.transform.wavelet=bior4.4"])
    assert resolved.exit_code == 0 and "bior4.4" in resolved.output


def test_fit_weighting_defaults_to_none_and_gives_the_model_perceptual_weights(tmp_path):
    import torch

    from demux.pipeline import stage_inputs
    from demux.transforms import build_transform

    assert load_recipe(write(tmp_path, GOOD)).stages[0].fit.weighting == "none"
    stage = load_recipe(write(tmp_path, GOOD), ["split.fit.weighting=a-weighting"]).stages[0]
    transform = build_transform("fft", 8000)
    x = torch.randn(1, 1, 800, generator=torch.Generator().manual_seed(0))
    inputs, _ = stage_inputs(stage, transform(x), transform, 800, "r.yaml")
    freq = transform.grid(800).freq_hz.reshape(-1)
    assert inputs.weight.shape == freq.shape
    assert float(inputs.weight.mean()) == pytest.approx(1.0, abs=1e-5)
    assert float(inputs.weight[freq == 0]) == 0.0  # A-weighting is -inf dB at DC
    plain, _ = stage_inputs(load_recipe(write(tmp_path, GOOD)).stages[0], transform(x), transform, 800, "r.yaml")
    assert plain.weight is None


def test_fit_weighting_needs_a_frequency_axis(tmp_path):
    import torch

    from demux.pipeline import stage_inputs
    from demux.transforms import PCA

    path = write(tmp_path, GOOD.replace("{type: fft}", "{type: pca}"))
    stage = load_recipe(path, ["split.fit.weighting=ath"]).stages[0]
    x = torch.randn(1, 3, 800, generator=torch.Generator().manual_seed(0))
    transform = PCA(8000).fit(x)
    with pytest.raises(RecipeError, match=r"stages\.split\.fit\.weighting: transform 'pca' has no frequency axis"):
        stage_inputs(stage, transform(x), transform, 800, str(path))


TREE = GOOD + """  second:
    split: high
    transform: {type: fft}
    sources: {hum: {band: {lo: 500, hi: 1000}}, hiss: {band: {lo: 1000, hi: 4000}}}
"""


def test_stems_group_the_leaves_into_output_stems(tmp_path):
    plain = load_recipe(write(tmp_path, TREE))
    assert plain.stems == {} and plain.sources() == plain.leaves() == ["low", "hum", "hiss"]
    grouped = load_recipe(write(tmp_path, TREE + "stems: {tones: [low, hum], noise: hiss}\n"))
    assert grouped.stems == {"tones": ("low", "hum"), "noise": ("hiss",)}
    assert grouped.sources() == ["tones", "noise"] and grouped.leaves() == ["low", "hum", "hiss"]
    # overrides reach it too, a leaf moved from one stem to the other
    moved = load_recipe(write(tmp_path, TREE), ["stems={tones: [low], noise: [hum, hiss]}"])
    assert moved.stems == {"tones": ("low",), "noise": ("hum", "hiss")}


@pytest.mark.parametrize(
    ("stems", "match"),
    [
        ("{tones: [low, hum], noise: [hiss, his]}", r"stems\.noise\.1: unknown stem 'his' \(leaf stems: low, hum, hiss\)"),
        ("{tones: [low, hum, hiss], noise: [hiss]}", r"stems\.noise\.0: leaf 'hiss' is already in stems\.tones"),
        ("{tones: [low], noise: [hiss]}", r"r\.yaml: stems: leaf stem\(s\) hum in no output stem"),
        ("{tones: [low, high], noise: [hiss]}", r"stems\.tones\.1: 'high' is split by stage second; .*\(hum, hiss\)"),
        ("{tones: [], noise: [low, hum, hiss]}", r"stems\.tones: expected a list of at least one leaf stem"),
        ("{tones: [low, hum], .noise: [hiss]}", r"stems\.\.noise: a stem name becomes a file name"),
        ("{tones: [low, hum], noise: [3]}", r"stems\.noise\.0: expected a string, got int 3"),
        ("[low, hum, hiss]", r"r\.yaml: stems: expected a mapping, got list"),
    ],
)
def test_bad_stems_name_the_key_path(tmp_path, stems, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(write(tmp_path, TREE + f"stems: {stems}\n"))


def test_cli_validate_and_show_give_the_stems(tmp_path):
    path = write(tmp_path, TREE + "stems: {tones: [low, hum], noise: [hiss]}\n")
    validated = CliRunner().invoke(app, ["recipes", "validate", str(path)])
    assert validated.exit_code == 0 and "stems: tones = low + hum, noise = hiss" in validated.output
    shown = CliRunner().invoke(app, ["recipes", "show", str(path)])
    assert shown.exit_code == 0 and "stems:\n  tones:\n  - low\n  - hum\n" in shown.output


def test_band_overrides_address_the_single_band_spelling():
    """A recipe's ``band:`` is stored as ``bands: [...]``; ``--set ...band.hi=`` and ``...band=`` still reach
    that band (they used to fail with "give either 'band' or 'bands', not both")."""
    whole = load_recipe("tones-fft", ["split.sources.low.band={lo: 0, hi: 2500, edge: 20}"])
    one_key = load_recipe("tones-fft", ["split.sources.low.band.hi=2500"])
    for recipe in (whole, one_key):
        (band,) = recipe.stages[0].sources["low"].bands
        assert (band.lo, band.hi, band.edge) == (0.0, 2500.0, 20.0)
