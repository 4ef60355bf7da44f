"""The errors demux raises for problems a user can fix.

The CLI turns every :class:`DemuxError` into one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class DemuxError(Exception):
    """A problem with the user's input, recipe or options (exit code 2)."""


class ParameterError(DemuxError, ValueError):
    """An argument value is out of its allowed range or of the wrong kind."""


class InputError(DemuxError):
    """A file cannot be used: missing, empty, corrupt, unsupported, or holding NaN/Inf.

    The message always starts with the file's path, so a batch log names the culprit.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class RecipeError(DemuxError):
    """A recipe is malformed: names the file, the key path and what was expected."""

    def __init__(self, source: str | Path, key_path: str, problem: str):
        self.source = str(source)
        self.key_path = key_path
        self.problem = problem
        where = f"{source}: {key_path}: " if key_path else f"{source}: "
        super().__init__(where + problem)


class OutputExistsError(DemuxError):
    """An output file exists and ``overwrite`` was not asked for."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(f"{path}: exists (pass --overwrite to replace it)")
