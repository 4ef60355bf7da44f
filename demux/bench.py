"""``demux bench``: demux's shipped recipes against baselines, the oracle and the mixture.

For every scenario of :data:`demux.synth.SCENARIOS` the harness makes ``items`` mixtures
with exact sources (item ``i`` from ``SeedSequence(seed, spawn_key=(i,))``, as
``demux synth`` does), runs

- ``demux``: the scenario's own recipe (``Scenario.recipe``) through :func:`demux.separate.separate`;
- every applicable non-oracle baseline of :data:`demux.baselines.BASELINES` (see
  :func:`baselines_for`);
- the oracle ideal ratio mask, Wiener filter and ideal binary mask on the transform of the
  recipe's first stage (the ceiling of masking in that domain);
- the mixture itself as the estimate of every source (the floor);

and scores each method's stems against the references with BSS-Eval v3 (engine ``"fast"``
of :func:`demux.metrics.bss_eval`, labelled stems, no permutation search) and SI-SDR, channel by channel with the dB values
averaged over channels, as ``demux evaluate`` does.

Complex baseband (I/Q) scenarios (``radio``, ``radar-mti``): BSS-Eval scores the real and
imaginary parts as two channels and averages them, the convention of ``demux evaluate``
(which reads a complex stem as its ``[real, imag]`` channels); SI-SDR is the complex
SI-SDR (:func:`demux.metrics.si_sdr` on complex signals: the scale is a complex gain, so a phase rotation costs
nothing, as for an unknown carrier phase). Every method gets the complex mixture; the
oracles use the recipe's two-sided transform.

References (:func:`reference_groups`): the scenario's sources, each its own reference,
except those scored together as one reference, their sum: the noise sources
(``params["noise_sources"]``) make one ``noise`` reference (DESIGN.md: denoising is scored
against ``[clean, noise]``), and :data:`SOURCE_GROUPS` lists, per scenario, sources that
the scenario's recipe estimates with one stem (``radio``: radio-iq's ``secondary`` stem
holds both secondary users, ``qpsk`` + ``ofdm``). The grouping is this explicit table,
never a correlation.

Stems to references (:func:`assign_stems`): a stem named like a reference is that
reference's estimate, and stems named like the sources of a group add up into it
(``emg`` + ``baseline`` into ``noise``, bandpass's ``qpsk`` + ``ofdm`` into ``secondary``). When some
reference has no stem of its name, the stems left over are given to those references:
one-to-one first, by the assignment maximising the total absolute correlation, then any
further stem to the reference it correlates with most (so all stems still sum to the
mixture). Stems named like no reference are otherwise left out, as ``demux evaluate``
does. Every mapping made by correlation is listed in the notes.

Each statistic is a median over items x references; the real-time factor is the median
over items of wall seconds / signal seconds. Nothing here is a unit test: the numbers
are what they are, and "beats all baselines?" says no when demux loses.
"""

from __future__ import annotations

import datetime
import importlib.util
import math
import os
import platform
import shlex
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from torch import Tensor

from demux import __version__
from demux.baselines import BASELINES, ORACLES
from demux.errors import DemuxError, ParameterError
from demux.io import write_text_atomic
from demux.metrics import MetricWarning, bss_eval, engine_version, si_sdr
from demux.recipe import Recipe, builtin_names, load_recipe
from demux.synth import SCENARIOS, Scenario, make
from demux.transforms import build_transform
from demux.trust_region import DropoutScheduleName

METRICS = ("sdr", "sir", "sar", "si_sdr")
CEILING = "oracle-irm"  # the gap column is measured to this oracle
NOISE = "noise"

QUICK_ITEMS, FULL_ITEMS = 2, 5
#: Signal length per item with ``quick``, seconds; the full run takes each scenario's default.
#: ecg-wavelet's eight db4 levels need at least 6 s.
#: radio is 1 MHz I/Q: 20 ms is 20 000 samples, about 80 STFT frames of radio-iq's 256 bins.
QUICK_SECONDS = {"multitone": 2.0, "am": 2.0, "chirps": 2.0, "ecg-emg": 10.0, "speech-noise": 2.0, "music": 2.0,
                 "radio": 0.02, "radar-mti": 1.0, "radar-range": 1.0, "eeg": 10.0}
#: Scenario sources that one stem of the scenario's recipe estimates together, so they are
#: scored as one reference, their sum: scenario -> {reference: sources}. radio-iq has one
#: ``secondary`` stem for every secondary user (it finds them by energy, not by modulation).
SOURCE_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {"radio": {"secondary": ("qpsk", "ofdm")}}
#: Recipe overrides with ``quick`` (fewer trust-region iterations), by recipe name.
QUICK_OVERRIDES = {"audio-stft": ("hpss.fit.max_iter=10", "mel.fit.max_iter=8", "pitch.fit.max_iter=8")}
#: The dropout-schedule ablation (DESIGN.md, "Dropout under the controller") runs here: cheap.
ABLATION_SCENARIO = "multitone"
SCHEDULES: tuple[str, ...] = get_args(DropoutScheduleName)
BENCH_METRICS = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_metrics.py"


