"""Separating files: which inputs, where their stems go, one item end to end, resumable batches.

One item is ``read -> separate -> write stems -> write demux.json``. Every file is
written under a temporary name and renamed, and ``demux.json`` is written last:
it marks the item complete, so a batch that was killed resumes where it stopped
(complete items are skipped, incomplete ones are redone).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from demux.errors import DemuxError, OutputExistsError
from demux.io import find_inputs, read, safe_join, supported_extensions, write, write_text_atomic
from demux.recipe import Recipe, to_dict

PROVENANCE = "demux.json"

#: Input extensions a recipe's domain looks for in folders.
DOMAIN_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "audio": (".wav", ".flac", ".ogg"),
    "biomedical": (".hea", ".wav", ".flac", ".npy"),
    "radio": (".npy", ".cf32", ".cfile", ".sigmf-meta", ".wav"),
    "radar": (".npy", ".wav"),
    "array": (".wav", ".flac", ".npy"),
}


@dataclass(frozen=True)
class Item:
    """One input and the folder its stems go to."""

    input: Path
    track: str
    out_dir: Path


@dataclass
class ItemResult:
    """How one item ended: ``done``, ``skipped`` (complete already) or ``failed``."""

    item: Item
    status: str
    message: str = ""
    seconds: float = 0.0
    stems: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    """What ``demux separate`` was asked for, beside the inputs and the recipe."""

    out: Path = Path("separated")
    seed: int = 0
    device: str = "cpu"
    format: str | None = None  # wav, flac, npy; None: the input's own when it can be written
    rate: float | None = None  # sample rate for inputs that carry none (.npy, raw IQ)
    overwrite: bool = False
    overrides: tuple[str, ...] = ()


def plan(paths: Iterable[str | Path], recipe: Recipe, out: Path) -> tuple[list[Item], bool]:
    """Expand files, folders (recursive) and globs into items.

    Returns:
        ``(items, batch)``: ``batch`` is False when a single file was named alone
        (then existing outputs are refused, not skipped).

    Raises:
        InputError: a path is missing, or a folder holds no file the recipe reads.
        ParameterError: two inputs would write to the same track folder.
    """
    extensions = DOMAIN_EXTENSIONS.get(recipe.domain, supported_extensions())
    items, seen, batch = [], {}, False
    paths = [Path(p) for p in paths]
    for path in paths:
        if path.is_dir():
            batch = True
            for found in find_inputs([path], extensions=extensions):
                items.append(_item(found, found.relative_to(path).with_suffix("").as_posix(), out))
        else:
            found_files = find_inputs([path], extensions=supported_extensions())
            batch = batch or len(found_files) > 1 or len(paths) > 1
            items.extend(_item(found, _stem(found), out) for found in found_files)
    for item in items:
        if item.out_dir in seen:
            raise DemuxError(f"{item.input}: writes to {item.out_dir}, as {seen[item.out_dir]} does; rename one")
        seen[item.out_dir] = item.input
    return items, batch


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".sigmf-meta", ".sigmf-data"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _item(path: Path, track: str, out: Path) -> Item:
    return Item(input=path, track=track, out_dir=safe_join(out, track))


def is_complete(item: Item) -> bool:
    """An item is complete once its ``demux.json`` exists (it is written last)."""
    return (item.out_dir / PROVENANCE).is_file()


def separate_item(
    item: Item,
    recipe: Recipe,
    options: Options,
    *,
    resume: bool,
    on_stage: Callable[[str], None] | None = None,
) -> ItemResult:
    """Separate one file and write its stems and ``demux.json``.

    Args:
        resume: in a batch, complete items are skipped and an incomplete item's
            own leftovers are replaced; alone, any existing output is refused
            unless ``options.overwrite``.

    Raises:
        DemuxError: on bad input; the message names the file.
    """
    from demux.pipeline import separate

    start = time.perf_counter()
    if resume and not options.overwrite and is_complete(item):
        return ItemResult(item, "skipped", "complete already")
    signal = read(item.input, rate=options.rate)
    ext = _output_extension(item.input, options.format)
    names = recipe.sources()
    targets = {name: safe_join(item.out_dir, f"{name}.{ext}") for name in names}
    provenance_path = safe_join(item.out_dir, PROVENANCE)
    if not options.overwrite and not resume:
        for path in [*targets.values(), provenance_path]:
            if path.exists():
                raise OutputExistsError(path)
    try:
        separation = separate(signal.data, signal.sample_rate, recipe, seed=options.seed, device=options.device, on_stage=on_stage)
    except DemuxError as error:
        if str(error).startswith(str(item.input)):
            raise
        raise DemuxError(f"{item.input}: {error}") from None
    item.out_dir.mkdir(parents=True, exist_ok=True)
    subtype = signal.subtype if ext == item.input.suffix.lstrip(".").lower() else None
    overwrite = options.overwrite or resume
    for name, path in targets.items():
        data = separation.stems[name].detach().cpu().numpy().astype(np.float32)
        write(path, data, signal.sample_rate, subtype=subtype, overwrite=overwrite)
    seconds = time.perf_counter() - start
    provenance = {
        "input": str(item.input),
        "track": item.track,
        "stems": {name: path.name for name, path in targets.items()},
        "sample_rate": signal.sample_rate,
        "channels": int(signal.data.shape[0]),
        "samples": int(signal.data.shape[1]),
        "seed": options.seed,
        "device": options.device,
        "overrides": list(options.overrides),
        "recipe": to_dict(recipe),
        "versions": versions(),
        "seconds": seconds,
        **separation.provenance(),
    }
    write_text_atomic(provenance_path, json.dumps(provenance, indent=1, default=_json_default), overwrite=overwrite)
    return ItemResult(item, "done", seconds=seconds, stems=list(targets.values()))


def _output_extension(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = path.suffix.lstrip(".").lower()
    return suffix if suffix in ("wav", "flac", "npy") else "wav"


def versions() -> dict[str, str]:
    """Versions of demux and the libraries whose numbers shape the stems."""
    import pywt
    import scipy
    import torch

    import demux

    return {
        "demux": demux.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pywavelets": pywt.__version__,
        "python": platform.python_version(),
    }


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
