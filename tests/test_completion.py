"""Shell completion of dataset names, run directories and --set keys (dlcli/completion.py):
through click's completion protocol, and once through a real bash with the sourced script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlcli.cli import cli
from dlcli.completion import config_keys


def complete(words: str, cwd: Path | None = None) -> list[str]:
    """What ``dlcli`` offers for the last word of ``words`` (bash protocol: type,value)."""
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    env = {"_DLCLI_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    here = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(cli, [], env=env, prog_name="dlcli")
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_dataset_names() -> None:
    assert complete("dlcli download ") == ["mnist", "fashion-mnist", "kmnist", "cifar-10"]
    assert complete("dlcli download fa") == ["fashion-mnist"]
    assert complete("dlcli init --dataset m") == ["mnist"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """runs/ with two complete runs and one without a manifest, and a folder beside it."""
    for name in ("mlp", "cnn", "half"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    for name in ("mlp", "cnn"):
        (tmp_path / "runs" / name / "manifest.json").write_text("{}")
    (tmp_path / "runs" / "sweep" / "trial-1").mkdir(parents=True)
    (tmp_path / "configs").mkdir()
    return tmp_path


@pytest.mark.parametrize("command", ["evaluate", "plot", "export", "runs compare"])
def test_run_directories_runs_first(workdir: Path, command: str) -> None:
    offered = complete(f"dlcli {command} ", workdir)
    assert offered[:2] == ["runs/cnn", "runs/mlp"]  # complete runs, then other folders
    assert {"runs/half", "runs/sweep", "configs", "runs"} <= set(offered)
    assert complete(f"dlcli {command} runs/m", workdir) == ["runs/mlp"]
    assert complete(f"dlcli {command} m", workdir) == ["runs/mlp"]
    assert complete(f"dlcli {command} runs/sweep/", workdir) == ["runs/sweep/trial-1"]


def test_a_folder_name_with_a_line_break_is_no_candidate(workdir: Path) -> None:
    """runs/"two<LF>lines" was offered as two candidates, "runs/two" and "lines" (the shells
    read one completion a line): a name with a control character is left out."""
    (workdir / "runs" / "two\nlines").mkdir()
    (workdir / "runs" / "tab\tbed").mkdir()
    offered = complete("dlcli evaluate runs/", workdir)
    assert offered == ["runs/cnn", "runs/mlp", "runs/half", "runs/sweep"]
    assert complete("dlcli evaluate runs/t", workdir) == []


def test_predict_and_train_resume_complete_run_directories(workdir: Path) -> None:
    assert complete("dlcli predict runs/c", workdir) == ["runs/cnn"]
    assert complete("dlcli train x.yaml --resume runs/c", workdir) == ["runs/cnn"]
    assert complete("dlcli runs list r", workdir) == ["runs"]


def test_set_keys_come_from_the_schema() -> None:
    offered = complete("dlcli train x.yaml --set training.ep")
    assert offered == ["training.epochs="]
    offered = complete("dlcli config show x.yaml --set training.optimizer.")
    assert "training.optimizer.learning_rate=" in offered
    assert "training.optimizer.beta1=" in offered
    assert complete("dlcli train x.yaml --set training.optimizer.name=") == [
        "training.optimizer.name=adam",
        "training.optimizer.name=adamw",
        "training.optimizer.name=sgd",
        "training.optimizer.name=rmsprop",
    ]
    assert complete("dlcli train x.yaml --set training.shuffle=f") == ["training.shuffle=false"]
    assert "training.device=mps" in complete("dlcli train x.yaml --set training.device=")
    assert "model.layers[0].units=" in complete("dlcli summary x.yaml --set model.layers[0].u")
    schedule = complete("dlcli train x.yaml --set training.lr_schedule.")
    assert {"training.lr_schedule.max_lr=", "training.lr_schedule.step_size="} <= set(schedule)


def test_every_schema_key_is_offered() -> None:
    keys = dict(config_keys())
    offered = set(complete("dlcli train x.yaml --set "))
    assert {f"{k}=" for k in keys} == offered
    for section in ("data", "model", "training", "output"):
        assert any(k.startswith(f"{section}.") for k in keys)
    assert "training.checkpoint.monitor" in keys and "output.dir" in keys


def test_device_option(workdir: Path) -> None:
    assert complete("dlcli evaluate runs/mlp --device ") == ["auto", "cpu", "cuda", "mps"]
    assert complete("dlcli train x.yaml --device m") == ["mps"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_a_real_bash_completes_with_the_documented_line(workdir: Path) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "dlcli").exists():
        pytest.skip("the dlcli script is not installed next to this Python")
    script = (
        'eval "$(_DLCLI_COMPLETE=bash_source dlcli)"\n'  # the README's line
        "COMPREPLY=(); COMP_WORDS=(dlcli evaluate runs/m); COMP_CWORD=2; _dlcli_completion dlcli\n"
        'echo "${COMPREPLY[@]}"\n'
        "COMPREPLY=(); COMP_WORDS=(dlcli download fash); COMP_CWORD=2; _dlcli_completion dlcli\n"
        'echo "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["runs/mlp", "fashion-mnist"]
