"""The workflows the commands run, KotlinDL's "training a model" in a few readable steps:
load the archives, split off validation, build the model, fit, evaluate, save.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import numpy.typing as npt
import torch

from dlcli import (
    accel,
    checkpoint,
    dense_step,
    distributed,
    evaluation,
    metric_names,
    native,
    signals,
    store,
    untrusted,
)
from dlcli.augment import make_augmenter
from dlcli.averaging import WeightAverage
from dlcli.callbacks import (
    Checkpointer,
    FollowFreeCores,
    SplitMetrics,
    build_callbacks,
    reports,
    test_split_watchers,
    watched_test_split,
)
from dlcli.config import Config, TrainingConfig, read_yaml
from dlcli.data.dataset import Dataset, Split, split
from dlcli.data.download import registry_root
from dlcli.data.images import check_input_shape
from dlcli.data.load import load_data
from dlcli.data.local import LocalData, load_local
from dlcli.device import resolve_device
from dlcli.engine import Trainer
from dlcli.errors import (
    ConfigError,
    DataError,
    DlcliError,
    Interrupted,
    ModelDirError,
    TrainingError,
    UsageError,
    named,
)
from dlcli.evaluation import Objective, Scorer
from dlcli.gates import Gate, default_split, resolve_gates
from dlcli.hooks import Callback, Logs
from dlcli.metrics import PerClass, confusion_matrix, per_class
from dlcli.model import (
    BuiltModel,
    build_model,
    check_batch_norm_batches,
    has_fused_conv,
    has_native_pool,
    weights_mismatch,
)
from dlcli.steps import StepRecorder
from dlcli.threads import ThreadChoice, apply_threads
from dlcli.untrusted import shorten
from dlcli.version import __version__

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

NO_TEST = "no test split: the config gives no test data (data.test)"


@dataclass
class Prepared:
    """Everything a run needs before the first step (what ``train`` announces)."""

    config: Config
    dataset: Dataset
    train: Split
    validation: Split
    model: BuiltModel
    device: torch.device
    run_dir: Path
    resume: checkpoint.Checkpoint | None = None  # --resume: where training continues from
    world: distributed.World = distributed.SINGLE  # this worker's place in a torchrun job
    output: store.Output | None = None  # the locked run dir (rank 0); None: not locked
    threads: ThreadChoice | None = None  # training.threads, resolved
    precision_asked: str | None = None  # training.precision as given (see record_precision)
    # How an interrupted run continues, when not `dlcli train --resume` (a tune trial's study)
    continue_with: str | None = None
    stretched: dict[str, Any] | None = None  # --resume longer or shorter: see schedule_stretch

    @property
    def work_dir(self) -> Path:
        """Where checkpoints and event files go while training (see store.Output)."""
        return self.output.work_dir if self.output is not None else self.run_dir


@dataclass
class TrainResult:
    run_dir: Path
    history: list[Logs]
    metrics: dict[str, Any] = field(default_factory=dict)
    config: Config | None = None
    note: str | None = None  # said before the result (--resume of a finished run)

    def summary(self) -> dict[str, Any]:
        """Best epoch (by the monitored metric, else val_loss), seconds per epoch, samples/s,
        and which weights ``model.safetensors`` holds."""
        from dlcli.config import to_dict
        from dlcli.runs import monitored_metric, summarize_history

        train_size = self.metrics.get("dataset", {}).get("train_size")
        rule = monitored_metric(to_dict(self.config)) if self.config else (None, "auto", 0.0)
        monitor, mode, min_delta = rule
        found = summarize_history(
            self.history, monitor=monitor, mode=mode, min_delta=min_delta, train_size=train_size
        )
        return found | {"weights": saved_weights(self.metrics)}

    def final_metrics(self) -> dict[str, Logs]:
        """The final metrics of each split the run has (no ``test`` without test data)."""
        return {
            split: self.metrics[split]
            for split in metric_names.SPLITS
            if self.metrics[split] is not None
        }

    def to_dict(self) -> dict[str, Any]:
        """The ``train --json`` document (without ``gates``)."""
        return {"run_dir": str(self.run_dir), **self.metrics, "summary": self.summary()}


def split_train(dataset: Dataset, cfg: Config) -> tuple[Split, Split]:
    """The validation data given, else KotlinDL's ``train.split(1 - validation_split)``,
    seeded (and shuffled unless told not)."""
    if dataset.validation is not None:
        return dataset.train, dataset.validation
    return split(
        dataset.train,
        1.0 - cfg.data.validation_split,
        seed=cfg.training.seed,
        shuffle=cfg.data.shuffle_split,
        stratify=cfg.data.stratify,
        setting=f"data.validation_split: {cfg.data.validation_split:g}",
    )


@distributed.collective_errors
def prepare(
    cfg: Config,
    *,
    overwrite: bool = False,
    resume: bool = False,
    dist_timeout: float | None = None,
    dataset: Dataset | None = None,
) -> Prepared:
    """Load and split the data and build the model, seeded, before any training.

    With ``resume``, the newest checkpoint of the run dir is verified and read first (it must
    come from the same config, up to ``checkpoint.RESUMABLE_CHANGES``). Started by torchrun,
    this process first joins the other workers (``dist_timeout``: see dlcli.distributed); only
    rank 0 writes, and reads the checkpoint for all of them. ``dataset``: the one
    ``cfg.data`` names, already loaded (``dlcli tune`` loads it once for all its trials).
    """
    world, device = distributed.init_from_env(cfg.training.device, dist_timeout)
    threads = apply_threads(cfg.training.threads)  # auto: the free cores (dlcli/threads.py)
    run_dir = Path(str(cfg.output.dir))
    # Rank 0 alone writes: it locks the run dir (a second writer is refused at once).
    output = (
        store.open_output(run_dir, overwrite=overwrite, resume=resume)
        if world.is_main
        else store.Output(run_dir, run_dir)
    )
    try:
        if dataset is None:
            dataset = config_data(cfg)
        record_input_shape(cfg, dataset)  # an inferred input shape is recorded in cfg here
        record_data_dir(cfg)
        check_top_k(cfg, dataset.num_classes)
        check_test_watchers(cfg, dataset)
        check_translate(cfg)
        asked = record_precision(cfg, device, world, run_dir if resume else None)
        resumed = world.from_main(
            lambda: checkpoint.load(checkpoint.latest(run_dir), cfg) if resume else None
        )
        train, validation = split_train(dataset, cfg)
        torch.manual_seed(cfg.training.seed)
        model = build_model(cfg.model, num_classes=dataset.num_classes)
        check_batch_norm_batches(model, len(train), cfg.training.batch_size, world.size)
    except BaseException:
        output.release()
        raise
    return Prepared(
        cfg,
        dataset,
        train,
        validation,
        model,
        device,
        run_dir,
        resumed,
        world,
        output,
        threads,
        precision_asked=asked,
        stretched=schedule_stretch(cfg, resumed, len(train)),
    )


def config_data(
    cfg: Config, data_dir: str | None = None, *, recorded: dict[str, Any] | None = None
) -> Dataset:
    """The dataset ``cfg`` trains on, as ``train`` reads it: ``cfg.data`` with own images
    converted to ``cfg.model.input_shape`` (``data_dir``, ``recorded``: see
    :func:`~dlcli.data.load.load_data`). Every command that reads a config's data reads it
    here (lr-find and the Python API read images at their own size, which the model refused)."""
    return load_data(cfg.data, data_dir, recorded=recorded, input_shape=cfg.model.input_shape)


def record_input_shape(cfg: Config, dataset: Dataset) -> None:
    """``model.input_shape`` must be ``dataset``'s image shape (the rule and its message:
    :func:`dlcli.data.images.check_input_shape`); an inferred shape is recorded in ``cfg``."""
    channels, height, width = dataset.image_shape
    source = dataset.name or "the dataset"
    cfg.model.input_shape = check_input_shape(
        cfg.model.input_shape, (height, width, channels), source
    )


def check_top_k(cfg: Config, classes: int) -> None:
    """``top_k_accuracy`` must have fewer than ``training.top_k`` classes to tell apart: with
    k at least the number of classes every prediction is right (a metric of 1.0 that says
    nothing, gates passed by nothing)."""
    k = cfg.training.top_k
    if "top_k_accuracy" in cfg.training.metrics and k >= classes:
        raise ConfigError(
            f"training.top_k: {k} is not below the data's {classes} classes, so "
            f"top_k_accuracy would always be 1.0; set training.top_k below {classes} or "
            "drop top_k_accuracy from training.metrics"
        )


def check_test_watchers(cfg: Config, dataset: Dataset) -> None:
    """A monitor or target that watches the test split needs one: without test data its
    metric never exists (early stopping stopped after ``patience`` epochs of "no improvement",
    reduce_on_plateau failed with a KeyError, a target or best checkpoint never came)."""
    if dataset.test is not None:
        return
    watchers = test_split_watchers(cfg)
    if watchers:
        keys = ", ".join(f"{key} ({name})" for key, name in watchers.items())
        verb = "watches" if len(watchers) == 1 else "watch"
        raise ConfigError(f"{keys}: {verb} the test split, but there is {NO_TEST}")


def check_translate(cfg: Config) -> None:
    """``training.augment.translate`` must be below the image's height and width: a shift as
    large as the image leaves nothing of it, and the padded batch grows with its square (10**9
    overflowed torch's storage size, exit 1). Needs ``model.input_shape`` (not checked
    without it)."""
    augment, shape = cfg.training.augment, cfg.model.input_shape
    if augment is None or not augment.translate or shape is None or len(shape) != 3:
        return
    height, width = int(shape[0]), int(shape[1])
    if augment.translate >= min(height, width):
        raise ConfigError(
            f"training.augment.translate: {augment.translate} is not below the images' "
            f"{height}×{width} (model.input_shape): a shift that large leaves nothing of "
            f"the image; set at most {min(height, width) - 1}"
        )


def record_data_dir(cfg: Config) -> None:
    """A registry dataset's folder, as an absolute ``data.data_dir`` in ``cfg`` (the run's and
    its checkpoints' config): ``dlcli train --resume RUN_DIR`` from another directory reads
    the data the run started with, not ``./data`` there. ``data.data_dir`` may change on a
    resume (``checkpoint.RESUMABLE_CHANGES``): the archives are checked by their SHA-256."""
    if cfg.data.dataset is not None and cfg.data.data_dir is None:
        cfg.data.data_dir = os.path.abspath(registry_root(cfg.data, None))


def record_precision(
    cfg: Config, device: torch.device, world: distributed.World, resuming: Path | None
) -> str:
    """Record in ``cfg`` the precision the run computes in, and return what it asked for.

    ``auto`` becomes what :func:`dlcli.accel.resolve_precision` picks for ``device`` (rank 0
    decides for every worker), so ``config.yaml``, the checkpoints, ``--resume`` and
    ``evaluate`` all see the precision that ran, wherever they run. Resuming (``resuming``: the
    run dir), ``auto`` is what the run's start resolved it to, kept in its newest checkpoint:
    a run started with bf16 instructions and continued on a CPU without them still computes
    in bf16 (slowly, and ``train`` says so), exactly as the uninterrupted run would."""
    asked = cfg.training.precision
    if asked == "auto":

        def resolved() -> Any:  # one of training.precision's concrete values
            started = _started_precision(resuming) if resuming is not None else None
            return started or accel.resolve_precision(asked, device)

        cfg.training.precision = world.from_main(resolved)
    return asked


def _started_precision(run_dir: Path) -> str | None:
    """The concrete precision in the config of ``run_dir``'s newest checkpoint, or None (no
    checkpoint, or none recorded there: resuming then checks and refuses as usual)."""
    try:
        latest = checkpoint.latest(run_dir)
    except (DlcliError, OSError):
        return None
    precision = _started_training(latest).get("precision")
    return precision if precision in ("fp32", "bf16", "fp16") else None


def _started_training(checkpoint_dir: Path) -> dict[str, Any]:
    """The ``training`` section of a checkpoint's config, as written ({} when unreadable)."""
    try:
        saved = read_yaml(checkpoint_dir / checkpoint.CONFIG, saved=True)
    except (DlcliError, OSError):
        return {}
    training = saved.get("training") if isinstance(saved, dict) else None
    return training if isinstance(training, dict) else {}


