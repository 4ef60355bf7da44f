"""demux train: learned offsets improve held-out separation; params files; resume; CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from demux.cli import app
from demux.errors import InputError, OutputExistsError, ParameterError
from demux.metrics import si_sdr
from demux.recipe import load_recipe
from demux.synth import write_scenarios
from demux.train import (
    TrainConfig,
    apply_params,
    load_tracks,
    offset_layout,
    read_params,
    save_params,
    split_tracks,
    track_scores,
    train,
)

# tones-fft on a coarse STFT (33 bins of 125 Hz at 8 kHz, so the offsets generalise
# across tone frequencies) with deliberately overlapping bands: inside an overlap the
# likelihood cannot tell the sources apart, so the untrained recipe splits it evenly.
OVERRIDES = [
    "split.transform={type: stft, n_fft: 64, hop: 16, window: hann}",
    "split.sources.low.bands=[{lo: 0, hi: 1800, edge: 20}]",
    "split.sources.mid.bands=[{lo: 300, hi: 3000, edge: 20}]",
    "split.sources.high.bands=[{lo: 1500, hi: .inf, edge: 20}]",
    "split.fit.max_iter=8",
]
SECONDS = 0.5
N_GROUPS = 33  # n_fft // 2 + 1 bins
EPOCHS = 6
runner = CliRunner()


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("tones-fft", OVERRIDES)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    write_scenarios("multitone", root / "train", n=8, seconds=SECONDS, seed=1)
    write_scenarios("multitone", root / "held-out", n=6, seconds=SECONDS, seed=2)
    return root


@pytest.fixture(scope="module")
def trained(recipe, data):
    out = data / "params.safetensors"
    epochs = []
    result = train(recipe, data / "train", out, config=TrainConfig(epochs=EPOCHS, patience=EPOCHS, val_fraction=0.25),
                   on_epoch=epochs.append)
    return result, out, epochs


def _held_out_median(recipe, data: Path) -> float:
    tracks, rate, _ = load_tracks(data / "held-out", recipe)
    return float(torch.cat(track_scores(recipe, tracks, rate)).median())


def test_training_improves_held_out_si_sdr(recipe, data, trained):
    result, out, _ = trained
    untrained = _held_out_median(recipe, data)
    learned = _held_out_median(apply_params(recipe, out), data)
    assert untrained < 15.0  # the overlapping bands leave something to learn
    assert learned > untrained + 10.0, (untrained, learned)
    assert result.val_si_sdr > result.initial_val_si_sdr + 10.0


def test_progress_reports_every_epoch(trained):
    result, _, epochs = trained
    assert [e.epoch for e in epochs] == list(range(1, len(epochs) + 1))
    assert 1 <= len(epochs) <= EPOCHS and result.epochs == len(epochs)
    assert all(0 <= e.dropout < 1 and e.radius > 0 for e in epochs)
    assert max(e.best for e in epochs) == pytest.approx(result.val_si_sdr)
    assert any(e.accepted for e in epochs)


def test_params_file_round_trips(recipe, data, trained):
    result, out, _ = trained
    offsets, metadata = read_params(out)
    assert set(offsets) == {"split.low", "split.mid", "split.high"}
    for key, value in offsets.items():
        assert value.shape == (N_GROUPS,)
        torch.testing.assert_close(value, result.offsets[key], rtol=0, atol=0)
    assert metadata["recipe"] == "tones-fft"
    assert metadata["epochs"] == result.epochs
    assert metadata["val_si_sdr"] == pytest.approx(result.val_si_sdr)
    assert not set(metadata["train_tracks"]) & set(metadata["val_tracks"])
    # the file through the recipe (load_offsets, "stage.source" keys) == the offsets in memory
    tracks, rate, _ = load_tracks(data / "held-out", recipe)
    via_file = torch.cat(track_scores(apply_params(recipe, out), tracks, rate))
    in_memory = torch.cat(track_scores(recipe, tracks, rate, learned=result.offsets))
    torch.testing.assert_close(via_file, in_memory, rtol=0, atol=1e-4)


def test_zero_offsets_are_the_untrained_recipe_and_carry_a_gradient(recipe, data):
    tracks, rate, _ = load_tracks(data / "held-out", recipe)
    tracks = tracks[:2]
    plain = torch.cat(track_scores(recipe, tracks, rate))
    layout = offset_layout(recipe, tracks[0].mixture, rate)
    zeros = {key: torch.zeros(n, requires_grad=True) for key, n in layout.items()}
    scores = torch.cat(track_scores(recipe, tracks, rate, learned=zeros))
    torch.testing.assert_close(scores.detach(), plain, rtol=0, atol=1e-5)
    scores.sum().backward()
    grad = torch.cat([t.grad for t in zeros.values()])
    assert torch.isfinite(grad).all() and grad.abs().max() > 1e-3


def test_split_is_deterministic_and_disjoint(recipe, data):
    tracks, _, _ = load_tracks(data / "train", recipe)
    train_a, val_a = split_tracks(tracks, val_fraction=0.25, seed=3)
    _, val_b = split_tracks(tracks, val_fraction=0.25, seed=3)
    assert [t.name for t in val_a] == [t.name for t in val_b] and len(val_a) == 2
    assert sorted(t.name for t in train_a + val_a) == sorted(t.name for t in tracks)
    seeds = {tuple(t.name for t in split_tracks(tracks, val_fraction=0.25, seed=s)[1]) for s in range(6)}
    assert len(seeds) > 1
    with pytest.raises(ParameterError, match="at least 2"):
        split_tracks(tracks[:1], val_fraction=0.5, seed=0)


def test_missing_references_are_skipped_and_said(recipe, data, trained):
    index = json.loads((data / "train" / "scenario.json").read_text())
    lacking = [name for name, params in index["tracks"].items() if len(params["sources"]) < 3]
    assert lacking  # multitone draws 2 or 3 sources
    notes = " ".join(trained[0].notes)
    for name in lacking:
        assert f"{name}: no reference for stem(s)" in notes


def test_not_safetensors_is_refused(recipe, tmp_path):
    bad = tmp_path / "params.safetensors"
    bad.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(InputError, match="not a safetensors file"):
        read_params(bad)
    with pytest.raises(InputError, match="not a safetensors file"):
        apply_params(recipe, bad)
    with pytest.raises(InputError, match="no such parameters file"):
        read_params(tmp_path / "absent.safetensors")


def test_wrong_shapes_and_names_are_refused(recipe, data, tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    save_params(wrong, {"split.low": torch.zeros(5), "split.mid": torch.zeros(5), "split.high": torch.zeros(5)}, {})
    tracks, rate, _ = load_tracks(data / "held-out", recipe)
    with pytest.raises(InputError, match=r"shape \(5,\), expected \(33,\)"):
        track_scores(apply_params(recipe, wrong), tracks[:1], rate)
    with pytest.raises(InputError, match=r"shape \(5,\), expected \(33,\)"):
        train(recipe, data / "train", wrong, config=TrainConfig(epochs=1), resume=True)
    unknown = tmp_path / "unknown.safetensors"
    save_params(unknown, {"split.bass": torch.zeros(N_GROUPS)}, {})
    with pytest.raises(InputError, match="split.bass"):
        apply_params(recipe, unknown)
    matrix = tmp_path / "matrix.safetensors"
    save_params(matrix, {"split.low": torch.zeros(3, N_GROUPS)}, {})
    with pytest.raises(InputError, match="1-D float vector"):
        read_params(matrix)


def test_resume_continues_from_the_checkpoint(recipe, data, trained, tmp_path):
    _, out, _ = trained
    checkpoint = tmp_path / "resumed.safetensors"
    shutil.copy(out, checkpoint)
    _, before = read_params(checkpoint)
    resumed = train(recipe, data / "train", checkpoint, config=TrainConfig(epochs=1, val_fraction=0.25), resume=True)
    # it starts where the checkpoint left off (from zeros it would start near the untrained score)
    assert resumed.initial_val_si_sdr == pytest.approx(before["val_si_sdr"], abs=1e-3)
    assert resumed.val_si_sdr >= resumed.initial_val_si_sdr
    assert resumed.epochs == before["epochs"] + 1
    assert read_params(checkpoint)[1]["epochs"] == before["epochs"] + 1


def test_existing_output_is_refused(recipe, data, trained):
    with pytest.raises(OutputExistsError):
        train(recipe, data / "train", trained[1], config=TrainConfig(epochs=1))


def _cli(*args) -> object:
    return runner.invoke(app, ["train", *map(str, args)])


def test_cli_trains_and_writes_the_file(data, tmp_path):
    out = tmp_path / "cli.safetensors"
    sets = [arg for override in OVERRIDES for arg in ("--set", override)]
    result = _cli("--recipe", "tones-fft", *sets, "--data", data / "train", "-o", out, "--epochs", 1, "--seed", 0)
    assert result.exit_code == 0, result.output
    assert "validation SI-SDR" in result.output and out.is_file()
    assert set(read_params(out)[0]) == {"split.low", "split.mid", "split.high"}
    again = _cli("--recipe", "tones-fft", *sets, "--data", data / "train", "-o", out, "--epochs", 1)
    assert again.exit_code == 2 and "exists (pass --overwrite" in again.output


def test_cli_refuses_a_bad_checkpoint_with_one_line(data, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not safetensors")
    result = _cli("--recipe", "tones-fft", "--data", data / "train", "-o", bad, "--resume")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a safetensors file" in lines[0]
    missing = _cli("--recipe", "tones-fft", "--data", tmp_path / "nowhere", "-o", tmp_path / "p.safetensors")
    assert missing.exit_code == 2 and "no such training-data folder" in missing.output


def test_separate_applies_a_params_file(recipe, data, trained, tmp_path):
    """`demux separate --params` gives the trained stems, which beat the untrained ones on a held-out track."""

    track = sorted((data / "held-out").iterdir())[0]
    mixture = track / "mixture.wav"
    sets = [arg for override in OVERRIDES for arg in ("--set", override)]
    scores = {}
    for name, extra in (("untrained", []), ("trained", ["--params", trained[1]])):
        out = tmp_path / name
        result = runner.invoke(app, ["separate", str(mixture), "-r", "tones-fft", *sets, "-o", str(out), *map(str, extra)])
        assert result.exit_code == 0, result.output
        present = sorted(p.stem for p in track.glob("*.wav") if p.stem != "mixture")  # 2 or 3 sources
        stems = {s: sf.read(out / "mixture" / f"{s}.wav", dtype="float32")[0] for s in present}
        refs = {s: sf.read(track / f"{s}.wav", dtype="float32")[0] for s in present}
        scores[name] = float(
            si_sdr(torch.tensor(np.stack(list(stems.values()))), torch.tensor(np.stack(list(refs.values())))).median()
        )
        learned = json.loads((out / "mixture" / "demux.json").read_text())["recipe"]["stages"]["split"]["sources"]["low"]
        assert (learned["learned"] is not None) == (name == "trained")
    assert scores["trained"] > scores["untrained"] + 5
    missing = runner.invoke(app, ["separate", str(mixture), "-r", "tones-fft", "-o", str(tmp_path / "x"),
                                  "--params", str(tmp_path / "absent.safetensors")])
    assert missing.exit_code == 2 and "absent.safetensors" in missing.stderr


def test_recipe_stems_are_scored_and_carry_the_gradient_to_their_leaves(recipe, data):
    import dataclasses

    from demux.train import _matching_notes

    grouped = load_recipe("tones-fft", [*OVERRIDES, "stems={low: [low], rest: [mid, high]}"])
    tracks, rate, _ = load_tracks(data / "held-out", grouped)
    tracks = [dataclasses.replace(t, references={"low": t.references["low"],
                                                 "rest": t.references["mid"] + t.references["high"]})
              for t in tracks if {"low", "mid", "high"} <= set(t.references)][:2]
    assert _matching_notes(grouped, tracks) == []  # `rest` matches the summed stem by name
    layout = offset_layout(grouped, tracks[0].mixture, rate)
    zeros = {key: torch.zeros(n, requires_grad=True) for key, n in layout.items()}
    scores = track_scores(grouped, tracks, rate, learned=zeros)
    assert [s.shape for s in scores] == [(2,), (2,)]
    torch.cat(scores).sum().backward()
    for key in ("split.mid", "split.high"):  # the leaves summed into `rest` learn from its score
        assert zeros[key].grad.abs().max() > 1e-4, key
