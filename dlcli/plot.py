"""PNG figures of a saved run: a training curve per metric (from ``history.csv``) and a
confusion-matrix heatmap with class names (the saved model re-run on one split).

matplotlib is an optional extra (``dlcli[plot]``). Figures are drawn with the Agg canvas
directly — no pyplot, no global state, no display needed — at a fixed size, so a figure is
always ``FIGSIZE × DPI`` pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlcli import metric_names
from dlcli.atomic import temp_sibling
from dlcli.errors import ForeignFile, ModelDirError, OutputError, UsageError, write_problem
from dlcli.metrics import PerClass
from dlcli.runs import monitored_metric, read_history, read_steps, summarize_history
from dlcli.untrusted import check_replaceable, in_the_way, open_regular

DPI = 150
CURVE_SIZE = (8.0, 5.0)  # inches: 1200 × 750 pixels at DPI
CONFUSION_SIZE = (9.0, 8.0)  # 1350 × 1200 pixels
ANNOTATE_MAX_CLASSES = 30  # beyond this, cell counts would be unreadable
NOT_CURVES = ("epoch", "seconds", "samples_per_second")

INSTALL_HINT = "pip install 'dlcli[plot]'  (or: pip install matplotlib)"
# The PNG "Software" text of every figure dlcli writes: how `dlcli plot` knows a file at one of
# its names is its own to replace. Figures of earlier versions say Matplotlib's own text; those
# are replaced in RUN_DIR/plots, the run's own folder, only.
SOFTWARE = "dlcli (matplotlib)"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class PlotResult:
    run_dir: Path
    out_dir: Path
    files: list[Path] = field(default_factory=list)


def require_matplotlib() -> None:
    """Fail early, before any work, with how to install the optional extra."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            f"dlcli plot needs matplotlib, an optional extra: {INSTALL_HINT}"
        ) from None


@dataclass
class Best:
    """The epoch a run's monitored metric was best at: marked on that metric's figure only."""

    metric: str
    epoch: int
    value: float


def plot_run(
    run_dir: Path,
    out_dir: Path | None = None,
    *,
    split: str = "validation",
    batch_size: int = 1000,
    data_dir: str | None = None,
    device: str = "auto",
    accept_changed_data: bool = False,
) -> PlotResult:
    """Write every figure of a run into ``out_dir`` (default ``RUN_DIR/plots``)."""
    from dlcli import pipeline

    require_matplotlib()
    saved = pipeline.open_run(  # verifies the run and the data
        run_dir, data_dir=data_dir, device=device, accept_changed_data=accept_changed_data
    )
    history = read_history(run_dir / "history.csv")
    if not history:
        raise ModelDirError(f"{run_dir / 'history.csv'}: no epochs recorded, nothing to plot")
    steps = read_steps(run_dir / "steps.csv")  # absent in runs saved before it was recorded
    result = PlotResult(run_dir, out_dir if out_dir is not None else run_dir / "plots")
    blocker = in_the_way(result.out_dir)
    if blocker is not None:  # a path that cannot be a directory: a usage error, as train -o
        raise UsageError(f"{result.out_dir}: cannot write figures there: {blocker}")
    _make_folder(result.out_dir, "the output directory")
    monitor, mode, delta = monitored_metric({"training": _training_dict(saved.loaded.run.config)})
    summary = summarize_history(history, monitor=monitor, mode=mode, min_delta=delta)
    best = None
    if summary.get("best_epoch") is not None:
        best = Best(summary["monitor"], summary["best_epoch"], summary["best_value"])
    groups = curve_groups(history, steps)
    confusion = result.out_dir / f"confusion_matrix_{split}.png"
    _check_own_figures(
        [*(result.out_dir / f"{metric}.png" for metric, _ in groups), confusion],
        earlier_versions=out_dir is None,
    )
    for metric, series in groups:
        path = result.out_dir / f"{metric}.png"
        plot_curve(history, metric, series, path, run_name=run_dir.name, steps=steps, best=best)
        result.files.append(path)
    report = saved.predictions(split, batch_size).per_class()
    path = confusion
    plot_confusion(report, path, title=f"Confusion matrix: {run_dir.name}, {split} split")
    result.files.append(path)
    return result


def prepare_figure(path: Path, *, force: bool) -> None:
    """Before ``dlcli lr-find`` runs its test, where its figure goes: a path under a file, or
    at a directory, FIFO or device, is a usage error (exit 2), and so is an existing file
    without ``force``; a file dlcli did not write (no :data:`SOFTWARE` text) is never replaced,
    ``force`` or not (:class:`ForeignFile`: ``--plot CONFIG.yaml --force`` replaced the config).
    A missing folder is created: it failed after the whole test, "the directory vanished"."""
    blocker = in_the_way(path.parent)
    if blocker is not None:  # as plot --out, export --out and train -o: a usage error
        raise UsageError(f"{path}: cannot write the figure there: {blocker}")
    check_replaceable(path, UsageError, "figure")
    if os.path.lexists(path):
        if not force:
            raise UsageError(f"{path}: already exists; pass --force to replace it, or --plot PATH")
        if not _png_software(path).startswith(SOFTWARE):
            raise ForeignFile(f"{path}: a file", "--plot")
    _make_folder(path.parent, "the folder for the figure")


