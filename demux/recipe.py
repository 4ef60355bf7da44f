"""YAML recipes -> validated, typed recipe objects.

A recipe is data (``yaml.safe_load`` only). It is validated once, here, against the
dataclasses below: the schema *is* the dataclasses, so a key is declared exactly
once. Every error names the recipe file, the key path and what was expected::

    recipes/my.yaml: stages.split.sources.voice.band.lo: expected a number, got 'eighty'

Values that depend on the signal (a band above Nyquist, a wavelet level deeper
than the signal allows) are checked by :func:`check_against_signal` once the
sample rate and length are known.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from demux.errors import RecipeError
from demux.priors.components import ComponentStatistic
from demux.trust_region import TrustRegionConfig
from demux.weighting import Weighting

Domain = Literal["audio", "biomedical", "radio", "radar", "array", "generic"]
Combiner = Literal["softmax", "sigmoid"]
NoiseEstimate = Literal["mad", "minimum"]
LinePaths = Literal["all", "direct", "multipath"]
SynthesisType = Literal["mask", "multichannel-wiener"]
#: Transforms whose coefficients are the mics' STFTs with the array's geometry (multichannel Wiener synthesis).
MIC_ARRAY_TRANSFORMS = ("array-stft",)


@dataclass(frozen=True)
class Band:
    """A frequency band ``[lo, hi]`` in Hz with soft edges ``edge`` Hz wide (0: one bin)."""

    lo: float
    hi: float
    edge: float = 0.0


@dataclass(frozen=True)
class Harmonic:
    """A harmonic comb at ``h * f0(t)``, f0 tracked per frame inside ``[f0_min, f0_max]`` Hz."""

    f0_min: float = 70.0
    f0_max: float = 400.0
    n_harmonics: int = 10
    width: float = 0.03  # relative half-width of each tooth (fraction of f0)
    strength: float = 4.0  # prior log-odds on the teeth (and -strength between them)
    # scale the comb by the tracker's voicing (a harmonic-to-noise test: no comb on frames that
    # score as noise would). Off: the comb in every frame. Off by default: measured on the quick
    # bench (6 items, audio-stft SDR off / on) speech-noise 3.81 / 3.81, music -3.57 / -3.46,
    # chirps 7.56 / 6.99 (the steady tones there are inharmonic lines the always-on comb takes).
    voicing_gate: bool = False


@dataclass(frozen=True)
class Energy:
    """Energy terms ``beta * e_k + alpha * E_k`` (initial values; fitted per group).

    ``e_k`` is the coefficient's level-normalised log-power, ``E_k`` the same of the
    mean power over a ``size``-wide neighbourhood (``size x size`` on time-frequency
    grids): alpha rewards coefficients in energetic regions, beta energetic coefficients.
    """

    beta: float = 1.0
    alpha: float = 0.0
    size: int = 3


@dataclass(frozen=True)
class Steering:
    """A direction of arrival: beams within about ``width`` degrees of ``direction`` belong here."""

    direction: float
    width: float = 10.0


@dataclass(frozen=True)
class Arrival:
    """A direction of arrival at a microphone array (transform ``array-stft``).

    Each time-frequency bin's prior log-odds for the source are the log-likelihood of the
    mics' phases under one plane wave from ``direction``, with independent phase errors
    of ``phase_noise`` radians per mic (``demux.priors.direction``).
    """

    direction: float | None = None  # degrees from broadside, positive towards +x; None: found in the mixture
    phase_noise: float = 0.03  # radians

    def __post_init__(self):
        if self.direction is not None and not -90 <= self.direction <= 90:
            raise ValueError(f"direction={self.direction} is not in [-90, 90] degrees")
        if not self.phase_noise > 0:
            raise ValueError(f"phase_noise={self.phase_noise} is not a number > 0 (radians)")


@dataclass(frozen=True)
class Smooth:
    """Penalty weights on squared differences of the fitted log-variance."""

    time: float = 0.0
    freq: float = 0.0


@dataclass(frozen=True)
class NoiseFloor:
    """Anchor a source's per-band level to a noise estimate from the mixture.

    ``mad``: per group ``sigma = MAD(c)/0.6745`` (wavelet shrinkage, Donoho);
    ``minimum``: a low percentile of the power over frames (minimum statistics, Martin).
    ``track_s``: with ``minimum``, a floor that moves with time instead: Martin's tracked
    minimum over a ``track_s``-second window per group and frame
    (:func:`demux.priors.noise.tracked_log_variance`); ``level`` is anchored to its mean
    over frames (with ``weight``) and its deviation from that mean, averaged over groups,
    enters the source's prior per frame. None: one floor per group (``percentile``).
    """

    estimate: NoiseEstimate = "minimum"
    weight: float = 1.0
    percentile: float = 10.0
    track_s: float | None = None

    def __post_init__(self):
        if self.track_s is not None and not self.track_s > 0:
            raise ValueError(f"track_s={self.track_s}: expected a window > 0 seconds (or null: a static floor)")
        if self.track_s is not None and self.estimate != "minimum":
            raise ValueError(f"track_s={self.track_s}: a tracked floor is a minimum statistic; set estimate: minimum")


@dataclass(frozen=True)
class ComponentRule:
    """Which components of an ``ica-stft`` transform a source may take, by one statistic of each.

    ``skewness``: absolute skewness of the component (blinks, one-signed: far above 1);
    ``band_share``: share of its power inside ``band`` (muscle: most of it above 20 Hz).
    Membership is a logistic step ``width`` wide (statistic units) at ``above`` and/or ``below``.
    """

    statistic: ComponentStatistic
    above: float | None = None
    below: float | None = None
    width: float = 1.0
    band: Band | None = None  # for band_share, Hz

    def __post_init__(self):
        if self.above is None and self.below is None:
            raise ValueError("above=None and below=None: give a threshold 'above' or 'below'")
        if not self.width > 0:
            raise ValueError(f"width={self.width}: expected a number > 0")
        if (self.statistic == "band_share") != (self.band is not None):
            raise ValueError(f"band={self.band}: 'band_share' needs a band {{lo, hi}} and 'skewness' takes none")


@dataclass(frozen=True)
class Lines:
    """Steady tones (moving targets' Doppler lines) found by CLEAN with a CFAR test.

    The source's log-variance is the found lines' power through the stage's transform
    (``floor_db`` below the white noise floor where no line reaches); its per-group
    level, a log-gain on that, is anchored at 0 with ``weight``. See :mod:`demux.priors.lines`.
    ``paths`` keeps every line found, or, with range gates as channels, only the direct
    returns or only the multipath ghosts (:func:`demux.priors.lines.multipath_lines`).
    """

    threshold_db: float = 13.0
    max_lines: int = 8
    weight: float = 4.0
    floor_db: float = 40.0
    paths: LinePaths = "all"


@dataclass(frozen=True)
class Beats:
    """A per-beat time prior for an ECG source on a 'dwt' transform (:mod:`demux.priors.beats`).

    R peaks are found on the reconstruction from the levels whose centre frequency lies in
    ``detect_hz``; on ``levels`` the source's log-odds are ``+weight`` within ``qrs_ms``
    (plus half a coefficient's span) of a beat and ``-weight`` between beats. On
    ``template_levels`` (opt-in) its log-odds are the power ratio of the mean beat placed at
    every beat to the mixture minus it, both plus ``template_floor`` of the level's mean
    template power (:func:`demux.priors.beats.template_log_odds`).
    """

    qrs_ms: float = 20.0
    weight: float = 8.0
    levels: tuple[int, ...] = (1, 2, 3, 4)
    refractory_ms: float = 250.0
    detect_hz: tuple[float, ...] = (5.0, 45.0)
    template_levels: tuple[int, ...] = ()
    template_floor: float = 0.2

    def __post_init__(self):
        if self.qrs_ms <= 0 or self.refractory_ms <= 0 or self.weight < 0:
            raise ValueError(f"qrs_ms={self.qrs_ms}: expected positive qrs_ms and refractory_ms, weight >= 0")
        if any(j < 1 for j in self.template_levels) or self.template_floor <= 0:
            raise ValueError(f"template_levels={list(self.template_levels)}, template_floor={self.template_floor}: "
                             "expected levels >= 1 and a floor > 0")
        if len(self.detect_hz) != 2 or not 0 <= self.detect_hz[0] < self.detect_hz[1]:
            raise ValueError(f"detect_hz={list(self.detect_hz)}: expected [lo, hi] in Hz with lo < hi")


@dataclass(frozen=True)
class Activity:
    """A voice-activity bias on a source's prior, per frame (:mod:`demux.priors.activity`).

    Sohn's likelihood-ratio detector on the bins in ``band`` (Hz) against a tracked
    minimum-statistics floor (``track_s``-second window) gives a speech presence
    probability ``p(t)`` per frame (``threshold``: per-bin log-odds, nats; a frame stays
    active ``hangover_ms`` around an active one); the source's prior log-odds get
    ``weight * (p(t) - 1)``, down in the pauses (with softmax masks of two sources, the
    same as raising the other there). Needs a (freq, frame) transform such as stft.
    """

    weight: float = 1.0
    band: Band = field(default_factory=lambda: Band(300.0, 4000.0))
    threshold: float = 0.4
    hangover_ms: float = 100.0
    track_s: float = 1.5

    def __post_init__(self):
        if not self.weight >= 0:
            raise ValueError(f"weight={self.weight}: expected a number >= 0 (log-odds)")
        if not 0 <= self.band.lo < self.band.hi:
            raise ValueError(f"band={self.band}: expected 0 <= lo < hi (Hz)")
        if not self.threshold >= 0:
            raise ValueError(f"threshold={self.threshold}: expected a number >= 0 (nats per bin)")
        if not self.hangover_ms >= 0:
            raise ValueError(f"hangover_ms={self.hangover_ms}: expected a number >= 0")
        if not self.track_s > 0:
            raise ValueError(f"track_s={self.track_s}: expected a window > 0 seconds")


@dataclass(frozen=True)
class Source:
    """One source of a stage: its priors (physical units) and which parameters it fits.

    The source's log-variance at coefficient k (DESIGN.md, "The model") is
    ``z = prior(k) + level[b(k)] + gain[t(k)] + detail[k] + beta[b(k)] * e_k + alpha[b(k)] * E_k``.
    """

    bands: tuple[Band, ...] = ()  # support Omega_s; empty = everywhere
    levels: tuple[int, ...] = ()  # wavelet scales J_s (1 = finest detail; the approximation is level+1)
    harmonic: Harmonic | None = None
    lock: tuple[Band, ...] = ()  # hard: this source takes these bands whole
    energy: Energy | None = None  # the source follows the observed energy (sparse, transient, loud)
    steering: Steering | None = None  # direction of arrival, for spatial transforms
    arrival: Arrival | None = None  # direction of arrival at a mic array, for 'array-stft'
    stationary: bool = False  # no per-frame gain: a stationary noise
    detail: bool = False  # free per-coefficient log-variance offsets
    smooth: Smooth = field(default_factory=Smooth)
    noise_floor: NoiseFloor | None = None
    lines: Lines | None = None  # steady tones found in the mixture (radar targets)
    learned: str | None = None  # safetensors file with per-group offsets
    outside: float = -8.0  # prior log-odds outside the support
    components: tuple[ComponentRule, ...] = ()  # ica-stft: components it may take (every rule must hold)
    rest: bool = False  # its support is what the other sources' supports leave (times its own bands)
    beats: Beats | None = None  # 'dwt': per-beat time prior (ECG: R peaks found in the mixture)
    activity: Activity | None = None  # per-frame voice-activity bias (a (freq, frame) transform)


@dataclass(frozen=True)
class TransformSpec:
    """Which transform and its parameters (passed to ``demux.transforms.build_transform``)."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)
    mel_bands: int = 0  # > 0: tie level parameters per mel band (STFT), lifted to bins


@dataclass(frozen=True)
class EdgeRadius:
    """A smaller trust radius near band edges: the masks of coefficients whose bin comes
    within ``width_hz`` of an edge of any source's ``bands`` or ``lock`` in the stage may
    change by ``scale`` times the radius per step (:func:`demux.trust_region.edge_weight`)."""

    width_hz: float
    scale: float = 0.5

    def __post_init__(self):
        if not self.width_hz >= 0:
            raise ValueError(f"width_hz={self.width_hz}: expected a distance >= 0 Hz (0: the bins straddling an edge)")
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale={self.scale}: expected a radius factor in (0, 1]")


@dataclass(frozen=True)
class FitSpec(TrustRegionConfig):
    """A stage's fit: the trust-region settings (:class:`~demux.trust_region.TrustRegionConfig`)
    and the per-coefficient weighting of its likelihood (:data:`demux.weighting.Weighting`:
    ``none``, ``a-weighting`` or ``ath``, from each coefficient's frequency in Hz)."""

    weighting: Weighting = "none"
    edge_radius: EdgeRadius | None = None  # None: one radius for every coefficient


@dataclass(frozen=True)
class Synthesis:
    """How a stage's masks become stems: ``mask`` multiplies every channel's coefficients by
    the source's mask; ``multichannel-wiener`` (mic arrays) filters the mics with the sources'
    variances and spatial covariances (:func:`demux.wiener.multichannel_wiener`)."""

    type: SynthesisType = "mask"
    iterations: int = 0  # multichannel-wiener: EM re-estimations of variances and covariances
    load: float = 1e-3  # multichannel-wiener: diagonal loading of the trace-M spatial covariances

    def __post_init__(self):
        if self.iterations < 0:
            raise ValueError(f"iterations={self.iterations}: expected an integer >= 0")
        if not self.load > 0:
            raise ValueError(f"load={self.load}: expected a number > 0")


@dataclass(frozen=True)
class Stage:
    """One separation stage: a transform, sources competing for its coefficients, the fit."""

    name: str
    transform: TransformSpec
    sources: dict[str, Source]
    split: str | None = None  # the stem of an earlier stage this stage splits (None: the mixture)
    combiner: Combiner = "softmax"
    fit: FitSpec = field(default_factory=FitSpec)
    synthesis: Synthesis = field(default_factory=Synthesis)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: stages applied in order, each splitting one stem; ``stems`` groups the leaves."""

    name: str
    stages: tuple[Stage, ...]
    description: str = ""
    domain: Domain = "generic"
    sample_rates: tuple[float, ...] = ()  # served rates; empty = any
    resample_to: float | None = None  # inputs at another rate are resampled to this one
    # output stem -> the leaves it sums (every leaf in exactly one); empty: the leaves themselves
    stems: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = "<recipe>"

    def sources(self) -> list[str]:
        """Names of the output stems: the keys of ``stems``, or without it the :meth:`leaves`."""
        return list(self.stems) or self.leaves()

    def leaves(self) -> list[str]:
        """Names of the stage tree's final stems in tree order: a split stem is replaced by its sub-stems."""
        names = list(self.stages[0].sources)
        for stage in self.stages[1:]:
            at = names.index(stage.split)
            names[at : at + 1] = list(stage.sources)
        return names


# --------------------------------------------------------------------------- loading


def builtin_names() -> list[str]:
    """Names of the recipes shipped in the package (``recipes/*.yaml``)."""
    root = importlib.resources.files("demux.recipes")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def builtin_text(name: str) -> str:
    """The YAML text of built-in recipe ``name``."""
    return (importlib.resources.files("demux.recipes") / f"{name}.yaml").read_text()


def load_recipe(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a built-in recipe by name, or a YAML file by path, apply ``key.path=value`` overrides.

    Raises:
        RecipeError: the file is missing or malformed; the message names the key path.
    """
    raw, source = _load_raw(str(name_or_path), seen=())
    raw = copy.deepcopy(raw)
    _normalise_bands(raw, source)
    for item in overrides:
        _apply_override(raw, item, source)
    return parse_recipe(raw, source=source)


def _load_raw(name_or_path: str, seen: tuple[str, ...]) -> tuple[dict, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in name_or_path:
        if not path.is_file():
            raise RecipeError(name_or_path, "", "no such recipe file")
        text, source = path.read_text(), str(path)
    elif name_or_path in builtin_names():
        text, source = builtin_text(name_or_path), f"recipe '{name_or_path}'"
    else:
        close = difflib.get_close_matches(name_or_path, builtin_names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; built-in recipes: {', '.join(builtin_names())}"
        raise RecipeError(name_or_path, "", f"no built-in recipe of that name and no such file{hint}")
    if source in seen:
        raise RecipeError(source, "extends", f"circular 'extends': {' -> '.join(seen + (source,))}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(source, "", f"YAML syntax error at {where}{problem}") from None
    if not isinstance(raw, dict):
        raise RecipeError(source, "", f"expected a mapping at the top level, got {_kind(raw)}")
    base = raw.pop("extends", None)
    if base is None:
        return raw, source
    if not isinstance(base, str):
        raise RecipeError(source, "extends", f"expected a recipe name or path, got {_kind(base)}")
    parent, _ = _load_raw(base, seen + (source,))
    return _deep_merge(parent, raw), source


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict, item: str, source: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) in place; a leading stage name may omit ``stages.``."""
    if "=" not in item:
        raise RecipeError(source, item, "an override must look like key.path=value")
    key_path, text = item.split("=", 1)
    keys = key_path.strip().split(".")
    if keys[0] not in raw and keys[0] in (raw.get("stages") or {}):
        keys = ["stages", *keys]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if len(keys) >= 5 and keys[0] == "stages" and keys[2] == "sources" and keys[4] == "band":
        # `band:` was normalised to `bands: [...]` before overrides; `band` still names that one band
        value = value if len(keys) > 5 else [value]
        keys = [*keys[:4], "bands", *(["0", *keys[5:]] if len(keys) > 5 else [])]
    node = raw
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise RecipeError(source, ".".join(keys[: depth + 1]), "cannot set a key inside a non-mapping value")
        node = node.setdefault(key, {})
    if not isinstance(node, dict):
        raise RecipeError(source, key_path, "cannot set a key inside a non-mapping value")
    node[keys[-1]] = value


# --------------------------------------------------------------------------- validation


def parse_recipe(raw: dict, *, source: str = "<recipe>") -> Recipe:
    """Validate a raw mapping (as from ``yaml.safe_load``) into a :class:`Recipe`."""
    raw = dict(raw)
    stages_raw = raw.pop("stages", None)
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise RecipeError(source, "stages", "expected a non-empty mapping of stage name -> stage")
    stages = []
    for stage_name, stage_raw in stages_raw.items():
        path = f"stages.{stage_name}"
        if not isinstance(stage_raw, dict):
            raise RecipeError(source, path, f"expected a mapping, got {_kind(stage_raw)}")
        stages.append(_stage(str(stage_name), stage_raw, path, source))
    recipe = _build(Recipe, {**raw, "stages": stages, "source": source}, "", source, prebuilt={"stages"})
    _check_structure(recipe)
    return recipe


def _stage(name: str, raw: dict, path: str, source: str) -> Stage:
    raw = dict(raw)
    sources_raw = raw.pop("sources", None)
    if not isinstance(sources_raw, dict) or len(sources_raw) < 2:
        raise RecipeError(source, f"{path}.sources", "expected a mapping of at least two source names -> priors")
    sources = {}
    for source_name, source_raw in sources_raw.items():
        source_raw = {} if source_raw is None else source_raw
        key = f"{path}.sources.{source_name}"
        if not isinstance(source_raw, dict):
            raise RecipeError(source, key, f"expected a mapping of priors, got {_kind(source_raw)}")
        sources[str(source_name)] = _build(Source, _single_band(source_raw, key, source), key, source)
    transform = raw.get("transform")
    if isinstance(transform, dict):  # YAML puts the parameters beside the type
        params = {k: v for k, v in transform.items() if k not in ("type", "mel_bands")}
        raw["transform"] = {k: v for k, v in transform.items() if k in ("type", "mel_bands")} | {"params": params}
    return _build(Stage, {**raw, "name": name, "sources": sources}, path, source, prebuilt={"sources", "name"})


def _single_band(source_raw: dict, key: str, source: str) -> dict:
    """One band is the common case: ``band: {...}`` stands for ``bands: [{...}]``."""
    if "band" not in source_raw:
        return source_raw
    if "bands" in source_raw:
        raise RecipeError(source, key, "give either 'band' or 'bands', not both")
    out = {k: v for k, v in source_raw.items() if k != "band"}
    out["bands"] = [source_raw["band"]]
    return out


def _normalise_bands(raw: dict, source: str) -> None:
    """Rewrite every ``band:`` as ``bands:`` in place, so overrides address one spelling."""
    stages = raw.get("stages")
    for stage_name, stage in (stages.items() if isinstance(stages, dict) else ()):
        sources = stage.get("sources") if isinstance(stage, dict) else None
        for name, src in (sources.items() if isinstance(sources, dict) else ()):
            if isinstance(src, dict):
                sources[name] = _single_band(src, f"stages.{stage_name}.sources.{name}", source)


def _build(cls, raw: dict, path: str, source: str, prebuilt: set[str] = frozenset()):
    """Build dataclass ``cls`` from ``raw``, checking unknown keys, types and required keys."""
    if not isinstance(raw, dict):
        raise RecipeError(source, path, f"expected a mapping, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(names)}"
            raise RecipeError(source, _join(path, key), f"unknown key{hint}")
    values = {}
    for f in dataclasses.fields(cls):
        key = _join(path, f.name)
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(source, key, "required key is missing")
            continue
        value = raw[f.name]
        values[f.name] = value if f.name in prebuilt else _convert(value, hints[f.name], key, source)
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:  # a dataclass's own __post_init__ check
        named = re.match(r"(?:\w+\.)?(\w+)=", str(error))
        key = _join(path, named.group(1)) if named and named.group(1) in names else path
        raise RecipeError(source, key, str(error)) from None


def _convert(value: Any, hint: Any, path: str, source: str) -> Any:
    """Check ``value`` against type ``hint`` and convert (lists -> tuples, ints -> floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, path, source)
            except RecipeError as error:
                errors.append(error)
        raise errors[0] from None  # with its own key path (a nested field's, for an optional mapping)
    if origin is Literal:
        if value not in args:
            raise RecipeError(source, path, f"expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            value = [value]  # a single item where a list is expected
        return tuple(_convert(v, args[0], f"{path}.{i}", source) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(source, path, f"expected a mapping, got {_kind(value)}")
        return {str(k): _convert(v, args[1], _join(path, k), source) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, path, source)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(source, path, f"expected true or false, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(source, path, f"expected a number, got {_kind(value)}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(source, path, f"expected an integer, got {_kind(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(source, path, f"expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"recipe schema uses an unsupported type {hint!r} at {path}")  # a bug, not user input


def _check_structure(recipe: Recipe) -> None:
    """Checks across stages: split targets exist and stem names are unique."""
    seen: dict[str, str] = {}
    for index, stage in enumerate(recipe.stages):
        path = f"stages.{stage.name}"
        if index == 0 and stage.split is not None:
            raise RecipeError(recipe.source, f"{path}.split", "the first stage splits the mixture; remove 'split'")
        if index > 0 and stage.split is None:
            raise RecipeError(recipe.source, f"{path}.split", "a later stage must name the stem it splits")
        if stage.split is not None and stage.split not in seen:
            raise RecipeError(
                recipe.source, f"{path}.split", f"no earlier stem named '{stage.split}'; stems so far: {', '.join(seen)}"
            )
        for name in stage.sources:
            _check_file_name(recipe, f"{path}.sources.{name}", name, "source")
            if name in seen:
                raise RecipeError(recipe.source, f"{path}.sources.{name}", f"stem name already used in stage {seen[name]}")
            seen[name] = stage.name
        if stage.combiner == "sigmoid" and "residual" not in stage.sources:
            raise RecipeError(recipe.source, f"{path}.sources", "the sigmoid combiner needs a source named 'residual'")
        if stage.synthesis.type == "multichannel-wiener" and stage.transform.type not in MIC_ARRAY_TRANSFORMS:
            raise RecipeError(recipe.source, f"{path}.synthesis.type",
                              f"a multichannel Wiener filter needs the mics' STFTs and the array's geometry: transform "
                              f"{' or '.join(map(repr, MIC_ARRAY_TRANSFORMS))}, not {stage.transform.type!r}")
        for name, src in stage.sources.items():
            for i, band in enumerate(src.bands + src.lock):
                if not band.lo < band.hi:
                    raise RecipeError(
                        recipe.source, f"{path}.sources.{name}.bands.{i}", f"expected lo < hi, got lo={band.lo}, hi={band.hi}"
                    )
            if src.energy and src.energy.size < 1:
                raise RecipeError(recipe.source, f"{path}.sources.{name}.energy.size", "expected an integer >= 1")
            if src.steering and not (-90 <= src.steering.direction <= 90 and src.steering.width > 0):
                raise RecipeError(
                    recipe.source, f"{path}.sources.{name}.steering", "expected -90 <= direction <= 90 degrees and width > 0"
                )
            if src.harmonic and not 0 < src.harmonic.f0_min < src.harmonic.f0_max:
                raise RecipeError(recipe.source, f"{path}.sources.{name}.harmonic", "expected 0 < f0_min < f0_max")
            if src.lines and src.noise_floor:
                raise RecipeError(recipe.source, f"{path}.sources.{name}.lines",
                                  "lines and noise_floor both anchor the source's level: keep one")
            if src.lines and not (src.lines.max_lines >= 1 and src.lines.weight > 0):
                raise RecipeError(recipe.source, f"{path}.sources.{name}.lines", "expected max_lines >= 1 and weight > 0")
    _check_stems(recipe)


def _check_file_name(recipe: Recipe, path: str, name: str, what: str) -> None:
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise RecipeError(recipe.source, path, f"a {what} name becomes a file name: expected no '/', '\\' or leading '.'")


def _check_stems(recipe: Recipe) -> None:
    """``stems`` partitions the leaves: each leaf in exactly one output stem, so the stems sum to the mixture."""
    if not recipe.stems:
        return
    leaves = recipe.leaves()
    split = {stage.split: stage for stage in recipe.stages[1:]}
    taken: dict[str, str] = {}
    for name, parts in recipe.stems.items():
        path = f"stems.{name}"
        _check_file_name(recipe, path, name, "stem")
        if not parts:
            raise RecipeError(recipe.source, path, "expected a list of at least one leaf stem")
        for i, leaf in enumerate(parts):
            if leaf in split:
                raise RecipeError(recipe.source, f"{path}.{i}", f"'{leaf}' is split by stage {split[leaf].name}; "
                                                                f"name its stems instead ({', '.join(split[leaf].sources)})")
            if leaf not in leaves:
                raise RecipeError(recipe.source, f"{path}.{i}", f"unknown stem '{leaf}' (leaf stems: {', '.join(leaves)})")
            if leaf in taken:
                raise RecipeError(recipe.source, f"{path}.{i}", f"leaf '{leaf}' is already in stems.{taken[leaf]}: "
                                                                "each leaf goes to exactly one output stem")
            taken[leaf] = name
    missing = [leaf for leaf in leaves if leaf not in taken]
    if missing:
        raise RecipeError(recipe.source, "stems", f"leaf stem(s) {', '.join(missing)} in no output stem: every leaf "
                                                  "goes to one, so that the stems sum to the mixture")


def check_against_signal(recipe: Recipe, sample_rate: float, *, complex_signal: bool = False) -> None:
    """Checks that need the signal: bands inside the spectrum it has.

    A real signal's spectrum is ``[0, fs/2]``; a complex (I/Q) one's is
    ``[-fs/2, fs/2]`` around its centre frequency.

    Raises:
        RecipeError: naming the key path of the offending value.
    """
    nyquist = sample_rate / 2
    for stage in recipe.stages:
        for name, src in stage.sources.items():
            for kind, bands in (("bands", src.bands), ("lock", src.lock)):
                for i, band in enumerate(bands):
                    key = f"stages.{stage.name}.sources.{name}.{kind}.{i}"
                    if band.lo < 0 and not complex_signal:
                        raise RecipeError(
                            recipe.source, f"{key}.lo", f"{band.lo:g} Hz: negative frequencies need complex (I/Q) input"
                        )
                    if complex_signal and band.hi <= -nyquist:
                        raise RecipeError(
                            recipe.source,
                            f"{key}.hi",
                            f"{band.hi:g} Hz is at or below -Nyquist ({-nyquist:g} Hz at {sample_rate:g} Hz)",
                        )
                    if band.lo >= nyquist:
                        raise RecipeError(
                            recipe.source,
                            f"{key}.lo",
                            f"{band.lo:g} Hz is at or above Nyquist ({nyquist:g} Hz at {sample_rate:g} Hz)",
                        )


def to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (for ``demux.json`` and ``recipes show``)."""
    data = dataclasses.asdict(recipe)
    data["stages"] = {stage.pop("name"): stage for stage in data["stages"]}
    for stage in data["stages"].values():  # the YAML form: transform parameters beside its type
        transform = stage["transform"]
        stage["transform"] = {"type": transform["type"], "mel_bands": transform["mel_bands"], **transform["params"]}
    return data


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}" if isinstance(value, int | float | str | bool) else type(value).__name__
