"""``demux train``: learn a recipe's per-group offsets from mixtures with references.

Data: a folder in the ``evaluate`` layout, ``DIR/<track>/mixture.<ext>`` beside
``DIR/<track>/<source>.<ext>`` (what ``demux synth SCENARIO -o DIR`` writes). Stems
are matched to the recipe's output stems by name (its ``stems:`` groups, sums of leaves
that carry the gradient to each leaf's offsets; else the leaves); a recipe stem without a reference in
a track, and a reference the recipe has no stem for, are skipped (the result's
``notes`` say which). Tracks must share one sample rate; when the recipe does not
serve it, mixtures and references are resampled once, on loading.

What is learned: the ``learned (S, G)`` offsets of every source of every stage
(``G`` the stage's groups: frequency bins or bands, mel bands, wavelet levels), which
the variance model adds to each source's fitted ``level`` (``demux.model``). Within a
source's support the likelihood only fixes the total variance, so where supports
overlap the fit cannot tell the sources apart; the offsets are the recipe's learned
preference there. The file holds one ``(G,)`` tensor per source, keyed
``"stage.source"``; ``apply_params`` points each source's ``learned`` at it.

Objective: the mean over training tracks of ``-SI-SDR`` (:func:`demux.metrics.si_sdr`,
averaged over a track's matched stems and channels) of the pipeline's final stems.
Each evaluation runs every stage's inner fit (the recipe's trust-region fit, exactly as
``demux separate`` does) with the current offsets held constant, then recomputes the
masks from the fitted parameters, held fixed, and the offsets, which carry the
gradient: ``d(-SI-SDR)/d(offsets)`` flows through masks -> inverse transform -> SI-SDR.
That is the fixed-point approximation of the bilevel problem (the inner optimum's own
response to the offsets is ignored); the loss value is exact, only its gradient and
curvature are approximate, and the trust-region ratio ``rho`` measures how far that
matters.

Outer optimiser: :func:`demux.trust_region.minimize` on ``theta = offsets /
sqrt(P)`` (batch 1, ``P`` offsets in all), so the Euclidean radius is the RMS change
of the offsets per step, in nats of log-variance, whatever the recipe's size
(``masks=None``: mask-measured steps would need the inner fit of a track at every
metric probe, doubling the cost). One epoch is one trust-region step. Exact
Hessian-vector products are cheap here (the inner fit is not differentiated). The
dropout seed of each step picks its minibatch of training tracks (all of them when
there are at most ``batch_size``) and drops learned coefficients (offsets reset to
0, the untrained recipe's, kept ones scaled by ``1/(1-p)``): both are common random
numbers, the current and the trial point of a step see the same tracks and the
same drop pattern, so ``rho`` compares like with like. The drop rate anneals under
the controller as in any fit. Why not Adam: the loss is deterministic given the
seed (the inner fit is seeded), so the trust-region ratio is informative (rho mostly
0.2-1.2: the fixed-point gradient is a usable model) and the radius removes the
step-size tuning. Measured (benchmarks/results/train-2026-11-23.md): at equal
evaluations it comes within about 3 dB of the best-tuned Adam and well ahead of Adam
at learning rates 0.1-0.3.

Validation: ``val_fraction`` of the tracks (a permutation of the sorted track names
under ``seed``) are held out; after every accepted step the median validation SI-SDR
(over track x stem pairs) is measured, the best offsets are kept and written to the
output (an atomic safetensors write with metadata), and training stops early after
``patience`` epochs without improvement. ``resume`` starts from such a file,
with the radius and drop rate it recorded.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from demux.errors import InputError, OutputExistsError, ParameterError
from demux.recipe import Recipe
from demux.trust_region import Dropout, TrajectoryStep, TrustRegionConfig, minimize, update_radius

__all__ = [
    "EpochReport",
    "Track",
    "TrainConfig",
    "TrainResult",
    "apply_params",
    "load_tracks",
    "offset_layout",
    "read_params",
    "save_params",
    "split_tracks",
    "track_scores",
    "train",
]

MIXTURE = "mixture"

#: The outer trust region: radius in RMS nats of offset change per step, a gentle start
#: in dropout (a few epochs, not hundreds of fit iterations), no warm-up.
DEFAULT_TRUST_REGION = TrustRegionConfig(
    radius0=0.5, radius_max=4.0, radius_min=1e-3, dropout0=0.1, dropout_floor=0.0, warmup=0, cg_max_iter=10
)


@dataclass(frozen=True)
class Track:
    """One training item.

    Attributes:
        name: the track folder's name.
        mixture: ``(channel, time)`` float32.
        references: source name -> ``(channel, time)`` float32, same shape as the mixture.
    """

    name: str
    mixture: Tensor
    references: dict[str, Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train`.

    Attributes:
        epochs: trust-region steps at most (each on one minibatch).
        batch_size: training tracks per step at most.
        val_fraction: share of the tracks held out for validation, in [0, 1); 0
            validates on the training tracks (no held-out check: say so in reports).
        patience: stop after this many epochs without a better validation score.
        seed: fixes the split, the minibatches, the dropout and the inner fits.
        device: where the pipeline runs.
        trust_region: the outer controller; ``max_iter`` is replaced by ``epochs``.
    """

    epochs: int = 20
    batch_size: int = 8
    val_fraction: float = 0.2
    patience: int = 5
    seed: int = 0
    device: str = "cpu"
    trust_region: TrustRegionConfig = DEFAULT_TRUST_REGION

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name}={value!r} is not an integer >= 1")
        if not (isinstance(self.val_fraction, int | float) and 0 <= self.val_fraction < 1):
            raise ParameterError(f"val_fraction={self.val_fraction!r} is not in [0, 1)")


