"""Your own data: class folders, CSV, .npz and IDX paths in data.train/test/validation, the
image conversion, bad files, the decoded-image cache, parity with IDX."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO_ROOT, learnable_patterns
from image_trees import CLASSES, write_learnable_tree, write_odd_tree
from PIL import Image

from dlcli.cli import cli
from dlcli.data import decode
from dlcli.data.idx import write_idx
from dlcli.data.images import Conversion, convert, read_image
from dlcli.data.local import LocalData, load_local
from dlcli.errors import DataError, Interrupted

MLP = [
    {"type": "flatten"},
    {"type": "dense", "units": 16, "activation": "relu"},
    {"type": "dense", "units": 4},
]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DLCLI_CACHE_DIR", str(cache))
    return cache


def write_config(folder: Path, data: dict[str, Any], **model: Any) -> Path:
    cfg = {
        "data": {**({} if "validation" in data else {"validation_split": 0.25}), **data},
        "model": {"layers": MLP, **model},
        "training": {"epochs": 3, "batch_size": 20, "optimizer": {"learning_rate": 0.01}},
        "output": {"dir": str(folder / "runs" / "own")},
    }
    path = folder / "own.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def train(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["train", str(config), "--json", "--quiet", *args])


def metrics(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "runs" / "own" / "metrics.json").read_text()))


# --- one way to point at data ----------------------------------------------------------------


def test_class_folders_train_and_record_class_names_and_input_shape(tmp_path: Path) -> None:
    write_learnable_tree(tmp_path / "train", 200)
    write_learnable_tree(tmp_path / "test", 60, seed=1)
    config = write_config(
        tmp_path, {"train": str(tmp_path / "train"), "test": str(tmp_path / "test")}
    )
    result = train(config)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["test"]["accuracy"] > 0.9
    assert doc["dataset"]["class_names"] == list(CLASSES)
    assert doc["dataset"]["test_size"] == 60
    saved = yaml.safe_load((tmp_path / "runs" / "own" / "config.yaml").read_text())
    assert saved["model"]["input_shape"] == [8, 8, 1]  # inferred, recorded


def test_without_test_data_every_report_says_so(tmp_path: Path) -> None:
    write_learnable_tree(tmp_path / "train", 80)
    config = write_config(tmp_path, {"train": str(tmp_path / "train")})
    result = CliRunner().invoke(cli, ["train", str(config)])
    assert result.exit_code == 0, result.output
    assert "no test split" in result.stderr
    assert "│ test" not in result.stdout
    assert metrics(tmp_path)["test"] is None
    run_dir = tmp_path / "runs" / "own"
    evaluated = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert list(json.loads(evaluated.stdout)["metrics"]) == ["validation"]
    asked = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--split", "test"])
    assert asked.exit_code == 2
    assert "no test split: the config gives no test data (data.test)" in asked.stderr
    listed = CliRunner().invoke(cli, ["runs", "list", str(tmp_path / "runs"), "--json"])
    assert "test_accuracy" not in json.loads(listed.stdout)["runs"][0]["metrics"]


def test_csv_with_names_and_with_indices(tmp_path: Path) -> None:
    write_learnable_tree(tmp_path / "pics", 120)
    files = sorted((tmp_path / "pics").rglob("*.png"))
    rows = [(f.relative_to(tmp_path).as_posix(), f.parent.name) for f in files]
    (tmp_path / "named.csv").write_text(
        "path,label\n" + "".join(f"{p},{label}\n" for p, label in rows)
    )
    index = {name: str(i) for i, name in enumerate(CLASSES)}
    (tmp_path / "indexed.csv").write_text(
        "label,path,note\n" + "".join(f"{index[lab]},{p},x\n" for p, lab in rows)
    )
    named = load_local(LocalData(tmp_path / "named.csv"))
    indexed = load_local(LocalData(tmp_path / "indexed.csv"))
    assert named.class_names == CLASSES
    assert indexed.class_names == ("0", "1", "2", "3")
    assert bool((named.train.images == indexed.train.images).all())
    assert bool((named.train.labels == indexed.train.labels).all())
    assert named.test is None


def test_csv_problems_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(DataError, match=r"a.csv: expected a CSV header with the columns path"):
        load_local(LocalData(tmp_path / "a.csv"))
    (tmp_path / "b.csv").write_text("path,label\nx.png\n")
    with pytest.raises(DataError, match=r"b.csv: line 2: expected 2 columns"):
        load_local(LocalData(tmp_path / "b.csv"))
    # a column named twice: the first was used, silently
    Image.new("L", (4, 4)).save(tmp_path / "x.png")
    (tmp_path / "c.csv").write_text("path,label,Label\nx.png,a,b\n")
    message = r"c.csv: the CSV header names the column label 2 times \(\['path', 'label'"
    with pytest.raises(DataError, match=message):
        load_local(LocalData(tmp_path / "c.csv"))
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "c.csv")])
    assert result.exit_code == 3, result.output


def test_csv_rows_the_csv_module_refuses_or_no_file_can_name_are_data_errors(
    tmp_path: Path,
) -> None:
    """A field beyond the csv module's limit (a quote left open over a long file) and a path
    holding a NUL byte went out as internal errors (csv.Error, "embedded null byte")."""
    write_learnable_tree(tmp_path / "pics", 8)
    rows = "".join(f"{p.relative_to(tmp_path).as_posix()},{p.parent.name}\n"
                   for p in sorted((tmp_path / "pics").rglob("*.png")))  # fmt: skip
    (tmp_path / "long.csv").write_text("path,label\n" + rows + '"' + "x" * 200_000 + '",a\n')
    with pytest.raises(DataError, match=r"long.csv: line 10: not a CSV row dlcli can read: "):
        load_local(LocalData(tmp_path / "long.csv"))
    (tmp_path / "nul.csv").write_text("path,label\n" + rows + "pics/a\0.png,row0\n")
    with pytest.raises(DataError, match=r"nul.csv: line 10: the path 'pics/a\\x00.png' holds"):
        load_local(LocalData(tmp_path / "nul.csv"))
    # the line number is the file's, also after a quoted field spanning two lines
    (tmp_path / "q.csv").write_text('path,label,note\n"x.png",a,"two\nlines"\n,b,c\n')
    with pytest.raises(DataError, match=r"q.csv: line 4: empty path or label"):
        load_local(LocalData(tmp_path / "q.csv"))


def test_a_cache_folder_that_cannot_be_written_is_noted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache path under a file: every split was decoded each time, without a word. One
    note says so, however many splits missed the cache; a writable cache adds none."""
    write_learnable_tree(tmp_path / "train", 8)
    write_learnable_tree(tmp_path / "test", 4, seed=1)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("DLCLI_CACHE_DIR", str(tmp_path / "file" / "cache"))
    spec = LocalData(tmp_path / "train", test=tmp_path / "test")
    notes = [n for n in load_local(spec).notes if "image cache" in n]
    assert notes == [
        f"image cache {tmp_path / 'file' / 'cache'} is not writable (Not a directory): "
        "images are decoded each time"
    ]
    monkeypatch.setenv("DLCLI_CACHE_DIR", str(tmp_path / "cache"))
    assert not [n for n in load_local(spec).notes if "image cache" in n]


