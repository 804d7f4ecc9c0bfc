"""The version of dlcli (a leaf: every module may import it)."""

from __future__ import annotations

__version__ = "0.1.0"


def describe() -> str:
    """``dlcli --version``: dlcli's version and what a bug report needs beside it (Python,
    torch, the platform), read from the installed packages' metadata, without importing torch."""
    import platform
    from importlib import metadata

    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return (
        f"dlcli, version {__version__} (Python {platform.python_version()}, torch {torch}, "
        f"{platform.system()} {platform.machine()})"
    )
