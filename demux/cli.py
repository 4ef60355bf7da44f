"""The ``demux`` command line: parses, calls the library, prints.

Heavy modules are imported inside commands so ``demux --help`` stays instant.
Every :class:`demux.errors.DemuxError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path

import typer

app = typer.Typer(
    help="Separate mixed signals into their sources with prior-informed transform-domain masks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        from demux import __version__

        typer.echo(f"demux {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
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

# --------------------------------------------------------------------------- separate


@app.command()
@user_errors
def separate(
    inputs: list[Path] = typer.Argument(..., help="Files, folders (recursive) or globs to separate."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="Built-in recipe name or a YAML file."),
    out: Path = typer.Option(Path("separated"), "--out", "-o", help="Output folder: OUT/<track>/<source>.<ext>."),
    params: Path = typer.Option(
        None, "--params", help="Learned offsets from `demux train` (safetensors) for this recipe."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: stage.sources.voice.band.lo=80."),
    seed: int = typer.Option(0, "--seed", help="Fixes every random draw: same input, recipe and seed, same stems."),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu or cuda."),
    fmt: str = typer.Option(None, "--format", help="wav, flac or npy (default: the input's format, else wav)."),
    rate: float = typer.Option(None, "--rate", help="Sample rate in Hz for inputs that carry none (.npy, raw IQ)."),
    jobs: int = typer.Option(
        1, "--jobs", "-j", help="Items (groups of them with --batch-size) separated side by side, in worker processes."
    ),
    segment: float = typer.Option(
        30.0, "--segment", help="Read, separate and write inputs in chunks of this many seconds (at most 2^20 samples "
        "per channel), cross-faded (memory stays flat however long the file); 0: the whole file at once."
    ),
    overlap: float = typer.Option(0.1, "--overlap", help="The chunks' overlap, a fraction of --segment (0 to 0.5)."),
    batch_size: int = typer.Option(
        1, "--batch-size", help="Chunks fitted together as one batch: of one input, or in a batch of up to this "
        "many inputs of one length, each group one unit of --jobs or --scheduler work, so the stems do not depend "
        "on them (more pays off on a GPU; demux.json says batched_with)."
    ),
    online: bool = typer.Option(False, "--online", help="Slide warm-started fits over windows (needs --window, --hop)."),
    window: float = typer.Option(None, "--window", help="Online window, seconds."),
    hop: float = typer.Option(None, "--hop", help="Online hop between windows, seconds."),
    scheduler: str = typer.Option(
        None, "--scheduler", help="Dask scheduler (tcp://HOST:PORT) to run each item (or --batch-size group) on, "
        "or 'local' for --jobs local workers."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing stems (else a batch skips complete items)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
) -> None:
    """Separate files into one stem per source, with provenance in OUT/<track>/demux.json.

    In a batch (a folder, a glob or several files) complete items are skipped, a
    failing item does not stop the others, and the exit code is 1 if any failed.
    With --scheduler the items run on a Dask cluster (pip install 'demux[distributed]'),
    whose workers must see the inputs and OUT at the same paths.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from demux.batch import Options, plan, run
    from demux.errors import ParameterError
    from demux.recipe import load_recipe

    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ParameterError(f"--device {device}: no CUDA device is available here")
    if online and (window is None or hop is None):
        raise ParameterError("--online needs --window and --hop (seconds)")
    if not online and (window is not None or hop is not None):
        raise ParameterError("--window and --hop are for --online")
    options = Options(out=out, seed=seed, device=device, format=fmt, rate=rate, overwrite=overwrite, overrides=tuple(set_),
                      segment=None if online else segment, overlap=overlap, batch_size=batch_size,
                      online=(window, hop) if online else None)
    resolved = load_recipe(recipe, set_)
    if params is not None:
        from demux.train import apply_params

        resolved = apply_params(resolved, params)
    items, batch = plan(inputs, resolved, out)
    console = Console(stderr=True, quiet=quiet)
    errors = Console(stderr=True) if quiet else console  # with --quiet there is no progress bar to share
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("separating", total=len(items))

        def on_stage(item, name: str) -> None:
            progress.update(task, description=f"{item.track}: stage {name}")

        def on_result(result) -> None:
            progress.advance(task)
            for warning in result.warnings:
                console.print(f"[yellow]warning[/yellow] {warning}", highlight=False, soft_wrap=True)
            if result.status == "failed":
                errors.print(f"[red]failed[/red] {result.message}", highlight=False, soft_wrap=True)

        results = run(items, resolved, options, batch=batch, jobs=jobs, scheduler=scheduler, on_stage=on_stage,
                      on_result=on_result)
    console.print(_results_table(results, f"demux separate --recipe {resolved.name} -> {out}"))
    for line in _found_summary(results):
        console.print(line, highlight=False, soft_wrap=True)
    failed = sum(r.status == "failed" for r in results)
    if failed:
        typer.echo(f"demux: {failed} of {len(results)} items failed", err=True)
        raise typer.Exit(1)


