"""Data-parallel training on torch.distributed: one process per device, each on its shard.

    dlcli train CONFIG --nproc-per-node 2          # this module's launch(): torch.distributed.run
    torchrun --nproc-per-node 2 -m dlcli train CONFIG     # the same workers, started by torchrun

Each worker is an ordinary ``dlcli train`` process that finds torchrun's variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ...) in its environment. :func:`init_from_env` joins the process
group (NCCL on CUDA, gloo on the CPU) with a timeout on every collective, and returns the
:class:`World` the Trainer uses to

1. take its shard of every *global* batch (``index[rank::size]`` of the seeded per-epoch
   permutation, so every sample is used once an epoch and ``batch_size`` means what it means
   in a single process),
2. train through ``DistributedDataParallel`` (gradients averaged across workers), with each
   worker's loss scaled by its share of the batch so the update is the full batch's,
3. all-reduce the epoch's metric sums (and evaluate on a contiguous block of each split, then
   all-reduce), so every worker reports, and decides on, the same global numbers,
4. agree on stopping (interrupts, callbacks) after every step.

Only rank 0 prints and writes (model dir, checkpoints); the others wait at a barrier. A
worker that dies, or a collective that waits longer than ``--dist-timeout``, ends every worker
with a clear message; the launcher then reports which worker failed and exits non-zero.

A single process (no torchrun variables, or ``WORLD_SIZE=1``) is :data:`SINGLE`: every method
below is then the identity, and training is exactly what it is without this module.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import signal
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dlcli.errors import (
    EXIT_DATA,
    EXIT_GATE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ConfigError,
    DlcliError,
    GateError,
    Interrupted,
    TrainingError,
    UsageError,
)

if TYPE_CHECKING:
    from dlcli.engine import Callback
    from dlcli.report import Reporter

T = TypeVar("T")

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for the other workers (--dist-timeout)
STOP_GRACE = 15  # seconds a worker has to stop after the launcher's SIGINT/SIGTERM (at most)

# Test hooks (tests/test_distributed.py): the worker of this rank dies (SIGKILL, as the OOM
# killer would) or hangs forever after global step DLCLI_TEST_AT_STEP (default 2).
TEST_FAIL_RANK = "DLCLI_TEST_FAIL_RANK"
TEST_HANG_RANK = "DLCLI_TEST_HANG_RANK"
TEST_AT_STEP = "DLCLI_TEST_AT_STEP"
JSON_FILE = "DLCLI_JSON_FILE"  # set by launch(): where rank 0 writes its JSON document

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_control: Any = None  # a gloo group for CPU-side agreement when the main backend is NCCL


@dataclass(frozen=True)
class World:
    """Where this process stands in a data-parallel run; ``World()`` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str = ""
    timeout: float = DEFAULT_TIMEOUT

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the worker that prints and writes."""
        return self.rank == 0

    def summary(self, batch_size: int) -> str:
        """The line ``train`` prints on rank 0."""
        per = batch_size / self.size
        return (
            f"distributed: {self.size} workers ({self.backend}, timeout {self.timeout:g}s); "
            f"global batch {batch_size}, {per:g} per worker"
        )

    def describe(self) -> dict[str, Any]:
        """What metrics.json records about the run's workers (nothing for one process)."""
        if not self.distributed:
            return {}
        return {"distributed": {"world_size": self.size, "backend": self.backend}}

    # --- the training step ---------------------------------------------------------------------

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This worker's part of a global batch: every ``size``-th sample from ``rank``."""
        return index[self.rank :: self.size] if self.distributed else index

    def block(self, n: int) -> range:
        """This worker's contiguous block of ``n`` samples (evaluation: slices stay views)."""
        if not self.distributed:
            return range(n)
        per = -(-n // self.size)
        return range(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    def scale_loss(self, loss: torch.Tensor, shard: int, batch: int) -> torch.Tensor:
        """The loss to back-propagate: DDP averages the workers' gradients, so weighting each
        worker's mean loss by ``size * shard / batch`` makes the update the global batch's
        mean-loss gradient, whatever the shard sizes (the last batch may not divide)."""
        if not self.distributed or shard * self.size == batch:
            return loss
        return loss * (shard * self.size / batch)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``DistributedDataParallel(model)`` (which broadcasts rank 0's weights), or ``model``."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def seed(self, seed: int, step: int) -> None:
        """Give each worker its own random stream (dropout) from here on; rank 0 of a single
        process keeps the one it has."""
        if self.distributed:
            torch.manual_seed((seed * 1_000_003 + step * 7_919 + self.rank) % 2**63)

    # --- agreeing -------------------------------------------------------------------------------

    def sum_metrics(self, sums: torch.Tensor, count: int) -> tuple[list[float], int]:
        """Metric sums and sample count over all workers (one all-reduce, float64)."""
        if not self.distributed:
            return sums.tolist(), count
        totals = torch.cat([sums.double(), sums.new_tensor([count], dtype=torch.float64)])
        dist.all_reduce(totals)
        values = totals.tolist()
        return values[:-1], int(values[-1])

    def agree(self, stop: bool, interrupted: str | None) -> tuple[bool, str | None]:
        """Stop everywhere when any worker wants to (a callback, a signal), at the same step:
        a worker that left the loop alone would leave the others waiting in a collective."""
        if not self.distributed:
            return stop, interrupted
        flags = torch.tensor([int(stop), int(interrupted is not None)])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=_control)
        if flags[1] and interrupted is None:
            interrupted = "a signal to another worker"
        return bool(flags[0]), interrupted

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) everywhere: each worker updated its own on
        its last step, and evaluation must score the model rank 0 saves."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 and its result sent to every worker (e.g. a checkpoint read
        where only rank 0's node may have it)."""
        if not self.distributed:
            return fn()
        box = [fn() if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=_control)
        return box[0]  # type: ignore[return-value]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=_control)


SINGLE = World()


# --- joining the process group ------------------------------------------------------------------


def env_world() -> World:
    """The World torchrun's variables describe, or :data:`SINGLE` when there are none."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    values: dict[str, int] = {}
    for name in names:
        raw = os.environ.get(name, "0" if name != "LOCAL_WORLD_SIZE" else "1")
        try:
            values[name] = int(raw)
        except ValueError:
            raise UsageError(
                f"${name}: expected an integer (set by torchrun), found {raw!r}"
            ) from None
    if values["WORLD_SIZE"] <= 1:
        return SINGLE
    return World(
        rank=values["RANK"],
        size=values["WORLD_SIZE"],
        local_rank=values["LOCAL_RANK"],
        local_size=values["LOCAL_WORLD_SIZE"],
    )


def env_rank() -> int:
    """This process's rank (0 outside torchrun); read before the process group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_from_env(device: str, timeout: float | None = None) -> tuple[World, torch.device]:
    """Join the process group torchrun's variables describe and pick this worker's device
    (``cuda:LOCAL_RANK`` on GPUs); a single process just resolves ``device``."""
    from dlcli.engine import resolve_device  # the engine imports this module

    world = env_world()
    if not world.distributed:
        return world, resolve_device(device)
    resolved = _worker_device(device, world, resolve_device(device))
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    seconds = DEFAULT_TIMEOUT if timeout is None else timeout
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
        global _control
        if backend == "nccl":
            _control = dist.new_group(backend="gloo", timeout=timedelta(seconds=seconds))
    except (RuntimeError, ValueError) as err:
        raise TrainingError(
            f"worker rank {world.rank} of {world.size}: cannot join the other workers at "
            f"{where} within {seconds:g}s ({_first_line(err)})"
        ) from None
    atexit.register(shutdown)  # a process group left to the interpreter's exit can abort it
    return World(world.rank, world.size, world.local_rank, world.local_size, backend, seconds), (
        resolved
    )


def _worker_device(name: str, world: World, resolved: torch.device) -> torch.device:
    """``cuda:LOCAL_RANK`` for auto/cuda on a GPU machine; the CPU stays the CPU."""
    if resolved.type == "cpu":
        return resolved
    if resolved.index is not None and name not in ("auto", "cuda") and world.local_size > 1:
        raise ConfigError(
            f"training.device: {name!r} names one GPU, but each of the {world.local_size} "
            "workers on this node takes the GPU of its LOCAL_RANK; use device: cuda or auto"
        )
    if name not in ("auto", "cuda"):
        return resolved
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"training.device: worker LOCAL_RANK {world.local_rank} needs GPU "
            f"{world.local_rank}, but {torch.cuda.device_count()} are visible; start at most "
            f"{torch.cuda.device_count()} workers per node"
        )
    return torch.device("cuda", world.local_rank)