def test_a_quote_never_closed_names_the_line_it_opened_on(tmp_path: Path) -> None:
    """A quote opened on the last lines ran to the end of the file as one field: "line 4:
    expected 2 columns, found ['img/0.png,cat\\n…']"."""
    (tmp_path / "open.csv").write_text('path,label\na.png,cat\n"img/0.png,cat\nb.png,dog\n')
    message = r"open.csv: line 3: a quote opened on this line is never closed"
    with pytest.raises(DataError, match=message):
        load_local(LocalData(tmp_path / "open.csv"))


def test_a_csv_labelling_one_image_twice_differently_is_refused(tmp_path: Path) -> None:
    """The same file listed as 'cat' and as 'dog' (here once as ./a.png) trained on both
    labels, silently; data check called it a duplicate. Listed twice with one label, it is
    still a duplicate data check notes."""
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    Image.new("L", (4, 4), 9).save(tmp_path / "b.png")
    (tmp_path / "two.csv").write_text("path,label\na.png,cat\nb.png,dog\n\n./a.png,dog\n")
    message = r"two.csv: line 5: './a.png' is labelled 'dog', but 'cat' on line 2; one image"
    with pytest.raises(DataError, match=message):
        load_local(LocalData(tmp_path / "two.csv"))
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "two.csv")])
    assert result.exit_code == 3, result.output
    (tmp_path / "same.csv").write_text("path,label\na.png,cat\nb.png,dog\na.png,cat\n")
    assert load_local(LocalData(tmp_path / "same.csv")).train.labels.tolist() == [0, 1, 0]


def test_csv_labels_mixing_indices_and_names_are_refused(tmp_path: Path) -> None:
    """Labels 0, 1, cat, dog trained four classes ("0" and "1" taken as names), and a -1 among
    indices a class named "-1": silently, in train and in data check. With data.class_names an
    index names its entry, as before."""
    for i in range(4):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i}.png")
    (tmp_path / "mix.csv").write_text("path,label\n0.png,0\n1.png,1\n2.png,cat\n3.png,dog\n")
    (tmp_path / "neg.csv").write_text("path,label\n0.png,0\n1.png,1\n2.png,-1\n")
    found = {
        "mix.csv": r"mix.csv: the labels mix class indices \(0, 1\) and class names \('cat', 'dog'",
        "neg.csv": r"neg.csv: the labels mix class indices \(0, 1\) and class names \('-1'\)",
    }
    for name, message in found.items():
        with pytest.raises(DataError, match=message):
            load_local(LocalData(tmp_path / name))
        result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / name)])
        assert result.exit_code == 3, result.output
        assert "the labels mix class indices" in result.output
    named = load_local(LocalData(tmp_path / "mix.csv", class_names=("cat", "dog")))
    assert named.train.labels.tolist() == [0, 1, 0, 1]


def test_npz_xy_and_keras_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = learnable_patterns(50, rng)
    xt, yt = learnable_patterns(20, rng)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=y, x_test=xt, y_test=yt.reshape(-1, 1))
    plain = load_local(LocalData(tmp_path / "xy.npz"))
    assert plain.test is None and plain.class_names == ("0", "1", "2", "3")
    assert bool((plain.train.images[:, 0].numpy() == x).all())
    keras = load_local(LocalData(tmp_path / "keras.npz"))
    assert keras.test is not None and bool((keras.test.labels.numpy() == yt).all())
    np.savez(tmp_path / "other.npz", images=x)
    with pytest.raises(DataError, match="expected arrays x and y, or x_train"):
        load_local(LocalData(tmp_path / "other.npz"))
    np.savez(tmp_path / "short.npz", x=x, y=y[:10])
    with pytest.raises(DataError, match=r"short\.npz: 50 images but 10 labels; each image"):
        load_local(LocalData(tmp_path / "short.npz"))
    np.savez(tmp_path / "one.npz", x=x, y=y * 0)
    with pytest.raises(DataError, match=r"one\.npz: holds 1 class \(0\); a classifier needs"):
        load_local(LocalData(tmp_path / "one.npz"))
    np.savez(tmp_path / "empty.npz", x=x[:0], y=y[:0])
    with pytest.raises(DataError, match=r"empty\.npz: holds no images \(0 samples\)"):
        load_local(LocalData(tmp_path / "empty.npz"))


def test_idx_archive_with_its_labels_beside(tmp_path: Path) -> None:
    x, y = learnable_patterns(30, np.random.default_rng(0))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y)
    data = load_local(LocalData(tmp_path / "train-images-idx3-ubyte.gz", num_classes=4))
    assert data.num_classes == 4 and bool((data.train.labels.numpy() == y).all())
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    with pytest.raises(DataError, match="needs its labels archive beside it"):
        load_local(LocalData(tmp_path / "t10k-images-idx3-ubyte.gz"))


def test_validation_data_replaces_the_split_and_classes_must_match(tmp_path: Path) -> None:
    write_learnable_tree(tmp_path / "train", 80)
    write_learnable_tree(tmp_path / "val", 20, seed=2)
    config = write_config(
        tmp_path, {"train": str(tmp_path / "train"), "validation": str(tmp_path / "val")}
    )
    result = train(config)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dataset"]["validation_size"] == 20
    (tmp_path / "val" / "cats").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "val" / "cats" / "x.png")
    result = train(config, "--overwrite")
    assert result.exit_code == 3
    assert "class 'cats' of the validation data is not one of the 4 classes" in result.output


