"""The tune: section: its search space is validated against the config before any trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dlcli.cli import cli
from dlcli.config import load_config, parse_config, search_params, short_key
from dlcli.config_tools import commented_yaml
from dlcli.errors import ConfigError

BASE: dict[str, Any] = {
    "data": {"dataset": "mnist"},
    "model": {
        "layers": [
            {"type": "flatten"},
            {"type": "dense", "units": 32, "activation": "relu"},
            {"type": "dense", "units": 10},
        ]
    },
}


def problems(tune: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "tune": tune})
    return info.value.details


def test_a_good_space_parses_into_its_dimensions() -> None:
    space = {
        "training.optimizer.learning_rate": {"float": [1e-4, 1e-1], "log": True},
        "model.layers[1].units": {"int": [16, 128], "step": 16},
        "training.optimizer.name": {"choice": ["adam", "sgd"]},
    }
    cfg = parse_config({**BASE, "tune": {"space": space}})
    assert cfg.tune is not None and cfg.tune.metric == "val_accuracy"
    params, found = search_params(cfg.tune.space)
    assert found == []
    assert [(p.path, p.kind) for p in params] == [
        ("training.optimizer.learning_rate", "float"),
        ("model.layers[1].units", "int"),
        ("training.optimizer.name", "choice"),
    ]
    assert params[0].log and params[1].step == 16 and params[2].choices == ("adam", "sgd")


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            {"training.optimizer.learning_rat": {"float": [0.1, 1]}},
            "tune.space.training.optimizer.learning_rat: unknown key 'learning_rat' in "
            "training.optimizer (did you mean 'learning_rate'?)",
        ),
        (
            {"model.layer[1].units": {"int": [8, 9]}},
            "unknown key 'layer' in model (did you mean 'layers'?)",
        ),
        ({"model.layers[7].units": {"int": [8, 9]}}, "no item [7]: model.layers has 3"),
        (
            {"model.layers[1].units": {"float": [8, 64]}},
            "tune.space.model.layers[1].units: the value 8.0 is refused: model.layers[1].units: "
            "expected an integer, found a number 8.0",
        ),
        (
            {"training.optimizer.name": {"choice": ["adam", "sgdd"]}},
            "found 'sgdd' (did you mean 'sgd'?)",
        ),
        ({"training.epochs": {"choice": []}}, "tune.space.training.epochs.choice: expected a non"),
        ({"training.epochs": {"int": [5, 2]}}, "expected low < high, found [5, 2]"),
        ({"training.epochs": {"int": ["a", 2]}}, "expected [low, high], two integers"),
        ({"training.epochs": {"int": [1, 2], "lgo": True}}, "unknown key (did you mean 'log'?)"),
        ({"training.epochs": {"range": [1, 2]}}, "expected exactly one of float, int, choice"),
        ({"training.optimizer.momentum": {"float": [0, 1], "log": True}}, "needs low > 0"),
        ({"training.lr_schedule.max_lr": {"float": [0.1, 1]}}, "training.lr_schedule is null"),
        ({"output.dir": {"choice": ["a", "b"]}}, "output.* cannot be tuned"),
        ({"training..epochs": {"int": [1, 2]}}, "expected a key path such as"),
        ({"training.epochs": 3}, "expected {float: [low, high]}"),
        (
            {"training.epochs": {"int": [10, 20], "step": 50}},
            "tune.space.training.epochs: expected high - low to be a multiple of step, found a "
            "step of 50 is larger than the range 20 - 10: it holds 10 only",
        ),
        (
            {"training.epochs": {"int": [10, 25], "step": 10}},
            "25 - 10 is not a whole number of steps of 10: it ends at 20",
        ),
        (
            {"training.optimizer.learning_rate": {"float": [0.1, 0.5], "step": 0.3}},
            "tune.space.training.optimizer.learning_rate: expected high - low to be a multiple",
        ),
    ],
)
def test_a_bad_space_is_a_config_error_naming_the_key(space: dict[str, Any], expected: str) -> None:
    found = problems({"space": space})
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once_with_the_metric() -> None:
    found = problems(
        {
            "metric": "val_acuracy",
            "space": {"training.epoch": {"int": [1, 2]}, "training.seed": {"int": [2, 1]}},
        }
    )
    assert len(found) == 3
    assert found[0].startswith("tune.metric: 'val_acuracy': ")
    assert "did you mean" in found[0]


def test_a_stepped_range_in_whole_steps_passes() -> None:
    space = {"training.optimizer.learning_rate": {"float": [0.1, 0.7], "step": 0.2}}
    cfg = parse_config({**BASE, "tune": {"space": space}})
    assert cfg.tune is not None and search_params(cfg.tune.space)[0][0].step == 0.2


def test_a_metric_suggestion_names_only_metrics_tune_accepts() -> None:
    found = problems({"metric": "top_k_accuracy"})  # not in training.metrics
    assert found[0].startswith("tune.metric: 'top_k_accuracy': ")
    assert "add it to training.metrics" in found[0]
    assert "test" not in found[0], found[0]  # a test metric is refused: never suggested


def test_unknown_tune_keys_and_values_are_config_errors() -> None:
    found = problems({"trails": 3, "pruner": "medain"})
    assert any("tune.trails: unknown key (did you mean 'trials'?)" in p for p in found)
    assert any("tune.pruner: expected one of median, hyperband, none" in p for p in found)


def test_config_show_round_trips_the_tune_section(tmp_path: Path) -> None:
    raw = {**BASE, "tune": {"trials": 3, "space": {"training.epochs": {"int": [1, 3]}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    again = parse_config(yaml.safe_load(commented_yaml(cfg)))
    again.output.dir = cfg.output.dir
    assert again == cfg


def test_validate_reports_a_bad_space(tmp_path: Path) -> None:
    raw = {**BASE, "tune": {"space": {"training.optimizer.learning_rat": {"float": [0.1, 1]}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(cli, ["config", "validate", str(path)])
    assert result.exit_code == 2
    assert "did you mean 'learning_rate'?" in result.output


def test_train_ignores_the_tune_section(tiny_config: Path) -> None:
    raw = yaml.safe_load(tiny_config.read_text())
    raw["tune"] = {"space": {"training.epochs": {"int": [1, 2]}}}
    raw["training"]["epochs"] = 1
    tiny_config.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(cli, ["train", str(tiny_config), "--quiet"])
    assert result.exit_code == 0, result.output


def test_short_key() -> None:
    assert short_key("training.optimizer.learning_rate") == "learning_rate"
    assert short_key("model.layers[1].units") == "layers[1].units"
    assert short_key("seed") == "seed"


def test_an_interrupted_tune_file_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or a full disk) while tune wrote its marker or best config left ``.NAME.tmp``."""
    from dlcli import tune
    from dlcli.errors import Interrupted

    def interrupted(*args: Any) -> None:
        raise Interrupted("interrupted")

    monkeypatch.setattr(Path, "replace", interrupted)
    with pytest.raises(Interrupted):
        tune._write_atomic(tmp_path / "best.yaml", "x: 1\n")
    assert list(tmp_path.iterdir()) == []
