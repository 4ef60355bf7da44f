"""Scale: real-time factor per recipe, peak memory against signal length, chunked against whole-file SDR.

Three measurements, on ``THREADS`` torch threads (the target machine has 2 cores):

- **Real-time factor** of every built-in recipe on 10 s of noise plus three tones (at
  3 %, 30 % and 70 % of Nyquist) at the recipe's own rate (``resample_to``, else its
  first served rate, else 8 kHz): wall seconds per second of signal, median of 3 runs
  (1 with ``quick``, where audio-stft also takes ``demux bench``'s quick overrides), and
  its inverse, the speed relative to real time.
- **Peak memory** of :func:`demux.separate` on N minutes of 44.1 kHz stereo noise plus
  tones with ``tones-fft``, chunked at ``demux separate``'s defaults (30 s segments,
  overlap 0.1, one chunk a batch: the CLI defaults), for 1 and 5 minutes (0.5 and 2 with ``quick``). Each
  length runs in a fresh subprocess; its peak resident set is the ``ru_maxrss`` of that
  child as ``os.wait4`` reports it (``getrusage(RUSAGE_CHILDREN)`` for one child alone),
  beside what the child held before separating (interpreter, torch, the signal) and the
  size of the input and its stems, which are held in full.
- **Chunked vs whole-file SDR** on the ``multitone`` scenario (stationary tones, 60 s,
  120 s without ``quick``): median BSS-Eval SDR over its sources, whole file against the
  default chunking.

``make bench`` runs it after ``demux bench`` (``python -m benchmarks``); the table is
written to ``benchmarks/results/<date>-scale.md`` (``<date>-scale-quick.md`` for ``quick``).

    .venv/bin/python -m benchmarks.bench_scale [--quick]
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

THREADS = 2
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RTF_SECONDS = 10.0
MEMORY_RATE, MEMORY_CHANNELS, MEMORY_RECIPE = 44_100, 2, "tones-fft"
#: ``demux separate``'s defaults (``demux.batch.Options``).
SEGMENT, OVERLAP, BATCH_SIZE = 30.0, 0.1, 1  # the CLI defaults


def noise_and_tones(seconds: float, rate: float, *, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``(channels, time)`` float32: white noise (std 0.05) plus tones at 3, 30 and 70 % of Nyquist."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    tones = sum(a * np.sin(np.pi * rate * f * t + f) for f, a in ((0.03, 0.3), (0.3, 0.2), (0.7, 0.1)))
    return np.stack([tones + 0.05 * rng.standard_normal(t.size) for _ in range(channels)]).astype(np.float32)


def natural_rate(recipe) -> float:
    """The rate a recipe fits at without resampling."""
    return float(recipe.resample_to or (recipe.sample_rates[0] if recipe.sample_rates else 8000.0))


# --------------------------------------------------------------------------- real-time factor


def real_time_factors(quick: bool) -> list[dict]:
    """One row per built-in recipe: median seconds of compute per second of signal.

    A recipe that cannot take this real signal (one for complex I/Q) gets a row with
    the reason instead of numbers.
    """
    from demux.bench import QUICK_OVERRIDES
    from demux.errors import DemuxError
    from demux.pipeline import separate
    from demux.recipe import builtin_names, load_recipe

    repeats = 1 if quick else 3
    rows = []
    for name in builtin_names():
        overrides = QUICK_OVERRIDES.get(name, ()) if quick else ()
        recipe = load_recipe(name, list(overrides))
        rate = natural_rate(recipe)
        signal = noise_and_tones(RTF_SECONDS, rate)
        row = {"bench": "scale", "part": "rtf", "recipe": name, "rate_hz": rate, "signal_s": RTF_SECONDS,
               "repeats": repeats, "overrides": list(overrides), "rtf": math.nan, "x_real_time": math.nan, "note": ""}
        times = []
        try:
            for _ in range(repeats):
                start = time.perf_counter()
                separate(signal, rate, recipe, segment=None)
                times.append(time.perf_counter() - start)
        except DemuxError as error:
            row["note"] = f"not run: {error}"
        else:
            row["rtf"] = statistics.median(times) / RTF_SECONDS
            row["x_real_time"] = 1 / row["rtf"]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- peak memory


def _memory_child(minutes: float) -> None:
    """In the measured subprocess: separate ``minutes`` of signal; print what it held beforehand, as JSON."""
    import resource

    from demux.chunks import plan_chunks
    from demux.pipeline import separate

    torch.set_num_threads(THREADS)
    signal = noise_and_tones(60 * minutes, MEMORY_RATE, channels=MEMORY_CHANNELS)
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    start = time.perf_counter()
    separation = separate(signal, MEMORY_RATE, MEMORY_RECIPE, segment=SEGMENT, overlap=OVERLAP, batch_size=BATCH_SIZE)
    size = round(SEGMENT * MEMORY_RATE)
    plan = plan_chunks(signal.shape[-1], size=size, overlap=round(OVERLAP * size))
    held = signal.nbytes + sum(s.numel() * s.element_size() for s in separation.stems.values())
    print(json.dumps({"before_mb": before_mb, "held_mb": held / 2**20, "chunks": plan.count,
                      "seconds": time.perf_counter() - start}))


def _peak_rss_mb(minutes: float) -> dict:
    """Run :func:`_memory_child` in a fresh interpreter; its report plus its own peak RSS (MiB)."""
    command = [sys.executable, "-m", "benchmarks.bench_scale", "--memory-child", str(minutes)]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's rusage alone, whatever ran before it
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {child.returncode}")
    return {**json.loads(output), "peak_mb": usage.ru_maxrss / 1024}


def peak_memory(quick: bool) -> list[dict]:
    """One row per length (short first); ``ratio`` is each peak over the shortest's."""
    rows = [
        {"bench": "scale", "part": "memory", "recipe": MEMORY_RECIPE, "minutes": minutes, "rate_hz": MEMORY_RATE,
         "channels": MEMORY_CHANNELS, "segment_s": SEGMENT, "batch_size": BATCH_SIZE, **_peak_rss_mb(minutes)}
        for minutes in ((0.5, 2.0) if quick else (1.0, 5.0))
    ]
    for row in rows:
        row["ratio"] = row["peak_mb"] / rows[0]["peak_mb"]
    return rows