def test_folder_listing_order_links_and_stats(tmp_path: Path) -> None:
    """Files sort folder by folder (a sub-folder's files at its name's place), hidden files
    are skipped, other files are listed as ignored, a link back up the tree is listed once,
    and each file's size and mtime are taken for the cache's key."""
    from dlcli.data.sources import list_folder

    root = tmp_path / "tree"
    for rel in ["b/z.png", "b/a-b.png", "b/a/c.png", "b/a/b/x.PNG", "a/1.jpg", "b/.hidden.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * len(rel))
    (root / "b" / "notes.txt").write_text("n")
    (root / "readme.md").write_text("r")
    os.symlink(root / "b", root / "b" / "a" / "loop")  # back up the tree
    os.utime(root / "a" / "1.jpg", ns=(5, 123456789012345))
    listing = list_folder(root)
    below = [os.path.relpath(p, root) for p in listing.paths]
    assert below == ["a/1.jpg", "b/a/b/x.PNG", "b/a/c.png", "b/a-b.png", "b/z.png"]
    assert listing.labels == ["a", "b", "b", "b", "b"]
    assert sorted(os.path.relpath(p, root) for p in listing.ignored) == [
        "b/notes.txt",
        "readme.md",
    ]
    assert [(os.path.relpath(link.path, root), link.target) for link in listing.links] == [
        ("b/a/loop", os.path.realpath(root / "b"))
    ]
    assert listing.stats is not None
    first = os.stat(root / "a" / "1.jpg")
    assert listing.stats[0].tolist() == [len("a/1.jpg"), 123456789012345, first.st_ctime_ns]
    assert listing.stats[:, 0].tolist() == [os.path.getsize(p) for p in listing.paths]


def test_links_to_the_root_or_a_class_folder_keep_the_classes_apart(tmp_path: Path) -> None:
    """A link inside a class folder up to the root, or across to a later class folder, is
    not followed and listed with where it leads: each class keeps exactly its own images."""
    from dlcli.data.sources import list_folder

    root = tmp_path / "up"
    for rel in ["cat/1.png", "cat/2.png", "dog/3.png", "dog/sub/4.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    os.symlink("..", root / "cat" / "up")  # the root, walked before dog
    os.symlink("../dog/sub", root / "cat" / "sub")  # a folder inside a later class
    os.symlink(".", root / "all")  # a top-level link to the root is no class
    os.symlink("dog", root / "hound")  # nor a second name for a class folder
    listing = list_folder(root)
    below = [os.path.relpath(p, root) for p in listing.paths]
    assert below == ["cat/1.png", "cat/2.png", "dog/3.png", "dog/sub/4.png"]
    assert listing.labels == ["cat", "cat", "dog", "dog"]
    assert listing.ignored == []
    real = os.path.realpath(root)
    assert sorted((os.path.relpath(link.path, root), link.target) for link in listing.links) == [
        ("all", real),
        ("cat/sub", os.path.join(real, "dog", "sub")),
        ("cat/up", real),
        ("hound", os.path.join(real, "dog")),
    ]
    assert listing.links[0].reason.startswith("folder link to ")
    assert listing.links[0].reason.endswith(", not followed: it would count images twice")


def test_an_empty_class_folder_is_no_class_and_the_train_output_says_so(
    tmp_path: Path,
) -> None:
    """``train/cat/`` holding no image (only a note) was dropped without a word: it is no
    class, with a note on the train output and in metrics.json; a class of train that the
    test folder lacks gets a note too."""
    write_learnable_tree(tmp_path / "train", 40)
    write_learnable_tree(tmp_path / "test", 12, seed=1)
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("to do")
    for image in (tmp_path / "test" / CLASSES[3]).iterdir():
        image.unlink()  # an empty folder of a class train has
    config = write_config(
        tmp_path, {"train": str(tmp_path / "train"), "test": str(tmp_path / "test")}
    )
    result = CliRunner().invoke(cli, ["train", str(config)])
    assert result.exit_code == 0, result.output
    empty = f"class folder {tmp_path / 'train' / 'cat'} holds no image (only 1 other file)"
    assert f"data: train: {empty}: 'cat' is not a class" in " ".join(result.output.split())
    assert f"no image of class '{CLASSES[3]}' (train has it)" in result.output
    notes = metrics(tmp_path)["dataset"]["notes"]
    assert notes[0] == f"train: {empty}: 'cat' is not a class"
    assert notes[1] == f"test: class folder {tmp_path / 'test' / CLASSES[3]} holds no image"
    assert notes[2] == (
        f"test: no image of class '{CLASSES[3]}' (train has it): the test metrics leave it out"
    )
    assert metrics(tmp_path)["dataset"]["class_names"] == list(CLASSES)


@pytest.mark.parametrize(
    ("folders", "extra", "expected"),
    [
        (  # a class folder with no image
            ["cat"],
            ["cat"],
            "data.class_names lists 'cat' but its class folder holds no image: {train}{sep}cat; ",
        ),
        (  # no class folder at all
            [],
            ["cat", "dog"],
            "data.class_names lists 'cat', 'dog' but {train} has no class folder of them; ",
        ),
    ],
    ids=["empty-folder", "no-folder"],
)
def test_a_class_data_class_names_lists_with_no_image_is_an_error(
    tmp_path: Path, folders: list[str], extra: list[str], expected: str
) -> None:
    write_learnable_tree(tmp_path / "train", 20)
    for folder in folders:
        (tmp_path / "train" / folder).mkdir()
    names = [*CLASSES, *extra]
    config = write_config(tmp_path, {"train": str(tmp_path / "train"), "class_names": names})
    result = train(config)
    assert result.exit_code == 3, result.output
    message = json.loads(result.stdout)["error"]["message"]
    assert message.startswith(expected.format(train=tmp_path / "train", sep=os.sep))


def test_a_path_that_is_no_data_source(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    config = write_config(tmp_path, {"train": str(tmp_path / "notes.txt")})
    result = train(config)
    assert result.exit_code == 3
    assert "not a data source dlcli reads" in result.output
    config = write_config(tmp_path, {"train": str(tmp_path / "missing")})
    assert "missing: not found" in train(config).output


def test_images_outside_class_folders_are_named_as_such(tmp_path: Path) -> None:
    """A folder of loose images (one class folder given instead of the folder above it) gets
    a message saying where the images are and what to give instead."""
    from dlcli.data.sources import list_folder

    for i in range(4):
        Image.new("L", (8, 8), i).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as caught:
        list_folder(tmp_path)
    message = str(caught.value)
    assert "4 images lie in it outside class folders" in message
    assert f"if {tmp_path} is itself one class, give the folder that holds it" in message
    assert message.endswith(f"; 1 other file ignored ({tmp_path / 'notes.txt'})")
    assert "|tif|tiff)" in message  # every suffix dlcli reads, from images.IMAGE_SUFFIXES


def test_config_rules_for_data_keys(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"dataset": "mnist", "train": "x"})
    result = train(config)
    assert result.exit_code == 2
    assert "data: give one of dataset, train or the four IDX files" in result.output
    config = write_config(tmp_path, {"test": "x"})
    assert "data.test / data.validation: need data.train" in train(config).output


# --- images become the model's input ------------------------------------------------------


def test_every_kind_of_image_converts_predictably(tmp_path: Path) -> None:
    paths = write_odd_tree(tmp_path)
    grey = Conversion(12, 10, 1)
    rgb = Conversion(12, 10, 3)
    original = np.asarray(Image.open(paths["grey"]))
    assert bool((read_image(paths["grey"], grey)[0][..., 0] == original).all())
    assert bool((read_image(paths["grey"], rgb)[0] == original[..., None]).all())
    # RGBA: the transparent half shows the background, the opaque half its colour.
    rgba = np.asarray(Image.open(paths["rgba"]))
    black = read_image(paths["rgba"], rgb)[0]
    white = read_image(paths["rgba"], Conversion(12, 10, 3, background=255))[0]
    assert int(black[:, :5].max()) == 0 and int(white[:, :5].min()) == 255
    assert bool((black[:, 5:] == rgba[:, 5:, :3]).all())
    # 16-bit: value / 257, rounded.
    deep = np.asarray(Image.open(paths["deep"])).astype(np.int64)
    assert bool((read_image(paths["deep"], grey)[0][..., 0] == (deep + 128) // 257).all())
    # Palette with a transparent index: that index becomes the background.
    palette = read_image(paths["palette"], grey)[0][..., 0]
    assert bool((palette[original == 0] == 0).all())
    assert bool((palette[original != 0] == original[original != 0]).all())
    jpeg = read_image(paths["jpeg"], rgb)[0]
    assert jpeg.shape == (12, 10, 3)


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp", ".tiff"])
def test_a_file_of_several_frames_gives_its_first(tmp_path: Path, suffix: str) -> None:
    """The README's rule for animated GIF, PNG (APNG) and WebP files and multi-page TIFFs."""
    frames = [Image.new("L", (6, 4), value) for value in (10, 250, 130)]
    path = tmp_path / f"anim{suffix.upper()}"
    extra = {"lossless": True} if suffix == ".webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, **extra)
    with Image.open(path) as image:
        assert image.n_frames == 3
    pixels, info = read_image(path, Conversion(4, 6, 1))
    assert (pixels == 10).all()
    assert (info.width, info.height) == (6, 4)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((4, 6), np.uint8)
    pixels[0, :] = 255  # top row white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display turns it 90° clockwise
    image.save(tmp_path / "r.jpg", exif=exif, quality=100)
    array = read_image(tmp_path / "r.jpg", Conversion(6, 4, 1))[0][..., 0]
    assert array.shape == (6, 4)
    assert int(array[:, -1].min()) > 200 and int(array[:, 0].max()) < 60  # right column white


@pytest.mark.parametrize(
    ("resize", "corner", "centre"),
    [("stretch", 255, 255), ("pad", 0, 255), ("crop", 255, 255)],
)
def test_resize_modes(resize: str, corner: int, centre: int) -> None:
    wide = Image.new("L", (40, 10), 255)  # a white 4:1 strip into a 20×20 input
    array = convert(wide, Conversion(20, 20, 1, resize=resize))[..., 0]
    assert array.shape == (20, 20)
    assert int(array[0, 0]) == corner and int(array[10, 10]) == centre


def test_input_shape_inferred_from_colour_and_size() -> None:
    infos = [
        decode.ImageInfo("L", 10, 12, ""),
        decode.ImageInfo("RGB", 10, 12, ""),
        decode.ImageInfo("L", 30, 30, ""),
    ]
    assert decode.infer_conversion(infos).chw == (3, 12, 10)
    assert decode.infer_conversion(infos[::2]).chw[0] == 1


# --- bad files ---------------------------------------------------------------------------


def test_a_png_with_a_bad_crc_or_cut_before_its_end_is_refused(tmp_path: Path) -> None:
    """Pillow checks no IDAT chunk's CRC: a flipped bit in the pixel data decoded to wrong
    pixels silently, and a PNG cut short before its IEND chunk decoded as if whole."""
    gradient = (np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(gradient, mode="L").save(buffer, format="PNG")
    good = buffer.getvalue()
    flipped = bytearray(good)
    flipped[good.index(b"IDAT") + 40] ^= 0x10  # inside the deflate stream
    for name, data in {"flip.png": bytes(flipped), "cut.png": good[:-12]}.items():
        (tmp_path / name).write_bytes(data)
    conversion = Conversion(32, 32, 1)
    assert (
        read_image(_write(tmp_path / "good.png", good), conversion)[0][..., 0] == gradient
    ).all()
    with pytest.raises(DataError, match=r"flip.png: cannot read the image: corrupt PNG: the CRC "
                       r"of its 'IDAT' chunk at byte 33 does not match"):  # fmt: skip
        read_image(tmp_path / "flip.png", conversion)
    with pytest.raises(DataError, match=r"cut.png: cannot read the image: truncated PNG: the file "
                       r"ends before its IEND chunk"):  # fmt: skip
        read_image(tmp_path / "cut.png", conversion)
    _write(tmp_path / "tree" / "a" / "flip.png", bytes(flipped))
    _write(tmp_path / "tree" / "b" / "good.png", good)
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "tree")])
    assert result.exit_code == 3, result.output
    assert "flip.png: cannot read the image: corrupt PNG: the CRC" in result.output


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _broken_exif_jpeg() -> bytes:
    """A JPEG whose EXIF block claims more entries than it holds (it decodes fine)."""
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 10, 10)).save(buffer, format="JPEG", exif=exif)
    data = bytearray(buffer.getvalue())
    at = data.index(b"Exif\0\0") + 6
    count = at + 8  # the first IFD's entry count, after the TIFF header
    data[count : count + 2] = (48).to_bytes(2, "big" if data[at : at + 2] == b"MM" else "little")
    return bytes(data)


