"""``python -m benchmarks`` (what ``make bench`` runs): ``demux bench``, replacing today's table, then the scale and speed benchmarks.

The same command as ``demux bench`` (same options, same library, same output) except that
``--overwrite`` is on: ``benchmarks/results/`` holds regenerated tables under version
control, so re-running the benchmark on the same day replaces that day's file and
``git diff`` shows what moved. ``demux bench`` itself refuses to replace a table unless
asked, like every other demux command. Then ``benchmarks/bench_scale.py`` (peak
memory against length, chunked vs whole-file SDR) writes
``<date>-scale.md`` (``--quick``: its quick variant; ``--no-scale`` skips it), and
``benchmarks/bench_speed.py`` (real-time factor of every recipe on its own scenario, against
its transform alone; audio-stft's 100x goal) writes ``<date>-speed.md`` (``--no-speed`` skips it).

    .venv/bin/python -m benchmarks --quick              # 2 short items per scenario
    .venv/bin/python -m benchmarks --scenario multitone --no-scale --no-speed
"""

from __future__ import annotations

import sys

from benchmarks import bench_scale, bench_speed
from demux.cli import app

NO_SCALE, NO_SPEED = "--no-scale", "--no-speed"


def main(argv: list[str]) -> None:
    try:
        bench_args = [a for a in argv if a not in (NO_SCALE, NO_SPEED)]
        app(["bench", "--overwrite", *bench_args], prog_name="python -m benchmarks")
    except SystemExit as done:  # typer exits after its command; scale and speed come next
        if done.code not in (0, None):
            raise
    quick = ["--quick"] if "--quick" in argv else []
    if NO_SCALE not in argv:
        bench_scale.main(quick)
    if NO_SPEED not in argv:
        bench_speed.main(quick)


if __name__ == "__main__":
    main(sys.argv[1:])
