"""dlcli init, dlcli config show, dlcli config validate."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import REPO_ROOT

from dlcli.cli import cli
from dlcli.config import Config, load_config, parse_config, to_dict
from dlcli.config_tools import commented_yaml, starter_config


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# --- init ---------------------------------------------------------------------------------------


def test_init_writes_a_commented_config_named_after_dataset_and_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("init", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "path": "fashion-mnist-mlp.yaml",
        "template": "mlp",
        "dataset": "fashion-mnist",
        "command": "dlcli train fashion-mnist-mlp.yaml",
    }
    text = (tmp_path / "fashion-mnist-mlp.yaml").read_text()
    assert text.startswith("# dlcli train fashion-mnist-mlp.yaml\n")
    assert "# registry name (mnist, fashion-mnist, kmnist, cifar-10)" in text
    cfg = load_config(tmp_path / "fashion-mnist-mlp.yaml")
    assert cfg.data.dataset == "fashion-mnist" and cfg.output.dir == "runs/fashion-mnist-mlp"
    assert [layer.type for layer in cfg.model.layers] == ["flatten", "dense", "dense", "dense"]


@pytest.mark.parametrize("name", ["my config.yaml", "it's.yaml", "-dash.yaml"])
def test_the_commands_init_prints_can_be_pasted_as_they_are(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init printed "train it with: dlcli train my config.yaml" (and wrote it as the config's
    first line): two words; a quote opened a string, and -dash.yaml was read as an option.
    The path is quoted for the shell, and a leading dash gets ./ before it."""
    import shlex

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pets" / "a").mkdir(parents=True)
    (tmp_path / "pets" / "b").mkdir()
    from PIL import Image

    for folder in ("a", "b"):
        Image.new("L", (8, 8), 9).save(tmp_path / "pets" / folder / "1.png")
    for extra in ([], ["--from", "pets"]):
        result = run("init", "--force", *extra, "--json", "--", name)
        assert result.exit_code == 0, result.output
        command = json.loads(result.stdout)["command"]
        first = (tmp_path / name).read_text().splitlines()[0]
        assert first == f"# {command}" and f"train it with: {command}" in result.stderr
        words = shlex.split(command)
        assert words[:2] == ["dlcli", "train"] and len(words) == 3
        assert (tmp_path / words[2]).resolve() == (tmp_path / name).resolve()
        valid = run("config", "validate", words[2], "--no-data")  # not read as an option
        assert valid.exit_code == 0, valid.output


def test_init_matches_the_shipped_reference_config() -> None:
    """The mlp template is configs/fashion-mnist-mlp.yaml's model and training, the cnn one
    configs/fashion-mnist-cnn.yaml's."""
    for template in ("mlp", "cnn"):
        text = starter_config("x.yaml", template=template)
        shipped = load_config(REPO_ROOT / "configs" / f"fashion-mnist-{template}.yaml")
        cfg = parse_config(yaml.safe_load(text))
        assert cfg.model == shipped.model and cfg.training == shipped.training
        assert cfg.data == shipped.data


