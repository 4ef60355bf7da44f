"""Separating files: which inputs, where their stems go, one item end to end, resumable batches.

One item is ``read -> separate -> write stems -> write demux.json``. Every file is
written under a temporary name and renamed, and ``demux.json`` is written last:
it marks the item complete, so a batch that was killed resumes where it stopped
(complete items are skipped, incomplete ones are redone and their leftover
temporary files removed). :func:`run` processes items one after another, in
worker processes (``jobs > 1``, which end with a killed batch) or as tasks of a Dask
cluster (``scheduler``); in a batch a failing item does not stop the others.

With ``Options.segment`` (the default) a file is read, separated and written a chunk
at a time (:func:`demux.io.open_signal`, :func:`demux.pipeline.separate_chunks`,
:func:`demux.io.write_stream`): ``Options.segment``-second chunks, fitted
``Options.batch_size`` at a time, cross-faded back, each finished region of every stem
appended to its temporary file, so memory stays flat however long the file is; the
stems are renamed into place together once the last chunk is written. ``masks.npz``
then holds the first chunk's masks (a long file's whole masks would not fit where its
signal does not have to), and ``demux.json`` every chunk's fit report. Without
``segment`` (and online) the file is read whole.

Across files: in a batch with ``batch_size > 1``, inputs of one length, rate and
channel count are separated together, up to ``batch_size`` files a group, each fit batch
holding chunks of every file of the group (:func:`_groups`, :func:`_separate_jobs`); a
group is one unit of work, run here, in a worker process or as a Dask task alike, so its
stems do not depend on ``jobs`` or the scheduler. Each file's stems, ``masks.npz`` and
``demux.json`` are still its own, written and resumed as a lone item's.
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
from contextlib import ExitStack, contextmanager, nullcontext
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
    batch_size: int = 1  # chunks fitted together, of one file or (in a batch) of equal-length files
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
            threads, each taking one group of :func:`_groups` at a time (one item,
            or in a batch with ``options.batch_size > 1`` up to that many inputs of
            one shape, fitted together by :func:`_attempt_group`). The groups and
            their fits are those of ``jobs=1``, so are the stems (bit for bit while
            torch's reductions do not split by thread count, true of tensors below
            its 32768-element grain). A group's stems differ from its items' fitted
            alone by the dropout draws of their place in the batch
            (:func:`_separate_jobs`). With ``scheduler="local"``: the local
            cluster's worker processes.
        scheduler: a Dask scheduler address (``tcp://host:port``) to submit each
            group to as one task running :func:`_attempt_group`, or ``"local"`` to
            start a ``LocalCluster`` here; ``None``: no cluster. Needs the
            ``distributed`` package (``pip install 'demux[distributed]'``); the
            workers must see the inputs and the output folder at the same paths
            (they are made absolute); grouping reads the inputs' headers here.
        on_stage: called with an item and a stage name before the stage runs
            (only when the groups run here: ``jobs=1`` or a single group, no
            scheduler; workers do not report stages; of a group of files fitted
            together, with the group's first item).
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
    groups = _groups(items, options, batch=batch)
    if jobs == 1 or len(groups) < 2:
        results: dict[Item, ItemResult] = {}
        for group in groups:
            stage = (lambda name, item=group[0]: on_stage(item, name)) if on_stage else None
            if batch:
                done = _attempt_group(group, recipe, options, on_stage=stage)
            else:
                done = [separate_item(item, recipe, options, resume=False, on_stage=stage) for item in group]
            for result in done:
                report(result)
                results[result.item] = result
        return [results[item] for item in items]
    return _run_parallel(items, groups, recipe, options, batch=batch, jobs=jobs, report=report)


def _run_parallel(items, groups, recipe, options, *, batch, jobs, report) -> list[ItemResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_attempt_group, group, recipe, options, batch): group for group in groups}
        try:
            results = _gather(as_completed(futures), futures, batch=batch, report=report,
                              result_of=lambda future, group: future.result(), died=BrokenProcessPool)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [results[item] for item in items]


def _gather(completed, futures, *, batch, report, result_of, died) -> dict[Item, ItemResult]:
    """Results of ``futures`` (future -> its group of items) as they complete; a dead worker fails its group.

    Outside a batch the first failure is raised, as a lone file's error is.
    """
    results: dict[Item, ItemResult] = {}
    for future in completed:
        group = futures[future]
        try:
            done = result_of(future, group)
        except died:
            done = [ItemResult(item, "failed", f"{item.input}: its worker process died") for item in group]
        for result in done:
            if not batch and result.status == "failed":
                raise DemuxError(result.message)
            report(result)
            results[result.item] = result
    return results


def _run_distributed(items, recipe, options, *, batch, jobs, scheduler, report) -> list[ItemResult]:
    """:func:`_attempt_group` per group as tasks of a Dask cluster; results as :func:`_run_parallel` gives them."""
    try:
        from distributed import KilledWorker, as_completed
    except ImportError:
        raise ParameterError(
            f"--scheduler {scheduler}: needs the 'distributed' package (pip install 'demux[distributed]')"
        ) from None
    if scheduler != LOCAL_SCHEDULER and jobs != 1:
        raise ParameterError(f"--jobs {jobs} with --scheduler {scheduler}: the cluster's own workers run the items")
    groups = _groups(items, options, batch=batch)
    order = {item: i for i, item in enumerate(items)}
    with _client(scheduler, jobs) as client:
        # workers need not share this process's working folder, only its file system
        futures = {
            client.submit(_attempt_group, [_absolute(item) for item in group], recipe, options, batch, pure=False,
                          key=f"demux-{order[group[0]]}-{group[0].track}"): group
            for group in groups
        }
        try:
            results = _gather(as_completed(futures), futures, batch=batch, report=report, died=KilledWorker,
                              result_of=lambda future, group: [_as_given(result, item) for result, item
                                                               in zip(future.result(), group, strict=True)])
        except BaseException:
            client.cancel(list(futures))
            raise
    return [results[item] for item in items]


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
    """A pool worker: ``threads`` torch threads, and gone as soon as the process that started it is.

    A parent killed outright (SIGKILL) cannot stop its pool: its workers would finish the
    groups queued to them and write their outputs beside the resumed run's, then wait forever.
    """
    import multiprocessing
    import threading
    from multiprocessing.connection import wait

    import torch

    torch.set_num_threads(threads)
    parent = multiprocessing.parent_process()
    if parent is not None:  # readable once the parent has died
        threading.Thread(target=lambda: (wait([parent.sentinel]), os._exit(1)), daemon=True).start()


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
    with _named(item):
        job = _open(item, recipe, options, resume=resume)
        if isinstance(job, ItemResult):
            return job
        (result,) = _separate_jobs([job], recipe, options, overwrite=options.overwrite or resume, on_stage=on_stage)
        return result


@contextmanager
def _named(item: Item):
    """A :class:`DemuxError` raised inside, its message starting with the item's input."""
    try:
        yield
    except (InputError, OutputExistsError):
        raise
    except DemuxError as error:
        if str(error).startswith(str(item.input)):
            raise
        raise DemuxError(f"{item.input}: {error}") from None


