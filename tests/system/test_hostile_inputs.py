"""Hostile and faulty input (issue 14): configs, overrides, run directories and checkpoints
crafted to exhaust memory, recurse, escape the run dir or crash a torch kernel. Each case is
one row: the command, the exit code and a fragment of the one-line message. Cases marked
``real`` run a real ``dlcli`` subprocess (a crash there is a signal, not an exception), under
a 2 GB address-space limit where ``bomb`` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_process import run_real
from click.testing import CliRunner
from conftest import REPO_ROOT, write_tiny_config
from safetensors.torch import load_file, save_file

from dlcli import checkpoint, store
from dlcli.cli import cli


@dataclass
class World:
    """A tiny dataset, its config and a trained run with checkpoints (cases copy to change)."""

    root: Path
    config: Path
    run_dir: Path

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.root / "files" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def run_copy(self, name: str) -> Path:
        target = self.root / "copies" / name
        shutil.copytree(self.run_dir, target, symlinks=True)
        return target


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("hostile")
    config = write_tiny_config(root)
    run_dir = root / "trained"
    result = CliRunner().invoke(cli, ["train", str(config), "--quiet", "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    return World(root, config, run_dir)


Args = Callable[[World], list[str]]


@dataclass
class Case:
    id: str
    args: Args
    code: int
    fragment: str
    real: bool = False  # a real subprocess
    bomb: bool = False  # ... under `ulimit -v 2000000`, and within seconds


def config_text(name: str, text: str) -> Args:
    return lambda w: ["config", "validate", str(w.file(name, text))]


def validate_set(*sets: str) -> Args:
    return lambda w: ["config", "validate", str(w.config), *[a for s in sets for a in ("--set", s)]]


def alias_bomb(levels: int, under: str = "training:\n  loss: *h\n") -> str:
    """The "billion laughs": each level is a list of nine references to the one before."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = [f"l{i}" for i in range(levels)]
    previous = "a"
    for name in names:
        lines.append(f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]")
        previous = name
    lines.append(f"h: &h [{', '.join(['*' + previous] * 9)}]")
    return "\n".join(lines) + "\n" + under


# --- run directories and checkpoints -----------------------------------------------------------


def altered_run(name: str, alter: Callable[[Path], None], command: str = "evaluate") -> Args:
    def args(w: World) -> list[str]:
        run_dir = w.run_copy(name)
        alter(run_dir)
        return [command, str(run_dir)]

    return args


def rehash(directory: Path) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    store.write_manifest(directory, list(manifest["files"]))


def write_manifest_files(files: Any) -> Callable[[Path], None]:
    def alter(run_dir: Path) -> None:
        manifest = {"format": store.FORMAT, "dlcli_version": "0", "files": files}
        (run_dir / "manifest.json").write_text(json.dumps(manifest))

    return alter


def manifest_with(name: str, digest: Any) -> Callable[[Path], None]:
    def alter(run_dir: Path) -> None:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        manifest["files"][name] = digest
        (run_dir / "manifest.json").write_text(json.dumps(manifest))

    return alter


def deep_json(levels: int) -> str:
    return "[" * levels + "]" * levels


def metrics_replaced(text: str) -> Callable[[Path], None]:
    def alter(run_dir: Path) -> None:
        (run_dir / "metrics.json").write_text(text)
        rehash(run_dir)

    return alter


def dataset_set(value: Any, key: str | None = None) -> Callable[[Path], None]:
    """metrics.json's ``dataset`` (or its ``key``) set to ``value``, the manifest rehashed."""

    def alter(run_dir: Path) -> None:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        if key is None:
            metrics["dataset"] = value
        else:
            metrics["dataset"][key] = value
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        rehash(run_dir)

    return alter


def symlink_out(run_dir: Path) -> None:
    (run_dir / "metrics.json").unlink()
    (run_dir / "metrics.json").symlink_to("/etc/hostname")
    rehash_anyway(run_dir)


