"""Shell completion beyond click's commands and options: dataset names, run directories and
``--set`` keys (from the config schema, with their choices after ``=``). No torch here: the
shell runs dlcli at every Tab.

Enabling it in bash, zsh and fish: see the README's "Shell completion".
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import click
from click.shell_completion import CompletionItem

from dlcli.config import LAYER_TYPES, SCHEDULE_TYPES, Config

RUNS = Path("runs")


def complete_datasets(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The registry's dataset names (``dlcli download fash<Tab>``)."""
    from dlcli.data.registry import REGISTRY

    return [
        CompletionItem(name, help=entry.description)
        for name, entry in REGISTRY.items()
        if name.startswith(incomplete)
    ]


def complete_run_dirs(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Directories, runs first: ``runs/<name>`` for a bare word, else the folders in the
    directory typed so far (``runs/sweep/<Tab>``). A run is a folder with a manifest.json."""
    if not incomplete:
        folders = _folders(RUNS, "") + _folders(Path("."), "")
    elif "/" not in incomplete:  # a bare word: runs/<word>... and ./<word>...
        folders = _folders(RUNS, incomplete) + _folders(Path("."), incomplete)
    elif incomplete.endswith("/"):
        folders = _folders(Path(incomplete), "")
    else:
        typed = Path(incomplete)
        folders = _folders(typed.parent, typed.name)
    runs = [f for f in folders if (f / "manifest.json").is_file()]
    others = [f for f in folders if f not in runs]
    return [CompletionItem(_shown(f, incomplete), help="run") for f in runs] + [
        CompletionItem(_shown(f, incomplete)) for f in others
    ]


def _folders(parent: Path, prefix: str) -> list[Path]:
    try:
        children = sorted(parent.iterdir())
    except OSError:
        return []
    return [
        child
        for child in children
        if child.name.startswith(prefix)
        and not child.name.startswith(".")
        and not _breaks_a_line(str(child))
        and child.is_dir()
    ]


def _breaks_a_line(name: str) -> bool:
    """A name with a control character (a line break, a tab) is no candidate: the shells read
    completions a line each (fish: value TAB help), so "a\nb" became two, "a" and "b"."""
    return any(ord(c) < 32 or c == "\x7f" for c in name)


def _shown(folder: Path, incomplete: str) -> str:
    text = str(folder)
    if incomplete.startswith("./") and not text.startswith("./"):
        text = f"./{text}"
    return text


DEVICES = ("auto", "cpu", "cuda", "mps")


def complete_devices(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``--device``: auto, cpu, cuda, mps (``cuda:N`` is typed by hand)."""
    return [CompletionItem(name) for name in DEVICES if name.startswith(incomplete)]


def complete_set(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``--set`` keys from the schema (``training.ep<Tab>`` → ``training.epochs=``), and
    after ``=`` the choices of a key that has them (``training.optimizer.name=<Tab>``)."""
    key, sep, value = incomplete.partition("=")
    keys = dict(config_keys())
    if sep:
        choices = list(DEVICES) if key == "training.device" else _choices(keys.get(key))
        return [CompletionItem(f"{key}={c}") for c in choices if c.startswith(value)]
    return [
        CompletionItem(f"{name}=", help=doc)
        for name, (_, doc) in keys.items()
        if name.startswith(incomplete)
    ]


def config_keys(cls: type[Any] = Config, prefix: str = "") -> Iterator[tuple[str, tuple[Any, str]]]:
    """Every settable key path of the schema with its type and one-line doc: sections and
    their fields, ``model.layers[0].<field>`` for every layer type's fields and
    ``training.lr_schedule.<field>`` for every schedule's."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        hint, doc = hints[f.name], f.metadata.get("doc", "")
        nested = _dataclass_in(hint)
        if path == "model.layers":
            yield path, (hint, doc)
            yield from _union_fields(LAYER_TYPES.values(), "model.layers[0].")
        elif path == "training.lr_schedule":
            yield path, (hint, doc)
            yield from _union_fields(SCHEDULE_TYPES.values(), f"{path}.")
        elif nested is not None:
            yield path, (hint, doc)
            yield from config_keys(nested, f"{path}.")
        else:
            yield path, (hint, doc)


def _union_fields(classes: Any, prefix: str) -> Iterator[tuple[str, tuple[Any, str]]]:
    seen: dict[str, tuple[Any, str]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in seen:
                seen[f.name] = (hints[f.name], f.metadata.get("doc", ""))
            elif get_origin(hints[f.name]) is Literal:  # "type"/"name": every class's value
                old = seen[f.name][0]
                values = (*get_args(old), *get_args(hints[f.name]))
                seen[f.name] = (Literal[values], "")
    for name, value in seen.items():
        yield f"{prefix}{name}", value


def _dataclass_in(hint: Any) -> type[Any] | None:
    if dataclasses.is_dataclass(hint):
        return typing.cast(type, hint)
    if get_origin(hint) in (Union, types.UnionType):
        for option in get_args(hint):
            if dataclasses.is_dataclass(option):
                return typing.cast(type, option)
    return None


def _choices(entry: tuple[Any, str] | None) -> list[str]:
    if entry is None:
        return []
    hint = entry[0]
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    choices: list[str] = []
    for option in options:
        if get_origin(option) is Literal:
            choices += [str(c) for c in get_args(option)]
        elif option is bool:
            choices += ["true", "false"]
        elif option is type(None):
            choices.append("null")
    return list(dict.fromkeys(choices))