# --------------------------------------------------------------------------- chunked vs whole file


def chunking_sdr(quick: bool) -> list[dict]:
    """Median SDR over the sources of one ``multitone`` item, whole file and chunked at the defaults.

    The item's sources are named like the recipe's stems (``low``, ``mid``, ``high``); a
    stem whose band holds no source is left out. BSS-Eval v3, fast engine, labelled.
    """
    from demux.metrics import bss_eval
    from demux.pipeline import separate
    from demux.synth import make

    seconds = 60.0 if quick else 120.0
    scenario = make("multitone", np.random.default_rng(0), seconds=seconds)
    names = list(scenario.sources)
    reference = torch.from_numpy(np.stack([scenario.sources[k] for k in names])).double().movedim(1, 0)  # (C, S, T)
    rows = []
    for label, segment in (("whole file", None), (f"{SEGMENT:g} s segments", SEGMENT)):
        start = time.perf_counter()
        separation = separate(scenario.mixture, scenario.sample_rate, scenario.recipe, segment=segment, overlap=OVERLAP,
                              batch_size=BATCH_SIZE)
        elapsed = time.perf_counter() - start
        estimate = torch.stack([separation.stems[k] for k in names]).double().movedim(1, 0)
        sdr = float(bss_eval(reference, estimate, engine="fast", permutation=False).sdr.mean(0).median())
        rows.append({"bench": "scale", "part": "chunking", "scenario": "multitone", "recipe": scenario.recipe,
                     "signal_s": seconds, "rate_hz": scenario.sample_rate, "mode": label, "sdr_db": sdr,
                     "seconds": elapsed})
    for row in rows:
        row["diff_db"] = row["sdr_db"] - rows[0]["sdr_db"]
    return rows


