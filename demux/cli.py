"""The ``demux`` command line: parses, calls the library, prints.

Heavy modules are imported inside commands so ``demux --help`` stays instant.
Every :class:`demux.errors.DemuxError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from functools import wraps

import typer

app = typer.Typer(
    help="Separate mixed signals into their sources with prior-informed transform-domain masks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    _state["debug"] = debug


def user_errors(command):
    """Turn DemuxError into one stderr line and exit code 2 (a traceback with --debug)."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        from demux.errors import DemuxError

        try:
            return command(*args, **kwargs)
        except DemuxError as error:
            if _state["debug"]:
                raise
            typer.echo(f"demux: error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
