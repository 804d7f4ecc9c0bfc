"""scripts/ci-example.sh (the README's CI example) end to end: real subprocesses on the real
Fashion-MNIST archives, checking the JSON each step leaves and the exit codes, including a gate
that fails (4) and a broken config (2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_DATA, REPO_ROOT

from dlcli.data.idx import read_idx

pytestmark = pytest.mark.e2e

SCRIPT = REPO_ROOT / "scripts" / "ci-example.sh"
STEPS = ["download", "validate", "train", "evaluate", "predict"]


def run_script(out: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "OUT": str(out),
        "DLCLI_DATA_DIR": str(REPO_DATA),
        **settings,
    }
    env.pop("FORCE_COLOR", None)
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def load(out: Path, step: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / f"{step}.json").read_text())
    return doc


def test_the_ci_example_passes(tmp_path: Path) -> None:
    proc = run_script(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # every document went to its file
    assert [f"ci: {s}: ok" for s in STEPS] == [
        line for line in proc.stderr.splitlines() if line.endswith(": ok")
    ]
    download = load(tmp_path, "download")
    assert download["dataset"] == "fashion-mnist"
    assert {f["status"] for f in download["files"]} == {"present"}  # no network needed
    assert load(tmp_path, "validate")["valid"] is True
    train = load(tmp_path, "train")
    assert train["epochs"] == 1 and train["run_dir"] == str(tmp_path / "model")
    assert train["gates"][0]["split"] == "validation" and train["gates"][0]["passed"]
    assert train["validation"]["accuracy"] >= 0.75
    evaluate = load(tmp_path, "evaluate")
    assert list(evaluate["metrics"]) == ["test"]
    assert evaluate["metrics"]["test"]["accuracy"] == train["test"]["accuracy"]
    assert evaluate["gates"][0]["split"] == "test" and evaluate["gates"][0]["passed"]
    predict = load(tmp_path, "predict")
    assert predict["count"] == 10_000
    assert len(predict["predictions"][0]["top_k"]) == 3
    labels = read_idx(REPO_DATA / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")
    predicted = np.array([p["class"] for p in predict["predictions"]])
    assert float(np.mean(predicted == labels)) == evaluate["metrics"]["test"]["accuracy"]
    assert (tmp_path / "model" / "manifest.json").is_file()


def test_a_broken_config_stops_the_job_with_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    config = (REPO_ROOT / "configs" / "fashion-mnist-mlp.yaml").read_text()
    broken.write_text(config.replace("units: 100", "unit: 100"))
    proc = run_script(tmp_path, CONFIG=str(broken))
    assert proc.returncode == 2
    assert "ci: validate: usage error or invalid config (exit 2)" in proc.stderr
    error = load(tmp_path, "validate")["error"]
    assert error["code"] == 2 and error["kind"] == "config"
    assert "model.layers[2].unit: unknown key (did you mean 'units'?)" in error["message"]
    assert not (tmp_path / "train.json").exists()  # nothing was trained


def test_a_failing_gate_stops_the_job_with_exit_4(tmp_path: Path) -> None:
    proc = run_script(tmp_path, MIN_ACCURACY="0.99")
    assert proc.returncode == 4
    assert "ci: train: quality gate failed (exit 4)" in proc.stderr
    train = load(tmp_path, "train")
    accuracy = train["validation"]["accuracy"]
    assert train["error"] == {
        "code": 4,
        "kind": "gate",
        "message": f"quality gate failed: validation accuracy {accuracy:.4f} < min 0.99",
    }
    assert train["gates"] == [
        {
            "split": "validation",
            "metric": "accuracy",
            "kind": "min",
            "bound": 0.99,
            "value": accuracy,
            "passed": False,
        }
    ]
    assert (tmp_path / "model" / "manifest.json").is_file()  # saved before the gate
    assert not (tmp_path / "evaluate.json").exists()