@dataclass(frozen=True)
class EpochReport:
    """One epoch (trust-region step), for progress displays and the history.

    Attributes:
        epoch: 1-based, counted across resumed runs.
        loss: mean ``-SI-SDR`` (dB) of the step's minibatch at the iterate after the step.
        rho: actual / predicted decrease (``-inf``: rejected outright).
        radius: the radius the step was bounded by (RMS nats).
        dropout: the drop rate of learned coefficients at this step.
        accepted: the step was taken.
        val_si_sdr: median validation SI-SDR (dB) at the iterate after the step.
        best: the best validation SI-SDR so far.
    """

    epoch: int
    loss: float
    rho: float
    radius: float
    dropout: float
    accepted: bool
    val_si_sdr: float
    best: float


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        offsets: ``"stage.source"`` -> ``(G,)`` best offsets (also written to the output).
        val_si_sdr: their median validation SI-SDR, dB.
        initial_val_si_sdr: the same at the starting offsets (the untrained recipe, or
            the checkpoint resumed from).
        epochs: epochs run in all (across resumed runs).
        best_epoch: the epoch the best offsets come from (0: the start).
        stopped: why training ended.
        history: one :class:`EpochReport` per epoch of this run.
        train_tracks, val_tracks: names of the split.
        notes: stems skipped for want of a reference, and similar.
    """

    offsets: dict[str, Tensor]
    val_si_sdr: float
    initial_val_si_sdr: float
    epochs: int
    best_epoch: int
    stopped: str
    history: list[EpochReport] = field(default_factory=list)
    train_tracks: list[str] = field(default_factory=list)
    val_tracks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def load_tracks(folder: str | Path, recipe: Recipe) -> tuple[list[Track], float, list[str]]:
    """Read the tracks of ``folder`` (evaluate layout) at a rate the recipe serves.

    Returns:
        ``(tracks, sample_rate, notes)``; tracks sorted by name.

    Raises:
        InputError: no track folders, a track without mixture or references, stems of
            unequal shapes, complex (I/Q) stems, or tracks at different sample rates.
    """
    from demux.evaluate import STEM_EXTENSIONS
    from demux.io import read, resample
    from demux.pipeline import served_rate

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "no such training-data folder")
    tracks, rates, notes = [], set(), []
    for track_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        stems = {p.stem: p for p in sorted(track_dir.iterdir())
                 if p.is_file() and p.suffix.lower() in STEM_EXTENSIONS and not p.name.startswith(".")}
        if not stems:
            continue
        if MIXTURE not in stems:
            raise InputError(track_dir, f"has stems but no {MIXTURE}.<ext> ({', '.join(STEM_EXTENSIONS)})")
        signals = {name: read(path) for name, path in stems.items()}
        mixture = signals.pop(MIXTURE)
        if not signals:
            raise InputError(track_dir, "holds only the mixture, no reference stems")
        for name, signal in {MIXTURE: mixture, **signals}.items():
            if np.iscomplexobj(signal.data):
                raise InputError(stems[name], "complex (I/Q) stems: demux train supports real signals only, so far")
            if signal.data.shape != mixture.data.shape or signal.sample_rate != mixture.sample_rate:
                raise InputError(stems[name], f"shape {signal.data.shape} at {signal.sample_rate:g} Hz differs "
                                              f"from the mixture's {mixture.data.shape} at {mixture.sample_rate:g} Hz")
        silent = sorted(name for name, s in signals.items() if not np.any(s.data))
        if silent:
            notes.append(f"{track_dir.name}: silent reference(s) skipped: {', '.join(silent)}")
        rates.add(mixture.sample_rate)
        tracks.append((track_dir.name, mixture.data, {k: s.data for k, s in signals.items() if k not in silent}))
    if not tracks:
        raise InputError(folder, "no track folders with stems "
                                 "(expected <track>/mixture.<ext> and <track>/<source>.<ext>)")
    if len(rates) > 1:
        raise InputError(folder, f"tracks at different sample rates ({', '.join(f'{r:g}' for r in sorted(rates))} Hz)")
    rate = rates.pop()
    served = served_rate(recipe, rate)

    def tensor(data: np.ndarray) -> Tensor:
        data = data if served == rate else resample(data, rate, served)
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))

    if served != rate:
        notes.append(f"resampled the data from {rate:g} Hz to the recipe's {served:g} Hz")
    out = [Track(name, tensor(mix), {k: tensor(v) for k, v in refs.items()}) for name, mix, refs in tracks]
    return out, served, notes


def split_tracks(tracks: list[Track], *, val_fraction: float, seed: int) -> tuple[list[Track], list[Track]]:
    """``(train, validation)``: a seeded permutation, ``round(val_fraction * n)`` (at least 1) held out.

    ``val_fraction = 0`` validates on the training tracks themselves.

    Raises:
        ParameterError: fewer than two tracks for a held-out split.
    """
    if val_fraction == 0:
        return list(tracks), list(tracks)
    if len(tracks) < 2:
        raise ParameterError(f"{len(tracks)} track(s): a validation split needs at least 2 (or val_fraction=0)")
    order = torch.randperm(len(tracks), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(tracks) - 1, max(1, round(val_fraction * len(tracks))))
    val = sorted(order[:n_val])
    return [t for i, t in enumerate(tracks) if i not in val], [tracks[i] for i in val]


# --------------------------------------------------------------------------- parameters


def offset_layout(recipe: Recipe, mixture: Tensor, sample_rate: float) -> dict[str, int]:
    """``"stage.source"`` -> ``G``, the number of groups of each source's offsets.

    Args:
        mixture: ``(channel, time)``; later stages see stems of the same shape.
        sample_rate: Hz, one the recipe serves.
    """
    from demux.pipeline import stage_inputs
    from demux.transforms import build_transform

    x = mixture.unsqueeze(0).float()
    layout = {}
    for stage in recipe.stages:
        transform = build_transform(stage.transform.type, sample_rate, **stage.transform.params)
        inputs, _ = stage_inputs(stage, transform(x), transform, x.shape[-1], recipe.source)
        layout.update({f"{stage.name}.{name}": inputs.n_groups for name in stage.sources})
    return layout


def _initial_offsets(recipe: Recipe, layout: dict[str, int]) -> dict[str, Tensor]:
    """The recipe's own learned offsets where it has a file, zeros elsewhere."""
    from demux.priors.learned import load_offsets

    out = {}
    for stage in recipe.stages:
        for name, src in stage.sources.items():
            key = f"{stage.name}.{name}"
            n_groups = layout[key]
            out[key] = (load_offsets(src.learned, key=name, stage=stage.name, n_groups=n_groups) if src.learned
                        else torch.zeros(n_groups))
    return out


