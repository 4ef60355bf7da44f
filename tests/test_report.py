"""Report files (JSON, CSV, Markdown), refusal to overwrite, and the figures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from demux.errors import InputError, OutputExistsError, ParameterError
from demux.evaluate import EvaluationReport, ScoreRow
from demux.report import (
    csv_text,
    load_masks,
    markdown,
    plot_masks,
    plot_trajectory,
    trajectories,
    write_csv,
    write_json,
    write_markdown,
    write_plots,
)

PNG = b"\x89PNG\r\n\x1a\n"
METRICS = ("sdr", "sir", "sar", "si_sdr")


def _report(estimate_folders: dict[str, Path] | None = None) -> EvaluationReport:
    rows = (
        ScoreRow("t1", "voice", {"sdr": 10.0, "sir": 20.0, "sar": 11.0, "si_sdr": 9.5}),
        ScoreRow("t1", "noise", {"sdr": 4.0, "sir": math.inf, "sar": 5.0, "si_sdr": 3.5}),
        ScoreRow("t2", "voice", {"sdr": 12.0, "sir": 22.0, "sar": 13.0, "si_sdr": 11.5}),
        ScoreRow("t2", "noise", {"sdr": math.nan, "sir": math.nan, "sar": math.nan, "si_sdr": math.nan}),
    )
    return EvaluationReport(
        rows=rows,
        metrics=METRICS,
        engine="fast",
        engine_version="9.9.9",
        reference=Path("refs"),
        estimate=Path("est"),
        sample_rates={"t1": 8000.0, "t2": 8000.0},
        estimate_folders=estimate_folders or {},
        notes=("t2: 1 silent reference(s) scored NaN",),
    )


def _trajectory(steps: int = 6, items: int = 2) -> dict:
    rng = np.random.default_rng(0)
    return {
        "step": list(range(steps)),
        "objective": rng.random((steps, items)).tolist(),
        "rho": [[None, 0.5]] + rng.random((steps - 1, items)).tolist(),  # None: rho = -inf (overshoot)
        "radius": (0.05 * 2.0 ** -np.arange(steps)[:, None] * np.ones(items)).tolist(),
        "mask_change": rng.random((steps, items)).tolist(),
        "dropout": np.full((steps, items), 0.3).tolist(),
        "accepted": [[False, True]] + [[True, True]] * (steps - 1),
    }


def test_json_round_trip_with_nan_and_inf(tmp_path):
    report = _report()
    path = write_json(report, tmp_path / "r.json")
    document = json.loads(path.read_text())
    assert document["engine"] == "fast" and document["engine_version"] == "9.9.9"
    assert document["tracks"]["t1"]["sources"]["voice"] == {"sdr": 10.0, "sir": 20.0, "sar": 11.0, "si_sdr": 9.5}
    assert document["tracks"]["t1"]["sources"]["noise"]["sir"] == "inf"
    assert document["tracks"]["t2"]["sources"]["noise"]["sdr"] is None
    assert document["aggregate"]["voice"]["sdr"] == {"median": 11.0, "mean": 11.0, "iqr": 1.0, "n": 2}
    assert document["aggregate"]["noise"]["sdr"]["n"] == 1  # the NaN row is left out
    assert document["notes"] == list(report.notes)


def test_csv_has_one_row_per_track_and_source():
    rows = list(csv.DictReader(csv_text(_report()).splitlines()))
    pairs = [(r["track"], r["source"]) for r in rows]
    assert pairs == [("t1", "voice"), ("t1", "noise"), ("t2", "voice"), ("t2", "noise")]
    assert float(rows[2]["sdr"]) == 12.0 and math.isinf(float(rows[1]["sir"])) and math.isnan(float(rows[3]["sar"]))


def test_markdown_names_the_engine_and_has_tables():
    text = markdown(_report())
    assert "fast 9.9.9" in text
    assert "| track | source | sdr | sir | sar | si_sdr |" in text
    assert "| voice | 2 | 11.00 [1.00] / 11.00 |" in text
    assert "silent reference" in text


@pytest.mark.parametrize("writer", [write_json, write_csv, write_markdown])
def test_reports_are_not_overwritten_without_overwrite(tmp_path, writer):
    path = tmp_path / "out.txt"
    path.write_text("keep me")
    with pytest.raises(OutputExistsError):
        writer(_report(), path)
    assert path.read_text() == "keep me"
    writer(_report(), path, overwrite=True)
    assert path.read_text() != "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary left behind


def test_plot_masks_checks_shapes_and_writes_png(tmp_path):
    masks = np.random.default_rng(1).random((2, 5, 7))
    masks /= masks.sum(axis=0)
    freqs, times = np.linspace(0, 4000, 5), np.linspace(0, 1, 7)
    path = plot_masks(masks, freqs, times, ["a", "b"], tmp_path / "masks.png")
    assert path.read_bytes().startswith(PNG)
    with pytest.raises(OutputExistsError):
        plot_masks(masks, freqs, times, ["a", "b"], path)
    with pytest.raises(ParameterError, match=r"\(S, F, N\)"):
        plot_masks(masks, freqs[:4], times, ["a", "b"], tmp_path / "bad.png")


def test_plot_trajectory_accepts_none_values(tmp_path):
    path = plot_trajectory(_trajectory(), tmp_path / "tr.png", title="stage")
    assert path.read_bytes().startswith(PNG)
    with pytest.raises(ParameterError, match="radius"):
        plot_trajectory({"rho": [], "dropout": [], "accepted": []}, tmp_path / "x.png")


def test_trajectories_are_found_at_any_depth():
    stages = [{"name": "split", "trajectory": _trajectory()}, {"name": "refine", "trajectory": {}}]
    document = {"separation": {"stages": stages}}
    found = trajectories(document)
    assert [name for name, _ in found] == ["split"]
    assert found[0][1]["radius"] == _trajectory()["radius"]


def test_write_plots_uses_demux_json_and_masks_npz(tmp_path):
    folder = tmp_path / "est" / "t1"
    folder.mkdir(parents=True)
    (folder / "demux.json").write_text(json.dumps({"stages": [{"name": "main", "trajectory": _trajectory()}]}))
    masks = np.full((2, 3, 4), 0.5)
    axes = {"freqs_hz": np.arange(3.0), "times_s": np.arange(4.0), "names": np.array(["a", "b"])}
    np.savez(folder / "masks.npz", masks=masks, **axes)
    assert load_masks(folder / "masks.npz")["masks"].shape == (2, 3, 4)
    written = write_plots(_report({"t1": folder, "t2": tmp_path / "est" / "t2"}), tmp_path / "plots")
    assert sorted(p.name for p in written) == ["sdr.png", "t1.masks.png", "t1.trajectory0.png"]
    assert all(p.read_bytes().startswith(PNG) for p in written)
    np.savez(folder / "masks.npz", masks=masks)
    with pytest.raises(InputError, match="lacks array"):
        load_masks(folder / "masks.npz")