def shutdown() -> None:
    """Leave the process group (also at exit: see :func:`init_from_env`)."""
    global _control
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def collective_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: a collective that failed (a worker died, or none answered within the
    timeout) becomes a :class:`TrainingError` that says so, not an internal error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as err:
            if not (dist.is_available() and dist.is_initialized()) or not _is_collective(err):
                raise
            raise TrainingError(_lost_message(err)) from None

    return wrapper


def _is_collective(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return any(s in text for s in ("gloo", "NCCL", "nccl", "Connection", "Timed out", "timed out"))


def _lost_message(err: BaseException) -> str:
    rank, size = dist.get_rank(), dist.get_world_size()
    first = _first_line(err)
    if "timed out" in first.lower():
        reason = "waited longer than --dist-timeout for the other workers (one of them hangs)"
    else:
        reason = "lost contact with the other workers (one of them failed or was stopped)"
    return f"worker rank {rank} of {size} {reason}: {first}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if line.startswith("[") and "] " in line:  # gloo's "[/path/to/pair.cc:537] Read error ..."
        line = line.split("] ", 1)[1]
    return line.split(". This is typically caused by", 1)[0].strip()  # gloo's advice


@contextlib.contextmanager
def stop_watchdog(world: World) -> Iterator[None]:
    """After a SIGINT/SIGTERM (the launcher sends one to every worker when one fails), a
    distributed worker has ``min(timeout, STOP_GRACE)`` seconds to stop: then SIGALRM ends it,
    even when it hangs. Chains to the handlers already installed (dlcli.signals)."""
    if not world.distributed or not hasattr(signal, "SIGALRM"):
        yield
        return
    grace = max(1, min(int(world.timeout), STOP_GRACE))
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def arm(signum: int, frame: Any) -> None:
        left = signal.alarm(grace)
        if left:  # a later signal keeps the first one's deadline
            signal.alarm(left)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)

    for sig in previous:
        signal.signal(sig, arm)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.alarm(0)


