"""Every command has help text and is in the README (sqlite-utils' test_docs.py); the README's
CI example is exactly scripts/ci-example.sh; the exit-code table matches dlcli.errors."""

from __future__ import annotations

import re

import click
import pytest
from conftest import REPO_ROOT

from dlcli import errors
from dlcli.cli import cli

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: str = "dlcli") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found += _commands(command, path)
    return found


COMMANDS = _commands(cli)


def test_the_command_list_is_not_empty() -> None:
    names = {path for path, _ in COMMANDS}
    assert {"dlcli predict", "dlcli export", "dlcli init", "dlcli config show"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_help(path: str, command: click.Command) -> None:
    assert command.help and command.help.strip(), f"{path} has no help text"
    assert command.get_short_help_str().strip()


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_is_in_the_readme(path: str, command: click.Command) -> None:
    assert re.search(rf"`{re.escape(path)}[` ]|^    {re.escape(path)}\b", README, re.M), (
        f"{path} is not documented in README.md"
    )


def test_readme_ci_example_is_the_shipped_script() -> None:
    script = (REPO_ROOT / "scripts" / "ci-example.sh").read_text(encoding="utf-8")
    assert f"```bash\n{script}```" in README


def test_exit_code_table_matches_the_code() -> None:
    for code in (
        errors.EXIT_OK,
        errors.EXIT_INTERNAL,
        errors.EXIT_USAGE,
        errors.EXIT_DATA,
        errors.EXIT_GATE,
        errors.EXIT_INTERRUPTED,
    ):
        assert re.search(rf"^\| {code} \| ", README, re.M), f"exit code {code} not in README"
    assert errors.GateError.exit_code == 4 and errors.ConfigError.exit_code == 2


def test_completion_is_documented() -> None:
    for shell in ("bash", "zsh", "fish"):
        assert f"_DLCLI_COMPLETE={shell}_source dlcli" in README


def _code_map() -> list[str]:
    """The paths the README's code map lists (``dlcli/x.py``, or a folder ``dlcli/cli/``)."""
    block = README.split("Code map", 1)[1].split("\n\n", 2)[1]
    return re.findall(r"^    (dlcli/\S*)", block, re.M)


def test_the_readme_code_map_lists_every_module_and_only_real_ones() -> None:
    listed = _code_map()
    assert "dlcli/engine.py" in listed and "dlcli/cli/" in listed
    missing_files = [path for path in listed if not (REPO_ROOT / path).exists()]
    assert not missing_files, f"README.md's code map lists what is not there: {missing_files}"
    folders = tuple(path for path in listed if path.endswith("/"))
    modules = sorted(
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "dlcli").rglob("*.py")
        if path.name != "__init__.py" or path.parent.name == "dlcli"
    )
    unlisted = [m for m in modules if m not in listed and not m.startswith(folders)]
    assert not unlisted, f"README.md's code map leaves out {unlisted}"
