"""Scale: peak memory against signal length, chunked against whole-file SDR.

Two measurements, on ``THREADS`` torch threads (the target machine has 2 cores; memory: one).
The real-time factor per recipe is ``bench_speed.py``'s.

- **Peak memory** of ``demux separate``'s item path (:func:`demux.batch.separate_item`: the
  file read, separated and its stems written chunk by chunk) on N minutes of 44.1 kHz
  stereo noise plus tones (a 16-bit WAV written beforehand, a minute at a time) with
  ``tones-fft`` at one trust-region step per chunk (:data:`MEMORY_OVERRIDES`: a fit's memory
  does not grow with its steps; at 15 an hour of signal takes most of an hour), chunked at
  ``demux separate``'s defaults (30 s segments, overlap 0.1, one chunk a batch), for 1 and 60
  minutes (0.5 and 2 with ``quick``), on one torch thread (on this 2-core machine two threads
  run these 1.3 M-sample chunks about 6 times slower). Each length runs in a fresh
  subprocess; its peak resident set is the child's own ``VmHWM`` (``/proc/self/status``,
  the peak of its address space since ``exec``), beside what the child held before separating (interpreter, torch) and the
  size of the whole signal as float32, which is never held.
- **Chunked vs whole-file SDR** on the ``multitone`` scenario (stationary tones, 60 s, 30 s
  with ``quick``) for each of :data:`CHUNKING_RECIPES`: BSS-Eval SDR over its sources (median,
  and the largest change of one source), whole file against the default chunking.
- **Files per second** of a folder batch (:func:`demux.batch.run`, ``jobs=1``, the CLI's
  defaults otherwise) on :data:`BATCH_FILES` files of :data:`BATCH_SECONDS` s of noise plus
  tones at 8 kHz (``tones-fft``, one chunk each), ``--batch-size`` 1 against
  :data:`BATCH_SIZE_ACROSS` (the files' chunks fitted together, :func:`demux.batch._groups`),
  on :data:`BATCH_THREADS` torch thread: the median over ``repeats`` runs (5, 3 with
  ``quick``) into fresh output folders; ``x batch 1`` is the ratio of files per second;
  ``repeats bit-identical`` whether every repeat gave the first one's stems.
  ``closest to batch 1 dB`` is how far the batched stems are from batch size 1's: the smallest
  ``10 log10(|s1|^2 / |sN - s1|^2)`` over files and stems (dropout draws depend on a
  file's place in its batch). With ``torch.cuda.is_available()`` the same runs on
  ``--device cuda``; otherwise the table says the GPU was not measured.

``make bench`` runs it after ``demux bench`` (``python -m benchmarks``); the table is
written to ``benchmarks/results/<date>-scale.md`` (``<date>-scale-quick.md`` for ``quick``).

    .venv/bin/python -m benchmarks.bench_scale [--quick] [--part memory|chunking|batching ...]
"""

from __future__ import annotations

import datetime
import json
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
MEMORY_RATE, MEMORY_CHANNELS, MEMORY_RECIPE = 44_100, 2, "tones-fft"
#: One trust-region step per chunk: the memory of a fit does not grow with its steps, and an
#: hour of signal at the recipe's 15 steps would take the benchmark most of an hour.
MEMORY_OVERRIDES = ("split.fit.max_iter=1",)
MEMORY_MINUTES = {False: (1.0, 60.0), True: (0.5, 2.0)}  # by ``quick``
MEMORY_THREADS = 1
#: ``demux separate``'s defaults (``demux.batch.Options``).
SEGMENT, OVERLAP, BATCH_SIZE = 30.0, 0.1, 1  # the CLI defaults


