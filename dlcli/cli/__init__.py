"""The ``dlcli`` command line: a thin click layer over the library.

Each command parses its options, calls one library function, and reports the result. Errors
are mapped to exit codes in one place, :func:`dlcli_command`; the codes are documented in
``dlcli.errors`` and the README. torch is imported only inside the commands that need it, so
``dlcli --help`` stays fast.

The package holds one module per group of commands; importing it registers them all on
:data:`cli`.
"""

from __future__ import annotations

from dlcli.cli import configs, data, inspect, train, tune, use
from dlcli.cli.base import cli, dlcli_command

__all__ = ["cli", "configs", "data", "dlcli_command", "inspect", "main", "train", "tune", "use"]


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="dlcli")
