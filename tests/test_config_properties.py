"""Property-based tests of the config loader: whatever the YAML document, whatever the mapping,
whatever the ``--set`` override, the result is a Config or a ConfigError — never another
exception (which the CLI would report as an internal error)."""

from __future__ import annotations

import copy
import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlcli.config import (
    LAYER_TYPES,
    SCHEDULE_TYPES,
    Config,
    dump_yaml,
    load_config,
    parse_config,
    parse_yaml,
    to_dict,
)
from dlcli.errors import ConfigError

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

VALID: dict[str, Any] = {
    "data": {"dataset": "mnist", "validation_split": 0.1},
    "model": {
        "input_shape": [28, 28, 1],
        "layers": [
            {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same"},
            {"type": "batch_norm"},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
    },
    "training": {
        "epochs": 2,
        "lr_schedule": {"name": "one_cycle", "max_lr": 0.01},
        "early_stopping": {"patience": 2},
        "target": {"metric": "val_accuracy", "value": 0.9},
    },
    "output": {"dir": "runs/x"},
}

# Names a config uses, so that generated mappings hit real keys as well as unknown ones.
KEYS = sorted(
    {
        *VALID,
        *(k for section in VALID.values() for k in section),
        "optimizer",
        "learning_rate",
        "name",
        "type",
        "units",
        "rate",
        "metrics",
        "checkpoint",
        "every",
        "monitor",
        "batch_size",
        "label_smoothing",
        "stop_at_target",
        *LAYER_TYPES,
        *SCHEDULE_TYPES,
    }
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(KEYS),
    st.binary(max_size=8),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)


def loads_or_config_error(run: Any) -> Config | None:
    try:
        cfg = run()
    except ConfigError as err:
        assert str(err)  # a message a user can read
        return None
    assert isinstance(cfg, Config)
    return cfg


def check_round_trip(cfg: Config) -> None:
    """A config that loads saves (config.yaml in a run dir) and loads back the same."""
    again = parse_config(parse_yaml(dump_yaml(cfg)))
    assert to_dict(again) == to_dict(cfg)


@SETTINGS
@given(st.text(alphabet=string.printable + "äß€\u2028", max_size=200))
def test_any_text_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    cfg = loads_or_config_error(lambda: load_config(path))
    if cfg is not None:
        check_round_trip(cfg)


YAMLISH = st.lists(
    st.sampled_from(
        [*KEYS, ":", ": ", "- ", "\n", "\n  ", "\n    ", "[", "]", "{", "}", ", ", "#", "&a ",
         "*a", "!!binary ", "!!timestamp ", "!!set ", "!!python/object ", "? ", "|", ">", "'",
         '"', "%YAML 1.1\n", "---\n", "...", "2001-13-45", "1e-3", ".inf", ".nan", "0x1F",
         "0o17", "1_000", "~", "null", "yes", "<<: *a\n", "\t", "@", "`"]
    ),
    max_size=40,
).map("".join)  # fmt: skip


@SETTINGS
@given(YAMLISH)
def test_yaml_like_documents(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    loads_or_config_error(lambda: load_config(path))


@SETTINGS
@given(st.binary(max_size=64))
def test_any_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    loads_or_config_error(lambda: load_config(path))


@SETTINGS
@given(values)
def test_any_yaml_document_of_values(tmp_path: Path, value: Any) -> None:
    try:
        text = yaml.safe_dump(value)
    except yaml.YAMLError:
        return  # not representable as YAML at all
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    loads_or_config_error(lambda: load_config(path))


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """The valid config with a few values replaced, keys added or removed at random paths."""
    raw = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        node: Any = raw
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
        if isinstance(node, dict):
            action = draw(st.sampled_from(["set", "add", "drop"]))
            if action == "drop" and node:
                del node[draw(st.sampled_from(list(node)))]
            elif action == "add":
                node[draw(keys)] = draw(values)
            elif node:
                node[draw(st.sampled_from(list(node)))] = draw(values)
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(values)
    return raw


@SETTINGS
@given(mutated_configs())
def test_mappings_shaped_like_configs(raw: dict[str, Any]) -> None:
    cfg = loads_or_config_error(lambda: parse_config(raw))
    if cfg is not None:
        check_round_trip(cfg)


@SETTINGS
@given(values)
def test_any_value_as_the_whole_config(value: Any) -> None:
    loads_or_config_error(lambda: parse_config(value))


OVERRIDE_KEYS = st.sampled_from(
    ["training.epochs", "training.lr_schedule", "model.layers[0]", "model.layers[9].units",
     "data", "training.optimizer.name", "training", "x.y[1]", "model.input_shape.a", "[0]",
     "training..epochs", "training.early_stopping", "training.target"]
)  # fmt: skip


@SETTINGS
@given(st.lists(st.tuples(OVERRIDE_KEYS, st.text(max_size=20)), max_size=3))
def test_any_set_override(tmp_path: Path, overrides: list[tuple[str, str]]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    sets = [f"{key}={value}" for key, value in overrides]
    loads_or_config_error(lambda: load_config(path, sets))


def test_the_valid_config_is_valid() -> None:
    cfg = parse_config(copy.deepcopy(VALID))
    check_round_trip(cfg)
