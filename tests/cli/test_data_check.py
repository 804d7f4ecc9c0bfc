"""``dlcli data check``: per-class counts, sizes, modes, unreadable files, duplicates,
train/test overlap and imbalance, as tables and --json; exit 3 on unreadable files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from click.testing import CliRunner
from image_trees import CLASSES, write_learnable_tree, write_odd_tree
from PIL import Image

from dlcli.cli import cli
from dlcli.data.check import check_paths
from dlcli.data.local import LocalData, load_local


def check(*args: Any) -> Any:
    return CliRunner().invoke(cli, ["data", "check", *map(str, args)])


def test_a_clean_tree_with_train_and_test_folders(tmp_path: Path) -> None:
    write_learnable_tree(tmp_path / "pets" / "train", 40)
    write_learnable_tree(tmp_path / "pets" / "test", 12, seed=1)
    result = check(tmp_path / "pets", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc["splits"]) == ["train", "test"] and doc["ok"] is True
    train = doc["splits"]["train"]
    assert list(train["per_class"]) == list(CLASSES) and sum(train["per_class"].values()) == 40
    assert train["sizes"] == {"8x8": 40} and train["modes"] == {"L": 40}
    assert doc["splits"]["test"]["images"] == 12
    human = check(tmp_path / "pets")
    assert human.exit_code == 0 and "Images per class" in human.stdout and "row6" in human.stdout


def test_bad_files_duplicates_overlap_and_notes(tmp_path: Path) -> None:
    paths = write_odd_tree(tmp_path / "odd" / "train")
    (tmp_path / "odd" / "test" / "grey").mkdir(parents=True)
    shutil.copy(paths["grey"], tmp_path / "odd" / "test" / "grey" / "copy.png")
    result = check(tmp_path / "odd", "--json")
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    train = doc["splits"]["train"]
    assert {b["path"] for b in train["unreadable"]} == {str(paths["corrupt"]), str(paths["empty"])}
    assert doc["error"]["message"].startswith("2 files cannot be read")
    assert train["ignored"] == [str(paths["notes"])]
    assert sorted(train["duplicates"][0]) == sorted(
        map(str, (paths["grey"], paths["nested"], paths["unicode"]))
    )
    assert [str(tmp_path / "odd" / "test" / "grey" / "copy.png")] == [
        p for p in doc["in_train_and_test"][0] if "test" in Path(p).parts
    ]
    assert set(train["modes"]) == {"L", "RGB", "RGBA", "I;16", "P"}
    assert "train: no readable image in class broken" in doc["notes"]
    human = check(tmp_path / "odd")
    assert human.exit_code == 3
    assert f"unreadable (train): {paths['empty']}: empty file (0 bytes)" in human.stderr
    assert "in train and test:" in human.stderr


def test_images_train_would_refuse_for_their_values_are_unreadable(tmp_path: Path) -> None:
    # data check decoded without converting: a float image outside [0, 1] passed it, then
    # train refused it (or skipped it with skip_bad_files).
    write_learnable_tree(tmp_path / "train", 20)
    cat = tmp_path / "train" / CLASSES[0]
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(cat / "ok.tif")
    Image.fromarray(np.full((8, 8), 3.0, np.float32), mode="F").save(cat / "float.tif")
    Image.fromarray(np.full((8, 8), 70000, np.int32), mode="I").save(cat / "int32.tif")
    result = check(tmp_path / "train", "--json")
    assert result.exit_code == 3, result.output
    unreadable = {
        b["path"]: b["reason"] for b in json.loads(result.stdout)["splits"]["train"]["unreadable"]
    }
    assert set(unreadable) == {str(cat / "float.tif"), str(cat / "int32.tif")}
    assert unreadable[str(cat / "float.tif")].startswith("a float image must hold values in [0, 1]")


def test_a_link_up_the_tree_does_not_merge_classes(tmp_path: Path) -> None:
    """``ln -s .. up/cat/up`` once made cat take every image and dog vanish."""
    write_learnable_tree(tmp_path / "up", 16)
    (tmp_path / "up" / CLASSES[0] / "up").symlink_to("..")
    result = check(tmp_path / "up", "--json")
    assert result.exit_code == 0, result.output
    train = json.loads(result.stdout)["splits"]["train"]
    assert list(train["per_class"]) == list(CLASSES) and sum(train["per_class"].values()) == 16
    assert train["ignored"] == []
    link = str(tmp_path / "up" / CLASSES[0] / "up")
    target = os.path.realpath(tmp_path / "up")
    reason = f"folder link to {target}, not followed: it would count images twice"
    assert train["links"] == [{"path": link, "target": target, "reason": reason}]
    human = check(tmp_path / "up")
    assert human.exit_code == 0
    assert f"ignored (train): {link}: {reason}" in " ".join(human.stderr.split())
    assert "not an image" not in human.stderr


def test_empty_class_folders_are_listed(tmp_path: Path) -> None:
    """An empty class folder in train (no class), and in test (train's class missing)."""
    write_learnable_tree(tmp_path / "pets" / "train", 20)
    write_learnable_tree(tmp_path / "pets" / "test", 12, seed=1)
    (tmp_path / "pets" / "train" / "cat").mkdir()
    for image in (tmp_path / "pets" / "test" / CLASSES[0]).iterdir():
        image.unlink()
    result = check(tmp_path / "pets", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    train_cat = str(tmp_path / "pets" / "train" / "cat")
    test_row0 = str(tmp_path / "pets" / "test" / CLASSES[0])
    assert doc["splits"]["train"]["empty_class_folders"] == [train_cat]
    assert doc["splits"]["test"]["empty_class_folders"] == [test_row0]
    assert doc["notes"][:3] == [
        f"train: class folder {train_cat} holds no image: 'cat' is not a class",
        f"test: class folder {test_row0} holds no image",
        f"test: no image of class '{CLASSES[0]}' (train has it): the test metrics leave it out",
    ]
    human = " ".join(check(tmp_path / "pets").stderr.split())
    assert f"note: train: class folder {train_cat} holds no image" in human


def test_an_empty_class_folder_the_config_names_is_an_error(tmp_path: Path) -> None:
    write_learnable_tree(tmp_path / "train", 20)
    (tmp_path / "train" / "cat").mkdir()
    config = tmp_path / "c.yaml"
    data = {"train": str(tmp_path / "train"), "class_names": [*CLASSES, "cat"]}
    model = {"layers": [{"type": "flatten"}, {"type": "dense", "units": 5}]}
    config.write_text(yaml.safe_dump({"data": data, "model": model}))
    result = check(config)
    assert result.exit_code == 3
    assert "data.class_names lists 'cat' but its class folder holds no image" in result.output


def test_workers_beyond_the_limit_are_a_usage_error(tmp_path: Path) -> None:
    result = check(tmp_path, "--workers", 10**6)
    assert result.exit_code == 2
    assert "1000000 is not in the range 1<=x<=1024" in result.output


def test_imbalance_and_sizes_are_noted(tmp_path: Path) -> None:
    for cls, count in (("big", 9), ("small", 3)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            Image.new("L", (8 + i, 8), i * 20).save(tmp_path / cls / f"{i}.png")
    doc = json.loads(check(tmp_path, "--json").stdout)
    notes = " ".join(doc["notes"])
    assert "classes are imbalanced: 'big' has 9 images, 'small' 3 (3.0x)" in notes
    assert "different image sizes" in notes


def test_csv_npz_and_a_config(tmp_path: Path) -> None:
    write_learnable_tree(tmp_path / "t", 20)
    rows = [
        f"{p.relative_to(tmp_path).as_posix()},{p.parent.name}"
        for p in sorted((tmp_path / "t").rglob("*.png"))
    ]
    (tmp_path / "d.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    doc = json.loads(check(tmp_path / "d.csv", "--json").stdout)
    assert doc["splits"]["train"]["kind"] == "csv" and doc["splits"]["train"]["images"] == 20
    x = np.zeros((6, 5, 4), np.uint8)
    x[1] = 1
    np.savez(
        tmp_path / "k.npz",
        x_train=x,
        y_train=np.array([0, 1, 0, 1, 0, 1]),
        x_test=x[:2],
        y_test=np.array([0, 1]),
    )
    doc = json.loads(check(tmp_path / "k.npz", "--json").stdout)
    assert doc["splits"]["train"]["sizes"] == {"5x4": 6}
    assert doc["splits"]["train"]["per_class"] == {"0": 3, "1": 3}
    (zeros,) = doc["splits"]["train"]["duplicates"]  # x[1] differs from the five blank images
    assert len(zeros) == 5 and zeros[0].endswith("k.npz[0]")
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"train": str(tmp_path / "d.csv")},
                "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 4}]},
            }
        )
    )
    doc = json.loads(check(config, "--json").stdout)
    assert doc["splits"]["train"]["source"] == str(tmp_path / "d.csv")


