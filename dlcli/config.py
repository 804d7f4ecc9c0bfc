"""The config schema: typed dataclasses, each field with a default and a one-line doc.

``load_config(path, overrides)`` reads YAML, applies ``--set key.path=value`` overrides, checks
every key against the schema and reports *all* problems at once as one :class:`ConfigError`
(key path, what was expected, what was found, and a did-you-mean for names). The resolved
config (defaults filled in) is what a run saves next to its weights.
"""

from __future__ import annotations

import collections
import contextvars
import copy
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from dlcli import limits, metric_names
from dlcli.errors import ConfigError, did_you_mean, named
from dlcli.untrusted import echo, printable, read_bytes, shorten

Check = tuple[Callable[[Any], bool], str]
POSITIVE: Check = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Check = (lambda v: v >= 0, ">= 0")
FRACTION: Check = (lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")
PROBABILITY: Check = (lambda v: 0 <= v < 1, ">= 0 and < 1")
UNIT_INTERVAL: Check = (lambda v: 0 <= v <= 1, "between 0 and 1")
BYTE: Check = (lambda v: 0 <= v <= 255, "from 0 to 255")
# The largest learning rate a config may give (optimizer, one_cycle's max_lr, a schedule's
# min_lr): above it is a typo or a unit mistake (1e300 validated, then the loss became
# non-finite at the first step: exit 3 once the data had loaded, not a config error). lr-find's
# default range ends there too.
LEARNING_RATE_MAX = limits.LEARNING_RATE_MAX
LEARNING_RATE: Check = (
    lambda v: 0 < v <= LEARNING_RATE_MAX,
    f"> 0 and at most {LEARNING_RATE_MAX:g}",
)
LEARNING_RATE_FLOOR: Check = (
    lambda v: 0 <= v <= LEARNING_RATE_MAX,
    f"from 0 to {LEARNING_RATE_MAX:g}",
)
# An epsilon (the optimizer's, batch norm's) or a decay factor (the step schedule's gamma):
# above 1 is a typo (gamma 1e300 validated, then the learning rate and the loss became
# non-finite after step_size epochs: exit 3, not a config error).
UNIT_POSITIVE: Check = (lambda v: 0 < v <= 1, "> 0 and at most 1")
# The largest weight of a class in the training loss (training.class_weights): the weights are
# relative, so this leaves a ratio of a million to one, beyond any real imbalance; 1e300
# validated, then the loss overflowed float32 (exit 3 mid-training).
CLASS_WEIGHT_MAX = 1_000_000
CLASS_WEIGHT: Check = (
    lambda v: 0 <= v <= CLASS_WEIGHT_MAX,
    f">= 0 and at most {CLASS_WEIGHT_MAX}",
)
DIVISOR: Check = (lambda v: v >= 1, ">= 1")  # a learning rate divided by it (below 1: raised)
THREADS: Check = (
    lambda v: 1 <= v <= limits.THREADS_MAX,
    f"from 1 to {limits.THREADS_MAX}",
)
SEED: Check = (lambda v: 0 <= v <= limits.INT_MAX, f"from 0 to 2^63-1 ({limits.INT_MAX})")
CLASSES: Check = (
    lambda v: 1 <= v <= limits.CLASSES_MAX,
    f"from 1 to {limits.CLASSES_MAX} (limits.CLASSES_MAX)",
)
WORKERS: Check = (
    lambda v: 1 <= v <= limits.WORKERS_MAX,
    f"from 1 to {limits.WORKERS_MAX} (limits.WORKERS_MAX)",
)

ActivationName = Literal["relu", "sigmoid", "tanh", "softmax", "gelu", "linear"]
Padding = Literal["valid", "same"]


def doc(
    text: str,
    default: Any = dataclasses.MISSING,
    check: Check | None = None,
    *,
    path: bool = False,
    cwd_path: bool = False,
    saved: Check | None = None,
) -> Any:
    """A dataclass field with a one-line doc (shown by ``dlcli config show``) and a check.
    ``path``: a file or folder of data, resolved against the config file's directory;
    ``cwd_path``: a path left relative to where the command runs (the output directory).
    Either is refused empty: ``""`` would silently mean the current directory. ``saved``: the
    check a saved run's config is held to, where ``check`` was tightened after runs were
    trained under the looser one (see :func:`parse_config`)."""
    meta = {"doc": text, "check": check, "path": path, "cwd_path": cwd_path, "saved": saved}
    if dataclasses.is_dataclass(default):
        instance = default
        return field(default_factory=lambda: copy.deepcopy(instance), metadata=meta)
    if isinstance(default, list | dict):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


# --- data ----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DataConfig:
    dataset: str | None = doc(
        "registry name (dlcli download --list); or give train (or the four IDX files)", None
    )
    train: str | None = doc(
        "training data: a folder of class folders, a path,label CSV, an .npz or an IDX "
        "images archive",
        None,
        path=True,
    )
    test: str | None = doc(
        "test data, in any form train takes (none: no test split)", None, path=True
    )
    validation: str | None = doc(
        "validation data, in any form train takes (none: validation_split of train)",
        None,
        path=True,
    )
    train_images: str | None = doc(
        "IDX archive of training images (instead of dataset)", None, path=True
    )
    train_labels: str | None = doc("IDX archive of training labels", None, path=True)
    test_images: str | None = doc("IDX archive of test images", None, path=True)
    test_labels: str | None = doc("IDX archive of test labels", None, path=True)
    num_classes: int | None = doc("number of classes (required with explicit files)", None, CLASSES)
    class_names: list[str] | None = doc("class names, index order (explicit files)", None)
    data_dir: str | None = doc(
        "where registry datasets live (default $DLCLI_DATA_DIR or data/)", None, path=True
    )
    validation_split: float = doc("fraction of train held out for validation", 0.05, FRACTION)
    shuffle_split: bool = doc("shuffle before splitting; false = KotlinDL's tail split", True)
    stratify: bool = doc("keep class proportions equal in train and validation", False)
    resize: Literal["stretch", "pad", "crop"] = doc(
        "images to the input size: stretch (ignore aspect), pad (fit, fill), crop (fill, cut)",
        "stretch",
    )
    background: int = doc(
        "grey level (0-255) under transparent pixels and around padded images", 0, BYTE
    )
    skip_bad_files: bool = doc(
        "skip unreadable images (listed in metrics.json) instead of stopping", False
    )
    cache: bool = doc("cache decoded images (see cache_dir)", True)
    cache_dir: str | None = doc(
        "decoded-image cache (default $DLCLI_CACHE_DIR, else ~/.cache/dlcli)", None
    )
    workers: int | None = doc("processes decoding images (default: every core)", None, WORKERS)


# --- model ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Flatten:
    type: Literal["flatten"] = "flatten"


@dataclass(kw_only=True)
class Dense:
    type: Literal["dense"] = "dense"
    units: int = doc("output features", check=POSITIVE)
    activation: ActivationName = doc("activation applied after the layer", "linear")
    use_bias: bool = doc("add a learned bias", True)


@dataclass(kw_only=True)
class Conv2d:
    type: Literal["conv2d"] = "conv2d"
    filters: int = doc("output channels", check=POSITIVE)
    kernel_size: int | list[int] = doc("kernel size, n or [h, w]", 3)
    strides: int | list[int] = doc("stride, n or [h, w]", 1)
    padding: Padding = doc(
        "valid (no padding) or same (output size = input size / stride)", "valid"
    )
    activation: ActivationName = doc("activation applied after the layer", "linear")
    use_bias: bool = doc("add a learned bias", True)


@dataclass(kw_only=True)
class MaxPool2d:
    type: Literal["max_pool2d"] = "max_pool2d"
    pool_size: int | list[int] = doc("window size, n or [h, w]", 2)
    strides: int | list[int] | None = doc("stride (default: pool_size)", None)
    padding: Padding = doc("valid or same", "valid")


@dataclass(kw_only=True)
class AvgPool2d:
    type: Literal["avg_pool2d"] = "avg_pool2d"
    pool_size: int | list[int] = doc("window size, n or [h, w]", 2)
    strides: int | list[int] | None = doc("stride (default: pool_size)", None)
    padding: Padding = doc("valid or same", "valid")


@dataclass(kw_only=True)
class GlobalAvgPool2d:
    type: Literal["global_avg_pool2d"] = "global_avg_pool2d"


@dataclass(kw_only=True)
class Dropout:
    type: Literal["dropout"] = "dropout"
    rate: float = doc("fraction of inputs dropped while training", check=PROBABILITY)


@dataclass(kw_only=True)
class BatchNorm:
    type: Literal["batch_norm"] = "batch_norm"
    momentum: float = doc("running-stats momentum (PyTorch convention)", 0.1, FRACTION)
    epsilon: float = doc("added to the variance", 1e-5, UNIT_POSITIVE, saved=POSITIVE)


@dataclass(kw_only=True)
class Activation:
    type: Literal["activation"] = "activation"
    activation: ActivationName = doc("the activation function")


@dataclass(kw_only=True)
class Residual:
    type: Literal["residual"] = "residual"
    layers: list[LayerSpec] = doc(
        "the block's layers; their output is added to the block's input (projected by a 1x1 "
        "convolution or a dense layer when the shapes differ)"
    )
    activation: ActivationName = doc("activation applied after the addition", "linear")


LayerSpec = Union[  # noqa: UP007 - a runtime-inspected union
    Flatten,
    Dense,
    Conv2d,
    MaxPool2d,
    AvgPool2d,
    GlobalAvgPool2d,
    Dropout,
    BatchNorm,
    Activation,
    Residual,
]
LAYER_TYPES: dict[str, type[Any]] = {
    cls.__dataclass_fields__["type"].default: cls for cls in get_args(LayerSpec)
}


@dataclass(kw_only=True)
class ModelConfig:
    input_shape: list[int] | None = doc(
        "height, width, channels (as Keras/KotlinDL write it); null: inferred from the data",
        None,
    )
    layers: list[LayerSpec] = doc("the layers, in order; shapes are inferred")


# --- training ------------------------------------------------------------------------------


@dataclass(kw_only=True)
class OptimizerConfig:
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = doc("optimizer", "adam")
    learning_rate: float = doc("step size", 0.001, LEARNING_RATE, saved=POSITIVE)
    weight_decay: float = doc(
        "L2 penalty (decoupled for adamw)", 0.0, UNIT_INTERVAL, saved=NON_NEGATIVE
    )
    momentum: float = doc("momentum (sgd, rmsprop)", 0.0, PROBABILITY, saved=NON_NEGATIVE)
    nesterov: bool = doc("Nesterov momentum (sgd)", False)
    beta1: float = doc("Adam's first-moment decay", 0.9, PROBABILITY)
    beta2: float = doc("Adam's second-moment decay", 0.999, PROBABILITY)
    epsilon: float = doc("Adam's / RMSprop's epsilon", 1e-8, UNIT_POSITIVE, saved=POSITIVE)


Loss = Literal["softmax_cross_entropy_with_logits", "mse"]
Metric = Literal["accuracy", "top_k_accuracy"]
Mode = Literal["auto", "min", "max"]
MODE_DOC = "min or max is better; auto: max for accuracies, min for losses"


@dataclass(kw_only=True)
class CheckpointConfig:
    every: int = doc("save RUN_DIR/checkpoints/last every N epochs (0: never)", 1, NON_NEGATIVE)
    keep_best: bool = doc("also keep checkpoints/best, the best epoch by monitor", True)
    monitor: str = doc(
        "metric that picks the best checkpoint (val_loss, val_accuracy, ...)", "val_loss"
    )
    mode: Mode = doc(MODE_DOC, "auto")


@dataclass(kw_only=True)
class EarlyStoppingConfig:
    monitor: str = doc("metric watched (val_loss, val_accuracy, loss, ...)", "val_loss")
    patience: int = doc("epochs without improvement before stopping", 3, NON_NEGATIVE)
    min_delta: float = doc("smallest change that counts as an improvement", 0.0, NON_NEGATIVE)
    mode: Mode = doc(MODE_DOC, "auto")
    restore_best: bool = doc("on stopping, restore the weights of the best epoch", True)


@dataclass(kw_only=True)
class StepSchedule:
    name: Literal["step"] = "step"
    step_size: int = doc("epochs between decays", check=POSITIVE)
    gamma: float = doc(
        "factor (at most 1: a decay) applied every step_size epochs",
        0.1,
        UNIT_POSITIVE,
        saved=POSITIVE,
    )


@dataclass(kw_only=True)
class CosineSchedule:
    name: Literal["cosine"] = "cosine"
    warmup_epochs: float = doc(
        "linear warm-up from 0, in epochs (fractions allowed)", 0.0, NON_NEGATIVE
    )
    warmup_steps: int = doc("linear warm-up in steps (instead of warmup_epochs)", 0, NON_NEGATIVE)
    min_lr: float = doc(
        "learning rate reached at the last step", 0.0, LEARNING_RATE_FLOOR, saved=NON_NEGATIVE
    )


@dataclass(kw_only=True)
class ReduceOnPlateauSchedule:
    name: Literal["reduce_on_plateau"] = "reduce_on_plateau"
    monitor: str = doc("metric watched", "val_loss")
    mode: Mode = doc(MODE_DOC, "auto")
    factor: float = doc("the learning rate is multiplied by this on a plateau", 0.1, FRACTION)
    patience: int = doc("epochs without improvement before reducing", 5, NON_NEGATIVE)
    min_delta: float = doc("smallest change that counts as an improvement", 1e-4, NON_NEGATIVE)
    cooldown: int = doc("epochs to wait after a reduction", 0, NON_NEGATIVE)
    min_lr: float = doc(
        "lower bound of the learning rate", 0.0, LEARNING_RATE_FLOOR, saved=NON_NEGATIVE
    )


@dataclass(kw_only=True)
class OneCycleSchedule:
    name: Literal["one_cycle"] = "one_cycle"
    max_lr: float | None = doc(
        "peak learning rate (default: optimizer.learning_rate)",
        None,
        LEARNING_RATE,
        saved=POSITIVE,
    )
    pct_start: float = doc("fraction of the steps spent warming up", 0.3, FRACTION)
    div_factor: float = doc(
        "start learning rate = max_lr / div_factor", 25.0, DIVISOR, saved=POSITIVE
    )
    final_div_factor: float = doc(
        "last learning rate = start / final_div_factor", 1e4, DIVISOR, saved=POSITIVE
    )
    anneal: Literal["cos", "linear"] = doc("shape of both phases", "cos")
    cycle_momentum: bool = doc("cycle momentum / Adam's beta1 inversely (0.95 → 0.85)", False)


ScheduleSpec = Union[  # noqa: UP007 - a runtime-inspected union
    StepSchedule, CosineSchedule, ReduceOnPlateauSchedule, OneCycleSchedule
]
SCHEDULE_TYPES: dict[str, type[Any]] = {
    cls.__dataclass_fields__["name"].default: cls for cls in get_args(ScheduleSpec)
}


@dataclass(kw_only=True)
class TargetConfig:
    metric: str = doc("metric watched (val_accuracy, val_loss, ...)", "val_accuracy")
    value: float = doc("the value to reach")
    mode: Mode = doc(MODE_DOC, "auto")


@dataclass(kw_only=True)
class AugmentConfig:
    translate: int = doc(
        "random crop of the image zero-padded by N pixels, i.e. a shift of up to N (0: off)",
        0,
        NON_NEGATIVE,
    )
    flip: bool = doc("mirror a random half of the images left-right", False)
    erase: float = doc(
        "random erasing: chance per image of a rectangle of random pixels (0: off)",
        0.0,
        PROBABILITY,
    )
    mixup: float = doc(
        "mixup: Beta(a, a) blend with another image of the batch (0: off)", 0.0, NON_NEGATIVE
    )
    cutmix: float = doc(
        "cutmix: Beta(a, a) box pasted from another image (0: off)", 0.0, NON_NEGATIVE
    )
    mix_prob: float = doc(
        "chance that a batch is mixed when mixup or cutmix is on", 1.0, UNIT_INTERVAL
    )


@dataclass(kw_only=True)
class EmaConfig:
    decay: float = doc(
        "weight of the average at each step (0.999: a memory of ~1000 steps)", 0.999, FRACTION
    )
    warmup: int = doc(
        "steps over which the decay ramps up linearly from 0 (0: full decay at once)",
        0,
        NON_NEGATIVE,
    )


@dataclass(kw_only=True)
class TrainingConfig:
    optimizer: OptimizerConfig = doc("the optimizer", OptimizerConfig())
    loss: Loss = doc(
        "loss; cross-entropy takes integer labels", "softmax_cross_entropy_with_logits"
    )
    metrics: list[Metric] = doc("metrics reported per epoch (loss always is)", ["accuracy"])
    top_k: int = doc("k of top_k_accuracy", 5, POSITIVE)
    epochs: int = doc("passes over the training set", 10, POSITIVE)
    batch_size: int = doc("samples per step (the global batch)", 100, POSITIVE)
    seed: int = doc("seeds the split, the initial weights and the shuffling", 0, SEED)
    device: str = doc("auto | cpu | cuda | cuda:N | mps (auto: CUDA, else MPS, else CPU)", "auto")
    shuffle: bool = doc("reshuffle the training set every epoch", True)
    label_smoothing: float = doc("cross-entropy label smoothing (0: none)", 0.0, PROBABILITY)
    lr_schedule: ScheduleSpec | None = doc(
        "step, cosine, reduce_on_plateau or one_cycle (mapping with a name key)", None
    )
    early_stopping: EarlyStoppingConfig | None = doc("stop when a metric stops improving", None)
    checkpoint: CheckpointConfig = doc("checkpoints for --resume", CheckpointConfig())
    target: TargetConfig | None = doc(
        "record in metrics.json when a metric first reaches a value", None
    )
    stop_at_target: bool = doc("end training once target is reached", False)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = doc(
        "autocast precision: fp32 (off), bf16 (CUDA or CPU), fp16 (CUDA only, loss-scaled), "
        "auto (bf16 where the device computes it natively, else fp32)",
        "fp32",
    )
    compile: bool = doc("run the model through torch.compile (slow first steps)", False)
    channels_last: bool | None = doc(
        "NHWC memory layout (faster convolutions); null: on for models with a conv2d", None
    )
    augment: AugmentConfig | None = doc(
        "on-device batch augmentation while training (never in evaluation)", None
    )
    ema: EmaConfig | None = doc(
        "exponential moving average of the weights: evaluated, checkpointed, saved", None
    )
    class_weights: Literal["balanced"] | list[float] | None = doc(
        "weights of the classes in the training loss: balanced (by frequency) or a list",
        None,
        CLASS_WEIGHT,  # each weight of the list
    )
    tta: Literal["none", "flip"] = doc(
        "test-time augmentation of the run's evaluations: flip averages x and mirrored x", "none"
    )
    threads: Literal["auto"] | int = doc(
        "CPU threads: auto (the free cores) or a number; results depend on it", "auto", THREADS
    )
    backward: Literal["auto", "autograd", "explicit"] = doc(
        "how a step's gradients are computed: auto (explicit matmuls for a stack of dense "
        "layers, else autograd), autograd, or explicit (auto, saying why when it cannot)",
        "auto",
    )
    native_kernels: bool = doc(
        "dlcli's compiled CPU kernels while training: 2x2 max-pooling (the same results as "
        "torch's), and convolutions fused with it (torch's values up to float32 or bf16 "
        "rounding); built once with the system's C compiler; torch's run where they cannot, "
        "with a note",
        True,
    )


@dataclass(kw_only=True)
class OutputConfig:
    dir: str | None = doc("run directory (default: runs/<config file name>)", None, cwd_path=True)
    tensorboard: bool = doc(
        "write TensorBoard event files into RUN_DIR/tensorboard/ (needs dlcli[tensorboard])", False
    )


# --- tune ----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TuneConfig:
    metric: str = doc(
        "metric the study optimises (val_accuracy, val_loss, ...); its direction is the metric's",
        "val_accuracy",
    )
    trials: int = doc("trials in the study, in all (every worker and rerun together)", 20, POSITIVE)
    sampler: Literal["tpe", "random"] = doc("how parameters are drawn: tpe or random", "tpe")
    pruner: Literal["median", "hyperband", "none"] = doc(
        "stops unpromising trials from their per-epoch metric: median, hyperband or none", "median"
    )
    startup_trials: int = doc(
        "trials drawn at random, and finished before the pruner prunes any", 5, NON_NEGATIVE
    )
    warmup_epochs: int = doc("epochs every trial runs before it can be pruned", 1, NON_NEGATIVE)
    space: dict[str, Any] = doc(
        "config key path → {float: [low, high], log: true} | {int: [low, high]} | {choice: [...]}",
        {},
    )


@dataclass(frozen=True)
class SearchParam:
    """One dimension of ``tune.space``: a config key path and the values it may take."""

    path: str
    kind: Literal["float", "int", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def candidates(self) -> list[Any]:
        """The values validation tries: both ends of a range, every choice."""
        if self.kind == "choice":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass(kw_only=True)
class Config:
    data: DataConfig = doc("the dataset and its validation split")
    model: ModelConfig = doc("the network")
    training: TrainingConfig = doc("how to fit", TrainingConfig())
    output: OutputConfig = doc("where the run is saved", OutputConfig())
    tune: TuneConfig | None = doc("dlcli tune's search space and study (train ignores it)", None)


# --- loading -------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``), and reads
    untrusted text within :mod:`dlcli.limits`: nesting at most ``YAML_MAX_DEPTH`` levels while
    composing (before anything recurses deeper), at most ``YAML_MAX_NODES`` values once every
    alias is expanded (counted on the node graph, without expanding it: a "billion laughs"
    document is refused in microseconds), no recursive aliases, and no duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > limits.YAML_MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {limits.YAML_MAX_DEPTH} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)


_AMBIGUOUS_NUMBER = re.compile(r"[-+]?0[0-7]+|.*:.*")  # octal or base 60 (underscores removed)


def _construct_number(loader: _Loader, node: yaml.ScalarNode) -> Any:
    """An integer or float, except YAML 1.1's leading-zero octal and base-60 forms, which are
    refused: ``epochs: 010`` was 8 and ``batch_size: 1:40`` was 100, without a word."""
    is_int = node.tag == "tag:yaml.org,2002:int"
    value = loader.construct_yaml_int(node) if is_int else loader.construct_yaml_float(node)
    text = str(node.value).replace("_", "")
    if _AMBIGUOUS_NUMBER.fullmatch(text):
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{echo(node.value)} is ambiguous: YAML 1.1 reads it as {value!r} (octal or base "
            "60), YAML 1.2 otherwise; write the number without a leading zero or a colon, or "
            "quote it if it is text",
            node.start_mark,
        )
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_number)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_number)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it beyond the limits (or into itself)."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, height)
    active: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        known = measured.get(id(node))
        if known is None:
            if id(node) in active:
                raise yaml.composer.ComposerError(
                    None, None, "an alias refers to the value that contains it", node.start_mark
                )
            if depth > limits.YAML_MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"aliases nest it more than {limits.YAML_MAX_DEPTH} levels deep",
                    node.start_mark,
                )
            active.add(id(node))
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            size, height = 1, 0
            for child in children:
                child_size, child_height = measure(child, depth + 1)
                size += child_size
                height = max(height, child_height + 1)
                if size > limits.YAML_MAX_NODES:
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"aliases expand it to more than {limits.YAML_MAX_NODES:,} values",
                        node.start_mark,
                    )
            active.discard(id(node))
            known = measured[id(node)] = (size, height)
        if depth + known[1] > limits.YAML_MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"aliases nest it more than {limits.YAML_MAX_DEPTH} levels deep",
                node.start_mark,
            )
        return known

    measure(root, 1)


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    """A key given twice in one mapping is an error (YAML says keys are unique; PyYAML would
    silently keep the later one). Keys merged in with ``<<`` may be overridden, as YAML says."""
    seen: dict[tuple[str, str], yaml.Node] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {echo(key_node.value)} (first given at line {first})",
                key_node.start_mark,
            )
        seen[key] = key_node


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class Dumper(yaml.SafeDumper):
    """SafeDumper that quotes every string :class:`_Loader` reads as something else: ``1e3``
    (a number to dlcli, a string to YAML 1.1) was written bare, so a run with a class named
    1e3 saved a config.yaml that read back as 1000.0, and evaluate, predict and --resume
    refused the run."""


Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class _SavedLoader(_Loader):
    """:class:`_Loader` for a config dlcli saved (a run's or a checkpoint's ``config.yaml``),
    without ``1e3`` read as a number. dlcli writes every float with a dot (``1.0e-05``, YAML
    1.1's form), so a bare ``1e3`` there is a string an older dlcli wrote unquoted (a class
    named 1e3, before :class:`Dumper` quoted it): read as the text it was, the run evaluates,
    predicts and resumes again, where it read back as 1000.0 and was refused."""


_SavedLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if pattern is not _FLOAT]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}


def parse_yaml(text: str, *, saved: bool = False) -> Any:
    """Safe-load YAML; a value PyYAML cannot build (``2001-13-45`` read as a date, a bad
    ``!!timestamp``, nesting too deep) is a ``yaml.YAMLError`` too, so every malformed document
    fails the same way. ``saved``: a config dlcli wrote (see :class:`_SavedLoader`)."""
    try:
        return yaml.load(text, Loader=_SavedLoader if saved else _Loader)
    except yaml.YAMLError:
        raise
    except Exception as err:  # PyYAML's constructors raise whatever they hit
        raise yaml.YAMLError(f"{type(err).__name__}: {err}") from None


def load_config(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    values: Mapping[str, Any] | None = None,
    saved: bool = False,
) -> Config:
    """Read, override and validate a YAML config; every problem is reported at once.

    ``overrides``: ``--set key.path=value`` strings (the value read as YAML); ``values``: keys
    set to Python values as given (the Python API, typed flags), applied after them.
    ``saved``: a run directory's own config.yaml (see :class:`_SavedLoader`, and
    :func:`parse_config` for the bounds it is held to)."""
    path = Path(path)
    raw = read_yaml(path, saved=saved)
    resolve_paths(Config, raw, path.parent)  # paths in the file: against its directory
    return parse_resolved(
        raw, overrides, values, source=str(path), default_name=path.stem, saved=saved
    )