def noise_and_tones(seconds: float, rate: float, *, channels: int = 1, seed: int = 0, offset: int = 0) -> np.ndarray:
    """``(channels, time)`` float32: white noise (std 0.05) plus tones at 3, 30 and 70 % of Nyquist.

    ``offset``: the first sample's index, so that consecutive blocks continue the tones.
    """
    rng = np.random.default_rng(seed)
    t = (offset + np.arange(round(seconds * rate))) / rate
    tones = sum(a * np.sin(np.pi * rate * f * t + f) for f, a in ((0.03, 0.3), (0.3, 0.2), (0.7, 0.1)))
    return np.stack([tones + 0.05 * rng.standard_normal(t.size) for _ in range(channels)]).astype(np.float32)


def natural_rate(recipe) -> float:
    """The rate a recipe fits at without resampling."""
    return float(recipe.resample_to or (recipe.sample_rates[0] if recipe.sample_rates else 8000.0))


# --------------------------------------------------------------------------- peak memory


def write_long_input(path: Path, minutes: float) -> Path:
    """``minutes`` of :func:`noise_and_tones` at 44.1 kHz stereo as a 16-bit WAV, written a minute at a time."""
    import soundfile as sf

    with sf.SoundFile(path, "w", MEMORY_RATE, MEMORY_CHANNELS, "PCM_16") as f:
        total = round(60 * minutes * MEMORY_RATE)
        for block, start in enumerate(range(0, total, 60 * MEMORY_RATE)):
            seconds = (min(start + 60 * MEMORY_RATE, total) - start) / MEMORY_RATE
            f.write(noise_and_tones(seconds, MEMORY_RATE, channels=MEMORY_CHANNELS, seed=block, offset=start).T)
    return path


def _memory_child(path: str, out: str) -> None:
    """In the measured subprocess: ``demux separate``'s item path on ``path``; what it held before, as JSON."""
    from demux.batch import Item, Options, separate_item
    from demux.io import open_signal
    from demux.recipe import load_recipe

    torch.set_num_threads(MEMORY_THREADS)
    recipe = load_recipe(MEMORY_RECIPE, list(MEMORY_OVERRIDES))
    options = Options(out=Path(out), segment=SEGMENT, overlap=OVERLAP, batch_size=BATCH_SIZE)
    before_mb = _own_peak_rss_mb()
    start = time.perf_counter()
    separate_item(Item(Path(path), "long", Path(out) / "long"), recipe, options, resume=False)
    source = open_signal(path)
    record = json.loads((Path(out) / "long" / "demux.json").read_text())
    print(json.dumps({"before_mb": before_mb, "peak_mb": _own_peak_rss_mb(), "file_mb": Path(path).stat().st_size / 2**20,
                      "chunks": sum(len(stage["chunks"]) for stage in record["stages"]),
                      "signal_mb": source.length * source.channels * 4 / 2**20, "seconds": time.perf_counter() - start}))


def _own_peak_rss_mb() -> float:
    """This process's peak resident set (MiB) since its last ``exec``.

    ``VmHWM`` belongs to the address space, which ``exec`` replaces; ``ru_maxrss`` does not:
    Linux carries it over from the forked parent, so under ``python -m benchmarks`` (a parent
    that already ran ``demux bench``) every child reported the parent's 2.5 GiB.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory is measured on Linux only")


def _peak_rss_mb(minutes: float) -> dict:
    """Write the input, run :func:`_memory_child` on it in a fresh interpreter; its report plus its peak RSS (MiB)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="demux-scale-") as folder:
        path = write_long_input(Path(folder) / "long.wav", minutes)
        command = [sys.executable, "-m", "benchmarks.bench_scale", "--memory-child", str(path), str(Path(folder) / "out")]
        child = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {child.returncode}")
    return json.loads(child.stdout)


def peak_memory(quick: bool) -> list[dict]:
    """One row per length (short first); ``ratio`` is each peak over the shortest's."""
    rows = [
        {"bench": "scale", "part": "memory", "recipe": MEMORY_RECIPE, "overrides": list(MEMORY_OVERRIDES),
         "minutes": minutes, "rate_hz": MEMORY_RATE, "channels": MEMORY_CHANNELS, "segment_s": SEGMENT,
         "batch_size": BATCH_SIZE, **_peak_rss_mb(minutes)}
        for minutes in MEMORY_MINUTES[quick]
    ]
    for row in rows:
        row["ratio"] = row["peak_mb"] / rows[0]["peak_mb"]
    return rows