def test_a_registry_config(tmp_path: Path) -> None:
    from conftest import REPO_DATA

    config = tmp_path / "m.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"dataset": "mnist", "data_dir": str(REPO_DATA)},
                "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]},
            }
        )
    )
    result = check(config, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["splits"]["train"]["images"] == 60_000 and doc["splits"]["test"]["images"] == 10_000
    assert doc["splits"]["train"]["per_class"]["1"] == 6742  # MNIST's published count of ones


def test_a_fifo_or_a_device_given_as_the_data_is_refused_not_read(tmp_path: Path) -> None:
    """A FIFO given as the data (data check, init --from, a config's data.train) is refused at
    once, exit 3 naming it: its first bytes were read to tell its kind, which blocked for ever.
    A device (/dev/zero) is refused too, not sniffed as an IDX archive."""
    from cli_process import dlcli

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    write_learnable_tree(tmp_path / "pets", 8)
    config = tmp_path / "pets.yaml"
    assert dlcli("init", str(config), "--from", str(tmp_path / "pets")).returncode == 0
    for args in (
        ["data", "check", str(fifo)],
        ["init", str(tmp_path / "x.yaml"), "--from", str(fifo)],
        ["data", "check", str(config), "--set", f"data.train={fifo}"],
        ["config", "validate", str(config), "--set", f"data.test={fifo}"],
    ):
        result = dlcli(*args, timeout=60)  # a hang fails here (TimeoutExpired)
        assert result.returncode == 3, (args, result.stderr)
        assert f"{fifo}: is a FIFO (named pipe), expected a regular data file" in result.stderr
    assert not (tmp_path / "x.yaml").exists()
    result = dlcli("data", "check", "/dev/zero", timeout=60)
    assert result.returncode == 3, result.stderr
    assert "/dev/zero: is a character device, expected a regular data file" in result.stderr


def test_class_names_are_shown_as_they_are_never_as_markup_or_escapes(tmp_path: Path) -> None:
    """Class folders named [x] and [bold]b were read as rich markup (an empty name, a bold
    "b"), and one holding ESC[31m sent the sequence to the terminal: each is shown as its
    name, the control character as its escape."""
    write_learnable_tree(tmp_path / "t", 12)
    names = ["[x]", "[bold]b", "e\x1b[31mRED"]
    for old, new in zip(CLASSES, names, strict=False):
        (tmp_path / "t" / old).rename(tmp_path / "t" / new)
    for env in ({}, {"FORCE_COLOR": "1", "COLUMNS": "100"}):  # plain text, and rich's table
        result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "t")], env=env)
        assert result.exit_code == 0, result.output
        for shown in ("[x]", "[bold]b", "e\\x1b[31mRED"):
            assert shown in result.stdout, result.stdout
        assert "\x1b[31mRED" not in result.stdout