def parse_resolved(
    raw: dict[str, Any],
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    *,
    source: str,
    default_name: str = "run",
    saved: bool = False,
) -> Config:
    """Apply command-line overrides and typed values to a raw config and validate it; paths
    given on the command line resolve against the current directory. ``saved``: a run's own
    config (see :func:`parse_config`)."""
    apply_overrides(raw, overrides)
    for key, value in (values or {}).items():
        set_value(raw, key, value)
    resolve_paths(Config, raw, Path.cwd())
    cfg = parse_config(raw, source=source, saved=saved, as_written=not saved)
    if cfg.output.dir is None:
        cfg.output.dir = str(Path("runs") / default_name)
    return cfg


def resolve_paths(cls: type[Any], raw: Any, base: Path) -> None:
    """Make every relative data path (a field declared with ``path=True``) in the raw mapping
    absolute against ``base``, in place; ``~`` is expanded. Values of the wrong type are left
    for validation to report."""
    if not isinstance(raw, dict) or not dataclasses.is_dataclass(cls):
        return
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = raw.get(f.name)
        if f.metadata.get("path") and isinstance(value, str) and value:
            raw[f.name] = absolute_path(value, base)
        elif dataclasses.is_dataclass(hints[f.name]):
            resolve_paths(hints[f.name], value, base)


