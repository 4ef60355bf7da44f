"""TransformDropout in an ordinary MLP: no dropout vs nn.Dropout vs fixed and controlled
TransformDropout, on a classification task made on the fly.

Task: frames of 256 samples hold one of 8 tones (class ``c``: ``8 + 3c`` cycles per frame,
jittered by up to one cycle, random phase and amplitude, a weaker second harmonic), plus
an interfering tone at a random frequency and white noise. 512 training frames (small on
purpose: regularisation matters), 2048 test frames, both made from a fixed seed.

Model: ``256 -> 256 -> 256 -> 8`` MLP with ReLU; a dropout layer on the input and after
each hidden ReLU (the same three positions and starting rate, p = 0.3, for every
variant). Adam (lr 1e-3), batch 64, the same epochs and seeds for all variants.

``TransformDropout, energy_weight=0`` is the ablation of the energy weighting (every
coefficient dropped with probability p). In ``controlled TransformDropout`` a
:class:`demux.nn.TrustRegionController` steps after every optimiser step: ``loss_after``
is measured on the same batch under the same dropout draw (the seed is replayed: common
random numbers), and the predicted decrease is the first-order one,
``-g . (theta_after - theta_before)``. Its decay is set so that, were every step very
successful, the rates would reach the floor (0.01) at 80% of the run, the end point of
``demux.trust_region.dropout_cap``; the other settings are the controller's defaults.

    .venv/bin/python examples/transform_dropout_mlp.py [--epochs 40] [--seeds 5] [--transform fft]
                                                      [--threads 1] [--output PATH]

Prints a table (final train loss without dropout, test loss and accuracy, seconds; mean
and standard deviation over seeds) and writes it to ``--output``
(default ``examples/results/transform_dropout_mlp.md``, overwritten).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from demux.nn import TransformDropout, TrustRegionController

LENGTH = 256
CLASSES = 8
TRAIN, TEST = 512, 2048
HIDDEN = 256
P0 = 0.3
FLOOR = 0.01
BATCH = 64
LR = 1e-3
#: Fraction of the run by which a controller that decays on every step would reach the
#: floor (as demux.trust_region's annealing schedules do).
ANNEAL_END = 0.8
#: The ablation: transform-domain dropout at the same rate for every coefficient.
UNIFORM = "TransformDropout, energy_weight=0"
RESULTS = Path(__file__).resolve().parent / "results" / "transform_dropout_mlp.md"


def make_frames(n: int, *, seed: int) -> tuple[Tensor, Tensor]:
    """``(n, LENGTH)`` float32 frames and ``(n,)`` int64 labels, as in the module docstring."""
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, generator=g)

    labels = torch.randint(0, CLASSES, (n,), generator=g)
    t = torch.arange(LENGTH) / LENGTH
    f0 = (8 + 3 * labels[:, None]).float() + uniform(-1, 1)
    phase = uniform(0, 2 * math.pi)
    tone = uniform(0.5, 1.5) * torch.sin(2 * math.pi * f0 * t + phase)
    tone = tone + uniform(0, 0.5) * torch.sin(4 * math.pi * f0 * t + 2 * phase)
    interferer = uniform(0, 1) * torch.sin(2 * math.pi * uniform(4, 60) * t + uniform(0, 2 * math.pi))
    noise = torch.randn(n, LENGTH, generator=g)
    return tone + interferer + noise, labels


def mlp(dropout: Callable[[], nn.Module]) -> nn.Sequential:
    """The model, with a fresh ``dropout()`` at the input and after each hidden ReLU."""
    return nn.Sequential(
        dropout(), nn.Linear(LENGTH, HIDDEN), nn.ReLU(),
        dropout(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        dropout(), nn.Linear(HIDDEN, CLASSES),
    )


@dataclass
class Outcome:
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float
    note: str = ""


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy without dropout."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def train(variant: str, *, transform: str, epochs: int, seed: int, data: dict[str, Tensor]) -> Outcome:
    """Train one variant from ``seed`` and score it."""
    torch.manual_seed(seed)
    controller = None
    if variant == "none":
        model = mlp(nn.Identity)
    elif variant == "nn.Dropout":
        model = mlp(lambda: nn.Dropout(P0))
    elif variant == "TransformDropout":
        model = mlp(lambda: TransformDropout(transform, p=P0))
    elif variant == UNIFORM:
        model = mlp(lambda: TransformDropout(transform, p=P0, energy_weight=0.0))
    else:
        steps = epochs * math.ceil(TRAIN / BATCH)
        decay = (FLOOR / P0) ** (1 / (ANNEAL_END * steps))
        controller = TrustRegionController(floor=FLOOR, decay=decay)
        model = mlp(lambda: TransformDropout(transform, p=P0, controller=controller))
    optimiser = torch.optim.Adam(model.parameters(), lr=LR)
    params = list(model.parameters())
    order = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()

    start = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(TRAIN, generator=order).split(BATCH):
            x, y = data["x_train"][batch], data["y_train"][batch]
            draw = int(torch.randint(0, 2**31 - 1, ()))
            torch.manual_seed(draw)
            loss = loss_fn(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            if controller is None:
                optimiser.step()
                continue
            before = [p.detach().clone() for p in params]
            optimiser.step()
            predicted = -sum(float((p.grad * (p.detach() - b)).sum()) for p, b in zip(params, before))
            torch.manual_seed(draw)  # the same dropout draw: rho measures the step, not the noise
            with torch.no_grad():
                after = loss_fn(model(x), y)
            controller.step(loss, after, predicted_decrease=predicted)
    seconds = time.perf_counter() - start

    train_loss, _ = evaluate(model, data["x_train"], data["y_train"])
    test_loss, accuracy = evaluate(model, data["x_test"], data["y_test"])
    note = ""
    if controller is not None:
        rhos = [s.rho for s in controller.trajectory]
        very = sum(r > controller.config.eta2 for r in rhos) / len(rhos)
        rates = ", ".join(f"{r:.3f}" for r in controller.rates())
        half = next((s.step for s in controller.trajectory if max(s.rates) <= P0 / 2), None)
        note = f"final rates {rates}; very successful steps {very:.0%}; rates halved by step {half} of {len(rhos)}"
    return Outcome(train_loss, test_loss, accuracy, seconds, note)


def summarise(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--transform", choices=["fft", "dct", "dwt", "stft"], default="fft")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny ops run slower with more)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown file to write (overwritten)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x_train, y_train = make_frames(TRAIN, seed=1234)
    x_test, y_test = make_frames(TEST, seed=5678)
    data = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    variants = ["none", "nn.Dropout", "TransformDropout", UNIFORM, "controlled TransformDropout"]
    seeds = list(range(args.seeds))

    rows, notes = [], []
    for variant in variants:
        outcomes = [train(variant, transform=args.transform, epochs=args.epochs, seed=s, data=data) for s in seeds]
        rows.append(
            f"| {variant} | {summarise([o.train_loss for o in outcomes], 4)} "
            f"| {summarise([o.test_loss for o in outcomes], 3)} "
            f"| {summarise([100 * o.test_accuracy for o in outcomes], 1)} "
            f"| {summarise([o.seconds for o in outcomes], 1)} |"
        )
        notes += [f"- {variant}, seed {s}: {o.note}" for s, o in zip(seeds, outcomes) if o.note]
        print(rows[-1], flush=True)

    table = "\n".join([
        "| variant | train loss | test loss | test accuracy (%) | seconds |",
        "|---|---|---|---|---|",
        *rows,
    ])
    command = (
        f"examples/transform_dropout_mlp.py --epochs {args.epochs} --seeds {args.seeds} "
        f"--transform {args.transform} --threads {args.threads}"
    )
    setup = (
        f"{TRAIN} training and {TEST} test frames of {LENGTH} samples, {CLASSES} classes; dropout at the input "
        f"and after each hidden layer, p = {P0} to start; Adam lr {LR}, batch {BATCH}, {args.epochs} epochs."
    )
    scoring = (
        f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}. Losses are cross-entropy without "
        f"dropout; seconds are training time only (torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s))."
    )
    report = "\n".join([
        "# TransformDropout in an MLP",
        "",
        f"Generated by `{command}` (see its docstring for the task and model).",
        setup,
        scoring,
        "",
        table,
        "",
        "Controller:",
        "",
        *notes,
        "",
    ])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
