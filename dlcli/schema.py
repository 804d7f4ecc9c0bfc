"""The config's JSON Schema, generated from the dataclasses of ``dlcli.config`` (their types,
defaults, one-line docs and number checks), so editors complete and check a config file with
the very rules ``load_config`` applies. ``dlcli config schema`` prints it; a config opts in
with its first line (the YAML language server of VS Code, JetBrains IDEs, Neovim, ...):

    dlcli config schema > dlcli.schema.json
    # yaml-language-server: $schema=dlcli.schema.json      (a path relative to the config)

What JSON Schema cannot say (a monitor naming a reported metric, a model's shapes) is left to
``dlcli config validate``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from dlcli import limits
from dlcli.config import (
    BYTE,
    CLASS_WEIGHT,
    CLASS_WEIGHT_MAX,
    CLASSES,
    DIVISOR,
    FRACTION,
    LEARNING_RATE,
    LEARNING_RATE_FLOOR,
    LEARNING_RATE_MAX,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    SCHEDULE_TYPES,
    SEED,
    THREADS,
    UNIT_INTERVAL,
    UNIT_POSITIVE,
    WORKERS,
    Check,
    Config,
    LayerSpec,
    ScheduleSpec,
)
from dlcli.version import __version__

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# The number checks of dlcli.config, as JSON Schema keywords (a check missing here fails
# tests/test_schema.py: add its bounds when you add a check).
BOUNDS: dict[str, dict[str, float]] = {
    POSITIVE[1]: {"exclusiveMinimum": 0},
    NON_NEGATIVE[1]: {"minimum": 0},
    FRACTION[1]: {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
    PROBABILITY[1]: {"minimum": 0, "exclusiveMaximum": 1},
    SEED[1]: {"minimum": 0, "maximum": limits.INT_MAX},
    BYTE[1]: {"minimum": 0, "maximum": 255},
    UNIT_INTERVAL[1]: {"minimum": 0, "maximum": 1},
    THREADS[1]: {"minimum": 1, "maximum": limits.THREADS_MAX},
    CLASSES[1]: {"minimum": 1, "maximum": limits.CLASSES_MAX},
    WORKERS[1]: {"minimum": 1, "maximum": limits.WORKERS_MAX},
    LEARNING_RATE[1]: {"exclusiveMinimum": 0, "maximum": LEARNING_RATE_MAX},
    LEARNING_RATE_FLOOR[1]: {"minimum": 0, "maximum": LEARNING_RATE_MAX},
    UNIT_POSITIVE[1]: {"exclusiveMinimum": 0, "maximum": 1},
    CLASS_WEIGHT[1]: {"minimum": 0, "maximum": CLASS_WEIGHT_MAX},
    DIVISOR[1]: {"minimum": 1},
}


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a dlcli config file."""
    definitions: dict[str, Any] = {}
    root = _dataclass(Config, definitions)
    return {
        "$schema": DIALECT,
        "title": f"dlcli {__version__} config",
        "description": "A dlcli training config (dlcli train CONFIG); see dlcli config show.",
        **root,
        "$defs": definitions,
    }


def _dataclass(cls: type[Any], definitions: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        prop = _type(hints[f.name], definitions)
        if f.metadata.get("doc"):
            prop["description"] = f.metadata["doc"]
        check: Check | None = f.metadata.get("check")
        if check is not None:
            prop = _bounded(prop, BOUNDS[check[1]])
        if f.metadata.get("path") or f.metadata.get("cwd_path"):
            prop = _non_empty(prop)
        default = _default(f)
        if default is not dataclasses.MISSING:
            prop["default"] = default
        elif f.name not in ("type", "name"):
            required.append(f.name)
        properties[f.name] = prop
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _non_empty(prop: dict[str, Any]) -> dict[str, Any]:
    """A path's text may not be empty (``load_config``: "expected a path, found an empty
    text")."""
    if prop.get("type") == "string":
        return {**prop, "minLength": 1}
    if "anyOf" in prop:
        return {**prop, "anyOf": [_non_empty(option) for option in prop["anyOf"]]}
    return prop


def _type(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    origin = get_origin(hint)
    if hint is LayerSpec:
        return _union_of(get_args(LayerSpec), "type", definitions)
    if hint is ScheduleSpec or (origin in (Union, types.UnionType) and _is_schedule(hint)):
        named = _union_of(tuple(SCHEDULE_TYPES.values()), "name", definitions)
        options = [named, {"enum": list(SCHEDULE_TYPES)}]  # or just the name
        if type(None) in get_args(hint):
            options.append({"type": "null"})
        return {"anyOf": options}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type(option, definitions) for option in get_args(hint)]}
    if origin is Literal:
        return {"enum": list(get_args(hint))}
    if origin is list:
        return {"type": "array", "items": _type(get_args(hint)[0], definitions)}
    if origin is dict:  # tune.space: key path → one search dimension (see dlcli.config)
        return {"type": "object", "additionalProperties": _SEARCH_PARAM}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        name = hint.__name__
        if name not in definitions:
            definitions[name] = {}  # a placeholder while its fields are described
            definitions[name] = _dataclass(typing.cast(type, hint), definitions)
        return {"$ref": f"#/$defs/{name}"}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint is type(None):
        return {"type": "null"}
    return {"type": simple[hint]}


def _union_of(classes: tuple[Any, ...], key: str, definitions: dict[str, Any]) -> dict[str, Any]:
    """A choice of mappings told apart by ``key`` (a layer's ``type``, a schedule's ``name``)."""
    options = [_type(cls, definitions) for cls in classes]
    return {"type": "object", "required": [key], "oneOf": options}


def _is_schedule(hint: Any) -> bool:
    return any(option in SCHEDULE_TYPES.values() for option in get_args(hint))


def _bounded(prop: dict[str, Any], bounds: dict[str, float]) -> dict[str, Any]:
    """Bounds on the number in ``prop`` (also inside ``number | null``), or on each number of
    a list of them (``training.class_weights``)."""
    if "anyOf" in prop:
        return {**prop, "anyOf": [_bounded(option, bounds) for option in prop["anyOf"]]}
    if prop.get("type") in ("integer", "number"):
        return {**prop, **bounds}
    if prop.get("type") == "array":
        return {**prop, "items": _bounded(prop["items"], bounds)}
    return prop


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        return value
    return dataclasses.MISSING


_PAIR = {"type": "array", "minItems": 2, "maxItems": 2}
# One entry of tune.space (dlcli.config.search_params checks the rest: low < high, the key).
_SEARCH_PARAM: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "required": [kind],
            "properties": {
                kind: {**_PAIR, "items": {"type": "integer" if kind == "int" else "number"}},
                "log": {"type": "boolean"},
                "step": {"type": "number", "exclusiveMinimum": 0},
            },
            "additionalProperties": False,
        }
        for kind in ("float", "int")
    ]
    + [
        {
            "type": "object",
            "required": ["choice"],
            "properties": {
                "choice": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": ["number", "string", "boolean", "null"]},
                }
            },
            "additionalProperties": False,
        }
    ],
    "description": "{float: [low, high], log: true} | {int: [low, high]} | {choice: [...]}",
}
