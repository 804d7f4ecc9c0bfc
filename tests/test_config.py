"""Config loading: schema validation (every error class), overrides, shipped configs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlcli.config import Config, dump_yaml, load_config, parse_config, to_dict
from dlcli.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def base() -> dict[str, Any]:
    return {
        "data": {"dataset": "fashion-mnist"},
        "model": {
            "input_shape": [28, 28, 1],
            "layers": [{"type": "flatten"}, {"type": "dense", "units": 10}],
        },
    }


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="cfg.yaml")
    assert str(info.value).startswith("cfg.yaml: ")
    return info.value.details


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_are_valid_and_say_how_to_run(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert path.read_text().startswith(f"# dlcli train configs/{path.name}")


def test_at_least_the_three_required_configs_ship() -> None:
    names = {p.name for p in SHIPPED}
    assert {"fashion-mnist-mlp.yaml", "mnist-mlp.yaml", "fashion-mnist-cnn.yaml"} <= names


def test_defaults_are_filled_in() -> None:
    cfg = parse_config(base())
    assert cfg.training.epochs == 10
    assert cfg.training.batch_size == 100
    assert cfg.training.optimizer.name == "adam"
    assert cfg.data.validation_split == 0.05
    assert cfg.data.shuffle_split is True


def test_resolved_config_round_trips() -> None:
    cfg = load_config(ROOT / "configs" / "fashion-mnist-cnn.yaml")
    again = parse_config(yaml.safe_load(dump_yaml(cfg)))
    assert to_dict(again) == to_dict(cfg)


def test_unknown_key_names_path_and_suggests() -> None:
    raw = base()
    raw["training"] = {"epoch": 3}
    [msg] = problems(raw)
    assert msg.startswith("training.epoch: unknown key (did you mean 'epochs'?)")


def test_unknown_top_level_section() -> None:
    raw = base()
    raw["trainig"] = {}
    assert problems(raw)[0].startswith("trainig: unknown key (did you mean 'training'?)")


def test_unknown_layer_type_suggests() -> None:
    raw = base()
    raw["model"]["layers"][1] = {"type": "dens", "units": 10}
    [msg] = problems(raw)
    assert "model.layers[1].type: unknown layer type 'dens' (did you mean 'dense'?)" in msg


def test_wrong_type_says_expected_and_found() -> None:
    raw = base()
    raw["training"] = {"epochs": "ten"}
    assert problems(raw) == ["training.epochs: expected an integer, found a string 'ten'"]


def test_bool_is_not_an_integer() -> None:
    raw = base()
    raw["training"] = {"batch_size": True}
    assert problems(raw) == ["training.batch_size: expected an integer, found a boolean True"]


def test_missing_required_layer_key() -> None:
    raw = base()
    raw["model"]["layers"][1] = {"type": "dense"}
    [msg] = problems(raw)
    assert msg.startswith("model.layers[1].units: required key missing")


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("training", "epochs", -1, "training.epochs: expected a number > 0, found -1"),
        ("training", "batch_size", 0, "training.batch_size: expected a number > 0, found 0"),
        ("data", "validation_split", 1.0, "data.validation_split: expected a number between 0"),
        ("data", "validation_split", 0, "data.validation_split: expected a number between 0"),
        (
            "data",
            "num_classes",
            10**12,
            "data.num_classes: expected a number from 1 to 1000000 (limits.CLASSES_MAX), "
            "found 1000000000000",
        ),
        (
            "data",
            "workers",
            10**6,
            "data.workers: expected a number from 1 to 1024 (limits.WORKERS_MAX), found 1000000",
        ),
    ],
)
def test_range_checks(section: str, key: str, value: Any, fragment: str) -> None:
    raw = base()
    raw.setdefault(section, {})[key] = value
    [msg] = problems(raw)
    assert msg.startswith(fragment)


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("optimizer.learning_rate", 1e300, "learning_rate: expected a number > 0 and at most 10"),
        ("optimizer.learning_rate", 0, "learning_rate: expected a number > 0 and at most 10"),
        ("optimizer.momentum", 2.5, "momentum: expected a number >= 0 and < 1"),
        ("optimizer.momentum", 1, "momentum: expected a number >= 0 and < 1"),
        ("optimizer.beta1", 1.0, "beta1: expected a number >= 0 and < 1"),
        ("optimizer.beta2", -0.1, "beta2: expected a number >= 0 and < 1"),
        ("optimizer.weight_decay", 1e300, "weight_decay: expected a number between 0 and 1"),
        ("optimizer.weight_decay", -1, "weight_decay: expected a number between 0 and 1"),
        ("optimizer.epsilon", 0, "epsilon: expected a number > 0 and at most 1"),
        ("optimizer.epsilon", 1e300, "epsilon: expected a number > 0 and at most 1"),
        ("lr_schedule.max_lr", 1e300, "max_lr: expected a number > 0 and at most 10"),
        ("lr_schedule.div_factor", 1e-300, "div_factor: expected a number >= 1"),
        ("lr_schedule.final_div_factor", 0.5, "final_div_factor: expected a number >= 1"),
    ],
)
def test_optimizer_numbers_are_bounded(key: str, value: Any, said: str) -> None:
    """A learning rate of 1e300 or a momentum of 2.5 validated, then training stopped on a
    non-finite loss (exit 3): each is a config error naming the key, expected vs found."""
    raw = base()
    section, name = key.split(".")
    schedule = {"name": "one_cycle"} if section == "lr_schedule" else {}
    raw["training"] = {section: {**schedule, name: value}}
    [msg] = problems(raw)
    assert msg == f"training.{section}.{said}, found {value!r}"


@pytest.mark.parametrize(
    ("training", "said"),
    [
        (
            {"lr_schedule": {"name": "step", "step_size": 1, "gamma": 1e300}},
            "training.lr_schedule.gamma: expected a number > 0 and at most 1, found 1e+300",
        ),
        (
            {"lr_schedule": {"name": "step", "step_size": 1, "gamma": 0}},
            "training.lr_schedule.gamma: expected a number > 0 and at most 1, found 0",
        ),
        (
            {"class_weights": [1, 1e300]},
            "training.class_weights: expected balanced or a list of numbers >= 0 and at most "
            "1000000, one per class, not all 0, found [1.0, 1e+300]",
        ),
        (
            {"class_weights": [1, -1]},
            "training.class_weights: expected balanced or a list of numbers >= 0 and at most "
            "1000000, one per class, not all 0, found [1.0, -1.0]",
        ),
    ],
)
def test_a_decay_factor_and_class_weights_are_bounded(training: dict[str, Any], said: str) -> None:
    """A step schedule's gamma of 1e300 or a class weight of 1e300 validated, then the loss
    became non-finite mid-training (exit 3): each is a config error naming the key."""
    raw = base()
    raw["training"] = training
    assert problems(raw) == [said]


@pytest.mark.parametrize("epsilon", [0, 1e300])
def test_batch_norms_epsilon_is_bounded(epsilon: float) -> None:
    raw = base()
    raw["model"]["layers"].insert(1, {"type": "batch_norm", "epsilon": epsilon})
    assert problems(raw) == [
        f"model.layers[1].epsilon: expected a number > 0 and at most 1, found {epsilon!r}"
    ]


@pytest.mark.parametrize(
    ("training", "layer"),
    [
        ({"lr_schedule": {"name": "step", "step_size": 1, "gamma": 1}}, {"epsilon": 1}),
        ({"class_weights": [0, 1_000_000, 0.5]}, {"epsilon": 1e-12}),
    ],
)
def test_decay_weights_and_epsilon_at_their_bounds_are_valid(
    training: dict[str, Any], layer: dict[str, Any]
) -> None:
    raw = base()
    raw["training"] = training
    raw["model"]["layers"].insert(1, {"type": "batch_norm", **layer})
    parse_config(raw)


def test_a_schedules_min_lr_is_bounded_as_the_learning_rate() -> None:
    raw = base()
    raw["training"] = {"lr_schedule": {"name": "cosine", "min_lr": 11}}
    assert problems(raw) == [
        "training.lr_schedule.min_lr: expected a number from 0 to 10, found 11"
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("optimizer", {"learning_rate": 10, "momentum": 0.99, "weight_decay": 1, "epsilon": 1}),
        ("optimizer", {"learning_rate": 1e-9, "momentum": 0, "beta1": 0, "beta2": 0.9999}),
        ("lr_schedule", {"name": "one_cycle", "max_lr": 10, "div_factor": 1}),
    ],
)
def test_optimizer_numbers_at_their_bounds_are_valid(key: str, value: Any) -> None:
    raw = base()
    raw["training"] = {key: value}
    parse_config(raw)


def test_a_metric_listed_twice_is_refused() -> None:
    raw = base()
    raw["training"] = {"metrics": ["accuracy", "top_k_accuracy", "accuracy"]}
    [msg] = problems(raw)
    assert msg.startswith("training.metrics: each metric once; repeated: accuracy")


@pytest.mark.parametrize(("section", "key"), [("data", "data_dir"), ("output", "dir")])
def test_an_empty_path_is_refused(section: str, key: str) -> None:
    # "" silently meant the current directory (data.data_dir: the default data/ instead)
    raw = base()
    raw.setdefault(section, {})[key] = ""
    assert problems(raw) == [f"{section}.{key}: expected a path, found an empty text"]


def test_choice_suggests_closest() -> None:
    raw = base()
    raw["training"] = {"optimizer": {"name": "adamm"}}
    [msg] = problems(raw)
    assert msg == (
        "training.optimizer.name: expected one of adam, adamw, sgd, rmsprop, found 'adamm' "
        "(did you mean 'adam'?)"
    )


def test_every_problem_is_reported_at_once() -> None:
    raw = base()
    raw["training"] = {"epochs": 0, "loss": "nope", "colour": 1}
    raw["model"]["layers"].append({"type": "dropout", "rate": 2})
    assert len(problems(raw)) == 4


def test_unknown_dataset_suggests() -> None:
    raw = base()
    raw["data"]["dataset"] = "fashon-mnist"
    [msg] = problems(raw)
    assert msg.startswith("data.dataset: unknown dataset 'fashon-mnist' (did you mean")


def test_class_names_must_differ() -> None:
    raw = base()
    raw["data"]["class_names"] = ["cat", "dog", "cat", "emu", "dog"]
    [msg] = problems(raw)
    assert msg == "data.class_names: each class needs its own name; repeated: cat, dog"


def test_a_huge_num_classes_is_refused_before_any_class_name_is_built(tmp_path: Path) -> None:
    """``data.num_classes: 10**12`` with integer labels built 10**12 class names (config
    validate hung, train ran out of memory); it is now exit 2 naming the key and the limit."""
    import numpy as np
    from click.testing import CliRunner

    from dlcli.cli import cli

    np.savez(tmp_path / "d.npz", x=np.zeros((8, 4, 4), np.uint8), y=np.arange(8) % 2)
    raw = {
        "data": {"train": str(tmp_path / "d.npz"), "num_classes": 10**12},
        "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 2}]},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    for command in ("data check", "config validate"):
        result = CliRunner().invoke(cli, [*command.split(), str(config)])
        assert result.exit_code == 2, (command, result.output)
        assert "data.num_classes: expected a number from 1 to 1000000" in result.output


def test_explicit_files_need_num_classes() -> None:
    raw = base()
    raw["data"] = {"train_images": "a", "train_labels": "b", "test_images": "c", "test_labels": "d"}
    [msg] = problems(raw)
    assert "num_classes" in msg


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  dataset: mnist\n model: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML at line 3"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, found a list"):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config("nope.yaml")


def test_overrides_set_nested_keys_and_list_items(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    cfg = load_config(
        path,
        [
            "training.epochs=3",
            "training.optimizer.learning_rate=1e-2",
            "model.layers[1].units=10",
            "model.layers[1].activation=linear",
            "data.stratify=true",
        ],
    )
    assert cfg.training.epochs == 3
    assert cfg.training.optimizer.learning_rate == 0.01
    assert cfg.model.layers[1].units == 10  # type: ignore[union-attr]
    assert cfg.data.stratify is True


def test_override_of_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError) as info:
        load_config(path, ["training.epohcs=3"])
    assert info.value.details[0].startswith("training.epohcs: unknown key (did you mean 'epochs'?)")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("training.epochs", "expected key.path=value"),
        ("model.layers[7].units=3", "no item [7] (found a list of 2)"),
        ("training.epochs=[1", "invalid YAML value"),
        ("model.input_shape.x=3", "cannot set 'x' inside a list"),
        # tune.space is a free mapping: 5,000 levels of it were a RecursionError (exit 1)
        ("tune.space" + ".x" * 5000 + "=1", "the key path is 5002 levels deep, more than the 64"),
        ("training" + ".x" * 64 + "=1", "the key path is 65 levels deep"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, fragment: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError, match=None) as info:
        load_config(path, [override])
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "override", ['output.dir="x\\ud800"', 'output.dir="x\\0y"', 'data.class_names=["a\\0"]']
)
def test_text_no_file_name_can_hold_is_refused(tmp_path: Path, override: str) -> None:
    """output.dir with a NUL or a lone surrogate was 'internal error: ValueError: embedded null
    byte' / UnicodeEncodeError (exit 1) when train made the folder."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    (problem,) = info.value.details
    assert "expected text a file name can hold (no NUL character, no lone surrogate" in problem


