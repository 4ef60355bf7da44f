"""``python -m benchmarks`` (what ``make bench`` runs): ``demux bench``, replacing today's table.

The same command as ``demux bench`` (same options, same library, same output) except that
``--overwrite`` is on: ``benchmarks/results/`` holds regenerated tables under version
control, so re-running the benchmark on the same day replaces that day's file and
``git diff`` shows what moved. ``demux bench`` itself refuses to replace a table unless
asked, like every other demux command.

    .venv/bin/python -m benchmarks --quick              # 2 short items per scenario
    .venv/bin/python -m benchmarks --scenario multitone
"""

from __future__ import annotations

import sys

from demux.cli import app


def main(argv: list[str]) -> None:
    app(["bench", "--overwrite", *argv], prog_name="python -m benchmarks")


if __name__ == "__main__":
    main(sys.argv[1:])