def _groups(items: list[Item], options: Options, *, batch: bool) -> list[list[Item]]:
    """``items`` as the groups whose chunks are fitted together, in the order of their first items.

    In a batch with ``batch_size > 1`` and chunking, the inputs of one length, sample rate,
    channel count and sample type (real or complex) go together, up to ``batch_size`` a group
    in input order; the others (complete already, unreadable, or of a shape no other input
    has) each alone. Otherwise every item is alone. Inputs are opened here only to read
    their shape (what :func:`open_signal` holds in memory is let go at once).
    """
    if not (batch and options.batch_size > 1 and options.segment is not None):
        return [[item] for item in items]
    shapes: dict[tuple, list[Item]] = {}
    alone = []
    for item in items:
        try:  # a complete item is skipped (or refused) by the item path, unopened
            source = None if not options.overwrite and is_complete(item) else open_signal(item.input, rate=options.rate)
        except DemuxError:
            source = None  # the item path says why, in its own words
        if source is None:
            alone.append([item])
        else:
            shapes.setdefault((source.length, source.sample_rate, source.channels, source.is_complex), []).append(item)
    size = options.batch_size
    groups = alone + [same[i : i + size] for same in shapes.values() for i in range(0, len(same), size)]
    order = {item: i for i, item in enumerate(items)}
    return sorted(groups, key=lambda group: order[group[0]])


def _attempt_group(items: list[Item], recipe: Recipe, options: Options, resume: bool = True,
                   on_stage=None) -> list[ItemResult]:
    """:func:`_attempt` for inputs of one shape whose chunks are fitted together (see :func:`_groups`).

    One unit of work, here or in a worker (results in the order of ``items``). If the
    group's fit fails, its items are redone one at a time, so that each file's own
    error (or its stems) comes back as a lone item's would. Only a group of one is
    attempted outside a batch (``resume=False``).
    """
    if len(items) == 1:
        return [_attempt(items[0], recipe, options, resume, on_stage=on_stage)]
    results, jobs = {}, []
    for item in items:
        try:
            with _named(item):
                opened = _open(item, recipe, options, resume=True)
        except DemuxError as error:
            opened = ItemResult(item, "failed", str(error))
        if isinstance(opened, ItemResult):
            results[item] = opened
        else:
            jobs.append(opened)
    if jobs:
        try:
            with _named(jobs[0].item) if len(jobs) == 1 else nullcontext():
                done = _separate_jobs(jobs, recipe, options, overwrite=True, on_stage=on_stage)
        except DemuxError as error:
            done = ([ItemResult(jobs[0].item, "failed", str(error))] if len(jobs) == 1
                    else [_attempt(job.item, recipe, options, True) for job in jobs])
        results.update((result.item, result) for result in done)
    return [results[item] for item in items]


@dataclass
class _Job:
    """An item whose input is open and whose outputs may be written."""

    item: Item
    source: SignalFile
    targets: dict[str, Path]  # source name -> stem file
    provenance_path: Path
    settings: dict  # see _settings
    subtype: str | None  # the input's soundfile subtype where the stems have its format
    warnings: list[str]
    start: float  # time.perf_counter() when the item was taken up


