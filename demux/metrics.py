"""Separation quality: SI-SDR, SNR, BSS-Eval v3, and transform-domain diagnostics.

Conventions (all results in dB unless said otherwise):

* ``si_sdr`` and ``snr`` take ``(estimate, reference)`` like torchmetrics and work on
  any ``(..., S, T)`` layout; ``bss_eval`` takes ``(reference, estimate)`` like
  mir_eval and fast_bss_eval, so calls read as in those libraries.
* Silence never crashes a metric: an all-zero reference or estimate gives NaN for
  that source, and a :class:`MetricWarning` says which and why.
* BSS-Eval numbers come from one of two engines: ``"fast"`` (demux's own batched
  BSS-Eval v3, float64, on the input's device; see below) and ``"mir_eval"``
  (``mir_eval.separation``, the reference implementation, one item at a time). They
  agree to about 1e-9 dB on well-conditioned signals. Results carry the engine name
  and version, so reports can state them.
* With a single reference (denoising scored against the clean signal alone) the SIR
  is +inf: there is no other source to interfere. Pass ``[clean, noise]`` as
  references to get a finite SIR and an SAR that does not absorb the noise.

Why an engine of our own rather than fast_bss_eval: both solve the same normal
equations, but fast_bss_eval gets the correlations from one FFT of each whole signal
and a product for every pair of signals (two ``(n_fft / 2, S, S)`` complex arrays,
about 0.5 GB each for 4 sources x 30 s at 44.1 kHz) although only 512 lags are used.
On ``benchmarks/bench_metrics.py`` (that case) this step took 3.4 s of its 4.0 s, and
it was only 8x-12x faster than mir_eval (50-63 s), where the goal is 20x on 2 cores;
with several threads its batched LU solve also fails on torch 2.13's CPU build.
:func:`lagged_correlation` gets exactly those lags block by block (overlap-save, one
small matrix product per frequency) in about 0.6 s, and the whole engine takes 1.4 s
(35x). The systems are solved by Cholesky, or by LU where Cholesky fails (see
:func:`_projection_energy`). The maths is mir_eval's ``_project`` /
``_bss_source_crit``, written as energies of projections:

    p_j(e) = ||P_j e||^2,  p(e) = ||P e||^2,  E = ||e||^2
    SDR = p_j / (E - p_j),  SIR = p_j / (p - p_j),  SAR = p / (E - p)   (as dB)

where ``P_j`` projects on the 512 delayed copies of reference j and ``P`` on those of
all references; ``||P e||^2 = d^T G^-1 d`` with ``G`` the Gram matrix of the delayed
references (Toeplitz blocks of their correlations) and ``d`` their correlations with
the estimate.

Parity has a numerical limit that no engine escapes: where the references have
almost no energy over a wide band (condition numbers of ``G`` beyond about 1e15),
``||P e||^2`` depends on rounding, and mir_eval, fast_bss_eval and this engine
then differ in SIR and SAR (by 2e-4 dB on the benchmark, by dB for references
low-passed by an 8th-order filter); the SDR, from the smaller per-reference
systems, agreed in those cases. Exactly singular systems (references that are
delayed copies of one another) agree to 1e-9 dB.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Literal, get_args

import numpy as np
import torch
from scipy.fft import next_fast_len
from torch import Tensor

from demux.errors import ParameterError

Engine = Literal["fast", "mir_eval"]
Mode = Literal["sources", "images"]

FILTER_LENGTH = 512
"""Length of the BSS-Eval v3 distortion filter, samples (fixed by the definition)."""


class MetricWarning(UserWarning):
    """A metric is undefined for some source (silence) and was reported as NaN."""


def _check_choice(name: str, value: str, allowed) -> None:
    options = get_args(allowed)
    if value not in options:
        raise ParameterError(f"{name}={value!r} is not one of {', '.join(map(repr, options))}")


def _warn(notes: Sequence[str]) -> None:
    if notes:
        warnings.warn("; ".join(notes), MetricWarning, stacklevel=3)


def _ratio_db(num: Tensor, den: Tensor, eps: float) -> Tensor:
    # Flooring the error energy at eps * signal energy caps a perfect estimate at
    # -10 log10(eps) dB instead of +inf, and keeps the ratio scale-invariant.
    return 10 * torch.log10(num / torch.maximum(den, eps * num))


def _silence_nan(value: Tensor, estimate: Tensor, reference: Tensor, what: str) -> Tensor:
    silent_ref = (reference == 0).all(dim=-1)
    silent_est = (estimate == 0).all(dim=-1)
    notes = []
    if bool(silent_ref.any()):
        notes.append(f"{what}: {int(silent_ref.sum())} silent reference(s) give NaN")
    if bool(silent_est.any()):
        notes.append(f"{what}: {int(silent_est.sum())} all-zero estimate(s) give NaN")
    _warn(notes)
    return value.masked_fill(silent_ref | silent_est, float("nan"))


def _energy(x: Tensor, *, keepdim: bool = False) -> Tensor:
    """``sum |x|^2`` over the last axis, real for real or complex ``x``."""
    return (x.real.square() + x.imag.square() if x.is_complex() else x.square()).sum(dim=-1, keepdim=keepdim)


def si_sdr(
    estimate: Tensor, reference: Tensor, *, zero_mean: bool = False, eps: float = 1e-8
) -> Tensor:
    """Scale-invariant SDR (Le Roux et al. 2019), dB.

    ``10 log10(||a r||^2 / ||e - a r||^2)`` with ``a = <e, r> / ||r||^2``. For complex
    (I/Q) signals ``<e, r> = sum e conj(r)``, so a complex gain (a phase rotation too)
    costs nothing.

    Args:
        estimate: ``(..., S, T)`` estimated sources.
        reference: ``(..., S, T)`` reference sources (broadcastable with ``estimate``).
        zero_mean: subtract each signal's mean first (asteroid's convention).
        eps: the error energy is floored at ``eps`` times the target energy, so a
            perfect estimate scores ``-10 log10(eps)`` dB (80 dB by default).

    Returns:
        ``(..., S)`` SI-SDR in dB; NaN (with a :class:`MetricWarning`) where the
        reference is silent or the estimate is all zeros. Differentiable elsewhere.
    """
    if zero_mean:
        estimate = estimate - estimate.mean(dim=-1, keepdim=True)
        reference = reference - reference.mean(dim=-1, keepdim=True)
    estimate, reference = torch.broadcast_tensors(estimate, reference)
    ref_energy = _energy(reference, keepdim=True)
    tiny = torch.finfo(ref_energy.dtype).tiny
    scale = (estimate * reference.conj()).sum(dim=-1, keepdim=True) / ref_energy.clamp_min(tiny)
    target = scale * reference
    value = _ratio_db(_energy(target), _energy(estimate - target), eps)
    return _silence_nan(value, estimate, reference, "si_sdr")


def snr(estimate: Tensor, reference: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Signal-to-noise ratio ``10 log10(||r||^2 / ||r - e||^2)``, dB (not scale-invariant).

    Args:
        estimate: ``(..., S, T)`` estimated sources.
        reference: ``(..., S, T)`` reference sources (broadcastable with ``estimate``).
        eps: the error energy is floored at ``eps`` times the reference energy.

    Returns:
        ``(..., S)`` SNR in dB; NaN (with a :class:`MetricWarning`) where the
        reference is silent or the estimate is all zeros.
    """
    estimate, reference = torch.broadcast_tensors(estimate, reference)
    value = _ratio_db((reference * reference).sum(dim=-1), ((reference - estimate) ** 2).sum(dim=-1), eps)
    return _silence_nan(value, estimate, reference, "snr")