def test_a_non_utf8_file_name_from_the_command_line_is_kept(tmp_path: Path) -> None:
    """Its bytes reach Python as surrogate escapes (\\udcff): a valid name, not refused."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    name = os.fsdecode(b"runs/bad\xff")
    assert load_config(path, values={"output.dir": name}).output.dir == name


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        (
            "model.input_shape=[28, .inf, 1]",
            "model.input_shape[1]: expected an integer, found a number inf",
        ),
        (
            'model.input_shape=[28, "a", 1]',
            "model.input_shape[1]: expected an integer, found a string 'a'",
        ),
        (
            "training.class_weights=[1, x]",
            "training.class_weights[1]: expected a number, found a string 'x'",
        ),
    ],
)
def test_a_bad_item_of_an_optional_list_is_named(
    tmp_path: Path, override: str, problem: str
) -> None:
    """It was 'model.input_shape: expected a list of an integer or null, found a list', which
    names neither the item nor what is wrong with it."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert info.value.details == [problem]


@pytest.mark.parametrize(("text", "read"), [("010", "8"), ("1:40", "100"), ("-0_10", "-8")])
def test_yaml_11_octal_and_base_60_numbers_are_refused(
    tmp_path: Path, text: str, read: str
) -> None:
    """epochs: 010 trained 8 epochs and batch_size: 1:40 used batches of 100, silently."""
    lines = yaml.safe_dump(base()).splitlines()
    path = tmp_path / "c.yaml"
    path.write_text("\n".join([*lines, f"training: {{epochs: {text}}}", ""]))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message == (
        f"{path}: invalid YAML at line {len(lines) + 1}, column 20: '{text}' is ambiguous: "
        f"YAML 1.1 reads it as {read} (octal or base 60), YAML 1.2 otherwise; write the number "
        "without a leading zero or a colon, or quote it if it is text"
    )
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError, match=f"--set 'training.epochs={text}': invalid YAML value"):
        load_config(path, [f"training.epochs={text}"])


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("10", 10), ("0x10", 16), ("1_000", 1000)])
def test_plain_integers_still_read(tmp_path: Path, text: str, value: int) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    assert load_config(path, [f"training.seed={text}"]).training.seed == value