# --------------------------------------------------------------------------- chunked vs whole file


#: The chunked-vs-whole comparisons: ``(label, overrides)`` of ``tones-fft``. Its own rFFT spans
#: the whole input, so a chunk has a coarser spectrum than the whole signal (a 30 s chunk resolves
#: 1/30 Hz, 60 s 1/60 Hz) and leaks more across band edges: a transform difference, not a seam.
#: The STFT variant is local (chunks change only the seams and the fits), and its fits run to the
#: same convergence (60 steps: at the recipe's 15 the whole-signal fit is further from its optimum
#: than a chunk's, which made chunking look better than it is).
CHUNKING_RECIPES = (
    ("tones-fft", ()),
    ("tones-fft, STFT 1024/256, 60 steps", ("split.transform.type=stft", "split.transform.n_fft=1024",
                                             "split.transform.hop=256", "split.fit.max_iter=60")),
)


def chunking_sdr(quick: bool) -> list[dict]:
    """BSS-Eval SDR of one ``multitone`` item, whole file and chunked at the defaults, per recipe variant.

    The item's sources are named like the recipe's stems (``low``, ``mid``, ``high``); a
    stem whose band holds no source is left out. BSS-Eval v3, fast engine, labelled;
    ``sdr_db`` is the median over sources, ``diff_db`` its change from the whole file and
    ``worst_db`` the largest change of one source's SDR.
    """
    from demux.metrics import bss_eval
    from demux.pipeline import separate
    from demux.recipe import load_recipe
    from demux.synth import make

    seconds = 30.0 if quick else 60.0
    scenario = make("multitone", np.random.default_rng(0), seconds=seconds)
    names = list(scenario.sources)
    reference = torch.from_numpy(np.stack([scenario.sources[k] for k in names])).double().movedim(1, 0)  # (C, S, T)
    rows = []
    for label, overrides in CHUNKING_RECIPES:
        recipe = load_recipe(scenario.recipe, list(overrides))
        pair = []
        for mode, segment in (("whole file", None), (f"{SEGMENT:g} s segments", SEGMENT)):
            start = time.perf_counter()
            separation = separate(scenario.mixture, scenario.sample_rate, recipe, segment=segment, overlap=OVERLAP,
                                  batch_size=BATCH_SIZE)
            elapsed = time.perf_counter() - start
            estimate = torch.stack([separation.stems[k] for k in names]).double().movedim(1, 0)
            sdr = bss_eval(reference, estimate, engine="fast", permutation=False).sdr.mean(0)  # (S,)
            pair.append(sdr)
            rows.append({"bench": "scale", "part": "chunking", "scenario": "multitone", "recipe": label,
                         "overrides": list(overrides), "signal_s": seconds, "rate_hz": scenario.sample_rate,
                         "mode": mode, "sdr_db": float(sdr.median()), "diff_db": float(sdr.median() - pair[0].median()),
                         "worst_db": float((sdr - pair[0]).abs().max()), "seconds": elapsed})
    return rows


# --------------------------------------------------------------------------- files per second


BATCH_FILES, BATCH_SECONDS, BATCH_RATE, BATCH_RECIPE = 8, 2.0, 8000, "tones-fft"
BATCH_SIZE_ACROSS = 8
BATCH_THREADS = 1