def _make_folder(folder: Path, what: str) -> None:
    """``folder`` and its parents, created if missing; an OS refusal is an OutputError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{folder}: cannot create {what}: {write_problem(err)}") from None


def _check_own_figures(paths: Sequence[Path], *, earlier_versions: bool) -> None:
    """Every file already at one of ``paths`` is a figure dlcli wrote (its PNG Software text is
    :data:`SOFTWARE`; with ``earlier_versions``, Matplotlib's too), else a
    :class:`ForeignFile` names them before anything is written: ``--out`` into a folder of the
    user's replaced their loss.png without a word."""
    accepted = (SOFTWARE, "Matplotlib") if earlier_versions else (SOFTWARE,)
    foreign = [
        p.name for p in paths if os.path.lexists(p) and not _png_software(p).startswith(accepted)
    ]
    if foreign:
        raise ForeignFile(f"{paths[0].parent}: {', '.join(foreign)}: files", "--out", many=True)


def _png_software(path: Path) -> str:
    """The PNG "Software" text of ``path`` (read up to the image data), or ``""``."""
    try:
        with open_regular(path, OutputError, "figure") as f:
            head = f.read(1 << 16)
    except OutputError:
        return ""
    if not head.startswith(_PNG_SIGNATURE):
        return ""
    at = len(_PNG_SIGNATURE)
    while at + 8 <= len(head):
        length = int.from_bytes(head[at : at + 4], "big")
        kind, data = head[at + 4 : at + 8], head[at + 8 : at + 8 + length]
        if kind == b"IDAT":
            break
        key, _, value = data.partition(b"\0")
        if kind == b"tEXt" and key == b"Software":
            return value.decode("latin-1")
        at += 12 + length
    return ""


def _training_dict(config: Any) -> dict[str, Any]:
    from dlcli.config import to_dict

    return dict(to_dict(config.training))


def curve_groups(
    history: Sequence[Mapping[str, float]], steps: Sequence[Mapping[str, float]] = ()
) -> list[tuple[str, list[str]]]:
    """``[("loss", ["loss", "val_loss"]), ("accuracy", [...]), ...]``: one figure each.

    A metric and its ``val_`` twin share a figure; the learning rate gets one only when it
    changed during the run (per step or per epoch).
    """
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys and k not in NOT_CURVES]
    groups: list[tuple[str, list[str]]] = []
    for key in keys:
        split, metric = metric_names.untag(key)
        if key == "lr":
            rates = {row.get("lr") for row in history} | {row.get("lr") for row in steps}
            if len(rates - {None}) > 1:
                groups.append(("lr", ["lr"]))
        elif split == "validation":
            if metric not in keys:  # else drawn with its training twin
                groups.append((metric, [key]))
        else:
            twin = metric_names.tag(key, "validation")
            groups.append((key, [key, twin] if twin in keys else [key]))
    return groups


def plot_curve(
    history: Sequence[Mapping[str, float]],
    metric: str,
    series: Sequence[str],
    path: Path,
    *,
    run_name: str,
    steps: Sequence[Mapping[str, float]] = (),
    best: Best | None = None,
) -> Path:
    """Write :func:`curve_figure` as a PNG."""
    figure = curve_figure(history, metric, series, run_name=run_name, steps=steps, best=best)
    return _save(figure, path)