def test_pillows_warnings_never_reach_stderr(tmp_path: Path) -> None:
    """A truncated deflate TIFF and a JPEG with a broken EXIF block made Pillow print
    UserWarnings (a path into site-packages and a line of its code) on stderr; the TIFF was
    then 'not an image Pillow can read'. Now the TIFF's reason is Pillow's warning, and the
    JPEG decodes quietly."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="TIFF", compression="tiff_deflate")
    _write(tmp_path / "tree" / "a" / "cut.tif", buffer.getvalue()[:-16])
    _write(tmp_path / "tree" / "b" / "exif.jpg", _broken_exif_jpeg())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels, _ = read_image(tmp_path / "tree" / "b" / "exif.jpg", Conversion(8, 16, 3))
        assert pixels.shape == (8, 16, 3)
        with pytest.raises(DataError, match=r"cut.tif: cannot read the image: Truncated File"):
            read_image(tmp_path / "tree" / "a" / "cut.tif", Conversion(8, 16, 3))
    assert [str(w.message) for w in caught] == []
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "tree")])
    assert result.exit_code == 3, result.output
    assert "cut.tif: cannot read the image: Truncated File Read" in result.output
    assert "Warning" not in result.output


def test_bad_files_stop_training_or_are_skipped_and_recorded(tmp_path: Path) -> None:
    paths = write_odd_tree(tmp_path / "odd")
    config = write_config(
        tmp_path,
        {"train": str(tmp_path / "odd"), "validation_split": 0.5},
        input_shape=[8, 8, 3],
        layers=[{"type": "flatten"}, {"type": "dense", "units": 8}],
    )
    result = CliRunner().invoke(cli, ["train", str(config), "--quiet"])
    assert result.exit_code == 3
    assert "2 image files could not be read." in result.stderr
    assert f"{paths['corrupt']}: cannot read the image: truncated PNG: its" in result.stderr
    assert f"{paths['empty']}: empty file (0 bytes), expected an image" in result.stderr
    assert "data.skip_bad_files: true" in result.stderr
    result = train(config, "--set", "data.skip_bad_files=true")
    assert result.exit_code == 0, result.output
    skipped = metrics(tmp_path)["skipped_files"]
    assert [s["path"] for s in skipped] == [str(paths["corrupt"]), str(paths["empty"])]
    assert "ünïcødé" in metrics(tmp_path)["dataset"]["class_names"]


def test_only_the_first_twenty_bad_files_are_named(tmp_path: Path) -> None:
    for i in range(25):
        (tmp_path / "tree" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / "a" / f"{i:02d}.png").write_bytes(b"junk")
    Image.new("L", (8, 8)).save(tmp_path / "tree" / "a" / "ok.png")
    with pytest.raises(DataError) as info:
        load_local(LocalData(tmp_path / "tree"))
    message = str(info.value)
    assert message.startswith("25 image files could not be read.")
    assert "19.png" in message and "20.png" not in message and "… and 5 more" in message


# --- parallel decoding, the cache ------------------------------------------------------------


def test_parallel_decoding_gives_the_same_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_learnable_tree(tmp_path / "t", 70)
    files = sorted((tmp_path / "t").rglob("*.png"))
    files.insert(5, tmp_path / "missing.png")
    conversion = Conversion(8, 8, 1)
    alone = decode.decode_files(files, conversion, workers=1)
    monkeypatch.setattr(decode, "PARALLEL_MIN", 2)
    monkeypatch.setattr(decode, "CHUNK_MAX", 8)
    pooled = decode.decode_files(files, conversion, workers=2)
    assert bool((alone.images == pooled.images).all()) and len(pooled.images) == 70
    assert pooled.bad == alone.bad == [(str(files[5]), "image file not found")]
    assert 5 not in pooled.kept.tolist()


def test_the_cache_is_used_then_invalidated(
    tmp_path: Path, _cache_in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_learnable_tree(tmp_path / "t", 40)
    first = load_local(LocalData(tmp_path / "t"))
    (entry,) = (_cache_in_tmp / "images").glob("*.safetensors")
    assert entry.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded again")

    monkeypatch.setattr("dlcli.data.local.decode_files", no_decoding)
    again = load_local(LocalData(tmp_path / "t"))
    assert bool((again.train.images == first.train.images).all())
    assert bool((again.train.labels == first.train.labels).all())
    changed = next((tmp_path / "t" / CLASSES[0]).glob("*.png"))
    Image.new("L", (8, 8), 9).save(changed)
    os.utime(changed, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        load_local(LocalData(tmp_path / "t"))
    with pytest.raises(AssertionError, match="decoded again"):  # other settings, other key
        load_local(LocalData(tmp_path / "t", input_shape=(8, 8, 3)))


@pytest.mark.parametrize("csv_or_folder", ["folder", "csv"])
def test_a_file_rewritten_with_its_size_and_mtime_kept_is_decoded_again(
    tmp_path: Path, _cache_in_tmp: Path, csv_or_folder: str
) -> None:
    """``touch -r`` / ``cp -p`` / an archive extracted over the data keep a file's size and
    modification time; its status-change time still moves, and the cache notices. (BMP: its
    size does not depend on the pixels.)"""
    for label in ("a", "b"):
        (tmp_path / "t" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), 10 * i).save(tmp_path / "t" / label / f"{i}.bmp")
    data = tmp_path / "t"
    if csv_or_folder == "csv":
        rows = [f"{p},{p.parent.name}" for p in sorted(data.rglob("*.bmp"))]
        data = tmp_path / "t.csv"
        data.write_text("path,label\n" + "\n".join(rows) + "\n")
    first = load_local(LocalData(data))
    victim = tmp_path / "t" / "a" / "0.bmp"
    before = os.stat(victim)
    Image.new("L", (8, 8), 200).save(victim)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(victim)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    again = load_local(LocalData(data))
    assert int(first.train.images.max()) == 30
    assert int(again.train.images.max()) == 200, "the rewritten image was served from the cache"


def test_an_inferred_shape_is_cached_per_background_and_resize(
    tmp_path: Path, _cache_in_tmp: Path
) -> None:
    """With the input shape inferred, ``background`` and ``resize`` change the pixels as much
    as with it given: each setting has its own entry (the first one once served them all)."""
    for tree, colour in (("clear", (0, 0, 0, 0)), ("white", (255, 255, 255, 255))):
        for name in CLASSES[:2]:
            (tmp_path / tree / name).mkdir(parents=True)
            for i in range(3):  # two sizes: where the shape is inferred, one is resized
                size = (8, 8) if i else (8, 12)
                Image.new("RGBA", size, colour).save(tmp_path / tree / name / f"{i}.png")

    def pixels(tree: str, **settings: Any) -> Any:
        return load_local(LocalData(tmp_path / tree, **settings)).train.images

    black, white = pixels("clear", background=0), pixels("clear", background=255)
    assert int(black.max()) == 0 and int(white.min()) == 255
    assert bool((pixels("clear", background=0) == black).all())  # its own entry again
    stretched, padded = pixels("white", resize="stretch"), pixels("white", resize="pad")
    assert int(stretched.min()) == 255 and int(padded.min()) == 0  # padded with black
    assert len(list((_cache_in_tmp / "images").glob("*.safetensors"))) == 4


def test_entries_of_earlier_cache_formats_are_removed_but_no_other_file(
    tmp_path: Path, _cache_in_tmp: Path
) -> None:
    """An entry's name hashes the cache format with the source and settings, so after a format
    bump the old entry's name is never computed again: writing the new entry removes the ones
    earlier formats wrote for the same source and settings (they stayed for ever), and only
    those: a file there that dlcli did not write as an entry, whatever its name, is kept."""
    from dlcli.data.cache import _write_entry

    write_learnable_tree(tmp_path / "t", 20)
    images = _cache_in_tmp / "images"
    images.mkdir(parents=True)

    def named(format: str, conversion: Any, files: str) -> Path:  # as format 1 and 2 named them
        settings = {"format": format, "source": str(tmp_path / "t"), "conversion": conversion}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return images / f"{digest[:16]}-{files * 32}.safetensors"

    inferred = {"inferred": True, "resize": "stretch", "background": 0}
    tensors = {"images": np.zeros((0, 1, 8, 8), np.uint8), "kept": np.zeros(0, np.int64)}
    stale = [
        named("dlcli-image-cache-2", inferred, "a"),
        named("dlcli-image-cache-1", "inferred", "b"),
    ]
    for path, format in zip(stale, ("dlcli-image-cache-2", "dlcli-image-cache-1"), strict=True):
        _write_entry(str(path), tensors, {"format": format})
    other_settings = named("dlcli-image-cache-2", {**inferred, "background": 255}, "c")
    _write_entry(str(other_settings), tensors, {"format": "dlcli-image-cache-2"})
    users = named("dlcli-image-cache-2", inferred, "d")  # an entry's name, not its content
    users.write_bytes(b"my notes")
    unnamed = images / (stale[0].name + ".bak")
    _write_entry(str(unnamed), tensors, {"format": "dlcli-image-cache-2"})

    load_local(LocalData(tmp_path / "t"))
    left = {p.name for p in images.iterdir()}
    assert not {p.name for p in stale} & left, "an earlier format's entry was left"
    assert {other_settings.name, users.name, unnamed.name} <= left
    assert users.read_bytes() == b"my notes"
    assert len(left) == 4  # and the new entry


def test_temporary_files_killed_writers_left_are_removed_but_no_live_or_other_file(
    tmp_path: Path, _cache_in_tmp: Path
) -> None:
    """A process killed while writing an entry left its temporary file in the cache folder for
    ever: writing an entry removes those an hour old, and keeps a fresher one (another
    process may be writing it), a file of another name, a link and a folder."""
    write_learnable_tree(tmp_path / "t", 20)
    images = _cache_in_tmp / "images"
    images.mkdir(parents=True)
    hour_ago = time.time() - 3600

    def made(name: str, age_s: float, data: bytes = b"half an entry") -> Path:
        path = images / name
        path.write_bytes(data)
        os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path

    abandoned = made(".tmp-k1ll3d_0.safetensors", 3601)
    fresh = made(".tmp-wr1t1ng0.safetensors", 3500)  # under an hour: maybe being written
    users = [
        made(".tmp-k1ll3d_0.safetensors.bak", 7200),
        made("x.tmp-k1ll3d_1.safetensors", 7200),
        made(".tmp-my-notes.safetensors", 7200),
        made(".tmp-k1ll3d_2.txt", 7200),
    ]
    target = made("mine.bin", 7200, b"mine")
    link = images / ".tmp-l1nk3d_0.safetensors"
    link.symlink_to(target)
    os.utime(link, (hour_ago - 60, hour_ago - 60), follow_symlinks=False)
    folder = images / ".tmp-f0ld3r_0.safetensors"
    folder.mkdir()
    os.utime(folder, (hour_ago - 60, hour_ago - 60))

    load_local(LocalData(tmp_path / "t"))
    assert not abandoned.exists(), "an abandoned temporary file was left"
    assert fresh.read_bytes() == b"half an entry"
    assert all(path.read_bytes() == b"half an entry" for path in users)
    assert link.is_symlink() and target.read_bytes() == b"mine" and folder.is_dir()
    assert len(list(images.glob("[0-9a-f]*-*.safetensors"))) == 1  # the new entry


def test_cache_dir_key_and_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_learnable_tree(tmp_path / "t", 20)
    load_local(LocalData(tmp_path / "t", cache_dir=str(tmp_path / "mine")))
    assert len(list((tmp_path / "mine" / "images").glob("*.safetensors"))) == 1
    load_local(LocalData(tmp_path / "t", cache=False, cache_dir=str(tmp_path / "off")))
    assert not (tmp_path / "off").exists()
    entry = next((tmp_path / "mine" / "images").glob("*.safetensors"))
    entry.write_bytes(b"garbage")  # a damaged entry is a miss, then rewritten
    data = load_local(LocalData(tmp_path / "t", cache_dir=str(tmp_path / "mine")))
    assert len(data.train) == 20 and entry.read_bytes() != b"garbage"


def test_cache_entries_are_safetensors_both_ways(tmp_path: Path) -> None:
    """dlcli writes and reads its entries itself (no copy of the pixels through a bytes object
    or a memory map): the safetensors library reads what dlcli writes and the other way round,
    an empty tensor included, and a truncated or lying entry is refused."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from dlcli.data.cache import _read_entry, _write_entry

    images = np.arange(2 * 1 * 3 * 3, dtype=np.uint8).reshape(2, 1, 3, 3)
    tensors = {"images": images, "kept": np.array([0, 2], dtype=np.int64)}
    mine = tmp_path / "mine.safetensors"
    _write_entry(str(mine), tensors, {"format": "x"})
    with safe_open(str(mine), framework="np") as f:
        assert f.metadata() == {"format": "x"}
        assert (f.get_tensor("images") == images).all()
        assert f.get_tensor("kept").tolist() == [0, 2]
    theirs = tmp_path / "theirs.safetensors"
    save_file({**tensors, "kept": np.zeros(0, dtype=np.int64)}, str(theirs), metadata={"a": "b"})
    meta, read = _read_entry(theirs)
    assert meta == {"a": "b"} and (read["images"] == images).all() and read["kept"].shape == (0,)
    data = mine.read_bytes()
    (tmp_path / "short").write_bytes(data[:-3])
    with pytest.raises(ValueError, match=r"truncated|range"):
        _read_entry(tmp_path / "short")
    size = int.from_bytes(data[:8], "little")
    lying = data[: 8 + size].replace(b'"shape":[2,1,3,3]', b'"shape":[9,1,3,3]')
    (tmp_path / "lying").write_bytes(lying + data[8 + size :])
    with pytest.raises(ValueError, match=r"range|size"):
        _read_entry(tmp_path / "lying")