def _folder_run(inputs: Path, out: Path, *, batch_size: int, device: str) -> tuple[float, dict]:
    """Seconds of one :func:`demux.batch.run` over the folder ``inputs`` into ``out``, and the stems by track."""
    import soundfile as sf

    from demux.batch import Options, plan
    from demux.batch import run as run_batch
    from demux.recipe import load_recipe

    recipe = load_recipe(BATCH_RECIPE)
    items, batch = plan([inputs], recipe, out)
    start = time.perf_counter()
    results = run_batch(items, recipe, Options(out=out, batch_size=batch_size, device=device), batch=batch)
    seconds = time.perf_counter() - start
    failed = [r.message for r in results if r.status != "done"]
    if failed:
        raise RuntimeError(f"batch run failed: {failed}")
    stems = {item.track: {p.stem: sf.read(p, dtype="float32")[0] for p in item.out_dir.glob("*.wav")} for item in items}
    return seconds, stems


def _closest_db(reference: dict, other: dict) -> float:
    """The smallest ``10 log10(|ref|^2 / |other - ref|^2)`` over tracks and stems (inf: bit-identical)."""
    worst = float("inf")
    for track, stems in reference.items():
        for name, ref in stems.items():
            error = float(np.sum((other[track][name] - ref) ** 2))
            if error > 0:
                worst = min(worst, float(10 * np.log10(np.sum(ref**2) / error)))
    return worst


def files_per_second(quick: bool) -> list[dict]:
    """One row per device and batch size: files per second of a folder batch (median of the repeats)."""
    import tempfile

    import soundfile as sf

    repeats = 3 if quick else 5
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(BATCH_THREADS)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="demux-batching-") as folder:
            inputs = Path(folder) / "in"
            inputs.mkdir()
            for i in range(BATCH_FILES):
                sf.write(inputs / f"f{i}.wav", noise_and_tones(BATCH_SECONDS, BATCH_RATE, seed=i)[0], BATCH_RATE,
                         subtype="FLOAT")
            _folder_run(inputs, Path(folder) / "warm-up", batch_size=1, device="cpu")  # imports, first-call costs
            for device in devices:
                stems = {}
                for batch_size in (1, BATCH_SIZE_ACROSS):
                    times, runs = [], []
                    for k in range(repeats):
                        out = Path(folder) / f"{device}-{batch_size}-{k}"
                        seconds, run_stems = _folder_run(inputs, out, batch_size=batch_size, device=device)
                        times.append(seconds)
                        runs.append(run_stems)
                    stems[batch_size] = runs[0]
                    median = statistics.median(times)
                    rows.append({"bench": "scale", "part": "batching", "recipe": BATCH_RECIPE, "device": device,
                                 "files": BATCH_FILES, "file_s": BATCH_SECONDS, "rate_hz": BATCH_RATE,
                                 "batch_size": batch_size, "threads": BATCH_THREADS, "repeats": repeats,
                                 "seconds": median, "files_per_s": BATCH_FILES / median,
                                 "ratio": rows[-1]["seconds"] / median if batch_size != 1 else 1.0,
                                 "repeatable": all(_closest_db(runs[0], r) == float("inf") for r in runs[1:]),
                                 "closest_db": _closest_db(stems[1], stems[batch_size]) if batch_size != 1 else None})
    finally:
        torch.set_num_threads(threads)
    return rows


# --------------------------------------------------------------------------- tables


PARTS = ("memory", "chunking", "batching")


def run(quick: bool, parts: tuple[str, ...] = PARTS) -> list[dict]:
    """The measurements of ``parts`` (default all) with :data:`THREADS` torch threads; rows tagged by ``part``."""
    measure = {"memory": peak_memory, "chunking": chunking_sdr, "batching": files_per_second}
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return [row for part in parts for row in measure[part](quick)]
    finally:
        torch.set_num_threads(threads)


