"""Score estimated stems against reference stems, track by track.

Layout: a reference and an estimate are each a file or a folder. A folder either
holds tracks (``<track>/<source>.<ext>``, as ``demux separate -o OUT`` writes them)
or is one track (``<source>.<ext>`` directly inside). Stems are paired by track and
source name. ``mixture.<ext>`` in a reference track (or ``mixture``) is scored as an
estimate of every source: the floor, from which ``sdr_imp`` and ``si_sdr_imp``
are measured.

Scores are BSS-Eval v3 sources (SDR/SIR/SAR, labelled stems, so no permutation) and
SI-SDR, in dB. Multichannel stems are scored channel by channel and the dB values
averaged over channels, with either engine. Complex (I/Q) stems are scored on their
real and imaginary parts as two channels.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from demux.errors import InputError, ParameterError
from demux.metrics import Engine, MetricWarning, _check_choice, bss_eval, engine_version, si_sdr

MIXTURE = "mixture"
"""Stem name of the mixture in a reference track."""

STEM_EXTENSIONS = (".wav", ".flac", ".npy")
"""Extensions of stem files; other files in a track folder (``demux.json``...) are ignored."""

BASE_METRICS = ("sdr", "sir", "sar", "si_sdr")
MIXTURE_METRICS = ("mix_sdr", "mix_si_sdr", "sdr_imp", "si_sdr_imp")


@dataclass(frozen=True)
class ScoreRow:
    """Scores of one source of one track.

    Attributes:
        track: track name.
        source: source (stem) name.
        values: metric name -> value in dB (``BASE_METRICS``, plus
            ``MIXTURE_METRICS`` when a mixture was scored); NaN where undefined.
    """

    track: str
    source: str
    values: dict[str, float]


@dataclass(frozen=True)
class EvaluationReport:
    """Per-track scores and where they came from.

    Attributes:
        rows: one :class:`ScoreRow` per track x source, tracks in name order,
            sources in reference order.
        metrics: metric names present in every row, in column order.
        engine: BSS-Eval engine (``"fast"`` or ``"mir_eval"``).
        engine_version: version of that engine's package.
        reference: the reference file or folder.
        estimate: the estimate file or folder.
        sample_rates: track -> sample rate, Hz.
        estimate_folders: track -> the folder holding its estimate stems (where
            ``demux separate`` leaves ``demux.json``).
        notes: what was ignored or is undefined (extra stems, NaN scores...).
        estimate_stems: track -> source -> file, every estimate stem found (the
            ignored ones too), for figures (:func:`track_signals`).
        reference_stems: track -> source -> reference file.
        mixtures: track -> the mixture file scored, for tracks that had one.
    """

    rows: tuple[ScoreRow, ...]
    metrics: tuple[str, ...]
    engine: str
    engine_version: str
    reference: Path
    estimate: Path
    sample_rates: dict[str, float] = field(default_factory=dict)
    estimate_folders: dict[str, Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    estimate_stems: dict[str, dict[str, Path]] = field(default_factory=dict)
    reference_stems: dict[str, dict[str, Path]] = field(default_factory=dict)
    mixtures: dict[str, Path] = field(default_factory=dict)

    @property
    def tracks(self) -> list[str]:
        """Track names in report order."""
        return list(dict.fromkeys(row.track for row in self.rows))

    @property
    def sources(self) -> list[str]:
        """Source names in order of first appearance."""
        return list(dict.fromkeys(row.source for row in self.rows))

    def aggregate(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per source and metric: ``median``, ``mean``, ``iqr`` (q75 - q25) and ``n``.

        NaN values (silent sources) are left out and ``n`` counts the values used;
        a metric with no value has NaN statistics.
        """
        out: dict[str, dict[str, dict[str, float]]] = {}
        for source in self.sources:
            per_metric = {}
            for metric in self.metrics:
                values = np.array([r.values[metric] for r in self.rows if r.source == source], dtype=np.float64)
                per_metric[metric] = _statistics(values[~np.isnan(values)])
            out[source] = per_metric
        return out


def _statistics(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"median": math.nan, "mean": math.nan, "iqr": math.nan, "n": 0}
    # an infinite SIR (one reference) has no IQR; its median and mean can be inf
    iqr = float(np.subtract(*np.percentile(values, [75, 25]))) if np.isfinite(values).all() else math.nan
    with np.errstate(invalid="ignore"):
        return {"median": float(np.median(values)), "mean": float(values.mean()), "iqr": iqr, "n": int(values.size)}