def save_params(path: str | Path, offsets: dict[str, Tensor], metadata: dict[str, object], *,
                overwrite: bool = False) -> Path:
    """Write offsets ``"stage.source"`` -> ``(G,)`` as safetensors, atomically.

    ``metadata`` values are stored as JSON text (safetensors metadata is str -> str).
    """
    from safetensors.torch import save_file

    from demux.io import atomic_write

    tensors = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in offsets.items()}
    with atomic_write(path, overwrite=overwrite) as temp:
        save_file(tensors, str(temp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    return Path(path)


def read_params(path: str | Path) -> tuple[dict[str, Tensor], dict[str, object]]:
    """Offsets and metadata of a file :func:`save_params` wrote.

    Raises:
        InputError: the file is missing, not safetensors, or holds a tensor that is not
            a 1-D float vector.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such parameters file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw_meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(path, f"not a safetensors file ({str(error).splitlines()[0]})") from None
    for key, value in tensors.items():
        if value.dim() != 1 or not value.is_floating_point():
            raise InputError(path, f"tensor '{key}' is {value.dtype} of shape {tuple(value.shape)}, "
                                   "expected a 1-D float vector")
    metadata = {}
    for key, text in raw_meta.items():
        try:
            metadata[key] = json.loads(text)
        except json.JSONDecodeError:
            metadata[key] = text
    return tensors, metadata


def apply_params(recipe: Recipe, path: str | Path) -> Recipe:
    """``recipe`` with each source named in the file (``"stage.source"``) loading its offsets from it.

    The offsets' lengths are checked against the signal when a stage runs
    (:func:`demux.priors.learned.load_offsets`).

    Raises:
        InputError: the file is not a parameters file, or names a source the recipe lacks.
    """
    tensors, _ = read_params(path)
    keys = {f"{stage.name}.{name}" for stage in recipe.stages for name in stage.sources}
    unknown = sorted(set(tensors) - keys)
    if unknown:
        raise InputError(path, f"has offsets for {', '.join(unknown)}, which recipe '{recipe.name}' lacks "
                               f"(its sources: {', '.join(sorted(keys))})")
    stages = []
    for stage in recipe.stages:
        sources = {name: dataclasses.replace(src, learned=str(path)) if f"{stage.name}.{name}" in tensors else src
                   for name, src in stage.sources.items()}
        stages.append(dataclasses.replace(stage, sources=sources))
    return dataclasses.replace(recipe, stages=tuple(stages))


def _check_against_layout(path: Path, offsets: dict[str, Tensor], layout: dict[str, int]) -> None:
    if set(offsets) != set(layout):
        raise InputError(path, f"holds offsets for {', '.join(sorted(offsets)) or 'nothing'}; this recipe has "
                               f"{', '.join(sorted(layout))}")
    for key, n_groups in layout.items():
        if offsets[key].shape != (n_groups,):
            raise InputError(path, f"tensor '{key}' has shape {tuple(offsets[key].shape)}, expected ({n_groups},)")


# --------------------------------------------------------------------------- scoring


def track_scores(recipe: Recipe, tracks: list[Track], sample_rate: float, *, learned: dict[str, Tensor] | None = None,
                 seed: int = 0, device: str | torch.device = "cpu") -> list[Tensor]:
    """SI-SDR (dB) of the recipe's stems against each track's references.

    Tracks of equal shape are separated together as one batch. With ``learned`` that
    carries a gradient, so do the scores (see :func:`demux.pipeline.run_stage`).

    Returns:
        Per track, a ``(n_matched,)`` tensor: one score per matched stem (mean over
        channels), in the order of ``recipe.sources()``.
    """
    from demux.metrics import si_sdr
    from demux.pipeline import separate

    names = recipe.sources()
    scores: list[Tensor | None] = [None] * len(tracks)
    by_shape: dict[tuple, list[int]] = {}
    for i, track in enumerate(tracks):
        by_shape.setdefault(tuple(track.mixture.shape), []).append(i)
    for indices in by_shape.values():
        x = torch.stack([tracks[i].mixture for i in indices]).to(device)
        stems = separate(x, sample_rate, recipe, seed=seed, device=device, learned=learned).stems
        for b, i in enumerate(indices):
            matched = [n for n in names if n in tracks[i].references]
            values = [si_sdr(stems[n][b], tracks[i].references[n].to(device)).mean() for n in matched]
            scores[i] = torch.stack(values) if values else x.new_zeros(0)
    return scores


def _median(scores: list[Tensor]) -> float:
    flat = torch.cat([s.detach().cpu() for s in scores])
    return float(flat.median()) if flat.numel() else math.nan


def _matching_notes(recipe: Recipe, tracks: list[Track]) -> list[str]:
    names = set(recipe.sources())
    notes = []
    for track in tracks:
        missing = sorted(names - set(track.references))
        extra = sorted(set(track.references) - names)
        if missing:
            notes.append(f"{track.name}: no reference for stem(s) {', '.join(missing)}: not scored")
        if extra:
            notes.append(f"{track.name}: reference(s) {', '.join(extra)} match no stem of the recipe: ignored")
        if not names & set(track.references):
            raise InputError(track.name, f"no reference matches a stem of recipe '{recipe.name}' "
                                         f"({', '.join(recipe.sources())})")
    return notes


# --------------------------------------------------------------------------- training


class _Objective:
    """The outer loss ``theta (1, P) -> (1,)``: mean ``-SI-SDR`` of a minibatch.

    It also remembers the last point it evaluated without gradient: :func:`minimize`
    evaluates each step's final trial point (pulled back or not) last before deciding,
    so after an accepted step that point is the new iterate.
    """

    def __init__(self, recipe, tracks, rate, layout, *, batch_size, seed, device):
        self.recipe, self.tracks, self.rate = recipe, tracks, rate
        self.layout, self.batch_size, self.seed, self.device = layout, batch_size, seed, device
        self.scale = math.sqrt(sum(layout.values()))
        self.last_trial: Tensor | None = None
        self.last_loss = math.nan

    def offsets(self, theta: Tensor) -> dict[str, Tensor]:
        """``(1, P)`` (or ``(P,)``) -> ``"stage.source"`` -> ``(G,)`` offsets."""
        flat = theta.reshape(-1) * self.scale
        return dict(zip(self.layout, flat.split(list(self.layout.values()))))

    def theta(self, offsets: dict[str, Tensor]) -> Tensor:
        return torch.cat([offsets[key].reshape(-1) for key in self.layout]).reshape(1, -1) / self.scale

    def __call__(self, theta: Tensor, dropout: Dropout | None) -> Tensor:
        generator = torch.Generator().manual_seed(dropout.seed if dropout is not None else self.seed)
        tracks = self.tracks
        if len(tracks) > self.batch_size:
            pick = torch.randperm(len(tracks), generator=generator)[: self.batch_size].sort().values
            tracks = [tracks[i] for i in pick.tolist()]
        flat = theta.reshape(-1)
        if dropout is not None:
            rate = dropout.rate.to(flat)[0]
            keep = torch.rand(flat.shape, generator=generator).to(flat.device) >= rate
            flat = flat * keep / (1 - rate)
        scores = track_scores(self.recipe, tracks, self.rate, learned=self.offsets(flat), seed=self.seed,
                              device=self.device)
        loss = -torch.stack([s.mean() for s in scores]).mean()
        if not (torch.is_grad_enabled() and theta.requires_grad):
            self.last_trial = theta.detach().clone()
        return loss.reshape(1)


class _EarlyStop(Exception):
    """Raised from the step callback to leave :func:`minimize` (patience exhausted)."""


def train(recipe: Recipe, data: str | Path, out: str | Path, *, config: TrainConfig = TrainConfig(),
          resume: bool = False, overwrite: bool = False,
          on_epoch: Callable[[EpochReport], None] | None = None) -> TrainResult:
    """Learn the offsets of ``recipe`` on ``data`` and write the best to ``out``.

    Args:
        recipe: the recipe to train (its sources' ``learned`` files, if any, are the start).
        data: folder in the evaluate layout (see the module docstring).
        out: the safetensors file written at every validation improvement.
        config: see :class:`TrainConfig`.
        resume: start from ``out`` (offsets, epoch count, radius and drop rate).
        overwrite: replace ``out`` (without ``resume``, an existing ``out`` is refused).
        on_epoch: called after each epoch.

    Returns:
        A :class:`TrainResult`.

    Raises:
        OutputExistsError: ``out`` exists and neither ``resume`` nor ``overwrite``.
        InputError: bad data, or a checkpoint that is not one for this recipe.
        ParameterError: too few tracks for the split.
    """
    out = Path(out)
    if out.exists() and not (resume or overwrite):
        raise OutputExistsError(out)
    checkpoint = read_params(out) if resume else None  # a bad checkpoint fails before the data is read
    tracks, rate, notes = load_tracks(data, recipe)
    notes += _matching_notes(recipe, tracks)
    train_set, val_set = split_tracks(tracks, val_fraction=config.val_fraction, seed=config.seed)
    layout = offset_layout(recipe, tracks[0].mixture, rate)
    offsets, done, tr = _initial_offsets(recipe, layout), 0, config.trust_region
    if checkpoint is not None:
        offsets, metadata = checkpoint
        _check_against_layout(out, offsets, layout)
        done = int(metadata.get("epochs", 0))
        radius = min(max(float(metadata.get("radius", tr.radius0)), 2 * tr.radius_min), tr.radius_max)
        rate0 = min(max(float(metadata.get("dropout", tr.dropout0)), tr.dropout_floor), 0.99)
        tr = dataclasses.replace(tr, radius0=radius, dropout0=rate0)
    tr = dataclasses.replace(tr, max_iter=config.epochs, seed=tr.seed + config.seed)
    objective = _Objective(recipe, train_set, rate, layout, batch_size=config.batch_size, seed=config.seed,
                           device=config.device)

    def validate(offsets: dict[str, Tensor]) -> float:
        with torch.no_grad():
            return _median(track_scores(recipe, val_set, rate, learned=offsets, seed=config.seed, device=config.device))

    start_score = validate(offsets)
    state = {"theta": objective.theta(offsets), "best": start_score, "best_theta": objective.theta(offsets),
             "best_epoch": done, "stale": 0, "score": start_score}
    history: list[EpochReport] = []

    def metadata(epoch: int, step: TrajectoryStep | None) -> dict[str, object]:
        return {"recipe": recipe.name, "recipe_source": recipe.source, "epochs": epoch,
                "best_epoch": state["best_epoch"], "val_si_sdr": state["best"], "initial_val_si_sdr": start_score,
                "sample_rate": rate, "train_tracks": [t.name for t in train_set],
                "val_tracks": [t.name for t in val_set], "seed": config.seed,
                "radius": float(update_radius(step.radius, step.rho, step.on_boundary, config=tr)[0])
                if step is not None else tr.radius0,
                "dropout": float(step.dropout[0]) if step is not None else tr.dropout0}

    def on_step(step: TrajectoryStep) -> None:
        epoch = done + step.step + 1
        accepted = bool(step.accepted[0])
        if accepted:
            state["theta"] = objective.last_trial
            state["score"] = validate(objective.offsets(state["theta"]))
        improved = state["score"] > state["best"]
        if improved:
            state.update(best=state["score"], best_theta=state["theta"], best_epoch=epoch, stale=0)
            save_params(out, objective.offsets(state["theta"]), metadata(epoch, step), overwrite=True)
        else:
            state["stale"] += 1
        report = EpochReport(epoch=epoch, loss=float(step.objective[0]), rho=float(step.rho[0]),
                             radius=float(step.radius[0]), dropout=float(step.dropout[0]), accepted=accepted,
                             val_si_sdr=state["score"], best=state["best"])
        history.append(report)
        state["last_step"] = step
        if on_epoch is not None:
            on_epoch(report)
        if state["stale"] >= config.patience:
            raise _EarlyStop

    try:
        result = minimize(objective, state["theta"], masks=None, config=tr, callback=on_step)
        stopped = result.message[0]
    except _EarlyStop:
        stopped = f"early stop: no validation improvement in {config.patience} epochs"
    epochs = done + len(history)
    best = objective.offsets(state["best_theta"])
    # the last word: the best offsets, with the epoch count and controller state of the run that ended
    save_params(out, best, metadata(epochs, state.get("last_step")), overwrite=True)
    return TrainResult(
        offsets={k: v.detach().cpu() for k, v in best.items()},
        val_si_sdr=state["best"],
        initial_val_si_sdr=start_score,
        epochs=epochs,
        best_epoch=state["best_epoch"],
        stopped=stopped,
        history=history,
        train_tracks=[t.name for t in train_set],
        val_tracks=[t.name for t in val_set],
        notes=notes,
    )
