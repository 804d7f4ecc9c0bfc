"""dlcli lr-find: the range test on a tiny dataset, its suggestion rule, and what it never
writes."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from image_trees import write_resized_config

from dlcli.cli import cli
from dlcli.lr_find import MINIMUM_RULE, STEEPEST_RULE, suggest


def test_the_suggestion_is_the_steepest_descent_of_the_smoothed_loss() -> None:
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    # A loss that falls fastest at lr = 1e-3 (a logistic step in log10(lr)).
    losses = [2.0 - 1.5 / (1 + math.exp(-4 * (math.log10(lr) + 3))) for lr in lrs]
    suggested, rule, minimum = suggest(lrs, losses)
    assert rule == STEEPEST_RULE
    assert suggested == pytest.approx(1e-3, rel=0.15)
    assert minimum == lrs[-1]


def test_too_few_steps_fall_back_to_a_tenth_of_the_minimum() -> None:
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    suggested, rule, minimum = suggest(lrs, [2.0, 1.0, 0.5, 3.0])
    assert rule.startswith(MINIMUM_RULE) and minimum == 1e-2
    assert suggested == pytest.approx(1e-3)


def test_the_rates_run_geometrically_without_overflow() -> None:
    from dlcli.lr_find import RangeTest

    test = RangeTest(1e-300, 10.0, 101, 10, 100)
    assert test.rate(0) == pytest.approx(1e-300) and test.rate(100) == pytest.approx(10.0)
    assert test.rate(50) == pytest.approx(math.sqrt(1e-300 * 10.0))
    assert all(math.isfinite(test.rate(i)) and test.rate(i) > 0 for i in range(101))


@pytest.mark.parametrize("option", ["--start-lr", "--end-lr"])
def test_the_ends_of_the_range_are_bounded_as_a_config_learning_rate(
    tiny_config: Path, option: str
) -> None:
    """--end-lr 1e300 (with --start-lr 1e-300) ran and suggested a learning rate of inf."""
    result = CliRunner().invoke(cli, ["lr-find", str(tiny_config), option, "1e300"])
    assert result.exit_code == 2
    assert "1e+300 is not in the range 0<x<=10.0" in result.stderr


def test_lr_find_suggests_a_rate_writes_its_png_and_nothing_else(
    tiny_config: Path, tmp_path: Path
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    text = tiny_config.read_text()
    png = tmp_path / "lr.png"
    result = CliRunner().invoke(
        cli, ["lr-find", str(tiny_config), "--steps", "80", "--plot", str(png), "--json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert 1e-7 <= document["suggested_lr"] <= 10
    assert document["rule"] == STEEPEST_RULE
    assert document["minimum_over_10"] == pytest.approx(document["minimum_lr"] / 10)
    points = document["points"]
    assert len(points) == document["steps"] <= 80
    rates = [p["lr"] for p in points]
    assert rates == sorted(rates) and rates[0] == pytest.approx(1e-7)
    assert document["stopped"]
    assert png.stat().st_size > 1000 and document["plot"] == str(png)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "lr.png"])
    assert tiny_config.read_text() == text  # no run dir, the config unchanged

    again = CliRunner().invoke(cli, ["lr-find", str(tiny_config), "--plot", str(png)])
    assert again.exit_code == 2 and "already exists; pass --force" in again.output


def test_lr_find_stops_when_the_loss_diverges(tiny_config: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "lr-find",
            str(tiny_config),
            # SGD on a squared error explodes at large rates (cross-entropy on this separable
            # data only saturates), sooner with heavy momentum and weight decay.
            *("--set", "training.optimizer.name=sgd", "--set", "training.loss=mse"),
            *("--set", "training.optimizer.momentum=0.99"),
            *("--set", "training.optimizer.weight_decay=1"),
            *("--start-lr", "1e-3", "--end-lr", "10", "--steps", "200"),
            *("--plot", str(tmp_path / "lr.png"), "--json", "--quiet"),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["steps"] < 200
    assert "diverged" in document["stopped"] or "loss became" in document["stopped"]


def test_lr_find_force_never_replaces_a_fifo(tiny_config: Path, tmp_path: Path) -> None:
    """Refused before training, and --force does not make a FIFO (or a device) a file."""
    fifo = tmp_path / "lr.png"
    os.mkfifo(fifo)
    result = CliRunner().invoke(cli, ["lr-find", str(tiny_config), "--plot", str(fifo), "--force"])
    assert result.exit_code == 2, result.output
    assert "is a FIFO (named pipe); dlcli writes a figure only over a regular file" in result.output
    assert "lr-find:" not in result.output  # nothing trained
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_figure_is_never_written_over_a_fifo(tmp_path: Path) -> None:
    """The writer checks too (dlcli plot's figures, a FIFO made after the command's check)."""
    from dlcli.errors import OutputError
    from dlcli.plot import _figure, _save

    fifo = tmp_path / "curve.png"
    os.mkfifo(fifo)
    fig, _ = _figure((1, 1))
    with pytest.raises(
        OutputError, match=r"is a FIFO .*; dlcli writes a figure only over a regular"
    ):
        _save(fig, fifo)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]


def test_lr_find_never_writes_its_png_over_the_config(tiny_config: Path) -> None:
    """The help says the config stays unchanged; --plot CONFIG --force replaced it with the
    PNG (the config gone). Refused, exit 2, before training."""
    before = tiny_config.read_bytes()
    for extra in ([], ["--force"]):
        args = ["lr-find", str(tiny_config), "--plot", str(tiny_config), *extra]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert f"--plot {tiny_config}: is CONFIG, the config read" in result.output
        assert "lr-find:" not in result.output  # nothing trained
    assert tiny_config.read_bytes() == before


def test_where_the_png_goes_is_checked_before_the_test_runs(
    tiny_config: Path, tmp_path: Path
) -> None:
    """--plot into a folder that does not exist ran the whole test, then failed "the
    directory vanished while writing" (exit 3): the folder is created. --plot CONFIG --force
    replaced the config itself with a PNG: a file dlcli did not write (the config, or any
    other) is never replaced (exit 2, as in export and plot: it was exit 3 here), and a path
    under a file is a usage error, both before any training."""

    def lr_find(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["lr-find", str(tiny_config), "--steps", "20", *args])
        return result.exit_code, result.output

    png = tmp_path / "new" / "folder" / "lr.png"
    code, output = lr_find("--plot", str(png))
    assert code == 0, output
    assert png.stat().st_size > 1000
    code, output = lr_find("--plot", str(png), "--force")  # its own figure: replaced
    assert code == 0, output

    mine = tmp_path / "mine.png"
    mine.write_text("my own notes")
    code, output = lr_find("--plot", str(mine), "--force")
    assert code == 2, output  # as export --out and plot --out on a file of the user's
    assert f"{mine}: a file dlcli did not write is there; it is never overwritten, --force" in (
        output
    )
    assert "lr-find: " not in output  # refused before the test ran
    assert mine.read_text() == "my own notes"

    code, output = lr_find("--plot", str(tiny_config / "lr.png"))
    assert code == 2, output
    assert f"cannot write the figure there: {tiny_config} is a file" in output
    assert "lr-find: " not in output


def test_lr_find_reads_own_images_at_the_models_input_size(tmp_path: Path) -> None:
    """The range test read class-folder images at their own size, which the model refused
    (model.input_shape [4, 4, 1] against images [8, 8, 1]) for a config train trains."""
    config = write_resized_config(tmp_path)
    png = tmp_path / "lr.png"
    result = CliRunner().invoke(
        cli, ["lr-find", str(config), "--steps", "20", "--plot", str(png), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 20
