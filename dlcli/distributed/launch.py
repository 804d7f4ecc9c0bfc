"""The launcher: ``dlcli train --nproc-per-node N`` runs the same command in N workers through
torch.distributed.run (the engine of torchrun) and turns a failed job into one clear error."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dlcli.distributed.world import JSON_FILE
from dlcli.errors import (
    EXIT_DATA,
    EXIT_GATE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    DlcliError,
    GateError,
    Interrupted,
    TrainingError,
    UsageError,
    debugging,
)

# --- the command line --------------------------------------------------------------------

# `dlcli train` options that start workers; the workers get every other argument.
LAUNCH_OPTIONS = (
    "--nproc-per-node",
    "--nnodes",
    "--node-rank",
    "--master-addr",
    "--master-port",
    "--rdzv-endpoint",
    "--rdzv-id",
)


@dataclass
class Launch:
    """What ``dlcli train --nproc-per-node N ...`` hands torch.distributed.run."""

    nproc_per_node: int
    nnodes: str = "1"
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Launch | None:
        """From ``train``'s options: None when this process is to train itself."""
        if options.get("nproc_per_node") is None:
            given = [
                f"--{key.replace('_', '-')}"
                for key in ("master_addr", "master_port", "rdzv_endpoint", "rdzv_id")
                if options.get(key) is not None
            ]
            given += ["--nnodes"] if str(options.get("nnodes", "1")) != "1" else []
            given += ["--node-rank"] if options.get("node_rank", 0) else []
            if given:
                raise UsageError(
                    f"{', '.join(given)}: only with --nproc-per-node N (or start the workers "
                    "with torchrun)"
                )
            return None
        keys = ("nnodes", "node_rank", "master_addr", "master_port", "rdzv_endpoint", "rdzv_id")
        launch = cls(int(options["nproc_per_node"]))
        for key in keys:
            if options.get(key) is not None:
                setattr(launch, key, options[key])
        launch.nnodes = str(launch.nnodes)
        nodes = launch.nnodes.split(":")[-1]  # N, or MIN:MAX (elastic): the most there may be
        if nodes.isdigit() and launch.node_rank >= int(nodes):
            raise UsageError(
                f"--node-rank {launch.node_rank}: expected below --nnodes {launch.nnodes} "
                "(node ranks count from 0)"
            )
        return launch

    @property
    def single_node(self) -> bool:
        return self.nnodes in ("1", "1:1")

    def describe(self) -> str:
        nodes = "" if self.single_node else f" on each of {self.nnodes} nodes"
        return f"launching {self.nproc_per_node} workers{nodes} (torch.distributed.run)"

    def torchrun_args(self, worker_args: Sequence[str]) -> list[str]:
        """torchrun's command line: rendezvous options, then ``-m dlcli`` and the workers'
        arguments."""
        args = ["--nproc-per-node", str(self.nproc_per_node), "--nnodes", self.nnodes]
        args += ["--node-rank", str(self.node_rank)]
        if self.rdzv_endpoint:
            args += ["--rdzv-backend", "c10d", "--rdzv-endpoint", self.rdzv_endpoint]
            args += ["--rdzv-id", self.rdzv_id or "dlcli"]
        elif self.master_addr or self.master_port:
            args += ["--master-addr", self.master_addr or "127.0.0.1"]
            args += ["--master-port", str(self.master_port or 29500)]
        elif self.single_node:  # a free port on the loopback: never collides with another run
            args += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]
        else:
            raise UsageError(
                f"--nnodes {self.nnodes}: a multi-node run needs --rdzv-endpoint HOST:PORT "
                "(or --master-addr/--master-port with --node-rank)"
            )
        return [*args, "--module", "dlcli", *worker_args]


