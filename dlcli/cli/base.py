"""The click group, the shared options, and :func:`dlcli_command`: the one place that maps
errors to exit codes (documented in ``dlcli.errors`` and the README)."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dlcli import limits, untrusted
from dlcli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, DlcliError, command_line, debugging
from dlcli.manifest import take_recovered
from dlcli.report import Reporter
from dlcli.signals import command_over, command_started, stop_at_once_on_signals
from dlcli.version import describe

CommandFn = Callable[..., dict[str, Any] | None]
# The commands a multi-process launch (torchrun) runs as one job: every other one runs in one
# process, and refuses to run as one of several workers (see _one_process).
DATA_PARALLEL_COMMANDS = ("train",)


def dlcli_command(fn: CommandFn) -> Callable[..., None]:
    """Give a command ``--json``/``--quiet``/``--no-color`` and the one error-to-exit-code map.

    The wrapped function receives a :class:`Reporter` first and may return a JSON-able dict: it
    is printed to stdout as the command's one JSON document under ``--json``.
    """

    @click.option("--json", "json_mode", is_flag=True, help="Print one JSON document on stdout.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress output.")
    @click.option("--no-color", is_flag=True, help="No colours (also: the NO_COLOR variable).")
    @functools.wraps(fn)
    def wrapper(json_mode: bool, quiet: bool, no_color: bool, **kwargs: Any) -> None:
        reporter = Reporter(json_mode=json_mode, quiet=quiet, no_color=no_color)
        code = 0
        command_started()
        try:
            # SIGINT/SIGTERM/SIGHUP: Interrupted, exit 130; messages name the options
            with stop_at_once_on_signals(), command_line():
                try:
                    _one_process()
                    document = fn(reporter, **kwargs)
                    if document is not None:
                        reporter.emit_json(document)
                finally:
                    # Returned or raised: the outcome stands, a signal from now on is ignored
                    # (not "interrupted", nor entry's "during start-up: nothing was written").
                    command_over()
                    for line in take_recovered():  # a run dir's save killed mid-way, finished
                        reporter.note(line)
        except DlcliError as err:
            code = err.exit_code
            _report(reporter, err, code, err.kind)
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
            _report(reporter, "interrupted", code, "interrupted")
        except Exception as err:
            code = EXIT_INTERNAL
            if debugging():
                traceback.print_exc()
            reporter.error(
                f"internal error: {type(err).__name__}: {untrusted.printable(str(err))}\n"
                "This is a bug in dlcli. Please report it with the command you ran and the "
                "output of `dlcli --version` (set DLCLI_DEBUG=1 for the traceback).",
                code=code,
            )
        lost = reporter.output_lost()  # stdout or stderr failed (a full disk): not a success
        if lost is not None and not code:
            code = lost.exit_code
            _report(reporter, lost, code, lost.kind)
        if code:
            click.get_current_context().exit(code)

    return wrapper


def _one_process() -> None:
    """Started as one of several workers (torchrun's ``WORLD_SIZE``), a command other than
    :data:`DATA_PARALLEL_COMMANDS` would run whole in every worker, each printing and writing
    the same files: refused, exit 2, before anything (dlcli.distributed.refuse_workers; torch
    is imported only under such a launch)."""
    if "WORLD_SIZE" not in os.environ:
        return
    path = click.get_current_context().command_path.split()[1:]  # without the program's name
    if path and path[0] not in DATA_PARALLEL_COMMANDS:
        from dlcli.distributed import refuse_workers

        refuse_workers(" ".join(path))


def _report(reporter: Reporter, err: DlcliError | str, code: int, kind: str) -> None:
    """Print the error (the command is over: a signal meanwhile is ignored, the code stands);
    a terminal that is gone (SIGHUP) cannot be told, which is fine."""
    with contextlib.suppress(OSError):
        reporter.error(err, code=code, kind=kind)


class DlcliGroup(click.Group):
    """A click group whose own usage errors (an unknown option, a bad value, a missing
    argument) are, under ``--json``, also a JSON error document; they keep click's exit code 2
    and its usage text on stderr."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        json_mode = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
        argv = list(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:
            raise (_JsonUsageError(err) if json_mode else err) from None
        ctx.meta["dlcli.json"] = json_mode
        ctx.meta["dlcli.argv"] = argv  # train --nproc-per-node re-runs it in each worker
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            if ctx.meta.get("dlcli.json") and not isinstance(err, _JsonUsageError):
                raise _JsonUsageError(err) from None
            raise


class _JsonUsageError(click.UsageError):
    """A click usage error shown as usual on stderr, plus the JSON error document on stdout."""

    def __init__(self, err: click.UsageError) -> None:
        super().__init__(err.format_message(), ctx=err.ctx)

    def show(self, file: Any = None) -> None:
        super().show(file)
        error = {"code": self.exit_code, "kind": "usage", "message": self.format_message()}
        Reporter(json_mode=True).emit_json({"error": error})


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(describe())
        ctx.exit()


@click.group(cls=DlcliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    "-V",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show dlcli's version, with Python's, torch's and the platform, and exit.",
)
def cli() -> None:
    """Train, evaluate and save PyTorch vision models from a YAML file.

    \b
    Typical session:
      dlcli download fashion-mnist
      dlcli train configs/fashion-mnist-mlp.yaml
      dlcli evaluate runs/fashion-mnist-mlp
    """


def _lazy(name: str) -> Callable[[click.Context, click.Parameter, str], list[Any]]:
    """A completion function of dlcli.completion, imported only when the shell asks."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from dlcli import completion

        function: Callable[..., list[Any]] = getattr(completion, name)
        return function(ctx, param, incomplete)

    return complete


complete_datasets = _lazy("complete_datasets")
complete_run_dirs = _lazy("complete_run_dirs")
complete_devices = _lazy("complete_devices")

_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    shell_complete=_lazy("complete_set"),
    help="Override a config key, e.g. --set training.epochs=3 (repeatable; value is YAML).",
)


# --- options several commands share (declared once) ---------------------------------------


def device_option(default: str | None = "auto", note: str = "") -> Callable[[Any], Any]:
    """``--device``: auto | cpu | cuda | cuda:N | mps, completed from the devices present."""
    from dlcli.device import DEVICE_HELP, DEVICE_NAMES

    return click.option(
        "--device",
        default=default,
        show_default=default is not None,
        help=f"{DEVICE_NAMES} {note}".strip() + "." if note else DEVICE_HELP,
        shell_complete=complete_devices,
    )


tta_option = click.option(
    "--tta",
    type=click.Choice(["none", "flip"]),
    help="Test-time augmentation: flip averages each image's and its mirror's outputs "
    "(default: the run's training.tta).",
)


class PositiveNumber(click.FloatRange):
    """A finite number above 0, at most ``maximum``: click's FloatRange lets ``nan`` through
    (every comparison with it is false) and ``inf`` when there is no maximum, and a timeout of
    either crashed the socket layer or switched a deadline off."""

    def __init__(self, maximum: float | None = None) -> None:
        super().__init__(min=0, min_open=True, max=maximum)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"expected a finite number, found {number!r}", param, ctx)
        return number


class NonEmptyPath(click.Path):
    """click's Path, refusing an empty value (usage, exit 2): ``Path("")`` is the current
    directory, so ``--data-dir ""`` downloaded into ./NAME and ``-o ""`` trained into ".".
    Every path argument and option of dlcli takes this type."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str | os.PathLike) and os.fspath(value) in ("", b""):
            self.fail("an empty path: give a file or folder name", param, ctx)
        return super().convert(value, param, ctx)


def run_dir_argument(name: str = "model_dir") -> Callable[[Any], Any]:
    """A saved run's directory (``runs/NAME``), completed from the runs present. What is
    there is the library's to judge (:func:`dlcli.manifest.no_run_dir`): a file is a model-dir
    problem, exit 3, as a missing folder is."""
    return click.argument(name, type=NonEmptyPath(path_type=Path), shell_complete=complete_run_dirs)


class NonBlank(click.types.StringParamType):
    """A text option that names something (a mirror, a storage URL), refusing an empty or
    blank value (usage, exit 2) as :class:`NonEmptyPath` refuses an empty path: ``--mirror ""``
    was dropped silently (the registry's own mirrors used instead), ``--storage ""`` meant the
    default storage."""

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = super().convert(value, param, ctx)
        if not text.strip():
            self.fail(f"expected {self.expected}, found {text!r}", param, ctx)
        return text


POSITIVE = PositiveNumber()  # a rate, a factor
SECONDS = PositiveNumber(limits.SECONDS_MAX)  # a timeout or deadline
LEARNING_RATE = PositiveNumber(limits.LEARNING_RATE_MAX)  # lr-find's ends


def thread_count(ctx: click.Context, param: click.Parameter, value: str | None) -> str | int | None:
    """``--threads``: ``auto`` or a number of CPU threads, in the bounds ``training.threads``
    has (dlcli.config.THREADS)."""
    from dlcli.config import THREADS

    if value is None or value == "auto":
        return value
    text = value.strip()
    in_bounds, bounds = THREADS
    if untrusted.is_number(text) and in_bounds(int(text)):
        return int(text)
    raise click.BadParameter(f"expected auto or a number {bounds}, found {value!r}")


batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=limits.INT_MAX),  # torch takes 64 bits
    default=1000,
    show_default=True,
    help="Images per forward pass.",
)
data_dir_option = click.option(
    "--data-dir", type=NonEmptyPath(file_okay=False), help="Where the dataset lives."
)
weights_option = click.option(
    "--weights",
    type=click.Choice(["saved", "best", "last"]),
    default="saved",
    show_default=True,
    help="Which weights of the run: the ones it saved (model.safetensors), or its best or "
    "last checkpoint.",
)