@dataclass(frozen=True)
class BenchConfig:
    """What to run.

    Attributes:
        scenarios: names from :data:`demux.synth.SCENARIOS`; empty: all of them.
        quick: 2 short items, fewer audio-stft iterations (:data:`QUICK_SECONDS`,
            :data:`QUICK_OVERRIDES`); otherwise 5 items of each scenario's default length.
        seed: item ``i`` comes from ``SeedSequence(seed, spawn_key=(i,))``; also demux's seed.
        items: items per scenario (default 2 with ``quick``, else 5).
        ablation: run the dropout-schedule ablation on :data:`ABLATION_SCENARIO`.
        engine_speed: time the BSS-Eval engines (``benchmarks/bench_metrics.py``).
        threads: torch intra-op threads during the run (restored after). One by default:
            demux's many small tensor operations run fastest on one thread, and a second
            thread that spins against other processes on a shared 2-core machine makes
            timings ten times slower and unrepeatable.
        overrides: ``--set`` overrides (``stage.sources.name.key=value``) applied to demux's
            recipe in every scenario run, after the band and quick ones: variants of a
            recipe benched without a script (select scenarios of that recipe).
    """

    scenarios: tuple[str, ...] = ()
    quick: bool = False
    seed: int = 0
    items: int | None = None
    ablation: bool = True
    engine_speed: bool = True
    threads: int = 1
    overrides: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise ParameterError(f"unknown scenario(s) {unknown}; expected some of: {', '.join(SCENARIOS)}")
        if self.items is not None and (isinstance(self.items, bool) or not isinstance(self.items, int) or self.items < 1):
            raise ParameterError(f"items={self.items!r} is not an integer >= 1")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ParameterError(f"threads={self.threads!r} is not an integer >= 1")

    @property
    def names(self) -> tuple[str, ...]:
        """The scenarios to run, in order."""
        return tuple(dict.fromkeys(self.scenarios)) or tuple(SCENARIOS)

    @property
    def n_items(self) -> int:
        return self.items or (QUICK_ITEMS if self.quick else FULL_ITEMS)

    def command(self) -> str:
        """The ``demux bench`` command line that reproduces this run."""
        words = ["demux", "bench"]
        for name in self.scenarios:
            words += ["--scenario", name]
        words += ["--quick"] if self.quick else []
        words += [] if self.items is None else ["--items", str(self.items)]
        words += ["--seed", str(self.seed)]
        words += [] if self.threads == 1 else ["--threads", str(self.threads)]
        words += [word for override in self.overrides for word in ("--set", override)]
        words += [] if self.ablation else ["--no-ablation"]
        words += [] if self.engine_speed else ["--no-engine-speed"]
        return shlex.join(words)


@dataclass
class MethodScores:
    """One method's scores on one scenario.

    Attributes:
        method: ``demux``, a baseline name, an oracle name or ``mixture``.
        kind: ``demux``, ``baseline``, ``oracle`` or ``floor`` (the mixture).
        labels: ``(item, reference)`` of each scored value, in order.
        values: metric -> one value per label, dB (NaN where undefined).
        seconds: wall seconds per item (empty for the mixture).
        signal_seconds: seconds of signal per item.
    """

    method: str
    kind: str
    labels: list[tuple[int, str]] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    seconds: list[float] = field(default_factory=list)
    signal_seconds: float = math.nan

    def median(self, metric: str) -> float:
        """Median of ``metric`` over items x references, NaN values left out (NaN if none)."""
        values = np.asarray(self.values[metric], dtype=np.float64)
        values = values[~np.isnan(values)]
        return float(np.median(values)) if values.size else math.nan

    @property
    def real_time_factor(self) -> float:
        """Median over items of wall seconds / signal seconds (NaN for the mixture)."""
        return float(np.median(self.seconds)) / self.signal_seconds if self.seconds else math.nan


@dataclass
class ScenarioResult:
    """All methods on one scenario; ``notes`` say how stems were mapped and what was left out.

    ``groups`` maps each reference to the scenario sources whose sum it is
    (:func:`reference_groups`); ``is_complex``: I/Q, scored as in the module docstring.
    """

    scenario: str
    recipe: str
    items: int
    signal_seconds: float
    sample_rate: float
    references: list[str]
    overrides: tuple[str, ...]
    methods: list[MethodScores]
    notes: list[str] = field(default_factory=list)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    is_complex: bool = False

    def method(self, name: str) -> MethodScores:
        for scores in self.methods:
            if scores.method == name:
                return scores
        raise KeyError(name)

    def gap_to_ceiling(self, name: str, metric: str = "sdr") -> float:
        """``median(name) - median(oracle-irm)``, dB (negative: below the ceiling)."""
        return self.method(name).median(metric) - self.method(CEILING).median(metric)

    def rivals(self) -> list[MethodScores]:
        """The methods demux must beat: every non-oracle baseline and the mixture."""
        return [m for m in self.methods if m.kind in ("baseline", "floor")]

    def best_rival(self, metric: str = "sdr") -> MethodScores:
        return max(self.rivals(), key=lambda m: -math.inf if math.isnan(m.median(metric)) else m.median(metric))

    def beats_all_baselines(self, metric: str = "sdr") -> bool:
        """demux's median ``metric`` is above every baseline's and the mixture's."""
        return self.method("demux").median(metric) > self.best_rival(metric).median(metric)


