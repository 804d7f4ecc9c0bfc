"""Quality gates: ``--min METRIC=VALUE`` / ``--max METRIC=VALUE`` on ``train`` and ``evaluate``.

A gate names a metric, optionally qualified by its split, in the one vocabulary of
:mod:`dlcli.metric_names` (``accuracy``, ``test.accuracy``, ``val_accuracy``,
``validation.loss``). An unqualified name applies to the *default split*: ``validation`` for
``train``, and for ``evaluate`` the validation split, or the only split evaluated when there is
just one. The bounds are inclusive: ``--min accuracy=0.88`` passes at exactly 0.88.

Three steps, so that a typo fails before an hour of training rather than after it:

1. :func:`parse_gates` turns the option values into :class:`Gate` objects (bad syntax → usage
   error, exit 2);
2. :func:`resolve_gates` checks each against the splits and metrics that will be reported
   (unknown name → usage error with a did-you-mean, exit 2);
3. :func:`check_gates` compares them with the final metrics and raises :class:`GateError`
   (exit 4) naming every violated bound.

No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dlcli import metric_names
from dlcli.errors import GateError, UsageError, did_you_mean
from dlcli.metric_names import SPLITS

Kind = Literal["min", "max"]


@dataclass(frozen=True)
class Gate:
    """One bound: ``kind`` (min or max) of ``metric`` on ``split`` (None: the default split)."""

    kind: Kind
    metric: str
    bound: float
    split: str | None = None

    @property
    def option(self) -> str:
        """The gate as it was written: ``--min test.accuracy=0.85``."""
        name = f"{self.split}.{self.metric}" if self.split else self.metric
        return f"--{self.kind} {name}={self.bound:g}"


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    split: str
    value: float

    @property
    def passed(self) -> bool:
        if math.isnan(self.value):
            return False
        if self.gate.kind == "min":
            return self.value >= self.gate.bound
        return self.value <= self.gate.bound

    def describe(self) -> str:
        """``validation accuracy 0.8712 < min 0.88`` (or ``>=`` when it passed)."""
        if self.gate.kind == "min":
            relation = ">=" if self.passed else "<"
        else:
            relation = "<=" if self.passed else ">"
        return (
            f"{self.split} {self.gate.metric} {self.value:.4f} {relation} "
            f"{self.gate.kind} {self.gate.bound:g}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "metric": self.gate.metric,
            "kind": self.gate.kind,
            "bound": self.gate.bound,
            "value": self.value,
            "passed": self.passed,
        }


def parse_gates(mins: Sequence[str] = (), maxs: Sequence[str] = ()) -> list[Gate]:
    """``--min``/``--max`` values (``[SPLIT.]METRIC=VALUE``) → gates; bad syntax → UsageError."""
    return [parse_gate("min", text) for text in mins] + [parse_gate("max", text) for text in maxs]


def parse_gate(kind: Kind, text: str) -> Gate:
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise UsageError(
            f"--{kind} {text!r}: expected METRIC=VALUE or SPLIT.METRIC=VALUE, "
            "e.g. accuracy=0.88 or test.loss=0.4"
        )
    try:
        bound = float(value)
    except ValueError:
        raise UsageError(
            f"--{kind} {text!r}: expected a number after '=', found {value!r}"
        ) from None
    if math.isnan(bound):
        raise UsageError(f"--{kind} {text!r}: the bound is not a number (nan)")
    metric, split = _name(name)
    return Gate(kind, metric, bound, split)


def _name(text: str) -> tuple[str, str | None]:
    """(metric, split) in the one vocabulary (dlcli.metric_names): ``val_accuracy`` and
    ``validation.accuracy`` are both ("accuracy", "validation"); a name that does not parse is
    kept as written, for :func:`resolve_gates` to report with a did-you-mean."""
    if metric_names.problem(text) is None:
        parsed = metric_names.parse(text)
        return parsed.metric, parsed.split
    split, dot, metric = text.rpartition(".")
    if not dot:
        return metric, None
    return metric, metric_names.split_of(split) or split


def resolve_gates(
    gates: Sequence[Gate], available: Mapping[str, Collection[str]], default_split: str | None
) -> list[tuple[Gate, str]]:
    """Pair every gate with the split it applies to, checking names against ``available``
    (split → metric names that will be reported). All problems are reported together."""
    problems: list[str] = []
    resolved: list[tuple[Gate, str]] = []
    for gate in gates:
        split = gate.split or default_split
        problem = _problem(gate, split, available)
        if problem:
            problems.append(problem)
        elif split is not None:
            resolved.append((gate, split))
    if problems:
        noun = "gate" if len(problems) == 1 else "gates"
        raise UsageError(f"{len(problems)} invalid {noun}", details=problems)
    return resolved


def default_split(splits: Sequence[str]) -> str | None:
    """The split an unqualified gate applies to: validation, else the only split, else none."""
    if "validation" in splits:
        return "validation"
    return splits[0] if len(splits) == 1 else None


def _problem(gate: Gate, split: str | None, available: Mapping[str, Collection[str]]) -> str:
    splits = list(available)
    if split is None:
        return (
            f"{gate.option}: name the split, e.g. {splits[0]}.{gate.metric} "
            f"(the evaluated splits are {', '.join(splits)})"
        )
    if split in SPLITS and split not in available:
        return (
            f"{gate.option}: the {split} split was not evaluated (add --split {split}); "
            f"evaluated: {', '.join(splits)}"
        )
    if split not in available:
        return (
            f"{gate.option}: unknown split {split!r}{did_you_mean(split, list(SPLITS))}; "
            f"known splits: {', '.join(SPLITS)}"
        )
    metrics = sorted(available[split])
    if gate.metric not in metrics:
        every = [*metrics, *(f"{s}.{m}" for s in available for m in available[s])]
        hint = did_you_mean(gate.metric, metrics) or did_you_mean(gate.metric, every)
        return (
            f"{gate.option}: unknown metric {gate.metric!r}{hint}; "
            f"{split} reports: {', '.join(metrics)}"
        )
    return ""


def check_gates(
    resolved: Sequence[tuple[Gate, str]],
    metrics: Mapping[str, Mapping[str, float]],
    document: dict[str, Any] | None = None,
) -> list[GateResult]:
    """Compare the gates with the final ``metrics`` (split → name → value).

    Adds the results to ``document`` as ``gates`` and returns them when all pass; otherwise
    raises :class:`GateError` naming each violated bound, carrying ``document`` for ``--json``.
    """
    results = [
        GateResult(gate, split, float(metrics[split][gate.metric])) for gate, split in resolved
    ]
    if document is not None:
        document["gates"] = [r.to_dict() for r in results]
    failed = [r for r in results if not r.passed]
    if failed:
        if len(failed) == 1:
            message = f"quality gate failed: {failed[0].describe()}"
            raise GateError(message, document=document)
        raise GateError(
            f"{len(failed)} quality gates failed",
            details=[r.describe() for r in failed],
            document=document,
        )
    return results


def gate_metrics(logs: Mapping[str, Any]) -> dict[str, float]:
    """The gateable metrics of one split's logs: every number except timings and counts."""
    skip = {"seconds", "samples", "epoch", "lr", "samples_per_second"}
    return {
        k: float(v)
        for k, v in logs.items()
        if k not in skip and isinstance(v, int | float) and not isinstance(v, bool)
    }


