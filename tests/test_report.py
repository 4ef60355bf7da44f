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
    View,
    before_after_figure,
    csv_text,
    load_masks,
    markdown,
    plot_before_after,
    plot_masks,
    plot_trajectory,
    scalogram_db,
    spectrogram_db,
    trajectories,
    view_for,
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


# --------------------------------------------------------------------------- before/after figure

FS = 8000.0


def _panels(figure) -> list:
    """The figure's panel axes (the colour bar's axes are labelled ``<colorbar>``)."""
    return [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]


def _mesh(ax) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A panel's drawn ``(y centres, x centres, values (Y, X))`` from its pcolormesh."""
    (mesh,) = ax.collections
    edges = mesh.get_coordinates()  # (Y + 1, X + 1, 2) cell corners, midway between centres
    x = 0.5 * (edges[0, :-1, 0] + edges[0, 1:, 0])
    y = 0.5 * (edges[:-1, 0, 1] + edges[1:, 0, 1])
    return y, x, np.asarray(mesh.get_array())


def _tones(n: int = 4000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / FS
    return {
        "low": (np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32),
        "high": (0.3 * np.sin(2 * np.pi * 2500 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32),
    }


def test_before_after_has_a_panel_per_signal_and_writes_png(tmp_path):
    stems = _tones()
    mixture = sum(stems.values())
    alone = before_after_figure(mixture, stems, sample_rate=FS)
    assert [ax.get_title() for ax in _panels(alone)] == ["mixture", "stem: low", "stem: high"]
    references = {"low": stems["low"], "high": stems["high"], "hum": 0.1 * stems["low"]}
    both = before_after_figure(mixture, stems, sample_rate=FS, references=references)
    titles = [ax.get_title() for ax in _panels(both)]
    assert len(titles) == 1 + len(stems) + len(references)
    assert titles == ["mixture", "stem: low", "reference: low", "stem: high", "reference: high", "reference: hum"]
    summed = before_after_figure(None, stems, sample_rate=FS)
    assert _panels(summed)[0].get_title().startswith("sum of the stems")
    path = plot_before_after(mixture, stems, tmp_path / "ba.png", sample_rate=FS, references=references)
    assert path.read_bytes().startswith(PNG)
    with pytest.raises(OutputExistsError):
        plot_before_after(mixture, stems, path, sample_rate=FS)
    with pytest.raises(ParameterError, match="at least one stem"):
        before_after_figure(mixture, {}, sample_rate=FS)


def test_spectrogram_panels_are_scipy_psd_in_db():
    from scipy import signal as sps

    stems = _tones()
    mixture = np.stack([sum(stems.values()), np.zeros(4000, np.float32)])  # 2 channels: the first is drawn
    figure = before_after_figure(mixture, {k: v[None] for k, v in stems.items()}, sample_rate=FS,
                                 view=View(n_fft=256, hop=64))
    assert "channel 1 of 2" in figure.get_suptitle()
    for ax, x in zip(_panels(figure), [mixture[0], stems["low"], stems["high"]]):
        f, t, psd = sps.spectrogram(x.astype(np.float64), fs=FS, window="hann", nperseg=256, noverlap=192,
                                    detrend=False, scaling="density", mode="psd")
        y, times, db = _mesh(ax)
        np.testing.assert_allclose(y, f, atol=1e-9)  # Hz, rows
        np.testing.assert_allclose(times, t, atol=1e-9)  # seconds, columns
        np.testing.assert_allclose(db, 10 * np.log10(psd), atol=1e-6)  # dB of the PSD, to 1e-6 dB
    freqs, times, db = spectrogram_db(10 * stems["low"].astype(np.float64), sample_rate=FS, n_fft=256, hop=64)
    assert db.shape == (freqs.size, times.size) == (129, 59)
    np.testing.assert_allclose(db - _mesh(_panels(figure)[1])[2], 20.0, atol=1e-6)  # 10x amplitude: +20 dB


def test_complex_input_gives_a_two_sided_spectrogram():
    from scipy import signal as sps

    n = 4000
    t = np.arange(n) / FS
    rng = np.random.default_rng(3)
    tone = np.exp(-2j * np.pi * 1000 * t).astype(np.complex64)  # only at -1 kHz
    noise = (0.01 * (rng.standard_normal(n) + 1j * rng.standard_normal(n))).astype(np.complex64)
    figure = before_after_figure(tone + noise, {"tone": tone, "noise": noise}, sample_rate=FS,
                                 view=View(n_fft=128, hop=32))
    assert "two-sided" in figure.get_suptitle()
    y, _, db = _mesh(_panels(figure)[1])
    assert y.min() == pytest.approx(-FS / 2) and y.max() == pytest.approx(FS / 2 - FS / 128)
    assert y[np.argmax(db.mean(axis=1))] == pytest.approx(-1000.0)
    f, _, psd = sps.spectrogram(tone.astype(np.complex128), fs=FS, window="hann", nperseg=128, noverlap=96,
                                detrend=False, scaling="density", mode="psd", return_onesided=False)
    order = np.argsort(f)
    np.testing.assert_allclose(y, f[order], atol=1e-9)
    floor = psd.max() * 1e-20  # spectrogram_db's floor: the tone's far bins are exact zeros or rounding noise
    np.testing.assert_allclose(db, 10 * np.log10(np.maximum(psd[order], floor)), atol=1e-6)


def test_scalogram_rows_are_dwt_coefficients_by_level():
    import pywt

    x = np.random.default_rng(5).standard_normal(512)
    figure = before_after_figure(x, {"all": x}, sample_rate=360.0, view=View("scalogram", wavelet="db4", level=3))
    y, times, db = _mesh(_panels(figure)[0])
    coeffs = pywt.wavedec(x, "db4", mode="periodization", level=3)  # [a3, d3, d2, d1]
    assert db.shape == (4, 512) and np.array_equal(y, np.arange(4.0))
    np.testing.assert_allclose(times, np.arange(512) / 360.0)
    for row, c in zip(db, coeffs):
        step = 512 // c.size  # each coefficient covers `step` samples
        np.testing.assert_allclose(row[::step], 20 * np.log10(np.abs(c)), atol=1e-9)
    labels = [tick.get_text() for tick in _panels(figure)[0].get_yticklabels()]
    assert labels[0].startswith("a3 0-22.5 Hz") and labels[-1].startswith("d1 90-180 Hz")
    with pytest.raises(ParameterError, match="unknown wavelet"):
        scalogram_db(x, sample_rate=360.0, wavelet="db99x")


def test_view_follows_the_recipe_in_demux_json():
    def document(transform: dict) -> dict:
        return {"recipe": {"name": "r", "stages": {"split": {"transform": transform}, "next": {}}}}

    assert view_for(document({"type": "dwt", "wavelet": "sym4", "level": 5, "mode": "periodization"})) == View(
        "scalogram", wavelet="sym4", level=5)
    assert view_for(document({"type": "cstft", "n_fft": 256, "hop": 64})) == View(n_fft=256, hop=64)
    assert view_for(document({"type": "fft"})) == View() == view_for(None)
    with pytest.raises(ParameterError, match="kind="):
        View("waterfall")
    with pytest.raises(ParameterError, match="hop=0"):
        View(hop=0)


def test_write_plots_draws_stems_in_recipe_order_with_the_recipes_view(tmp_path, monkeypatch):
    import dataclasses

    import soundfile as sf

    from demux import report as report_module

    folder = tmp_path / "est" / "t1"
    folder.mkdir(parents=True)
    stems = _tones(800)
    for name, x in stems.items():
        sf.write(folder / f"{name}.wav", x, int(FS), subtype="FLOAT")
    recipe = {"name": "waves", "stages": {"split": {"transform": {"type": "dwt", "wavelet": "db2", "level": 4}}}}
    (folder / "demux.json").write_text(json.dumps({"stems": {"low": "low.wav", "high": "high.wav"}, "recipe": recipe}))
    report = dataclasses.replace(_report({"t1": folder}), estimate_stems={"t1": {k: folder / f"{k}.wav" for k in
                                                                                 ("high", "low")}})
    drawn = []
    monkeypatch.setattr(report_module, "plot_before_after", lambda *args, **kw: drawn.append((args, kw)) or args[2])
    written = write_plots(report, tmp_path / "plots")
    assert [p.name for p in written] == ["sdr.png", "t1.before_after.png"]
    (mixture, got, _), options = drawn[0]
    assert mixture is None and list(got) == ["low", "high"]  # demux.json's order, not the files'
    np.testing.assert_array_equal(got["high"][0], stems["high"])
    assert options["view"] == View("scalogram", wavelet="db2", level=4) and "recipe waves" in options["title"]
