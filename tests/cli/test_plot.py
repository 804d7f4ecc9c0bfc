"""dlcli plot: every figure rendered from a real short run, checked as a PNG of the right size."""

from __future__ import annotations

import csv
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_tiny_config

from dlcli.cli import cli
from dlcli.metrics import per_class
from dlcli.plot import (
    CONFUSION_SIZE,
    CURVE_SIZE,
    DPI,
    Best,
    curve_figure,
    curve_groups,
    plot_confusion,
    plot_curve,
)

pytest.importorskip("matplotlib")

CURVE_PIXELS = (int(CURVE_SIZE[0] * DPI), int(CURVE_SIZE[1] * DPI))
CONFUSION_PIXELS = (int(CONFUSION_SIZE[0] * DPI), int(CONFUSION_SIZE[1] * DPI))


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature and the IEND end."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", f"{path} is truncated"
    return width, height


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = write_tiny_config(tmp_path_factory.mktemp("plot"))
    result = run("train", str(config), "--quiet", "--json")
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["run_dir"])


def test_plot_writes_curves_and_confusion_matrix(run_dir: Path) -> None:
    result = run("plot", str(run_dir), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    files = [Path(f) for f in doc["files"]]
    assert [f.name for f in files] == [
        "loss.png",
        "accuracy.png",
        "confusion_matrix_validation.png",
    ]
    assert doc["out_dir"] == str(run_dir / "plots")
    for path in files:
        assert path.parent == run_dir / "plots"
        expected = CONFUSION_PIXELS if path.name.startswith("confusion") else CURVE_PIXELS
        assert png_size(path) == expected
    assert "wrote" in result.stderr  # human lines go to stderr under --json


def test_plot_out_dir_split_and_human_output(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures" / "nested"
    result = run("plot", str(run_dir), "--out", str(out), "--split", "test")
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'confusion_matrix_test.png'}" in result.stdout
    assert png_size(out / "confusion_matrix_test.png") == CONFUSION_PIXELS
    assert png_size(out / "loss.png") == CURVE_PIXELS


def _matplotlib_png(path: Path) -> None:
    """A PNG as the user's own matplotlib script (or a dlcli before the marker) writes it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")


def test_plot_never_overwrites_files_it_did_not_write(run_dir: Path, tmp_path: Path) -> None:
    """--out into a folder of the user's replaced their loss.png and accuracy.png silently."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "loss.png").write_text("my notes")
    _matplotlib_png(out / "accuracy.png")
    mine = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run("plot", str(run_dir), "--out", str(out))
    assert result.exit_code == 2, result.output  # as export --out on a file of the user's
    assert (
        f"Error: {out}: loss.png, accuracy.png: files dlcli did not write are there; they are "
        "never overwritten, --force or not (choose another --out, or move them away)"
    ) in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == mine  # nothing written at all
    (out / "loss.png").unlink()
    (out / "accuracy.png").unlink()
    assert run("plot", str(run_dir), "--out", str(out)).exit_code == 0
    again = run("plot", str(run_dir), "--out", str(out))  # its own figures: replaced
    assert again.exit_code == 0, again.output
    assert png_size(out / "loss.png") == CURVE_PIXELS


def test_plot_replaces_the_figures_of_earlier_versions_in_the_run(run_dir: Path) -> None:
    """RUN_DIR/plots is the run's own folder: figures without dlcli's mark are from a dlcli
    that did not mark them yet."""
    (run_dir / "plots").mkdir(exist_ok=True)
    _matplotlib_png(run_dir / "plots" / "loss.png")
    result = run("plot", str(run_dir))
    assert result.exit_code == 0, result.output
    assert png_size(run_dir / "plots" / "loss.png") == CURVE_PIXELS


def test_plot_without_matplotlib_says_how_to_install(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    result = run("plot", str(run_dir), "--out", str(run_dir / "never"))
    assert result.exit_code == 2
    assert "dlcli plot needs matplotlib" in result.stderr
    assert "pip install 'dlcli[plot]'" in result.stderr
    assert not (run_dir / "never").exists()


def test_plot_of_a_missing_or_incomplete_run(tmp_path: Path) -> None:
    result = run("plot", str(tmp_path / "nope"))
    assert result.exit_code == 3
    assert "model directory not found" in result.stderr
    (tmp_path / "half").mkdir()
    result = run("plot", str(tmp_path / "half"), "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["error"]["kind"] == "model_dir"


def test_curve_groups_pair_train_and_validation() -> None:
    history = [
        {"epoch": 1.0, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "lr": 0.1, "seconds": 1.0},
        {"epoch": 2.0, "loss": 0.5, "accuracy": 0.7, "val_loss": 0.9, "lr": 0.1, "seconds": 1.0},
    ]
    assert curve_groups(history) == [("loss", ["loss", "val_loss"]), ("accuracy", ["accuracy"])]
    history[1]["lr"] = 0.01  # a schedule changed it: worth a figure
    assert ("lr", ["lr"]) in curve_groups(history)


def test_one_epoch_and_learning_rate_curves_render(tmp_path: Path) -> None:
    history = [{"epoch": 1.0, "loss": 0.3, "val_loss": 0.4, "lr": 0.1}]
    path = plot_curve(history, "loss", ["loss", "val_loss"], tmp_path / "l.png", run_name="r")
    assert png_size(path) == CURVE_PIXELS
    history.append({"epoch": 2.0, "loss": 0.2, "val_loss": 0.3, "lr": 0.01})
    best = Best("val_loss", 2, 0.3)
    path = plot_curve(history, "lr", ["lr"], tmp_path / "lr.png", run_name="r", best=best)
    assert png_size(path) == CURVE_PIXELS


def one_cycle_steps(epochs: int, per_epoch: int) -> list[dict[str, float]]:
    """A warm-up then a decay over ``epochs * per_epoch`` steps, and a falling loss."""
    total = epochs * per_epoch
    rows = []
    for step in range(1, total + 1):
        lr = 0.02 * step / (0.3 * total) if step < 0.3 * total else 0.02 * (total - step) / total
        rows.append({"step": step, "epoch": step / per_epoch, "lr": lr, "loss": 2.0 / step})
    return rows


def test_per_step_curves_show_the_schedule_on_integer_epoch_ticks() -> None:
    steps = one_cycle_steps(1, 40)
    history = [{"epoch": 1.0, "loss": 0.3, "val_loss": 0.4, "lr": steps[-1]["lr"]}]
    assert ("lr", ["lr"]) in curve_groups(history, steps)  # one epoch: the rate still moved
    figure = curve_figure(history, "lr", ["lr"], run_name="r", steps=steps)
    (ax,) = figure.axes
    (line,) = ax.get_lines()
    assert len(line.get_xdata()) == 40  # every step, not one point per epoch
    assert list(line.get_ydata()) == [r["lr"] for r in steps]  # the warm-up included
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 1]
    assert ticks == [0, 1]  # no 0.945 ... 1.050
    assert "best" not in " ".join(t.get_text() for t in ax.get_legend().get_texts())


def test_the_best_epoch_is_marked_on_its_own_metric_only() -> None:
    steps = one_cycle_steps(3, 10)
    history = [
        {"epoch": float(e), "loss": 1 / e, "val_loss": v, "accuracy": 0.5, "val_accuracy": a}
        for e, v, a in ((1, 0.5, 0.8), (2, 0.3, 0.9), (3, 0.4, 0.85))
    ]
    best = Best("val_loss", 2, 0.3)
    loss = curve_figure(history, "loss", ["loss", "val_loss"], run_name="r", steps=steps, best=best)
    labels = [t.get_text() for t in loss.axes[0].get_legend().get_texts()]
    assert labels == [
        "train (per step)",
        "train (epoch mean)",
        "validation",
        "best: epoch 2 (val_loss 0.3000)",
    ]
    accuracy = curve_figure(
        history, "accuracy", ["accuracy", "val_accuracy"], run_name="r", steps=steps, best=best
    )
    labels = [t.get_text() for t in accuracy.axes[0].get_legend().get_texts()]
    assert labels == ["train", "validation"]
    assert [int(t) for t in accuracy.axes[0].get_xticks() if 0 <= t <= 3] == [0, 1, 2, 3]


def test_a_run_writes_its_steps_and_plot_draws_them(run_dir: Path) -> None:
    rows = list(csv.DictReader((run_dir / "steps.csv").open()))
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    assert list(rows[0]) == ["step", "epoch", "lr", "loss"]
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    per_epoch = len(rows) // len(history)
    assert float(rows[per_epoch - 1]["epoch"]) == 1.0  # the last step of epoch 1
    # The mean of epoch 1's step losses is the epoch's loss in history.csv.
    mean = sum(float(r["loss"]) for r in rows[:per_epoch]) / per_epoch
    assert mean == pytest.approx(float(history[0]["loss"]), rel=1e-3)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "steps.csv" in manifest["files"]


@pytest.mark.parametrize("classes", [10, 40])
def test_confusion_heatmap_with_many_classes(tmp_path: Path, classes: int) -> None:
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, size=(classes, classes))
    names = [f"class name {i}" for i in range(classes)]
    path = plot_confusion(per_class(cm, names), tmp_path / "cm.png", title="many")
    assert png_size(path) == CONFUSION_PIXELS


def test_an_out_dir_under_a_file_is_a_usage_error(run_dir: Path, tmp_path: Path) -> None:
    # It was exit 3 (an output problem) while train -o AFILE/sub is exit 2: the same mistake.
    blocker = tmp_path / "afile"
    blocker.write_text("my notes")
    result = run("plot", str(run_dir), "--out", str(blocker / "sub"))
    assert result.exit_code == 2, result.output
    assert f"{blocker / 'sub'}: cannot write figures there: {blocker} is a file" in result.stderr
    assert blocker.read_text() == "my notes"


def test_an_out_dir_that_is_a_device_says_what_it_is(run_dir: Path) -> None:
    """--out /dev/null said "/dev/null is a file": it is a character device."""
    result = run("plot", str(run_dir), "--out", "/dev/null")
    assert result.exit_code == 2, result.output
    assert "/dev/null: cannot write figures there: /dev/null is a character device" in (
        result.stderr
    )


def test_an_interrupted_figure_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a figure was saved (only an OSError was cleaned up) left ``.NAME.tmp``
    beside it."""
    from dlcli import plot
    from dlcli.errors import Interrupted

    def interrupted(*args: Any) -> None:
        raise Interrupted("interrupted")

    monkeypatch.setattr(plot.os, "replace", interrupted)
    fig, _ax = plot._figure(CURVE_SIZE)
    with pytest.raises(Interrupted):
        plot._save(fig, tmp_path / "fig.png")
    assert list(tmp_path.iterdir()) == []


def test_two_writers_of_one_figure_at_once_both_succeed(tmp_path: Path) -> None:
    """Two plots of one run at once (``dlcli plot`` twice, in two terminals) rendered into one
    shared temporary name: the first to rename took the other's file, which then failed
    "cannot write the figure: the directory vanished while writing" (exit 3). Here the second
    write happens while the first is between rendering and renaming."""
    from dlcli import plot

    path = tmp_path / "loss.png"
    first, _ = plot._figure(plot.CURVE_SIZE)
    second, _ = plot._figure(plot.CURVE_SIZE)
    render = first.savefig

    def render_then_another_writer(*args: Any, **kwargs: Any) -> None:
        render(*args, **kwargs)
        plot._save(second, path)  # another command writes the same figure meanwhile

    first.savefig = render_then_another_writer
    assert plot._save(first, path) == path
    assert png_size(path) == (1200, 750)
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # no temporary file left


def test_a_plot_killed_while_writing_leaves_no_temporary_file_for_good(
    run_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL between writing a figure and renaming it left ``.loss.png.tmp-*`` in the
    folder forever; the next plot removes it once it is an hour old (a fresher one may be
    another plot's, writing now), and never a file of another name."""
    from cli_process import dlcli_signalled

    out = tmp_path / "figures"
    killed = dlcli_signalled("os:replace", "SIGKILL", "plot", str(run_dir), "--out", str(out))
    assert killed.returncode == -9, killed.stderr
    [left] = [p for p in out.iterdir() if p.name.startswith(".loss.png.tmp-")]
    assert not (out / "loss.png").exists()
    hour_ago = time.time() - 3700
    os.utime(left, (hour_ago, hour_ago))
    fresh = out / ".accuracy.png.tmp-0a1b2c3d"  # another plot's, writing now
    mine = out / ".loss.png.tmp-mine"  # not a name dlcli gives
    for path in (fresh, mine):
        path.write_bytes(b"")
        os.utime(path, (hour_ago, hour_ago) if path == mine else None)
    result = run("plot", str(run_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == sorted([fresh.name, mine.name])
    assert png_size(out / "loss.png") == CURVE_PIXELS
