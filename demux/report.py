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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from demux import __version__
from demux.errors import InputError, ParameterError
from demux.evaluate import EvaluationReport, track_signals
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


def _save(figure, path: str | Path, overwrite: bool, *, dpi: int = 120) -> Path:
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as temp:
        figure.savefig(temp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
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


# --------------------------------------------------------------------------- before/after figure

ViewKind = Literal["spectrogram", "scalogram"]

MAX_COLUMNS = 1500
"""Most time columns a before/after panel draws; longer signals get a coarser hop."""

BEFORE_AFTER_DPI = 100
"""Resolution of the before/after figure (it is the largest one; ~100-200 KB as PNG)."""

COLORMAP = "magma"
"""Colour map of the before/after panels (dark = quiet)."""


@dataclass(frozen=True)
class View:
    """How :func:`before_after_figure` draws each signal.

    Attributes:
        kind: ``"spectrogram"`` (log power spectral density over time and frequency) or
            ``"scalogram"`` (log |DWT coefficient| per level over time, for wavelet recipes).
        n_fft: spectrogram frame length in samples; ``None``: the power of two nearest
            ``2 sqrt(T)`` (as many bins as frames, roughly), between 16 and 4096.
        hop: spectrogram hop in samples; ``None``: ``n_fft // 4``. Raised where needed so a
            panel has at most :data:`MAX_COLUMNS` frames.
        wavelet: the scalogram's pywt wavelet.
        level: the scalogram's number of levels; ``None``: 8, or fewer if the signal is short.
        mode: the scalogram's pywt signal extension mode.
    """

    kind: ViewKind = "spectrogram"
    n_fft: int | None = None
    hop: int | None = None
    wavelet: str = "db4"
    level: int | None = None
    mode: str = "periodization"

    def __post_init__(self) -> None:
        if self.kind not in get_args(ViewKind):
            raise ParameterError(f"view kind={self.kind!r}; expected one of {', '.join(get_args(ViewKind))}")
        for name in ("n_fft", "hop", "level"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ParameterError(f"view {name}={value!r} is not an integer >= 1")


def view_for(provenance: Mapping | None) -> View:
    """The :class:`View` that suits the recipe recorded in a ``demux.json`` document.

    A first stage in ``dwt`` gives a scalogram with the recipe's wavelet, level and
    mode; ``stft``/``cstft`` a spectrogram with the recipe's frame and hop; anything else
    (whole-signal FFT or DCT, spatial transforms, no document) the default spectrogram.
    """
    stages = ((provenance or {}).get("recipe") or {}).get("stages") or {}
    first = next(iter(stages.values() if isinstance(stages, Mapping) else stages), {})
    transform = first.get("transform", {}) if isinstance(first, Mapping) else {}
    kind = transform.get("type")
    if kind == "dwt":
        return View("scalogram", wavelet=transform.get("wavelet", "db4"), level=transform.get("level"),
                    mode=transform.get("mode", "periodization"))
    if kind in ("stft", "cstft"):
        return View(n_fft=transform.get("n_fft"), hop=transform.get("hop"))
    return View()


def _frames(samples: int, n_fft: int | None, hop: int | None) -> tuple[int, int]:
    if n_fft is None:
        n_fft = 2 ** int(np.clip(round(math.log2(2 * math.sqrt(max(samples, 1)))), 4, 12))
    hop = max(hop or max(n_fft // 4, 1), math.ceil(samples / MAX_COLUMNS))
    return n_fft, hop


def spectrogram_db(
    x: np.ndarray, *, sample_rate: float, n_fft: int | None = None, hop: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log power spectral density of one signal over time and frequency.

    Periodic Hann frames of ``n_fft`` samples every ``hop`` samples, those that lie wholly
    inside the signal (the frames of the legacy ``scipy.signal.spectrogram``; a signal
    shorter than one frame gets frames centred at ``0, hop, ...``, zero-padded), scaled as
    a PSD (scipy ``ShortTimeFFT``'s ``scale_to="psd"``, the legacy ``scaling="density"``):
    one-sided with the bins other than DC and Nyquist doubled for real input; two-sided,
    from -fs/2 to fs/2, for complex (I/Q) input. No detrending.

    Args:
        x: ``(T,)`` real or complex samples.
        sample_rate: Hz.
        n_fft: frame length, samples (``None``: see :class:`View`).
        hop: hop, samples (``None``: see :class:`View`; raised to keep at most
            :data:`MAX_COLUMNS` frames).

    Returns:
        ``freqs_hz (F,)`` ascending, ``times_s (N,)`` frame centres, and ``db (F, N)``:
        ``10 log10`` of the PSD in (signal unit)^2/Hz, floored 200 dB under its peak so
        silence is finite.
    """
    from scipy.signal import ShortTimeFFT
    from scipy.signal.windows import hann

    x = np.asarray(x)
    if x.ndim != 1 or x.size == 0:
        raise ParameterError(f"spectrogram_db: x has shape {x.shape}; expected (T,) with T >= 1")
    n_fft, hop = _frames(x.size, n_fft, hop)
    mode = "centered" if np.iscomplexobj(x) else "onesided2X"
    stft = ShortTimeFFT(hann(n_fft, sym=False), hop=hop, fs=float(sample_rate), fft_mode=mode, scale_to="psd")
    # frames that overlap an end would show the zero padding as a broadband click
    first, last = stft.lower_border_end[1], stft.upper_border_begin(x.size)[1]
    if last <= first:
        first, last = 0, x.size // hop + 1
    x = x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)
    power = stft.spectrogram(x, p0=first, p1=last)
    floor = max(float(power.max()), np.finfo(np.float64).tiny) * 1e-20
    return stft.f, stft.t(x.size, p0=first, p1=last), 10 * np.log10(np.maximum(power, floor))


def scalogram_db(
    x: np.ndarray, *, sample_rate: float, wavelet: str = "db4", level: int | None = None, mode: str = "periodization"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log magnitude of the DWT coefficients per level over time: the wavelet recipes' view.

    Rows go up in frequency, as in a spectrogram: the approximation ``a_L``, then the
    details ``d_L ... d_1``. Each level's coefficients are spread evenly over the signal,
    so column ``n`` shows, per level, the coefficient whose support covers ``times_s[n]``.

    Args:
        x: ``(T,)`` real samples.
        sample_rate: Hz.
        wavelet: pywt wavelet name.
        level: number of levels (``None``: 8); capped at what ``T`` allows.
        mode: pywt signal extension mode.

    Returns:
        ``bands_hz (L+1, 2)``: the nominal band of each row, ``[0, fs/2^(L+1)]`` for
        ``a_L`` and ``[fs/2^(j+1), fs/2^j]`` for ``d_j``; ``times_s (N,)`` with
        ``N = min(T, MAX_COLUMNS)``; and ``db (L+1, N)`` = ``20 log10 |c|`` (floored 200 dB
        under the peak).
    """
    import pywt

    x = np.asarray(x)
    if x.ndim != 1 or np.iscomplexobj(x):
        raise ParameterError(f"scalogram_db: x is {x.dtype} {x.shape}; expected real samples (T,)")
    try:
        filter_length = pywt.Wavelet(wavelet).dec_len
    except ValueError:
        raise ParameterError(
            f"unknown wavelet {wavelet!r} (expected a name from pywt.wavelist(kind='discrete'))"
        ) from None
    deepest = pywt.dwt_max_level(x.size, filter_length)
    if deepest < 1:
        raise ParameterError(f"scalogram_db: {x.size} samples are too few for one level of {wavelet}")
    level = min(level or 8, deepest)
    coeffs = pywt.wavedec(x.astype(np.float64), wavelet, mode=mode, level=level)  # [a_L, d_L, ..., d_1]
    columns = np.round(np.linspace(0, x.size - 1, min(x.size, MAX_COLUMNS))).astype(np.int64)
    magnitude = np.stack([np.abs(c)[np.minimum(columns * c.size // x.size, c.size - 1)] for c in coeffs])
    floor = max(float(magnitude.max()), np.finfo(np.float64).tiny) * 1e-10
    edges = sample_rate / 2.0 ** np.arange(level + 1, 0, -1)  # fs/2^(L+1) ... fs/2
    bands = np.column_stack([np.concatenate([[0.0], edges[:-1]]), edges])
    return bands, columns / sample_rate, 20 * np.log10(np.maximum(magnitude, floor))


def _one_channel(x: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """``(T,)`` or ``(C, T)`` -> the first channel and ``C``."""
    x = np.asarray(x)
    if x.ndim == 1:
        return x, 1
    if x.ndim == 2 and x.shape[0] >= 1:
        return x[0], x.shape[0]
    raise ParameterError(f"{name} has shape {x.shape}; expected (time,) or (channel, time)")


def before_after_figure(
    mixture: np.ndarray | None,
    stems: Mapping[str, np.ndarray],
    *,
    sample_rate: float,
    references: Mapping[str, np.ndarray] | None = None,
    view: View = View(),
    title: str = "",
    dynamic_range_db: float = 80.0,
):
    """The mixture and each stem (its reference beside it) as spectrograms or scalograms.

    Row 0 is the mixture, across the figure. Then one row per stem, the stem on the left
    and, where ``references`` has one of the same name, that reference on the right;
    references that no stem is named after get rows of their own, on the right. All
    panels share one colour scale, from the loudest panel's peak down
    ``dynamic_range_db``, so they compare directly. Multichannel signals are drawn by
    their first channel (the title says so).

    Args:
        mixture: ``(C, T)`` or ``(T,)``, real or complex (I/Q: two-sided spectra);
            ``None`` draws the sum of the stems, titled as such.
        stems: name -> estimate, shaped like the mixture.
        sample_rate: Hz.
        references: name -> reference, shaped like the stems; ``None``: stems only.
        view: spectrogram or scalogram, and their parameters (see :func:`view_for`).
        title: first line of the figure's title (a second says what is drawn).
        dynamic_range_db: dB of the colour scale.

    Returns:
        A ``matplotlib.figure.Figure`` (rendered by Agg, not registered with pyplot).
        Its panels are its axes other than the colour bar (label ``"<colorbar>"``):
        ``1 + len(stems) + len(references)``, in the order mixture, then row by row
        stem and reference.

    Raises:
        ParameterError: no stems; a signal that is not ``(T,)`` or ``(C, T)``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, MaxNLocator

    if not stems:
        raise ParameterError("before_after_figure needs at least one stem")
    references = dict(references or {})
    if mixture is None:
        mixture, mixture_title = sum(np.asarray(s) for s in stems.values()), "sum of the stems (no mixture given)"
    else:
        mixture_title = "mixture"
    first, channels = _one_channel(mixture, "mixture")
    panels = [(mixture_title, first)]
    rows = [(name, name if name in references else None) for name in stems]
    rows += [(None, name) for name in references if name not in stems]
    cells = []  # (grid row, grid column) of each panel after the mixture's
    for r, (stem, ref) in enumerate(rows, start=1):
        for column, name, label, source in ((0, stem, "stem", stems), (1, ref, "reference", references)):
            if name is not None:
                cells.append((r, column))
                panels.append((f"{label}: {name}", _one_channel(source[name], f"{label} {name!r}")[0]))
    scalogram = view.kind == "scalogram"

    def draw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """``(y, times, values, y tick labels)``; a scalogram's rows are labelled by level and band."""
        if scalogram:
            bands, times, db = scalogram_db(x, sample_rate=sample_rate, wavelet=view.wavelet, level=view.level,
                                            mode=view.mode)
            names = [f"a{len(bands) - 1}"] + [f"d{j}" for j in range(len(bands) - 1, 0, -1)]
            labels = [f"{n} {lo:.3g}-{hi:.3g} Hz" for n, (lo, hi) in zip(names, bands)]
            return np.arange(len(bands), dtype=np.float64), times, db, labels
        return *spectrogram_db(x, sample_rate=sample_rate, n_fft=view.n_fft, hop=view.hop), []

    data = [draw(x) for _, x in panels]
    vmax = max(float(d[2].max()) for d in data)
    columns = 2 if references else 1
    figure = Figure(figsize=(5.0 * columns, 1.4 + 1.7 * (len(rows) + 1)), layout="constrained")
    grid = figure.add_gridspec(len(rows) + 1, columns)
    axes = [figure.add_subplot(grid[0, :])]
    for r, column in cells:
        axes.append(figure.add_subplot(grid[r, column], sharex=axes[0], sharey=axes[0]))
    for ax, (label, _), (y, times, db, _) in zip(axes, panels, data):
        image = ax.pcolormesh(times, y, db, vmin=vmax - dynamic_range_db, vmax=vmax, cmap=COLORMAP,
                              shading="nearest", rasterized=True)
        ax.set_title(label, fontsize="medium")
        ax.set_ylabel("level" if scalogram else "frequency")
    # the axes share their tickers: 10 ms and 250 kHz rather than 0.01 and 250000
    axes[0].xaxis.set_major_formatter(EngFormatter(unit="s"))
    axes[0].xaxis.set_major_locator(MaxNLocator(nbins=5))  # "10 ms" labels need room in half-width panels
    for ax, (r, _) in zip(axes[1:], cells):
        ax.set_xlabel("time" if r == len(rows) else "")
    if scalogram:
        axes[0].set_yticks(data[0][0], data[0][3])
        for ax in axes:
            ax.tick_params(axis="y", labelsize="x-small")
        drawn, unit = f"scalogram: |{view.wavelet} DWT coefficients| per level, dB", "dB (|coefficient|)"
    else:
        axes[0].yaxis.set_major_formatter(EngFormatter(unit="Hz"))
        drawn = "spectrogram: power spectral density, dB" + (", two-sided (I/Q)" if np.iscomplexobj(first) else "")
        unit = "dB re 1 unit²/Hz (PSD)"
    if channels > 1:
        drawn += f"; channel 1 of {channels}"
    figure.suptitle(f"{title}\n{drawn}" if title else drawn, fontsize="medium")
    figure.colorbar(image, ax=axes, label=unit, shrink=0.8)
    return figure


def plot_before_after(
    mixture: np.ndarray | None,
    stems: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    sample_rate: float,
    references: Mapping[str, np.ndarray] | None = None,
    view: View = View(),
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """Write :func:`before_after_figure` to ``path`` (its extension picks the format) at
    :data:`BEFORE_AFTER_DPI`; returns ``path``."""
    figure = before_after_figure(mixture, stems, sample_rate=sample_rate, references=references, view=view, title=title)
    return _save(figure, path, overwrite, dpi=BEFORE_AFTER_DPI)


def _read_provenance(folder: Path) -> dict | None:
    """``folder/demux.json`` as a dict, or ``None`` where there is none."""
    path = folder / "demux.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(path, f"not valid JSON ({error})") from None


def write_plots(report: EvaluationReport, folder: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``sdr.png`` and, per track: ``<track>.before_after.png`` (mixture, stems and
    references; see :func:`before_after_figure`, drawn as the recipe in the track's
    ``demux.json`` suits), the trust-region trajectories of its ``demux.json`` and the
    dropout spectrum of its ``masks.npz``, where the estimate folder holds them.
    Returns the files written."""
    folder = Path(folder)
    written = [plot_sdr(report, folder / "sdr.png", overwrite=overwrite)]
    for track, estimates in report.estimate_folders.items():
        document = _read_provenance(estimates)
        if track in report.estimate_stems:
            signals = track_signals(report, track)
            recipe = ((document or {}).get("recipe") or {}).get("name")
            # the recipe's source order (demux.json's stems), then any other stem (a residual...)
            order = [k for k in (document or {}).get("stems") or {} if k in signals.stems]
            stems = {k: signals.stems[k] for k in order + [k for k in signals.stems if k not in order]}
            written.append(plot_before_after(
                signals.mixture, stems, folder / f"{track}.before_after.png", sample_rate=signals.sample_rate,
                references=signals.references, view=view_for(document),
                title=f"{track}" + (f", recipe {recipe}" if recipe else ""), overwrite=overwrite,
            ))
        for index, (stage, trajectory) in enumerate(trajectories(document or {})):
            out = folder / f"{track}.trajectory{index}.png"
            written.append(plot_trajectory(trajectory, out, title=f"{track}: {stage}", overwrite=overwrite))
        if (estimates / "masks.npz").is_file():
            masks = load_masks(estimates / "masks.npz")
            masks["names"] = [str(n) for n in masks["names"]]
            written.append(plot_masks(**masks, path=folder / f"{track}.masks.png", overwrite=overwrite))
    return written