def test_a_line_break_in_a_file_or_folder_name_keeps_each_message_one_line(
    tmp_path: Path,
) -> None:
    """A file named "bad<LF>name.png" split the note naming it into two lines (and an error
    naming a folder "a<LF>b" into two): the line break is shown as its escape, as ESC is;
    an error's own lines (its details) stay lines."""
    write_learnable_tree(tmp_path / "t", 12)
    (tmp_path / "t" / CLASSES[0] / "bad\nname.png").write_bytes(b"junk")
    (tmp_path / "t" / CLASSES[0] / "tab\there.png").write_bytes(b"junk")
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "t")])
    assert result.exit_code == 3, result.output
    lines = result.stderr.splitlines()
    assert any("bad\\nname.png: " in line for line in lines), result.stderr
    assert any("tab\\there.png: " in line for line in lines), result.stderr
    assert not [line for line in lines if line.startswith(("name.png", "here.png"))]
    folder = tmp_path / "a\nb\rc"
    result = CliRunner().invoke(cli, ["evaluate", str(folder)])
    assert result.exit_code == 3
    assert result.stderr == f"Error: {tmp_path}/a\\nb\\rc: model directory not found\n"
    config = tmp_path / "x.yaml"  # several problems: one line each
    config.write_text("training: {epochs: -1, batch_size: 0}\n")
    result = CliRunner().invoke(cli, ["config", "validate", str(config), "--no-data"])
    assert result.exit_code == 2
    details = result.stderr.splitlines()[1:]
    assert len(details) == 4 and all(line.startswith("  - ") for line in details)