def test_a_cache_entry_whose_pixels_changed_on_disk_is_decoded_again(
    tmp_path: Path, _cache_in_tmp: Path
) -> None:
    """A flipped byte in an entry's pixels (its size and header kept) was loaded and trained
    on; the CRC-32 of each tensor written with it makes it a miss, decoded again and
    replaced."""
    write_learnable_tree(tmp_path / "pics", 8)
    first = load_local(LocalData(tmp_path / "pics"))
    (entry,) = (_cache_in_tmp / "images").glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    data[8 + int.from_bytes(data[:8], "little") + 5] ^= 0xFF  # the 6th pixel byte
    entry.write_bytes(bytes(data))
    again = load_local(LocalData(tmp_path / "pics"))
    assert bool((again.train.images == first.train.images).all())
    assert entry.read_bytes() != bytes(data)  # rewritten whole


# --- parity with the IDX arrays --------------------------------------------------------------


def test_png_tree_pixels_equal_the_idx_arrays(tmp_path: Path) -> None:
    """The benchmark's tree maker on a slice of the committed Fashion-MNIST archives: the
    tree's tensors, sorted by class then file, equal the IDX arrays sorted the same way."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_png_tree", REPO_ROOT / "benchmarks" / "make_png_tree.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    write_tree = module.write_tree
    images = np.random.default_rng(3).integers(0, 256, (60, 28, 28), dtype=np.uint8)
    labels = np.arange(60) % 10
    write_tree(tmp_path / "tree" / "train", images, labels)
    data = load_local(LocalData(tmp_path / "tree" / "train"))
    order = np.lexsort((np.arange(60), labels))  # by class, then by index
    assert data.class_names == tuple(str(i) for i in range(10))
    assert bool((data.train.images[:, 0].numpy() == images[order]).all())
    assert bool((data.train.labels.numpy() == labels[order]).all())


def test_a_broken_worker_pool_falls_back_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    class DeadPool:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __enter__(self) -> DeadPool:
            return self

        def __exit__(self, *args: Any) -> None:
            pass

        def submit(self, *args: Any) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_exception(BrokenProcessPool("a worker died"))
            return future

    write_learnable_tree(tmp_path / "t", 40)
    files = sorted((tmp_path / "t").rglob("*.png"))
    monkeypatch.setattr(decode, "PARALLEL_MIN", 2)
    monkeypatch.setattr(decode, "ProcessPoolExecutor", DeadPool)
    decoded = decode.decode_files(files, Conversion(8, 8, 1), workers=2)
    assert len(decoded.images) == 40 and not decoded.bad


def test_an_image_too_large_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlcli import limits

    Image.new("L", (40, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(limits, "IMAGE_MAX_PIXELS", 1000)
    with pytest.raises(
        DataError, match=r"big.png: refused: more than the 1,000 pixels dlcli decodes"
    ):
        read_image(tmp_path / "big.png", Conversion(8, 8, 1))
    # Above twice the limit Pillow's own text named its threshold ("exceeds limit of 2000
    # pixels") after dlcli's 1,000: two limits in one line. The image's own count is given.
    Image.new("L", (100, 100)).save(tmp_path / "bigger.png")
    with pytest.raises(DataError) as info:
        read_image(tmp_path / "bigger.png", Conversion(8, 8, 1))
    assert str(info.value) == (
        f"{tmp_path / 'bigger.png'}: refused: more than the 1,000 pixels dlcli decodes: "
        "the image declares 10,000 (a decompression bomb?)"
    )
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"pipe\.png: is a FIFO"):
        read_image(fifo, Conversion(8, 8, 1))


def test_unicode_digit_class_names_are_names_not_numbers(tmp_path: Path) -> None:
    """Folders "1" and "²", and CSV labels "1" and "²": "²" passes str.isdigit() but is no
    number int() takes, so the classes are names, sorted as text, never a crash. In a CSV,
    "1" is an index and "²" a name: labels that mix them are refused unless data.class_names
    names the classes."""
    for name in ("1", "²"):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (4, 4), 40 * i).save(tmp_path / "pics" / name / f"{i}.png")
    assert load_local(LocalData(tmp_path / "pics")).class_names == ("1", "²")
    rows = sorted((tmp_path / "pics").rglob("*.png"))
    (tmp_path / "pics.csv").write_text(
        "path,label\n" + "".join(f"{f.relative_to(tmp_path)},{f.parent.name}\n" for f in rows)
    )
    with pytest.raises(DataError, match=r"the labels mix class indices \(1\) and class names"):
        load_local(LocalData(tmp_path / "pics.csv"))
    named = load_local(LocalData(tmp_path / "pics.csv", class_names=("1", "²")))
    assert named.class_names == ("1", "²")
    assert named.train.labels.tolist() == [0, 0, 1, 1]
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "pics"), "--json"])
    assert result.exit_code == 0, result.output


def test_npz_images_beyond_the_pixel_bound_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images read from an .npz larger than limits.IMAGE_MAX_PIXELS were blamed on
    model.input_shape (exit 2), a key the config did not set; the size came from the file."""
    monkeypatch.setattr("dlcli.limits.IMAGE_MAX_PIXELS", 100)
    np.savez(tmp_path / "big.npz", x=np.zeros((4, 11, 10), np.uint8), y=np.arange(4) % 2)
    result = train(write_config(tmp_path, {"train": str(tmp_path / "big.npz")}))
    assert result.exit_code == 3, result.output
    assert "big.npz: shape (4, 11, 10): images of 11 × 10 is 110 pixels" in result.output
    assert "model.input_shape" not in result.output