def tables(rows: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` of each part, as printed and written."""
    memory = [r for r in rows if r["part"] == "memory"]
    chunking = [r for r in rows if r["part"] == "chunking"]
    batching = [r for r in rows if r["part"] == "batching"]
    if batching and not any(r["device"] == "cuda" for r in batching):
        batching = [*batching, {"device": "cuda", "note": "GPU: not measured (no CUDA device here)"}]
    every = [
        ((f"Peak memory, {MEMORY_RECIPE} ({' '.join(MEMORY_OVERRIDES)}) on {MEMORY_RATE} Hz stereo files, "
          f"{SEGMENT:g} s segments, {BATCH_SIZE} a batch, {MEMORY_THREADS} thread (goal: ratio <= 1.5)"),
         ["minutes", "chunks", "peak RSS MiB", "before separating MiB", "signal as float32 MiB", "ratio to shortest",
          "seconds"],
         [[f"{r['minutes']:g}", str(r["chunks"]), f"{r['peak_mb']:.0f}", f"{r['before_mb']:.0f}",
           f"{r['signal_mb']:.0f}", f"{r['ratio']:.2f}", f"{r['seconds']:.1f}"] for r in memory]),
        (f"Chunked vs whole-file SDR (multitone, {SEGMENT:g} s segments, overlap {OVERLAP:g})",
         ["recipe", "mode", "signal s", "SDR dB (median over sources)", "difference dB", "largest source change dB",
          "seconds"],
         [[r["recipe"], r["mode"], f"{r['signal_s']:g}", f"{r['sdr_db']:.2f}", f"{r['diff_db']:+.2f}",
           f"{r['worst_db']:.2f}", f"{r['seconds']:.1f}"]
          for r in chunking]),
        ((f"Files per second, a folder of {BATCH_FILES} x {BATCH_SECONDS:g} s files at {BATCH_RATE} Hz, "
          f"{BATCH_RECIPE}, --jobs 1, {BATCH_THREADS} thread, median of the repeats"),
         ["device", "batch size", "seconds", "files/s", "x batch 1", "repeats bit-identical",
          "closest to batch 1 dB"],
         [[r["device"], "-", "-", "-", "-", "-", r["note"]] if "note" in r else
          [r["device"], str(r["batch_size"]), f"{r['seconds']:.2f}", f"{r['files_per_s']:.2f}", f"{r['ratio']:.2f}",
           "yes" if r["repeatable"] else "no",
           "-" if r["closest_db"] is None else "bit-identical" if r["closest_db"] == float("inf")
           else f"{r['closest_db']:.1f}"]
          for r in batching]),
    ]
    return [table for table in every if table[2]]  # parts not run are left out


def _part_options(rows: list[dict]) -> str:
    ran = [part for part in PARTS if any(r["part"] == part for r in rows)]
    return "" if ran == list(PARTS) else "".join(f" --part {part}" for part in ran)


def markdown(rows: list[dict], *, quick: bool) -> str:
    from demux.bench import machine

    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"

    date = datetime.date.today().isoformat()
    parts = [f"# demux scale benchmark, {date}{' (quick)' if quick else ''}", "",
             f"Command: `python -m benchmarks.bench_scale{' --quick' if quick else ''}{_part_options(rows)}`", "",
             "Machine: " + "; ".join(f"{k}: {v}" for k, v in machine().items()), "",
             "How each number is measured: `benchmarks/bench_scale.py` (module docstring). Goals: peak memory "
             "long/short <= 1.5; chunked - whole-file SDR within 0.1 dB; batched files per second above batch 1's."]
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
            table.add_column(column, justify="left" if column in ("recipe", "mode", "overrides / note", "recipe / overrides") else "right")
        for row in body:
            table.add_row(*row)
        console.print(table)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--memory-child"]:
        _memory_child(argv[1], argv[2])
        return
    quick = "--quick" in argv
    parts = tuple(argv[i + 1] for i, a in enumerate(argv) if a == "--part") or PARTS
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--part {', '.join(sorted(unknown))}: expected one of {', '.join(PARTS)}")
    rows = run(quick, parts)
    print_tables(rows)
    print(f"wrote {write(rows, quick=quick)}")


if __name__ == "__main__":
    main(sys.argv[1:])