def _open(item: Item, recipe: Recipe, options: Options, *, resume: bool) -> _Job | ItemResult:
    """The checks before an item is separated: ``skipped`` (complete already), refused, or its :class:`_Job`.

    Raises:
        DemuxError: complete with other settings, outputs exist (not ``resume``), or a bad input.
    """
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
    subtype = source.subtype if ext == item.input.suffix.lstrip(".").lower() else None
    return _Job(item, source, targets, provenance_path, settings, subtype, warnings, start)


def _separate_jobs(jobs: list[_Job], recipe: Recipe, options: Options, *, overwrite: bool,
                   on_stage) -> list[ItemResult]:
    """Separate the inputs of ``jobs`` together and write each one's stems, ``masks.npz`` and ``demux.json``.

    Several jobs need inputs of one shape (see :func:`_groups`) and chunking: they are
    read as one ``(job, channel, time)`` signal, so each fit batch holds
    ``max(1, batch_size // len(jobs))`` consecutive chunks of every input (at most
    ``batch_size`` chunks), and each input's chunks are warm-started from its own
    (:func:`demux.pipeline.separate_chunks`). An input's stems are those it gets alone
    with that many chunks a batch (bit for bit for the group's first input of one chunk),
    but for its dropout draws (a fit draws them per item of its batch, so they depend
    on the input's place in the group) and, from its second batch of chunks on, the
    warm-start radius and dropout rate (its batch's means). Measured against lone runs:
    the worst stem 51 dB from its lone run's on noise plus tones, 85-94 dB on tones
    (``benchmarks/bench_scale.py``, ``tests/test_batch.py``). Each ``demux.json``
    records the other tracks it was fitted with (``batched_with``) and the group's
    seconds shared equally.

    Raises:
        DemuxError: from the fit or the outputs; nothing is then marked complete.
    """
    from demux.pipeline import Separation, as_batched, separate_chunks

    first = jobs[0].source
    whole = None
    if options.segment is not None:
        def read(start: int, stop: int) -> np.ndarray:
            return np.stack([job.source.read(start, stop) for job in jobs])

        regions = separate_chunks(
            read, first.length, first.sample_rate, recipe, seed=options.seed, device=options.device,
            segment=options.segment, overlap=options.overlap, batch_size=max(1, options.batch_size // len(jobs)),
            on_stage=on_stage,
        )
    else:
        (job,) = jobs  # whole files and online runs are separated one at a time
        whole = _whole(job.source, recipe, options, on_stage)
        regions = iter([({name: as_batched(stem)[0] for name, stem in whole.stems.items()}, [])])
    # the first batch before any output is touched: a recipe that cannot take this input fails here
    regions = itertools.chain([next(regions)], regions)
    for job in jobs:
        _clear(job.item.out_dir, job.provenance_path)
    reports: list[list] = [[] for _ in jobs]
    with ExitStack() as files:
        writers = [
            {name: files.enter_context(write_stream(path, job.source.sample_rate, channels=job.source.channels,
                                                    length=job.source.length, is_complex=job.source.is_complex,
                                                    subtype=job.subtype, overwrite=overwrite))
             for name, path in job.targets.items()}
            for job in jobs
        ]
        for stems, batch_reports in regions:  # stems are written as they come; renamed once all are complete
            for b, job_writers in enumerate(writers):
                for name, writer in job_writers.items():
                    writer.write(stems[name][b].detach().cpu().numpy())
                for report in batch_reports:  # the batch's items are input-major: (input, chunk)
                    per_input = len(report.loss) // len(jobs)
                    reports[b].append(report.select(range(b * per_input, (b + 1) * per_input)))
    seconds = (time.perf_counter() - jobs[0].start) / len(jobs)
    results = []
    for job, stages in zip(jobs, reports, strict=True):
        source = job.source
        separation = whole if whole is not None else Separation(stems={}, sample_rate=source.sample_rate, stages=stages)
        _write_masks(separation, safe_join(job.item.out_dir, MASKS), overwrite=overwrite)
        provenance = {
            "input": str(job.item.input),
            "track": job.item.track,
            **job.settings,
            "sample_rate": source.sample_rate,
            "channels": source.channels,
            "samples": source.length,
            "device": options.device,
            "overrides": list(options.overrides),
            "versions": versions(),
            "seconds": seconds,
            "batched_with": [other.item.track for other in jobs if other is not job],
            "warnings": job.warnings,
            **separation.provenance(),
        }
        text = json.dumps(_finite(provenance), indent=1, default=_json_default)
        write_text_atomic(job.provenance_path, text, overwrite=overwrite)
        results.append(ItemResult(job.item, "done", seconds=seconds, stems=list(job.targets.values()),
                                  warnings=job.warnings))
    return results


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
    Which files an item was fitted with (``batched_with``) is not: a folder that gains a
    file would otherwise refuse its complete items; it depends on what was left to do
    (a resumed batch groups only the unfinished items), so it is recorded, not compared.
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
