"""A full disk at every write (issue 14): run dir, checkpoint, export, plot, init, download.

The disk fills for real: each command runs as a subprocess whose file-size limit
(``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored, as CPython does) makes the kernel fail the write
that crosses it, exactly where a full disk would. Every command must exit 3 with a message
naming the path, and leave no partial file behind.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO_DATA, REPO_ROOT, write_tiny_config

from dlcli.cli import cli
from dlcli.errors import write_problem


def run_with_file_limit(args: list[str], limit: int, cwd: Path = REPO_ROOT) -> tuple[int, str]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "dlcli", *args, "--quiet"],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec,
    )
    return proc.returncode, proc.stderr


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("disk-full")
    config = write_tiny_config(root)
    run_dir = root / "run"
    result = CliRunner().invoke(cli, ["train", str(config), "--quiet", "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    return config, run_dir


def assert_clean_failure(code: int, err: str, path: Path, fragment: str) -> None:
    assert code == 3, err
    assert str(path) in err, err
    assert fragment in err, err
    assert "Traceback" not in err and "internal error" not in err, err


@pytest.mark.parametrize(
    ("limit", "sets", "fragment"),
    [
        (1000, [], "cannot write a checkpoint: the file size limit was reached"),
        (3000, ["training.checkpoint.every=0"], "cannot save the model: the file size limit"),
    ],
    ids=["checkpoint", "run-dir"],
)
def test_train(
    trained: tuple[Path, Path], tmp_path: Path, limit: int, sets: list[str], fragment: str
) -> None:
    config, _ = trained
    out = tmp_path / "out" / "run"
    args = ["train", str(config), "--output", str(out), *[a for s in sets for a in ("--set", s)]]
    code, err = run_with_file_limit(args, limit)
    assert_clean_failure(code, err, out, fragment)
    assert files_under(tmp_path / "out") == [], "partial files left"


def test_export(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = trained
    target = tmp_path / "x" / "model.onnx"
    code, err = run_with_file_limit(["export", str(run_dir), "--out", str(target)], 2000)
    assert_clean_failure(code, err, target, "cannot write the ONNX file: the file size limit")
    assert files_under(tmp_path / "x") == []


def test_plot(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = trained
    out = tmp_path / "plots"
    code, err = run_with_file_limit(["plot", str(run_dir), "--out", str(out)], 3000)
    assert_clean_failure(code, err, out, "cannot write the figure: the file size limit")
    assert not [name for name in files_under(out) if "tmp" in name or name.startswith(".")]
    assert all((out / name).stat().st_size > 0 for name in files_under(out))


def test_init(tmp_path: Path) -> None:
    target = tmp_path / "configs" / "new.yaml"
    code, err = run_with_file_limit(["init", str(target)], 100)
    assert_clean_failure(code, err, target, "cannot write the config: the file size limit")
    assert not (tmp_path / "configs").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_init_into_a_file_system_that_creates_no_file(tmp_path: Path) -> None:
    """/proc refuses to create a file with ENOENT, though the folder is there: said as such,
    not as "the directory vanished while writing"."""
    result = CliRunner().invoke(cli, ["init", "/proc/dlcli-test.yaml"])
    assert result.exit_code == 3, result.output
    assert "/proc/dlcli-test.yaml: cannot write the config: the file system refused to create" in (
        result.stderr
    )
    assert "vanished" not in result.stderr


def test_download(tmp_path: Path) -> None:
    """The MNIST archives from data/ as a local mirror, into a data dir that fills up."""
    data_dir = tmp_path / "data"
    code, err = run_with_file_limit(
        ["download", "mnist", "--data-dir", str(data_dir), "--mirror", str(REPO_DATA / "mnist")],
        5000,
    )
    assert_clean_failure(code, err, data_dir / "mnist", "cannot write: the file size limit")
    assert files_under(data_dir / "mnist") == [], "a partial .part was left"


def test_same_exit_code_for_a_read_only_directory_everywhere(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root ignores file modes, so the read-only disk is simulated where the write happens:
    every command that writes reports it as exit 3 naming the path."""
    _, run_dir = trained

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    import dlcli.config_tools
    import dlcli.plot

    monkeypatch.setattr(dlcli.config_tools.os, "replace", read_only)
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "c.yaml")])
    assert result.exit_code == 3, result.output
    assert f"{tmp_path / 'c.yaml'}: cannot write the config: the directory is not writable" in (
        result.stderr
    )
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(dlcli.plot.os, "replace", read_only)
    result = CliRunner().invoke(cli, ["plot", str(run_dir), "--out", str(tmp_path / "p")])
    assert result.exit_code == 3, result.output
    assert "cannot write the figure: the directory is not writable" in result.stderr


@pytest.mark.parametrize(
    ("err", "said"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
        (OSError(errno.EROFS, "Read-only file system"), "not writable"),
        (OSError(errno.ENOENT, "No such file"), "the directory vanished while writing"),
        (FileNotFoundError(errno.ENOENT, "No such file", "/gone/.x.tmp"), "directory vanished"),
        # The folder is there: a file system that creates no file in it (/proc, /sys).
        (FileNotFoundError(errno.ENOENT, "No such file", "/.x.tmp"),
         "the file system refused to create a file or folder in / (No such file or directory)"),
        (FileExistsError(errno.EEXIST, "File exists"), "a file is in the way, not a folder"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory"), "part of the path is a file"),
        (RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                      "message: \"No space left on device\" }) (os error 28)"),
         "no space left on the device"),
    ],
)  # fmt: skip
def test_write_problems_are_said_in_words(err: BaseException, said: str) -> None:
    assert said in write_problem(err)