def test_an_npz_member_declaring_more_than_it_holds_is_refused_unread(tmp_path: Path) -> None:
    """A 1 KB .npz whose x.npy header claims (100000, 1000, 1000) uint8 (93 GiB): a DataError
    naming the file and the member, with nothing allocated, in train and data check."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (100000, 1000, 1000)}
    )
    labels = io.BytesIO()
    np.save(labels, np.zeros(2, dtype=np.int64))
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(32))
        archive.writestr("y.npy", labels.getvalue())
    with pytest.raises(DataError, match=r"bomb.npz: member x.npy: the .npy header declares"):
        load_local(LocalData(bomb))
    result = CliRunner().invoke(cli, ["data", "check", str(bomb)])
    assert result.exit_code == 3, result.output
    assert "member x.npy" in result.output


def test_only_the_npz_members_read_are_opened_and_named_in_bounds(tmp_path: Path) -> None:
    """Every member was opened to check its header (100,000 members: 24 s), an object array
    never read refused the file, and a file without x/y listed every member's name."""
    x, y = np.zeros((4, 4, 4), np.uint8), np.array([0, 1, 0, 1])
    np.savez(tmp_path / "extra.npz", x=x, y=y, notes=np.array(["a", None], dtype=object))
    loaded = load_local(LocalData(tmp_path / "extra.npz"))
    assert loaded.train.labels.tolist() == [0, 1, 0, 1]
    np.savez(tmp_path / "many.npz", **{f"m{i:02d}": y for i in range(30)})
    with pytest.raises(DataError, match=r"found m00, m01, .*, m09 and 20 more$"):
        load_local(LocalData(tmp_path / "many.npz"))
    np.savez(tmp_path / "obj.npz", x=np.array([x[0], None], dtype=object), y=y[:2])
    with pytest.raises(DataError, match=r"member x.npy: a .npy array of Python objects"):
        load_local(LocalData(tmp_path / "obj.npz"))


