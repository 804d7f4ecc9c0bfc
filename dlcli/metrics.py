"""Per-class classification metrics from a confusion matrix (numpy, vectorised, torch-free).

The confusion matrix has one row per true class and one column per predicted class:
``cm[i, j]`` counts the samples of class ``i`` predicted as ``j``. Precision, recall and F1
follow scikit-learn's definitions, with 0 where a denominator is 0 (a class never predicted,
or absent from the split).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dlcli.errors import DataError

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def confusion_matrix(labels: npt.ArrayLike, predicted: npt.ArrayLike, num_classes: int) -> IntArray:
    """Counts of (true, predicted) pairs as a ``num_classes`` × ``num_classes`` matrix."""
    y = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(predicted, dtype=np.int64).ravel()
    if y.shape != p.shape:
        raise DataError(f"{y.size} labels but {p.size} predictions")
    for name, values in (("label", y), ("prediction", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise DataError(
                f"a {name} outside 0..{num_classes - 1} (found {values.min()}..{values.max()})"
            )
    counts = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


@dataclass(frozen=True)
class PerClass:
    """Precision, recall, F1 and support per class, from one confusion matrix."""

    class_names: tuple[str, ...]
    confusion: IntArray
    precision: FloatArray
    recall: FloatArray
    f1: FloatArray
    support: IntArray

    @property
    def accuracy(self) -> float:
        total = int(self.confusion.sum())
        return float(np.trace(self.confusion)) / total if total else 0.0

    def macro(self) -> dict[str, float]:
        """The unweighted mean over classes."""
        return {
            "precision": float(self.precision.mean()),
            "recall": float(self.recall.mean()),
            "f1": float(self.f1.mean()),
        }

    def weighted(self) -> dict[str, float]:
        """The mean over classes weighted by support."""
        total = self.support.sum()
        weights = self.support / total if total else np.zeros(len(self.support))
        return {
            "precision": float(self.precision @ weights),
            "recall": float(self.recall @ weights),
            "f1": float(self.f1 @ weights),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a JSON document."""
        classes = [
            {
                "index": i,
                "name": name,
                "precision": float(self.precision[i]),
                "recall": float(self.recall[i]),
                "f1": float(self.f1[i]),
                "support": int(self.support[i]),
            }
            for i, name in enumerate(self.class_names)
        ]
        return {
            "classes": classes,
            "accuracy": self.accuracy,
            "macro_avg": self.macro(),
            "weighted_avg": self.weighted(),
            "confusion_matrix": self.confusion.tolist(),
        }


def per_class(confusion: npt.ArrayLike, class_names: Sequence[str] | None = None) -> PerClass:
    """Per-class metrics of a confusion matrix (rows: true class, columns: predicted)."""
    cm = np.asarray(confusion, dtype=np.int64)
    n = cm.shape[0]
    names = tuple(class_names) if class_names is not None else tuple(map(str, range(n)))
    if cm.shape != (n, n) or len(names) != n:
        raise DataError(f"a {cm.shape} confusion matrix for {len(names)} class names")
    true_positive = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)  # column sums: TP + FP
    support = cm.sum(axis=1)  # row sums: TP + FN
    precision = _ratio(true_positive, predicted)
    recall = _ratio(true_positive, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return PerClass(names, cm, precision, recall, f1, support)
