"""Per-class precision / recall / F1 / support, checked against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from dlcli.errors import DataError
from dlcli.metrics import confusion_matrix, per_class

# 10 samples, 3 classes (cat, dog, bird):
#   true:      0 0 0 0 1 1 1 2 2 2
#   predicted: 0 0 1 2 1 1 0 2 2 1
LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PREDICTED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
NAMES = ("cat", "dog", "bird")


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(LABELS, PREDICTED, 3)
    # rows: true class, columns: predicted class
    assert cm.tolist() == [
        [2, 1, 1],  # cat: 2 right, 1 taken for a dog, 1 for a bird
        [1, 2, 0],  # dog
        [0, 1, 2],  # bird
    ]
    assert cm.dtype == np.int64


def test_per_class_by_hand() -> None:
    report = per_class(confusion_matrix(LABELS, PREDICTED, 3), NAMES)
    # cat:  TP 2, predicted cat 3 (2 + dog's 1), support 4
    #       precision 2/3, recall 2/4, F1 = 2 * (2/3 * 1/2) / (2/3 + 1/2) = 4/7
    # dog:  TP 2, predicted dog 4 (1 + 2 + 1), support 3
    #       precision 2/4, recall 2/3, F1 = 4/7
    # bird: TP 2, predicted bird 3 (1 + 0 + 2), support 3
    #       precision 2/3, recall 2/3, F1 = 2/3
    assert report.precision.tolist() == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert report.recall.tolist() == pytest.approx([1 / 2, 2 / 3, 2 / 3])
    assert report.f1.tolist() == pytest.approx([4 / 7, 4 / 7, 2 / 3])
    assert report.support.tolist() == [4, 3, 3]
    assert report.accuracy == pytest.approx(6 / 10)
    assert report.macro() == pytest.approx(
        {
            "precision": (2 / 3 + 1 / 2 + 2 / 3) / 3,
            "recall": (1 / 2 + 2 / 3 + 2 / 3) / 3,
            "f1": (4 / 7 + 4 / 7 + 2 / 3) / 3,
        }
    )
    assert report.weighted() == pytest.approx(
        {
            "precision": (4 * 2 / 3 + 3 * 1 / 2 + 3 * 2 / 3) / 10,
            "recall": (4 * 1 / 2 + 3 * 2 / 3 + 3 * 2 / 3) / 10,  # = accuracy
            "f1": (4 * 4 / 7 + 3 * 4 / 7 + 3 * 2 / 3) / 10,
        }
    )


def test_to_dict_is_plain_json_data() -> None:
    import json

    data = per_class(confusion_matrix(LABELS, PREDICTED, 3), NAMES).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["classes"][1] == {
        "index": 1,
        "name": "dog",
        "precision": pytest.approx(0.5),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(4 / 7),
        "support": 3,
    }
    assert data["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]


def test_a_class_never_predicted_or_absent_scores_zero_not_nan() -> None:
    # class 2 is absent from the labels and never predicted; class 1 is never predicted
    report = per_class(confusion_matrix([0, 0, 1], [0, 0, 0], 3))
    assert report.precision.tolist() == pytest.approx([2 / 3, 0.0, 0.0])
    assert report.recall.tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert report.f1.tolist() == pytest.approx([0.8, 0.0, 0.0])
    assert report.support.tolist() == [2, 1, 0]
    assert report.class_names == ("0", "1", "2")
    assert not np.isnan(report.f1).any()


def test_empty_split() -> None:
    report = per_class(confusion_matrix([], [], 2))
    assert report.confusion.tolist() == [[0, 0], [0, 0]]
    assert report.accuracy == 0.0
    assert report.weighted() == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_agrees_with_a_loop_on_random_data() -> None:
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    report = per_class(confusion_matrix(labels, predicted, 7))
    for k in range(7):
        tp = int(((labels == k) & (predicted == k)).sum())
        assert report.precision[k] == pytest.approx(tp / (predicted == k).sum())
        assert report.recall[k] == pytest.approx(tp / (labels == k).sum())
        assert report.support[k] == (labels == k).sum()


@pytest.mark.parametrize(
    ("labels", "predicted", "message"),
    [
        ([0, 1], [0], "2 labels but 1 predictions"),
        ([0, 3], [0, 1], "a label outside 0..2 (found 0..3)"),
        ([0, 1], [-1, 1], "a prediction outside 0..2 (found -1..1)"),
    ],
)
def test_bad_input_is_a_clear_error(labels: list[int], predicted: list[int], message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        confusion_matrix(labels, predicted, 3)


def test_names_must_match_the_matrix() -> None:
    with pytest.raises(DataError, match="a \\(2, 2\\) confusion matrix for 3 class names"):
        per_class([[1, 0], [0, 1]], ["a", "b", "c"])
