"""Before/after figures of the shipped recipes, for README.md's "Recipes" section.

Run from the repository root (``make figures`` does):

    .venv/bin/python docs/make_figures.py [RECIPE ...] [--keep WORKDIR]

For each recipe: ``demux synth`` one item of its scenario (seed 0 and the scenario's default
length unless :data:`CASES` says otherwise), ``demux separate`` its mixture, ``demux evaluate
--plot --report`` the stems against the references (the scores land in ``WORKDIR/<recipe>/report.md``),
and copy ``<track>.before_after.png`` to ``docs/figures/before-after/<recipe>.png``
(re-encoded with a 64-colour palette, :func:`palette`, to keep the file small). ``audio-stft`` uses the shipped
demo, ``data/demo_mix.wav`` with its references in ``data/demo/``. Everything goes through the
command line, so the figures are what a user gets.

A recipe whose YAML is not in ``recipes/`` yet is skipped with a note. Scenarios built from
real recordings need ``../shared/data`` (or ``$DEMUX_DATA``). Deterministic: same code,
same figures. Exit code 1 if any recipe failed (the others still run).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from demux.errors import DemuxError

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures" / "before-after"
DEMUX = [sys.executable, "-c", "from demux.cli import app; app()"]
PALETTE = (48, 16)  # colour-map steps and greys of the committed PNGs: noisy spectrograms stay under ~200 KB


@dataclass(frozen=True)
class Case:
    """How one recipe's figure is made.

    Attributes:
        scenario: ``demux synth`` scenario; ``None``: the shipped demo.
        overrides: ``--set`` overrides for ``demux separate``.
        groups: reference name -> scenario sources summed into it (the recipe's stems are
            coarser than the scenario's sources).
        real: keep the real part of every signal (a real capture of an I/Q scenario).
        seed: ``demux synth --seed``.
        seconds: ``demux synth --seconds`` (``None``: the scenario's default).
        rename: the track's params -> {scenario source: the recipe's stem name}, where the
            recipe names its stems otherwise.
    """

    scenario: str | None
    overrides: tuple[str, ...] = ()
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    real: bool = False
    seed: int = 0
    seconds: float | None = None
    rename: Callable[[dict], dict[str, str]] | None = None


SECONDARY = {"secondary": ("qpsk", "ofdm")}

# radio's primary user sits at -125 kHz (1 MHz I/Q), 168.75 kHz wide, so its real part fills
# 40.6-209.4 kHz. Seed 5 puts both secondary users at +-375 kHz: the real part folds -f onto +f,
# and with a user at +125 kHz (seeds 0-3) it would land on the primary.
PRIMARY_REAL = tuple(f"split.sources.primary.{key}.{end}={value}" for key in ("bands.0", "lock")
                     for end, value in (("lo", 40625), ("hi", 209375)))


def by_direction(params: dict) -> dict[str, str]:
    """``array`` sources -> ``doa1, doa2, ...`` in ascending direction of arrival, as array-beamform names its stems."""
    order = sorted(params["directions_deg"], key=params["directions_deg"].get)
    return {name: f"doa{i}" for i, name in enumerate(order, start=1)}


CASES: dict[str, Case] = {
    "tones-fft": Case("multitone"),
    "tones-dct": Case("am"),
    "radio-fft": Case("radio", overrides=PRIMARY_REAL, groups=SECONDARY, real=True, seed=5, seconds=0.02),
    "radio-iq": Case("radio", groups=SECONDARY, seconds=0.02),
    "radar-doppler": Case("radar-mti"),
    "radar-range-doppler": Case("radar-range"),
    "ecg-wavelet": Case("ecg-emg"),
    "audio-stft": Case(None),
    "speech-enhance": Case("speech-noise"),
    "eeg-ica": Case("eeg"),
    "array-beamform": Case("array", rename=by_direction),
}


class StepFailed(RuntimeError):
    """A demux command exited non-zero."""


def demux(*args: str | Path) -> None:
    """Run the demux command line; raise :class:`StepFailed` with its stderr if it fails."""
    done = subprocess.run([*DEMUX, *map(str, args)], check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise StepFailed(f"demux {' '.join(map(str, args))} exited {done.returncode}: {done.stderr.strip()}")


def references(case: Case, synth: Path, out: Path) -> tuple[Path, float]:
    """The synthesised track as ``out/<track>/{mixture,<reference>}.<ext>`` after ``case.groups``
    and ``case.real``; returns the track folder and its sample rate."""
    from demux.io import read, write

    (track, params), = json.loads((synth / "scenario.json").read_text())["tracks"].items()
    ext, rate = "." + params["format"], float(params["sample_rate"])
    signals = {p.stem: read(p, rate=rate).data for p in sorted((synth / track).glob(f"*{ext}"))}
    for name, parts in case.groups.items():
        signals[name] = sum(signals.pop(part) for part in parts)
    if case.rename is not None:
        names = case.rename(params)
        signals = {names.get(name, name): data for name, data in signals.items()}
    if case.real:
        signals, ext = {name: data.real.copy() for name, data in signals.items()}, ".wav"
    for name, data in signals.items():
        write(out / track / f"{name}{ext}", data, rate, subtype="FLOAT" if ext == ".wav" else None)
    return out / track, rate


def figure(recipe: str, case: Case, work: Path) -> Path:
    """Make ``docs/figures/before-after/<recipe>.png`` in ``work``; returns its path."""
    work.mkdir(parents=True)
    if case.scenario is None:  # the shipped demo: speech + kitchen noise, 6 s at 16 kHz
        mixture, refs, rate = ROOT / "data" / "demo_mix.wav", ROOT / "data" / "demo" / "demo_mix", None
        extra = ["--mixture", mixture, "--combine", "speech=pitched+tonal+percussive"]
    else:
        length = ["--seconds", f"{case.seconds:g}"] if case.seconds else []
        demux("synth", case.scenario, "-o", work / "synth", "--seed", str(case.seed), *length)
        refs, rate = references(case, work / "synth", work / "refs")
        mixture = next(refs.glob("mixture.*"))
        extra = []
    rate_args = ["--rate", f"{rate:g}"] if mixture.suffix == ".npy" else []
    demux("separate", mixture, "--recipe", recipe, "-o", work / "sep", "--seed", "0", "--quiet", *rate_args,
          *(arg for o in case.overrides for arg in ("--set", o)))
    demux("evaluate", "--reference", refs, "--estimate", work / "sep" / mixture.stem, "--plot", work / "plots",
          "--report", work / "report.md", *rate_args, *extra)
    (made,) = (work / "plots").glob("*.before_after.png")
    return save_small(made, FIGURES / f"{recipe}.png")


def palette():
    """A PIL palette image: ``PALETTE[0]`` even steps of the figures' colour map (1.7 dB apart over
    80 dB) and ``PALETTE[1]`` greys for text and lines. A fixed palette keeps every level of the
    colour scale, where an adaptive one merges the rare bright colours into a few bands."""
    from matplotlib import colormaps
    from PIL import Image

    from demux.report import COLORMAP

    steps, greys = PALETTE
    colours = colormaps[COLORMAP](np.linspace(0.0, 1.0, steps))[:, :3]
    table = np.vstack([colours, np.repeat(np.linspace(0.0, 1.0, greys)[:, None], 3, axis=1)])
    image = Image.new("P", (1, 1))
    image.putpalette((table * 255).round().astype(np.uint8).ravel().tolist())
    return image


def save_small(source: Path, target: Path) -> Path:
    """Copy a PNG re-encoded with :func:`palette` (about a quarter of the size)."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    small = Image.open(source).convert("RGB").quantize(palette=palette(), dither=Image.Dither.NONE)
    small.save(buffer, format="png", optimize=True)
    target.write_bytes(buffer.getvalue())
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help=f"recipes to draw (default: all of {', '.join(CASES)})")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it, instead of a temporary one")
    args = parser.parse_args()
    unknown = sorted(set(args.recipes) - set(CASES))
    if unknown:
        parser.error(f"no figure case for {', '.join(unknown)} (known: {', '.join(CASES)})")
    failed = 0
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        for recipe in args.recipes or CASES:
            if not (ROOT / "recipes" / f"{recipe}.yaml").is_file():
                print(f"skip {recipe}: recipes/{recipe}.yaml does not exist yet")
                continue
            try:
                path = figure(recipe, CASES[recipe], work / recipe)
            except (StepFailed, DemuxError, OSError) as error:  # one recipe's failure must not stop the others
                failed += 1
                print(f"FAILED {recipe}: {error}", file=sys.stderr)
                continue
            print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