def curve_figure(
    history: Sequence[Mapping[str, float]],
    metric: str,
    series: Sequence[str],
    *,
    run_name: str,
    steps: Sequence[Mapping[str, float]] = (),
    best: Best | None = None,
) -> Any:
    """One metric against epochs: per step where recorded (the training loss, the learning
    rate), per epoch otherwise (epoch means for training, end-of-epoch values for
    validation); the monitored metric's best epoch marked on its own figure."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig, ax = _figure(CURVE_SIZE)
    ax.spines[["top", "right"]].set_visible(False)
    title = "learning rate" if metric == "lr" else metric.replace("_", " ")
    per_step = [s for s in series if steps and s in STEP_SERIES]
    for key in per_step:
        x, y = [r["epoch"] for r in steps], [r[STEP_SERIES[key]] for r in steps]
        label = "learning rate (per step)" if key == "lr" else "train (per step)"
        faint = key != "lr"  # a noisy loss: the epoch means are drawn over it
        style = {"alpha": 0.45, "linewidth": 0.8} if faint else {"linewidth": 1.8}
        ax.plot(x, y, color=_colour(key), label=label, **style)
    for key in series:
        if key == "lr" and per_step:
            continue
        points = [(row["epoch"], row[key]) for row in history if key in row and "epoch" in row]
        if not points:
            continue
        ax.plot(
            *zip(*points, strict=True),
            color=_colour(key),
            marker="o",
            markersize=4,
            linewidth=1.8,
            label=_series_label(key, bool(per_step)),
            clip_on=False,  # the last epoch's marker sits on the axis' edge
        )
    if best is not None and best.metric in series:
        ax.plot(
            [best.epoch],
            [best.value],
            linestyle="none",
            marker="*",
            markersize=14,
            color="#d62728",
            zorder=5,
            clip_on=False,
            label=f"best: epoch {best.epoch} ({best.metric} {best.value:.4f})",
        )
    epochs = max(int(row.get("epoch", 0)) for row in history)
    ax.set_xlim(0, max(epochs, 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=2))
    ax.set_title(f"{title.capitalize()}: {run_name}", loc="left")
    ax.set_xlabel("epoch")
    ax.set_ylabel(title)
    if metric == "lr":  # 0.0025, 1e-05: each tick says its value, no shared exponent
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


STEP_SERIES = {"loss": "loss", "lr": "lr"}  # a history column and its steps.csv twin
_COLOURS = {"loss": "#1f77b4", "validation": "#ff7f0e", "lr": "#2ca02c"}


def _colour(key: str) -> str:
    if metric_names.untag(key)[0] == "validation":
        return _COLOURS["validation"]
    return _COLOURS["lr"] if key == "lr" else _COLOURS["loss"]


def _series_label(key: str, with_steps: bool) -> str:
    if metric_names.untag(key)[0] == "validation":
        return "validation"
    if key == "lr":
        return "learning rate (end of epoch)"
    return "train (epoch mean)" if with_steps else "train"


def plot_confusion(report: PerClass, path: Path, *, title: str) -> Path:
    """A heatmap of the confusion matrix, true class down, predicted class across."""
    cm = report.confusion
    n = len(report.class_names)
    fig, ax = _figure(CONFUSION_SIZE)
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, label="samples", shrink=0.8)
    long_names = max((len(name) for name in report.class_names), default=0) > 3
    ax.set_xticks(
        range(n),
        labels=list(report.class_names),
        rotation=45 if long_names else 0,
        ha="right" if long_names else "center",
    )
    ax.set_yticks(range(n), labels=list(report.class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(cm.sum())
    ax.set_title(f"{title}\n{total} samples, accuracy {report.accuracy:.2%}")
    if n <= ANNOTATE_MAX_CLASSES:
        threshold = cm.max() / 2 if total else 1
        size = max(6, 12 - n // 4)
        for (i, j), count in _cells(cm):
            colour = "white" if count > threshold else ("black" if count else "#b0b0b0")
            ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=size)
    return _save(fig, path)


def _cells(cm: Any) -> list[tuple[tuple[int, int], int]]:
    return [((i, j), int(cm[i, j])) for i in range(cm.shape[0]) for j in range(cm.shape[1])]


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Any, path: Path) -> Path:
    """Render into a temporary sibling, then rename: a failed or interrupted (Ctrl-C) write
    leaves no partial PNG, nor the temporary file. The sibling's name is this write's own: two
    commands writing one figure at once renamed one shared temporary file, and the second
    failed ("the directory vanished while writing"). One a plot killed (SIGKILL) left is
    removed by a later plot once an hour old (:func:`dlcli.atomic.temp_sibling`)."""
    tmp = temp_sibling(path)
    try:
        check_replaceable(path, OutputError, "figure")
        fig.savefig(tmp, dpi=DPI, format="png", metadata={"Software": SOFTWARE})
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(f"{path}: cannot write the figure: {write_problem(err)}") from None
        raise
    return path


def plot_lr_find(result: Any, path: Path) -> Path:
    """``dlcli lr-find``'s figure: loss against learning rate (log axis), raw and smoothed,
    the suggested rate marked (``result``: :class:`dlcli.lr_find.LRFindResult`)."""
    fig, ax = _figure(CURVE_SIZE)
    ax.plot(result.learning_rates, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.learning_rates, result.smoothed, color="C0", linewidth=2, label="smoothed")
    ax.axvline(result.suggested_lr, color="C3", linestyle="--", label="suggested")
    ax.annotate(
        f"suggested {result.suggested_lr:.2g}",
        (result.suggested_lr, 0.95),
        xycoords=("data", "axes fraction"),
        color="C3",
        ha="left",
        xytext=(4, 0),
        textcoords="offset points",
    )
    ax.set_xscale("log")
    finite = [s for s in result.smoothed if math.isfinite(s)]
    raw = [s for s in result.losses if math.isfinite(s)]
    if finite:  # the diverging tail would squash the curve
        low = min(finite + raw)
        ax.set_ylim(low * 0.95, min(max(finite), 4 * min(finite)) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("Learning-rate range test")
    ax.legend(loc="lower left")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)