@dataclass(frozen=True)
class AblationRow:
    """demux with one dropout schedule on :data:`ABLATION_SCENARIO`."""

    schedule: str
    sdr: float
    si_sdr: float
    real_time_factor: float


@dataclass
class BenchResult:
    """Everything one ``demux bench`` run measured, and where."""

    config: BenchConfig
    date: str
    machine: dict[str, str]
    scenarios: list[ScenarioResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ablation: list[AblationRow] = field(default_factory=list)
    ablation_notes: list[str] = field(default_factory=list)
    engine_speed: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Progress = Callable[[int, int, str], None]
"""``on_progress(done, total, label)``: before each (scenario, method) step and once at the end."""


# --------------------------------------------------------------------------- items and references


def make_items(name: str, config: BenchConfig) -> list[Scenario]:
    """The ``config.n_items`` items of scenario ``name`` (quick lengths with ``config.quick``)."""
    seconds = QUICK_SECONDS.get(name) if config.quick else None
    return [
        make(name, np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(i,))), seconds=seconds)
        for i in range(config.n_items)
    ]


def _float64(x: np.ndarray) -> np.ndarray:
    """``x`` as float64, or complex128 when complex."""
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def reference_groups(name: str | None, scenario: Scenario) -> dict[str, tuple[str, ...]]:
    """What is scored on scenario ``name``: reference -> the sources whose sum it is.

    Each source is its own reference unless :data:`SOURCE_GROUPS` puts it in a group (none
    for ``name=None``) or it is a noise source (``params["noise_sources"]``, all summed into
    ``noise``). References come in the order of their first source, members in source order.
    """
    grouped = dict(SOURCE_GROUPS.get(name, {}))
    if noise_sources := scenario.params.get("noise_sources"):
        grouped[NOISE] = tuple(noise_sources)
    owner = {source: group for group, members in grouped.items() for source in members}
    unknown = sorted(set(owner) - set(scenario.sources))
    if unknown:
        raise ParameterError(f"scenario {name!r} has no source(s) {unknown} to group; it has {list(scenario.sources)}")
    groups: dict[str, tuple[str, ...]] = {}
    for source in scenario.sources:
        group = owner.get(source, source)
        groups[group] = groups.get(group, ()) + (source,)
    return groups


def references(scenario: Scenario, groups: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, np.ndarray]:
    """The references scored: each the sum of its group's sources.

    ``groups`` comes from :func:`reference_groups`; by default each source alone, the noise
    sources summed into ``noise`` (no :data:`SOURCE_GROUPS`).

    Returns:
        reference name -> ``(channel, time)`` float64 (complex128 for I/Q scenarios).
    """
    groups = reference_groups(None, scenario) if groups is None else groups
    # an item holds only the groups whose sources it has (array: 2 or 3 talkers per item)
    return {name: sum(_float64(scenario.sources[k]) for k in members) for name, members in groups.items()
            if all(k in scenario.sources for k in members)}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    norm = math.sqrt(float(np.vdot(a, a).real) * float(np.vdot(b, b).real))
    return abs(complex(np.vdot(a, b))) / norm if norm > 0 else 0.0