def _found_summary(results) -> list[str]:
    """One line per separated item whose priors found something in it (directions, beats, lines...),
    read back from its demux.json: ``track: stage.source key=value ...``; of a chunked or online
    run, the first chunk's or window's (the line says so), beat times left out."""
    import json

    from demux.batch import PROVENANCE

    lines = []
    for r in results:
        path = r.item.out_dir / PROVENANCE
        if r.status != "done" or not path.is_file():
            continue
        document = json.loads(path.read_text())
        online = "windows" in document
        stages = document["windows"][0]["stages"] if online and document["windows"] else document.get("stages", [])
        parts, seen = [], set()
        for stage in stages:
            if stage["name"] in seen:
                continue
            seen.add(stage["name"])
            n = sum(len(s["loss"]) for s in stages if s["name"] == stage["name"])
            found = [f"{stage['name']}.{source} " + " ".join(f"{key}={json.dumps(v[0])}" for key, v in values.items()
                                                            if key != "beat_times_s")
                     for source, values in (stage.get("found") or {}).items()]
            if found:
                parts.append(", ".join(found) + (f" (first of {n} chunks)" if n > 1 else ""))
        if parts:
            lines.append(f"{r.item.track}: " + ", ".join(parts) + (" (first window)" if online else ""))
    return lines