def test_a_huge_integer_label_is_refused_before_any_class_name_is_built(tmp_path: Path) -> None:
    """Labels 99999999999999 (CSV) and 2**40 (.npz) would mean 10^14 class names: a DataError
    naming the file, the label and the CSV line, at once."""
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "big.csv").write_text("path,label\na.png,0\na.png,99999999999999\n")
    with pytest.raises(DataError, match=r"big.csv: line 3: label 99999999999999 is beyond"):
        load_local(LocalData(tmp_path / "big.csv"))
    np.savez(
        tmp_path / "big.npz",
        x=np.zeros((2, 4, 4), np.uint8),
        y=np.array([2**40, 0], np.int64),
    )
    with pytest.raises(DataError, match=r"big.npz: labels\[0\]: label 1099511627776 is beyond"):
        load_local(LocalData(tmp_path / "big.npz"))
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "big.npz")])
    assert result.exit_code == 3, result.output
    assert "label 1099511627776 is beyond" in result.output


# --- interrupted while decoding --------------------------------------------------------------


def test_npz_images_of_no_pixels_or_channels_no_model_takes_are_data_errors(
    tmp_path: Path,
) -> None:
    """(N, 0, 8) or (N, 8, 8, 5) images were exit 2 blaming model.input_shape, a key the
    config never set; (N, 8, 8, 0) passed data check. They are the file's fault: exit 3."""
    y = np.array([0, 1, 0, 1])
    for name, shape in {"flat": (4, 0, 8), "none": (4, 8, 8, 0), "five": (4, 8, 8, 5)}.items():
        np.savez(tmp_path / f"{name}.npz", x=np.zeros(shape, np.uint8), y=y)
        expected = rf"{name}.npz: expected images of at least 1 × 1 pixels with 1 \(greyscale\)"
        with pytest.raises(DataError, match=expected + r".*found shape \(4, " + str(shape[1])):
            load_local(LocalData(tmp_path / f"{name}.npz"))
        result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / f"{name}.npz")])
        assert result.exit_code == 3, result.output


