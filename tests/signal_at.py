"""Run the dlcli program with a signal sent to itself at a named moment (a test hook, kept
with the tests): ``python tests/signal_at.py MODULE:ATTR[.METHOD] SIGNAL N -- DLCLI ARGS``
sends SIGNAL when the function is entered for the N-th time, then lets it run."""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from typing import Any


def main() -> None:
    target, name, nth, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: signal_at.py MODULE:ATTR SIGNAL N -- ARGS"
    module_name, _, attr = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *path, last = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, last)
    calls = [0]

    @functools.wraps(original)
    def wrapper(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        if calls[0] == int(nth):
            os.kill(os.getpid(), getattr(signal, name))
        return original(*a, **k)

    setattr(owner, last, wrapper)
    sys.argv = ["dlcli", *args]
    from dlcli.entry import main as dlcli_main

    dlcli_main()


if __name__ == "__main__":
    main()