def assign_stems(
    stems: Mapping[str, np.ndarray], refs: Mapping[str, np.ndarray], *,
    groups: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Map a method's stems onto the references (rules in the module docstring).

    Args:
        stems: stem name -> ``(channel, time)``, real or complex.
        refs: reference name -> ``(channel, time)``.
        groups: reference -> the source names whose stems add up into it (the
            ``noise`` sources, :data:`SOURCE_GROUPS`); a stem named like the reference
            itself goes there too.

    Returns:
        ``(estimates, mapping)``: reference name -> ``(channel, time)`` estimate, float64 or
        complex128 (zeros for a reference no stem reached, which scores NaN), and
        ``"stem->reference"`` for every stem mapped by correlation.
    """
    from scipy.optimize import linear_sum_assignment

    owner = {source: ref for ref, members in (groups or {}).items() if ref in refs for source in members}
    estimates: dict[str, np.ndarray] = {}
    leftover = []
    for name, stem in stems.items():
        target = owner.get(name, name)
        if target in refs:
            estimates[target] = estimates.get(target, 0) + stem
        else:
            leftover.append(name)
    missing = [name for name in refs if name not in estimates]
    mapping = []
    if missing and leftover:
        corr = np.array([[_correlation(stems[k], refs[s]) for s in missing] for k in leftover])
        rows, cols = linear_sum_assignment(-corr)
        paired = dict(zip(rows.tolist(), cols.tolist()))
        for k, name in enumerate(leftover):
            s = paired.get(k, int(np.argmax(corr[k])))
            estimates[missing[s]] = estimates.get(missing[s], 0) + stems[name]
            mapping.append(f"{name}->{missing[s]}")
    like = _float64(next(iter(refs.values())))
    return {name: _float64(np.asarray(estimates.get(name, np.zeros_like(like)))) for name in refs}, mapping


def _real_channels(x: Tensor) -> Tensor:
    """``(C, S, T)`` -> ``(2C, S, T)`` ``[real; imag]`` channels for complex ``x`` (as ``demux evaluate`` reads I/Q)."""
    return torch.cat([x.real, x.imag]) if x.is_complex() else x


def score(refs: Mapping[str, np.ndarray], estimates: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """BSS-Eval v3 (fast engine, labelled) and SI-SDR of each reference, mean over channels.

    Complex (I/Q) signals: BSS-Eval of the real and imaginary parts as two channels each,
    and the complex SI-SDR of :func:`demux.metrics.si_sdr` per complex channel.

    An all-zero estimate of a non-silent reference channel scores SDR = SI-SDR = -inf (no
    part of the target is recovered; the metrics themselves say NaN, which a median would
    skip and so flatter the method); its SIR and SAR stay NaN.

    Args:
        refs, estimates: name -> ``(channel, time)``; the same names.

    Returns:
        metric -> one value per reference (in ``refs`` order), dB.
    """
    ref = torch.from_numpy(np.stack([_float64(refs[k]) for k in refs])).movedim(1, 0)  # (C, S, T)
    est = torch.from_numpy(np.stack([_float64(estimates[k]) for k in refs])).movedim(1, 0)
    bss_ref, bss_est = _real_channels(ref), _real_channels(est)
    result = bss_eval(bss_ref, bss_est, engine="fast", permutation=False)
    values = {"sdr": result.sdr, "sir": result.sir, "sar": result.sar,
              "si_sdr": si_sdr(est, ref)}  # complex signals: a complex scale, blind to carrier phase

    def missed(e: Tensor, r: Tensor) -> Tensor:  # (C, S)
        return (e == 0).all(dim=-1) & ~(r == 0).all(dim=-1)

    values["sdr"] = values["sdr"].masked_fill(missed(bss_est, bss_ref), -math.inf)
    values["si_sdr"] = values["si_sdr"].masked_fill(missed(est, ref), -math.inf)
    # NaN-aware mean over channels: a silent channel does not hide the others
    return {m: torch.nanmean(v, dim=0).tolist() for m, v in values.items()}


# --------------------------------------------------------------------------- methods


Method = Callable[[Tensor, Scenario, Recipe], dict[str, Tensor]]


def band_overrides(recipe: Recipe, scenario: Scenario) -> tuple[str, ...]:
    """``--set`` overrides giving a first-stage source the scenario's declared band.

    Only where the recipe has a source of that name with bands and none of them holds the
    declared band (at 8 kHz, multitone's and am's bands lie inside tones-fft's low/mid/high,
    so the recipe runs as shipped).
    """
    stage = recipe.stages[0]
    out = []
    for name, (lo, hi) in scenario.params.get("bands", {}).items():
        source = stage.sources.get(name)
        if source is None or not source.bands or any(b.lo <= lo and hi <= b.hi for b in source.bands):
            continue
        edge = source.bands[0].edge
        out.append(f"{stage.name}.sources.{name}.bands=[{{lo: {lo}, hi: {hi}, edge: {edge}}}]")
    return tuple(out)


def recipe_for(scenario: Scenario, config: BenchConfig, extra: tuple[str, ...] = ()) -> tuple[Recipe, tuple[str, ...]]:
    """The scenario's recipe with band, quick and ``extra`` overrides, and those overrides."""
    shipped = load_recipe(scenario.recipe)
    overrides = band_overrides(shipped, scenario)
    overrides += QUICK_OVERRIDES.get(scenario.recipe, ()) if config.quick else ()
    overrides += config.overrides + extra
    return load_recipe(scenario.recipe, overrides), overrides


def _demux(seed: int) -> Method:
    def run(mixture: Tensor, scenario: Scenario, recipe: Recipe) -> dict[str, Tensor]:
        from demux.pipeline import separate

        return separate(mixture, scenario.sample_rate, recipe, seed=seed).stems

    return run


def _baseline(name: str, **fixed) -> Method:
    def run(mixture: Tensor, scenario: Scenario, recipe: Recipe) -> dict[str, Tensor]:
        options = {key: value(scenario) if callable(value) else value for key, value in fixed.items()}
        return BASELINES[name](mixture, scenario.sample_rate, **options)

    return run


def _talkers(scenario: Scenario) -> int:
    """The item's sources that are not noise (one beam each)."""
    return sum(1 for k in scenario.sources if k not in scenario.params.get("noise_sources", ()))


def _declared_bands(scenario: Scenario) -> dict[str, tuple[float, float]]:
    return {name: (float(lo), float(hi)) for name, (lo, hi) in scenario.params["bands"].items()}


def baselines_for(scenario: Scenario, recipe: Recipe, *, seed: int,
                  groups: Mapping[str, tuple[str, ...]]) -> tuple[dict[str, Method], list[str]]:
    """The non-oracle baselines that apply to ``scenario``, and why the others do not.

    - ``bandpass``: when the scenario declares bands (``params["bands"]``), which it is
      given (complex baseband too: radio's users, radar-mti's clutter band);
    - ``nmf``: declared bands and a real signal (its STFT is one-sided);
    - ``hpss``: when the recipe's first stage is an STFT (time-varying audio);
    - ``ecg-bandpass`` and ``wavelet``: biomedical recipes;
    - ``eeg-bandpass`` and ``eeg-ica-reject``: EEG scenarios (``params["eog_channels"]``);
    - ``mti-canceller``: radar recipes (slow time), 3 pulses;
    - ``delay-and-sum`` and ``mvdr``: array recipes on a linear array (``params["spacing_m"]``),
      one beam per reference, steered at the directions each finds in the mixture;
    - ``fastica``: real signals of at least two channels and as many as references (``groups``).
    """
    channels = scenario.mixture.shape[0]
    chosen: dict[str, Method] = {}
    left_out = []
    if scenario.params.get("bands"):
        chosen["bandpass"] = _baseline("bandpass", bands=_declared_bands)
        if scenario.is_complex:
            left_out.append("nmf: real signals only (a one-sided STFT)")
        else:
            chosen["nmf"] = _baseline("nmf", bands=_declared_bands, seed=seed)
    else:
        left_out.append("bandpass, nmf: the scenario declares no bands")
    if recipe.stages[0].transform.type == "stft":
        chosen["hpss"] = _baseline("hpss")
    if recipe.domain == "biomedical":
        chosen["ecg-bandpass"] = _baseline("ecg-bandpass")
        chosen["wavelet"] = _baseline("wavelet")
    if "eog_channels" in scenario.params:  # EEG: the usual filter, and ICA blink rejection by EOG correlation
        chosen["eeg-bandpass"] = _baseline("eeg-bandpass")
        chosen["eeg-ica-reject"] = _baseline("eeg-ica-reject", eog_channels=tuple(scenario.params["eog_channels"]),
                                             seed=seed)
    if recipe.domain == "radar":
        chosen["mti-canceller"] = _baseline("mti-canceller")
    if recipe.domain == "array" and "spacing_m" in scenario.params:  # steered where they find the sources
        for name in ("delay-and-sum", "mvdr"):
            chosen[name] = _baseline(name, spacing_m=scenario.params["spacing_m"], n_sources=_talkers)
    if scenario.is_complex and channels >= 2:
        left_out.append("fastica: real signals only")
    elif 2 <= channels and len(groups) <= channels:
        chosen["fastica"] = _baseline("fastica", n_sources=len(groups), seed=seed)
    elif channels >= 2:
        left_out.append(f"fastica: {channels} channels for {len(groups)} sources")
    return chosen, left_out


def _oracle(name: str, groups: Mapping[str, tuple[str, ...]]) -> Method:
    """Oracle ``name`` from the references (``groups``) on the recipe's first-stage transform."""

    def run(mixture: Tensor, scenario: Scenario, recipe: Recipe) -> dict[str, Tensor]:
        stage = recipe.stages[0]
        transform = build_transform(stage.transform.type, scenario.sample_rate, **stage.transform.params)
        refs = {k: torch.from_numpy(v)[None] for k, v in references(scenario, groups).items()}
        return BASELINES[name](mixture, scenario.sample_rate, references=refs, transform=transform)

    return run


# --------------------------------------------------------------------------- running


def _skip_reason(scenario: Scenario) -> str | None:
    if scenario.recipe not in builtin_names():
        return f"no recipe yet (its recipe '{scenario.recipe}' is not shipped)"
    return None


def _timed(method: Callable[[], dict[str, Tensor]]) -> tuple[dict[str, np.ndarray], float]:
    start = time.perf_counter()
    stems = method()
    seconds = time.perf_counter() - start
    return {k: _float64(v.detach().cpu().numpy().reshape(v.shape[-2:])) for k, v in stems.items()}, seconds


def _score_item(scores: MethodScores, item: int, refs, estimates, notes: list[str], where: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        values = score(refs, estimates)
    missed = [name for name in refs if not estimates[name].any()]
    if missed:  # replaces the metrics' own "all-zero estimate ... NaN" warnings
        notes.append(f"{where}: no estimate of {', '.join(missed)} (all zeros): SDR and SI-SDR counted as -inf")
    notes += [f"{where}: {w.message}" for w in caught
              if issubclass(w.category, MetricWarning) and not (missed and "all-zero" in str(w.message))]
    scores.labels += [(item, name) for name in refs]
    for metric in METRICS:
        scores.values[metric] += values[metric]


def _run_method(name: str, kind: str, method: Method | None, items: list[Scenario], recipes: list[Recipe],
                groups: Mapping[str, tuple[str, ...]], notes: list[str]) -> MethodScores:
    """Run and score ``method`` on every item (``None``: the mixture itself) against ``groups``' references."""
    scores = MethodScores(name, kind, signal_seconds=items[0].mixture.shape[-1] / items[0].sample_rate)
    mappings: dict[str, int] = {}
    for i, (scenario, recipe) in enumerate(zip(items, recipes)):
        refs = references(scenario, groups)
        mixture = torch.from_numpy(scenario.mixture)[None]
        if method is None:
            estimates = {k: _float64(scenario.mixture) for k in refs}
        else:
            stems, seconds = _timed(lambda: method(mixture, scenario, recipe))
            scores.seconds.append(seconds)
            estimates, mapping = assign_stems(stems, refs, groups=groups)
            for m in mapping:
                mappings[m] = mappings.get(m, 0) + 1
        _score_item(scores, i, refs, estimates, notes, f"{name}, item {i}")
    if mappings:
        notes.append(f"{name}: stems mapped by correlation: " + ", ".join(f"{m} ({n}x)" for m, n in mappings.items()))
    return scores


@dataclass
class _Plan:
    """What runs on one scenario: its items, their recipes, the references and the methods."""

    name: str
    items: list[Scenario]
    recipes: list[Recipe]
    overrides: tuple[str, ...]  # distinct, over the items
    groups: dict[str, tuple[str, ...]]
    methods: dict[str, tuple[str, Method | None]]  # name -> (kind, method)
    left_out: list[str]


def _plan(name: str, items: list[Scenario], config: BenchConfig) -> _Plan:
    recipes, overrides = zip(*(recipe_for(s, config) for s in items))
    groups: dict[str, tuple[str, ...]] = {}
    for item in items:  # items may differ in their sources (array: 2 or 3 talkers); each scores those it has
        groups |= {k: v for k, v in reference_groups(name, item).items() if k not in groups}
    methods: dict[str, tuple[str, Method | None]] = {"demux": ("demux", _demux(config.seed))}
    baselines, left_out = baselines_for(items[0], recipes[0], seed=config.seed, groups=groups)
    methods |= {method: ("baseline", fn) for method, fn in baselines.items()}
    methods |= {method: ("oracle", _oracle(method, groups)) for method in ORACLES}
    methods["mixture"] = ("floor", None)
    distinct = tuple(dict.fromkeys(o for per_item in overrides for o in per_item))
    return _Plan(name, items, list(recipes), distinct, groups, methods, left_out)


def _ablation(items: list[Scenario], config: BenchConfig, step: Callable[[str], None]) -> list[AblationRow]:
    rows = []
    for schedule in SCHEDULES:
        step(f"{ABLATION_SCENARIO}: ablation dropout_schedule={schedule}")
        recipes = []
        for scenario in items:
            shipped = load_recipe(scenario.recipe)
            extra = tuple(f"{stage.name}.fit.dropout_schedule={schedule}" for stage in shipped.stages)
            recipes.append(recipe_for(scenario, config, extra)[0])
        groups = reference_groups(ABLATION_SCENARIO, items[0])
        scores = _run_method(schedule, "demux", _demux(config.seed), items, recipes, groups, [])
        rows.append(AblationRow(schedule, scores.median("sdr"), scores.median("si_sdr"), scores.real_time_factor))
    return rows


def machine() -> dict[str, str]:
    """Where the numbers were measured: cores, torch and its threads, Python, platform."""
    return {
        "cpu cores": str(os.cpu_count()),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} thread(s))",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "demux": __version__,
        "BSS-Eval engine": f"fast {engine_version('fast')}",
    }