def _results_table(results, title: str):
    """One row per item: track, status, seconds, and its stems or why it failed or was skipped."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("track", "status", "seconds", "stems / message"):
        table.add_column(column)
    for r in results:
        detail = ", ".join(p.name for p in r.stems) if r.stems else r.message
        table.add_row(r.item.track, r.status, f"{r.seconds:.2f}", detail)
    return table


# --------------------------------------------------------------------------- recipes

recipes_app = typer.Typer(help="List, show and validate recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("list")
@user_errors
def recipes_list() -> None:
    """The built-in recipes, with their domain and stems."""
    from rich.console import Console
    from rich.table import Table

    from demux.recipe import builtin_names, load_recipe

    table = Table(title="built-in recipes")
    for column in ("name", "domain", "stems", "description"):
        table.add_column(column)
    for name in builtin_names():
        r = load_recipe(name)
        table.add_row(name, r.domain, ", ".join(r.sources()), r.description)
    Console().print(table)


@recipes_app.command("show")
@user_errors
def recipes_show(
    name: str = typer.Argument(..., help="Built-in recipe name or YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key before showing it."),
    resolved: bool = typer.Option(False, "--resolved", help="Show the validated recipe with every default filled in."),
) -> None:
    """Print a recipe: its YAML text, or with --resolved the validated values."""
    import yaml

    from demux.recipe import builtin_names, builtin_text, load_recipe, to_dict

    recipe = load_recipe(name, set_)
    if resolved or set_ or name not in builtin_names():
        typer.echo(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    else:
        typer.echo(builtin_text(name))


@recipes_app.command("validate")
@user_errors
def recipes_validate(files: list[str] = typer.Argument(..., help="Recipe files or built-in names.")) -> None:
    """Check recipes; print one line each, exit 2 on the first invalid one."""
    from demux.recipe import load_recipe

    for file in files:
        recipe = load_recipe(file)
        stems = [f"{name} = {' + '.join(parts)}" for name, parts in recipe.stems.items()] or recipe.sources()
        typer.echo(f"ok: {file} ({len(recipe.stages)} stages; stems: {', '.join(stems)})")


# --------------------------------------------------------------------------- evaluate


@app.command()
@user_errors
def evaluate(
    reference: Path = typer.Option(..., "--reference", help="Reference stems: <track>/<source>.<ext>, a track folder or a file."),
    estimate: Path = typer.Option(..., "--estimate", help="Estimated stems, laid out like the reference."),
    engine: str = typer.Option("fast", "--engine", help="BSS-Eval engine: fast (demux's batched torch engine) or mir_eval (the reference)."),
    mixture: Path = typer.Option(None, "--mixture", help="Mixture file or folder (default: <track>/mixture.<ext> in the reference)."),
    rate: float = typer.Option(None, "--rate", help="Sample rate in Hz for .npy stems."),
    report_md: Path = typer.Option(None, "--report", help="Write a Markdown report here."),
    json_out: Path = typer.Option(None, "--json", help="Write the per-track JSON report here."),
    csv_out: Path = typer.Option(None, "--csv", help="Write one CSV row per track x source here."),
    plot: Path = typer.Option(None, "--plot", help="Write figures (SDR bars, before/after spectrograms or scalograms, trust-region trajectories, masks) into this folder."),
    combine: list[str] = typer.Option(
        [], "--combine", help="Score the sum of estimate stems against one reference: speech=pitched+tonal."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing report files."),
) -> None:
    """Score estimated stems against references (SDR/SIR/SAR, SI-SDR, and the mixture as the floor)."""
    from rich.console import Console
    from rich.table import Table

    from demux import report as reports
    from demux.errors import OutputExistsError, ParameterError
    from demux.evaluate import evaluate as run_evaluation

    outputs = [p for p in (report_md, json_out, csv_out) if p is not None]
    for path in outputs:
        if path.exists() and not overwrite:
            raise OutputExistsError(path)  # refuse before the (possibly long) scoring
    groups = {}
    for item in combine:
        name, _, parts = item.partition("=")
        if not name or not parts:
            raise ParameterError(f"--combine {item!r}: expected REFERENCE=STEM+STEM...")
        groups[name.strip()] = [part.strip() for part in parts.split("+")]
    result = run_evaluation(reference, estimate, engine=engine, mixture=mixture, rate=rate, combine=groups)
    console = Console()
    for track in result.tracks:
        table = Table(title=f"{track} (dB)")
        for column in ("source", *result.metrics):
            table.add_column(column, justify="right")
        for row in result.rows:
            if row.track == track:
                table.add_row(row.source, *(f"{row.values[m]:.2f}" for m in result.metrics))
        console.print(table)
    table = Table(title=f"median [IQR] over {len(result.tracks)} track(s); {result.engine} {result.engine_version}")
    for column in ("source", *result.metrics):
        table.add_column(column, justify="right")
    for source, stats in result.aggregate().items():
        table.add_row(source, *(f"{stats[m]['median']:.2f} [{stats[m]['iqr']:.2f}]" for m in result.metrics))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", style="yellow")
    written = []
    if report_md is not None:
        written.append(reports.write_markdown(result, report_md, overwrite=overwrite))
    if json_out is not None:
        written.append(reports.write_json(result, json_out, overwrite=overwrite))
    if csv_out is not None:
        written.append(reports.write_csv(result, csv_out, overwrite=overwrite))
    if plot is not None:
        written += reports.write_plots(result, plot, overwrite=overwrite)
    for path in written:
        console.print(f"wrote {path}")


# --------------------------------------------------------------------------- synth


@app.command()
@user_errors
def synth(
    scenario: str = typer.Argument(..., help="Scenario name (multitone, chirps, am, radio, ecg-emg, radar-mti, array, speech-noise, music)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: OUT/<scenario>-<i>/<source>.<ext> and OUT/scenario.json."),
    n: int = typer.Option(1, "--n", min=1, help="Number of items."),
    seconds: float = typer.Option(None, "--seconds", help="Length of each item (default: the scenario's)."),
    snr: float = typer.Option(None, "--snr", help="Signal-to-noise ratio in dB (default: the scenario's)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same items, bit for bit."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing items."),
) -> None:
    """Write mixtures with exact ground-truth sources, laid out for `demux evaluate`."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from demux.synth import write_scenarios

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(f"synth {scenario}", total=n)
        tracks = write_scenarios(scenario, out, n=n, seconds=seconds, snr_db=snr, seed=seed, overwrite=overwrite,
                                 on_item=lambda _track: progress.advance(task))
    typer.echo(f"wrote {len(tracks)} {scenario} item(s) to {out} (index: {out / 'scenario.json'})")


# --------------------------------------------------------------------------- bench