@dataclass(frozen=True)
class _Track:
    name: str
    stems: dict[str, Path]  # source -> file
    mixture: Path | None = None


def _stems_in(folder: Path) -> dict[str, Path]:
    stems: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in STEM_EXTENSIONS and not path.name.startswith("."):
            if path.stem in stems:
                raise InputError(path, f"two stems named {path.stem!r} ({stems[path.stem].name} and {path.name})")
            stems[path.stem] = path
    return stems


def _discover(root: Path, role: str) -> dict[str, _Track]:
    """Tracks under a file, a single-track folder or a folder of track folders."""
    if not root.exists():
        raise InputError(root, f"{role} not found")
    if root.is_file():
        return {root.stem: _Track(root.stem, {root.stem: root})}
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and _stems_in(p)]
    if folders:
        tracks = {p.name: _stems_in(p) for p in folders}
    elif stems := _stems_in(root):
        tracks = {root.name: stems}
    else:
        raise InputError(root, f"no stems ({', '.join(STEM_EXTENSIONS)}) in the {role} folder or its subfolders")
    out = {}
    for name, stems in tracks.items():
        sources = {k: v for k, v in stems.items() if k != MIXTURE}
        if not sources:
            raise InputError(stems[MIXTURE].parent, f"holds only {stems[MIXTURE].name}, no {role} stems")
        out[name] = _Track(name, sources, stems.get(MIXTURE))
    return out


