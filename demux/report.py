"""Write evaluation reports (JSON, CSV, Markdown) and draw figures.

Every file goes through :func:`demux.io.atomic_write`, so an interrupted run leaves
no half-written report, and nothing is replaced without ``overwrite=True``.

Non-finite scores: JSON has no NaN or infinity, so NaN (undefined, e.g. a silent
reference) is written as ``null`` and an infinite score (the SIR with a single
reference) as the string ``"inf"`` or ``"-inf"``; CSV and Markdown write ``nan``
and ``inf``.

Figures use matplotlib's object API (``Figure``, rendered by Agg), never pyplot, so
they neither need a display nor change the caller's backend.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from demux import __version__
from demux.errors import InputError, ParameterError
from demux.evaluate import EvaluationReport
from demux.io import atomic_write, write_text_atomic

TRAJECTORY_KEYS = ("step", "objective", "rho", "radius", "mask_change", "dropout", "accepted")
"""Keys of a stage's ``trajectory`` in ``demux.json``: per-step lists of per-item values."""

MASK_KEYS = ("masks", "freqs_hz", "times_s", "names")
"""Arrays a masks ``.npz`` holds for :func:`plot_masks` (see :func:`load_masks`)."""


def _json_value(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def report_dict(report: EvaluationReport) -> dict:
    """JSON-ready report: engine, version, per-track scores, aggregate, notes."""
    tracks = {
        track: {
            "sample_rate": report.sample_rates.get(track),
            "sources": {
                row.source: {m: _json_value(row.values[m]) for m in report.metrics}
                for row in report.rows
                if row.track == track
            },
        }
        for track in report.tracks
    }
    aggregate = {
        source: {m: {k: _json_value(v) for k, v in stats.items()} for m, stats in per_metric.items()}
        for source, per_metric in report.aggregate().items()
    }
    return {
        "engine": report.engine,
        "engine_version": report.engine_version,
        "demux_version": __version__,
        "reference": str(report.reference),
        "estimate": str(report.estimate),
        "metrics": list(report.metrics),
        "units": "dB",
        "tracks": tracks,
        "aggregate": aggregate,
        "notes": list(report.notes),
    }


def write_json(report: EvaluationReport, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write :func:`report_dict` as indented JSON; returns ``path``."""
    return write_text_atomic(path, json.dumps(report_dict(report), indent=2) + "\n", overwrite=overwrite)


def csv_text(report: EvaluationReport) -> str:
    """One row per track x source: ``track, source, <metrics...>`` in dB."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["track", "source", *report.metrics])
    for row in report.rows:
        writer.writerow([row.track, row.source, *(f"{row.values[m]:.4f}" for m in report.metrics)])
    return buffer.getvalue()


def write_csv(report: EvaluationReport, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write :func:`csv_text`; returns ``path``."""
    return write_text_atomic(path, csv_text(report), overwrite=overwrite)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(report: EvaluationReport) -> str:
    """The report as Markdown: per-track table, aggregate (median [IQR], mean), notes."""
    metrics = report.metrics
    per_track = _table(
        ["track", "source", *metrics],
        [[row.track, row.source, *(f"{row.values[m]:.2f}" for m in metrics)] for row in report.rows],
    )
    aggregate = report.aggregate()
    summary = _table(
        ["source", "n", *(f"{m} median [IQR] / mean" for m in metrics)],
        [
            [source, str(stats[metrics[0]]["n"])]
            + [f"{stats[m]['median']:.2f} [{stats[m]['iqr']:.2f}] / {stats[m]['mean']:.2f}" for m in metrics]
            for source, stats in aggregate.items()
        ],
    )
    parts = [
        "# Evaluation",
        "",
        f"- reference: `{report.reference}`",
        f"- estimate: `{report.estimate}`",
        f"- BSS-Eval v3 engine: {report.engine} {report.engine_version} (SDR/SIR/SAR, sources, no permutation); "
        f"SI-SDR; all in dB; demux {__version__}",
        "",
        "## Aggregate over tracks",
        "",
        summary,
        "",
        "## Per track",
        "",
        per_track,
    ]
    if report.notes:
        parts += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    return "\n".join(parts) + "\n"


def write_markdown(report: EvaluationReport, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write :func:`markdown`; returns ``path``."""
    return write_text_atomic(path, markdown(report), overwrite=overwrite)


def _save(figure, path: str | Path, overwrite: bool) -> Path:
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as temp:
        figure.savefig(temp, format=path.suffix.lstrip(".") or "png", dpi=120)
    return path


def plot_sdr(report: EvaluationReport, path: str | Path, *, overwrite: bool = False) -> Path:
    """Bars of the median SDR and SI-SDR per source (IQR whiskers), beside the mixture floor."""
    from matplotlib.figure import Figure

    aggregate = report.aggregate()
    metrics = [m for m in ("sdr", "si_sdr", "mix_sdr", "mix_si_sdr") if m in report.metrics]
    sources = list(aggregate)
    figure = Figure(figsize=(max(4.0, 1.2 * len(sources) * len(metrics) / 2 + 2), 3.5), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(metrics)
    x = np.arange(len(sources))
    for i, metric in enumerate(metrics):
        median = np.array([aggregate[s][metric]["median"] for s in sources])
        iqr = np.nan_to_num(np.array([aggregate[s][metric]["iqr"] for s in sources]))
        axes.bar(
            x + (i - (len(metrics) - 1) / 2) * width, median, width, yerr=iqr / 2, capsize=3,
            label=metric, hatch="//" if metric.startswith("mix_") else None,
        )
    axes.axhline(0, color="black", linewidth=0.5)
    axes.set_xticks(x, sources)
    axes.set_ylabel("dB (median over tracks)")
    axes.set_title(f"{len(report.tracks)} track(s), {report.engine} {report.engine_version}")
    axes.legend(fontsize="small")
    return _save(figure, path, overwrite)


def plot_masks(
    masks: np.ndarray,
    freqs_hz: np.ndarray,
    times_s: np.ndarray,
    names: Sequence[str],
    path: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """The "dropout spectrum": drop probability ``p = 1 - m`` per source over time and frequency.

    Args:
        masks: ``(S, F, N)`` keep masks in [0, 1] (one channel, one item).
        freqs_hz: ``(F,)`` centre frequency of each bin, Hz.
        times_s: ``(N,)`` centre time of each frame, seconds.
        names: ``S`` source names.
        path: image file to write (its extension picks the format).
    """
    from matplotlib.figure import Figure

    masks = np.asarray(masks, dtype=np.float64)
    freqs_hz, times_s = np.asarray(freqs_hz, dtype=np.float64), np.asarray(times_s, dtype=np.float64)
    if masks.ndim != 3 or masks.shape[1:] != (freqs_hz.size, times_s.size) or masks.shape[0] != len(names):
        raise ParameterError(
            f"masks {masks.shape} must be (S, F, N) = ({len(names)}, {freqs_hz.size}, {times_s.size}) "
            "for the given names, freqs_hz and times_s"
        )
    S = masks.shape[0]
    figure = Figure(figsize=(7, 1.2 + 2.0 * S), layout="constrained")
    axes = figure.subplots(S, 1, sharex=True, squeeze=False)[:, 0]
    for ax, mask, name in zip(axes, masks, names):
        image = ax.pcolormesh(times_s, freqs_hz, 1 - mask, vmin=0, vmax=1, cmap="magma", shading="nearest")
        ax.set_ylabel(f"{name}\nHz")
    axes[-1].set_xlabel("time (s)")
    figure.colorbar(image, ax=list(axes), label="drop probability")
    return _save(figure, path, overwrite)


def load_masks(path: str | Path) -> dict[str, np.ndarray]:
    """Read a masks ``.npz`` with arrays ``masks (S, F, N)``, ``freqs_hz``, ``times_s``, ``names``.

    Raises:
        InputError: the file is missing or lacks one of :data:`MASK_KEYS`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found")
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in MASK_KEYS if key not in data]
        if missing:
            raise InputError(path, f"lacks array(s) {', '.join(missing)} (expected {', '.join(MASK_KEYS)})")
        return {key: data[key] for key in MASK_KEYS}


def trajectories(provenance: Mapping) -> list[tuple[str, dict]]:
    """``(stage name, trajectory)`` for each stage of a ``demux.json`` document.

    Looks for ``trajectory`` dicts at any depth (a stage entry holds one beside its
    ``name``), so it follows the document's nesting without hard-coding it.
    """
    found: list[tuple[str, dict]] = []

    def visit(node, name: str) -> None:
        if isinstance(node, Mapping):
            label = str(node.get("name", name))
            if isinstance(node.get("trajectory"), Mapping) and node["trajectory"]:
                found.append((label, dict(node["trajectory"])))
            for key, value in node.items():
                if key != "trajectory":
                    visit(value, label)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                visit(value, f"{name}[{i}]")

    visit(provenance, "stage")
    return found


def _per_item(values: Sequence) -> np.ndarray:
    """Per-step list of per-item values (``None`` for non-finite) -> ``(steps, items)`` float."""
    return np.array(values, dtype=np.float64).reshape(len(values), -1)  # None -> nan


def plot_trajectory(
    trajectory: Mapping[str, Sequence], path: str | Path, *, title: str = "", overwrite: bool = False
) -> Path:
    """Trust-region radius, rho and dropout rate over the steps, one line per item.

    Rejected steps are marked with ``x`` on the rho panel.

    Args:
        trajectory: a stage's ``trajectory`` from ``demux.json``: per-step lists of
            per-item values under :data:`TRAJECTORY_KEYS` (``step`` may hold one
            index per step); ``None`` stands for a non-finite value.
        path: image file to write.
        title: figure title, e.g. the stage name.

    Raises:
        ParameterError: ``radius``, ``rho``, ``dropout`` or ``accepted`` is missing.
    """
    from matplotlib.figure import Figure

    missing = [key for key in ("radius", "rho", "dropout", "accepted") if key not in trajectory]
    if missing:
        raise ParameterError(f"trajectory lacks {', '.join(missing)} (expected keys {', '.join(TRAJECTORY_KEYS)})")
    radius = _per_item(trajectory["radius"])
    rho = _per_item(trajectory["rho"])
    dropout = _per_item(trajectory["dropout"])
    accepted = _per_item(trajectory["accepted"]) > 0
    steps = np.asarray(trajectory.get("step", range(len(radius))), dtype=np.float64).reshape(len(radius), -1)[:, 0]
    figure = Figure(figsize=(7, 6), layout="constrained")
    ax_radius, ax_rho, ax_drop = figure.subplots(3, 1, sharex=True)
    ax_radius.semilogy(steps, radius)
    ax_radius.set_ylabel("radius Δ")
    ax_rho.plot(steps, np.clip(rho, -1.0, 2.0))
    for item in range(rho.shape[1]):
        rejected = ~accepted[:, item]
        # a rejected step's rho may be -inf (overshoot) or missing: mark it at the floor
        floor = np.clip(np.nan_to_num(rho[rejected, item], nan=-1.0, neginf=-1.0), -1.0, 2.0)
        ax_rho.plot(steps[rejected], floor, "kx")
    ax_rho.set_ylabel("ρ (clipped to [-1, 2])")
    ax_drop.plot(steps, dropout)
    ax_drop.set_ylabel("p_drop rate")
    ax_drop.set_xlabel("step")
    if title:
        figure.suptitle(title)
    return _save(figure, path, overwrite)


def write_plots(report: EvaluationReport, folder: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``sdr.png`` and, per track whose estimate folder holds them, the
    trust-region trajectories of its ``demux.json`` and the dropout spectrum of its
    ``masks.npz``. Returns the files written."""
    folder = Path(folder)
    written = [plot_sdr(report, folder / "sdr.png", overwrite=overwrite)]
    for track, estimates in report.estimate_folders.items():
        provenance = estimates / "demux.json"
        if provenance.is_file():
            try:
                document = json.loads(provenance.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise InputError(provenance, f"not valid JSON ({error})") from None
            for index, (stage, trajectory) in enumerate(trajectories(document)):
                out = folder / f"{track}.trajectory{index}.png"
                written.append(plot_trajectory(trajectory, out, title=f"{track}: {stage}", overwrite=overwrite))
        if (estimates / "masks.npz").is_file():
            masks = load_masks(estimates / "masks.npz")
            masks["names"] = [str(n) for n in masks["names"]]
            written.append(plot_masks(**masks, path=folder / f"{track}.masks.png", overwrite=overwrite))
    return written
