"""``dlcli config schema``: a JSON Schema generated from the config dataclasses, which every
shipped config and every ``dlcli init`` template passes, and which refuses what load_config
refuses where JSON Schema can say it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO_ROOT

from dlcli import config as schema_source
from dlcli.cli import cli
from dlcli.schema import config_schema

jsonschema = pytest.importorskip("jsonschema")

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def validator() -> Any:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(document: Any) -> list[str]:
    return [e.message for e in validator().iter_errors(document)]


def test_there_are_shipped_configs() -> None:
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_passes_the_schema(path: Path) -> None:
    assert errors(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("template", ["mlp", "cnn"])
def test_every_init_template_passes_the_schema(template: str, tmp_path: Path) -> None:
    path = tmp_path / f"{template}.yaml"
    result = CliRunner().invoke(cli, ["init", str(path), "--template", template, "--quiet"])
    assert result.exit_code == 0, result.output
    assert errors(yaml.safe_load(path.read_text())) == []


def base() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "configs" / "fashion-mnist-mlp.yaml").read_text())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("training", "optimizer", "learning_rate"), -0.1),  # POSITIVE
        (("training", "optimizer", "name"), "adagrad"),  # not a choice
        (("training", "epochs"), 2.5),  # not an integer
        (("training", "lr_schedule"), "triangle"),  # unknown schedule name
        (("training", "lr_schedule"), {"name": "step"}),  # step_size required
        (("data", "validation_split"), 1.0),  # FRACTION
        (("model", "layers"), [{"type": "dense"}]),  # units required
        (("model", "layers"), [{"type": "dense", "units": 3, "kernel_size": 3}]),  # unknown
        (("model", "layers"), [{"units": 3}]),  # no type
        (("training", "colour"), "red"),  # unknown key
        (("data", "num_classes"), 10**12),  # CLASSES
        (("data", "workers"), 10**6),  # WORKERS
        (("training", "lr_schedule"), {"name": "step", "step_size": 1, "gamma": 2}),
        (("training", "class_weights"), [1, 1e300]),  # CLASS_WEIGHT, on each item
        (("model", "layers"), [{"type": "batch_norm", "epsilon": 2}]),  # UNIT_POSITIVE
        (("data", "data_dir"), ""),  # an empty path
        (("output", "dir"), ""),
    ],
)
def test_the_schema_refuses_what_load_config_refuses(
    path: tuple[str, ...], value: Any, tmp_path: Path
) -> None:
    document = base()
    node = document
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    assert errors(document), f"the schema accepts {path}={value!r}"
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(document))
    with pytest.raises(schema_source.ConfigError):
        schema_source.load_config(config)


def test_every_number_check_has_its_bounds_in_the_schema() -> None:
    from dlcli.schema import BOUNDS

    checks = {
        f.metadata["check"][1]
        for cls in vars(schema_source).values()
        if isinstance(cls, type) and dataclasses.is_dataclass(cls)
        for f in dataclasses.fields(cls)
        if f.metadata.get("check")
    }
    assert checks <= set(BOUNDS), sorted(checks - set(BOUNDS))


def test_a_schedule_may_be_its_name_alone() -> None:
    document = base()
    document["training"]["lr_schedule"] = "cosine"
    assert errors(document) == []


def test_every_field_is_in_the_schema_with_its_doc_and_default() -> None:
    """Generated from the dataclasses: each field, its one-line doc and its default."""
    defs = config_schema()["$defs"]
    for cls in (schema_source.TrainingConfig, schema_source.Dense, schema_source.DataConfig):
        properties = defs[cls.__name__]["properties"]
        for f in dataclasses.fields(cls):
            assert f.name in properties, (cls.__name__, f.name)
            if f.metadata.get("doc"):
                assert properties[f.name]["description"] == f.metadata["doc"]
    assert defs["TrainingConfig"]["properties"]["epochs"]["default"] == 10
    assert defs["Dense"]["required"] == ["units"]


def test_the_command_prints_the_schema(tmp_path: Path) -> None:
    plain = CliRunner().invoke(cli, ["config", "schema"])
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout) == config_schema()
    as_json = CliRunner().invoke(cli, ["config", "schema", "--json"])
    assert json.loads(as_json.stdout) == config_schema()