def absolute_path(value: str, base: Path) -> str:
    """``value`` (``~`` expanded) made absolute against ``base``, normalised, no symlinks
    resolved."""
    return os.path.abspath(os.path.join(base, os.path.expanduser(value)))


def read_yaml(path: Path, *, saved: bool = False) -> dict[str, Any]:
    """A config file's top-level mapping: a regular file of at most ``CONFIG_MAX_BYTES``,
    parsed within the YAML limits (see :class:`_Loader`). ``saved``: a config.yaml dlcli wrote
    into a run directory or a checkpoint (see :class:`_SavedLoader`)."""
    data = read_bytes(path, limits.CONFIG_MAX_BYTES, ConfigError, "config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from None
    try:
        raw = parse_yaml(text, saved=saved)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML{_yaml_where(err)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {_kind(raw)}")
    return raw


def _yaml_where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    if context and getattr(err, "problem", None):
        problem = f"{context} ({problem})"
    problem = shorten(problem)
    if mark is None:
        return f": {problem}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"


_KEY = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
# A key path as --set takes it: names joined by dots, [N] for a list item.
_KEY_PATH = re.compile(r"[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> None:
    """Apply ``key.path=value`` overrides in place (value parsed as YAML)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {echo(item)}: expected key.path=value")
        if not _KEY_PATH.fullmatch(key.strip()):
            raise ConfigError(f"--set {echo(item)}: {_malformed(key.strip())}")
        try:
            value = parse_yaml(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {echo(item)}: invalid YAML value{_yaml_where(err)}") from None
        _set_path(raw, key_parts(key), value, key.strip())


def _malformed(key: Any) -> str:
    return (
        f"malformed key path {echo(key)}: expected names joined by dots, with [N] for a list "
        "item (e.g. model.layers[1].units=128)"
    )


def key_parts(path: str) -> list[str | int]:
    """``model.layers[1].units`` → ``["model", "layers", 1, "units"]``."""
    return [n if n else int(i) for n, i in _KEY.findall(path.strip())]


def short_key(path: str) -> str:
    """A key path shortened for a column: ``training.optimizer.learning_rate`` →
    ``learning_rate``, ``model.layers[1].units`` → ``layers[1].units``."""
    parts = path.split(".")
    if len(parts) > 1 and "[" in parts[-2]:
        return ".".join(parts[-2:])
    return parts[-1]


def set_key(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set the key ``path`` (``model.layers[1].units``) of a raw config to ``value``."""
    _set_path(raw, key_parts(path), value, path.strip())


def set_value(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key.path`` (``model.layers[1].units``) of a raw config to ``value``, as is; the
    key path is held to what ``--set`` takes (``training..epochs`` was read as
    ``training.epochs``, a key that is no string crashed)."""
    if not isinstance(key, str) or not _KEY_PATH.fullmatch(key.strip()):
        shown = key.strip() if isinstance(key, str) else key
        raise ConfigError(f"{named('set')}: {_malformed(shown)}")
    _set_path(raw, key_parts(key), value, key.strip())


def _set_path(node: Any, parts: list[str | int], value: Any, key: str) -> None:
    if len(parts) > limits.YAML_MAX_DEPTH:  # a config file may not nest deeper either
        raise ConfigError(
            f"{named('set')} {shorten(key)}: the key path is {len(parts)} levels deep, more "
            f"than the {limits.YAML_MAX_DEPTH} a config may nest"
        )
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                found = f"a list of {len(node)}" if isinstance(node, list) else _kind(node)
                raise ConfigError(f"{named('set')} {key}: no item [{part}] (found {found})")
            if last:
                node[part] = value
            else:
                node = node[part]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"{named('set')} {key}: cannot set '{part}' inside {_kind(node)}")
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})


_SAVED: contextvars.ContextVar[bool] = contextvars.ContextVar("saved_config", default=False)


def parse_config(
    raw: dict[str, Any], *, source: str = "config", saved: bool = False, as_written: bool = False
) -> Config:
    """Validate a raw mapping against the schema; raise one ConfigError listing every problem.

    ``saved``: the config a run was trained with (its ``config.yaml``, a checkpoint's). A bound
    tightened since (a learning rate above 10, a metric listed twice: refused in a new config)
    is held at the looser one it was trained under, so that the run still evaluates, predicts,
    exports and resumes; every other check applies as to a new config. ``as_written``: ``raw``
    holds only the keys a person gave (a YAML file and its overrides, not a resolved config
    with every default filled in): a key given that another makes meaningless is refused."""
    problems: list[str] = []
    token = _SAVED.set(saved)
    try:
        cfg = _parse_dataclass(Config, raw, "", problems)
        if not problems:
            _check_data(cfg.data, problems)
            if as_written and isinstance(raw.get("data"), dict):
                _check_given_data(raw["data"], problems)
            _check_training(cfg.training, problems)
        if not problems and cfg.tune is not None:
            _check_tune(cfg, problems)
    finally:
        _SAVED.reset(token)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{source}: {len(problems)} {noun} in the config", details=problems)
    fill_input_shape(cfg)
    return typing.cast(Config, cfg)


def metric_mode(metric: str, mode: str) -> str:
    """``auto`` → the registry's direction (dlcli.metric_names): max for accuracies, min for
    losses."""
    return metric_names.mode_of(metric, mode)


def watched_metrics(training: TrainingConfig) -> dict[str, str]:
    """Every metric a monitor or target names, by its key path."""
    monitors = {
        "training.checkpoint.monitor": training.checkpoint.monitor,
        "training.early_stopping.monitor": training.early_stopping
        and training.early_stopping.monitor,
        "training.lr_schedule.monitor": isinstance(training.lr_schedule, ReduceOnPlateauSchedule)
        and training.lr_schedule.monitor,
        "training.target.metric": training.target and training.target.metric,
    }
    return {key: name for key, name in monitors.items() if isinstance(name, str)}


def _check_training(training: TrainingConfig, problems: list[str]) -> None:
    from dlcli.device import check_device_name

    try:
        check_device_name(training.device)
    except ConfigError as err:
        problems.append(err.message)
    counts = collections.Counter(training.metrics)
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated and not _SAVED.get():
        problems.append(
            f"training.metrics: each metric once; repeated: {', '.join(repeated)} "
            f"(found {training.metrics})"
        )
    known = metric_names.reported(training.metrics)
    for key, name in watched_metrics(training).items():
        problem = metric_names.problem(name, known)
        if problem:
            problems.append(f"{key}: {problem}")
    optimizer = training.optimizer
    if optimizer.nesterov and optimizer.name != "sgd":
        problems.append("training.optimizer.nesterov: only sgd supports Nesterov momentum")
    elif optimizer.nesterov and not optimizer.momentum:
        problems.append("training.optimizer.nesterov: needs a momentum > 0, found 0")
    if training.stop_at_target and training.target is None:
        problems.append("training.stop_at_target: true needs training.target {metric, value}")
    if training.label_smoothing and training.loss != "softmax_cross_entropy_with_logits":
        problems.append(
            f"training.label_smoothing: only applies to softmax_cross_entropy_with_logits, "
            f"found loss {training.loss!r}"
        )
    _check_accuracy_tools(training, problems)
    schedule = training.lr_schedule
    if isinstance(schedule, CosineSchedule) and schedule.warmup_epochs and schedule.warmup_steps:
        problems.append("training.lr_schedule: give warmup_epochs or warmup_steps, not both")
    if isinstance(schedule, CosineSchedule) and schedule.min_lr > optimizer.learning_rate:
        # The cosine goes from the learning rate to min_lr: above it, it rose all the way.
        problems.append(
            f"training.lr_schedule.min_lr: {schedule.min_lr:g} is above "
            f"training.optimizer.learning_rate {optimizer.learning_rate:g}, where the cosine "
            "starts; min_lr is where it ends, at most the learning rate"
        )


def _check_accuracy_tools(training: TrainingConfig, problems: list[str]) -> None:
    """class_weights: what the field types alone cannot say."""
    weights = training.class_weights
    ok, expected = NON_NEGATIVE if _SAVED.get() else CLASS_WEIGHT
    if isinstance(weights, list) and (not all(ok(w) for w in weights) or not any(weights)):
        problems.append(
            f"training.class_weights: expected balanced or a list of numbers {expected}, one "
            f"per class, not all 0, found {echo(weights)}"
        )
    if weights is not None and training.loss != "softmax_cross_entropy_with_logits":
        problems.append(
            f"training.class_weights: only applies to softmax_cross_entropy_with_logits, "
            f"found loss {training.loss!r}"
        )


# Sections a sweep may not sample: the study itself, and where runs are written.
_UNTUNABLE = ("tune", "output")


def _check_tune(cfg: Config, problems: list[str]) -> None:
    """``tune.metric`` is reported, and every ``tune.space`` entry names a key of this config
    and only values that key accepts (both ends of a range, every choice, checked by parsing
    the config with each), so a bad space fails before any trial."""
    assert cfg.tune is not None
    known = metric_names.reported(cfg.training.metrics)
    # A test metric is refused below: never suggest one.
    problem = metric_names.problem(cfg.tune.metric, known, splits=("train", "validation"))
    if problem is not None:
        problems.append(f"tune.metric: {cfg.tune.metric!r}: {problem}")
    elif metric_names.parse(cfg.tune.metric, known=known).split == "test":
        problems.append(
            f"tune.metric: {cfg.tune.metric!r} is a test metric; tune on validation "
            "(val_accuracy, val_loss) and keep the test split for the end"
        )
    params, space_problems = search_params(cfg.tune.space)
    problems += space_problems
    base = to_dict(cfg)
    del base["tune"]
    for param in params:
        where = f"tune.space.{param.path}"
        if param.path == "data.validation_split" and cfg.data.validation is not None:
            problems.append(_unused_split(where))
            continue
        problem = _path_problem(base, param.path)
        if problem is not None:
            problems.append(f"{where}: {problem}")
            continue
        for value in param.candidates():
            trial = copy.deepcopy(base)
            set_key(trial, param.path, value)
            try:
                parse_config(trial)
            except ConfigError as err:
                found = err.details or [err.message]
                problems.append(f"{where}: the value {value!r} is refused: {found[0]}")
                break


def search_params(space: dict[str, Any]) -> tuple[list[SearchParam], list[str]]:
    """``tune.space`` → its dimensions, and the problems of its entries' syntax."""
    params: list[SearchParam] = []
    problems: list[str] = []
    for path, spec in space.items():
        where = f"tune.space.{path}"
        param = _search_param(str(path), spec, where, problems)
        if param is not None:
            params.append(param)
    return params, problems


_SPEC_KEYS = ("float", "int", "choice", "log", "step")


def _search_param(path: str, spec: Any, where: str, problems: list[str]) -> SearchParam | None:
    expected = "{float: [low, high]}, {int: [low, high]} or {choice: [a, b, ...]}"
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected {expected}, found {_found(spec)}")
        return None
    for key in spec:
        if key not in _SPEC_KEYS:
            hint = did_you_mean(str(key), list(_SPEC_KEYS))
            problems.append(f"{where}.{key}: unknown key{hint}; known: {', '.join(_SPEC_KEYS)}")
    kinds = [k for k in ("float", "int", "choice") if k in spec]
    if len(kinds) != 1:
        found = "none" if not kinds else " and ".join(kinds)
        problems.append(f"{where}: expected exactly one of float, int, choice, found {found}")
        return None
    kind = kinds[0]
    if kind == "choice":
        return _choice_param(path, spec, where, problems)
    return _range_param(path, kind, spec, where, problems)


def _choice_param(
    path: str, spec: dict[str, Any], where: str, problems: list[str]
) -> SearchParam | None:
    choices = spec["choice"]
    extra = [k for k in ("log", "step") if k in spec]
    if extra:
        problems.append(f"{where}.{extra[0]}: only applies to a float or int range")
    if not isinstance(choices, list) or not choices:
        found = "[]" if choices == [] else _found(choices)
        problems.append(f"{where}.choice: expected a non-empty list of values, found {found}")
        return None
    bad = [c for c in choices if not (c is None or isinstance(c, bool | int | float | str))]
    if bad:
        problems.append(
            f"{where}.choice: expected numbers, strings, booleans or null, found {_found(bad[0])}"
        )
        return None
    if len(set(map(repr, choices))) != len(choices):
        problems.append(f"{where}.choice: a value is listed twice in {choices!r}")
        return None
    return SearchParam(path, "choice", choices=tuple(choices))


def _range_param(
    path: str, kind: str, spec: dict[str, Any], where: str, problems: list[str]
) -> SearchParam | None:
    bounds, log, step = spec[kind], spec.get("log", False), spec.get("step")
    number = int if kind == "int" else float
    noun = "integers" if kind == "int" else "numbers"
    ok = isinstance(bounds, list) and len(bounds) == 2
    if ok:
        ok = all(_fits(number, b) for b in bounds)
    if not ok:
        problems.append(f"{where}.{kind}: expected [low, high], two {noun}, found {_found(bounds)}")
        return None
    low, high = bounds
    count = len(problems)
    if not low < high:
        problems.append(f"{where}.{kind}: expected low < high, found [{low}, {high}]")
    if not isinstance(log, bool):
        problems.append(f"{where}.log: expected a boolean, found {_found(log)}")
    elif log and low <= 0:
        problems.append(f"{where}.log: a log range needs low > 0, found {low}")
    if step is not None:
        if not _fits(number, step) or step <= 0:
            problems.append(f"{where}.step: expected {noun[:-1]} > 0, found {_found(step)}")
        elif log:
            problems.append(f"{where}: give log or step, not both")
        elif low < high:
            _check_steps(low, high, step, where, problems)
    if len(problems) > count:
        return None
    return SearchParam(path, "int" if kind == "int" else "float", low, high, bool(log), step)


def _check_steps(low: float, high: float, step: float, where: str, problems: list[str]) -> None:
    """A stepped range must reach its high end in whole steps from its low one: Optuna would
    otherwise narrow it with a warning (``{int: [10, 20], step: 50}`` became [10, 10])."""
    from decimal import Decimal

    span, size = Decimal(str(high)) - Decimal(str(low)), Decimal(str(step))  # as Optuna counts
    if span % size == 0:
        return
    reached = Decimal(str(low)) + (span // size) * size
    if span < size:
        found = f"a step of {step} is larger than the range {high} - {low}: it holds {low} only"
    else:
        found = f"{high} - {low} is not a whole number of steps of {step}: it ends at {reached}"
    problems.append(f"{where}: expected high - low to be a multiple of step, found {found}")


def _path_problem(node: Any, path: str) -> str | None:
    """Why ``path`` names no key of the resolved config ``node`` (None when it does)."""
    parts = key_parts(path)
    if not _KEY_PATH.fullmatch(path.strip()):
        return (
            "expected a key path such as training.optimizer.learning_rate or model.layers[1].units"
        )
    if parts[0] in _UNTUNABLE:
        return f"{parts[0]}.* cannot be tuned (the study decides it)"
    walked = ""
    for part in parts:
        if isinstance(part, int):
            if not isinstance(node, list):
                return f"{walked or '<top>'} is {_kind(node)}, not a list"
            if part >= len(node):
                return f"no item [{part}]: {walked} has {len(node)}"
            node = node[part]
            walked += f"[{part}]"
            continue
        if node is None:
            return f"{walked} is null in this config: give it a value to tune a key inside it"
        if not isinstance(node, dict):
            return f"{walked} is {_kind(node)}, it has no key '{part}'"
        if part not in node:
            keys = [str(k) for k in node]
            where = walked or "the config"
            hint = did_you_mean(part, keys)
            return f"unknown key '{part}' in {where}{hint}; known: {', '.join(keys)}"
        node = node[part]
        walked = _join(walked, part)
    return None


def _check_data(data: DataConfig, problems: list[str]) -> None:
    from dlcli.data.registry import REGISTRY

    files = [data.train_images, data.train_labels, data.test_images, data.test_labels]
    given = [
        name
        for name, present in (
            ("dataset", data.dataset is not None),
            ("train", data.train is not None),
            ("the four IDX files", any(f is not None for f in files)),
        )
        if present
    ]
    if len(given) > 1:
        problems.append(f"data: give one of dataset, train or the four IDX files; found {given}")
    if data.dataset is not None and data.dataset not in REGISTRY:
        problems.append(
            f"data.dataset: unknown dataset '{data.dataset}'"
            f"{did_you_mean(data.dataset, list(REGISTRY))}; known: {', '.join(REGISTRY)}"
        )
    if data.train is None and (data.test is not None or data.validation is not None):
        problems.append("data.test / data.validation: need data.train (the training data)")
    counts = collections.Counter(data.class_names or [])
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        problems.append(
            f"data.class_names: each class needs its own name; repeated: {', '.join(repeated)}"
        )
    if not given or (
        given == ["the four IDX files"]
        and (any(f is None for f in files) or data.num_classes is None)
    ):
        problems.append(
            "data: expected train (a folder, CSV, .npz or IDX archive), dataset (a registry "
            "name), or all of train_images, train_labels, test_images, test_labels and "
            "num_classes"
        )


def _check_given_data(data: dict[str, Any], problems: list[str]) -> None:
    """Keys of the ``data`` section as written that another key given makes meaningless (a
    resolved config has every default filled in: this needs the keys a person wrote)."""
    if data.get("validation") is not None and "validation_split" in data:
        problems.append(_unused_split("data.validation_split"))


def _unused_split(where: str) -> str:
    """The problem of a ``data.validation_split`` given (at ``where``) beside
    ``data.validation``: the split is never made."""
    return (
        f"{where}: not used with data.validation (the validation data is given); remove one of them"
    )


def fill_input_shape(cfg: Config) -> None:
    """A registry dataset's input shape where the config leaves it out (no data read); for
    other data, :func:`dlcli.pipeline.prepare` infers it from the data and records it."""
    from dlcli.data.registry import REGISTRY

    if cfg.model.input_shape is None and cfg.data.dataset in REGISTRY:
        cfg.model.input_shape = list(REGISTRY[str(cfg.data.dataset)].input_shape)


def _parse_dataclass(cls: type[Any], raw: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{path or '<top>'}: expected a mapping, found {_kind(raw)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            hint = did_you_mean(str(key), list(fields))
            problems.append(
                f"{_join(path, shorten(str(key)))}: unknown key{hint}; known: {', '.join(fields)}"
            )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in raw:
            before = len(problems)
            values[name] = _parse_value(hints[name], raw[name], sub, problems)
            if values[name] == "" and (f.metadata.get("path") or f.metadata.get("cwd_path")):
                problems.append(f"{sub}: expected a path, found an empty text")
            check = f.metadata.get("check")
            if _SAVED.get() and f.metadata.get("saved") is not None:
                check = f.metadata["saved"]
            if (
                check
                and len(problems) == before  # one problem per key
                and isinstance(values[name], int | float)
                and not isinstance(values[name], bool)
            ):
                ok, expected = check
                if not ok(values[name]):
                    problems.append(f"{sub}: expected a number {expected}, found {echo(raw[name])}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{sub}: required key missing ({f.metadata.get('doc', name)})")
    try:
        return cls(**values)
    except TypeError:  # a required field was missing: already reported
        return None


def _parse_value(hint: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = get_origin(hint)
    if hint is LayerSpec:
        return _parse_layer(value, path, problems)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        if any(option in SCHEDULE_TYPES.values() for option in options):
            return _parse_schedule(value, path, problems)
        for option in options:
            if option is not type(None) and _fits(option, value):
                return _parse_value(option, value, path, problems)
        lists = [o for o in options if get_origin(o) is list]
        if isinstance(value, list) and len(lists) == 1:  # name the items that do not fit
            return _parse_value(lists[0], value, path, problems)
        expected = " or ".join(_describe(o) for o in options)
        problems.append(f"{path}: expected {expected}, found {_found(value)}")
        return value
    if origin is Literal:
        choices = [str(c) for c in get_args(hint)]
        if value not in get_args(hint):
            hint_text = did_you_mean(str(value), choices) if isinstance(value, str) else ""
            problems.append(
                f"{path}: expected one of {', '.join(choices)}, found {echo(value)}{hint_text}"
            )
        return value
    if origin is dict:  # a free mapping (tune.space): its entries are checked by its owner
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, found {_found(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected {_describe(hint)}, found {_found(value)}")
            return value
        (item,) = get_args(hint)
        return [_parse_value(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _parse_dataclass(typing.cast(type, hint), value, path, problems)
    if not _fits(hint, value):
        problems.append(f"{path}: expected {_describe(hint)}, found {_found(value)}")
        return value
    if hint is int and not -limits.INT_MAX - 1 <= value <= limits.INT_MAX:
        problems.append(
            f"{path}: expected an integer that fits 64 bits (at most {limits.INT_MAX}), "
            f"found {echo(value)}"
        )
    if hint is float and not math.isfinite(value):
        problems.append(f"{path}: expected a finite number, found {value!r}")
    if hint is str and not _file_name_text(value):
        problems.append(
            f"{path}: expected text a file name can hold (no NUL character, no lone surrogate "
            f"such as \\ud800), found {echo(value)}"
        )
    return float(value) if hint is float else value


def _file_name_text(text: str) -> bool:
    """Whether ``text`` can be a path on this system (``os.fsencode`` takes it: the bytes of a
    non-UTF-8 name given on the command line come back) and be saved in the run's config."""
    if "\0" in text:
        return False
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return True


def _parse_layer(value: Any, path: str, problems: list[str]) -> Any:
    expected = "a layer mapping with a 'type' key"
    return _parse_tagged(value, path, problems, "type", LAYER_TYPES, "layer type", expected)


def _parse_schedule(value: Any, path: str, problems: list[str]) -> Any:
    """``{name: one_cycle, ...}``, or just the name when the defaults will do."""
    if isinstance(value, str):
        value = {"name": value}
    expected = f"a schedule name or a mapping with a 'name' key ({', '.join(SCHEDULE_TYPES)})"
    return _parse_tagged(value, path, problems, "name", SCHEDULE_TYPES, "schedule", expected)


def _parse_tagged(
    value: Any,
    path: str,
    problems: list[str],
    tag: str,
    types: Mapping[str, type],
    noun: str,
    expected: str,
) -> Any:
    """A mapping whose ``tag`` key names its dataclass in ``types`` (a layer's ``type``, a
    schedule's ``name``), parsed as that dataclass."""
    if not isinstance(value, dict) or tag not in value:
        problems.append(f"{path}: expected {expected}, found {_found(value)}")
        return None
    kind = value[tag]
    if not isinstance(kind, str) or kind not in types:
        problems.append(
            f"{path}.{tag}: unknown {noun} {echo(kind)}"
            f"{did_you_mean(kind, list(types)) if isinstance(kind, str) else ''}"
            f"; known: {', '.join(types)}"
        )
        return None
    return _parse_dataclass(types[kind], value, path, problems)


def _fits(hint: Any, value: Any) -> bool:
    origin = get_origin(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_fits(item, v) for v in value)
    if origin is Literal:
        return value in get_args(hint)
    return dataclasses.is_dataclass(hint) and isinstance(value, dict)


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if get_origin(hint) is list:
        return f"a list of {_describe(get_args(hint)[0])}"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, "a mapping")


def _found(value: Any) -> str:
    if value is None or isinstance(value, dict | list):
        return _kind(value)  # "null", "a mapping": the value itself would say no more
    return f"{_kind(value)} {echo(value)}"


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return kinds.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# Keys that say where and how a run runs and what it records, not what it learns: a resumed run
# and a continued study may change them (see checkpoint.RESUMABLE_CHANGES, tune.open_study).
PLACEMENT_KEYS = (
    "training.device",
    "training.threads",
    "training.checkpoint",
    "data.data_dir",  # where a registry dataset is read (its archives are verified)
    "output",
)


def config_differences(
    saved: Any, current: Any, ignore: Sequence[str], labels: tuple[str, str], path: str = ""
) -> list[str]:
    """How two raw configs differ, key by key (``training.epochs is 2000 in the checkpoint, 20
    now``), leaving out the key paths in ``ignore`` (and what is under them). A key ``saved``
    lacks (a config older than the key) keeps its default: it is not compared. ``labels`` name
    the two sides. The one rule for "same config" (``train --resume``, a continued study)."""
    if path in ignore:
        return []
    if isinstance(saved, dict) and isinstance(current, dict):
        found: list[str] = []
        for key in dict.fromkeys([*saved, *current]):
            sub = f"{path}.{key}" if path else str(key)
            if key not in current:
                found += [] if sub in ignore else [f"{sub} is not in this config"]
            elif key in saved:
                found += config_differences(saved[key], current[key], ignore, labels, sub)
        return found
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        found = []
        for i, (old, new) in enumerate(zip(saved, current, strict=True)):
            found += config_differences(old, new, ignore, labels, f"{path}[{i}]")
        return found
    if saved != current:
        return [f"{path} is {saved!r} {labels[0]}, {current!r} {labels[1]}"]
    return []


# --- writing -------------------------------------------------------------------------------


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved config, or one of its sections, as plain data (what ``config.yaml`` in a
    run dir holds)."""
    return dataclasses.asdict(config)


COMMENT_COLUMN = 32  # where the one-line docs start in config show and a run's config.yaml


def dump_yaml(cfg: Config, header: Sequence[str] = ()) -> str:
    """The config as block-style YAML in the schema's key order, each key followed by its
    one-line doc as a comment (``config show``, a run's ``config.yaml``). ``header`` lines
    open it as comments. It loads back to the same config."""
    lines: list[tuple[str, str]] = [(f"# {line}", "") for line in header]
    _emit(cfg, 0, lines)
    return aligned(lines)


def aligned(lines: Sequence[tuple[str, str]]) -> str:
    """``(text, comment)`` lines with every comment at :data:`COMMENT_COLUMN` (two spaces after
    a longer text). A comment stays on its line: a line break or other control character in it
    (a file name quoted in a header) is written as its escape, ``\\n``."""
    out = []
    for text, comment in lines:
        if text.startswith("#"):
            text = printable(text)
        pad = " " * max(COMMENT_COLUMN - len(text), 2)
        out.append(f"{text}{pad}# {printable(comment)}" if comment else text)
    return "\n".join(out) + "\n"


def _emit(node: Any, indent: int, lines: list[tuple[str, str]]) -> None:
    pad = " " * indent
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        doc = f.metadata.get("doc", "")
        if dataclasses.is_dataclass(value):
            lines.append((f"{pad}{f.name}:", doc))
            _emit(value, indent + 2, lines)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            lines.append((f"{pad}{f.name}:", doc))
            for item in value:  # a block sequence of block mappings: "- type: dense" ...
                first = len(lines)
                _emit(item, indent + 4, lines)
                text, comment = lines[first]
                lines[first] = (f"{pad}  - {text.lstrip()}", comment)
        else:
            lines.append((f"{pad}{f.name}: {flow_yaml(value)}", doc))


def flow_yaml(value: Any) -> str:
    """One value as single-line YAML: scalars quoted where YAML needs it, lists in flow
    style (``[28, 28, 1]``)."""
    text = yaml.dump(value, Dumper=Dumper, default_flow_style=True, width=1 << 30, sort_keys=False)
    return text.strip().removesuffix("\n...").removesuffix("...").strip()