def _load_engine_speed() -> Callable[[bool], list[dict]] | None:
    """``run(quick)`` of ``benchmarks/bench_metrics.py`` beside the package (a checkout), else None."""
    if not BENCH_METRICS.is_file():
        return None
    spec = importlib.util.spec_from_file_location("demux_bench_metrics", BENCH_METRICS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run


def run_bench(config: BenchConfig, *, on_progress: Progress | None = None) -> BenchResult:
    """Run the benchmark described by ``config`` with ``config.threads`` torch threads.

    Scenarios that cannot run are skipped with the reason (no shipped recipe, recordings
    not present); every other error propagates.

    Returns:
        A :class:`BenchResult`; ``on_progress(done, total, label)`` is called before each
        (scenario, method) step, each ablation schedule and the engine timing, and once at
        the end with ``done == total``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, on_progress)
    finally:
        torch.set_num_threads(threads)


def _run(config: BenchConfig, on_progress: Progress | None) -> BenchResult:
    result = BenchResult(config=config, date=datetime.date.today().isoformat(), machine=machine())
    planned: list[_Plan] = []
    for name in config.names:
        try:
            items = make_items(name, config)
        except DemuxError as error:  # e.g. the shared recordings are absent
            result.skipped.append((name, str(error)))
            continue
        reason = _skip_reason(items[0])
        if reason:
            result.skipped.append((name, reason))
            continue
        planned.append(_plan(name, items, config))
    ablation_items = None
    if config.ablation:
        ablation_items = next((p.items for p in planned if p.name == ABLATION_SCENARIO), None)
        ablation_items = ablation_items or make_items(ABLATION_SCENARIO, config)
    engine_speed = _load_engine_speed() if config.engine_speed else None
    if config.engine_speed and engine_speed is None:
        result.notes.append(f"BSS-Eval engine speed not measured: {BENCH_METRICS} is not here (run from a checkout)")
    total = sum(len(p.methods) for p in planned) + (len(SCHEDULES) if config.ablation else 0)
    total += engine_speed is not None
    done = 0

    def step(label: str) -> None:
        nonlocal done
        if on_progress:
            on_progress(done, total, label)
        done += 1

    for plan in planned:
        first = plan.items[0]
        scenario_result = ScenarioResult(
            scenario=plan.name,
            recipe=first.recipe,
            items=len(plan.items),
            signal_seconds=first.mixture.shape[-1] / first.sample_rate,
            sample_rate=first.sample_rate,
            references=list(plan.groups),
            overrides=plan.overrides,
            methods=[],
            notes=list(plan.left_out),
            groups=plan.groups,
            is_complex=first.is_complex,
        )
        for method, (kind, fn) in plan.methods.items():
            step(f"{plan.name}: {method}")
            scenario_result.methods.append(
                _run_method(method, kind, fn, plan.items, plan.recipes, plan.groups, scenario_result.notes))
        result.scenarios.append(scenario_result)
    if ablation_items is not None:
        result.ablation = _ablation(ablation_items, config, step)
        result.ablation_notes.append(
            f"{ABLATION_SCENARIO}, {len(ablation_items)} item(s) of "
            f"{ablation_items[0].mixture.shape[-1] / ablation_items[0].sample_rate:g} s, recipe {ablation_items[0].recipe}"
        )
    if engine_speed is not None:
        step("BSS-Eval engine speed (fast vs mir_eval)")
        result.engine_speed = engine_speed(config.quick)
    if on_progress:
        on_progress(total, total, "done")
    return result


# --------------------------------------------------------------------------- tables


def _db(value: float) -> str:
    return "nan" if math.isnan(value) else (f"{value:.0f}" if math.isinf(value) else f"{value:.2f}")


def _rtf(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3g}"


SUMMARY_COLUMNS = ("scenario", "recipe", "items x s", "demux SDR", "best baseline (SDR)", "oracle IRM SDR",
                   "gap to IRM", "demux RTF", "beats all baselines?")
METHOD_COLUMNS = ("method", "kind", "SDR", "SIR", "SAR", "SI-SDR", "gap to IRM", "RTF (s/s)")
ABLATION_COLUMNS = ("dropout_schedule", "SDR", "SI-SDR", "RTF (s/s)")
ENGINE_COLUMNS = ("engine", "version", "signal", "seconds (median)", "speed-up vs mir_eval", "max |diff| dB")


def summary_rows(result: BenchResult) -> list[list[str]]:
    """One row per scenario: demux against its best rival and the ceiling (medians, dB)."""
    rows = []
    for s in result.scenarios:
        demux, best = s.method("demux"), s.best_rival()
        rows.append([
            s.scenario, s.recipe, f"{s.items} x {s.signal_seconds:g}", _db(demux.median("sdr")),
            f"{best.method} ({_db(best.median('sdr'))})", _db(s.method(CEILING).median("sdr")),
            _db(s.gap_to_ceiling("demux")), _rtf(demux.real_time_factor), "yes" if s.beats_all_baselines() else "no",
        ])
    return rows


def method_rows(scenario: ScenarioResult) -> list[list[str]]:
    """One row per method of ``scenario``: medians in dB, gap to the oracle IRM, real-time factor."""
    return [
        [m.method, m.kind, *(_db(m.median(metric)) for metric in METRICS), _db(scenario.gap_to_ceiling(m.method)),
         _rtf(m.real_time_factor)]
        for m in scenario.methods
    ]


def ablation_rows(result: BenchResult) -> list[list[str]]:
    return [[r.schedule, _db(r.sdr), _db(r.si_sdr), _rtf(r.real_time_factor)] for r in result.ablation]


def engine_rows(result: BenchResult) -> list[list[str]]:
    return [
        [r["engine"], r["version"], f"{r['sources']} sources x {r['audio_s']:g} s at {r['rate_hz']} Hz",
         f"{r['seconds']:.3f}", f"{r['speedup_vs_mir_eval']:.1f}x", f"{r['max_abs_diff_db']:.2e}"]
        for r in result.engine_speed
    ]


def rich_tables(result: BenchResult) -> list:
    """The tables as ``rich.table.Table`` objects: summary, one per scenario, ablation, engines."""
    from rich.table import Table

    def table(title: str, columns, rows) -> Table:
        out = Table(title=title)
        for column in columns:
            out.add_column(column, justify="left" if column in ("scenario", "recipe", "method", "kind") else "right")
        for row in rows:
            out.add_row(*row)
        return out

    tables = [table(f"demux bench {result.date}: median SDR (dB) over items x sources", SUMMARY_COLUMNS,
                    summary_rows(result))]
    tables += [table(f"{s.scenario} ({s.recipe}; {s.items} x {s.signal_seconds:g} s)", METHOD_COLUMNS, method_rows(s))
               for s in result.scenarios]
    if result.ablation:
        tables.append(table(f"dropout-schedule ablation on {ABLATION_SCENARIO}", ABLATION_COLUMNS, ablation_rows(result)))
    if result.engine_speed:
        tables.append(table("BSS-Eval v3 engines", ENGINE_COLUMNS, engine_rows(result)))
    return tables


def _reference_list(scenario: ScenarioResult) -> str:
    """``primary, secondary (= qpsk + ofdm), noise``: a reference summing other sources says which."""
    def one(name: str) -> str:
        members = scenario.groups.get(name, (name,))
        return name if tuple(members) == (name,) else f"{name} (= {' + '.join(members)})"

    return ", ".join(one(name) for name in scenario.references)


def _markdown_table(header, rows) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)])


def markdown(result: BenchResult) -> str:
    """The whole run as Markdown: machine, command, summary, per-scenario tables, ablation, notes."""
    config = result.config
    parts = [
        f"# demux bench, {result.date}{' (quick)' if config.quick else ''}",
        "",
        f"Command: `{config.command()}`",
        "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in result.machine.items()),
        "",
        "Every number is a median over items x references, in dB: BSS-Eval v3 SDR/SIR/SAR (engine "
        "`fast`, labelled stems, channels averaged) and SI-SDR; an all-zero estimate counts as -inf SDR. `gap to IRM` is the method's median SDR minus the oracle "
        "ideal ratio mask's on the recipe's first-stage transform (the ceiling). RTF is the real-time factor: "
        "wall seconds per second of signal, median over items (the mixture takes no time). `beats all baselines?` "
        "is yes when demux's median SDR is above every applicable baseline's and the mixture's.",
    ]
    if any(s.is_complex for s in result.scenarios):
        parts += ["", "Complex (I/Q) scenarios: BSS-Eval scores the real and imaginary parts as two channels and "
                  "averages them (the convention of `demux evaluate`, which reads a complex stem as its [real, imag] "
                  "channels); SI-SDR is the complex SI-SDR, 10 log10(|<e,r>|^2 / (||e||^2 ||r||^2 - |<e,r>|^2)), "
                  "whose scale is a complex gain (a phase rotation costs nothing). Oracles use the recipe's two-sided "
                  "transform."]
    if config.quick:
        parts += ["", "Quick run: 2 short items per scenario; audio-stft with fewer trust-region iterations "
                  f"({', '.join(QUICK_OVERRIDES['audio-stft'])}). Not the full benchmark."]
    parts += ["", "## Summary", "", _markdown_table(SUMMARY_COLUMNS, summary_rows(result))]
    for s in result.scenarios:
        parts += ["", f"## {s.scenario}", "",
                  f"Recipe `{s.recipe}`; {s.items} item(s) of {s.signal_seconds:g} s at {s.sample_rate:g} Hz"
                  f"{', complex I/Q' if s.is_complex else ''}; references: {_reference_list(s)}."]
        if s.overrides:
            parts += [f"Recipe overrides: {', '.join(f'`{o}`' for o in s.overrides)}."]
        parts += ["", _markdown_table(METHOD_COLUMNS, method_rows(s))]
        if s.notes:
            parts += ["", *(f"- {note}" for note in s.notes)]
    if result.ablation:
        parts += ["", "## Dropout-schedule ablation", "", *result.ablation_notes, "",
                  _markdown_table(ABLATION_COLUMNS, ablation_rows(result))]
    if result.engine_speed:
        parts += ["", "## BSS-Eval engine speed", "", "`benchmarks/bench_metrics.py`: the engines on the same "
                  "signals, permutation search on.", "", _markdown_table(ENGINE_COLUMNS, engine_rows(result))]
    if result.skipped or result.notes:
        parts += ["", "## Not run", "", *(f"- {name}: {reason}" for name, reason in result.skipped),
                  *(f"- {note}" for note in result.notes)]
    return "\n".join(parts) + "\n"


def results_path(out_dir: str | Path, *, quick: bool, date: str | None = None) -> Path:
    """``out_dir/<YYYY-MM-DD>.md`` (``<YYYY-MM-DD>-quick.md`` for a quick run), today by default."""
    date = date or datetime.date.today().isoformat()
    return Path(out_dir) / f"{date}{'-quick' if quick else ''}.md"


def write_markdown(result: BenchResult, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write :func:`markdown` to :func:`results_path` atomically; refuses to replace without ``overwrite``."""
    return write_text_atomic(results_path(out_dir, quick=result.config.quick, date=result.date), markdown(result),
                             overwrite=overwrite)


__all__ = [
    "AblationRow",
    "BenchConfig",
    "BenchResult",
    "MethodScores",
    "ScenarioResult",
    "assign_stems",
    "band_overrides",
    "baselines_for",
    "make_items",
    "markdown",
    "reference_groups",
    "references",
    "results_path",
    "rich_tables",
    "run_bench",
    "score",
    "write_markdown",
]