def test_json_shows_a_non_utf8_class_name_as_its_bytes(tmp_path: Path) -> None:
    """A folder name that is not UTF-8 reached the JSON as a lone surrogate ("bad\\udcff"),
    which strict JSON readers refuse; it is shown as its byte instead."""
    from cli_process import dlcli

    write_learnable_tree(tmp_path / "tree", 8)
    odd = os.path.join(os.fsencode(tmp_path / "tree"), b"bad\xff")
    os.mkdir(odd)
    Image.new("L", (8, 8), 50).save(os.fsdecode(os.path.join(odd, b"a.png")))
    done = dlcli("data", "check", str(tmp_path / "tree"), "--json")
    assert done.returncode == 0, done.stderr
    assert "\\udc" not in done.stdout
    json.loads(done.stdout)
    assert '"bad\\\\xff"' in done.stdout  # the JSON text of the Python text bad\xff


def test_notes_quoting_class_names_are_one_line_each(tmp_path: Path) -> None:
    """A class folder named 'c\\nd' (imbalanced) or 'e\\x1bf' (empty) put a line break or an
    escape into the notes train records (metrics.json, --json, the API) and data check lists;
    each note is now one printable line."""
    for name, count in (("a", 6), ("c\nd", 2), ("e\x1bf", 0)):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (4, 4), len(name) * 40 + i).save(tmp_path / "pics" / name / f"{i}.png")
    notes = check_paths({"train": tmp_path / "pics"}).notes
    assert any("'c\\nd' 2 (3.0x)" in note for note in notes), notes
    assert any("e\\x1bf holds no image" in note for note in notes), notes
    assert all(note.isprintable() for note in notes), notes
    recorded = load_local(LocalData(tmp_path / "pics")).notes
    assert recorded and all(note.isprintable() for note in recorded), recorded


def test_a_line_break_in_a_file_name_stays_on_its_line(tmp_path: Path) -> None:
    """A file named 'bad\\nnote: all good.png' split data check's notes (and train's list of
    unreadable files) in two, the second line forged by the name; it is written as \\n."""
    write_learnable_tree(tmp_path / "pets", 8)
    forged = tmp_path / "pets" / CLASSES[0] / "bad\nnote: all good.png"
    forged.write_bytes(b"not an image")
    result = check(tmp_path / "pets")
    assert result.exit_code == 3, result.output
    assert "bad\\nnote: all good.png: not an image Pillow can read" in result.stderr
    assert "\nnote: all good" not in result.output
    config = tmp_path / "pets.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"train": str(tmp_path / "pets"), "cache": False},
                "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 4}]},
                "training": {"epochs": 1},
            }
        )
    )
    result = CliRunner().invoke(cli, ["train", str(config), "--quiet"])
    assert result.exit_code == 3, result.output
    assert "bad\\nnote: all good.png: not an image Pillow can read" in result.stderr
    assert "\nnote: all good" not in result.stderr


def test_a_dangling_link_is_named_as_one(tmp_path: Path) -> None:
    """An image that is a link to a removed file was only 'image file not found', for a file
    `ls` lists; the message names where the link leads."""
    write_learnable_tree(tmp_path / "pets", 8)
    (tmp_path / "pets" / CLASSES[0] / "gone.png").symlink_to(tmp_path / "moved" / "x.png")
    result = check(tmp_path / "pets")
    assert result.exit_code == 3, result.output
    expected = f"gone.png: image file not found (a link to {tmp_path}/moved/x.png, which does not"
    assert expected in result.stderr