def rehash_anyway(run_dir: Path) -> None:
    """The manifest as an attacker would write it: hashing what the names point to."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    files = {}
    for name in manifest["files"]:
        files[name] = hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
    manifest["files"] = files
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def history_replaced(text: str) -> Callable[[Path], None]:
    def alter(run_dir: Path) -> None:
        (run_dir / "history.csv").write_text(text)
        rehash(run_dir)

    return alter


def narrower_config(run_dir: Path) -> None:
    """config.yaml describes a hidden layer of 8 units; model.safetensors holds 16."""
    text = (run_dir / "config.yaml").read_text()
    assert "units: 16" in text
    (run_dir / "config.yaml").write_text(text.replace("units: 16", "units: 8"))
    rehash(run_dir)


def weights_changed(change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path], None]:
    """model.safetensors with every tensor changed (another dtype, NaN), manifest rehashed."""

    def alter(run_dir: Path) -> None:
        weights = load_file(str(run_dir / "model.safetensors"))
        save_file({k: change(v) for k, v in weights.items()}, str(run_dir / "model.safetensors"))
        rehash(run_dir)

    return alter


def fifo_in_run(run_dir: Path) -> None:
    (run_dir / "metrics.json").unlink()
    os.mkfifo(run_dir / "metrics.json")


Tamper = Callable[[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]], None]


def resume_tampered(name: str, tamper: Tamper, *sets: str) -> Args:
    """--resume a copy of the trained run whose checkpoints/last was changed by ``tamper``
    (state.json's state, the model tensors, the other tensors) and re-hashed, as an attacker
    who regenerates the manifest would."""

    def args(w: World) -> list[str]:
        run_dir = w.run_copy(name)
        last = run_dir / "checkpoints" / "last"
        document = json.loads((last / checkpoint.STATE).read_text())
        model = load_file(str(last / checkpoint.MODEL))
        tensors = load_file(str(last / checkpoint.TENSORS))
        tamper(document["state"], model, tensors)
        text = json.dumps(document).replace(f'"{DEEP}"', deep_json(100_000))
        (last / checkpoint.STATE).write_text(text)
        save_file(model, str(last / checkpoint.MODEL))
        save_file(tensors, str(last / checkpoint.TENSORS))
        store.write_manifest(last, checkpoint.FILES)
        sets_args = [a for s in sets for a in ("--set", s)]
        return ["train", str(w.config), "--resume", str(run_dir), "--quiet", *sets_args]

    return args


def _exp_avg_key(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k in tensors if k.endswith("/exp_avg"))


def wrong_exp_avg_shape(state: Any, model: Any, tensors: dict[str, torch.Tensor]) -> None:
    key = _exp_avg_key(tensors)
    tensors[key] = torch.zeros(7)


def oversized_exp_avg(state: Any, model: Any, tensors: dict[str, torch.Tensor]) -> None:
    key = _exp_avg_key(tensors)
    tensors[key] = torch.zeros(tensors[key].numel() * 4)


def wrong_weight_shape(state: Any, model: dict[str, torch.Tensor], tensors: Any) -> None:
    name = next(iter(model))
    model[name] = torch.zeros(3, 3)


def wrong_weight_dtype(state: Any, model: dict[str, torch.Tensor], tensors: Any) -> None:
    name = next(iter(model))
    model[name] = model[name].double()


def no_history(state: dict[str, Any], model: Any, tensors: Any) -> None:
    del state["history"]


def rng_wrong_size(state: Any, model: Any, tensors: dict[str, torch.Tensor]) -> None:
    tensors["/rng/torch"] = torch.zeros(10, dtype=torch.uint8)


def set_state(key: str, value: Any) -> Tamper:
    def tamper(state: dict[str, Any], model: Any, tensors: Any) -> None:
        state[key] = value

    return tamper


def extra_tensor(state: Any, model: Any, tensors: dict[str, torch.Tensor]) -> None:
    tensors["planted"] = torch.zeros(10**6)


def optimizer_group(key: str, value: Any) -> Tamper:
    def tamper(state: dict[str, Any], model: Any, tensors: Any) -> None:
        state["optimizer"]["param_groups"][0][key] = value

    return tamper


DEEP = "__deep__"


def deep_state(state: dict[str, Any], model: Any, tensors: Any) -> None:
    state["callbacks"] = {"x": DEEP}  # written out as 100,000 nested lists


CASES = [
    # --- config files: bounded YAML -----------------------------------------------------------
    Case("yaml-alias-bomb", config_text("bomb.yaml", alias_bomb(8)), 2,
         "aliases expand it to more than 100,000 values", real=True, bomb=True),
    Case("yaml-alias-bomb-one-smaller", config_text("bomb7.yaml", alias_bomb(4)), 2,
         "aliases expand it to more than"),
    Case("yaml-recursive-alias", config_text("rec.yaml", "training: &t\n  loss: [*t]\n"), 2,
         "an alias refers to the value that contains it"),
    Case("yaml-5000-deep", config_text("deep.yaml", "x: " + "[" * 5000 + "]" * 5000 + "\n"), 2,
         "nested more than 64 levels deep", real=True, bomb=True),
    Case("yaml-5000-deep-block", config_text("deep2.yaml", "".join(
         " " * i + f"k{i}:\n" for i in range(500))), 2, "nested more than 64 levels deep"),
    Case("yaml-duplicate-key", config_text("dup.yaml", yaml.safe_dump(
         {"data": {"dataset": "mnist"}}) + "data: {dataset: fashion-mnist}\n"), 2,
         "duplicate key 'data' (first given at line 1)"),
    Case("yaml-huge-value-not-echoed", config_text("huge.yaml",
         "training:\n  loss: " + "x" * 500_000 + "\n"), 2, "more characters)"),
    Case("yaml-too-large", config_text("big.yaml", "# " + "x" * (1 << 20) + "\n"), 2,
         "more than the 1,048,576 allowed"),
    Case("config-is-a-directory", lambda w: ["config", "validate", str(w.root)], 2,
         "is a directory"),
    Case("config-is-a-fifo", lambda w: ["config", "validate", _fifo(w, "config.fifo")], 2,
         "is a FIFO (named pipe), expected a regular config file", real=True),
    # --- integer ranges, finite numbers, override paths ------------------------------------
    Case("seed-2-to-63", validate_set(f"training.seed={2**63}"), 2,
         "training.seed: expected an integer that fits 64 bits"),
    Case("seed-negative", validate_set("training.seed=-1"), 2,
         "training.seed: expected a number from 0 to 2^63-1"),
    Case("learning-rate-inf", validate_set("training.optimizer.learning_rate=.inf"), 2,
         "training.optimizer.learning_rate: expected a finite number, found inf"),
    Case("override-double-dot", validate_set("training..epochs=3"), 2,
         "malformed key path 'training..epochs'"),
    Case("override-brackets", validate_set(".training.epochs]]=4"), 2,
         "malformed key path '.training.epochs]]'"),
    # --- run directories ---------------------------------------------------------------------
    Case("manifest-escapes-run-dir",
         altered_run("esc", manifest_with("../../../../etc/hostname", "0" * 64)), 3,
         "'../../../../etc/hostname', which is not a plain file name"),
    Case("manifest-absolute-path",
         altered_run("abs", manifest_with("/etc/hostname", "0" * 64)), 3,
         "not a plain file name"),
    Case("manifest-integer-hash", altered_run("inthash", manifest_with("config.yaml", 12)), 3,
         "the hash of config.yaml is 12, expected 64 lower-case hex digits"),
    Case("manifest-100k-deep",
         altered_run("deepman", lambda d: (d / "manifest.json").write_text(deep_json(100_000))),
         3, "nested 100000 levels deep, more than the 64 allowed", real=True),
    Case("manifest-not-an-object",
         altered_run("list", lambda d: (d / "manifest.json").write_text("[1, 2]")), 3,
         "unreadable manifest (expected a JSON object)"),
    Case("manifest-too-many-files",
         altered_run("many", write_manifest_files({f"f{i}": "0" * 64 for i in range(100)})), 3,
         "100 files listed, more than the 64 allowed"),
    Case("metrics-not-json", altered_run("notjson", metrics_replaced("{not json")), 3,
         "metrics.json: unreadable metrics file: not valid JSON"),
    Case("metrics-not-an-object", altered_run("metrics-list", metrics_replaced("[]")), 3,
         "metrics.json: unreadable metrics file (not a JSON object)"),
    # metrics.json's dataset record was read unchecked: exit 1 (AttributeError, ValueError),
    # or exit 2 blaming model.layers as if the user's config were wrong.
    Case("metrics-dataset-a-list", altered_run("ds-list", dataset_set([1, 2]), "plot"), 3,
         "metrics.json: unreadable metrics file: dataset is [1, 2], expected an object"),
    Case("metrics-num-classes-text",
         altered_run("nc-text", dataset_set("abc", "num_classes"), "export"), 3,
         "dataset.num_classes is 'abc', expected an integer 1 … 1,000,000"),
    Case("metrics-num-classes-huge", altered_run("nc-huge", dataset_set(10**12, "num_classes")),
         3, "dataset.num_classes is 1000000000000, expected an integer 1 … 1,000,000"),
    Case("metrics-num-classes-disagree", altered_run("nc-5", dataset_set(5, "num_classes")), 3,
         "metrics.json records 5 classes, but the model"),
    Case("run-file-links-outside", altered_run("link", symlink_out), 3,
         "a link that leads outside"),
    Case("run-file-is-a-fifo", altered_run("fifo", fifo_in_run), 3,
         "metrics.json: is a FIFO (named pipe), expected a regular file", real=True),
    Case("history-junk-plot",
         altered_run("hjunk", history_replaced("epoch,loss\n1,abc\n"), "plot"), 3,
         "history.csv: unreadable history file: line 2, column 'loss': 'abc', expected a finite"),
    Case("history-binary-plot",
         altered_run("hbin", history_replaced("\x00\x01,\x02\n\x03"), "plot"), 3,
         "history.csv: unreadable history file: line 2 has 1 values, the header names 2"),
    Case("weights-do-not-fit-config", altered_run("narrow", narrower_config), 3,
         "model.safetensors: the weights do not fit the model"),
    # Weights of another dtype were cast silently (int32: every prediction 0.25) and NaN weights
    # predicted a class with probability NaN, and scored an accuracy that passed --min gates.
    Case("weights-of-another-dtype",
         altered_run("int-weights", weights_changed(lambda t: t.to(torch.int32))), 3,
         "is int32, the model expects float32"),
    Case("weights-not-finite",
         altered_run("nan-weights", weights_changed(lambda t: t * float("nan")), "export"), 3,
         "holds values that are not finite (NaN or infinite)"),
    # --- checkpoints -------------------------------------------------------------------------
    Case("ckpt-optimizer-wrong-shape", resume_tampered("c1", wrong_exp_avg_shape), 3,
         "optimizer state tensor 'optimizer/state/0/exp_avg' is (7,) float32", real=True),
    Case("ckpt-optimizer-4x-oversized", resume_tampered("c2", oversized_exp_avg), 3,
         "state.safetensors: optimizer state tensor 'optimizer/state/0/exp_avg' is"),
    Case("ckpt-weight-wrong-shape", resume_tampered("c3", wrong_weight_shape), 3,
         "model.safetensors: weights: tensor"),
    Case("ckpt-weight-wrong-dtype", resume_tampered("c4", wrong_weight_dtype), 3,
         "float64, the model and optimizer expect"),
    Case("ckpt-no-history", resume_tampered("c5", no_history), 3,
         "corrupt checkpoint: history is None"),
    Case("ckpt-rng-wrong-size", resume_tampered("c6", rng_wrong_size), 3,
         "RNG state tensor 'rng/torch' is (10,) uint8"),
    Case("ckpt-step-in-epoch-1e6", resume_tampered("c7", set_state("step_in_epoch", 10**6)), 3,
         "step_in_epoch is 1000000, but an epoch of this run has 15 steps"),
    Case("ckpt-negative-epoch", resume_tampered("c8", set_state("epoch", -1)), 3,
         "epoch is -1, expected an integer from 0"),
    Case("ckpt-epoch-a-string", resume_tampered("c9", set_state("epoch", "3")), 3,
         "epoch is '3', expected an integer"),
    Case("ckpt-planted-tensor", resume_tampered("c10", extra_tensor), 3,
         "holds tensor 'planted' that state.json does not refer to"),
    Case("ckpt-lr-a-string", resume_tampered("c11", optimizer_group("lr", "fast")), 3,
         "optimizer parameter group 0: lr is 'fast'"),
    Case("ckpt-fused-flag-flipped", resume_tampered("c12", optimizer_group("fused", False)), 3,
         "optimizer parameter group 0: fused is False, expected True"),
    Case("ckpt-100k-deep-state", resume_tampered("c13", deep_state), 3,
         "nested 100003 levels deep"),
    Case("ckpt-fewer-epochs", resume_tampered("c14", lambda s, m, t: None,
         "training.epochs=2"), 2, "training.epochs: 2, but the checkpoint"),
]  # fmt: skip


def _fifo(w: World, name: str) -> str:
    path = w.root / "files" / name
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def test_cases_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, world: World) -> None:
    args = case.args(world)
    start = time.monotonic()
    if case.real:
        code, _, err = run_real(args, bomb=case.bomb)
    else:
        result = CliRunner().invoke(cli, args)
        code, err = result.exit_code, result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), err
    seconds = time.monotonic() - start
    assert code == case.code, err
    assert case.fragment in err, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(err) < 2000, f"the message is {len(err)} characters"
    if case.bomb:
        assert seconds < 30, f"took {seconds:.1f} s"


def test_a_seed_near_2_to_63_trains(world: World, tmp_path: Path) -> None:
    """`--seed 200000000000000` overflowed the shuffle seed (exit 1) after `config validate`
    said valid; every seed config validate accepts trains."""
    for seed in (200_000_000_000_000, 2**63 - 1):
        args = ["train", str(world.config), "--seed", str(seed), "--quiet"]
        args += ["--output", str(tmp_path / str(seed)), "--set", "training.epochs=1"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output


def test_a_valid_checkpoint_still_resumes(world: World) -> None:
    """The checks refuse the crafted checkpoints above, not a real one (with a schedule that
    adds keys to the optimizer's groups)."""
    run_dir = world.run_copy("valid")
    args = ["train", str(world.config), "--resume", str(run_dir), "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--set", "training.epochs=4"])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 4


def test_the_weight_mismatch_names_the_tensors(world: World) -> None:
    """Not torch's "Error(s) in loading state_dict for Sequential:": one line with the file,
    the config and the first tensors that differ, each with the shape found and expected."""
    run_dir = world.run_copy("narrow-message")
    narrower_config(run_dir)
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--weights", "best"])
    assert result.exit_code == 3
    message = result.stderr.strip()
    assert "\n" not in message and "Error(s) in loading" not in message
    assert message.startswith(
        f"Error: {run_dir / 'checkpoints' / 'best' / 'model.safetensors'}: the weights do not "
        f"fit the model {run_dir / 'config.yaml'} describes: "
    )
    assert "is (16,), the model expects (8,)" in message
    assert "is (16, 64), the model expects (8, 64)" in message
    assert "is (4, 16), the model expects (4, 8)" in message


def test_every_limit_is_in_the_readme() -> None:
    from dlcli import limits

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Limits and untrusted input")[1].split("\n## ")[0]
    names = [n for n in vars(limits) if n.isupper()]
    missing = [n for n in names if f"`{n}`" not in section]
    assert not missing, f"README's limits section does not list {missing}"


def test_read_bytes_takes_what_a_file_grew_by_within_the_limit() -> None:
    """A file longer than its size said (one growing while read; /proc's files say 0 bytes) is
    read to its end in chunks, and refused once past the limit."""
    from dlcli.errors import DataError
    from dlcli.untrusted import read_bytes

    text = read_bytes("/proc/self/status", 1 << 20, DataError)
    assert b"Pid:" in text
    with pytest.raises(DataError, match="more than the 10 bytes allowed"):
        read_bytes("/proc/self/status", 10, DataError)
