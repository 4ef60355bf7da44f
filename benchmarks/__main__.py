"""``python -m benchmarks`` (what ``make bench`` runs): ``demux bench``, replacing today's table, then the scale benchmark.

The same command as ``demux bench`` (same options, same library, same output) except that
``--overwrite`` is on: ``benchmarks/results/`` holds regenerated tables under version
control, so re-running the benchmark on the same day replaces that day's file and
``git diff`` shows what moved. ``demux bench`` itself refuses to replace a table unless
asked, like every other demux command. Then ``benchmarks/bench_scale.py`` (real-time
factor per recipe, peak memory against length, chunked vs whole-file SDR) writes
``<date>-scale.md`` (``--quick``: its quick variant; ``--no-scale`` skips it).

    .venv/bin/python -m benchmarks --quick              # 2 short items per scenario
    .venv/bin/python -m benchmarks --scenario multitone --no-scale
"""

from __future__ import annotations

import sys

from benchmarks import bench_scale
from demux.cli import app

NO_SCALE = "--no-scale"


def main(argv: list[str]) -> None:
    try:
        app(["bench", "--overwrite", *(a for a in argv if a != NO_SCALE)], prog_name="python -m benchmarks")
    except SystemExit as done:  # typer exits after its command; the scale benchmark comes next
        if done.code not in (0, None):
            raise
    if NO_SCALE not in argv:
        bench_scale.main(["--quick"] if "--quick" in argv else [])


if __name__ == "__main__":
    main(sys.argv[1:])
