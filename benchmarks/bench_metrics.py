"""BSS-Eval v3 speed: the fast engine (fast_bss_eval, direct solver) against mir_eval.

4 sources x 30 s at 44.1 kHz (5 s with ``quick``): references are band-limited
noises with slow amplitude envelopes; each estimate is its reference plus a mix of
the other references (interference) and a little filtered noise (artifacts). Both
engines score the same signals with the permutation search, as reported numbers are.
Times are medians of 3 runs (mir_eval runs once at full length: about a minute).

    .venv/bin/python -m benchmarks.bench_metrics [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
from scipy import signal

from demux.metrics import bss_eval

RATE = 44_100
SOURCES = 4
BANDS_HZ = ((40, 300), (200, 2000), (1000, 6000), (4000, 16000))


def make_case(seconds: float, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, T)`` float64 references and estimates, as described in the module docstring."""
    rng = np.random.default_rng(seed)
    T = int(seconds * RATE)
    t = np.arange(T) / RATE
    refs = []
    for s, (lo, hi) in enumerate(BANDS_HZ[:SOURCES]):
        sos = signal.butter(4, (lo, hi), btype="bandpass", fs=RATE, output="sos")
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * (0.3 + 0.2 * s) * t + s)
        refs.append(envelope * signal.sosfilt(sos, rng.standard_normal(T)))
    refs = np.stack(refs)
    refs /= refs.std(axis=1, keepdims=True)
    leak = 0.05 + 0.25 * rng.random((SOURCES, SOURCES))
    np.fill_diagonal(leak, 0.0)
    artifacts = signal.sosfilt(signal.butter(2, 3000, fs=RATE, output="sos"), rng.standard_normal(refs.shape))
    estimates = refs + leak @ refs + 0.1 * artifacts
    return torch.from_numpy(refs), torch.from_numpy(estimates)


def _median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool) -> list[dict]:
    """Time both engines on one case; one row per engine, with the fast one's speed ratio."""
    seconds = 5.0 if quick else 30.0
    refs, estimates = make_case(seconds)
    results = {engine: bss_eval(refs, estimates, engine=engine) for engine in ("fast", "mir_eval")}
    fast, reference = results["fast"], results["mir_eval"]
    gap = max(float((getattr(fast, m) - getattr(reference, m)).abs().max()) for m in ("sdr", "sir", "sar"))
    repeats = {"fast": 3, "mir_eval": 1 if not quick else 3}
    timings = {
        engine: _median_seconds(lambda engine=engine: bss_eval(refs, estimates, engine=engine), repeats[engine])
        for engine in ("fast", "mir_eval")
    }
    return [
        {
            "bench": "metrics",
            "engine": engine,
            "version": results[engine].engine_version,
            "sources": SOURCES,
            "audio_s": seconds,
            "rate_hz": RATE,
            "threads": torch.get_num_threads(),
            "repeats": repeats[engine],
            "seconds": timings[engine],
            "speedup_vs_mir_eval": timings["mir_eval"] / timings[engine],
            "max_abs_diff_db": gap,
            "median_sdr_db": float(results[engine].sdr.median()),
        }
        for engine in ("fast", "mir_eval")
    ]


def main(argv: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = run(quick="--quick" in argv)
    table = Table(title=f"BSS-Eval v3, {rows[0]['sources']} sources x {rows[0]['audio_s']:g} s at {RATE} Hz, "
                  f"{rows[0]['threads']} torch threads")
    for column in ("engine", "version", "repeats", "seconds (median)", "speed-up", "median SDR dB", "max |diff| dB"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["engine"], row["version"], str(row["repeats"]), f"{row['seconds']:.3f}",
            f"{row['speedup_vs_mir_eval']:.1f}x", f"{row['median_sdr_db']:.3f}", f"{row['max_abs_diff_db']:.2e}",
        )
    Console().print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