# --------------------------------------------------------------------------- tables


def run(quick: bool) -> list[dict]:
    """Every measurement with :data:`THREADS` torch threads; rows tagged by ``part``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return real_time_factors(quick) + peak_memory(quick) + chunking_sdr(quick)
    finally:
        torch.set_num_threads(threads)


def tables(rows: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` of each part, as printed and written."""
    rtf = [r for r in rows if r["part"] == "rtf"]
    memory = [r for r in rows if r["part"] == "memory"]
    chunking = [r for r in rows if r["part"] == "chunking"]
    return [
        (f"Real-time factor ({THREADS} threads, {RTF_SECONDS:g} s of signal)",
         ["recipe", "rate Hz", "runs", "RTF (s/s, median)", "x real time", "overrides / note"],
         [[r["recipe"], f"{r['rate_hz']:g}", str(r["repeats"]), f"{r['rtf']:.3g}", f"{r['x_real_time']:.3g}",
           " ".join([*r["overrides"], r["note"]]).strip() or "-"] for r in rtf]),
        (f"Peak memory, {MEMORY_RECIPE} on {MEMORY_RATE} Hz stereo, {SEGMENT:g} s segments, {BATCH_SIZE} a batch",
         ["minutes", "chunks", "peak RSS MiB", "before separating MiB", "input + stems MiB", "ratio to shortest",
          "seconds"],
         [[f"{r['minutes']:g}", str(r["chunks"]), f"{r['peak_mb']:.0f}", f"{r['before_mb']:.0f}", f"{r['held_mb']:.0f}",
           f"{r['ratio']:.2f}", f"{r['seconds']:.1f}"] for r in memory]),
        ("Chunked vs whole-file SDR (multitone, median over sources)",
         ["mode", "signal s", "SDR dB", "difference dB", "seconds"],
         [[r["mode"], f"{r['signal_s']:g}", f"{r['sdr_db']:.2f}", f"{r['diff_db']:+.2f}", f"{r['seconds']:.1f}"]
          for r in chunking]),
    ]


def markdown(rows: list[dict], *, quick: bool) -> str:
    from demux.bench import machine

    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"

    date = datetime.date.today().isoformat()
    parts = [f"# demux scale benchmark, {date}{' (quick)' if quick else ''}", "",
             f"Command: `python -m benchmarks.bench_scale{' --quick' if quick else ''}`", "",
             "Machine: " + "; ".join(f"{k}: {v}" for k, v in machine().items()), "",
             "How each number is measured: `benchmarks/bench_scale.py` (module docstring). Goals: peak memory "
             "long/short <= 1.5; chunked - whole-file SDR within 0.1 dB."]
    for title, header, body in tables(rows):
        parts += ["", f"## {title}", "", line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, body)]
    return "\n".join(parts) + "\n"


def write(rows: list[dict], *, quick: bool, out_dir: Path = RESULTS) -> Path:
    """Replace today's ``<date>-scale[-quick].md`` (regenerated under version control, like ``make bench``'s)."""
    from demux.io import write_text_atomic

    name = f"{datetime.date.today().isoformat()}-scale{'-quick' if quick else ''}.md"
    return write_text_atomic(out_dir / name, markdown(rows, quick=quick), overwrite=True)


def print_tables(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    for title, header, body in tables(rows):
        table = Table(title=title)
        for column in header:
            table.add_column(column, justify="left" if column in ("recipe", "mode", "overrides / note") else "right")
        for row in body:
            table.add_row(*row)
        console.print(table)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--memory-child"]:
        _memory_child(float(argv[1]))
        return
    quick = "--quick" in argv
    rows = run(quick)
    print_tables(rows)
    print(f"wrote {write(rows, quick=quick)}")


if __name__ == "__main__":
    main(sys.argv[1:])