def test_negative_labels_and_uint64_labels_past_int64_are_refused_as_read(tmp_path: Path) -> None:
    """A label of -1 made `data check` an internal error (np.bincount) and `train` blame
    data.num_classes; a uint64 label of 2**64-1 turned into -1 when cast to int64."""
    x = np.zeros((4, 4, 4), np.uint8)
    np.savez(tmp_path / "neg.npz", x=x, y=np.array([0, 1, -1, 1], np.int64))
    np.savez(tmp_path / "u64.npz", x=x, y=np.array([0, 1, 2**64 - 1, 1], np.uint64))
    found = {
        "neg.npz": r"neg.npz: labels\[2\]: label -1 is negative; labels are class indices",
        "u64.npz": r"u64.npz: labels\[2\]: label 18446744073709551615 is beyond the 1,000,000",
    }
    for name, message in found.items():
        with pytest.raises(DataError, match=message):
            load_local(LocalData(tmp_path / name))
        result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / name)])
        assert result.exit_code == 3, result.output
        assert "internal error" not in result.output


@pytest.mark.parametrize("where", ["open", "convert"])
@pytest.mark.parametrize("input_shape", [None, (8, 8, 1)])
def test_an_interrupt_while_decoding_is_no_bad_file_and_caches_nothing(
    tmp_path: Path,
    _cache_in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    input_shape: tuple[int, int, int] | None,
) -> None:
    """Ctrl-C inside Pillow (the signal handler raises Interrupted there) stops the command:
    the image is not reported unreadable, nor skipped, and no verdict is cached."""
    import PIL.Image

    from dlcli.data import images

    write_learnable_tree(tmp_path / "t", 8)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise Interrupted("interrupted")

    if where == "open":
        monkeypatch.setattr(PIL.Image, "open", interrupted)
    else:
        monkeypatch.setattr(images, "convert", interrupted)
    with pytest.raises(Interrupted):
        load_local(LocalData(tmp_path / "t", input_shape=input_shape, skip_bad_files=True))
    assert not list(_cache_in_tmp.rglob("*.safetensors"))


def test_a_fifo_among_images_is_refused_when_the_shape_is_inferred(tmp_path: Path) -> None:
    """With model.input_shape inferred, a FIFO named *.png is refused, not opened (it hung):
    ``config validate`` reports it as a config problem (exit 2)."""
    import subprocess
    import sys

    write_learnable_tree(tmp_path / "t", 8)
    os.mkfifo(tmp_path / "t" / CLASSES[0] / "pipe.png")
    config = write_config(tmp_path, {"train": str(tmp_path / "t")})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "dlcli", "config", "validate", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "pipe.png: is a FIFO" in result.stderr


def test_with_no_readable_image_the_shape_cannot_be_inferred_a_data_error(
    tmp_path: Path,
) -> None:
    """Every image unreadable, input_shape inferred: exit 3 naming the files (was exit 1)."""
    (tmp_path / "t" / "a").mkdir(parents=True)
    (tmp_path / "t" / "a" / "junk.png").write_bytes(b"junk")
    with pytest.raises(DataError) as info:
        load_local(LocalData(tmp_path / "t"))
    message = str(info.value)
    assert message.startswith("no readable image to infer model.input_shape from")
    assert "1 image file could not be read." in message and "junk.png: " in message
    assert info.value.exit_code == 3


def test_an_input_shape_too_large_is_a_config_error(tmp_path: Path) -> None:
    """A huge model.input_shape is refused naming it (exit 2), not a MemoryError (exit 1)."""
    write_learnable_tree(tmp_path / "t", 8)
    config = write_config(tmp_path, {"train": str(tmp_path / "t")}, input_shape=[100000, 100000, 3])
    for command in (["config", "validate"], ["train", "--quiet"]):
        result = CliRunner().invoke(cli, [*command, str(config)])
        assert result.exit_code == 2, result.output
        assert "model.input_shape: 100000 × 100000 is 10,000,000,000 pixels" in result.stderr


def test_no_memory_for_the_decoded_images_is_a_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_learnable_tree(tmp_path / "t", 4)

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(decode.np, "empty", no_memory)
    with pytest.raises(DataError, match=r"not enough memory for 4 images of 8 × 8 × 1 \(256 bytes"):
        decode.decode_files(sorted((tmp_path / "t").rglob("*.png")), Conversion(8, 8, 1))


def test_float_and_16_bit_images_scale_like_float_arrays(tmp_path: Path) -> None:
    """Mode F holds pixel / 255 (the rule of float .npy inputs): it is scaled × 255, not
    clipped to black; 16-bit modes are value / 257; values with no 8-bit meaning are refused."""
    grey = Conversion(6, 5, 1)
    pixels = np.arange(30, dtype=np.uint8).reshape(6, 5) * 8
    Image.fromarray(pixels.astype(np.float32) / 255, mode="F").save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert bool((read_image(tmp_path / "f.tif", grey)[0][..., 0] == pixels).all())
    half = np.full((6, 5), 0.5, np.float32)
    Image.fromarray(half, mode="F").save(tmp_path / "half.tif")
    assert bool((read_image(tmp_path / "half.tif", grey)[0] == 128).all())
    wide = pixels.astype(np.uint16) * 257
    for mode, dtype in [("I;16", "<u2"), ("I;16B", ">u2")]:
        image = Image.fromarray(wide.astype(dtype))
        assert image.mode == mode
        image.save(tmp_path / f"{mode}.tif")
        assert bool((read_image(tmp_path / f"{mode}.tif", grey)[0][..., 0] == pixels).all())
    for name, values in [
        ("above.tif", half * 3),
        ("negative.tif", half - 1),
        ("nan.tif", np.where(pixels > 100, np.nan, half).astype(np.float32)),
    ]:
        Image.fromarray(values, mode="F").save(tmp_path / name)
        with pytest.raises(DataError, match=rf"{name}: a float image must hold values in \[0, 1\]"):
            read_image(tmp_path / name, grey)
    Image.fromarray(wide.astype(np.int32) * 4, mode="I").save(tmp_path / "int32.tif")
    with pytest.raises(DataError, match=r"int32.tif: an integer image \(mode I\) must hold 16-bit"):
        read_image(tmp_path / "int32.tif", grey)
