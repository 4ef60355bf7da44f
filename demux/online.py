"""Online mode: the same fit over sliding windows, warm-started from the window before.

Windows of ``window`` samples start at ``k * hop`` (``k = 0, 1, ...``) while they fit in
the signal; if the last of them stops short of the signal's end, one more window ends
exactly there (no zero padding, as in :mod:`demux.chunks`). Every stage of every window
starts its fit from where the same stage of the previous window ended, forgotten by a
factor ``beta`` (``forgetting``):

    theta0(t) = theta_init(t) + beta * (theta_end(t - 1) - theta_init(t - 1))
    Delta(t)  = beta * Delta_end(t - 1) + (1 - beta) * Delta_base

``theta_init`` is the cold start :func:`demux.pipeline.run_stage` would use (each
source at its share of the window's own group power) and ``Delta_base`` the stage's
``fit.radius0``; the dropout rate goes on from where the last fit left it. What is
carried over is what the fit learned *beyond* the data's averages: starting from the
previous window's raw levels instead, a source whose band content changed starts
orders of magnitude off, and a trust region bounded in mask change cannot walk back
in a few steps (the tracking test catches that). ``beta = 1`` keeps all of it,
``beta = 0`` starts every window from its cold start and the recipe's radius.

Stems are cross-faded with the ``sin^2`` ramps of :func:`demux.chunks.crossfade`
(``min(window - hop, window / 2)`` long) and divided by the sum of the weights at
every sample, so they still sum to the mixture. A window's fade-out starts at least
``hop`` samples after its start and the next window starts ``hop`` later, so once
window ``k`` has run, every sample before ``(k + 1) * hop`` is final. The extra last window, which
may start before that point, only weighs in from it on (its weights are zero before).
:func:`stream` and :func:`separate_online` share one engine, :class:`_OnlineRun`, fed
either chunk by chunk or with the whole signal at once: the windows, their inputs and
their order are the same, so their stems are the same numbers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from demux.chunks import ChunkPlan, crossfade
from demux.errors import ParameterError
from demux.pipeline import (
    Separation,
    StageReport,
    WarmStart,
    as_batched,
    group_stems,
    run_stage,
    served_rate,
    unbatch,
)
from demux.recipe import Recipe, check_against_signal, load_recipe


@dataclass
class WindowReport:
    """One window of an online run.

    Attributes:
        start: first sample of the window.
        length: the window's length, samples.
        latency: seconds of compute for the window (every stage, transforms included).
        stages: the window's stage reports, in recipe order.
    """

    start: int
    length: int
    latency: float
    stages: list[StageReport] = field(default_factory=list)


@dataclass
class OnlineResult:
    """The stems of an online run and what each window did.

    Attributes:
        stems: source name -> ``(batch, channel, time)`` (``(channel, time)`` if the input
            had no batch dimension).
        sample_rate: Hz.
        windows: one :class:`WindowReport` per window, in order.
    """

    stems: dict[str, Tensor]
    sample_rate: float
    windows: list[WindowReport] = field(default_factory=list)

    def provenance(self) -> dict:
        """Per-window starts, latencies and stage reports as plain data (for ``demux.json``)."""
        windows = [
            {
                "start_s": w.start / self.sample_rate,
                "length_s": w.length / self.sample_rate,
                "latency_s": w.latency,
                "stages": Separation({}, self.sample_rate, w.stages).provenance()["stages"],
            }
            for w in self.windows
        ]
        return {"sample_rate": self.sample_rate, "windows": windows}


def separate_online(
    signal: Tensor | np.ndarray,
    sample_rate: float,
    recipe: Recipe | str,
    *,
    window: float,
    hop: float,
    seed: int = 0,
    forgetting: float = 0.9,
    device: str | torch.device = "cpu",
) -> OnlineResult:
    """Separate ``signal`` window by window, each window's fit warm-started from the last.

    Args:
        signal: ``(channel, time)`` or ``(batch, channel, time)`` real signal.
        sample_rate: Hz; the recipe must serve it as is (resample first otherwise).
        recipe: a :class:`Recipe` or a built-in name / YAML path.
        window: window length, seconds.
        hop: seconds between window starts, ``0 < hop < window``.
        seed: as in :func:`demux.separate`; every window uses the same seeds.
        forgetting: ``beta`` in ``[0, 1]``, how much of the previous window's fit (its
            parameters beyond their cold start, its final radius) the next window's
            fit starts with (see the module docstring).
        device: where the transforms and the fits run.

    Returns:
        An :class:`OnlineResult` whose stems have the input's shape and sum to it.

    Raises:
        ParameterError: bad ``window``/``hop``/``forgetting``, a sample rate the recipe
            does not serve, or a signal that is not 2-D or 3-D.
    """
    x, unbatched = as_batched(signal)
    windows: list[WindowReport] = []
    run = _OnlineRun(recipe, sample_rate, window=window, hop=hop, seed=seed, forgetting=forgetting, device=device,
                     on_window=windows.append)
    pieces = run.push(x) + run.finish()
    stems = {name: torch.cat([p[name] for p in pieces], dim=-1) for name in pieces[0]}
    return OnlineResult(stems=unbatch(stems, unbatched), sample_rate=float(sample_rate), windows=windows)


def stream(
    chunks: Iterable[Tensor | np.ndarray],
    sample_rate: float,
    recipe: Recipe | str,
    *,
    window: float,
    hop: float,
    seed: int = 0,
    forgetting: float = 0.9,
    device: str | torch.device = "cpu",
    on_window: Callable[[WindowReport], None] | None = None,
) -> Iterator[dict[str, Tensor]]:
    """Separate a signal that arrives in chunks: yield stems as soon as they are final.

    Chunks (any lengths, all with the same leading shape) are buffered; each time a
    window is complete it is fitted and the stems of the samples no later window
    will change (``hop`` of them, ``(k + 1) * hop`` in all after window ``k``) are
    yielded. When ``chunks`` is exhausted the rest is flushed. The concatenated
    output equals :func:`separate_online` on the concatenated input.

    Args:
        chunks: ``(channel, n)`` or ``(batch, channel, n)`` pieces of the signal, in order.
        sample_rate, recipe, window, hop, seed, forgetting, device: see :func:`separate_online`.
        on_window: called with each window's report (latency, stage reports) after it runs.

    Yields:
        source name -> ``(channel, n)`` (or ``(batch, channel, n)``) stems of the next
        ``n`` samples; the yields together cover the whole signal.
    """
    run = _OnlineRun(recipe, sample_rate, window=window, hop=hop, seed=seed, forgetting=forgetting, device=device,
                     on_window=on_window)
    unbatched = None
    for chunk in chunks:
        x, chunk_unbatched = as_batched(chunk)
        if unbatched is None:
            unbatched = chunk_unbatched
        yield from (unbatch(piece, unbatched) for piece in run.push(x))
    yield from (unbatch(piece, bool(unbatched)) for piece in run.finish())


class _OnlineRun:
    """The engine of :func:`stream` and :func:`separate_online`: push samples, collect final stems.

    State, in absolute sample positions: ``_buffer`` holds the input from ``_buffer_start``
    on (from the start of the last window run: the extra last window may reach back
    that far); ``_acc``/``_total`` hold the weighted stems and the summed weights from
    ``_emitted`` (everything before was handed out); ``_pending`` is the last window's
    start and its stems after its first ``hop`` samples, not yet added, because their
    weights depend on whether another window follows.
    """

    def __init__(self, recipe: Recipe | str, sample_rate: float, *, window: float, hop: float, seed: int,
                 forgetting: float, device, on_window):
        self.recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
        if served_rate(self.recipe, sample_rate) != sample_rate:
            raise ParameterError(
                f"online mode runs at the input's rate, and recipe '{self.recipe.name}' does not serve "
                f"{sample_rate:g} Hz: resample the signal to {served_rate(self.recipe, sample_rate):g} Hz first"
            )
        self.size = round(window * sample_rate)
        self.hop = round(hop * sample_rate)
        if not 1 <= self.hop < self.size:
            raise ParameterError(
                f"window={window} s and hop={hop} s must give 1 <= hop < window samples at {sample_rate:g} Hz, "
                f"got hop={self.hop}, window={self.size}"
            )
        if not 0 <= forgetting <= 1:
            raise ParameterError(f"forgetting={forgetting} is not in [0, 1]")
        self.rate = float(sample_rate)
        self.seed, self.forgetting, self.device, self.on_window = seed, forgetting, device, on_window
        self.fade = min(self.size - self.hop, self.size // 2)
        self.shape: tuple[int, int] | None = None  # (batch, channel), fixed by the first chunk
        self._buffer: Tensor | None = None
        self._buffer_start = 0
        self._next = 0  # start of the next regular window
        self._warm: list[tuple[WarmStart, Tensor] | None] = [None] * len(self.recipe.stages)
        self._acc: dict[str, Tensor] = {}
        self._total: Tensor | None = None
        self._emitted = 0
        self._pending: tuple[int, dict[str, Tensor]] | None = None

    def push(self, x: Tensor) -> list[dict[str, Tensor]]:
        """Append ``(batch, channel, n)`` samples; return the stems made final, one dict per window run."""
        if self.shape is None:
            self.shape = tuple(x.shape[:2])
            check_against_signal(self.recipe, self.rate, complex_signal=x.is_complex())
        if tuple(x.shape[:2]) != self.shape:
            raise ParameterError(
                f"chunk of shape {tuple(x.shape)} does not continue a stream of (batch, channel) {self.shape}"
            )
        x = x.to(device=self.device, dtype=torch.complex64 if x.is_complex() else torch.float32)
        self._buffer = x if self._buffer is None else torch.cat([self._buffer, x], dim=-1)
        out = []
        while self._end >= self._next + self.size:
            out.append(self._step(self._next, first=self._next == 0, extra=False))
            self._next += self.hop
        return out

    def finish(self) -> list[dict[str, Tensor]]:
        """The signal is complete: run the extra last window if one is needed, return the rest."""
        if self._buffer is None or self._end == 0:
            raise ParameterError("no samples were given")
        if self._next == 0:  # shorter than a window: one window of its own length
            return [self._step(0, first=True, extra=True, length=self._end)]
        if self._end > self._next - self.hop + self.size:
            return [self._step(self._end - self.size, first=False, extra=True)]
        self._add_pending(last_window=True)
        return [self._emit(self._end)]

    @property
    def _end(self) -> int:
        return self._buffer_start + self._buffer.shape[-1]

    def _step(self, start: int, *, first: bool, extra: bool, length: int | None = None) -> dict[str, Tensor]:
        """Fit the window at ``start``, fold it in and return the stems made final."""
        length = length or self.size
        offset = start - self._buffer_start
        # a fresh allocation, so the window's layout (and so its numbers) does not depend on how it was buffered
        x = self._buffer[..., offset : offset + length].clone(memory_format=torch.contiguous_format)
        stems, report = self._fit(x, start)
        self._add_pending(last_window=False)
        weights = self._weights(length, first=first, last=extra)
        if extra:  # weighs in only where nothing was emitted yet, with a fade-in from there
            skip = self._emitted - start
            self._add({n: s[..., skip:] for n, s in stems.items()}, weights[: length - skip], self._emitted)
            piece = self._emit(start + length)
        else:
            self._add({n: s[..., : self.hop] for n, s in stems.items()}, weights[: self.hop], start)
            self._pending = (start, {n: s[..., self.hop :] for n, s in stems.items()})
            piece = self._emit(start + self.hop)
            self._buffer = self._buffer[..., offset:]
            self._buffer_start = start
        if self.on_window:
            self.on_window(report)
        return piece

    def _fit(self, x: Tensor, start: int) -> tuple[dict[str, Tensor], WindowReport]:
        """Every stage of the recipe on one window ``(batch, channel, length)``, warm-started; its output stems."""
        began = time.perf_counter()
        stems: dict[str, Tensor] = {"mixture": x}
        reports = []
        for index, stage in enumerate(self.recipe.stages):
            parent = stems.pop(stage.split or "mixture")
            out, report = run_stage(stage, parent, self.rate, seed=self.seed + index, recipe_source=self.recipe.source,
                                    warm=functools.partial(self._forget, self._warm[index], stage=stage))
            self._warm[index] = (report.end, report.cold)
            stems.update(out)
            reports.append(report)
        if x.is_cuda:  # kernels run asynchronously: count them in the latency
            torch.cuda.synchronize(x.device)
        return group_stems(self.recipe, stems), WindowReport(start, x.shape[-1], time.perf_counter() - began, reports)

    def _forget(self, previous: tuple[WarmStart, Tensor] | None, initial: Tensor, stage) -> WarmStart | None:
        """The warm start of a stage: what its last fit learned beyond its data, forgotten by ``beta``."""
        if previous is None:
            return None
        end, previous_initial = previous
        if end.theta.shape != initial.shape:  # a window of another length: nothing carries over
            return None
        beta = self.forgetting
        theta = initial + beta * (end.theta - previous_initial)
        return WarmStart(theta, beta * end.radius + (1 - beta) * stage.fit.radius0, end.dropout)

    def _weights(self, length: int, *, first: bool, last: bool) -> Tensor:
        """``(length,)`` cross-fade weights of a window: fade-in unless first, fade-out unless last."""
        if first and last:
            return torch.ones(length, device=self.device)
        # the rows of a three-chunk plan are the three kinds of window: first, inner, last
        rows = crossfade(ChunkPlan(length=3 * length, size=length, overlap=self.fade, starts=(0, length, 2 * length)),
                         device=self.device)
        return rows[2 if last else 0 if first else 1]

    def _add_pending(self, *, last_window: bool) -> None:
        """Fold in the rest of the previous window, now that it is known whether it was the last."""
        if self._pending is None:
            return
        start, stems = self._pending
        weights = self._weights(self.size, first=start == 0, last=last_window)
        self._add(stems, weights[self.hop :], start + self.hop)
        self._pending = None

    def _add(self, stems: dict[str, Tensor], weights: Tensor, start: int) -> None:
        """Accumulate weighted ``stems`` over ``[start, start + n)`` (``start >= _emitted``)."""
        n = weights.shape[0]
        stop = start + n - self._emitted
        grow = stop - (0 if self._total is None else self._total.shape[0])
        if self._total is None:
            self._total = weights.new_zeros(0)
            B, C = self.shape
            self._acc = {name: s.new_zeros(B, C, 0) for name, s in stems.items()}
        if grow > 0:
            self._total = torch.nn.functional.pad(self._total, (0, grow))
            self._acc = {name: torch.nn.functional.pad(a, (0, grow)) for name, a in self._acc.items()}
        lo = start - self._emitted
        self._total[lo:stop] += weights
        for name, s in stems.items():
            self._acc[name][..., lo:stop] += s * weights

    def _emit(self, upto: int) -> dict[str, Tensor]:
        """Hand out the normalised stems of ``[_emitted, upto)`` and drop them from the accumulators."""
        n = upto - self._emitted
        total = self._total[:n]
        piece = {name: a[..., :n] / total for name, a in self._acc.items()}
        self._acc = {name: a[..., n:] for name, a in self._acc.items()}
        self._total = self._total[n:]
        self._emitted = upto
        return piece