@dataclass(frozen=True)
class BssEvalResult:
    """BSS-Eval v3 scores, indexed by reference source.

    Shapes: ``(..., S)`` for whole signals, ``(..., S, n_frames)`` framewise, where
    ``...`` are the batch dimensions of the input.

    Attributes:
        sdr: source-to-distortion ratio, dB.
        sir: source-to-interference ratio, dB (+inf with one reference).
        sar: source-to-artifacts ratio, dB.
        permutation: ``int64``; ``permutation[..., j]`` is the estimate scored
            against reference ``j`` (the identity when no permutation was searched).
        isr: image-to-spatial distortion ratio, dB (``mode="images"`` only).
        engine: ``"fast"`` or ``"mir_eval"``.
        engine_version: version of the engine that computed the scores.
        mode: ``"sources"`` or ``"images"``.
        window: frame length in samples when framewise, else ``None``.
        hop: frame hop in samples when framewise, else ``None``.
        notes: why some values are NaN or infinite, and other caveats.
    """

    sdr: Tensor
    sir: Tensor
    sar: Tensor
    permutation: Tensor
    isr: Tensor | None
    engine: str
    engine_version: str
    mode: str
    window: int | None = None
    hop: int | None = None
    notes: tuple[str, ...] = ()


FAST_ENGINE_VERSION = "demux-bss 1 (float64)"
"""Version of the ``"fast"`` engine; bump it when its numbers may change."""

