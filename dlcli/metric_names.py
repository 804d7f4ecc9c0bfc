"""One metric vocabulary for gates, monitors, targets, ``runs`` and reports.

A metric name is a *base metric* (``loss``, ``accuracy``, ``top_k_accuracy``) on a *split*
(``train``, ``validation``, ``test``). Every spelling a user meets anywhere is accepted:

    val_accuracy  validation.accuracy  val.accuracy     the validation split
    test_loss     test.loss                             the test split
    accuracy      train.accuracy  train_accuracy        the training split in a monitor (as in
                                                        history.csv), the default split in a gate

:func:`parse` turns any of them into a :class:`MetricName`, which knows its direction
(``mode``: max for accuracies, min for losses), its column in ``history.csv``
(``history_key``: ``val_accuracy``), and how to say it (``display``: ``validation accuracy``).
An unknown metric or split is one error with a did-you-mean. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from dlcli.errors import UsageError, did_you_mean

Mode = Literal["min", "max"]
SPLITS = ("train", "validation", "test")
# The base metrics dlcli reports, and which way is better.
METRICS: dict[str, Mode] = {"loss": "min", "accuracy": "max", "top_k_accuracy": "max"}
# How a split is written: "val_accuracy" (history.csv), "validation.accuracy" (gates).
_SPLIT_SPELLINGS = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
}
_PREFIX = {"train": "", "validation": "val_", "test": "test_"}
T = TypeVar("T")


@dataclass(frozen=True)
class MetricName:
    """A base metric on a split (``split`` None: unqualified, the caller's default split)."""

    metric: str
    split: str | None = None

    @property
    def mode(self) -> Mode:
        """``max`` for accuracies, ``min`` for losses."""
        return METRICS[self.metric]

    def on(self, split: str) -> MetricName:
        """This metric on ``split`` unless a split was named."""
        return self if self.split is not None else MetricName(self.metric, split)

    @property
    def history_key(self) -> str:
        """The column of history.csv / the epoch logs: ``val_accuracy``, ``loss``, ``test_loss``
        (unqualified: the training split, as history.csv names it)."""
        return tag(self.metric, self.split or "train")

    @property
    def display(self) -> str:
        """``validation accuracy`` (unqualified: the metric alone)."""
        name = self.metric.replace("top_k_accuracy", "top-k accuracy")
        return f"{self.split} {name}" if self.split else name


def tag(metric: str, split: str) -> str:
    """The one place a split's metric key is spelt: the epoch-log key, history.csv column and
    TensorBoard tag of ``metric`` on ``split`` (``val_accuracy``, ``test_loss``; the training
    split's is the metric alone: ``loss``)."""
    return _PREFIX[split] + metric


def tagged(values: Mapping[str, T], split: str) -> dict[str, T]:
    """``{"loss": 0.3}`` on ``validation`` → ``{"val_loss": 0.3}`` (:func:`tag` on each key)."""
    return {tag(metric, split): value for metric, value in values.items()}


def untag(key: str) -> tuple[str, str]:
    """A key :func:`tag` made → (split, metric): ``val_accuracy`` → (``validation``,
    ``accuracy``); a key without a split prefix is the training split's."""
    for split in ("validation", "test"):
        if key.startswith(_PREFIX[split]):
            return split, key[len(_PREFIX[split]) :]
    return "train", key


def split_of(text: str) -> str | None:
    """``val`` / ``validation`` → ``validation``, ...; None for an unknown split."""
    return _SPLIT_SPELLINGS.get(text)


def mode_of(name: str, mode: str = "auto") -> Mode:
    """The direction of ``name`` (``auto``: from the registry; an unknown name is a loss)."""
    if mode in ("min", "max"):
        return mode  # type: ignore[return-value]
    try:
        return parse(name).mode
    except UsageError:
        return "max" if "accuracy" in name else "min"


def improved(value: float | None, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Is ``value`` better than ``best`` by more than ``min_delta``? (NaN never is.) The one
    rule of "better" for early stopping, ``checkpoints/best`` and the best epoch reported."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def best_row(
    rows: Sequence[Mapping[str, float]], key: str, mode: str, min_delta: float = 0.0
) -> Mapping[str, float] | None:
    """The epoch (a history row) that is best by ``key``: the last one that :func:`improved`
    on the best before it by more than ``min_delta``, as early stopping walks the epochs (with
    ``min_delta`` 0, the first minimum or maximum); None when no row has a finite value."""
    best: Mapping[str, float] | None = None
    for row in rows:
        value = row.get(key)
        if improved(value, best[key] if best is not None else None, mode, min_delta):
            best = row
    return best


def parse(name: str, *, known: Sequence[str] = tuple(METRICS), what: str = "metric") -> MetricName:
    """Any accepted spelling → :class:`MetricName`; ``known`` limits the base metrics (the ones a
    run reports). An unknown split or metric raises :class:`UsageError` with a did-you-mean."""
    found = _problem(name.strip(), known)
    if isinstance(found, str):
        raise UsageError(f"{what} {found}")
    return found


def problem(
    name: str, known: Sequence[str] = tuple(METRICS), splits: Sequence[str] = SPLITS
) -> str | None:
    """Why ``name`` is not a metric (None when it is) — for callers that collect problems.
    ``splits``: the splits the caller accepts; the metrics it suggests and lists are theirs."""
    found = _problem(name.strip(), known, splits)
    return found if isinstance(found, str) else None


def _problem(name: str, known: Sequence[str], splits: Sequence[str] = SPLITS) -> MetricName | str:
    split_text, dot, metric = name.rpartition(".")
    split: str | None = None
    if dot:
        split = _SPLIT_SPELLINGS.get(split_text)
        if split is None:
            choices = [*splits, "val"]
            return (
                f"{name!r}: unknown split {split_text!r}{did_you_mean(split_text, choices)}; "
                f"known splits: {', '.join(splits)} (or val)"
            )
    elif metric not in METRICS:
        for prefix, spelt in (("val_", "validation"), ("test_", "test"), ("train_", "train")):
            if metric.startswith(prefix) and metric[len(prefix) :] in METRICS:
                split, metric = spelt, metric[len(prefix) :]
                break
    if metric not in known:
        every = [*known, *(_PREFIX[s] + m for s in splits for m in known if _PREFIX[s])]
        hint = did_you_mean(metric, list(known)) if dot else did_you_mean(name, every)
        extra = " (add it to training.metrics)" if metric in METRICS else ""
        return (
            f"{name!r} is not a reported metric{hint}{extra}; known: {', '.join(every)} "
            f"(or SPLIT.METRIC: validation.accuracy, {splits[-1]}.loss, ...)"
        )
    return MetricName(metric, split)


def reported(training_metrics: Sequence[str]) -> list[str]:
    """The base metrics a run reports: loss and the configured ones."""
    return ["loss", *dict.fromkeys(m for m in training_metrics if m != "loss")]