@distributed.collective_errors
def train(prepared: Prepared, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Fit, evaluate on validation and test, and save the run directory.

    SIGINT/SIGTERM stop after the current step with a checkpoint (:class:`Interrupted`, whose
    message is the command that continues the run). The run dir's lock
    is given back at the end, however it ends.
    """
    try:
        return _fit_and_save(prepared, callbacks)
    except (RuntimeError, MemoryError) as err:  # the trainer's buffers, a step, the evaluation
        if not out_of_memory(err):
            raise
        raise TrainingError(
            f"out of memory while training: {shorten(str(err).strip())}; a smaller "
            "training.batch_size or model needs less" + _last_good(prepared)
        ) from None
    finally:
        if prepared.output is not None:
            prepared.output.release()


def _fit_and_save(prepared: Prepared, callbacks: Sequence[Callback]) -> TrainResult:
    cfg = prepared.config
    world = prepared.world
    configured = build_callbacks(cfg, prepared.run_dir, prepared.work_dir)  # checkpoints last
    if not world.is_main:  # distributed: rank 0 alone writes (checkpoints, event files)
        configured = [cb for cb in configured if not isinstance(cb, Checkpointer)]
    recorder = StepRecorder()  # steps.csv: the learning rate and loss of every step
    writers = [recorder, *_output_callbacks(prepared)] if world.is_main else []
    # A monitor or target on the test split: evaluate it every epoch, before anyone reads logs.
    test = prepared.dataset.test
    tested = [SplitMetrics(test, "test")] if test is not None and watched_test_split(cfg) else []
    num_classes = prepared.dataset.num_classes
    threads = prepared.threads
    following = (
        [FollowFreeCores(threads)]
        if threads is not None and threads.follows_load and prepared.device.type == "cpu"
        else []
    )
    module = prepared.model.module.to(prepared.device)  # where the weight average lives too
    trainer = Trainer(
        module,
        cfg.training,
        num_classes=num_classes,
        device=prepared.device,
        callbacks=[*tested, *callbacks, *writers, *configured, *following],
        world=world,
        augment=make_augmenter(
            cfg.training.augment, prepared.device, cfg.training.seed, num_classes
        ),
        after_update=[WeightAverage(module, cfg.training.ema)] if cfg.training.ema else [],
    )
    if prepared.resume is not None:
        checkpoint.check_fits(
            prepared.resume,
            trainer.model,
            trainer.optimizer,
            epochs=cfg.training.epochs,
            steps_per_epoch=math.ceil(len(prepared.train) / cfg.training.batch_size),
            train_size=len(prepared.train),
            tools=trainer.tool_state(),
        )
        trainer.load_state_dict(
            prepared.resume.state, source=str(prepared.resume.path / checkpoint.STATE)
        )
    with signals.stop_on_signals(trainer) as guard, distributed.stop_watchdog(world):
        try:
            history = trainer.fit(prepared.train, prepared.validation)
        except Interrupted as err:
            world.barrier()  # distributed: rank 0's checkpoint is written before the hint
            raise Interrupted(err.message + _resume_hint(prepared)) from None
        except TrainingError as err:
            raise TrainingError(err.message + _last_good(prepared)) from None
        guard.immediate = True  # no step left to finish: a signal now stops at once
        saved = _already_saved(prepared, trainer)
        if saved is not None:  # --resume of a finished, saved run: its files stay as they are
            return TrainResult(
                prepared.run_dir,
                history,
                saved,
                config=cfg,
                note=f"{prepared.run_dir}: already trained {trainer.epoch} of "
                f"{cfg.training.epochs} epochs; nothing to do (the saved run is unchanged)",
            )
        reported = reports([*callbacks, *configured])  # a tune trial's too
        metrics = _metrics(prepared, trainer, reported) | reported | world.describe()
        for follow in following:
            metrics["threads"] = metrics["threads"] | follow.follower.describe()
        if world.is_main:
            try:
                store.save_run(
                    prepared.output or prepared.run_dir,
                    config=cfg,
                    state_dict=trainer.model.state_dict(),
                    metrics=metrics,
                    history=history,
                    steps=recorder.read(),
                    data_digests=prepared.dataset.digests,
                )
            except ModelDirError as err:  # a full disk: what was trained is in its checkpoint
                raise ModelDirError(err.message + _save_hint(prepared)) from None
        world.barrier()  # distributed: the other workers wait for rank 0's save
    return TrainResult(prepared.run_dir, history, metrics, config=cfg)


def _already_saved(prepared: Prepared, trainer: Trainer) -> dict[str, Any] | None:
    """With --resume, when training took no step (the checkpoint's run had trained its epochs,
    or stopped early or at its target) and the run dir holds that run saved and complete
    (verified, the same epochs): its metrics, the result. ``None``: save as usual (a run
    killed after its last checkpoint and before its save is saved now)."""
    resumed = prepared.resume
    if resumed is None or trainer.global_step != resumed.state["global_step"]:
        return None

    def read() -> dict[str, Any] | None:
        if resumed.path.parent.parent != prepared.run_dir:  # an --overwrite run's, not saved
            return None
        try:
            store.verify_run(prepared.run_dir)
            metrics = untrusted.load_json(prepared.run_dir / store.METRICS, ModelDirError)
        except ModelDirError:
            return None
        if not isinstance(metrics, dict) or metrics.get("epochs") != trainer.epoch:
            return None
        return metrics

    return prepared.world.from_main(read)


def saved_weights(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Which weights model.safetensors holds: the last epoch's, or (early stopping with
    restore_best) the best epoch's."""
    early = metrics.get("early_stopping")
    if isinstance(early, Mapping) and early.get("restored_best"):
        return {"epoch": early.get("best_epoch"), "why": f"best by {early.get('monitor')}"}
    return {"epoch": metrics.get("epochs"), "why": "last"}


def _continue_line(prepared: Prepared) -> str:
    """The command that continues this run from its checkpoint."""
    from dlcli.train_request import continue_command

    world = prepared.world
    nodes = max(1, world.size // max(1, world.local_size))
    return prepared.continue_with or continue_command(
        prepared.run_dir, workers=world.local_size, nodes=nodes
    )


def _save_hint(prepared: Prepared) -> str:
    """What a failed save (a full disk) leaves: the trained run in its last checkpoint, which
    --resume saves without training again."""
    found = checkpoint.describe(prepared.work_dir)
    if found is None or not prepared.config.training.checkpoint.every:  # none at the end
        return ""
    return (
        f"; the trained run is kept in its checkpoint ({found}): once that is solved, save "
        f"it (without training again) with: {_continue_line(prepared)}"
    )


def _resume_hint(prepared: Prepared) -> str:
    found = checkpoint.describe(prepared.work_dir)
    if found is None:
        return "; no checkpoint was written (training.checkpoint.every is 0, or none was due yet)"
    line = _continue_line(prepared)
    if not prepared.config.training.checkpoint.every:  # an older one, from before --resume
        return (
            "; no checkpoint was written (training.checkpoint.every is 0): the newest is "
            f"older ({found}), what was trained since is lost. Continue from it with: {line}"
        )
    return f"; checkpoint saved ({found}). Continue with: {line}"


def out_of_memory(err: BaseException) -> bool:
    """An allocation that failed: a GPU's (torch.OutOfMemoryError), Python's MemoryError, or
    the CPU allocator's, which torch raises as a plain RuntimeError."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and "DefaultCPUAllocator" in text and "memory" in text


def _last_good(prepared: Prepared) -> str:
    found = checkpoint.describe(prepared.work_dir)
    if found is None:
        return "; no checkpoint was written before it"
    return f"; the last good checkpoint is kept ({found})"


def _output_callbacks(prepared: Prepared) -> list[Callback]:
    """Callbacks the config's ``output`` section asks for (TensorBoard event files)."""
    if not prepared.config.output.tensorboard:
        return []
    from dlcli.tensorboard import TensorBoardLogger

    return [TensorBoardLogger(prepared.work_dir, prepared.config)]


def _metrics(prepared: Prepared, trainer: Trainer, reported: Mapping[str, Any]) -> dict[str, Any]:
    # The training metrics of the epoch whose weights are saved: the last, or the best that
    # early stopping restored (validation and test score those weights).
    saved = saved_weights({"epochs": trainer.epoch, **reported})["epoch"]
    row = next((r for r in trainer.history if r["epoch"] == saved), trainer.history[-1])
    final_train = {k: v for k, v in row.items() if k in ("loss", *_metric_keys())}
    dataset = prepared.dataset
    tta = prepared.config.training.tta
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dlcli_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(prepared.device),
        **({"threads": prepared.threads.describe()} if prepared.threads else {}),
        "backward": "autograd" if trainer.explicit is None else "explicit",  # dlcli/dense_step.py
        **_max_pooling(prepared, trainer),
        **_precision(prepared, trainer),
        "seed": prepared.config.training.seed,
        "epochs": trainer.epoch,
        "fit_seconds": round(trainer.fit_seconds, 4),
        **_resumed(prepared),
        "train": final_train,
        "validation": trainer.evaluate(prepared.validation, tta=tta),
        "test": trainer.evaluate(dataset.test, tta=tta) if dataset.test is not None else None,
        **_accuracy_tools(prepared, trainer, saved),
        "params": prepared.model.total_params,
        "dataset": {
            "name": dataset.name,
            "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names),
            "train_size": len(prepared.train),
            "validation_size": len(prepared.validation),
            "test_size": len(dataset.test) if dataset.test is not None else 0,
            "checksums": dataset.checksums,
            **_data_location(prepared),
            **({"sources": dataset.split_sources} if dataset.split_sources else {}),
            **({"notes": dataset.notes} if dataset.notes else {}),
        },
        **({"skipped_files": dataset.skipped} if dataset.skipped else {}),
    }


def _precision(prepared: Prepared, trainer: Trainer) -> dict[str, str]:
    """The precision the run computed in, and what the config asked for where that differs
    (``auto``: see :func:`record_precision`)."""
    used, asked = trainer.precision.name, prepared.precision_asked or trainer.precision.asked
    return {"precision": used} | ({"precision_asked": asked} if asked != used else {})


def _max_pooling(prepared: Prepared, trainer: Trainer) -> dict[str, Any]:
    """Whose 2x2 max-pooling the training steps ran, for a model that has one: ``dlcli``
    (``training.native_kernels``, dlcli/native.py) or ``torch``; and whose convolutions with
    such a pooling, for a model with one the fused kernel could run."""
    module = prepared.model.module
    found = {}
    if has_native_pool(module):
        found["max_pooling"] = "dlcli" if trainer.native_pooling else "torch"
    if has_fused_conv(module):
        found["conv_pooling"] = "dlcli" if trainer.native_conv else "torch"
    return found


def _accuracy_tools(prepared: Prepared, trainer: Trainer, saved_epoch: int) -> dict[str, Any]:
    """What metrics.json says about EMA and TTA when they are on: the saved model is the
    weight average (of ``updates`` steps: those up to the end of ``saved_epoch``, the epoch
    whose weights are saved); validation and test were scored with test-time augmentation."""
    found: dict[str, Any] = {}
    if trainer.ema is not None:
        described = trainer.ema.describe()
        if saved_epoch != trainer.epoch:  # early stopping restored an earlier epoch's average
            described["updates"] = saved_epoch * trainer.steps_per_epoch  # one a step
        found["ema"] = {**described, "saved_model": "average"}
    if prepared.config.training.tta != "none":
        found["tta"] = prepared.config.training.tta
    return found


def step_kind(prepared: Prepared) -> tuple[str, str]:
    """Which step the run takes, ``explicit`` or ``autograd`` (``training.backward``, see
    dlcli.dense_step), and why not the explicit one ("" when it runs or autograd was asked
    for): what ``train`` announces. ``training.precision`` is what runs: :func:`prepare`
    recorded ``auto`` as what it resolved to."""
    training, module = prepared.config.training, prepared.model.module
    return dense_step.kind(
        module, training, distributed=prepared.world.distributed, precision=training.precision
    )


def precision_note(prepared: Prepared) -> str:
    """What ``train`` says of ``training.precision`` before the first step: that an explicit
    bf16 is emulated on this CPU ("" when there is nothing to say)."""
    return accel.emulated_bf16_note(prepared.config.training.precision, prepared.device)


def native_note(prepared: Prepared) -> str:
    """What ``train`` says before the first step when dlcli's compiled max-pooling
    (``training.native_kernels``, dlcli/native.py) cannot run on this machine although the
    model pools 2x2 on the CPU: why, and that torch's pooling runs ("" otherwise). Builds
    the kernel on the first run on a machine."""
    training = prepared.config.training
    if not (
        training.native_kernels
        and prepared.device.type == "cpu"
        and has_native_pool(prepared.model.module)
    ):
        return ""
    why = native.unavailable()
    return f"training.native_kernels: torch's pooling and convolution run: {why}" if why else ""


def describe_recipe(training: TrainingConfig) -> str:
    """The accuracy tools a run uses, in words ("" when none): what ``train`` announces."""
    parts = []
    augment = training.augment
    if augment is not None:
        names = {
            "translate": f"translate ±{augment.translate}px" if augment.translate else "",
            "flip": "flip" if augment.flip else "",
            "erase": f"random erasing {augment.erase:g}" if augment.erase else "",
            "mixup": f"mixup {augment.mixup:g}" if augment.mixup else "",
            "cutmix": f"cutmix {augment.cutmix:g}" if augment.cutmix else "",
        }
        chosen = [text for text in names.values() if text]
        if chosen:
            parts.append("augmentation (" + ", ".join(chosen) + ")")
    if training.ema is not None:
        parts.append(f"EMA of the weights (decay {training.ema.decay:g}: the saved model)")
    if training.class_weights is not None:
        weights = training.class_weights
        parts.append(f"class weights {weights if isinstance(weights, str) else 'as listed'}")
    if training.tta != "none":
        parts.append(f"test-time augmentation {training.tta}")
    return "; ".join(parts)


def _data_location(prepared: Prepared) -> dict[str, Any]:
    """Where the data was read: each file's absolute path and SHA-256, or the registry folder."""
    if prepared.dataset.files:
        return {"files": prepared.dataset.files}
    data = prepared.config.data
    return {"data_dir": os.path.abspath(registry_root(data, None))}


def _resumed(prepared: Prepared) -> dict[str, Any]:
    if prepared.resume is None:
        return {}
    resumed = prepared.resume
    stretched = prepared.stretched
    return {
        "resumed_from": {
            "checkpoint": str(resumed.path),
            "epoch": resumed.epoch + 1,  # the epoch training continued in, as the message says
            "step_in_epoch": resumed.step_in_epoch,  # its steps already done
            "epochs_completed": resumed.epoch,
            **({"lr_schedule": stretched} if stretched else {}),
        }
    }


def schedule_stretch(
    cfg: Config, resumed: checkpoint.Checkpoint | None, train_size: int
) -> dict[str, Any] | None:
    """Resuming with another ``training.epochs`` than the checkpoint's: a per-step schedule
    (one_cycle, cosine) is rebuilt for the new length and continues from the checkpoint's
    step, so the learning rate changes there. From what to what: ``{"name", "epochs_before",
    "epochs", "step", "lr_before"`` (the rate of the checkpoint's last step), ``"lr_after"}``
    (the rate of the first step resumed); None: not resuming, no such schedule, or the same
    length. Read before training writes checkpoints of the new length."""
    from dlcli.callbacks import schedule_rate

    spec, training = cfg.training.lr_schedule, cfg.training
    if resumed is None or spec is None or spec.name not in ("one_cycle", "cosine"):
        return None
    before = _started_training(resumed.path).get("epochs")
    if not isinstance(before, int) or isinstance(before, bool) or before == training.epochs:
        return None
    step = int(resumed.state["global_step"])

    def rate(epochs: int, at: int) -> float:
        return schedule_rate(
            spec,
            training.optimizer.learning_rate,
            epochs=epochs,
            steps_per_epoch=math.ceil(train_size / training.batch_size),
            step=at,
        )

    # Before: the rate the checkpoint's last step used (steps.csv's); the optimizer holds
    # the next one, which past a schedule's end (a finished run made longer) is none it gives.
    last = (
        rate(before, step - 1)
        if step
        else float(resumed.state["optimizer"]["param_groups"][0]["lr"])
    )
    return {
        "name": spec.name,
        "epochs_before": before,
        "epochs": training.epochs,
        "step": step,
        "lr_before": last,
        "lr_after": rate(training.epochs, step),
    }


def schedule_note(prepared: Prepared) -> str:
    """What ``train --resume`` says when it stretches the schedule (:func:`schedule_stretch`;
    "" otherwise)."""
    found = prepared.stretched
    if found is None:
        return ""
    how = "stretched" if found["epochs"] > found["epochs_before"] else "shortened"
    return (
        f"training.lr_schedule: {found['name']} was built for {found['epochs_before']} epochs "
        f"and is {how} to {found['epochs']}: at step {found['step'] + 1} the learning rate "
        f"goes from {found['lr_before']:.4g} to {found['lr_after']:.4g} (the "
        f"{found['epochs']}-epoch schedule's rate there)"
    )


def _metric_keys() -> tuple[str, ...]:
    return ("accuracy", "top_k_accuracy")


# --- evaluate ------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A saved run's model, rebuilt with its weights, ready to score: no Trainer, no optimizer."""

    run: store.Run
    built: BuiltModel
    scorer: Scorer

    @property
    def objective(self) -> Objective:
        """The loss and metrics the run was trained with."""
        return Objective.of(self.run.config.training, self.built.output_shape[0])

    def evaluate(self, split: Split, batch_size: int = 1000) -> Logs:
        """Loss and metrics on ``split``."""
        return evaluation.evaluate(self.scorer, split, self.objective, batch_size=batch_size)

    def outputs(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The model's outputs (logits) for N×C×H×W images of 0-255 pixel values."""
        return evaluation.outputs(self.scorer, images, batch_size=batch_size)


WEIGHTS = ("saved", "best", "last")


def load_model(
    run_dir: Path, device: str = "auto", weights: str = "saved", tta: str | None = None
) -> LoadedModel:
    """Verify a run dir and rebuild its model (CPU if no GPU) with the weights it saved
    (``saved``: model.safetensors), or its ``best`` or ``last`` checkpoint's (verified too;
    with ``training.ema``, the checkpoint's weight average). ``tta``: the test-time
    augmentation of its scores (none or flip; None: the run's ``training.tta``)."""
    run = store.load_run(run_dir)
    if weights != "saved":
        run.state_dict = checkpoint.load_weights(Path(run_dir), weights)
    training = run.config.training
    num_classes = run.metrics.get("dataset", {}).get("num_classes")  # checked by load_run
    try:
        built = build_model(run.config.model, num_classes=num_classes)
    except ConfigError as err:  # the run's own two files disagree: the run dir is at fault
        raise ModelDirError(
            f"{run_dir / store.METRICS} records {num_classes} classes, but the model "
            f"{run_dir / store.CONFIG} describes does not fit it: {err.message}"
        ) from None
    source = run_dir / store.WEIGHTS
    if weights != "saved":
        source = checkpoint.directory(Path(run_dir)) / weights / checkpoint.MODEL
    problem = weights_mismatch(run.state_dict, built.module.state_dict())
    try:
        if problem is None:
            built.module.load_state_dict(run.state_dict, strict=True)
    except RuntimeError as err:  # not a name or a shape: the first line of torch's reason
        problem = untrusted.shorten(" ".join(str(err).split()))
    if problem is not None:
        raise ModelDirError(
            f"{source}: the weights do not fit the model {run_dir / store.CONFIG} describes: "
            f"{problem}"
        )
    scorer = Scorer.of(
        built.module,
        device=resolve_device(device, named("device")),
        precision=training.precision,
        channels_last=training.channels_last,
        tta=tta or training.tta,
    )
    return LoadedModel(run, built, scorer)


@dataclass
class Predictions:
    """True and predicted class indices of one split."""

    split: str
    labels: npt.NDArray[np.int64]
    predicted: npt.NDArray[np.int64]
    class_names: tuple[str, ...]

    def per_class(self) -> PerClass:
        cm = confusion_matrix(self.labels, self.predicted, len(self.class_names))
        return per_class(cm, self.class_names)


@dataclass
class SavedRun:
    """A saved run's model and its data, rebuilt: what evaluate, plot and --per-class share."""

    loaded: LoadedModel
    dataset: Dataset
    data_split: Split | None = None  # evaluate --data: the labelled data given

    def split(self, name: str) -> Split:
        """``validation``, ``test`` or ``train``: the same split the run was trained with
        (``data``: the data given to ``evaluate --data``)."""
        if name == "data" and self.data_split is not None:
            return self.data_split
        if name == "test":
            if self.dataset.test is None:
                raise UsageError(NO_TEST)
            return self.dataset.test
        train, validation = split_train(self.dataset, self.loaded.run.config)
        return validation if name == "validation" else train

    def metrics(self, name: str, batch_size: int = 1000) -> Logs:
        """Loss and metrics on a split, with its ``seconds`` and ``samples``."""
        start = time.perf_counter()
        part = self.split(name)
        logs = self.loaded.evaluate(part, batch_size=batch_size)
        logs["seconds"] = time.perf_counter() - start
        logs["samples"] = float(len(part))
        return logs

    def predictions(self, name: str, batch_size: int = 1000) -> Predictions:
        part = self.split(name)
        logits = self.loaded.outputs(part.images, batch_size=batch_size)
        return Predictions(
            name,
            part.labels.cpu().numpy().astype(np.int64),
            logits.argmax(dim=1).numpy().astype(np.int64),
            tuple(self.dataset.class_names),
        )


def open_run(
    run_dir: Path,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    weights: str = "saved",
    accept_changed_data: bool = False,
    changed: list[str] | None = None,
    tta: str | None = None,
) -> SavedRun:
    """Verify and load a run dir's model (``weights``, ``tta``: see :func:`load_model`) and
    the dataset its config names (:func:`run_data`)."""
    loaded = load_model(run_dir, device, weights, tta)
    dataset = run_data(loaded, data_dir, accept_changed_data=accept_changed_data, changed=changed)
    return SavedRun(loaded, dataset)


def run_data(
    loaded: LoadedModel,
    data_dir: str | None = None,
    *,
    accept_changed_data: bool = False,
    changed: list[str] | None = None,
) -> Dataset:
    """The dataset a saved run's config names, found where the run found it unless
    ``data_dir`` says otherwise: what ``evaluate``, ``plot`` and the Python API score.

    Every data file read is compared with the SHA-256 ``metrics.json`` recorded at training
    time: a changed file is a :class:`DataError` naming it, unless ``accept_changed_data``;
    the changed files' paths are appended to ``changed`` when given."""
    run_dir = loaded.run.path
    recorded = loaded.run.metrics.get("dataset")
    cfg = loaded.run.config
    dataset = config_data(cfg, data_dir, recorded=recorded if isinstance(recorded, dict) else None)
    different = changed_data(loaded.run.metrics, dataset)
    if different and not accept_changed_data:
        path, recorded, found = different[0]
        more = f" (and {len(different) - 1} more)" if len(different) > 1 else ""
        was = store.read_data_digests(run_dir).get(path)
        now = dataset.digests.get(path)
        detail = (
            changed_files(was, now)
            if was is not None and now is not None
            else f"its sha256 is {found[:12]}…, {run_dir / store.METRICS} records {recorded[:12]}…"
        )
        raise DataError(
            f"{path}: changed since the model was trained{more}: {detail}; pass "
            f"{named('accept_changed_data')} to use it anyway (evaluate's result then says so)"
        )
    if changed is not None:
        changed += [path for path, _, _ in different]
    return dataset


def changed_data(metrics: dict[str, Any], dataset: Dataset) -> list[tuple[str, str, str]]:
    """(path, recorded sha256, sha256 now) of each data file that differs from what the run
    recorded; files the run recorded nothing for are not compared."""
    recorded = metrics.get("dataset", {}).get("checksums", {}) if isinstance(metrics, dict) else {}
    if not isinstance(recorded, dict):
        return []
    return [
        (str(dataset.sources.get(name, name)), str(recorded[name]), sha)
        for name, sha in dataset.checksums.items()
        if name in recorded and recorded[name] != sha
    ]


def changed_files(recorded: Mapping[str, str], found: Mapping[str, str], shown: int = 3) -> str:
    """Which files of one split differ (own data: file name → digest, as
    :func:`dlcli.data.local.split_digests` gives and ``data-digests.json`` records): up to
    ``shown`` names of those changed, added and removed, and their counts."""
    kinds = {
        "changed": [n for n, d in found.items() if n in recorded and recorded[n] != d],
        "added": [n for n in found if n not in recorded],
        "removed": [n for n in recorded if n not in found],
    }
    parts = []
    for kind, names in kinds.items():
        if names:
            listed = ", ".join(names[:shown]) + (
                f" and {len(names) - shown} more" if len(names) > shown else ""
            )
            parts.append(f"{kind}: {listed}")
    return "; ".join(parts) or "the same files, recorded differently"


def default_splits(saved: SavedRun, splits: Sequence[str] | None) -> list[str]:
    """The splits asked for; by default validation, and test when the run has test data."""
    if splits:
        return list(splits)
    return ["validation"] + (["test"] if saved.dataset.test is not None else [])


class RunOpening(TypedDict, total=False):
    """How :func:`evaluate` and :func:`evaluate_per_class` open the run: :func:`open_run`'s
    keywords."""

    data_dir: str | None
    device: str
    weights: str
    accept_changed_data: bool
    changed: list[str] | None
    tta: str | None


def open_splits(
    run_dir: Path,
    splits: Sequence[str] | None,
    gates: Sequence[Gate],
    **opening: Unpack[RunOpening],
) -> tuple[SavedRun, list[str]]:
    """:func:`open_run`, the splits to score (:func:`default_splits`), and ``gates`` checked
    against the metrics the run reports on them, before any evaluation."""
    saved = open_run(run_dir, **opening)
    chosen = default_splits(saved, splits)
    check_gate_names(gates, saved.loaded.run.config, chosen)
    return saved, chosen


def evaluate(
    run_dir: Path,
    *,
    splits: Sequence[str] | None = ("validation",),
    batch_size: int = 1000,
    gates: Sequence[Gate] = (),
    **opening: Unpack[RunOpening],
) -> dict[str, Logs]:
    """Rebuild a saved run's data split and report its metrics on the requested splits
    (``opening``: ``data_dir``, ``device``, ``weights``, ``accept_changed_data``, ``changed``,
    ``tta``: see :func:`open_run`). ``gates`` are checked against the metrics the run reports
    before any evaluation."""
    saved, chosen = open_splits(run_dir, splits, gates, **opening)
    return {name: saved.metrics(name, batch_size) for name in chosen}


def open_data(
    run_dir: Path,
    data: Path,
    *,
    device: str = "auto",
    weights: str = "saved",
    tta: str | None = None,
) -> SavedRun:
    """A saved run's model (``weights``, ``tta``: see :func:`load_model`) and labelled data at
    ``data`` (class folders, CSV, .npz, IDX), converted as the run's training data was and
    labelled by the run's class names; the data is the ``data`` split of the result."""
    loaded = load_model(run_dir, device, weights, tta)
    cfg = loaded.run.config
    names = tuple(loaded.run.metrics.get("dataset", {}).get("class_names") or ())
    # The run's data settings (resize, background, cache, workers) with ``data`` as the only
    # split, whatever the run was trained on (own data, IDX archives or a registry dataset).
    given = dataclasses.replace(cfg.data, train=str(data), test=None, validation=None)
    spec = dataclasses.replace(
        LocalData.from_config(given, cfg.model.input_shape),
        class_names=names or None,
        num_classes=loaded.built.output_shape[0],
        skip_bad_files=cfg.data.skip_bad_files,
        evaluating=True,
    )
    dataset = load_local(spec)
    if dataset.test is not None:  # a Keras-style .npz: its test arrays are what is scored
        dataset = dataclasses.replace(dataset, train=dataset.test, test=None)
    return SavedRun(loaded, dataset, data_split=dataset.train)


def evaluate_data(
    run_dir: Path,
    data: Path,
    *,
    batch_size: int = 1000,
    device: str = "auto",
    weights: str = "saved",
    per_class: bool = False,
    tta: str | None = None,
) -> dict[str, Any]:
    """``evaluate RUN_DIR --data PATH``: metrics (and per-class figures) on labelled data, with
    the run's ``weights`` (see :func:`load_model`)."""
    saved = open_data(run_dir, data, device=device, weights=weights, tta=tta)
    report: dict[str, Any] = {"data": saved.metrics("data", batch_size)}
    if per_class:
        report = {"data": SplitReport(report["data"], saved.predictions("data").per_class())}
    return report


def check_gate_names(gates: Sequence[Gate], config: Config, splits: Sequence[str]) -> None:
    """Refuse (exit 2, did-you-mean) a gate naming a metric or split that will not be reported."""
    names = metric_names.reported(config.training.metrics)
    resolve_gates(gates, {s: names for s in splits}, default_split(list(splits)))


@dataclass
class SplitReport:
    metrics: Logs
    per_class: PerClass


def evaluate_per_class(
    run_dir: Path,
    *,
    splits: Sequence[str] | None = ("validation",),
    batch_size: int = 1000,
    gates: Sequence[Gate] = (),
    **opening: Unpack[RunOpening],
) -> dict[str, SplitReport]:
    """:func:`evaluate` plus per-class precision/recall/F1 and the confusion matrix."""
    saved, chosen = open_splits(run_dir, splits, gates, **opening)
    return {
        name: SplitReport(
            saved.metrics(name, batch_size), saved.predictions(name, batch_size).per_class()
        )
        for name in chosen
    }