_CHUNK_BYTES = 1 << 28
"""The fast engine scores items in chunks whose Gram matrices and spectra take about this much memory."""


def engine_version(engine: Engine) -> str:
    """Version of ``engine``: :data:`FAST_ENGINE_VERSION`, or mir_eval's package version."""
    _check_choice("engine", engine, Engine)
    return FAST_ENGINE_VERSION if engine == "fast" else version("mir_eval")


def lagged_correlation(x: Tensor, y: Tensor, *, lags: int, block: int = 16384) -> Tensor:
    """Linear cross-correlations at lags ``0 .. lags - 1``, block by block.

    ``C[..., k, a, b] = sum_n x[..., a, n] * y[..., b, n + k]`` (``y`` is zero past its
    end), i.e. ``np.correlate(y_b, x_a, "full")[T - 1 + k]``. Each block of ``x`` is
    correlated with the stretch of ``y`` it can reach (overlap-save), so the FFTs are
    ``n_fft = next_fast_len(block + lags - 1)`` long whatever ``T`` is, and the blocks
    are summed in the frequency domain by one ``(A, n_blocks) @ (n_blocks, B)``
    product per frequency.

    Args:
        x: ``(..., A, T)`` real signals.
        y: ``(..., B, T)`` real signals, same dtype and device.
        lags: number of non-negative lags, ``>= 1``.
        block: samples of ``x`` per block (shortened to ``T`` for short signals).

    Returns:
        ``(..., lags, A, B)`` correlations, dtype of the inputs.
    """
    if lags < 1 or block < 1:
        raise ParameterError(f"{lags=} and {block=} must be integers >= 1")
    T = x.shape[-1]
    n_fft = next_fast_len(min(T, block) + lags - 1, real=True)
    hop = n_fft - lags + 1  # the block length that fills the FFT exactly
    n_blocks = -(-T // hop)
    x_blocks = torch.nn.functional.pad(x, (0, n_blocks * hop - T)).unflatten(-1, (n_blocks, hop))
    y_spans = torch.nn.functional.pad(y, (0, n_blocks * hop + lags - 1 - T)).unfold(-1, n_fft, hop)
    # (..., F, A, n_blocks) @ (..., F, n_blocks, B); contiguous first, since batched
    # matmul on the strided views is tens of times slower.
    X = torch.fft.rfft(x_blocks, n=n_fft).movedim(-1, -3).conj().contiguous()
    Y = torch.fft.rfft(y_spans, n=n_fft).movedim(-1, -3).transpose(-1, -2).contiguous()
    return torch.fft.irfft(X @ Y, n=n_fft, dim=-3)[..., :lags, :, :]


def _gram(corr: Tensor) -> Tensor:
    """Gram matrix of the delayed references from their correlations.

    Args:
        corr: ``(..., L, S, S)``, ``corr[k, a, b] = sum_n r_a[n] r_b[n + k]``.

    Returns:
        ``(..., S * L, S * L)``: entry ``(a * L + k, b * L + l)`` is ``<r_a delayed by k,
        r_b delayed by l> = corr[k - l, a, b]``, negative lags read from the transpose.
    """
    L, S = corr.shape[-3:-1]
    both = torch.cat([corr[..., 1:, :, :].flip(-3).transpose(-1, -2), corr], dim=-3)  # lags 1-L .. L-1
    k = torch.arange(L, device=corr.device)
    s = torch.arange(S, device=corr.device)
    lag = (k[:, None] - k[None, :] + L - 1)[None, :, None, :]  # (1, L, 1, L)
    gram = both[..., lag, s[:, None, None, None], s[None, None, :, None]]  # (..., S, L, S, L)
    return gram.flatten(-4, -3).flatten(-2, -1)


def _projection_energy(gram: Tensor, rhs: Tensor) -> Tensor:
    """``d^T G^-1 d`` for each column ``d`` of ``rhs``: the energy of a projection.

    Cholesky ``G = C C^T`` (batched) gives ``||C^-1 d||^2``. Gram matrices that are
    singular in floating point (references that are delayed copies of one another;
    band-limited ones: eigenvalues of -1e-14 next to 80 on the benchmark) fail it;
    those are solved by LU as mir_eval does (``np.linalg.solve``) and, where LU meets
    an exactly zero pivot, by the pseudo-inverse, as mir_eval falls back to least
    squares.

    Args:
        gram: ``(..., n, n)`` symmetric positive semi-definite.
        rhs: ``(..., n, m)`` in the range of ``gram``.

    Returns:
        ``(..., m)`` energies, ``>= 0``.
    """
    chol, info = torch.linalg.cholesky_ex(gram)
    energy = torch.linalg.solve_triangular(chol, rhs, upper=False).square().sum(dim=-2)
    n, m = rhs.shape[-2:]
    flat_gram, flat_rhs, flat_energy = gram.reshape(-1, n, n), rhs.reshape(-1, n, m), energy.view(-1, m)
    # One matrix at a time: batched LU on the CPU with several threads returns wrong
    # solutions or raises (torch 2.13 with MKL), while single matrices are right.
    for i in (info.flatten() != 0).nonzero().flatten().tolist():
        flat_energy[i] = _lu_energy(flat_gram[i], flat_rhs[i])
    return energy.clamp_min(0)


def _lu_energy(gram: Tensor, rhs: Tensor) -> Tensor:
    """``d^T G^-1 d`` for ``(n, n)`` ``gram`` and ``(n, m)`` ``rhs`` by LU, else by the pseudo-inverse."""
    solution, info = torch.linalg.solve_ex(gram, rhs)
    if int(info) == 0:
        return (rhs * solution).sum(dim=0)
    values, vectors = torch.linalg.eigh(gram)
    inverse = torch.where(values > values[-1] * len(values) * torch.finfo(gram.dtype).eps, 1 / values, 0.0)
    return ((vectors.T @ rhs).square() * inverse[:, None]).sum(dim=0)


def _ratio_or_inf(num: Tensor, den: Tensor) -> Tensor:
    # mir_eval's _safe_db: no residual energy is +inf dB; rounding can make the
    # difference of two energies slightly negative where it is zero.
    return torch.where(den > 0, 10 * torch.log10(num / den), float("inf"))


def bss_eval_pairs(reference: Tensor, estimate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """BSS-Eval v3 scores of every estimate against every reference (mir_eval's sources mode).

    The distortion filters have :data:`FILTER_LENGTH` taps, as in
    ``mir_eval.separation.bss_eval_sources``; the module docstring gives the formulas.

    Args:
        reference: ``(N, S, T)`` float64 references, none all-zero.
        estimate: ``(N, J, T)`` float64 estimates, none all-zero, same device.

    Returns:
        ``sdr, sir, sar``, each ``(N, S, J)`` in dB: entry ``[n, a, j]`` scores
        estimate ``j`` as an estimate of reference ``a``.
    """
    S, L = reference.shape[1], FILTER_LENGTH
    # Unit-norm signals: the ratios are scale-free, and float64 then never over- or
    # underflows in the correlations.
    reference = reference / torch.linalg.vector_norm(reference, dim=-1, keepdim=True)
    estimate = estimate / torch.linalg.vector_norm(estimate, dim=-1, keepdim=True)
    corr = lagged_correlation(reference, torch.cat([reference, estimate], dim=1), lags=L)  # (N, L, S, S + J)
    gram = _gram(corr[..., :S])  # (N, S * L, S * L)
    cross = corr[..., S:].movedim(-3, -2)  # (N, S, L, J): <r_a delayed by k, e_j>
    blocks = gram.unflatten(-1, (S, L)).unflatten(-3, (S, L)).diagonal(dim1=-4, dim2=-2)  # (N, L, L, S)
    own = _projection_energy(blocks.movedim(-1, 1), cross)  # (N, S, J): on reference a alone
    full = _projection_energy(gram, cross.flatten(1, 2))[:, None, :]  # (N, 1, J): on all references
    energy = estimate.square().sum(dim=-1)[:, None, :]  # (N, 1, J)
    sdr = _ratio_or_inf(own, energy - own)
    sir = _ratio_or_inf(own, full - own)
    sar = _ratio_or_inf(full, energy - full).expand_as(sdr)
    return sdr, sir, sar


_EXHAUSTIVE_SOURCES = 8
"""Up to this many sources, every permutation is tried (mir_eval's search and tie-break)."""


def best_permutation(sir: Tensor) -> Tensor:
    """The estimate order that maximises the mean SIR, as mir_eval chooses it.

    Up to :data:`_EXHAUSTIVE_SOURCES` sources every permutation is scored in
    ``itertools.permutations`` order and the first best wins, exactly as in mir_eval;
    beyond that the Hungarian algorithm finds a best one (ties may resolve differently).

    Args:
        sir: ``(N, S, S)`` SIR in dB of estimate ``j`` against reference ``a`` at ``[n, a, j]``.

    Returns:
        ``(N, S)`` int64 on ``sir``'s device; ``perm[n, a]`` is the estimate for reference ``a``.
    """
    S = sir.shape[-1]
    if S <= _EXHAUSTIVE_SOURCES:
        perms = torch.tensor(list(itertools.permutations(range(S))), device=sir.device)  # (P, S)
        mean_sir = sir[:, torch.arange(S, device=sir.device), perms].mean(dim=-1)  # (N, P)
        return perms[mean_sir.argmax(dim=-1)]
    from scipy.optimize import linear_sum_assignment

    finite = torch.nan_to_num(sir, posinf=1e6, neginf=-1e6).cpu().numpy()
    cols = [linear_sum_assignment(item, maximize=True)[1] for item in finite]
    return torch.from_numpy(np.stack(cols)).to(sir.device)


def _fast_sources(ref: Tensor, est: Tensor, permute: bool) -> tuple[Tensor, ...]:
    """``(N, S, T)`` items -> ``sdr, None, sir, sar, perm``, each ``(N, S)``, on the input's device."""
    N, S, T = ref.shape
    # float64 Gram matrix, plus complex128 spectra of 3S signals (references twice)
    item_bytes = 8 * (S * FILTER_LENGTH) ** 2 + 16 * 3 * S * T
    chunk = max(1, _CHUNK_BYTES // item_bytes)
    chunks = [bss_eval_pairs(r, e) for r, e in zip(ref.split(chunk), est.split(chunk))]
    pairs = [torch.cat(parts) for parts in zip(*chunks)]  # sdr, sir, sar: (N, S, S)
    if permute:
        perm = best_permutation(pairs[1])
    else:
        perm = torch.arange(S, device=ref.device).expand(N, S)
    sdr, sir, sar = (score.gather(-1, perm[..., None])[..., 0] for score in pairs)
    return sdr, None, sir, sar, perm


def _mir_eval_items(ref: Tensor, est: Tensor, permute: bool, mode: Mode) -> tuple[Tensor, ...]:
    from mir_eval import separation

    results = []
    with warnings.catch_warnings():
        # mir_eval 0.8 marks its separation module deprecated on every call; we
        # pin < 0.9 in pyproject.toml and use it as the reference on purpose.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for r, e in zip(ref.cpu().numpy(), est.cpu().numpy()):
            if mode == "images":
                # mir_eval's images layout is (nsrc, nsampl, nchan)
                sdr, isr, sir, sar, perm = separation.bss_eval_images(
                    r.transpose(0, 2, 1), e.transpose(0, 2, 1), compute_permutation=permute
                )
            else:
                sdr, sir, sar, perm = separation.bss_eval_sources(r, e, compute_permutation=permute)
                isr = np.full_like(sdr, np.nan)
            results.append(np.stack([sdr, isr, sir, sar, np.asarray(perm, dtype=np.float64)]))
    stacked = torch.from_numpy(np.stack(results))
    sdr, isr, sir, sar, perm = stacked.unbind(dim=1)
    return sdr, (isr if mode == "images" else None), sir, sar, perm.long()


def _engine(ref: Tensor, est: Tensor, *, engine: Engine, mode: Mode, permute: bool) -> tuple[Tensor, ...]:
    """Scores of ``(N, S, T)`` (sources) or ``(N, S, C, T)`` (images) float64 items without silence."""
    permute = permute and ref.shape[1] > 1  # one source: nothing to permute
    if engine == "fast":
        return _fast_sources(ref, est, permute)
    return _mir_eval_items(ref, est, permute, mode)


def _score_items(ref: Tensor, est: Tensor, *, engine: Engine, mode: Mode, permutation: bool):
    """Score ``(N, S, [C,] T)`` items; silent sources become NaN instead of an error.

    Items without silence go to the engine in one batch. In an item with a silent
    reference that reference is left out (a zero vector adds nothing to the span the
    estimates are projected on, but makes the engines' systems singular); an
    all-zero estimate is replaced by its reference, which changes no other source's
    score when no permutation is searched, and then reported as NaN.
    """
    N, S = ref.shape[:2]
    signal_dims = tuple(range(2, ref.ndim))
    silent_ref = (ref == 0).all(dim=signal_dims).cpu()
    silent_est = (est == 0).all(dim=signal_dims).cpu()
    dirty = silent_ref.any(dim=1) | silent_est.any(dim=1)
    out = [torch.full((N, S), float("nan"), dtype=torch.float64) for _ in range(4)]
    perm = torch.arange(S).repeat(N, 1)
    notes = []
    clean = (~dirty).nonzero().flatten()
    if len(clean):
        scores = _engine(ref[clean], est[clean], engine=engine, mode=mode, permute=permutation)
        for target, value in zip(out, scores[:4]):
            if value is not None:
                target[clean] = value.to('cpu', torch.float64)
        perm[clean] = scores[4].long().cpu()
    for n in dirty.nonzero().flatten().tolist():
        keep = (~silent_ref[n]).nonzero().flatten()
        if len(keep):
            r = ref[n, keep]
            e = torch.where(silent_est[n, keep].to(ref.device).view(-1, *[1] * (ref.ndim - 2)), r, est[n, keep])
            scores = _engine(r[None], e[None], engine=engine, mode=mode, permute=False)
            for target, value in zip(out, scores[:4]):
                if value is not None:
                    target[n, keep] = value[0].to('cpu', torch.float64)
        for target in out:
            target[n] = target[n].masked_fill(silent_ref[n] | silent_est[n], float("nan"))
    if bool(silent_ref.any()):
        notes.append(f"bss_eval: {int(silent_ref.sum())} silent reference(s) scored NaN")
    if bool(silent_est.any()):
        notes.append(f"bss_eval: {int(silent_est.sum())} all-zero estimate(s) scored NaN")
    if permutation and bool(dirty.any()) and S > 1:
        notes.append(
            f"bss_eval: no permutation searched for {int(dirty.sum())} item(s) with silent sources "
            "(needs every source non-silent); identity order used"
        )
    sdr, isr, sir, sar = out
    return sdr, (isr if mode == "images" else None), sir, sar, perm, notes


def _frames(x: Tensor, window: int, hop: int) -> Tensor:
    """``(N, S, [C,] T)`` -> ``(N * n_frames, S, [C,] window)``, mir_eval's framing."""
    framed = x.unfold(-1, window, hop)  # (N, S, [C,] n_frames, window)
    framed = framed.movedim(-2, 1)  # (N, n_frames, S, [C,] window)
    return framed.reshape(-1, *framed.shape[2:])


def bss_eval(
    reference: Tensor,
    estimate: Tensor,
    *,
    engine: Engine = "fast",
    mode: Mode = "sources",
    permutation: bool = True,
    window: int | None = None,
    hop: int | None = None,
) -> BssEvalResult:
    """BSS-Eval v3 SDR/SIR/SAR (and ISR for images), optionally framewise.

    ``mode="sources"`` is mir_eval's ``bss_eval_sources``: each estimate is projected
    on the span of all references delayed by up to 511 samples. ``mode="images"`` is
    ``bss_eval_images`` for multichannel sources (mir_eval engine only: the fast
    engine implements the sources variant). To score multichannel stems with the fast
    engine, put channels in the batch: ``reference.movedim(-2, 0)`` on ``(S, C, T)``.

    Args:
        reference: ``(..., S, T)`` for sources, ``(..., S, C, T)`` for images;
            leading dimensions are a batch, e.g. ``(B, S, T)``.
        estimate: same shape as ``reference``.
        engine: ``"fast"`` (demux's batched engine; runs on the input's device) or
            ``"mir_eval"`` (on the CPU).
        mode: ``"sources"`` or ``"images"``.
        permutation: search the estimate order that maximises the mean SIR
            (mir_eval's default); ``False`` when stems are labelled.
        window: frame length in samples for framewise scores (with ``hop``); frames
            are ``[k*hop, k*hop + window)`` as in mir_eval, and fewer than two frames
            fall back to one whole-signal frame, as mir_eval does.
        hop: frame hop in samples.

    Returns:
        A :class:`BssEvalResult`; scores ``(..., S)``, or ``(..., S, n_frames)`` when
        framewise, float64 on the CPU. Inputs are cast to float64. Silent references
        and all-zero estimates give NaN for that source and a :class:`MetricWarning`.

    Raises:
        ParameterError: unknown engine or mode, shapes that differ or are too short
            (under 512 samples, the distortion filter length), non-finite values,
            ``window`` without ``hop``, or images with the fast engine.
    """
    _check_choice("engine", engine, Engine)
    _check_choice("mode", mode, Mode)
    if mode == "images" and engine == "fast":
        raise ParameterError(
            "mode='images' needs engine='mir_eval' (the fast engine has no images variant); "
            "or score channels separately with mode='sources' and channels as a batch"
        )
    min_ndim = 3 if mode == "images" else 2
    if reference.shape != estimate.shape or reference.ndim < min_ndim:
        layout = "(..., S, C, T)" if mode == "images" else "(..., S, T)"
        raise ParameterError(
            f"reference {tuple(reference.shape)} and estimate {tuple(estimate.shape)} must have "
            f"the same {layout} shape"
        )
    if (window is None) != (hop is None):
        raise ParameterError(f"give both window and hop for framewise scores, or neither ({window=}, {hop=})")
    if hop is not None and (int(hop) != hop or hop < 1 or int(window) != window or window < 1):
        raise ParameterError(f"{window=} and {hop=} must be integers >= 1")
    length = reference.shape[-1] if window is None else min(window, reference.shape[-1])
    if length < FILTER_LENGTH:
        raise ParameterError(
            f"signals (or frames) of {length} samples are shorter than the {FILTER_LENGTH}-sample "
            "BSS-Eval v3 distortion filter; use longer signals or a larger window"
        )
    ref = reference.detach().to(torch.float64)
    est = estimate.detach().to(torch.float64)
    if not (torch.isfinite(ref).all() and torch.isfinite(est).all()):
        raise ParameterError("reference and estimate must be finite (found NaN or Inf)")

    batch = ref.shape[: ref.ndim - min_ndim]
    item = ref.shape[ref.ndim - min_ndim :]
    ref = ref.reshape(-1, *item)
    est = est.reshape(-1, *item)
    n_frames = None
    if window is not None:
        n_frames = (ref.shape[-1] - window) // hop + 1 if ref.shape[-1] >= window else 0
        if n_frames >= 2:
            ref, est = _frames(ref, window, hop), _frames(est, window, hop)
        else:
            n_frames = 1  # mir_eval: fewer than two frames -> the whole signal
    sdr, isr, sir, sar, perm, notes = _score_items(ref, est, engine=engine, mode=mode, permutation=permutation)

    def shape(x: Tensor) -> Tensor:
        if n_frames is None:
            return x.reshape(*batch, x.shape[-1])
        return x.reshape(*batch, n_frames, x.shape[-1]).movedim(-2, -1)

    _warn(notes)  # so far only silence notes: values the caller should not trust blindly
    if item[0] == 1:
        notes.append("one reference: SIR is +inf; for denoising pass [clean, noise] as references")
    return BssEvalResult(
        sdr=shape(sdr),
        sir=shape(sir),
        sar=shape(sar),
        permutation=shape(perm),
        isr=None if isr is None else shape(isr),
        engine=engine,
        engine_version=engine_version(engine),
        mode=mode,
        window=window,
        hop=hop,
        notes=tuple(notes),
    )


def _energy_per_source(x: Tensor) -> Tensor:
    """``(S, ...)`` -> ``(S,)`` energy, for real or complex coefficients."""
    return (x.abs() ** 2).reshape(x.shape[0], -1).sum(dim=1)


def _check_sources_like(coeffs: Tensor, other: Tensor, name: str) -> None:
    try:
        torch.broadcast_shapes(coeffs.shape, other.shape)
    except RuntimeError:
        raise ParameterError(
            f"{name} {tuple(other.shape)} must broadcast with coeffs_sources {tuple(coeffs.shape)} "
            "(both (S, ...), source first)"
        ) from None
    if coeffs.ndim < 1 or other.shape[0] != coeffs.shape[0]:
        raise ParameterError(f"{name} has {other.shape[0]} sources but coeffs_sources has {coeffs.shape[0]}")


def transform_sir(coeffs_sources: Tensor, masks: Tensor) -> Tensor:
    """SIR of masked outputs measured in the transform domain, dB.

    The output for source s is ``m_s * sum_s' c_s'``; its target part is
    ``m_s * c_s`` and its interference is ``m_s * sum_{s' != s} c_s'`` (a coherent
    sum, as it is in the output). ``SIR_s = 10 log10(||m_s c_s||^2 / ||m_s sum_{s'!=s} c_s'||^2)``.

    Args:
        coeffs_sources: ``(S, ...)`` transform coefficients of each true source
            (real or complex), e.g. ``(S, C, F, N)`` for an STFT.
        masks: ``(S, ...)`` keep masks in [0, 1], broadcastable with ``coeffs_sources``.

    Returns:
        ``(S,)`` SIR in dB: +inf where no interference passes, NaN (with a
        :class:`MetricWarning`) where the masked target has no energy.
    """
    _check_sources_like(coeffs_sources, masks, "masks")
    interference = coeffs_sources.sum(dim=0, keepdim=True) - coeffs_sources
    target = _energy_per_source(masks * coeffs_sources)
    leak = _energy_per_source(masks * interference)
    value = 10 * torch.log10(target / leak)
    empty = target == 0
    if bool(empty.any()):
        _warn([f"transform_sir: source(s) {empty.nonzero().flatten().tolist()} keep no energy; NaN"])
    return value.masked_fill(empty, float("nan"))


def leakage(coeffs_sources: Tensor, drop_probs: Tensor) -> Tensor:
    """Cross-source energy leakage through the masks, a share in [0, 1].

    ``L[s, s'] = ||c_s * (1 - p_s')||^2 / ||c_s||^2``: the share of source s's energy
    that the KEEP mask ``1 - p_s'`` of stem s' lets through, i.e. how much of s ends up
    in stem s'. Row s says where source s goes; the diagonal is the share that stays
    in its own stem, off-diagonal entries are leaks (ideal: identity). With softmax
    masks the keep masks sum to one across stems, yet the energies of a row sum to at
    most one (``sum_s' m_s'^2 <= 1``).

    Args:
        coeffs_sources: ``(S, ...)`` transform coefficients of each true source.
        drop_probs: ``(S, ...)`` drop probabilities ``p = 1 - m`` of each stem,
            broadcastable with ``coeffs_sources``.

    Returns:
        ``(S, S)`` leakage shares; row s is NaN (with a :class:`MetricWarning`) when
        source s has no energy.
    """
    _check_sources_like(coeffs_sources, drop_probs, "drop_probs")
    keep = 1 - drop_probs
    S = coeffs_sources.shape[0]
    # (S, 1, ...) * (1, S, ...): source s seen through the keep mask of stem s'
    passed = (coeffs_sources.unsqueeze(1) * keep.unsqueeze(0)).abs() ** 2
    passed = passed.reshape(S, S, -1).sum(dim=-1)
    energy = _energy_per_source(coeffs_sources)
    silent = energy == 0
    if bool(silent.any()):
        _warn([f"leakage: source(s) {silent.nonzero().flatten().tolist()} are silent; NaN rows"])
    return (passed / energy.clamp_min(torch.finfo(passed.dtype).tiny)[:, None]).masked_fill(
        silent[:, None], float("nan")
    )


def trust_region_stability(trajectory: Mapping[str, Sequence]) -> float:
    """Share of accepted trust-region steps whose RMS mask change stayed within the radius.

    Args:
        trajectory: the ``trajectory`` of a ``demux.json``: lists indexed by step, each
            entry a per-item list (or a scalar for one item). Uses ``mask_change``
            (RMS mask change of the step), ``radius`` (the radius the step was
            proposed under) and ``accepted``.

    Returns:
        A share in [0, 1] over all (step, item) pairs that were accepted; NaN (with a
        :class:`MetricWarning`) when no step was accepted.

    Raises:
        ParameterError: a key is missing or the lists disagree in shape.
    """
    missing = [key for key in ("mask_change", "radius", "accepted") if key not in trajectory]
    if missing:
        raise ParameterError(f"trajectory lacks {', '.join(missing)} (expected per-step lists)")
    change = np.asarray(trajectory["mask_change"], dtype=np.float64)
    radius = np.asarray(trajectory["radius"], dtype=np.float64)
    accepted = np.asarray(trajectory["accepted"], dtype=bool)
    if not change.shape == radius.shape == accepted.shape:
        raise ParameterError(
            f"trajectory lists differ in shape: mask_change {change.shape}, radius {radius.shape}, "
            f"accepted {accepted.shape}"
        )
    if not accepted.any():
        _warn(["trust_region_stability: no accepted step; NaN"])
        return float("nan")
    return float((change[accepted] <= radius[accepted]).mean())