def test_a_missing_value_reads_null(tmp_path: Path) -> None:
    """--set training.device= said 'expected a string, found null None'."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError) as info:
        load_config(path, ["training.device="])
    assert info.value.details == ["training.device: expected a string, found null"]


def test_scientific_notation_reads_as_float(tmp_path: Path) -> None:
    raw = base()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw) + "training:\n  optimizer: {learning_rate: 3e-4}\n")
    assert load_config(path).training.optimizer.learning_rate == pytest.approx(3e-4)


def test_output_dir_defaults_to_runs_and_config_name(tmp_path: Path) -> None:
    path = tmp_path / "my-exp.yaml"
    path.write_text(yaml.safe_dump(base()))
    assert load_config(path).output.dir == str(Path("runs") / "my-exp")


# A run trained before a bound was tightened: its config.yaml holds what was valid then.
TIGHTENED = {
    "training.optimizer.learning_rate": 20.0,
    "training.optimizer.momentum": 1.5,
    "training.optimizer.weight_decay": 2.0,
    "training.optimizer.epsilon": 2.0,
    "training.metrics": ["accuracy", "accuracy"],
}


def _with(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    for path, value in values.items():
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    return raw


@pytest.mark.parametrize(("path", "value"), list(TIGHTENED.items()))
def test_a_saved_config_is_held_to_the_bounds_it_was_trained_under(path: str, value: Any) -> None:
    base = {"data": {"dataset": "mnist"}, "model": {"layers": [{"type": "flatten"}]}}
    raw = _with(to_dict(parse_config(base)), {path: value})
    with pytest.raises(ConfigError) as new:
        parse_config(raw)
    assert path in " ".join(new.value.details)
    saved = parse_config(raw, saved=True)
    assert to_dict(saved) == raw | {"model": to_dict(saved)["model"]}


def test_a_saved_config_is_still_refused_what_was_never_valid() -> None:
    base = {"data": {"dataset": "mnist"}, "model": {"layers": [{"type": "flatten"}]}}
    raw = _with(to_dict(parse_config(base)), {"training.optimizer.learning_rate": -1.0})
    with pytest.raises(ConfigError, match="learning_rate: expected a number > 0, found -1"):
        parse_config(raw, saved=True)
    assert parse_config(base).training.optimizer.learning_rate == 0.001


def test_a_run_trained_under_looser_bounds_still_evaluates_and_resumes(
    tiny_run: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    from click.testing import CliRunner

    from dlcli import store
    from dlcli.cli import cli

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for folder in (run, *(p for p in (run / "checkpoints").iterdir() if p.is_dir())):
        raw = _with(yaml.safe_load((folder / "config.yaml").read_text()), TIGHTENED)
        (folder / "config.yaml").write_text(yaml.safe_dump(raw))
        manifest = json.loads((folder / "manifest.json").read_text())
        store.write_manifest(folder, list(manifest["files"]))
    validated = CliRunner().invoke(cli, ["config", "validate", str(run / "config.yaml")])
    assert validated.exit_code == 2, validated.output  # as a new config, it is refused
    evaluated = CliRunner().invoke(cli, ["evaluate", str(run)])
    assert evaluated.exit_code == 0, evaluated.output
    resumed = CliRunner().invoke(
        cli, ["train", "--resume", str(run), "--quiet", "--set", "training.epochs=3"]
    )
    assert resumed.exit_code == 0, resumed.output
    kept = yaml.safe_load((run / "config.yaml").read_text())["training"]
    assert kept["optimizer"]["learning_rate"] == 20.0 and kept["epochs"] == 3


def test_a_run_an_older_dlcli_saved_with_a_class_named_1e3_is_read_again(
    tiny_config: Path, tmp_path: Path
) -> None:
    """Runs saved before class names such as 1e3 were quoted have ``1e3`` bare in config.yaml,
    which dlcli reads as 1000.0: they were refused ("not a valid dlcli config"). dlcli writes
    floats with a dot, so a bare 1e3 in a config it saved is the text it was written from."""
    import json

    import dlcli
    from dlcli import store
    from dlcli.runs import list_runs

    names = ["1e3", "2E-5", "c", "d"]
    run = dlcli.train(tiny_config, {"data.class_names": names}, output=tmp_path / "runs" / "old")
    config = run.run_dir / "config.yaml"
    text = config.read_text()
    assert "'1e3'" in text and "'2E-5'" in text
    config.write_text(text.replace("'1e3'", "1e3").replace("'2E-5'", "2E-5"))  # as it was
    store.write_manifest(
        run.run_dir, list(json.loads((run.run_dir / "manifest.json").read_text())["files"])
    )
    model = dlcli.load(run.run_dir, device="cpu")
    assert model.config.data.class_names == names
    assert model.evaluate("test")["accuracy"] == run.metrics["test"]["accuracy"]
    assert [r.path for r in list_runs(tmp_path / "runs").runs] == [run.run_dir]


def test_summary_of_a_run_an_older_dlcli_saved_with_a_class_named_1e3(
    tiny_config: Path, tmp_path: Path
) -> None:
    """dlcli summary RUN_DIR read the run's config.yaml as a config of the user's: an older
    run's bare 1e3 class name was 1000.0, "expected a string", exit 2, while evaluate read it."""
    from click.testing import CliRunner

    import dlcli
    from dlcli.cli import cli

    run = dlcli.train(
        tiny_config, {"data.class_names": ["1e3", "b", "c", "d"]}, output=tmp_path / "r"
    )
    config = run.run_dir / "config.yaml"
    config.write_text(config.read_text().replace("'1e3'", "1e3"))  # as an older dlcli wrote it
    result = CliRunner().invoke(cli, ["summary", str(run.run_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total_params"] > 0


def test_strings_dlcli_reads_as_numbers_are_written_quoted(tmp_path: Path) -> None:
    """dlcli reads 1e3 as a number (YAML 1.1 does not), but wrote class names such as "1e3"
    bare: a run's config.yaml (and config show's output, tune's best.yaml) read back as
    1000.0, and evaluate, predict and --resume refused the run."""
    names = ["1e3", "2E-5", ".5e1", "-1e+2", "+.inf", ".NaN", "ok"]
    raw = base()
    raw["data"] = {"train": str(tmp_path), "class_names": names, "num_classes": len(names)}
    raw["model"]["layers"][-1]["units"] = len(names)
    cfg = parse_config(raw)
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path).data.class_names == names  # dlcli's own loader, not PyYAML's

    pytest.importorskip("optuna")
    from dlcli.tune import BEST_CONFIG, write_best_config

    (tmp_path / "study").mkdir()
    summary = {"best": {"run_dir": str(tmp_path), "number": 3, "value": 0.9}}
    write_best_config({**summary, "study": "s", "metric": "val_accuracy"}, tmp_path / "study")
    assert load_config(tmp_path / "study" / BEST_CONFIG).data.class_names == names


def test_validation_split_given_with_validation_data_is_refused_naming_both(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from dlcli.cli import cli

    raw = base()
    raw["data"] = {"train": "train.npz", "validation": "val.npz"}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)  # validation data alone: fine
    assert cfg.data.validation is not None
    # A resolved config (every default filled in: a run's config.yaml, the API's) still loads.
    assert parse_config(to_dict(cfg)).data.validation == cfg.data.validation
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(tmp_path / "run.yaml", saved=True).data.validation_split == 0.05
    want = "data.validation_split: not used with data.validation"
    for overrides, written in (
        (("data.validation_split=0.2",), {}),
        ((), {"validation_split": 0.05}),  # the default's value, given: as refused
    ):
        path.write_text(yaml.safe_dump({**raw, "data": {**raw["data"], **written}}))
        with pytest.raises(ConfigError) as info:
            load_config(path, overrides)
        assert any(want in d for d in info.value.details)
    result = CliRunner().invoke(cli, ["config", "validate", str(path)])
    assert result.exit_code == 2 and want in result.output, result.output
    # Tuning the split is giving it too (each trial would ignore it).
    tuned = {**raw, "tune": {"space": {"data.validation_split": {"float": [0.1, 0.3]}}}}
    path.write_text(yaml.safe_dump(tuned))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(d.startswith(f"tune.space.{want}") for d in info.value.details)
