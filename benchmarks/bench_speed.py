"""Speed: real-time factor of every shipped recipe on its own scenario, against its transform alone.

For each built-in recipe, on ``THREADS`` torch threads (the target machine has 2 cores):

- the signal is 10 s of the recipe's synthetic scenario (:func:`demux.synth.make`, item 0
  of seed 0; :data:`SCENARIO_FOR` where a recipe has several, the first scenario naming
  the recipe otherwise), or 10 s of noise plus tones at the recipe's rate
  (:func:`benchmarks.bench_scale.noise_and_tones`) when no scenario names it or its
  recordings are absent (radio-iq too: 10 s of 1 MHz I/Q).
  audio-stft runs twice more: 10 s of 44.1 kHz stereo (the ``music`` scenario, which it
  serves without resampling) and that with ``demux bench --quick``'s iteration counts;
- **RTF** is the median over ``repeats`` runs (3, 1 with ``quick``) of the wall seconds of
  :func:`demux.separate` (whole file) per second of signal; **x real time** its inverse;
- **x transform** is the recipe's time over the round trip (forward + inverse) of its
  first stage's transform on the same signal in the same run: how many transforms' worth
  of work the fit costs, a ratio that moves less with the machine than seconds do;
- **meets 100x** (audio-stft only) says whether it runs at least 100 times faster than
  real time, the goal of issue 6.

    .venv/bin/python -m benchmarks.bench_speed [--quick] [--threads N]   # ~10 min on 2 idle cores (--quick: 4)

``python -m benchmarks`` runs it last (``--no-speed`` skips it) and writes
``benchmarks/results/<date>-speed.md`` (``-speed-quick.md`` with ``--quick``).
"""

from __future__ import annotations

import datetime
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_scale import RESULTS, THREADS, natural_rate, noise_and_tones

SECONDS = 10.0
#: The scenario timed for recipes that several scenarios use.
SCENARIO_FOR = {"audio-stft": "speech-noise"}
GOAL_RECIPE, GOAL_X = "audio-stft", 100.0


def _signal(recipe: str, seconds: float) -> tuple[np.ndarray, float, str]:
    """``(channel, time)`` signal, its rate and what it is."""
    from demux.errors import DemuxError
    from demux.recipe import load_recipe
    from demux.synth import SCENARIOS, make

    name = SCENARIO_FOR.get(recipe) or next((n for n, f in SCENARIOS.items() if _recipe_of(n) == recipe), None)
    if name is not None:
        try:
            scenario = make(name, np.random.default_rng(0), seconds=seconds)
            return scenario.mixture, scenario.sample_rate, name
        except DemuxError as error:  # recordings absent: fall back to the synthetic signal
            print(f"{recipe}: scenario {name} not available ({error}); noise and tones instead")
    rate = natural_rate(load_recipe(recipe))
    return noise_and_tones(seconds, rate), rate, "noise + tones"


def _recipe_of(scenario: str) -> str:
    from demux.synth import make

    return make(scenario, np.random.default_rng(0)).recipe


def _median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _round_trip(recipe, signal: np.ndarray, rate: float) -> float:
    """Seconds of the first stage's transform forward and inverse on ``signal``."""
    from demux.pipeline import build_stage_transform, served_rate

    fit_rate = served_rate(recipe, rate)
    x = torch.from_numpy(np.ascontiguousarray(signal))[None]
    if fit_rate != rate:
        from demux.pipeline import _resample

        x = _resample(x, rate, fit_rate)
    transform = build_stage_transform(recipe.stages[0], fit_rate, recipe.source)
    return transform.inverse(transform(x), x.shape[-1])


def measure(name: str, *, signal: np.ndarray, rate: float, what: str, overrides: tuple[str, ...],
            repeats: int) -> dict:
    """One row: the recipe's and its transform's median seconds on ``signal``."""
    from demux.errors import DemuxError
    from demux.pipeline import separate
    from demux.recipe import load_recipe

    recipe = load_recipe(name, list(overrides))
    seconds = signal.shape[-1] / rate
    row = {"recipe": name, "signal": what, "rate_hz": rate, "channels": signal.shape[0], "signal_s": seconds,
           "repeats": repeats, "overrides": list(overrides), "rtf": math.nan, "x_real_time": math.nan,
           "x_transform": math.nan, "note": ""}
    try:
        demux_s = _median_seconds(lambda: separate(signal, rate, recipe, segment=None), repeats)
        transform_s = _median_seconds(lambda: _round_trip(recipe, signal, rate), max(repeats, 3))
    except DemuxError as error:
        row["note"] = f"not run: {error}"
        return row
    row.update(rtf=demux_s / seconds, x_real_time=seconds / demux_s, x_transform=demux_s / transform_s)
    print(f"{name} on {what} ({seconds:g} s): {demux_s:.2f} s per run", flush=True)
    return row