def _root_name(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def _pair_tracks(reference: Path, estimate: Path) -> tuple[list[tuple[_Track, _Track]], list[str]]:
    """Reference and estimate tracks paired by name, and the estimate tracks left over."""
    refs = _discover(reference, "reference")
    ests = _discover(estimate, "estimate")
    if estimate.is_file():
        if len(refs) > 1 or len(next(iter(refs.values())).stems) > 1:
            raise InputError(estimate, f"one estimate file for a reference with several stems ({reference})")
        (ref,) = refs.values()
        # a file names one source: pair it with the reference stem whatever its name
        return [(ref, _Track(ref.name, {next(iter(ref.stems)): estimate}))], []
    if set(refs) == {_root_name(reference)} and set(ests) == {_root_name(estimate)}:
        # two single-track folders (refs/song1 vs separated/take2): pair them
        (ref,) = refs.values()
        (est,) = ests.values()
        return [(ref, est)], []
    missing = sorted(set(refs) - set(ests))
    if missing:
        raise InputError(estimate, f"no estimate for track(s) {', '.join(missing)} of the reference {reference}")
    return [(refs[name], ests[name]) for name in sorted(refs)], sorted(set(ests) - set(refs))


@dataclass(frozen=True)
class _Loaded:
    path: Path
    data: np.ndarray  # (C, T) float64
    rate: float


def _load(path: Path, rate: float | None) -> _Loaded:
    from demux.io import read

    signal = read(path, rate=rate)
    data = signal.data
    if np.iscomplexobj(data):
        data = np.concatenate([data.real, data.imag])
    return _Loaded(path, data.astype(np.float64), float(signal.sample_rate))


def _check_alike(signal: _Loaded, like: _Loaded) -> None:
    """Refuse ``signal`` unless it has ``like``'s rate, length and channels (names both files)."""
    if signal.rate != like.rate:
        raise InputError(signal.path, f"sample rate {signal.rate:g} Hz but {like.path} has {like.rate:g} Hz")
    (C, T), (ref_C, ref_T) = signal.data.shape, like.data.shape
    if T != ref_T:
        raise InputError(signal.path, f"{T} samples but {like.path} has {ref_T}")
    if C != ref_C:
        raise InputError(signal.path, f"{C} channels but {like.path} has {ref_C}")


def _score(refs: torch.Tensor, ests: torch.Tensor, engine: Engine) -> dict[str, list[float]]:
    """``(S, C, T)`` references and estimates -> metric -> per-source values."""
    by_channel_ref = refs.movedim(1, 0)  # (C, S, T): channels are a batch
    by_channel_est = ests.movedim(1, 0)
    result = bss_eval(by_channel_ref, by_channel_est, engine=engine, permutation=False)
    scores = {"sdr": result.sdr, "sir": result.sir, "sar": result.sar, "si_sdr": si_sdr(by_channel_est, by_channel_ref)}
    # per source, the mean over the channels where the score is defined (NaN if none is)
    return {name: torch.nanmean(value, dim=0).tolist() for name, value in scores.items()}


def _evaluate_track(
    ref: _Track,
    est: _Track,
    *,
    engine: Engine,
    mixture: Path | None,
    rate: float | None,
    strict: bool,
    combine: dict[str, list[str]],
    notes: list[str],
) -> tuple[list[ScoreRow], float]:
    parts = {name: combine.get(name, [name]) for name in ref.stems}
    missing = [part for name in ref.stems for part in parts[name] if part not in est.stems]
    if missing:
        folder = next(iter(est.stems.values())).parent if est.stems else est.name
        raise InputError(folder, f"track {ref.name!r}: missing estimate stem(s) {', '.join(missing)}")
    used = {part for name in ref.stems for part in parts[name]}
    extra = [name for name in est.stems if name not in used]
    if extra and strict:
        raise InputError(est.stems[extra[0]], f"track {ref.name!r}: no reference stem named {extra[0]!r} (strict)")
    if extra:
        notes.append(f"{ref.name}: estimate stem(s) {', '.join(extra)} have no reference; ignored")
    names = list(ref.stems)
    refs = [_load(ref.stems[name], rate) for name in names]
    for other in refs[1:]:
        _check_alike(other, refs[0])
    ests = []
    for name, like in zip(names, refs):
        loaded = []
        for part in parts[name]:  # several estimate stems may together estimate one reference
            loaded.append(_load(est.stems[part], rate))
            _check_alike(loaded[-1], like)
        ests.append(dataclasses.replace(loaded[0], data=sum(stem.data for stem in loaded)))
    ref_data = torch.from_numpy(np.stack([r.data for r in refs]))
    est_data = torch.from_numpy(np.stack([e.data for e in ests]))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        scores = _score(ref_data, est_data, engine)
        mixture = mixture or ref.mixture
        if mixture is not None:
            mix = _load(mixture, rate)
            _check_alike(mix, refs[0])
            floor = _score(ref_data, torch.from_numpy(mix.data).expand_as(ref_data), engine)
            scores["mix_sdr"], scores["mix_si_sdr"] = floor["sdr"], floor["si_sdr"]
            scores["sdr_imp"] = [a - b for a, b in zip(scores["sdr"], floor["sdr"])]
            scores["si_sdr_imp"] = [a - b for a, b in zip(scores["si_sdr"], floor["si_sdr"])]
    for warning in caught:
        if issubclass(warning.category, MetricWarning):
            notes.append(f"{ref.name}: {warning.message}")
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    rows = [ScoreRow(ref.name, name, {m: v[s] for m, v in scores.items()}) for s, name in enumerate(names)]
    return rows, refs[0].rate


def evaluate(
    reference: Path,
    estimate: Path,
    *,
    engine: Engine = "fast",
    mixture: Path | None = None,
    rate: float | None = None,
    strict: bool = False,
    combine: dict[str, list[str]] | None = None,
) -> EvaluationReport:
    """Score estimated stems against references, per track and source.

    Args:
        reference: a reference stem file, a track folder (``<source>.<ext>``) or a
            folder of track folders (``<track>/<source>.<ext>``).
        estimate: the same layout for the estimates; extra stems (``residual``...)
            and extra tracks are ignored and listed in ``notes``.
        engine: BSS-Eval engine, ``"fast"`` (demux's batched torch engine) or ``"mir_eval"``.
        mixture: the mixture, a file (one track) or a folder laid out like
            ``reference`` holding ``<track>/mixture.<ext>``; by default each
            reference track's own ``mixture.<ext>`` when present.
        rate: sample rate in Hz for ``.npy`` stems, which do not store one.
        strict: refuse extra estimate stems instead of ignoring them.
        combine: reference name -> the estimate stems whose sum estimates it
            (``{"speech": ["pitched", "tonal"]}``), for recipes whose stems are
            finer than the references.

    Returns:
        An :class:`EvaluationReport` with columns ``sdr, sir, sar, si_sdr`` and, when
        a mixture was scored, ``mix_sdr, mix_si_sdr, sdr_imp, si_sdr_imp``.

    Raises:
        InputError: a missing file, track or stem; stems that differ in length,
            sample rate or channels (the message names both files); an extra
            estimate stem with ``strict``.
        ParameterError: an unknown engine, or a mixture file with several tracks.
    """
    _check_choice("engine", engine, Engine)
    reference, estimate = Path(reference), Path(estimate)
    pairs, extra_tracks = _pair_tracks(reference, estimate)
    mixtures: dict[str, Path | None] = {ref.name: None for ref, _ in pairs}
    if mixture is not None:
        mixture = Path(mixture)
        if mixture.is_file():
            if len(pairs) > 1:
                raise ParameterError(
                    f"mixture {mixture} is one file but the reference has {len(pairs)} tracks; "
                    f"pass a folder of <track>/{MIXTURE}.<ext> or put {MIXTURE}.<ext> in each reference track"
                )
            mixtures[pairs[0][0].name] = mixture
        else:
            found = _discover(mixture, "mixture")
            for name in mixtures:
                track = found.get(name) or (next(iter(found.values())) if len(found) == 1 else None)
                if track is None or track.mixture is None:
                    raise InputError(mixture, f"no {MIXTURE}.<ext> for track {name!r}")
                mixtures[name] = track.mixture
    notes: list[str] = []
    if extra_tracks:
        notes.append(f"estimate track(s) {', '.join(extra_tracks)} have no reference; ignored")
    rows: list[ScoreRow] = []
    rates: dict[str, float] = {}
    folders: dict[str, Path] = {}
    scored_mixtures: dict[str, Path] = {}
    for ref, est in pairs:
        track_rows, rates[ref.name] = _evaluate_track(
            ref, est, engine=engine, mixture=mixtures[ref.name], rate=rate, strict=strict, combine=combine or {},
            notes=notes,
        )
        rows.extend(track_rows)
        folders[ref.name] = next(iter(est.stems.values())).parent
        if (mix := mixtures[ref.name] or ref.mixture) is not None:
            scored_mixtures[ref.name] = mix
    without_mixture = sorted({row.track for row in rows if MIXTURE_METRICS[0] not in row.values})
    if without_mixture and len(without_mixture) < len(pairs):
        notes.append(f"no mixture for track(s) {', '.join(without_mixture)}: no improvement columns in this report")
    return EvaluationReport(
        rows=tuple(rows),
        metrics=BASE_METRICS + (() if without_mixture else MIXTURE_METRICS),
        engine=engine,
        engine_version=engine_version(engine),
        reference=reference,
        estimate=estimate,
        sample_rates=rates,
        estimate_folders=folders,
        notes=tuple(notes),
        estimate_stems={ref.name: dict(est.stems) for ref, est in pairs},
        reference_stems={ref.name: dict(ref.stems) for ref, _ in pairs},
        mixtures=scored_mixtures,
    )


@dataclass(frozen=True)
class TrackSignals:
    """One evaluated track's signals, as read (for figures).

    Attributes:
        track: track name.
        sample_rate: Hz.
        mixture: ``(C, T)`` float32 or complex64; ``None`` when no mixture was scored.
        stems: estimate name -> ``(C, T)``, every stem of the track (unscored ones too).
        references: reference name -> ``(C, T)``.
    """

    track: str
    sample_rate: float
    mixture: np.ndarray | None
    stems: dict[str, np.ndarray]
    references: dict[str, np.ndarray]


def track_signals(report: EvaluationReport, track: str) -> TrackSignals:
    """Read back the mixture, estimate stems and references that ``report`` scored for ``track``.

    Complex (I/Q) stems stay complex here (the scores used their real and imaginary parts).

    Raises:
        ParameterError: ``report`` has no files recorded for ``track``.
        InputError: a file changed or vanished since the evaluation.
    """
    from demux.io import read

    if track not in report.estimate_stems:
        raise ParameterError(f"no stems recorded for track {track!r}; tracks: {', '.join(report.estimate_stems)}")
    rate = report.sample_rates.get(track)

    def load(path: Path) -> np.ndarray:
        # a rate is needed for .npy and must match the file's otherwise, so give it only there
        return read(path, rate=rate if path.suffix.lower() == ".npy" else None).data

    mixture = report.mixtures.get(track)
    return TrackSignals(
        track=track,
        sample_rate=float(rate),
        mixture=None if mixture is None else load(mixture),
        stems={name: load(path) for name, path in report.estimate_stems[track].items()},
        references={name: load(path) for name, path in report.reference_stems.get(track, {}).items()},
    )
