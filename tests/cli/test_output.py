"""Output discipline, for every command: --json is exactly one JSON document on stdout (errors
too, click's own usage errors included), human text on stderr, --quiet, --no-color / NO_COLOR,
no ANSI off a terminal, the exit codes, Ctrl-C, and shell completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import REPO_DATA, REPO_ROOT

from dlcli.cli import cli
from dlcli.data.idx import write_idx
from dlcli.report import Reporter

DLCLI = [sys.executable, "-m", "dlcli"]
CONFIG = REPO_ROOT / "configs" / "fashion-mnist-mlp.yaml"


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "DLCLI_DEBUG"):
        monkeypatch.delenv(name, raising=False)


def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    path = tmp_path / "inputs-idx3-ubyte"
    write_idx(path, np.zeros((3, 8, 8), np.uint8))
    return path


def every_command(
    tiny_config: Path, tiny_run: Path, inputs: Path, tmp: Path
) -> dict[str, list[Any]]:
    """A successful invocation of each command."""
    return {
        "train": ["train", tiny_config, "--set", "training.epochs=1"],
        "evaluate": ["evaluate", tiny_run],
        "summary": ["summary", tiny_config],
        "download": ["download", "fashion-mnist", "--data-dir", REPO_DATA],
        "download --list": ["download", "--list"],
        "predict": ["predict", tiny_run, inputs],
        "export": ["export", tiny_run, "--out", tmp / "m.onnx"],
        "init": ["init", tmp / "new.yaml", "--force"],
        "config show": ["config", "show", CONFIG],
        "config validate": ["config", "validate", CONFIG],
    }


COMMANDS = [
    "train",
    "evaluate",
    "summary",
    "download",
    "download --list",
    "predict",
    "export",
    "init",
    "config show",
    "config validate",
]


@pytest.mark.parametrize("name", COMMANDS)
def test_json_is_one_document_on_stdout_and_quiet_silences_stderr(
    name: str, tiny_config: Path, tiny_run: Path, inputs: Path, tmp_path: Path
) -> None:
    if name == "export":
        pytest.importorskip("onnxscript")
    args = every_command(tiny_config, tiny_run, inputs, tmp_path)[name]
    result = run(*args, "--json", "--overwrite" if name == "train" else "--quiet")
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.stdout), dict)  # one document, nothing else
    assert "\x1b[" not in result.stderr
    quiet = run(*args, "--json", "--quiet", *(["--overwrite"] if name == "train" else []))
    assert quiet.exit_code == 0, quiet.output
    assert isinstance(json.loads(quiet.stdout), dict)
    assert quiet.stderr == ""


@pytest.mark.parametrize("name", COMMANDS)
def test_human_output_has_no_ansi_off_a_terminal(
    name: str, tiny_config: Path, tiny_run: Path, inputs: Path, tmp_path: Path
) -> None:
    if name == "export":
        pytest.importorskip("onnxscript")
    args = every_command(tiny_config, tiny_run, inputs, tmp_path)[name]
    result = run(*args, *(["--overwrite"] if name == "train" else []))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()  # a human result
    assert "\x1b[" not in result.stdout + result.stderr
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


@pytest.mark.parametrize(
    ("args", "code", "kind", "message"),
    [
        (["train", "missing.yaml"], 2, "config", "missing.yaml: config file not found"),
        (["evaluate", "missing-dir"], 3, "model_dir", "missing-dir: model directory not found"),
        (["download", "nmist"], 2, "usage", "unknown dataset 'nmist' (did you mean 'mnist'?)"),
        (["predict", "missing-dir", "x.npy"], 3, "model_dir", "model directory not found"),
        (["export", "missing-dir"], 3, "model_dir", "model directory not found"),
        (["config", "show", "missing.yaml"], 2, "config", "config file not found"),
        (["config", "validate", "missing.yaml"], 2, "config", "config file not found"),
        (["init", "--dataset", "cifar"], 2, "usage", "unknown dataset 'cifar'"),
    ],
)
def test_errors_under_json_are_json_documents(
    args: list[str], code: int, kind: str, message: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    if args[0] == "export":
        pytest.importorskip("onnxscript")
    result = run(*args, "--json")
    assert result.exit_code == code
    error = json.loads(result.stdout)["error"]
    assert error["code"] == code and error["kind"] == kind
    assert message in error["message"]
    assert f"Error: {error['message']}" in result.stderr
    assert "Traceback" not in result.output


# --- click's own usage errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "x.yaml", "--bogus"], "No such option '--bogus'."),
        (["predict"], "Missing argument 'MODEL_DIR'."),
        (["trian"], "No such command 'trian'."),
        (["evaluate", "x", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["summary", "missing.yaml"], "Path 'missing.yaml' does not exist."),
        (["config", "shwo", "x.yaml"], "No such command 'shwo'."),
        (["export", "x", "--format", "tflite"], "Invalid value for '--format'"),
    ],
)
def test_click_usage_errors_exit_2_and_are_json_under_json(
    args: list[str], message: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(*args, "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["code"] == 2 and error["kind"] == "usage"
    assert message in error["message"]
    assert "Usage: " in result.stderr and message in result.stderr
    plain = run(*args)
    assert plain.exit_code == 2 and plain.stdout == "" and message in plain.stderr


def test_json_after_double_dash_is_not_a_flag(tmp_path: Path) -> None:
    result = run("train", "--bogus", "--", "--json")
    assert result.exit_code == 2 and result.stdout == ""


def test_help_and_version_are_not_affected() -> None:
    assert run("--help").exit_code == 0
    assert run("predict", "--help", "--json").exit_code == 0
    shown = run("--version").stdout
    assert shown.startswith("dlcli, version ") and ", torch " in shown and "(Python 3." in shown


@pytest.mark.parametrize(
    ("value", "on"),
    [("", False), ("0", False), ("false", False), (" No ", False), ("off", False), ("1", True),
     ("yes", True)],
)  # fmt: skip
def test_dlcli_debug_is_off_when_set_to_a_no(
    monkeypatch: pytest.MonkeyPatch, value: str, on: bool
) -> None:
    from dlcli.errors import debugging

    monkeypatch.setenv("DLCLI_DEBUG", value)
    assert debugging() is on
    monkeypatch.delenv("DLCLI_DEBUG")
    assert debugging() is False


# --- colour -----------------------------------------------------------------------------------


def test_colour_on_a_terminal_and_no_color() -> None:
    forced = {"FORCE_COLOR": "1"}
    result = run("evaluate", "missing-dir", env=forced)
    assert "\x1b[1;31mError: missing-dir" in result.stderr  # bold red on a "terminal"
    for variant in (
        run("evaluate", "missing-dir", "--no-color", env=forced),
        run("evaluate", "missing-dir", env={**forced, "NO_COLOR": "1"}),
    ):
        assert "Error: missing-dir: model directory not found" in variant.stderr
        assert "31m" not in variant.stderr  # no colour (bold is allowed by NO_COLOR)
    # no-color.org: NO_COLOR counts when "present and not an empty string".
    empty = run("evaluate", "missing-dir", env={**forced, "NO_COLOR": ""})
    assert "\x1b[1;31mError: missing-dir" in empty.stderr


def test_subprocess_without_a_terminal_prints_no_ansi(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    proc = subprocess.run(
        [*DLCLI, "config", "validate", str(tmp_path / "x.yaml"), "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["kind"] == "config"
    assert "\x1b" not in proc.stderr and proc.stderr.startswith("Error: ")


@pytest.mark.parametrize("columns", ["0", "00"])
def test_columns_0_loses_no_message(columns: str, tmp_path: Path) -> None:
    """COLUMNS=0 (rich took it as a width of 0): every line printed nothing, so a missing
    config exited 2 without a word, and a result line vanished too."""
    missing = tmp_path / "x.yaml"
    result = run("config", "validate", missing, env={"COLUMNS": columns})
    assert result.exit_code == 2
    assert result.stderr == f"Error: {missing}: config file not found\n"
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.read_text())
    result = run("config", "validate", config, "--no-data", env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{config}: valid (")


@pytest.mark.parametrize("width", [5, 40, 60])
def test_a_table_wider_than_the_terminal_loses_no_cell(width: int) -> None:
    """On a terminal narrower than a table, rich dropped whole columns (runs list lost "best"
    at 80 columns), cut numbers (lr 0.001 shown as 0.0, 0.8512 as 0.8…) or, at 5 columns,
    blanked every row: such a table is printed as plain lines instead, every cell whole."""
    import io

    from rich.console import Console
    from rich.table import Table

    from dlcli.report import _print_table

    table = Table(title="Runs")
    table.add_column("run", overflow="fold", min_width=6)
    names = ("optimizer", "lr", "epochs", "batch", "seed", "val acc", "test acc", "best")
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    row = ("my-run", "adam", "0.001", "10", "100", "0", "0.8512", "0.8498", "9")
    table.add_row(*row)
    for columns, boxed in ((width, False), (200, True)):
        out = io.StringIO()
        _print_table(Console(file=out, width=columns, force_terminal=True), table)
        text = out.getvalue()
        assert ("─" in text) == boxed, text  # rich's table only where it fits
        for cell in (*names, *row):
            assert cell in text, (columns, text)


def test_names_in_messages_reach_the_terminal_escaped(tmp_path: Path) -> None:
    """A folder whose name holds an escape sequence (ESC[31m, OSC 0 that retitles a window)
    was printed raw in errors and notes; each control character is shown as its escape."""
    name = "x\x1b[31mred\x1b]0;pwned\x07"
    result = run("evaluate", tmp_path / name)
    assert result.exit_code == 3
    assert (
        result.stderr
        == f"Error: {tmp_path}/x\\x1b[31mred\\x1b]0;pwned\\x07: model directory not found\n"
    )
    (tmp_path / "runs" / name / ".dlcli-pending").mkdir(parents=True)  # an unfinished run's
    result = run("runs", "list", tmp_path / "runs")
    assert "\x1b" not in result.stderr and "x\\x1b[31mred" in result.stderr


def test_a_run_named_like_markup_keeps_its_name_in_titles(tiny_run: Path, tmp_path: Path) -> None:
    """Table titles name the run or folder given ("Metrics of RUN", "Runs in DIR"): they were
    read as rich markup, so a run dir named [x] was titled "Metrics of runs/"."""
    import shutil

    run_dir = tmp_path / "[runs]" / "[x]"
    shutil.copytree(tiny_run, run_dir)
    for env in ({}, {"FORCE_COLOR": "1", "COLUMNS": "200"}):  # plain text, and rich's table
        result = run("evaluate", run_dir, env=env)
        assert result.exit_code == 0, result.output
        assert f"Metrics of {run_dir}" in result.stdout
        result = run("runs", "list", tmp_path / "[runs]", env=env)
        assert result.exit_code == 0, result.output
        assert f"Runs in {tmp_path}/[runs]" in result.stdout


def test_summary_of_a_folder_that_is_no_run_names_the_folder(tmp_path: Path) -> None:
    """summary FOLDER (a folder of images, say) said "FOLDER/config.yaml: config file not
    found" (exit 2), naming a file the user never gave: it names the folder, exit 3 as any
    model directory that is not one."""
    result = run("summary", tmp_path)
    assert result.exit_code == 3
    assert result.stderr == (
        f"Error: {tmp_path}: not a saved model directory (no config.yaml in it); TARGET is a "
        "CONFIG file or a saved MODEL_DIR\n"
    )


# --- exit codes 1 and 130 ---------------------------------------------------------------------


def test_internal_errors_exit_1_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import dlcli.config_tools

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(dlcli.config_tools, "validate_config", boom)
    result = run("config", "validate", CONFIG, "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "internal" and error["code"] == 1
    assert error["message"].startswith("internal error: RuntimeError: boom\nThis is a bug in dlcli")
    assert "Traceback" not in result.stderr


def test_keyboard_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, tiny_run: Path) -> None:
    import dlcli.predict

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dlcli.predict, "predict", interrupted)
    result = run("predict", tiny_run, "x.npy", "--json")
    assert result.exit_code == 130
    assert json.loads(result.stdout) == {
        "error": {"code": 130, "kind": "interrupted", "message": "interrupted"}
    }


def test_ctrl_c_during_training_exits_130(tiny_config: Path) -> None:
    """A real SIGINT to a real `dlcli train` in the middle of training."""
    proc = subprocess.Popen(
        [*DLCLI, "train", str(tiny_config), "--set", "training.epochs=100000", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until training is under way
        if line.startswith("epoch "):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert json.loads(stdout)["error"]["kind"] == "interrupted"
    assert "Traceback" not in stderr


# --- JSON details -------------------------------------------------------------------------------


def test_json_has_no_nan(capsys: pytest.CaptureFixture[str]) -> None:
    Reporter(json_mode=True).emit_json({"loss": float("nan"), "m": [float("inf"), 1.5]})
    assert json.loads(capsys.readouterr().out) == {"loss": None, "m": [None, 1.5]}


def test_reporter_prints_json_only_in_json_mode(capsys: pytest.CaptureFixture[str]) -> None:
    Reporter().emit_json({"a": 1})
    assert capsys.readouterr().out == ""


# --- shell completion (click's own) -------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    result = CliRunner().invoke(
        cli, [], env={"_DLCLI_COMPLETE": f"{shell}_source"}, prog_name="dlcli"
    )
    assert result.exit_code == 0
    assert "_DLCLI_COMPLETE" in result.stdout


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("dlcli pre", "plain,predict"),
        ("dlcli config va", "plain,validate"),
        ("dlcli predict --to", "plain,--top-k"),
        ("dlcli init --template ", "plain,mlp\nplain,cnn"),
    ],
)
def test_bash_completion_of_commands_and_options(words: str, expected: str) -> None:
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    env = {"_DLCLI_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    result = CliRunner().invoke(cli, [], env=env, prog_name="dlcli")
    assert result.exit_code == 0
    assert result.stdout.strip() == expected


def test_torch_free_commands_stay_torch_free(tmp_path: Path) -> None:
    """init, config show and --help start fast: they never import torch."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from dlcli.cli import cli\n"
        f"for args in (['--help'], ['init', {str(tmp_path / 'c.yaml')!r}],"
        f" ['config', 'show', {str(CONFIG)!r}], ['download', '--list']):\n"
        "    assert CliRunner().invoke(cli, args).exit_code == 0, args\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["train", "CONFIG", "-o", ""],
        ["plot", "RUN", "--out", ""],
        ["tune", "CONFIG", "--output", ""],
        ["train", ""],
        ["evaluate", "RUN", "--data-dir", ""],
        ["evaluate", ""],
        ["predict", "RUN", ""],
        ["predict", "", "INPUTS"],
        ["export", "RUN", "--out", ""],
        ["runs", "list", ""],
        ["init", ""],
    ],
)
def test_an_empty_path_is_a_usage_error(
    args: list[str],
    tiny_config: Path,
    tiny_run: Path,
    inputs: Path,
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    # Path("") is the current directory: -o "" trained into ".", predict RUN "" read every
    # file there, and init "" failed on it as a directory.
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    given = {"CONFIG": str(tiny_config), "RUN": str(tiny_run), "INPUTS": str(inputs)}
    result = run(*[given.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    assert "an empty path: give a file or folder name" in result.stderr
    assert list(work.iterdir()) == []