def run(quick: bool, threads: int = THREADS) -> list[dict]:
    """Every built-in recipe (audio-stft three times), on ``threads`` torch threads."""
    from demux.bench import QUICK_OVERRIDES
    from demux.recipe import builtin_names
    from demux.synth import make

    repeats = 1 if quick else 3
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = []
        for name in builtin_names():
            signal, rate, what = _signal(name, SECONDS)
            rows.append(measure(name, signal=signal, rate=rate, what=what, overrides=(), repeats=repeats))
            if name == GOAL_RECIPE:
                music = make("music", np.random.default_rng(0), seconds=SECONDS)
                for overrides in ((), QUICK_OVERRIDES.get(name, ())):
                    rows.append(measure(name, signal=music.mixture, rate=music.sample_rate, what="music",
                                        overrides=overrides, repeats=repeats))
        return rows
    finally:
        torch.set_num_threads(previous)


HEADER = ["recipe", "signal", "rate Hz x ch", "s", "runs", "RTF (s/s)", "x real time", "x transform",
          f"meets {GOAL_X:g}x", "overrides / note"]


def table(rows: list[dict]) -> list[list[str]]:
    def meets(r: dict) -> str:
        if r["recipe"] != GOAL_RECIPE or math.isnan(r["x_real_time"]):
            return "-"
        return "yes" if r["x_real_time"] >= GOAL_X else "no"

    return [[r["recipe"], r["signal"], f"{r['rate_hz']:g} x {r['channels']}", f"{r['signal_s']:g}", str(r["repeats"]),
             f"{r['rtf']:.3g}", f"{r['x_real_time']:.3g}", f"{r['x_transform']:.3g}", meets(r),
             " ".join([*r["overrides"], r["note"]]).strip() or "-"] for r in rows]


def markdown(rows: list[dict], *, quick: bool, threads: int = THREADS) -> str:
    from demux.bench import machine

    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"

    date = datetime.date.today().isoformat()
    return "\n".join([
        f"# demux speed benchmark, {date}{' (quick)' if quick else ''}", "",
        (f"Command: `python -m benchmarks.bench_speed{' --quick' if quick else ''}"
         f"{f' --threads {threads}' if threads != THREADS else ''}`"), "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in {**machine(), "threads during the runs": threads}.items()), "",
        ("How each number is measured: `benchmarks/bench_speed.py` (module docstring). RTF: wall seconds per second "
         "of signal (median of the runs); x transform: the recipe's time over its first transform's round trip."), "",
        line(HEADER), "|" + "|".join("---" for _ in HEADER) + "|", *map(line, table(rows)),
    ]) + "\n"


def write(rows: list[dict], *, quick: bool, threads: int = THREADS, out_dir: Path = RESULTS) -> Path:
    """Replace today's ``<date>-speed[-quick].md`` (regenerated under version control)."""
    from demux.io import write_text_atomic

    name = f"{datetime.date.today().isoformat()}-speed{'-quick' if quick else ''}.md"
    return write_text_atomic(out_dir / name, markdown(rows, quick=quick, threads=threads), overwrite=True)


def main(argv: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    quick = "--quick" in argv
    # --threads N: a shared machine's other processes make two spinning threads up to five times slower
    threads = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else THREADS
    rows = run(quick, threads)
    console = Console(width=max(Console().width, 140))
    out = Table(title=f"Real-time factor ({threads} threads)")
    for column in HEADER:
        out.add_column(column, justify="left" if column in ("recipe", "signal", "overrides / note") else "right")
    for cells in table(rows):
        out.add_row(*cells)
    console.print(out)
    print(f"wrote {write(rows, quick=quick, threads=threads)}")


if __name__ == "__main__":
    main(sys.argv[1:])
