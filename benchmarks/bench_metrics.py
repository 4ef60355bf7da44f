"""BSS-Eval v3 speed: demux's fast engine against mir_eval, and fast_bss_eval beside them.

4 sources x 30 s at 44.1 kHz (5 s with ``quick``): references are band-limited
noises with slow amplitude envelopes; each estimate is its reference plus a mix of
the other references (interference) and a little filtered noise (artifacts). Every
engine scores the same signals with the permutation search, as reported numbers are.
fast_bss_eval (direct solver, the engine demux used before its own) is timed to show
what the blocked correlations buy, on one torch thread: its batched LU solve raises or
returns wrong solutions with several threads on torch 2.13 (CPU, MKL). Times are
medians of 3 runs (mir_eval and fast_bss_eval run once at full length: about a minute
and 8 s). Run as a script, torch gets ``THREADS`` threads (the target machine has 2
cores; ``demux bench`` sets its own); mir_eval uses numpy's BLAS threads as the
environment sets them.

    .venv/bin/python -m benchmarks.bench_metrics [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from importlib.metadata import version

import numpy as np
import torch
from scipy import signal

from demux.metrics import bss_eval, engine_version

RATE = 44_100
SOURCES = 4
THREADS = 2
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


def _timed(function, repeats: int):
    """``(median seconds, last result)`` of ``repeats`` calls of ``function()``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _fast_bss_eval(refs: torch.Tensor, estimates: torch.Tensor) -> dict[str, torch.Tensor]:
    import fast_bss_eval

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sdr, sir, sar, _ = fast_bss_eval.bss_eval_sources(refs, estimates, use_cg_iter=None)
    finally:
        torch.set_num_threads(threads)
    return {"sdr": sdr, "sir": sir, "sar": sar}


def _demux(engine: str):
    def score(refs: torch.Tensor, estimates: torch.Tensor) -> dict[str, torch.Tensor]:
        result = bss_eval(refs, estimates, engine=engine)
        return {"sdr": result.sdr, "sir": result.sir, "sar": result.sar}

    return score


def run(quick: bool) -> list[dict]:
    """Time the engines on one case with the current torch threads; one row per engine."""
    seconds = 5.0 if quick else 30.0
    refs, estimates = make_case(seconds)
    engines = {
        "fast": (_demux("fast"), engine_version("fast")),
        "fast_bss_eval": (_fast_bss_eval, version("fast_bss_eval")),
        "mir_eval": (_demux("mir_eval"), engine_version("mir_eval")),
    }
    repeats = {"fast": 3, "fast_bss_eval": 1 if not quick else 3, "mir_eval": 1 if not quick else 3}
    timings, results = {}, {}
    for name, (score, _) in engines.items():
        timings[name], results[name] = _timed(lambda score=score: score(refs, estimates), repeats[name])

    def gap(name: str) -> float:
        return max(float((results[name][m] - results["mir_eval"][m]).abs().max()) for m in ("sdr", "sir", "sar"))

    return [
        {
            "bench": "metrics",
            "engine": name,
            "version": engine_version_,
            "sources": SOURCES,
            "audio_s": seconds,
            "rate_hz": RATE,
            "threads": 1 if name == "fast_bss_eval" else torch.get_num_threads(),
            "repeats": repeats[name],
            "seconds": timings[name],
            "speedup_vs_mir_eval": timings["mir_eval"] / timings[name],
            "max_abs_diff_db": gap(name),
            "median_sdr_db": float(results[name]["sdr"].median()),
        }
        for name, (_, engine_version_) in engines.items()
    ]


def main(argv: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    torch.set_num_threads(THREADS)
    rows = run(quick="--quick" in argv)
    table = Table(title=f"BSS-Eval v3, {rows[0]['sources']} sources x {rows[0]['audio_s']:g} s at {RATE} Hz")
    # |diff|: the largest SDR/SIR/SAR difference from mir_eval's, dB
    for column in ("engine", "version", "threads", "repeats", "s (median)", "speed-up", "SDR dB", "|diff| dB"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["engine"], row["version"], str(row["threads"]), str(row["repeats"]), f"{row['seconds']:.3f}",
            f"{row['speedup_vs_mir_eval']:.1f}x", f"{row['median_sdr_db']:.3f}", f"{row['max_abs_diff_db']:.2e}",
        )
    Console(width=max(Console().width, 110)).print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
