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

from dlcli.errors import ModelDirError, OutputError, UsageError, write_problem
from dlcli.metrics import PerClass
from dlcli.runs import monitored_metric, read_history, summarize_history

DPI = 100
CURVE_SIZE = (8.0, 5.0)  # inches: 800 × 500 pixels
CONFUSION_SIZE = (9.0, 8.0)  # 900 × 800 pixels
ANNOTATE_MAX_CLASSES = 30  # beyond this, cell counts would be unreadable
NOT_CURVES = ("epoch", "seconds")

INSTALL_HINT = "pip install 'dlcli[plot]'  (or: pip install matplotlib)"


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
    result = PlotResult(run_dir, out_dir if out_dir is not None else run_dir / "plots")
    try:
        result.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"{result.out_dir}: cannot create the output directory: {write_problem(err)}"
        ) from None
    monitor, mode = monitored_metric({"training": _training_dict(saved.loaded.run.config)})
    best = summarize_history(history, monitor=monitor, mode=mode).get("best_epoch")
    for metric, series in curve_groups(history):
        path = result.out_dir / f"{metric}.png"
        plot_curve(history, metric, series, path, run_name=run_dir.name, best_epoch=best)
        result.files.append(path)
    report = saved.predictions(split, batch_size).per_class()
    path = result.out_dir / f"confusion_matrix_{split}.png"
    plot_confusion(report, path, title=f"Confusion matrix: {run_dir.name}, {split} split")
    result.files.append(path)
    return result


def _training_dict(config: Any) -> dict[str, Any]:
    from dlcli.config import to_dict

    return dict(to_dict(config.training))


def curve_groups(history: Sequence[Mapping[str, float]]) -> list[tuple[str, list[str]]]:
    """``[("loss", ["loss", "val_loss"]), ("accuracy", [...]), ...]``: one figure each.

    A metric and its ``val_`` twin share a figure; the learning rate gets one only when a
    schedule changed it.
    """
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys and k not in NOT_CURVES]
    groups: list[tuple[str, list[str]]] = []
    for key in keys:
        if key == "lr":
            if len({row.get("lr") for row in history}) > 1:
                groups.append(("lr", ["lr"]))
        elif key.startswith("val_") and key[4:] in keys:
            continue  # drawn with its training twin
        else:
            twin = f"val_{key}"
            groups.append((key.removeprefix("val_"), [key, twin] if twin in keys else [key]))
    return groups


def plot_curve(
    history: Sequence[Mapping[str, float]],
    metric: str,
    series: Sequence[str],
    path: Path,
    *,
    run_name: str,
    best_epoch: int | None = None,
) -> Path:
    """One metric per epoch, training vs validation, the best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(CURVE_SIZE)
    for key in series:
        points = [(row["epoch"], row[key]) for row in history if key in row and "epoch" in row]
        label = "validation" if key.startswith("val_") else ("train" if key != "lr" else "lr")
        ax.plot(*zip(*points, strict=True), marker="o", markersize=4, linewidth=1.8, label=label)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
    title = "learning rate" if metric == "lr" else metric.replace("_", " ")
    ax.set_title(f"{title} per epoch: {run_name}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_confusion(report: PerClass, path: Path, *, title: str) -> Path:
    """A heatmap of the confusion matrix, true class down, predicted class across."""
    cm = report.confusion
    n = len(report.class_names)
    fig, ax = _figure(CONFUSION_SIZE)
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, label="samples", shrink=0.8)
    ax.set_xticks(range(n), labels=list(report.class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(report.class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(cm.sum())
    ax.set_title(f"{title}\n{total} samples, accuracy {report.accuracy:.2%}")
    if n <= ANNOTATE_MAX_CLASSES:
        threshold = cm.max() / 2 if total else 1
        size = max(6, 12 - n // 4)
        for (i, j), count in _cells(cm):
            colour = "white" if count > threshold else "black"
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
    """Render into a temporary sibling, then rename: a failed write leaves no partial PNG."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write the figure: {write_problem(err)}") from None
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