def test_hooks(world: World) -> list[Callback]:
    """The DLCLI_TEST_FAIL_RANK / DLCLI_TEST_HANG_RANK hooks as a callback (tests only)."""
    fail, hang = os.environ.get(TEST_FAIL_RANK), os.environ.get(TEST_HANG_RANK)
    if fail is None and hang is None:
        return []
    from dlcli.engine import Callback

    at_step = int(os.environ.get(TEST_AT_STEP, "2"))

    class _TestHook(Callback):
        def on_step_end(self, trainer: Any, step: int) -> None:
            if trainer.global_step != at_step:
                return
            if fail is not None and int(fail) == world.rank:
                os.kill(os.getpid(), signal.SIGKILL)
            while hang is not None and int(hang) == world.rank:
                signal.pause()

    return [_TestHook()]


# --- launching the workers --------------------------------------------------------------------

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
                f"{_signal_name(int(err.sigval))}: the workers were stopped (rank 0's message "
                "above says how to resume, if a checkpoint was written)",
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


def worker_output(reporter: Reporter) -> None:
    """How a torchrun worker reports: ranks other than 0 print errors only; rank 0 of
    ``train --nproc-per-node`` hands its JSON document to the launcher, which prints it."""
    if env_rank() != 0:
        reporter.silence()
    elif os.environ.get(JSON_FILE):
        reporter.json_to_file(os.environ[JSON_FILE])


def _quiet_launcher_logs() -> None:
    """torch.distributed.run logs banners and each worker's exit; dlcli reports these itself
    (DLCLI_DEBUG=1 keeps them)."""
    if os.environ.get("DLCLI_DEBUG"):
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
        if self.exitcode in _STOPPED:
            return f"rank {self.rank} was stopped ({name})"
        return f"rank {self.rank} was killed by {name}"

    def priority(self) -> int:
        """Which failure caused the others: a crash or an unexpected code first, then a
        dlcli error (exit 3 is also what a worker that lost its peers exits with), then the
        workers the launcher stopped."""
        if self.exitcode in _STOPPED or self.exitcode == EXIT_INTERRUPTED:
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
    seen = sorted(
        (Failure(int(rank), int(f.exitcode), int(f.pid)) for rank, f in failures.items()),
        key=lambda f: (f.priority(), f.rank),
    )
    cause, others = seen[0], seen[1:]
    message = f"distributed training failed: worker {cause.describe()}"
    message += " (its error is printed above)" if cause.printed_error else ""
    if others:
        message += "; then " + ", ".join(f.describe() for f in others)
    message += "; the launcher stopped every worker"
    if cause.exitcode < 0 and cause.exitcode not in _STOPPED:
        message += " (a worker killed from outside, e.g. out of memory, prints nothing)"
    code = cause.exitcode if cause.exitcode in _OWN_CODES else EXIT_DATA
    return WorkersFailed(message, exit_code=code, rank0=rank0)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
