"""What a person sees: `dlcli train` run in a real pseudo-terminal at 80 and 120 columns (the
screen rebuilt by a terminal emulator, pyte, after every write), and through a pipe."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pyte = pytest.importorskip("pyte")

DLCLI = [sys.executable, "-m", "dlcli"]
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Session:
    screens: list[list[str]]  # every distinct screen, in order, lines right-stripped
    code: int

    @property
    def final(self) -> list[str]:
        return self.screens[-1]

    def lines(self) -> list[str]:
        """Every line that was ever on the screen, in the order first seen."""
        seen: dict[str, None] = {}
        for screen in self.screens:
            seen |= dict.fromkeys(line for line in screen if line)
        return list(seen)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "DLCLI_DEBUG"):
        env.pop(name, None)
    return env | {"TERM": "xterm-256color", "OMP_NUM_THREADS": "1"} | extra


def run_in_pty(
    args: list[str], columns: int, rows: int = 60, timeout: float = 300, cwd: Path | None = None
) -> Session:
    """Run ``dlcli ARGS`` (in ``cwd``) with stdin, stdout and stderr on a pty of ``columns`` x
    ``rows``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(
        [*DLCLI, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=clean_env(),
        close_fds=True,
        cwd=cwd,
    )
    os.close(slave)
    screen = pyte.Screen(columns, rows)
    stream = pyte.ByteStream(screen)
    screens: list[list[str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        # Feed write by write so that frames drawn in one read are each seen.
        for part in re.split(rb"(?=\x1b\[\?25l|\r\x1b\[2K)", data):
            stream.feed(part)
            current = [line.rstrip() for line in screen.display]
            if not screens or current != screens[-1]:
                screens.append(current)
    os.close(master)
    code = proc.wait(timeout=60)
    return Session(screens, code)


LIVE_1 = re.compile(r"epoch [1-3]/3 ━{10,} +\d+/15  ETA (\d+:\d\d|-:--)  run (\d+:\d\d|-:--)")
LIVE_2 = re.compile(
    r"loss \d+\.\d{4}  accuracy \d\.\d{4}  lr \d\.\d\de-\d\d  [\d,]+ steps/s  [\d,]+ samples/s"
)


# The run dir the live-display test trains into, relative to its folder: 71 characters, as
# long as the path of a test folder under /tmp/pytest-of-root, whatever the suite's temp
# folder is (a longer one, as pytest-xdist's popen-gwN/, left no room for it on one line).
LIVE_RUN_DIR = "runs/a-run-folder-named-to-fill-most-of-an-80-column-line-of-a-terminal"


@pytest.mark.parametrize("columns", [80, 120])
def test_live_display_in_a_terminal(tiny_config: Path, columns: int) -> None:
    session = run_in_pty(
        ["train", str(tiny_config), "--output", LIVE_RUN_DIR], columns, cwd=tiny_config.parent
    )
    assert session.code == 0, "\n".join(session.final)
    lines = session.lines()
    for line in lines:
        assert len(line) <= columns
    live_1 = [line for line in lines if LIVE_1.fullmatch(line)]
    live_2 = [line for line in lines if LIVE_2.fullmatch(line)]
    assert live_1 and live_2, "\n".join(lines)
    # Every status line is whole: never a number cut at the edge ("1948…", "0:00:…").
    for line in lines:
        assert "…" not in line, line
        if line.startswith("epoch ") and "━" in line:
            assert LIVE_1.fullmatch(line), line
    # Each epoch ends with its summary line; the live lines are gone at the end.
    final = "\n".join(session.final)
    for epoch in (1, 2, 3):
        assert re.search(rf"^epoch {epoch}/3  loss \d\.\d{{4}}  accuracy", final, re.M), final
    assert re.search(r"\d+\.\ds  [\d,]+ samples/s$", final, re.M), final
    assert not [line for line in session.final if line.startswith("epoch") and "━" in line]
    assert not [line for line in session.final if LIVE_2.fullmatch(line)]
    # The summary line breaks between its fields, never inside the run directory's path.
    assert any(f"saved {LIVE_RUN_DIR}" in line for line in session.final), final
    assert "Final metrics (3 epochs, fit" in final
    assert re.search(r"^best epoch \d \(val_loss \d\.\d{4}\)", final, re.M), final


def test_status_lines_fit_narrow_terminals_by_dropping_fields() -> None:
    from dlcli.progress import Status, status_lines

    status = Status(
        epoch=10,
        epochs=100,
        step=123_456,
        steps=600_000,
        logs={"loss": 0.41234, "accuracy": 0.85, "top_k_accuracy": 0.99},
        lr=0.00123,
        steps_per_second=812.4,
        samples_per_second=1_234_567.0,
        eta_epoch=3725.0,
        eta_run=360_000.0,
    )
    wide = [t.plain for t in status_lines(status, 160)]
    assert wide[0].startswith("epoch 10/100 ━")
    assert wide[0].endswith(" 123,456/600,000  ETA 1:02:05  run 100:00:00")
    assert wide[1] == (
        "loss 0.4123  accuracy 0.8500  top_k_accuracy 0.9900  lr 1.23e-03  812 steps/s  "
        "1,234,567 samples/s"
    )
    at_80 = [t.plain for t in status_lines(status, 80)]
    assert at_80[1] == "loss 0.4123  accuracy 0.8500  top_k_accuracy 0.9900  1,234,567 samples/s"
    narrow = [t.plain for t in status_lines(status, 40)]
    assert narrow == ["epoch 10/100  123,456/600,000", "loss 0.4123  accuracy 0.8500"]
    for width in range(20, 200, 7):
        for line in status_lines(status, width):
            assert len(line.plain) <= max(width, len("epoch 10/100  123,456/600,000"))


def test_through_a_pipe_one_plain_line_per_epoch(tiny_config: Path) -> None:
    result = subprocess.run(
        [*DLCLI, "train", str(tiny_config)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert not ESCAPE.search(result.stderr + result.stdout)
    assert "━" not in result.stderr
    epochs = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3
    for n, line in enumerate(epochs, start=1):
        assert re.fullmatch(
            rf"epoch {n}/3  loss \d\.\d{{4}}  accuracy \d\.\d{{4}}  val_loss \d\.\d{{4}}  "
            r"val_accuracy \d\.\d{4}  \d+\.\ds  [\d,]+ samples/s",
            line,
        ), line
    # The tables on stdout: whole numbers and names, no box cut, nothing wider than a line.
    assert "Final metrics (3 epochs, fit" in result.stdout


def test_tables_in_a_pipe_never_cut_a_name_or_number(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "runs"
    names = ["fashion-mnist-mlp-with-a-long-name", "fashion-mnist-cnn-another-long-name"]
    for name in names:
        shutil.copytree(tiny_run, root / name)
    env = clean_env(COLUMNS="80")
    listing = subprocess.run(
        [*DLCLI, "runs", "list", str(root)], capture_output=True, text=True, env=env, timeout=120
    )
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()
    assert not ESCAPE.search(listing.stdout) and "│" not in listing.stdout
    header = rows[1].split()
    assert header[:4] == ["run", "dataset", "layers", "optimizer"]
    for name in names:  # each run on one line, its name and numbers whole
        (row,) = [r for r in rows if r.startswith(name)]
        assert "flatten > dense(16, relu) > dense(4)" in row
        assert re.search(r" 1\.0000 +1\.0000 +\d$", row), row
    compare = subprocess.run(
        [*DLCLI, "runs", "compare", *(str(root / n) for n in names)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert compare.returncode == 0, compare.stderr
    assert all(name in compare.stdout.splitlines()[1] for name in names)
    # predict's top-k columns keep their headers ("#2", not "#…") in a pipe too.
    images = tmp_path / "images.npy"
    import numpy as np

    np.save(images, np.zeros((3, 8, 8), np.uint8))
    predict = subprocess.run(
        [*DLCLI, "predict", str(tiny_run), str(images), "--top-k", "4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert predict.returncode == 0, predict.stderr
    lines = predict.stdout.splitlines()
    assert lines[1].split() == ["item", "class", "name", "probability", "#2", "#3", "#4"]
    assert all(len(line.split()) == 3 + 1 + 3 * 3 for line in lines[2:5]), lines


def test_closing_the_terminal_mid_training_saves_a_checkpoint_and_exits_130(
    tmp_path: Path,
) -> None:
    """A real hangup: the pty is the child's controlling terminal (it leads its session), and
    closing the master makes the kernel send SIGHUP; writes to the terminal then fail with EIO
    while isatty() already says False. The checkpoint is written, and --resume continues it."""
    import yaml
    from conftest import write_tiny_config

    config = write_tiny_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["training"]["epochs"] = 60
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "runs" / "tiny"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [*DLCLI, "train", str(config)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=clean_env(),
        close_fds=True,
        preexec_fn=controlling_terminal,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    while b"Epoch 2" not in seen and b"epoch 2" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
        assert proc.poll() is None, seen.decode(errors="replace")
    time.sleep(0.5)  # the display is drawing
    os.close(master)  # the terminal closes: SIGHUP to the session leader
    assert proc.wait(timeout=120) == 130
    assert list((run_dir / "checkpoints").iterdir()), "no checkpoint was written"
    resumed = subprocess.run(
        [*DLCLI, "train", "--resume", str(run_dir), "--quiet"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 60