def worker_args(argv: Sequence[str]) -> list[str]:
    """``argv`` without the launch options (and their values): what each worker runs."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in LAUNCH_OPTIONS)):
            out.append(arg)
    return out


def launch(options: Launch, argv: Sequence[str]) -> dict[str, Any] | None:
    """Run ``dlcli`` + ``argv`` in ``nproc_per_node`` workers under torch.distributed.run (the
    engine of torchrun), wait for them, and return rank 0's JSON document (under ``--json``).

    A failed or interrupted job raises :class:`WorkersFailed`, which names the worker that
    failed first and carries its exit code (and rank 0's document, e.g. a failed gate's).
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if "WORLD_SIZE" in os.environ:
        raise UsageError("--nproc-per-node: this process is already a distributed worker")
    args = options.torchrun_args(worker_args(argv))
    _quiet_launcher_logs()
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads_per_worker(options.nproc_per_node)))
    with (
        tempfile.TemporaryDirectory(prefix="dlcli-launch-") as tmp,
        _env(JSON_FILE, os.path.join(tmp, "rank0.json")) as path,
    ):
        try:
            torchrun.run(torchrun.parse_args(args))
        except ChildFailedError as err:
            raise failure_error(err.failures, _read_document(path)) from None
        except SignalException as err:
            raise WorkersFailed(
                f"{_signal_name(int(err.sigval))}: every worker stopped (rank 0's message "
                "above says how to resume)",
                exit_code=EXIT_INTERRUPTED,
                rank0=_read_document(path),
            ) from None
        return _read_document(path)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[str]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield value
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _read_document(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _quiet_launcher_logs() -> None:
    """torch.distributed.run logs banners and each worker's exit; dlcli reports these itself
    (DLCLI_DEBUG=1 keeps them)."""
    if debugging():
        return
    # torch.distributed.elastic gives each module's logger its own level: set them all.
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith(("torch.distributed.run", "torch.distributed.elastic")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _threads_per_worker(nproc: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


# Exit codes the workers' own error handling produces (each printed its message first).
_OWN_CODES = (EXIT_INTERNAL, EXIT_USAGE, EXIT_DATA, EXIT_GATE, EXIT_INTERRUPTED)
# What a worker dies of when the launcher stops it after another worker's failure.
_STOPPED = (-signal.SIGTERM, -signal.SIGINT, -getattr(signal, "SIGALRM", 14))


@dataclass
class Failure:
    """One failed worker as the launcher saw it (torch's ProcessFailure, reduced)."""

    rank: int
    exitcode: int
    pid: int
    # When the launcher saw it end (whole seconds; None when unknown), and whether it was the
    # launcher's own SIGKILL: a worker that outlived the grace period after another had failed
    # (a hung or SIGSTOPped one), not one killed from outside.
    timestamp: int | None = None
    cleanup: bool = False

    @property
    def printed_error(self) -> bool:
        """Whether the worker ended through dlcli's error handling (and printed why)."""
        return self.exitcode in _OWN_CODES

    def describe(self) -> str:
        if self.exitcode >= 0:
            return f"rank {self.rank} exited with code {self.exitcode}"
        if self.exitcode == -getattr(signal, "SIGALRM", 14):
            return f"rank {self.rank} did not stop within its grace period and was ended"
        name = _signal_name(-self.exitcode)
        if self.cleanup:
            return (
                f"rank {self.rank} did not stop within the launcher's grace period and was "
                f"killed by it ({name}): it hung or was stopped (e.g. SIGSTOP)"
            )
        if self.exitcode in _STOPPED:
            return f"rank {self.rank} was stopped ({name})"
        return f"rank {self.rank} was killed by {name}"

    def priority(self) -> int:
        """Which failure caused the others: a crash or an unexpected code first, then a
        dlcli error (exit 3 is also what a worker that lost its peers exits with), then the
        workers the launcher stopped."""
        if self.cleanup or self.exitcode in _STOPPED or self.exitcode == EXIT_INTERRUPTED:
            return 2
        return 1 if self.exitcode == EXIT_DATA else 0


class WorkersFailed(DlcliError):
    """A distributed job that ended because a worker failed: the exit code (and kind) are
    those of the worker that failed first when it is one of dlcli's, else a training error.
    ``document`` is rank 0's JSON document, if it wrote one (e.g. the metrics a gate failed)."""

    def __init__(
        self, message: str, *, exit_code: int, rank0: Mapping[str, Any] | None = None
    ) -> None:
        error = (rank0 or {}).get("error")
        if isinstance(error, dict) and error.get("message"):
            message += f" (rank 0: {error['message']})"
        document = {k: v for k, v in (rank0 or {}).items() if k != "error"}
        super().__init__(message, document=document or None)
        self.exit_code = exit_code
        self.kind = _KINDS.get(exit_code, TrainingError.kind)


_KINDS = {
    EXIT_INTERNAL: DlcliError.kind,
    EXIT_USAGE: UsageError.kind,
    EXIT_GATE: GateError.kind,
    EXIT_INTERRUPTED: Interrupted.kind,
}


def failure_error(
    failures: Mapping[int, Any], rank0: Mapping[str, Any] | None = None
) -> WorkersFailed:
    """The error a failed job ends with: which worker failed first, how, and what followed."""
    seen = _mark_cleanup(
        [
            Failure(int(rank), int(f.exitcode), int(f.pid), _timestamp(f))
            for rank, f in failures.items()
        ]
    )
    seen.sort(key=lambda f: (f.priority(), f.rank))
    cause, others = seen[0], seen[1:]
    # An interrupt: the workers exit 130 once rank 0's checkpoint is saved (a barrier); the
    # launcher may stop the slower ones (SIGTERM) while they are already on their way out.
    interrupted = [f for f in seen if f.exitcode == EXIT_INTERRUPTED]
    if interrupted and all(f.exitcode in (EXIT_INTERRUPTED, *_STOPPED) for f in seen):
        return WorkersFailed(
            "interrupted: every worker stopped (rank 0's message above says how to resume)",
            exit_code=EXIT_INTERRUPTED,
            rank0=rank0,
        )
    message = f"distributed training failed: worker {cause.describe()}"
    message += " (its error is printed above)" if cause.printed_error else ""
    if others:
        message += "; then " + ", ".join(f.describe() for f in others)
    message += "; the launcher stopped every worker"
    if cause.exitcode < 0 and cause.exitcode not in _STOPPED:
        message += " (a worker killed from outside, e.g. out of memory, prints nothing)"
    code = cause.exitcode if cause.exitcode in _OWN_CODES else EXIT_DATA
    return WorkersFailed(message, exit_code=code, rank0=rank0)


def _timestamp(failure: Any) -> int | None:
    value = getattr(failure, "timestamp", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mark_cleanup(seen: list[Failure]) -> list[Failure]:
    """Mark the SIGKILLs the launcher sent itself. When a worker fails, torch.distributed.run
    sends the others SIGTERM and, to one still alive after its grace period (30 s; a worker
    frozen by SIGSTOP or hung where no signal handler runs), SIGKILL. Such a kill is recorded
    later than the failure that began the shutdown; an out-of-memory kill is recorded first
    (the workers that lost it fail after it), so it stays the cause."""
    kill = -getattr(signal, "SIGKILL", 9)
    times = [f.timestamp for f in seen if f.timestamp is not None and f.exitcode != kill]
    first = min(times, default=None)
    for failure in seen:
        later = failure.timestamp is not None and first is not None and failure.timestamp > first
        failure.cleanup = failure.exitcode == kill and later
    return seen


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
