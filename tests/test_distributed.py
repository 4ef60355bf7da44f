"""`demux separate --scheduler`: items as tasks of a Dask cluster give the local run's stems and summary.

A ``LocalCluster`` of two single-threaded worker processes (tasks are pickled, as for
a remote cluster) serves the module; the items are 3 mixtures of 1 s at 8 kHz for
``tones-fft`` and a corrupt file (as in test_batch.py), separated once locally as the
reference. Tests that need the ``distributed`` package skip without it
(``pip install -e '.[distributed]'``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from demux.batch import Options, plan, run
from demux.cli import app
from demux.recipe import load_recipe
from test_batch import stems_of, write_mixtures

runner = CliRunner()
RECIPE = load_recipe("tones-fft")


def needs_distributed():
    return pytest.importorskip("distributed", reason="the 'distributed' package is not installed")


@pytest.fixture(scope="module")
def scheduler():
    """Address of a local cluster: 2 worker processes, 1 thread each."""
    distributed = needs_distributed()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``(root, results, stems)`` of the local run over ``root/in`` into ``root/local``."""
    root = tmp_path_factory.mktemp("items")
    write_mixtures(root / "in", 3)
    (root / "in" / "broken.wav").write_bytes(b"RIFF, and then nothing")
    items, batch = plan([root / "in"], RECIPE, root / "local")
    results = run(items, RECIPE, Options(out=root / "local"), batch=batch)
    assert [r.status for r in results] == ["failed", "done", "done", "done"]
    return root, results, tracks(root / "local")


def tracks(out: Path) -> dict[str, dict[str, np.ndarray]]:
    return {t.name: stems_of(t) for t in sorted(out.iterdir())}


def assert_same_stems(found: dict, expected: dict) -> None:
    assert set(found) == set(expected) == {"item0", "item1", "item2"}
    for track, stems in expected.items():
        assert set(stems) == {"low", "mid", "high"}
        for stem, samples in stems.items():
            assert np.array_equal(samples, found[track][stem]), (track, stem)


def test_cluster_gives_the_local_stems_and_results_and_resumes(reference, scheduler, monkeypatch):
    root, local, local_stems = reference
    monkeypatch.chdir(root)  # relative paths, as typed: the workers get absolute ones
    items, batch = plan([Path("in")], RECIPE, Path("cluster"))
    reported = []
    results = run(items, RECIPE, Options(out=Path("cluster")), batch=batch, scheduler=scheduler, on_result=reported.append)
    assert sorted(r.item.track for r in reported) == [i.track for i in items]  # each reported once
    assert [r.item for r in results] == items
    assert [r.status for r in results] == [r.status for r in local]
    # told with the caller's relative path, as the local run tells it
    assert results[0].message == local[0].message.replace(str(root / "in"), "in")
    assert results[0].message.startswith("in/broken.wav: ")
    assert [r.stems for r in results[1:]] == [[Path("cluster", i.track, f"{n}.wav") for n in ("low", "mid", "high")]
                                             for i in items[1:]]
    assert_same_stems(tracks(root / "cluster"), local_stems)
    again = run(items, RECIPE, Options(out=Path("cluster")), batch=True, scheduler=scheduler)
    assert [r.status for r in again] == ["failed", "skipped", "skipped", "skipped"]


def test_cli_scheduler_keeps_going_and_prints_the_summary(reference, scheduler):
    root, local, local_stems = reference
    out = root / "cli"
    result = runner.invoke(app, ["separate", str(root / "in"), "-r", "tones-fft", "-o", str(out), "--scheduler", scheduler])
    assert result.exit_code == 1, result.output
    assert "1 of 4 items failed" in result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed ")]
    assert failed == [f"failed {local[0].message}"]
    table = result.stderr[result.stderr.index("demux separate --recipe") :]
    rows = [table.index(f"│ {track} ") for track in ("broken", "item0", "item1", "item2")]
    assert rows == sorted(rows), "the summary lists items in input order, not completion order"
    assert_same_stems(tracks(out), local_stems)


def test_local_scheduler_starts_its_own_cluster(reference, tmp_path):
    needs_distributed()
    root, _, local_stems = reference
    items, _ = plan([root / "in" / "item1.wav"], RECIPE, tmp_path)
    (result,) = run(items, RECIPE, Options(out=tmp_path), batch=False, scheduler="local")
    assert result.status == "done"
    assert stems_of(tmp_path / "item1").keys() == local_stems["item1"].keys()
    for stem, samples in stems_of(tmp_path / "item1").items():
        assert np.array_equal(samples, local_stems["item1"][stem]), stem


def test_missing_distributed_is_one_line_and_exit_2(reference, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now raises ImportError
    root, out = reference[0], tmp_path / "OUT"
    result = runner.invoke(app, ["separate", str(root / "in"), "-r", "tones-fft", "-o", str(out), "--scheduler", "local"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'distributed' package" in lines[0] and "pip install" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--scheduler", "no-port-here"], "cannot connect"),
        (["--scheduler", "tcp://127.0.0.1:8786", "--jobs", "2"], "the cluster's own workers"),
    ],
)
def test_bad_scheduler_is_one_line_and_exit_2(reference, tmp_path, args, expected):
    needs_distributed()
    root, out = reference[0], tmp_path / "OUT"
    result = runner.invoke(app, ["separate", str(root / "in"), "-r", "tones-fft", "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and args[1] in lines[0] and expected in lines[0]
    assert not out.exists()


def test_cluster_takes_groups_of_equal_length_files_as_tasks(reference, scheduler, tmp_path):
    root = reference[0]
    runs = {}
    for name, where in (("local", None), ("cluster", scheduler)):
        items, _ = plan([root / "in"], RECIPE, tmp_path / name)
        results = run(items, RECIPE, Options(out=tmp_path / name, batch_size=4), batch=True, scheduler=where)
        assert [r.status for r in results] == ["failed", "done", "done", "done"]
        assert [r.stems[0].parent for r in results[1:]] == [tmp_path / name / i.track for i in items[1:]]
        record = json.loads((tmp_path / name / "item0" / "demux.json").read_text())
        assert record["batched_with"] == ["item1", "item2"], name  # one task for the three
        runs[name] = tracks(tmp_path / name)
    assert_same_stems(runs["cluster"], runs["local"])
