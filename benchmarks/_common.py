"""What the benchmark scripts share: a description of the machine they ran on."""

from __future__ import annotations

import platform
import re
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_section(results: Path, text: str, begin: str, end: str) -> None:
    """Replace the section of ``results`` between the markers ``begin`` and ``end`` with
    ``text`` (which carries the markers), or append it; the rest of the file is left alone."""
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip() + "\n\n" + text
    results.write_text(new)
