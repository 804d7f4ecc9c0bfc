"""Bad input, systematically: every command, fed broken configs, archives, model dirs and
mirrors, ends with its documented exit code, a message that says what is wrong, and never a
traceback. Most cases run through CliRunner (fast); the ones marked ``real`` run a real
``dlcli`` subprocess, as a user would.
"""

from __future__ import annotations

import gzip
import json
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_process import run_real
from click.testing import CliRunner
from conftest import write_tiny_config

from dlcli import store
from dlcli.cli import cli


@dataclass
class World:
    """A tiny dataset, its config and a trained run (shared; cases copy what they change)."""

    root: Path
    config: Path
    raw: dict[str, Any]
    run_dir: Path

    def file(self, name: str, data: bytes) -> Path:
        path = self.root / "files" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return path

    def config_text(self, name: str, text: str) -> str:
        return str(self.file(name, text.encode()))

    def config_with(self, name: str, change: Callable[[dict[str, Any]], None]) -> str:
        raw = json.loads(json.dumps(self.raw))
        change(raw)
        return self.config_text(name, yaml.safe_dump(raw))

    def run_copy(self, name: str) -> Path:
        target = self.root / "copies" / name
        shutil.copytree(self.run_dir, target)
        return target

    @property
    def train_images(self) -> Path:
        return Path(self.raw["data"]["train_images"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad-inputs")
    config = write_tiny_config(root)  # its output dir stays empty: train cases fail before
    run_dir = root / "trained"
    result = CliRunner().invoke(cli, ["train", str(config), "--quiet", "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    return World(root, config, yaml.safe_load(config.read_text()), run_dir)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rehash(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    store.write_manifest(run_dir, list(manifest["files"]))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return change


Args = Callable[[World], list[str]]


@dataclass
class Case:
    id: str
    args: Args
    code: int
    fragment: str
    real: bool = False  # run as a real subprocess


def train_set(*sets: str) -> Args:
    return lambda w: ["train", str(w.config), *[a for s in sets for a in ("--set", s)]]


def train_config(name: str, change: Callable[[dict[str, Any]], None]) -> Args:
    return lambda w: ["train", w.config_with(name, change)]


def with_archive(key: str, data: Callable[[World], bytes]) -> Args:
    return lambda w: [
        "train",
        str(w.config),
        "--set",
        f"data.{key}={w.file(f'{key}.gz', data(w))}",
    ]


def _only_notes(run_dir: Path) -> None:
    shutil.rmtree(run_dir)
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")


def altered_run(name: str, alter: Callable[[Path], None], command: str = "evaluate") -> Args:
    def args(w: World) -> list[str]:
        run_dir = w.run_copy(name)
        alter(run_dir)
        return [command, str(run_dir), *([str(w.train_images)] if command == "predict" else [])]

    return args


def _resume_with(*sets: str) -> Args:
    def args(w: World) -> list[str]:
        run_dir = w.run_copy("resume-" + "-".join(sets).replace("=", "_").replace(".", "_"))
        return [
            "train",
            str(w.config),
            "--resume",
            str(run_dir),
            *[a for s in sets for a in ("--set", s)],
        ]

    return args


CONV_9 = {"type": "conv2d", "filters": 4, "kernel_size": 9}


def _conv_9_first(raw: dict[str, Any]) -> None:
    raw["model"]["layers"].insert(0, CONV_9)


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _garbage_weights(run_dir: Path) -> None:
    (run_dir / "model.safetensors").write_bytes(b"\x00" * 64)
    _rehash(run_dir)


def _garbage_config(run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text("model: [1\n")
    _rehash(run_dir)


CASES = [
    # --- config files ----------------------------------------------------------------------
    Case("yaml-syntax", lambda w: ["train", w.config_text("a.yaml", "data: [\n")], 2,
         "invalid YAML at line", real=True),
    Case("yaml-indentation", lambda w: ["train", w.config_text("b.yaml", "data:\n  a: 1\n b: 2\n")],
         2, "invalid YAML at line 3"),
    Case("yaml-top-level-list", lambda w: ["train", w.config_text("c.yaml", "- 1\n- 2\n")], 2,
         "expected a mapping at the top level, found a list"),
    Case("yaml-empty", lambda w: ["train", w.config_text("d.yaml", "")], 2,
         "data: required key missing"),
    Case("yaml-binary", lambda w: ["train", str(w.file("e.yaml", b"\xff\xfe\x00\x81"))], 2,
         "cannot read config"),
    Case("yaml-bad-date", lambda w: ["train", w.config_text("f.yaml", "data: 2001-13-45\n")], 2,
         "invalid YAML"),
    Case("config-not-found", lambda w: ["train", str(w.root / "nope.yaml")], 2,
         "config file not found"),
    Case("wrong-type", train_set("training.epochs=ten"), 2,
         "training.epochs: expected an integer, found a string 'ten'"),
    Case("unknown-key", train_set("training.epoch=3"), 2,
         "training.epoch: unknown key (did you mean 'epochs'?)"),
    Case("unknown-layer", train_set("model.layers[1].type=dens"), 2,
         "unknown layer type 'dens' (did you mean 'dense'?)"),
    Case("layer-not-a-mapping", train_set("model.layers[0]=3"), 2,
         "model.layers[0]: expected a layer mapping with a 'type' key"),
    Case("conv-kernel-larger-than-input",
         train_config("g.yaml", _conv_9_first), 2,
         "window 9x9 is larger than its input 8x8"),
    Case("dense-on-an-image", train_set("model.layers[0]={type: dropout, rate: 0.1}"), 2,
         "dense expects a flat input"),
    Case("output-units-vs-classes", train_set("model.layers[2].units=3"), 2,
         "the last layer outputs shape (3,), but the dataset has 4 classes"),
    Case("input-shape-vs-data", train_set("model.input_shape=[28, 28, 1]"), 2,
         "the dataset's images are [8, 8, 1]"),
    Case("negative-epochs", train_set("training.epochs=-1"), 2,
         "training.epochs: expected a number > 0, found -1"),
    Case("batch-size-0", train_set("training.batch_size=0"), 2,
         "training.batch_size: expected a number > 0, found 0"),
    Case("validation-split-above-1", train_set("data.validation_split=1.5"), 2,
         "data.validation_split: expected a number between 0 and 1"),
    Case("validation-split-0", train_set("data.validation_split=0"), 2,
         "data.validation_split: expected a number between 0 and 1"),
    Case("dropout-rate-1", train_set("model.layers[1]={type: dropout, rate: 1.0}"), 2,
         "rate: expected a number >= 0 and < 1"),
    Case("unknown-dataset", train_config("h.yaml", _set("data", {"dataset": "mnits"})), 2,
         "unknown dataset 'mnits' (did you mean 'mnist'?)"),
    Case("unknown-optimizer", train_set("training.optimizer.name=adamm"), 2,
         "(did you mean 'adam'?)"),
    Case("unknown-schedule", train_set("training.lr_schedule=cosinus"), 2,
         "unknown schedule 'cosinus' (did you mean 'cosine'?)"),
    Case("monitor-not-reported", train_set("training.early_stopping={monitor: val_f1}"), 2,
         "'val_f1' is not a reported metric"),
    Case("bad-device", lambda w: ["train", str(w.config), "--device", "tpu"], 2,
         "expected auto, cpu, cuda, cuda:N or mps"),
    Case("bad-set-syntax", lambda w: ["train", str(w.config), "--set", "training.epochs"], 2,
         "expected key.path=value"),
    Case("validate-bad-config", lambda w: ["config", "validate", str(w.config), "--set",
         "training.batch_size=0"], 2, "training.batch_size: expected a number > 0"),
    Case("summary-impossible-shape",
         lambda w: ["summary", w.config_with("i.yaml", _conv_9_first)],
         2, "window 9x9 is larger than its input 8x8"),
    Case("summary-missing-path", lambda w: ["summary", str(w.root / "nope.yaml")], 2,
         "does not exist"),
    # --- dataset archives ----------------------------------------------------------------------
    Case("truncated-archive",
         with_archive("train_images", lambda w: w.train_images.read_bytes()[:50]), 3,
         "truncated gzip file", real=True),
    Case("empty-archive", with_archive("train_images", lambda w: b""), 3, "is empty (0 bytes)"),
    Case("wrong-magic",
         with_archive("train_images", lambda w: gzip.compress(b"\x12\x34" + bytes(30))), 3,
         "is not an IDX file: expected it to start with 00 00"),
    Case("not-gzip-not-idx", with_archive("train_labels", lambda w: b"hello, not an archive"), 3,
         "is not an IDX file"),
    Case("label-image-count-mismatch", lambda w: ["train", str(w.config), "--set",
         f"data.train_labels={w.raw['data']['test_labels']}"], 3, "differ in count"),
    Case("labels-beyond-num-classes", train_set("data.num_classes=3", "model.layers[2].units=3"),
         3, "labels are outside [0, 3)"),
    Case("missing-archive", lambda w: ["train", str(w.config), "--set",
         f"data.train_images={w.root / 'missing.gz'}"], 3, "file not found"),
    Case("dataset-not-downloaded",
         train_config("j.yaml", _set("data", {"dataset": "mnist", "data_dir": "/nonexistent/d"})),
         3, "Run `dlcli download mnist"),
    # --- output directory ----------------------------------------------------------------------
    Case("output-under-a-file",
         lambda w: ["train", str(w.config), "--output", str(w.file("blocker", b"x") / "run")], 2,
         "is a file, not a directory"),
    Case("output-not-empty", lambda w: ["train", str(w.config), "--output", str(w.run_dir)], 2,
         "output directory is not empty; pass --overwrite"),
    # --- model directories -----------------------------------------------------------------------
    Case("evaluate-missing-model-dir", lambda w: ["evaluate", str(w.root / "no-run")], 3,
         "model directory not found", real=True),
    Case("evaluate-truncated-weights",
         altered_run("a", lambda d: _truncate(d / "model.safetensors", -7)),
         3, "model.safetensors: altered or truncated"),
    Case("evaluate-no-manifest", altered_run("b", lambda d: (d / "manifest.json").unlink()), 3,
         "not a complete dlcli model directory"),
    # a folder dlcli never trained into is not asked whether its training was interrupted
    Case("evaluate-a-folder-dlcli-never-wrote", altered_run("never", _only_notes), 3,
         "not a dlcli model directory (no manifest.json, nor what a dlcli run that did not"),
    Case("evaluate-a-folder-of-runs", lambda w: ["evaluate", str(w.run_dir.parent)], 3,
         "a folder of runs, not a run: name one of them, e.g."),
    Case("evaluate-garbage-manifest",
         altered_run("c", lambda d: (d / "manifest.json").write_text("{not json")), 3,
         "unreadable manifest"),
    Case("evaluate-garbage-weights-rehashed",
         altered_run("d", _garbage_weights),
         3, "unreadable weights"),
    Case("evaluate-garbage-config-rehashed",
         altered_run("e", _garbage_config),
         3, "not a valid dlcli config"),
    Case("predict-missing-model-dir", lambda w: ["predict", str(w.root / "no-run"),
         str(w.train_images)], 3, "model directory not found"),
    Case("predict-altered-model-dir",
         altered_run("f", lambda d: (d / "metrics.json").write_text("{}"), command="predict"),
         3, "metrics.json: altered or truncated"),
    Case("predict-missing-input", lambda w: ["predict", str(w.run_dir), str(w.root / "x.idx")],
         3, "input file not found"),
    Case("predict-not-an-input", lambda w: ["predict", str(w.run_dir), str(w.config)], 3,
         "not a recognised input"),
    Case("predict-truncated-input", lambda w: ["predict", str(w.run_dir),
         str(w.file("t.gz", w.train_images.read_bytes()[:40]))], 3, "truncated gzip file"),
    Case("resume-different-config", _resume_with("training.batch_size=50"), 3,
         "model dir from a different config", real=True),
    Case("resume-without-checkpoint",
         lambda w: ["train", str(w.config), "--resume", str(w.root / "never-trained")], 3,
         "no checkpoint to resume from"),
    # --- download ------------------------------------------------------------------------------
    Case("download-unknown-dataset", lambda w: ["download", "mnits"], 2,
         "unknown dataset 'mnits' (did you mean 'mnist'?)"),
    Case("download-no-name", lambda w: ["download"], 2, "missing the dataset NAME"),
    Case("download-unreachable-mirror",
         lambda w: ["download", "mnist", "--data-dir", str(w.root / "dl"), "--mirror",
                    f"http://127.0.0.1:{_closed_port()}/", "--retries", "0", "--timeout", "2"],
         3, "connection refused", real=True),
]  # fmt: skip


def test_there_are_enough_cases_across_commands() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: World) -> None:
    args = case.args(world)
    if case.real:
        code, output, err = run_real(args, timeout=300)
    else:
        result = CliRunner().invoke(cli, args)
        code, output, err = result.exit_code, result.output, result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert code == case.code, output
    assert case.fragment in err, err
    assert "Traceback" not in output
    assert "internal error" not in output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["download", "mnist", "--timeout", "nan"], "'--timeout': expected a finite number"),
        (["download", "mnist", "--timeout", "inf"], "inf is not in the range 0<x<=31536000"),
        (["download", "mnist", "--timeout", "1e308"], "is not in the range 0<x<=31536000"),
        (["download", "mnist", "--deadline", "nan"], "'--deadline': expected a finite number"),
        (["lr-find", "c.yaml", "--end-lr", "inf"], "'--end-lr': inf is not in the range 0<x<=10"),
        (["lr-find", "c.yaml", "--start-lr", "nan"], "'--start-lr': expected a finite number"),
        (["tune", "c.yaml", "--timeout", "nan"], "'--timeout': expected a finite number"),
        (["train", "c.yaml", "--dist-timeout", "nan"], "'--dist-timeout': expected a finite"),
    ],
)
def test_seconds_and_rates_are_finite_numbers(
    args: list[str], fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--timeout nan was 'internal error: ValueError', --timeout inf an OverflowError (exit 1),
    and --deadline nan switched the deadline off: every comparison with nan is false."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
