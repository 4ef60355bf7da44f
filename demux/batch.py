"""Separating files: which inputs, where their stems go, one item end to end, resumable batches.

One item is ``read -> separate -> write stems -> write demux.json``. Every file is
written under a temporary name and renamed, and ``demux.json`` is written last:
it marks the item complete, so a batch that was killed resumes where it stopped
(complete items are skipped, incomplete ones are redone and their leftover
temporary files removed). :func:`run` processes items one after another, in
worker processes (``jobs > 1``) or as tasks of a Dask cluster (``scheduler``); in a
batch a failing item does not stop the others.

With ``Options.segment`` (the default) a file is read, separated and written a chunk
at a time (:func:`demux.io.open_signal`, :func:`demux.pipeline.separate_chunks`,
:func:`demux.io.write_stream`): ``Options.segment``-second chunks, fitted
``Options.batch_size`` at a time, cross-faded back, each finished region of every stem
appended to its temporary file, so memory stays flat however long the file is; the
stems are renamed into place together once the last chunk is written. ``masks.npz``
then holds the first chunk's masks (a long file's whole masks would not fit where its
signal does not have to), and ``demux.json`` every chunk's fit report. Without
``segment`` (and online) the file is read whole.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from demux.errors import DemuxError, InputError, OutputExistsError, ParameterError
from demux.io import (
    SignalFile,
    atomic_write,
    find_inputs,
    is_temporary,
    open_signal,
    safe_join,
    supported_extensions,
    write_stream,
    write_text_atomic,
)
from demux.recipe import Recipe, to_dict

PROVENANCE = "demux.json"
MASKS = "masks.npz"
FORMATS = ("wav", "flac", "npy")
#: ``--scheduler`` value that starts a Dask ``LocalCluster`` of ``jobs`` worker processes here.
LOCAL_SCHEDULER = "local"

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
    warnings: list[str] = field(default_factory=list)


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
    segment: float | None = 30.0  # seconds per chunk of a long input; None (or 0 when given): the whole file
    overlap: float = 0.1  # the chunks' overlap, a fraction of ``segment``
    batch_size: int = 1  # chunks fitted together (on CPU one at a time is fastest and flattest in memory)
    online: tuple[float, float] | None = None  # (window, hop) seconds: sliding warm-started fits

    def __post_init__(self):
        if self.format is not None and self.format not in FORMATS:
            raise ParameterError(f"--format {self.format!r}: expected one of {', '.join(FORMATS)}")
        if self.segment is not None and not (isinstance(self.segment, int | float) and 0 <= self.segment < math.inf):
            raise ParameterError(f"--segment {self.segment!r}: expected seconds >= 0 (0: the whole file at once)")
        if self.segment == 0:
            object.__setattr__(self, "segment", None)  # one spelling of "whole file" in demux.json
        if not (isinstance(self.overlap, int | float) and 0 <= self.overlap <= 0.5):
            raise ParameterError(f"--overlap {self.overlap!r}: expected a fraction of the segment in [0, 0.5]")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ParameterError(f"--batch-size {self.batch_size!r}: expected an integer >= 1")
        if self.online is not None:
            window, hop = self.online
            if not 0 < hop < window:
                raise ParameterError(f"--window {window} --hop {hop}: expected 0 < hop < window (seconds)")
            if self.segment is not None:
                raise ParameterError("--online slides its own windows: leave out --segment")


def plan(paths: Iterable[str | Path], recipe: Recipe, out: Path) -> tuple[list[Item], bool]:
    """Expand files, folders (recursive) and globs into items.

    Returns:
        ``(items, batch)``: ``batch`` is False when a single file was named alone
        (then existing outputs are refused, not skipped).

    Raises:
        InputError: a path is missing, or a folder holds no file the recipe reads.
        ParameterError: ``out`` is a file, or two inputs would write to the same track folder.
    """
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{out}: is a file, expected an output folder (-o)")
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
            raise ParameterError(f"{item.input}: writes to {item.out_dir}, as {seen[item.out_dir]} does; rename one")
        seen[item.out_dir] = item.input
    return items, batch


def _absolute(item: Item) -> Item:
    return Item(input=item.input.absolute(), track=item.track, out_dir=item.out_dir.absolute())


def _as_given(result: ItemResult, item: Item) -> ItemResult:
    """A worker's result about ``_absolute(item)``, told with the paths as the caller gave them."""

    def given(text: str) -> str:
        return text.replace(str(result.item.input), str(item.input)).replace(str(result.item.out_dir), str(item.out_dir))

    return dataclasses.replace(
        result,
        item=item,
        message=given(result.message),
        stems=[item.out_dir / path.name for path in result.stems],
        warnings=[given(w) for w in result.warnings],
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".sigmf-meta", ".sigmf-data"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _item(path: Path, track: str, out: Path) -> Item:
    return Item(input=path, track=track, out_dir=safe_join(out, track))


def is_complete(item: Item) -> bool:
    """An item is complete once its ``demux.json`` (written last) and every stem it lists exist."""
    record = _provenance(item)
    return record is not None and all((item.out_dir / name).is_file() for name in record.get("stems", {}).values())


def _provenance(item: Item) -> dict | None:
    try:
        record = json.loads((item.out_dir / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def run(
    items: list[Item],
    recipe: Recipe,
    options: Options,
    *,
    batch: bool,
    jobs: int = 1,
    scheduler: str | None = None,
    on_stage: Callable[[Item, str], None] | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
) -> list[ItemResult]:
    """Separate ``items``, one after another, in ``jobs`` worker processes, or on a Dask cluster.

    Args:
        batch: resume (skip complete items) and keep going past failing items,
            which come back as ``failed`` results; otherwise the first error raises.
        jobs: worker processes (``spawn``), each with ``cpu_count // jobs`` torch
            threads. Each item is fitted alone, so the stems are those of
            ``jobs=1`` (bit for bit while torch's reductions do not split by
            thread count, true of tensors below its 32768-element grain).
            With ``scheduler="local"``: the local cluster's worker processes.
        scheduler: a Dask scheduler address (``tcp://host:port``) to submit each
            item to as one task running :func:`separate_item`, or ``"local"`` to
            start a ``LocalCluster`` here; ``None``: no cluster. Needs the
            ``distributed`` package (``pip install 'demux[distributed]'``); the
            workers must see the inputs and the output folder at the same paths
            (they are made absolute).
        on_stage: called with an item and a stage name before the stage runs
            (only with ``jobs=1`` and no scheduler: workers do not report stages).
        on_result: called in this process as each item ends, in completion order.

    Returns:
        One result per item, in the order of ``items``.

    Raises:
        ParameterError: ``jobs`` is not a positive integer; ``scheduler`` is given
            but ``distributed`` is not installed, the scheduler cannot be reached,
            or ``jobs > 1`` is asked of a remote cluster (it has its own workers).
        DemuxError: only when not ``batch``.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ParameterError(f"--jobs {jobs!r}: expected an integer >= 1")
    report = on_result or (lambda _result: None)
    if scheduler is not None:
        return _run_distributed(items, recipe, options, batch=batch, jobs=jobs, scheduler=scheduler, report=report)
    if jobs == 1 or len(items) < 2:
        results = []
        for item in items:
            stage = (lambda name, item=item: on_stage(item, name)) if on_stage else None
            if batch:
                result = _attempt(item, recipe, options, True, on_stage=stage)
            else:
                result = separate_item(item, recipe, options, resume=False, on_stage=stage)
            report(result)
            results.append(result)
        return results
    return _run_parallel(items, recipe, options, batch=batch, jobs=jobs, report=report)


def _run_parallel(items, recipe, options, *, batch, jobs, report) -> list[ItemResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_attempt, item, recipe, options, batch): i for i, item in enumerate(items)}
        try:
            results = _gather(as_completed(futures), futures, items, batch=batch, report=report,
                              result_of=lambda future, item: future.result(), died=BrokenProcessPool)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [results[i] for i in range(len(items))]


def _gather(completed, futures, items, *, batch, report, result_of, died) -> dict[int, ItemResult]:
    """Results of ``futures`` (future -> item index) as they complete; a dead worker fails its item.

    Outside a batch the first failure is raised, as a lone file's error is.
    """
    results: dict[int, ItemResult] = {}
    for future in completed:
        index = futures[future]
        try:
            result = result_of(future, items[index])
        except died:
            result = ItemResult(items[index], "failed", f"{items[index].input}: its worker process died")
        if not batch and result.status == "failed":
            raise DemuxError(result.message)
        report(result)
        results[index] = result
    return results


def _run_distributed(items, recipe, options, *, batch, jobs, scheduler, report) -> list[ItemResult]:
    """:func:`_attempt` per item as tasks of a Dask cluster; results as :func:`_run_parallel` gives them."""
    try:
        from distributed import KilledWorker, as_completed
    except ImportError:
        raise ParameterError(
            f"--scheduler {scheduler}: needs the 'distributed' package (pip install 'demux[distributed]')"
        ) from None
    if scheduler != LOCAL_SCHEDULER and jobs != 1:
        raise ParameterError(f"--jobs {jobs} with --scheduler {scheduler}: the cluster's own workers run the items")
    with _client(scheduler, jobs) as client:
        # workers need not share this process's working folder, only its file system
        futures = {
            client.submit(_attempt, _absolute(item), recipe, options, batch, pure=False, key=f"demux-{i}-{item.track}"): i
            for i, item in enumerate(items)
        }
        try:
            results = _gather(as_completed(futures), futures, items, batch=batch, report=report,
                              result_of=lambda future, item: _as_given(future.result(), item), died=KilledWorker)
        except BaseException:
            client.cancel(list(futures))
            raise
    return [results[i] for i in range(len(items))]


@contextmanager
def _client(scheduler: str, jobs: int):
    """A connected ``distributed.Client``, on a new ``LocalCluster`` of ``jobs`` workers for ``"local"``."""
    from distributed import Client, LocalCluster

    with ExitStack() as stack:
        try:
            if scheduler == LOCAL_SCHEDULER:
                # one thread per worker: demux's small tensors run fastest on one (benchmarks/README.md);
                # the dashboard on any free port, so that another cluster's :8787 is no clash
                cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=":0")
                address = stack.enter_context(cluster)
            else:
                address = scheduler
            client = stack.enter_context(Client(address, timeout="10s"))
        except (OSError, ValueError) as error:  # unreachable (TimeoutError is an OSError) or not an address
            raise ParameterError(f"--scheduler {scheduler}: cannot connect ({error})") from None
        yield client


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _attempt(item: Item, recipe: Recipe, options: Options, resume: bool, on_stage=None) -> ItemResult:
    """:func:`separate_item`, with a user error returned as a ``failed`` result (it runs in workers too)."""
    try:
        return separate_item(item, recipe, options, resume=resume, on_stage=on_stage)
    except DemuxError as error:
        return ItemResult(item, "failed", str(error))


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
        DemuxError: on bad input, recipe or outputs; the message names the file.
    """
    try:
        return _separate_item(item, recipe, options, resume=resume, on_stage=on_stage)
    except (InputError, OutputExistsError):
        raise
    except DemuxError as error:
        if str(error).startswith(str(item.input)):
            raise
        raise DemuxError(f"{item.input}: {error}") from None


def _separate_item(item: Item, recipe: Recipe, options: Options, *, resume: bool, on_stage) -> ItemResult:
    from demux.pipeline import Separation, as_batched, separate_chunks

    start = time.perf_counter()
    ext = _output_extension(item.input, options.format)
    targets = {name: safe_join(item.out_dir, f"{name}.{ext}") for name in recipe.sources()}
    provenance_path = safe_join(item.out_dir, PROVENANCE)
    settings = _settings(recipe, options, targets)
    if resume and not options.overwrite and is_complete(item):
        if _same_settings(_provenance(item), settings):
            return ItemResult(item, "skipped", "complete already")
        raise DemuxError(
            f"{item.out_dir}: holds stems made with another recipe, seed, format or segmenting (pass --overwrite)"
        )
    if not options.overwrite and not resume:
        for path in [*targets.values(), provenance_path]:
            if path.exists():
                raise OutputExistsError(path)
    source = open_signal(item.input, rate=options.rate)
    if source.length < 2:
        raise InputError(item.input, "holds a single sample per channel: nothing to separate")
    warnings = [] if source.scan() else [f"{item.input}: silent (every sample is zero): every stem is silent"]
    whole = None
    if options.segment is not None:
        regions = separate_chunks(
            source.read, source.length, source.sample_rate, recipe, seed=options.seed, device=options.device,
            segment=options.segment, overlap=options.overlap, batch_size=options.batch_size, on_stage=on_stage,
        )
    else:
        whole = _whole(source, recipe, options, on_stage)
        regions = iter([({name: as_batched(stem)[0] for name, stem in whole.stems.items()}, [])])
    # the first batch before any output is touched: a recipe that cannot take this input fails here
    regions = itertools.chain([next(regions)], regions)
    subtype = source.subtype if ext == item.input.suffix.lstrip(".").lower() else None
    overwrite = options.overwrite or resume
    _clear(item.out_dir, provenance_path)
    reports = []
    with ExitStack() as files:
        writers = {
            name: files.enter_context(write_stream(path, source.sample_rate, channels=source.channels,
                                                   length=source.length, is_complex=source.is_complex,
                                                   subtype=subtype, overwrite=overwrite))
            for name, path in targets.items()
        }
        for stems, batch_reports in regions:  # stems are written as they come; renamed once all are complete
            for name, writer in writers.items():
                writer.write(stems[name][0].detach().cpu().numpy())
            reports.extend(batch_reports)
    separation = whole if whole is not None else Separation(stems={}, sample_rate=source.sample_rate, stages=reports)
    _write_masks(separation, safe_join(item.out_dir, MASKS), overwrite=overwrite)
    seconds = time.perf_counter() - start
    provenance = {
        "input": str(item.input),
        "track": item.track,
        **settings,
        "sample_rate": source.sample_rate,
        "channels": source.channels,
        "samples": source.length,
        "device": options.device,
        "overrides": list(options.overrides),
        "versions": versions(),
        "seconds": seconds,
        "warnings": warnings,
        **separation.provenance(),
    }
    text = json.dumps(_finite(provenance), indent=1, default=_json_default)
    write_text_atomic(provenance_path, text, overwrite=overwrite)
    return ItemResult(item, "done", seconds=seconds, stems=list(targets.values()), warnings=warnings)


def _whole(source: SignalFile, recipe: Recipe, options: Options, on_stage):
    """The whole file in memory, separated at once or online (a ``Separation`` or an ``OnlineResult``)."""
    from demux.pipeline import separate

    data = source.read()
    if options.online is not None:
        from demux.online import separate_online

        window, hop = options.online
        return separate_online(data, source.sample_rate, recipe, window=window, hop=hop, seed=options.seed,
                               device=options.device)
    return separate(data, source.sample_rate, recipe, seed=options.seed, device=options.device, on_stage=on_stage)


def _write_masks(separation, path: Path, *, overwrite: bool) -> None:
    """The first stage's masks on a (freq[, frame]) grid as ``masks.npz`` (read by ``evaluate --plot``).

    Of a chunked input, those of its first chunk.
    """
    stages = getattr(separation, "stages", [])  # online results have per-window masks only: none written
    stage = next((s for s in stages if s.masks is not None), None)
    if stage is None:
        return
    with atomic_write(path, overwrite=overwrite) as temp:
        np.savez_compressed(
            temp,
            masks=stage.masks.masks[0].numpy().astype(np.float16),  # the figure needs no more precision
            freqs_hz=stage.masks.freqs_hz.numpy(),
            times_s=stage.masks.times_s.numpy(),
            names=np.array(stage.masks.names),
        )


def _settings(recipe: Recipe, options: Options, targets: dict[str, Path]) -> dict:
    """What decides an item's stems: a complete item made with other settings is not skipped.

    ``batch_size`` is among them: the dropout draws of a fit depend on its batch's shape.
    """
    return {
        "stems": {name: path.name for name, path in targets.items()},
        "seed": options.seed,
        "segment": options.segment,
        "overlap": options.overlap,
        "batch_size": options.batch_size,
        "online": list(options.online) if options.online else None,
        "recipe": to_dict(recipe),
    }


def _same_settings(record: dict | None, settings: dict) -> bool:
    def comparable(data: dict) -> dict:
        data = json.loads(json.dumps(_finite(data), default=_json_default))
        if isinstance(data.get("recipe"), dict):
            data["recipe"].pop("source", None)  # where the recipe was read from, not what it says
        return data

    record = record or {}
    return comparable({key: record.get(key) for key in settings}) == comparable(settings)


def _clear(out_dir: Path, provenance_path: Path) -> None:
    """Before (re)writing an item: drop its completion marker first, then a killed run's temporary files."""
    provenance_path.unlink(missing_ok=True)
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            if path.is_file() and is_temporary(path):
                path.unlink(missing_ok=True)


def _output_extension(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = path.suffix.lstrip(".").lower()
    if suffix in ("cf32", "cfile", "sigmf-meta", "sigmf-data"):
        return "npy"  # complex I/Q stems: .npy keeps them complex
    return suffix if suffix in FORMATS else "wav"


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


def _finite(value):
    """NaN -> None, recursively: ``demux.json`` stays JSON that strict parsers read (infinity is kept)."""
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating) and math.isnan(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | np.floating):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