@pytest.mark.parametrize("template", ["mlp", "cnn"])
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_every_template_validates(tmp_path: Path, template: str, dataset: str) -> None:
    path = tmp_path / "c.yaml"
    result = run("init", path, "--template", template, "--dataset", dataset, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"wrote {path}; train it with: dlcli train {path}" in result.stdout
    result = run("config", "validate", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dataset"] == dataset


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("# my own config\n")
    result = run("init", path)
    assert result.exit_code == 2
    assert f"Error: {path}: already exists; pass --force to overwrite it" in result.stderr
    assert path.read_text() == "# my own config\n"
    result = run("init", path, "--force", "--template", "cnn")
    assert result.exit_code == 0
    assert "conv2d" in path.read_text()


def test_init_force_never_replaces_a_fifo_or_a_device(tmp_path: Path) -> None:
    """--force replaces a file, never what is not one: renaming over /dev/null (as root)
    replaced the device with a regular file."""
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    result = run("init", fifo, "--force")
    assert result.exit_code == 2, result.output
    assert f"{fifo}: is a FIFO (named pipe); dlcli writes a config only over a regular file" in (
        result.stderr
    )
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.yaml"]
    device = tmp_path / "null.yaml"
    device.symlink_to("/dev/null")  # a link is replaced itself: the device is untouched
    assert run("init", device, "--force").exit_code == 0
    assert device.is_file() and not device.is_symlink()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_line_break_in_the_file_name_stays_inside_the_comments(tmp_path: Path) -> None:
    """init 'n<newline>l.yaml' wrote the name into its header comments as is, so the second
    line was no comment: 'internal error: ParserError' (exit 1); config show's header too."""
    path = tmp_path / "n\nl.yaml"
    result = run("init", path, "--quiet")
    assert result.exit_code == 0, result.output
    text = path.read_text()
    assert text.startswith(f"# dlcli train '{tmp_path}/n\\nl.yaml'\n#\n")  # quoted: a shell word
    assert load_config(path).output.dir == "runs/n\nl"
    shown = run("config", "show", path)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith(f"# {tmp_path}/n\\nl.yaml, resolved:")
    assert parse_config(yaml.safe_load(shown.stdout)) == load_config(path)


def test_init_errors(tmp_path: Path) -> None:
    result = run("init", tmp_path / "x.yaml", "--dataset", "fashion_mnist")
    assert result.exit_code == 2
    assert "unknown dataset 'fashion_mnist' (did you mean 'fashion-mnist'?)" in result.stderr
    result = run("init", tmp_path / "x.yaml", "--template", "rnn")
    assert result.exit_code == 2 and "'rnn' is not one of 'mlp', 'cnn'" in result.stderr
    result = run("init", tmp_path)
    assert result.exit_code == 2 and "is a directory" in result.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_init_from_data_that_is_not_there_is_a_data_problem(tmp_path: Path) -> None:
    """--from MISSING was click's exit 2 while --from /dev/null (and evaluate --data MISSING,
    data check MISSING) are exit 3: all are the data's problem, exit 3, nothing written."""
    for data in (tmp_path / "nope", Path("/dev/null")):
        result = run("init", tmp_path / "x.yaml", "--from", data)
        assert result.exit_code == 3, result.output
        assert result.stderr.startswith(f"Error: {data}: ")
    assert (
        "not found (expected a folder of class folders"
        in run("init", tmp_path / "x.yaml", "--from", tmp_path / "nope").stderr
    )
    assert not (tmp_path / "x.yaml").exists()


# --- config show --------------------------------------------------------------------------------


def test_init_from_train_and_validation_folders_writes_a_config_that_validates(
    tmp_path: Path,
) -> None:
    from image_trees import write_learnable_tree

    for split in ("train", "validation"):
        write_learnable_tree(tmp_path / "data" / split, 8)
    config = tmp_path / "x.yaml"
    assert run("init", config, "--from", tmp_path / "data").exit_code == 0
    cfg = load_config(config)  # no validation_split beside the validation folder
    assert cfg.data.validation is not None
    assert "validation_split" not in config.read_text()


def test_show_prints_the_resolved_config_with_docs(tmp_path: Path) -> None:
    config = REPO_ROOT / "configs" / "fashion-mnist-cnn.yaml"
    result = run("config", "show", config, "--set", "training.epochs=3")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith(f"# {config}, resolved: defaults filled in, --set overrides applied\n")
    shown = parse_config(yaml.safe_load(text))
    assert shown == load_config(config, ["training.epochs=3"])
    assert shown.training.epochs == 3
    assert "  epochs: 3                     # passes over the training set" in text
    assert "    beta2: 0.999                # Adam's second-moment decay" in text
    assert "training:                       # how to fit" in text
    assert "    - type: conv2d\n      filters: 16               # output channels\n" in text
    assert "\x1b[" not in text


def test_show_round_trips_every_value_kind() -> None:
    cfg = load_config(
        REPO_ROOT / "configs" / "fashion-mnist-mlp.yaml",
        [
            "training.optimizer.epsilon=1e-7",
            "data.class_names=['a: b', 'yes', '#x', '1', null2, c, d, e, f, g]",
            "output.dir='runs/odd name: #1'",
            "training.lr_schedule={name: cosine, warmup_epochs: 0.5}",
            "training.early_stopping={patience: 2}",
        ],
    )
    assert cfg.training.lr_schedule is not None and cfg.training.early_stopping is not None
    assert parse_config(yaml.safe_load(commented_yaml(cfg))) == cfg


def test_show_json_is_the_resolved_config(tmp_path: Path) -> None:
    config = REPO_ROOT / "configs" / "mnist-mlp.yaml"
    result = run("config", "show", config, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == to_dict(load_config(config))
    assert doc["training"]["optimizer"]["beta1"] == 0.9  # a default, filled in
    assert result.stderr == ""


def test_every_field_has_a_doc() -> None:
    def walk(cls: Any) -> list[str]:
        missing = []
        for f in dataclasses.fields(cls):
            if f.name != "type" and not f.metadata.get("doc"):
                missing.append(f"{cls.__name__}.{f.name}")
        return missing

    from dlcli.config import (
        LAYER_TYPES,
        DataConfig,
        ModelConfig,
        OptimizerConfig,
        OutputConfig,
        TrainingConfig,
    )

    classes = [Config, DataConfig, ModelConfig, OptimizerConfig, TrainingConfig, OutputConfig]
    assert [name for cls in classes for name in walk(cls)] == []
    assert all(walk(cls) == [] for cls in LAYER_TYPES.values())


# --- config validate ------------------------------------------------------------------------


@pytest.mark.parametrize("config", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=str)
def test_shipped_configs_validate(config: Path) -> None:
    # the suite has the MNIST archives (data/); the others' data is checked elsewhere
    dataset = yaml.safe_load(config.read_text())["data"]["dataset"]
    no_data = [] if dataset in ("mnist", "fashion-mnist") else ["--no-data"]
    result = run("config", "validate", config, *no_data)
    assert result.exit_code == 0, result.output
    assert f"{config}: valid (" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainig.epochs=2"], "trainig: unknown key (did you mean 'training'?)"),
        (
            ["model.layers[0]={type: conv2d, filters: 4, kernel_size: 29}"],
            "model.layers[0]: window 29x29 is larger than its input 28x28",
        ),
        (
            ["model.layers[3].units=7"],
            "the last layer outputs shape (7,), but the dataset has 10 classes",
        ),
        (
            ["model.input_shape=[32, 32, 3]"],
            "model.input_shape: the config says [32, 32, 3], but fashion-mnist's images are "
            "[28, 28, 1]",
        ),
        (
            ["training.optimizer.nesterov=true"],
            "training.optimizer.nesterov: only sgd supports Nesterov momentum",
        ),
        (["training.device=tpu"], "training.device: expected auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_validate_catches_what_training_would_fail_on(overrides: list[str], message: str) -> None:
    config = REPO_ROOT / "configs" / "fashion-mnist-mlp.yaml"
    args = [a for o in overrides for a in ("--set", o)]
    result = run("config", "validate", config, *args, "--json")
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "config" and error["code"] == 2
    assert message in error["message"], error["message"]
    assert error["message"].startswith(str(config))


def test_validate_a_missing_or_broken_file(tmp_path: Path) -> None:
    result = run("config", "validate", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "config file not found" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    result = run("config", "validate", broken)
    assert result.exit_code == 2 and "invalid YAML at line" in result.stderr


def test_validate_a_cuda_config_on_any_machine() -> None:
    """A GPU config is valid on the CPU-only machine that runs the pre-commit hook."""
    config = REPO_ROOT / "configs" / "fashion-mnist-mlp.yaml"
    for setting in ("training.device=cuda:1", "training.precision=fp16"):
        result = run("config", "validate", config, "--set", setting)
        assert result.exit_code == 0, result.output


def test_an_interrupted_config_write_leaves_no_file_nor_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while init wrote (only an OSError was cleaned up) left ``.NAME.tmp-PID`` and
    the folders it made."""
    from dlcli import config_tools
    from dlcli.errors import Interrupted

    def interrupted(*args: Any) -> None:
        raise Interrupted("interrupted")

    monkeypatch.setattr(config_tools.os, "replace", interrupted)
    with pytest.raises(Interrupted):
        config_tools.write_atomically(tmp_path / "new" / "c.yaml", b"x: 1\n", "the config")
    assert list(tmp_path.iterdir()) == []