def for_training(
    mins: Sequence[str], maxs: Sequence[str], training_metrics: Sequence[str]
) -> list[Gate]:
    """``train``'s gates, their names checked against what training will report, before it
    starts (an unqualified name: the validation split)."""
    gates = parse_gates(mins, maxs)
    names = metric_names.reported(training_metrics)
    resolve_gates(gates, {s: names for s in SPLITS}, "validation")
    return gates


def refuse_split(gates: Sequence[Gate], split: str, why: str) -> None:
    """A usage error naming each gate on ``split``, which the run will not have (``why``):
    raised once the data is known, before anything is trained."""
    problems = [f"{gate.option}: {why}" for gate in gates if gate.split == split]
    if problems:
        noun = "gate" if len(problems) == 1 else "gates"
        raise UsageError(f"{len(problems)} invalid {noun}", details=problems)


def apply(
    gates: Sequence[Gate],
    metrics: Mapping[str, Mapping[str, Any]],
    document: dict[str, Any] | None = None,
) -> list[GateResult]:
    """Check ``gates`` against final metrics (split → logs): :func:`check_gates` after
    resolving them against the splits present (``document`` gets ``gates``)."""
    available = {split: gate_metrics(logs) for split, logs in metrics.items()}
    resolved = resolve_gates(gates, available, default_split(list(available)))
    return check_gates(resolved, available, document)
