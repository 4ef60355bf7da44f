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

# --------------------------------------------------------------------------- separate


@app.command()
@user_errors
def separate(
    inputs: list[Path] = typer.Argument(..., help="Files, folders (recursive) or globs to separate."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="Built-in recipe name or a YAML file."),
    out: Path = typer.Option(Path("separated"), "--out", "-o", help="Output folder: OUT/<track>/<source>.<ext>."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: stage.sources.voice.band.lo=80."),
    seed: int = typer.Option(0, "--seed", help="Fixes every random draw: same input, recipe and seed, same stems."),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu or cuda."),
    fmt: str = typer.Option(None, "--format", help="wav, flac or npy (default: the input's format, else wav)."),
    rate: float = typer.Option(None, "--rate", help="Sample rate in Hz for inputs that carry none (.npy, raw IQ)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing stems."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
) -> None:
    """Separate files into one stem per source, with provenance in OUT/<track>/demux.json."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from demux.batch import Options, plan, separate_item
    from demux.errors import DemuxError, ParameterError
    from demux.recipe import load_recipe

    if fmt is not None and fmt not in ("wav", "flac", "npy"):
        raise ParameterError(f"--format {fmt!r}: expected wav, flac or npy")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ParameterError(f"--device {device}: no CUDA device is available here")
    resolved = load_recipe(recipe, set_)
    options = Options(out=out, seed=seed, device=device, format=fmt, rate=rate, overwrite=overwrite, overrides=tuple(set_))
    items, batch = plan(inputs, resolved, out)
    console = Console(stderr=True, quiet=quiet)
    results = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("separating", total=len(items))
        for item in items:
            def on_stage(name: str, item=item) -> None:
                progress.update(task, description=f"{item.track}: stage {name}")

            try:
                results.append(separate_item(item, resolved, options, resume=batch, on_stage=on_stage))
            except DemuxError as error:
                if not batch:
                    raise
                from demux.batch import ItemResult

                results.append(ItemResult(item, "failed", str(error)))
                console.print(f"[red]failed[/red] {error}")
            progress.advance(task)
    table = Table(title=f"demux separate --recipe {resolved.name} -> {out}")
    for column in ("track", "status", "seconds", "stems / message"):
        table.add_column(column)
    for r in results:
        detail = ", ".join(p.name for p in r.stems) if r.stems else r.message
        table.add_row(r.item.track, r.status, f"{r.seconds:.2f}", detail)
    console.print(table)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        typer.echo(f"demux: {len(failed)} of {len(results)} items failed", err=True)
        raise typer.Exit(1)


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
        typer.echo(f"ok: {file} ({len(recipe.stages)} stages; stems: {', '.join(recipe.sources())})")


# --------------------------------------------------------------------------- evaluate


@app.command()
@user_errors
def evaluate(
    reference: Path = typer.Option(..., "--reference", help="Reference stems: <track>/<source>.<ext>, a track folder or a file."),
    estimate: Path = typer.Option(..., "--estimate", help="Estimated stems, laid out like the reference."),
    engine: str = typer.Option("fast", "--engine", help="BSS-Eval engine: fast (fast_bss_eval) or mir_eval."),
    mixture: Path = typer.Option(None, "--mixture", help="Mixture file or folder (default: <track>/mixture.<ext> in the reference)."),
    rate: float = typer.Option(None, "--rate", help="Sample rate in Hz for .npy stems."),
    report_md: Path = typer.Option(None, "--report", help="Write a Markdown report here."),
    json_out: Path = typer.Option(None, "--json", help="Write the per-track JSON report here."),
    csv_out: Path = typer.Option(None, "--csv", help="Write one CSV row per track x source here."),
    plot: Path = typer.Option(None, "--plot", help="Write figures (SDR bars, trust-region trajectories, masks) into this folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing report files."),
) -> None:
    """Score estimated stems against references (SDR/SIR/SAR, SI-SDR, and the mixture as the floor)."""
    from rich.console import Console
    from rich.table import Table

    from demux import report as reports
    from demux.errors import OutputExistsError
    from demux.evaluate import evaluate as run_evaluation

    outputs = [p for p in (report_md, json_out, csv_out) if p is not None]
    for path in outputs:
        if path.exists() and not overwrite:
            raise OutputExistsError(path)  # refuse before the (possibly long) scoring
    result = run_evaluation(reference, estimate, engine=engine, mixture=mixture, rate=rate)
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


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