@app.command()
@user_errors
def bench(
    scenario: list[str] = typer.Option([], "--scenario", "-s", help="Scenario to run (repeatable; default: every scenario)."),
    quick: bool = typer.Option(False, "--quick", help="2 short items per scenario and fewer audio-stft iterations (minutes, not an hour)."),
    items: int = typer.Option(None, "--items", min=1, help="Items per scenario (default: 2 with --quick, else 5)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same items and the same demux random draws."),
    ablation: bool = typer.Option(True, "--ablation/--no-ablation", help="Run the dropout-schedule ablation (on multitone)."),
    engine_speed: bool = typer.Option(True, "--engine-speed/--no-engine-speed", help="Time the BSS-Eval engines (fast vs mir_eval)."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads while timing (1: fastest for demux's small tensors, repeatable)."),
    out: Path = typer.Option(Path("benchmarks/results"), "--out", "-o", help="Folder of the Markdown tables: OUT/<date>.md, OUT/<date>-quick.md."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace today's table."),
    set_: list[str] = typer.Option([], "--set", help="Override a key of demux's recipe in every scenario run "
                                   "(pick scenarios of one recipe with --scenario): hpss.fit.max_iter=10."),
) -> None:
    """demux's recipes vs baselines vs the oracle mask on every scenario; one table, written to OUT/<date>.md."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from demux import bench as benchmark
    from demux.errors import OutputExistsError

    config = benchmark.BenchConfig(scenarios=tuple(scenario), quick=quick, seed=seed, items=items, ablation=ablation,
                                   engine_speed=engine_speed, threads=threads, overrides=tuple(set_))
    target = benchmark.results_path(out, quick=quick)
    if target.exists() and not overwrite:
        raise OutputExistsError(target)  # refuse before the (long) run
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("bench", total=None)

        def on_progress(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label)

        result = benchmark.run_bench(config, on_progress=on_progress)
    for table in benchmark.rich_tables(result):
        console.print(table)
    for name, reason in result.skipped:
        console.print(f"not run: {name}: {reason}", style="yellow")
    console.print(f"wrote {benchmark.write_markdown(result, out, overwrite=overwrite)}")


# --------------------------------------------------------------------------- train


@app.command()
@user_errors
def train(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Built-in recipe name or a YAML file."),
    data: Path = typer.Option(..., "--data", help="Training data: <track>/mixture.<ext> and <track>/<source>.<ext>."),
    out: Path = typer.Option(..., "--out", "-o", help="Parameters file (safetensors) written at every validation improvement."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: stage.sources.voice.band.lo=80."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Trust-region steps at most (one minibatch each)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Training tracks per step at most."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of tracks held out for validation (0: validate on the training tracks)."),
    patience: int = typer.Option(5, "--patience", min=1, help="Stop after this many epochs without a better validation score."),
    seed: int = typer.Option(0, "--seed", help="Fixes the split, the minibatches, dropout and the inner fits."),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the parameters file OUT."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT instead of refusing it."),
) -> None:
    """Learn a recipe's per-group offsets from mixtures with references (use them with `separate --params`)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from demux.errors import ParameterError
    from demux.recipe import load_recipe
    from demux.train import TrainConfig
    from demux.train import train as run_training

    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ParameterError(f"--device {device}: no CUDA device is available here")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, val_fraction=val_fraction, patience=patience,
                         seed=seed, device=device)
    resolved = load_recipe(recipe, set_)
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]} radius {task.fields[radius]} p_drop {task.fields[p_drop]} "
                   "val {task.fields[val]} dB"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task(f"train {resolved.name}", total=epochs, loss="-", radius="-", p_drop="-", val="-")

        def on_epoch(report) -> None:
            progress.update(task, advance=1, loss=f"{report.loss:.2f}", radius=f"{report.radius:.3g}",
                            p_drop=f"{report.dropout:.3f}", val=f"{report.val_si_sdr:.2f}")

        result = run_training(resolved, data, out, config=config, resume=resume, overwrite=overwrite, on_epoch=on_epoch)
    for note in result.notes:
        console.print(f"note: {note}", style="yellow", highlight=False)
    typer.echo(
        f"{result.stopped}; validation SI-SDR {result.initial_val_si_sdr:.2f} -> {result.val_si_sdr:.2f} dB "
        f"(best at epoch {result.best_epoch} of {result.epochs}); wrote {out}"
    )


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
